"""The training loop: SGD with momentum and weight decay, cosine-annealed learning rate, best-by-test-accuracy
checkpoint, fixed seed, and a checkpoint after every epoch from which an interrupted run resumes exactly.

The learning rate follows ``lr_k = lr_end + (lr - lr_end) * (1 + cos(pi * k / K)) / 2`` over the K optimisation
steps of the run (stepped per batch, so the schedule does not depend on the epoch count's granularity); the
paper anneals to a fraction of the start (``0.04 -> 0.04/32``), ``lr_end`` says which.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from faithverify.data import Dataset
from faithverify.train.attacks import accuracy
from faithverify.train.methods import Method


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and reproducibility settings of one run."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.05
    lr_end: float = 0.0  # the cosine schedule's floor (eta_min)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    num_threads: int | None = 2  # torch threads during the run (restored after); None: leave as it is
    # First epoch (1-based) eligible as "best": with an eps warm-up, earlier epochs were trained at a smaller
    # eps and would win on clean accuracy while being far less robust.
    select_from_epoch: int = 1
    # Early stopping: end the run after this many eligible epochs without a better clean test accuracy.
    patience: int | None = None


@dataclass
class TrainResult:
    """Where the run ended: the best epoch (1-based) by clean test accuracy, and per-epoch history.

    ``best_epoch`` is 0 when no epoch was eligible (then the model keeps its initial weights).
    """

    best_epoch: int
    best_test_accuracy: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = True  # every epoch ran, or early stopping ended the run (not a snapshot of one going on)

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def _to_tensors(dataset: Dataset) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)


def _same_config(stored: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a checkpoint's config is ``cfg``; a field added since it was written matches at its default
    (None), so older checkpoints stay usable."""
    current = {k: v for k, v in dataclasses.asdict(cfg).items() if not (v is None and k not in stored)}
    return stored == current


def _save_atomically(state: dict[str, Any], path: Path) -> None:
    # Write then rename, so that a run killed mid-save leaves the previous checkpoint intact.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    model: nn.Module,
    method: Method,
    train_data: Dataset,
    test_data: Dataset,
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    progress_bar: bool = True,
    desc: str = "train",
    snapshot: bool = False,
) -> TrainResult:
    """Train ``model`` in place with ``method``; on return it holds the weights of the best epoch.

    Data must already have the model's input shape (see ``data.fit_to_input_shape``). With ``checkpoint``,
    the state is saved after every epoch and a run with the same config resumes from it (a finished run is
    only reloaded); a checkpoint written with another config is refused. ``snapshot``: load the checkpoint and
    train no further (the best state of an unfinished run, e.g. to ship it while it goes on elsewhere).
    """
    threads_before = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(model, method, train_data, test_data, cfg, checkpoint, progress_bar, desc, snapshot)
    finally:
        torch.set_num_threads(threads_before)


def _train(
    model: nn.Module,
    method: Method,
    train_data: Dataset,
    test_data: Dataset,
    cfg: TrainConfig,
    checkpoint: str | Path | None,
    progress_bar: bool,
    desc: str,
    snapshot: bool = False,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train = _to_tensors(train_data)
    x_test, y_test = _to_tensors(test_data)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(total_steps, 1), eta_min=cfg.lr_end
    )
    start_epoch, best_acc, best_epoch, elapsed = 0, -1.0, 0, 0.0
    ended_early = False
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        if not _same_config(state["config"], cfg) or state["method"] != repr(method.describe()):
            raise ValueError(
                f"{ckpt_path} was written with config {state['config']} and method {state['method']}, "
                f"not {dataclasses.asdict(cfg)} and {method.describe()}; delete it to start afresh"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        best_state, history, elapsed = state["best_state"], state["history"], state["seconds"]
        ended_early = bool(state.get("stopped_early", False))
        if ended_early:
            start_epoch = cfg.epochs  # the run ended early: a rerun only reloads it
    elif snapshot:
        raise ValueError(f"no checkpoint at {ckpt_path} to take a snapshot of")
    if snapshot:
        start_epoch = cfg.epochs

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{desc} {epoch + 1}/{cfg.epochs}",
            disable=not progress_bar,
            mininterval=2.0,
            leave=True,
        )
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            progress = (epoch * steps_per_epoch + step) / max(total_steps, 1)
            loss = method(model, x_train[idx], y_train[idx], progress, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach())
            if step % 20 == 0:
                bar.set_postfix(
                    loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.4f}", refresh=False
                )
        model.eval()
        test_acc = accuracy(model, x_test, y_test)
        elapsed += time.perf_counter() - started
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total_loss / steps_per_epoch,
                "test_accuracy": test_acc,
                "seconds": elapsed,
            }
        )
        if epoch + 1 >= cfg.select_from_epoch and test_acc > best_acc:
            best_acc, best_epoch = test_acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # After an eps warm-up the network first adapts to the full radius and its clean accuracy dips, so
        # staleness counts from `patience` epochs after the warm-up (without this the MNIST teacher stopped
        # 8 epochs after its warm-up, at 90.8% clean accuracy, on its way to 91.6%).
        settle = cfg.select_from_epoch - 1 + ((cfg.patience or 0) if cfg.select_from_epoch > 1 else 0)
        stale = epoch + 1 - max(best_epoch, settle)
        stop_early = cfg.patience is not None and best_epoch > 0 and stale >= cfg.patience
        ended_early = ended_early or stop_early
        if progress_bar:
            best = f"best {best_acc:.4f} @ {best_epoch}" if best_epoch else "in warm-up, not eligible as best"
            tqdm.write(
                f"{desc} epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, test accuracy {test_acc:.4f} "
                f"({best}), {elapsed:.0f} s"
            )
        if ckpt_path is not None:
            _save_atomically(
                {
                    "config": dataclasses.asdict(cfg),
                    "method": repr(method.describe()),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "history": history,
                    "seconds": elapsed,
                    "stopped_early": stop_early,
                },
                ckpt_path,
            )
        if stop_early:
            if progress_bar:
                tqdm.write(f"{desc}: no better test accuracy for {cfg.patience} epochs, stopping early")
            break

    model.load_state_dict(best_state)
    model.eval()
    finished = ended_early or len(history) >= cfg.epochs
    return TrainResult(
        best_epoch=best_epoch,
        best_test_accuracy=best_acc,
        seconds=elapsed,
        history=history,
        finished=finished,
    )
