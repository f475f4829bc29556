"""From logit-difference bounds to a sound faithfulness bound (the paper's eq. 4-6).

Notation: ``d[n, i, j]`` bounds ``z_j - z_i`` for point ``n`` (eq. 4); the diagonal is zero.

Floating point: the bounds are for the network computed exactly on its stored weights, and they must also
hold for what onnxruntime computes in float32, since that is what users and our tests check against. So the
logit-difference bounds are widened by :data:`LOGIT_MARGIN` (absolute) plus :data:`RELATIVE_MARGIN` (relative)
before use. That covers (a) the rounding of the float64 bound propagation that produced them (sums of at most a
few thousand products, worst-case error ~n·2^-53·sum|terms|, below 1e-9 for any net whose absolute terms sum to
less than 1e4 per unit) and (b) float32 evaluation of logits of size up to a few hundred (a float32 ulp at 256
is 3e-5, so 1e-6 relative plus 1e-5 absolute leaves room for the error of a few hundred accumulated ulps,
measured at most ~1e-6 on our MNIST nets). Everything after runs in float64.

The softmax itself is evaluated in float32 too, and a logit margin does not cover that: for a confident output
(``sigma`` near 1) a logit moves ``sigma`` by only ``sigma (1 - sigma)`` per unit, while float32 rounds
``sigma`` to a multiple of 2^-24. Measured on the MNIST pair at eps 0: onnxruntime's gap 6.06596e-4 where the
exact gap is 6.06504e-4, 9e-8 above it. So each softmax interval is widened outward by the relative error of a
float32 softmax output, :func:`softmax_eval_error` (``exp`` within a few ulps, a sum of C terms, a division:
``(C + 8) 2^-24``, generous), which also covers the float64 rounding of eq. 5; and a faithfulness bound gets
:data:`GAP_ROUNDING` for the float32 subtraction of two probabilities. Together about 1e-6 on 10 classes, far
below the resolution anyone reads FaithUB at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

LOGIT_MARGIN = 1e-5
RELATIVE_MARGIN = 1e-6
GAP_ROUNDING = 2.0**-24  # float32 rounding of p_t - p_s, both in [0, 1]


def softmax_eval_error(num_classes: int) -> float:
    """Relative error of one softmax output as float32 evaluates it (module docstring)."""
    return (num_classes + 8) * 2.0**-24


def gap_eval_margin(num_classes: int) -> float:
    """Absolute float32 evaluation error of ``sigma_t,i - sigma_s,i``: each probability (at most 1) off by its
    relative error, plus the subtraction's rounding."""
    return 2 * softmax_eval_error(num_classes) + GAP_ROUNDING


def float_margin(value: ArrayOrTensor, weight: float = 1.0) -> ArrayOrTensor:
    """The one margin for float evaluation error in a bound on a linear form of the logits (module docstring):
    ``weight`` logits' worth (``||a||_1`` of the form ``a · z``; 1 for a logit difference's own bound) plus a
    relative part. Lower bounds move down by it, upper bounds up. Arrays or tensors alike (``abs`` is both's)."""
    return weight * LOGIT_MARGIN + RELATIVE_MARGIN * abs(value)


@dataclass(frozen=True)
class LogitDiffBounds:
    """Bounds on ``z_j - z_i`` over an input box, per point: ``lower[n, i, j] <= z_j - z_i <= upper[n, i, j]``."""

    lower: np.ndarray  # float64 [N, C, C]
    upper: np.ndarray  # float64 [N, C, C]

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape or self.lower.ndim != 3:
            raise ValueError(f"bad logit-difference bound shapes {self.lower.shape}, {self.upper.shape}")

    @staticmethod
    def from_lower(lower: np.ndarray | torch.Tensor) -> LogitDiffBounds:
        """Build both sides from lower bounds alone: ``ub(z_j - z_i) = -lb(z_i - z_j)``."""
        lo = _as_float64(lower)
        return LogitDiffBounds(lower=lo, upper=-np.swapaxes(lo, 1, 2))

    def intersect(self, other: LogitDiffBounds) -> LogitDiffBounds:
        """Any two sound bounds combine into a sound, tighter one."""
        return LogitDiffBounds(
            lower=np.maximum(self.lower, other.lower), upper=np.minimum(self.upper, other.upper)
        )

    def widened(self) -> LogitDiffBounds:
        """Outward rounding margin for the propagation that produced these bounds (module docstring)."""
        lo = self.lower - float_margin(self.lower)
        up = self.upper + float_margin(self.upper)
        c = lo.shape[1]
        eye = np.eye(c, dtype=bool)[None]
        return LogitDiffBounds(lower=np.where(eye, 0.0, lo), upper=np.where(eye, 0.0, up))

    @staticmethod
    def point(logits: np.ndarray) -> LogitDiffBounds:
        """Exact ``z_j - z_i`` at single inputs (eps = 0): lower == upper."""
        z = np.asarray(logits, dtype=np.float64)
        d = z[:, None, :] - z[:, :, None]
        return LogitDiffBounds(lower=d, upper=d.copy())


def softmax_of(z: np.ndarray) -> np.ndarray:
    """The softmax over the last axis, in the logits' precision (shifted by the maximum: no overflow)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _as_float64(t: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def _inv_one_plus_sum_exp(d: np.ndarray) -> np.ndarray:
    """``1 / (1 + sum_{j != i} exp(d[n, i, j]))`` for every ``n, i``, computed without overflow.

    With ``m = max(0, max_j d_ij)``: ``1/(1 + S) = exp(-m) / (exp(-m) + sum_j exp(d_ij - m))``. The diagonal
    must hold ``-inf`` so that it contributes nothing.
    """
    m = np.maximum(0.0, d.max(axis=2))
    shifted = np.exp(d - m[..., None]).sum(axis=2)
    e = np.exp(-m)
    return e / (e + shifted)


@dataclass(frozen=True)
class SoftmaxBounds:
    """Interval on each softmax output over the box (eq. 5): ``lower[n, i] <= softmax(z)_i <= upper[n, i]``."""

    lower: np.ndarray  # float64 [N, C]
    upper: np.ndarray  # float64 [N, C]


def softmax_bounds(d: LogitDiffBounds) -> SoftmaxBounds:
    """Eq. 5: ``sigma_i^lb = 1/(1 + sum_{j!=i} exp(d_ij^ub))`` and ``sigma_i^ub = 1/(1 + sum_{j!=i} exp(d_ij^lb))``.

    Sound because ``softmax(z)_i = 1/(1 + sum_{j!=i} exp(z_j - z_i))`` is decreasing in every ``z_j - z_i``.
    """
    c = d.lower.shape[1]
    eye = np.eye(c, dtype=bool)[None]
    lb = _inv_one_plus_sum_exp(np.where(eye, -np.inf, d.upper))
    ub = _inv_one_plus_sum_exp(np.where(eye, -np.inf, d.lower))
    r = softmax_eval_error(c)
    lb = np.clip(lb * (1.0 - r), 0.0, 1.0)
    ub = np.clip(ub * (1.0 + r), 0.0, 1.0)
    # Each softmax output also lies in [0, 1] and the outputs sum to 1: sigma_i <= 1 - sum_{k != i} sigma_k^lb.
    ub = np.minimum(ub, np.clip(1.0 - (lb.sum(axis=1, keepdims=True) - lb) + 1e-12, 0.0, 1.0))
    return SoftmaxBounds(lower=lb, upper=ub)


@dataclass(frozen=True)
class FaithfulnessBound:
    """Eq. 6 per point, with the class and direction that attain it."""

    value: np.ndarray  # float64 [N]: upper bound on max_x ||f_t(x) - f_s(x)||_inf
    argmax_class: np.ndarray  # int [N]
    per_class: np.ndarray  # float64 [N, C]: upper bound on max_x |f_t,i(x) - f_s,i(x)|


def faithfulness_bound(teacher: SoftmaxBounds, student: SoftmaxBounds) -> FaithfulnessBound:
    """Eq. 6: ``max_i max(sigma_t,i^ub - sigma_s,i^lb, sigma_s,i^ub - sigma_t,i^lb)``, plus the float32 rounding
    of the subtraction (:data:`GAP_ROUNDING`), clipped to [0, 1]."""
    per_class = np.maximum(teacher.upper - student.lower, student.upper - teacher.lower) + GAP_ROUNDING
    per_class = np.clip(per_class, 0.0, 1.0)
    return FaithfulnessBound(
        value=per_class.max(axis=1), argmax_class=per_class.argmax(axis=1), per_class=per_class
    )


def faithfulness_from_logit_bounds(teacher: LogitDiffBounds, student: LogitDiffBounds) -> FaithfulnessBound:
    """Eq. 4-6 end to end, with the rounding margins applied."""
    return faithfulness_bound(softmax_bounds(teacher.widened()), softmax_bounds(student.widened()))
