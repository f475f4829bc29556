"""Train one model from a recipe, end to end: data, teacher, training with checkpoints, ONNX export and check,
evaluation, and a model card (``<name>.card.json`` for programs, ``<name>.card.md`` for people).

This is what ``faithverify train-teacher`` and ``faithverify distill`` run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from faithverify.data import Dataset, fit_to_input_shape, load_dataset
from faithverify.errors import ModelMismatchError
from faithverify.onnx_io import load_model
from faithverify.train import paper_numbers as paper
from faithverify.train.architectures import build, fold_normalisation, get_spec, with_normalisation
from faithverify.train.attacks import accuracy, robust_accuracy
from faithverify.train.export import check_onnx, export_onnx
from faithverify.train.loop import train
from faithverify.train.recipes import METHOD_TITLES, Recipe, get_recipe


@dataclass
class ModelCard:
    """What a trained model is and how well it does: written beside the ONNX file."""

    file: str
    sha256: str
    recipe: dict[str, Any]
    method: str
    architecture: str
    parameters: int
    dataset: str
    train_size: int
    test_size: int
    clean_accuracy: float
    robust_accuracy: dict[str, float]  # eps (as text) -> PGD-50 accuracy on the test set
    best_epoch: int
    train_seconds: float
    eval_seconds: float
    onnx_max_abs_diff: float
    teacher: str | None = None
    teacher_sha256: str | None = None
    teacher_agreement: float | None = None  # share of test points with the teacher's arg-max
    environment: dict[str, str] = field(default_factory=dict)
    command: str = ""
    epochs_trained: int | None = None  # epochs the run had when this model was exported (None: older cards)
    snapshot: bool = False  # exported from an unfinished run (`--snapshot`)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        return cls(**json.loads(Path(path).read_text()))


def recipe_of(card: ModelCard) -> Recipe | None:
    """The recipe ``card`` was trained with (fields added since it was written take their defaults), or None
    for a card from an older faithverify whose recipe had fields that no longer exist (retrain that model)."""
    known = {f.name for f in dataclasses.fields(Recipe)}
    if set(card.recipe) - known:
        return None
    norm = card.recipe.get("normalisation")
    return Recipe(
        **{
            **card.recipe,
            "eval_eps": tuple(card.recipe.get("eval_eps", ())),
            "normalisation": tuple(norm) if norm is not None else None,
        }
    )


def eps_scale(onnx_path: Path) -> float:
    """Pixels per unit of the paper's radii for a model with a card (its recipe's normalisation std), 1 for a
    model without one: what turns the paper's eps into the ``--eps`` this model takes."""
    card = card_paths(onnx_path)[0]
    recipe = recipe_of(ModelCard.read(card)) if card.exists() else None
    return recipe.eps_scale if recipe is not None else 1.0


def card_paths(onnx_path: Path) -> tuple[Path, Path]:
    """``(<stem>.card.json, <stem>.card.md)`` beside the ONNX file."""
    stem = onnx_path.with_suffix("")
    return stem.with_name(stem.name + ".card.json"), stem.with_name(stem.name + ".card.md")


class ReshapingTeacher(nn.Module):
    """A loaded ONNX teacher fed with inputs in the student's layout (same number of values per sample)."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.module = module
        self.input_shape = input_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.reshape(x.shape[0], *self.input_shape))


def load_teacher(path: str | Path, student_input_shape: tuple[int, ...]) -> nn.Module:
    """The ONNX teacher as a float32 torch module (checked against onnxruntime on load)."""
    loaded = load_model(path)
    if int(np.prod(loaded.input_shape)) != int(np.prod(student_input_shape)):
        raise ModelMismatchError(
            f"{path}: the teacher takes inputs of shape {list(loaded.input_shape)}, the student "
            f"{list(student_input_shape)}: they must hold the same number of values"
        )
    module = loaded.module.float()
    return ReshapingTeacher(module, loaded.input_shape)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fit(dataset: Dataset, input_shape: tuple[int, ...]) -> Dataset:
    return dataclasses.replace(dataset, x=fit_to_input_shape(dataset.x, input_shape))


def _card_eps(recipe: Recipe) -> float:
    """The radius of a card's robust accuracy, in the recipe's units: the training radius, or for SD (trained
    without an attack) its dataset's teacher radius, so the students of one teacher are compared at one eps."""
    if recipe.adv_eps > 0:
        return recipe.adv_eps
    try:
        return get_recipe(f"{recipe.dataset}/teacher").adv_eps
    except ValueError:
        return recipe.eval_eps[0] if recipe.eval_eps else 0.0


def checkpoint_path(recipe: Recipe, checkpoint_dir: Path) -> Path:
    return checkpoint_dir / recipe.dataset / f"{recipe.method}-{recipe.fingerprint()}.ckpt"


def train_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    teacher_path: str | Path | None = None,
    data_root: str | Path | None = None,
    data: str | None = None,
    checkpoint_dir: str | Path = "runs",
    progress: bool = True,
    threads: int = 2,
    command: str = "",
    snapshot: bool = False,
) -> ModelCard:
    """Train ``recipe``, write ``out`` (ONNX) and its card; return the card.

    ``data`` is the dataset name, directory or ``.npz`` train file (default: the recipe's dataset under
    ``data_root``). An interrupted run resumes from its checkpoint; a finished one is only reloaded;
    ``snapshot`` exports the best state of the checkpoint as it stands, training no further.
    """
    out = Path(out)
    spec = get_spec(recipe.arch)
    input_shape = tuple(spec.input_shape)
    source = data if data is not None else recipe.dataset
    train_set = _fit(load_dataset(source, "train", data_root=data_root), input_shape)
    test_set = _fit(load_dataset(source, "test", data_root=data_root), input_shape)

    teacher: nn.Module | None = None
    if not recipe.is_teacher:
        if teacher_path is None:
            raise ValueError(f"recipe {recipe.name} distils a student: give the teacher's ONNX file")
        teacher = load_teacher(teacher_path, input_shape)

    torch.manual_seed(recipe.seed)
    model = with_normalisation(build(recipe.arch), recipe.normalisation)
    result = train(
        model,
        recipe.build_method(teacher),
        train_set,
        test_set,
        recipe.train_config(threads),
        checkpoint=checkpoint_path(recipe, Path(checkpoint_dir)),
        progress_bar=progress,
        desc=recipe.name,
        snapshot=snapshot,
    )
    # The ONNX file reads [0, 1] pixels whatever the training saw: a normalisation goes into the first layer.
    model = fold_normalisation(model)
    export_onnx(
        model,
        input_shape,
        out,
        metadata={"faithverify.architecture": recipe.arch, "faithverify.domain": "0,1"},
    )
    onnx_diff = max(
        check_onnx(model, out, inputs=test_set.x[:500]),
        check_onnx(model, out, input_shape=input_shape, n=256, seed=recipe.seed),
    )

    eval_started = time.perf_counter()
    x, y = torch.from_numpy(test_set.x), torch.from_numpy(test_set.y)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # Table 6's grid (PGD-50 at every eps of the dataset's grid), plus the training radius; the card's keys
        # are radii on the model's input (pixels), what `certify --eps` takes.
        grid = sorted({*recipe.eval_eps, *([_card_eps(recipe)] if _card_eps(recipe) > 0 else [])})
        robust = {
            f"{recipe.pixel_eps(eps):.6g}": robust_accuracy(
                model, x, y, recipe.pixel_eps(eps), seed=recipe.seed
            )
            for eps in grid
        }
        agreement = None
        if teacher is not None:
            with torch.no_grad():
                agreement = float((model(x).argmax(1) == teacher(x).argmax(1)).float().mean())
        clean = accuracy(model, x, y)
    finally:
        torch.set_num_threads(threads_before)

    card = ModelCard(
        file=out.name,
        sha256=_sha256(out),
        recipe=dataclasses.asdict(recipe),
        method=METHOD_TITLES[recipe.method],
        architecture=spec.describe(),
        parameters=sum(p.numel() for p in model.parameters()),
        dataset=train_set.name,
        train_size=len(train_set),
        test_size=len(test_set),
        clean_accuracy=clean,
        robust_accuracy=robust,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        eval_seconds=time.perf_counter() - eval_started,
        onnx_max_abs_diff=onnx_diff,
        teacher=Path(teacher_path).name if teacher_path is not None else None,
        teacher_sha256=_sha256(Path(teacher_path)) if teacher_path is not None else None,
        teacher_agreement=agreement,
        environment={
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU",
            "threads": str(threads),
        },
        command=command,
        epochs_trained=result.epochs_done,
        snapshot=not result.finished,
    )
    json_path, md_path = card_paths(out)
    json_path.write_text(card.to_json())
    md_path.write_text(render_card(card, recipe))
    return card


PAPER_SETTINGS = "the paper's (Appendix A); where it is silent, see `faithverify recipes`"


def eps_text(eps: str | float, dataset: str) -> str:
    """A radius as the paper writes it: ``k/255`` on Fashion-MNIST and CIFAR-10, a decimal on MNIST."""
    value = float(eps)
    k = round(value * 255)
    return f"{k}/255" if dataset != "mnist" and abs(value * 255 - k) < 1e-3 else f"{value:g}"


def card_eps_text(pixel_eps: str | float, recipe: Recipe) -> str:
    """A card radius (pixels) as the paper writes it, with the pixel value beside it for a normalised recipe."""
    paper_eps = float(pixel_eps) / recipe.eps_scale
    text = eps_text(paper_eps, recipe.dataset)
    return text if recipe.normalisation is None else f"{text} ({float(pixel_eps):.4g} in pixels)"


def against_the_paper(card: ModelCard, recipe: Recipe) -> list[str]:
    """Card lines comparing the model with the paper's clean accuracy and Table 6, and what was tried where it
    misses the reproduction tolerances."""
    clean = paper.CLEAN.get(recipe.dataset, {}).get(recipe.method)
    robust = paper.ROBUST.get(recipe.dataset, {}).get(recipe.method, {})
    if clean is None:
        return []
    cells = [
        f"clean {100 * card.clean_accuracy:.1f}% vs {clean:.1f}% ({100 * card.clean_accuracy - clean:+.1f})"
    ]
    misses = abs(100 * card.clean_accuracy - clean) > paper.CLEAN_TOLERANCE
    for key, value in card.robust_accuracy.items():
        paper_eps = float(key) / recipe.eps_scale
        theirs = next((v for e, v in robust.items() if abs(e - paper_eps) < 1e-5 and v is not None), None)
        if theirs is None:
            continue
        cells.append(
            f"{eps_text(paper_eps, recipe.dataset)} {100 * value:.1f}% vs {theirs:.1f}% "
            f"({100 * value - theirs:+.1f})"
        )
        misses |= abs(100 * value - theirs) > paper.ROBUST_TOLERANCE
    out = [f"- **Against the paper** (ours vs its clean accuracy and Table 6, PGD-50): {'; '.join(cells)}."]
    if misses:
        out.append(
            f"- **Not a reproduction** (more than {paper.CLEAN_TOLERANCE:g} point clean or "
            f"{paper.ROBUST_TOLERANCE:g} points robust off the paper). Tried: {paper.TRIED[recipe.dataset]}."
        )
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def render_card(card: ModelCard, recipe: Recipe) -> str:
    """The Markdown card: what the file is, how it was trained, how well it does."""
    rob = (
        ", ".join(f"{_pct(v)} at eps {card_eps_text(e, recipe)}" for e, v in card.robust_accuracy.items())
        or "not measured"
    )
    lines = [
        f"# `{card.file}`: {recipe.name}",
        "",
        f"- **Network**: {card.architecture}; {card.parameters:,} parameters. Input pixels in [0, 1]"
        + (
            f", trained on (x - {recipe.normalisation[0]:g}) / {recipe.normalisation[1]:g}, which the first "
            f"layer holds: radii below are in those units as the paper gives them, with the pixel radius that "
            f"`certify --eps` takes beside them"
            if recipe.normalisation is not None
            else ", no normalisation"
        )
        + "; output logits (no softmax).",
        f"- **Method**: {recipe.describe_method()}.",
    ]
    if card.teacher is not None:
        lines.append(f"- **Teacher**: `{card.teacher}` (sha256 `{card.teacher_sha256}`).")
    lines += [
        f"- **Training**: {recipe.epochs} epochs, SGD momentum {recipe.momentum:g}, weight decay "
        f"{recipe.weight_decay:g}, batch {recipe.batch_size}, learning rate {recipe.lr:g} cosine-annealed to "
        f"{recipe.lr_end:g}; "
        + (f"early stopping after {recipe.patience} epochs without progress; " if recipe.patience else "")
        + (
            f"eps grows from 0 over the first {100 * recipe.eps_warmup:.0f}% of the steps; "
            if recipe.uses_attack and recipe.eps_warmup > 0
            else ""
        )
        + f"seed {recipe.seed}. Best epoch by clean test accuracy: {card.best_epoch}"
        + (f" of {card.epochs_trained} trained" if card.epochs_trained is not None else "")
        + (" (a snapshot of an unfinished run)." if card.snapshot else "."),
        f"- **Settings**: {recipe.deviation or PAPER_SETTINGS}.",
        f"- **Data**: {card.dataset}, {card.train_size:,} training and {card.test_size:,} test images, "
        "no augmentation.",
        f"- **Clean accuracy** (test set): {_pct(card.clean_accuracy)}.",
        f"- **Robust accuracy** (50-step PGD, step 2.5 eps / 50, an upper bound): {rob}.",
    ]
    if card.teacher_agreement is not None:
        lines.append(
            f"- **Agreement with the teacher** (clean test set, same arg-max): {_pct(card.teacher_agreement)}."
        )
    lines += against_the_paper(card, recipe)
    lines += [
        f"- **Time**: training {card.train_seconds / 60:.1f} min, evaluation {card.eval_seconds / 60:.1f} min on "
        f"{card.environment.get('threads', '?')} threads ({card.environment.get('machine', '')}, torch "
        f"{card.environment.get('torch', '')}).",
        f"- **ONNX**: opset 17, matches the torch model under onnxruntime within {card.onnx_max_abs_diff:.1e}; "
        f"sha256 `{card.sha256}`.",
    ]
    if card.command:
        lines += ["", "Reproduce:", "", "```", card.command, "```"]
    return "\n".join(lines) + "\n"
