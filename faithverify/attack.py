"""PGD attacks: the empirical lower bound (EmpLB), distillation agreement (Def. 3) and robust accuracy.

Every attack works in float32 on the torch modules and keeps its iterates inside the input box *as float32
numbers* (see :func:`float32_box`), so a witness is a float32 input that onnxruntime can re-check and that lies
in the real-valued box B = {x : |x - x0|_inf <= eps} ∩ domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def input_box(
    x0: np.ndarray, eps: float, domain: tuple[float, float] = (0.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """The L-inf ball of radius ``eps`` around each point, clipped to the domain, in float64."""
    x0 = np.asarray(x0, dtype=np.float64)
    return np.clip(x0 - eps, *domain), np.clip(x0 + eps, *domain)


def float32_box(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest float32 box inside a float64 box: round the lower end up and the upper end down."""
    lo = lower.astype(np.float32)
    hi = upper.astype(np.float32)
    lo = np.where(lo.astype(np.float64) < lower, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = np.where(hi.astype(np.float64) > upper, np.nextafter(hi, np.float32(-np.inf)), hi)
    return lo, np.maximum(hi, lo)


@dataclass(frozen=True)
class PGDConfig:
    """L-inf PGD with sign steps. ``step_size`` defaults to ``2.5 * eps / steps`` (Madry et al.)."""

    steps: int = 50
    restarts: int = 3
    step_size: float | None = None
    seed: int = 0

    def step_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / max(1, self.steps)


@dataclass(frozen=True)
class FaithfulnessAttackResult:
    witness: np.ndarray  # float32 [N, *shape], inside the box
    gap: np.ndarray  # float64 [N]: ||f_t - f_s||_inf at the witness (torch, float32)
    gap_class: np.ndarray  # int [N]: the class where the gap is attained


def _gap(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(teacher(x), dim=-1) - torch.softmax(student(x), dim=-1)


def _random_start(lo: torch.Tensor, hi: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(lo.shape, generator=generator, dtype=lo.dtype).to(lo.device)
    return lo + u * (hi - lo)


def faithfulness_attack(
    teacher: nn.Module,
    student: nn.Module,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    config: PGDConfig,
    eps: float,
    device: torch.device | str = "cpu",
) -> FaithfulnessAttackResult:
    """Maximise ``||f_t(x) - f_s(x)||_inf`` over each box (paper §4.1); the best iterate of all restarts wins.

    Restart 0 starts at ``x0`` (clipped into the box); the others at uniform random points of the box.
    """
    lo32, hi32 = float32_box(lower, upper)
    lo = torch.from_numpy(lo32).to(device)
    hi = torch.from_numpy(hi32).to(device)
    start = torch.from_numpy(np.asarray(x0, dtype=np.float32)).to(device)
    start = torch.minimum(torch.maximum(start, lo), hi)
    generator = torch.Generator().manual_seed(config.seed)
    step = config.step_for(eps)
    best_x = start.clone()
    with torch.no_grad():
        best_gap = _gap(teacher, student, start).abs().amax(dim=-1)
    for restart in range(max(1, config.restarts)):
        x = start.clone() if restart == 0 else _random_start(lo, hi, generator)
        for _ in range(config.steps + 1):
            x.requires_grad_(True)
            objective = _gap(teacher, student, x).abs().amax(dim=-1)
            (grad,) = torch.autograd.grad(objective.sum(), x)
            with torch.no_grad():
                improved = objective.detach() > best_gap
                best_gap = torch.where(improved, objective.detach(), best_gap)
                best_x[improved] = x.detach()[improved]
                x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lo), hi)
            if step == 0:
                break
    with torch.no_grad():
        final = _gap(teacher, student, best_x).abs()
    return FaithfulnessAttackResult(
        witness=best_x.cpu().numpy(),
        gap=final.amax(dim=-1).double().cpu().numpy(),
        gap_class=final.argmax(dim=-1).cpu().numpy(),
    )


def _pgd_misclassify(
    model: nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    step: float,
    steps: int,
    generator: torch.Generator,
    still_ok: torch.Tensor,
    check: nn.Module | None = None,
) -> torch.Tensor:
    """Untargeted PGD on ``CE(model(x), target)`` from a random start; returns which points survive.

    A point survives when, at every iterate, ``argmax model(x) == target`` and, when ``check`` is given (the
    teacher, for agreement), also ``argmax check(x) == argmax model(x)``.
    """
    x = _random_start(lo, hi, generator) if steps > 0 else x0.clone()
    ok = still_ok.clone()
    for it in range(steps + 1):
        x.requires_grad_(True)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            pred = logits.argmax(dim=-1)
            ok &= pred == target
            if check is not None:
                ok &= check(x).argmax(dim=-1) == pred
            if it < steps:
                x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lo), hi)
    return ok


@dataclass(frozen=True)
class RobustnessResult:
    teacher_robust: np.ndarray  # bool [N]: PGD-50 finds no input in B that the teacher misclassifies
    student_robust: np.ndarray  # bool [N]
    agreement: np.ndarray  # bool [N]: Def. 3, empirical distillation agreement


def robustness_attacks(
    teacher: nn.Module,
    student: nn.Module,
    x0: np.ndarray,
    labels: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    eps: float,
    steps: int = 50,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> RobustnessResult:
    """Robust accuracy of each model and the empirical distillation agreement (Def. 3).

    Both use ``steps``-step PGD with step ``2.5 * eps / steps`` from a random start in B. Agreement holds at a
    point when teacher and student agree at ``x0`` and PGD on the student's cross-entropy against the teacher's
    hard label at ``x0`` reaches no iterate where the two predictions differ.
    """
    lo32, hi32 = float32_box(lower, upper)
    lo, hi = torch.from_numpy(lo32).to(device), torch.from_numpy(hi32).to(device)
    x = torch.minimum(torch.maximum(torch.from_numpy(np.asarray(x0, np.float32)).to(device), lo), hi)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    step = 2.5 * eps / max(1, steps)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t_pred, s_pred = teacher(x).argmax(-1), student(x).argmax(-1)
    n_steps = steps if eps > 0 else 0
    t_rob = _pgd_misclassify(teacher, x, y, lo, hi, step, n_steps, gen, t_pred == y)
    s_rob = _pgd_misclassify(student, x, y, lo, hi, step, n_steps, gen, s_pred == y)
    agree = _pgd_misclassify(student, x, t_pred, lo, hi, step, n_steps, gen, t_pred == s_pred, check=teacher)
    return RobustnessResult(
        teacher_robust=t_rob.cpu().numpy(), student_robust=s_rob.cpu().numpy(), agreement=agree.cpu().numpy()
    )
