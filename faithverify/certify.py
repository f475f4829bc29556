"""The certification pipeline: for each eps and batch of points, attack (EmpLB), bound (FaithUB), record.

One pass, no back and forth (DESIGN.md): clean outputs by onnxruntime -> PGD witness, re-checked by
onnxruntime -> logit-difference bounds per network and method -> eq. 5-6 -> robustness attacks -> records
streamed to the results file.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from faithverify.attack import PGDConfig, faithfulness_attack, input_box, robustness_attacks
from faithverify.bounds.lirpa import BoundMethod, NetworkBounder, resolve_device
from faithverify.bounds.softmax import LogitDiffBounds, faithfulness_from_logit_bounds
from faithverify.pair import Pair
from faithverify.results import PointResult

# A witness's onnxruntime gap may exceed the bound only by float32 evaluation noise; anything more means a bug,
# and the run stops rather than report an unsound bound.
SOUNDNESS_SLACK = 1e-6


class SoundnessViolation(RuntimeError):
    """An attack found a larger gap than a 'sound' upper bound: a bug, never a result."""


@dataclass(frozen=True)
class CertifyConfig:
    eps: Sequence[float]
    methods: Sequence[BoundMethod] = (BoundMethod.IBP, BoundMethod.CROWN)
    pgd: PGDConfig = field(default_factory=PGDConfig)
    robustness: bool = True  # robust accuracy and distillation agreement (needs labels)
    robustness_steps: int = 50
    batch_size: int = 250
    device: str = "auto"
    alpha_iterations: int = 20
    domain: tuple[float, float] = (0.0, 1.0)


class PairBounder:
    """Logit-difference bounds for both networks of a pair, by any of the methods, and float32 copies of the
    networks for the attacks."""

    def __init__(self, pair: Pair, device: torch.device, alpha_iterations: int = 20) -> None:
        dim = int(np.prod(pair.input_shape))
        self.teacher = copy.deepcopy(pair.teacher.module).to(device=device, dtype=torch.float32).eval()
        self.student = copy.deepcopy(pair.student.module).to(device=device, dtype=torch.float32).eval()
        self.bounders = [
            NetworkBounder(
                model.module.flat_body(),
                dim,
                pair.num_classes,
                device=device,
                alpha_iterations=alpha_iterations,
            )
            for model in (pair.teacher, pair.student)
        ]

    def faith_ub(self, lower: np.ndarray, upper: np.ndarray, method: BoundMethod) -> np.ndarray:
        """FaithUB per point for boxes given in the model's input shape (float64)."""
        lo = torch.from_numpy(lower.reshape(len(lower), -1))
        hi = torch.from_numpy(upper.reshape(len(upper), -1))
        t, s = (b.logit_diff_bounds(lo, hi, method, batch_size=len(lo)) for b in self.bounders)
        return faithfulness_from_logit_bounds(t, s).value

    @staticmethod
    def exact(pair_outputs: dict[str, np.ndarray]) -> np.ndarray:
        """eps = 0: the box is a point, and eq. 5-6 on exact logit differences give the exact gap."""
        t = LogitDiffBounds.point(pair_outputs["z_t"])
        s = LogitDiffBounds.point(pair_outputs["z_s"])
        return faithfulness_from_logit_bounds(t, s).value


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """PGD's operations on small networks are too small to share between CPU threads: one thread is as fast
    when the machine is idle and far faster when it is not (benchmarks/results/threads.md)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def certify_batch(
    pair: Pair,
    bounder: PairBounder,
    indices: np.ndarray,
    x0: np.ndarray,
    labels: np.ndarray | None,
    eps: float,
    config: CertifyConfig,
    device: torch.device,
) -> list[PointResult]:
    """All stages for one batch of points at one eps."""
    n = len(indices)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    clean = pair.outputs_onnxruntime(x0)
    lower, upper = input_box(x0, eps, config.domain)
    teacher, student = bounder.teacher, bounder.student
    with _threads(1):
        attack = faithfulness_attack(teacher, student, x0, lower, upper, config.pgd, eps, device=device)
    witness_gap = np.abs(pair.gap_onnxruntime(attack.witness))
    clean_gap = np.abs(clean["gap"])
    # x0 is in the box too: the larger of the two re-checked gaps is the lower bound.
    use_witness = witness_gap.max(axis=1) >= clean_gap.max(axis=1)
    emp_gaps = np.where(use_witness[:, None], witness_gap, clean_gap)
    seconds["attack"] = time.perf_counter() - clock

    ubs: dict[str, np.ndarray] = {}
    for method in config.methods:
        clock = time.perf_counter()
        ubs[method.value] = bounder.faith_ub(lower, upper, method)
        seconds[method.value] = time.perf_counter() - clock

    robust = None
    if config.robustness and labels is not None:
        clock = time.perf_counter()
        with _threads(1):
            robust = robustness_attacks(
                teacher,
                student,
                x0,
                labels,
                lower,
                upper,
                eps,
                config.robustness_steps,
                config.pgd.seed,
                device,
            )
        seconds["robustness"] = time.perf_counter() - clock

    stacked = np.stack([ubs[m.value] for m in config.methods])
    best = stacked.argmin(axis=0)
    results = []
    for k in range(n):
        emp_lb = float(emp_gaps[k].max())
        faith_ub = float(stacked[best[k], k])
        if emp_lb > faith_ub + SOUNDNESS_SLACK:
            raise SoundnessViolation(
                f"point {int(indices[k])}, eps {eps}: witness gap {emp_lb:.8f} exceeds the "
                f"{config.methods[best[k]].value} bound {faith_ub:.8f}; please report this"
            )
        results.append(
            PointResult(
                index=int(indices[k]),
                eps=float(eps),
                label=None if labels is None else int(labels[k]),
                teacher_pred=int(clean["z_t"][k].argmax()),
                student_pred=int(clean["z_s"][k].argmax()),
                clean_gap=float(clean_gap[k].max()),
                emp_lb=emp_lb,
                emp_lb_class=int(emp_gaps[k].argmax()),
                faith_ub=faith_ub,
                faith_ub_method=config.methods[best[k]].value,
                bounds={m: float(v[k]) for m, v in ubs.items()},
                teacher_robust=None if robust is None else bool(robust.teacher_robust[k]),
                student_robust=None if robust is None else bool(robust.student_robust[k]),
                agreement=None if robust is None else bool(robust.agreement[k]),
                seconds={stage: t / n for stage, t in seconds.items()},
            )
        )
    return results


def certify(
    pair: Pair,
    x: np.ndarray,
    labels: np.ndarray | None,
    config: CertifyConfig,
    indices: np.ndarray | None = None,
    done: set[tuple[int, float]] | None = None,
    on_batch: Callable[[list[PointResult]], None] | None = None,
    progress: bool = True,
) -> list[PointResult]:
    """Run the pipeline over points ``x`` (in the model's input shape) and every eps of ``config``.

    ``done`` lists ``(index, eps)`` already computed (``--resume``); ``on_batch`` receives each finished batch
    (the results file writer).
    """
    from tqdm.auto import tqdm

    if indices is None:
        indices = np.arange(len(x))
    done = done or set()
    device = resolve_device(config.device)
    bounder = PairBounder(pair, device, config.alpha_iterations)
    todo = [
        (eps, np.array([k for k, i in enumerate(indices) if (int(i), float(eps)) not in done], dtype=int))
        for eps in config.eps
    ]
    total = sum(len(t) for _, t in todo)
    out: list[PointResult] = []
    with tqdm(total=total, desc="certify", unit="pt", disable=not progress, dynamic_ncols=True) as bar:
        for eps, positions in todo:
            bar.set_postfix(eps=eps)
            for start in range(0, len(positions), config.batch_size):
                chunk = positions[start : start + config.batch_size]
                batch = certify_batch(
                    pair,
                    bounder,
                    indices[chunk],
                    x[chunk],
                    None if labels is None else labels[chunk],
                    float(eps),
                    config,
                    device,
                )
                out.extend(batch)
                if on_batch is not None:
                    on_batch(batch)
                bar.update(len(chunk))
    return out
