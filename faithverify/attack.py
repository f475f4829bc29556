"""PGD attacks: the empirical lower bound (EmpLB), distillation agreement (Def. 3) and robust accuracy.

Every attack works in float32 on the torch modules and keeps its iterates inside the input box *as float32
numbers* (see :func:`float32_box`), so a witness is a float32 input that onnxruntime can re-check and that lies
in the real-valued box B = {x : |x - x0|_inf <= eps} ∩ domain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from faithverify.attack_config import PGDConfig

__all__ = [
    "PGDConfig",
    "faithfulness_attack",
    "float32_box",
    "input_box",
    "maximize_in_box",
    "robustness_attacks",
]


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
class FaithfulnessAttackResult:
    witness: np.ndarray  # float32 [N, *shape], inside the box
    gap: np.ndarray  # float64 [N]: ||f_t - f_s||_inf at the witness (torch, float32)
    gap_class: np.ndarray  # int [N]: the class where the gap is attained


def _gap(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(teacher(x), dim=-1) - torch.softmax(student(x), dim=-1)


def point_uniforms(seed: int, keys: np.ndarray, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """``[len(keys), *shape]`` uniforms in [0, 1), one independent stream per point key.

    A point's random starts depend on the seed, its key (its index in the dataset) and the stream (which
    attack), never on which other points share its batch: a record is the same whatever ``--batch-size``,
    ``--start`` or ``--resume`` put beside it.
    """
    out = np.empty((len(keys), *shape), dtype=np.float32)
    for k, key in enumerate(np.asarray(keys, dtype=np.int64)):
        out[k] = np.random.default_rng((seed, int(key) & 0x7FFFFFFFFFFFFFFF, stream)).random(
            shape, np.float32
        )
    return out


def _random_start(
    lo: torch.Tensor, hi: torch.Tensor, seed: int, keys: np.ndarray, stream: int = 0
) -> torch.Tensor:
    """A uniform point of each box ``[lo[k], hi[k]]``, drawn from the stream of ``keys[k]``."""
    u = torch.from_numpy(point_uniforms(seed, keys, stream, tuple(lo.shape[1:]))).to(lo.device, lo.dtype)
    return lo + u * (hi - lo)


def _keys(keys: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if keys is None else np.asarray(keys, dtype=np.int64)


def _checkpoints(steps: int) -> set[int]:
    """APGD's checkpoints (Croce and Hein, 2020): p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06), as iteration numbers."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {math.ceil(q * steps) for q in p[1:] if q < 1}


def maximize_in_box(
    objective: Callable[[torch.Tensor], torch.Tensor],
    starts: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    steps: int,
    step: float | torch.Tensor | None = None,
    deadline: float | None = None,
    keep: Literal["best", "last"] = "best",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one PGD loop: signed-gradient ascent of ``objective`` (per-sample ``[B]``) from ``starts``
    ``[B, ...]`` within the box ``[lo, hi]``, used by the EmpLB attack, the VNN engine, robust accuracy and
    adversarial training. Returns the best iterate of each sample and its value (``keep="best"``), or the last
    iterate and ``objective`` at the one before it (``keep="last"``, training's PGD, which then evaluates nothing
    more than its steps). No step starts after ``deadline`` (``time.monotonic()``).

    ``step`` None: APGD's schedule, the step starting at ``2 * (hi - lo) / 2`` per input (APGD's ``2 eps``) with
    momentum 0.75 and halving at APGD's checkpoints for every sample whose best value did not improve since the
    last one (which then restarts from its best point). ``step`` given: Madry et al.'s fixed step (absolute, a
    number or a tensor broadcasting over the inputs), no momentum. With ``keep="best"`` ``objective`` sees every
    iterate, the first and the last included (the robustness check relies on it).
    """
    track = keep == "best"
    if not track and step is None:
        raise ValueError("APGD's schedule needs the best values: keep='last' takes a fixed step")
    shape = (len(starts),) + (1,) * (starts.dim() - 1)
    if step is None:
        scale = torch.full(shape, 2.0, dtype=starts.dtype, device=starts.device)
        fixed = None
    else:
        fixed = step
    half = (hi - lo) / 2
    checkpoints = _checkpoints(steps) if step is None else set()
    x = starts.clone()
    prev = x.clone()
    best_x = x.clone()
    best = torch.full((len(starts),), -torch.inf, dtype=starts.dtype, device=starts.device)
    if track:
        with torch.no_grad():
            best = objective(x)
    at_checkpoint = best.clone()
    value = best
    for it in range(steps):
        if deadline is not None and time.monotonic() >= deadline:
            break
        x.requires_grad_(True)
        with torch.enable_grad():  # also when the caller is under no_grad: the gradient is w.r.t. x only
            value = objective(x)
            (grad,) = torch.autograd.grad(value.sum(), x)
        with torch.no_grad():
            value = value.detach()
            if track:
                improved = value > best
                best = torch.where(improved, value, best)
                best_x[improved] = x.detach()[improved]
            if fixed is not None:
                z = torch.minimum(torch.maximum(x.detach() + fixed * grad.sign(), lo), hi)
            else:
                z = torch.minimum(torch.maximum(x.detach() + scale * half * grad.sign(), lo), hi)
                if it > 0:
                    z = x.detach() + 0.75 * (z - x.detach()) + 0.25 * (x.detach() - prev)
                    z = torch.minimum(torch.maximum(z, lo), hi)
            prev, x = x.detach(), z
            if it + 1 in checkpoints:
                stalled = best <= at_checkpoint
                scale[stalled] = scale[stalled] / 2
                x[stalled] = best_x[stalled]
                prev[stalled] = best_x[stalled]
                at_checkpoint = best.clone()
    if not track:
        return x.detach(), value
    with torch.no_grad():
        value = objective(x)
        improved = value > best
        best = torch.where(improved, value, best)
        best_x[improved] = x[improved]
    return best_x, best


def _candidate_classes(teacher: nn.Module, student: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]``: per point the class of the largest gap at ``x``, then the most likely classes under either
    network (without repeats)."""
    with torch.no_grad():
        pt, ps = torch.softmax(teacher(x), -1), torch.softmax(student(x), -1)
    c = pt.shape[-1]
    k = min(k, c)
    score = torch.maximum(pt, ps)
    score = score + 2.0 * torch.nn.functional.one_hot((pt - ps).abs().argmax(-1), c).to(score.dtype)
    return score.topk(k, dim=-1).indices


def faithfulness_attack(
    teacher: nn.Module,
    student: nn.Module,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    config: PGDConfig,
    eps: float,
    device: torch.device | str = "cpu",
    keys: np.ndarray | None = None,
) -> FaithfulnessAttackResult:
    """Maximise ``||f_t(x) - f_s(x)||_inf`` over each box (paper §4.1), one objective at a time.

    ``||f_t - f_s||_inf`` is the largest of ``±(f_t,c - f_s,c)`` over classes ``c``; attacking each of these
    smooth objectives on its own (for the ``config.classes`` candidate classes and both signs, plus the
    non-smooth maximum itself) finds larger gaps than ascending the maximum alone, whose gradient only ever
    sees the class that is largest at the current iterate. Every objective runs ``config.restarts`` times (from
    ``x0``, then from random points drawn from each point's own stream, keyed by ``keys``: the points' indices
    in the dataset, default their positions), all batched; the best iterate of all runs wins. ``eps`` is unused
    (the box says everything); it is kept for callers.
    """
    del eps
    lo32, hi32 = float32_box(lower, upper)
    lo = torch.from_numpy(lo32).to(device)
    hi = torch.from_numpy(hi32).to(device)
    start = torch.from_numpy(np.asarray(x0, dtype=np.float32)).to(device)
    start = torch.minimum(torch.maximum(start, lo), hi)
    n = len(start)
    classes = _candidate_classes(teacher, student, start, config.classes)  # [N, K]
    # Objectives: (class, sign) pairs, and -1 for the maximum over classes itself.
    whole = torch.full((n, 1), -1, device=start.device, dtype=classes.dtype)
    cls = torch.cat([classes, classes, whole], dim=1)  # [N, 2K+1]
    sign = torch.cat([torch.ones_like(classes), -torch.ones_like(classes), -whole], dim=1)
    n_obj = cls.shape[1]
    runs = max(1, config.restarts)
    # Copy b = (restart, objective, point).
    point = torch.arange(n, device=start.device).repeat(runs * n_obj)
    cls_b = cls.T.reshape(-1).repeat(runs)
    sign_b = sign.T.reshape(-1).repeat(runs).to(start.dtype)
    lo_b, hi_b = lo[point], hi[point]
    starts = start[point].clone()
    if runs > 1:  # restarts after the first: random, [restart, objective, point] from each point's stream
        shape = tuple(start.shape[1:])
        u = point_uniforms(config.seed, _keys(keys, n), 0, ((runs - 1) * n_obj, *shape))
        u_b = torch.from_numpy(np.ascontiguousarray(np.moveaxis(u, 0, 1)).reshape(-1, *shape)).to(start)
        fresh = slice(n * n_obj, None)
        starts[fresh] = lo_b[fresh] + u_b * (hi_b[fresh] - lo_b[fresh])
    picked = cls_b.clamp(min=0)

    def objective(x: torch.Tensor) -> torch.Tensor:
        gap = _gap(teacher, student, x)
        one = (gap.gather(-1, picked.unsqueeze(-1)).squeeze(-1)) * sign_b
        return torch.where(cls_b >= 0, one, gap.abs().amax(dim=-1))

    steps = config.steps if eps_positive(lo32, hi32) else 0
    # A fixed step is given in units of each input's half-width (PGDConfig.step_size).
    step = None if config.step_size is None else config.step_size * (hi_b - lo_b) / 2
    best_x, _ = maximize_in_box(objective, starts, lo_b, hi_b, steps, step)
    with torch.no_grad():
        gaps = _gap(teacher, student, best_x).abs()  # [B, C]
        value = gaps.amax(dim=-1).reshape(runs * n_obj, n)
        winner = value.argmax(dim=0)  # per point, which copy
        chosen = winner * n + torch.arange(n, device=start.device)
        witness = best_x[chosen]
        # x0 itself is in the box too
        at_x0 = _gap(teacher, student, start).abs()
        use_x0 = at_x0.amax(-1) > gaps[chosen].amax(-1)
        witness = torch.where(use_x0.reshape(-1, *[1] * (start.dim() - 1)), start, witness)
        final = _gap(teacher, student, witness).abs()
    return FaithfulnessAttackResult(
        witness=witness.cpu().numpy(),
        gap=final.amax(dim=-1).double().cpu().numpy(),
        gap_class=final.argmax(dim=-1).cpu().numpy(),
    )


def eps_positive(lo: np.ndarray, hi: np.ndarray) -> bool:
    return bool(np.any(hi > lo))


def _pgd_misclassify(
    model: nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    step: float,
    steps: int,
    start: tuple[int, np.ndarray, int],
    still_ok: torch.Tensor,
    check: nn.Module | None = None,
) -> torch.Tensor:
    """Untargeted PGD on ``CE(model(x), target)`` from a random start; returns which points survive.

    A point survives when, at every iterate, ``argmax model(x) == target`` and, when ``check`` is given (the
    teacher, for agreement), also ``argmax check(x) == argmax model(x)``. ``start`` is (seed, point keys, stream)
    of the random start.
    """
    ok = still_ok.clone()

    def loss(x: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        # The survival check rides on the loop's evaluations: maximize_in_box evaluates every iterate.
        with torch.no_grad():
            pred = logits.argmax(dim=-1)
            ok.logical_and_(pred == target)
            if check is not None:
                ok.logical_and_(check(x).argmax(dim=-1) == pred)
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    if steps == 0:
        with torch.no_grad():
            loss(x0)
        return ok
    maximize_in_box(loss, _random_start(lo, hi, *start), lo, hi, steps, step)
    return ok


def robust_mask(
    model: nn.Module,
    x0: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    eps: float,
    *,
    steps: int = 50,
    seed: int = 0,
    domain: tuple[float, float] = (0.0, 1.0),
    device: torch.device | str = "cpu",
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """The one definition of robustness a point gets everywhere (certify, model cards, the release gate): the
    paper's PGD-50, step ``2.5 * eps / 50``, from a random start in the ball; the point is robust when the model
    is right at ``x0`` and at every iterate. ``keys`` (the points' indices) key each point's random start."""
    x0 = np.asarray(x0.cpu() if isinstance(x0, torch.Tensor) else x0)
    lower, upper = input_box(x0, eps, domain)
    lo32, hi32 = float32_box(lower, upper)
    lo, hi = torch.from_numpy(lo32).to(device), torch.from_numpy(hi32).to(device)
    x = torch.minimum(torch.maximum(torch.from_numpy(np.asarray(x0, np.float32)).to(device), lo), hi)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
    with torch.no_grad():
        ok = model(x).argmax(-1) == y
    step = 2.5 * eps / max(1, steps)
    start = (seed, _keys(keys, len(x)), 0)
    return _pgd_misclassify(model, x, y, lo, hi, step, steps if eps > 0 else 0, start, ok).cpu().numpy()


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
    keys: np.ndarray | None = None,
) -> RobustnessResult:
    """Robust accuracy of each model and the empirical distillation agreement (Def. 3).

    Both use ``steps``-step PGD with step ``2.5 * eps / steps`` from a random start in B. Agreement holds at a
    point when teacher and student agree at ``x0`` and PGD on the student's cross-entropy against the teacher's
    hard label at ``x0`` reaches no iterate where the two predictions differ. Random starts come from each
    point's stream (``keys``, as in :func:`robust_mask`: the teacher's robustness here is the same as there).
    """
    lo32, hi32 = float32_box(lower, upper)
    lo, hi = torch.from_numpy(lo32).to(device), torch.from_numpy(hi32).to(device)
    x = torch.minimum(torch.maximum(torch.from_numpy(np.asarray(x0, np.float32)).to(device), lo), hi)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    step = 2.5 * eps / max(1, steps)
    k = _keys(keys, len(x))
    with torch.no_grad():
        t_pred, s_pred = teacher(x).argmax(-1), student(x).argmax(-1)
    n_steps = steps if eps > 0 else 0
    t_rob = _pgd_misclassify(teacher, x, y, lo, hi, step, n_steps, (seed, k, 0), t_pred == y)
    s_rob = _pgd_misclassify(student, x, y, lo, hi, step, n_steps, (seed, k, 0), s_pred == y)
    agree = _pgd_misclassify(
        student, x, t_pred, lo, hi, step, n_steps, (seed, k, 1), t_pred == s_pred, check=teacher
    )
    return RobustnessResult(
        teacher_robust=t_rob.cpu().numpy(), student_robust=s_rob.cpu().numpy(), agreement=agree.cpu().numpy()
    )
