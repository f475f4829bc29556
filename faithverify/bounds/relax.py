"""Linear relaxations of the two piecewise-linear layers, as the backward bound propagation uses them.

A relaxation of ``y = f(z)`` over bounds ``l <= z <= u`` is a pair of linear functions with
``lower(z) <= f(z) <= upper(z)`` for every ``z`` in the box. A linear form ``a · y`` is then bounded below by
``a⁺ · lower(z) + a⁻ · upper(z)`` (``a⁺``, ``a⁻``: the positive and negative parts of ``a``), which is how the
backward pass (:mod:`.crown`) crosses these layers.

**ReLU** ``y = max(z, 0)``, per neuron:

- ``u <= 0``: ``y = 0`` (both lines are 0); ``l >= 0``: ``y = z``;
- ``l < 0 < u`` (unstable): ``upper(z) = u / (u - l) · (z - l)``, the chord of the convex ReLU over ``[l, u]``;
  ``lower(z) = alpha · z`` for any ``alpha`` in ``[0, 1]`` (every such line lies below the ReLU). CROWN picks
  ``alpha = 1`` when ``u > -l`` and 0 otherwise; alpha-CROWN optimises it.

**Max-pool** ``y = max_k x_k`` over a window with bounds ``l_k <= x_k <= u_k`` (padding reads ``-inf``):

- ``lower(x) = x_m`` with ``m = argmax_k l_k`` (the maximum is at least any one element);
- ``upper(x) = a · x_n + b`` with ``n = argmax_k u_k`` and ``U' = max_{k != n} u_k``: every other element is at
  most ``U'``, so ``y <= max(x_n, U')``, which is convex in ``x_n`` and so lies below its chord over
  ``[l_n, u_n]``: ``a = (u_n - max(l_n, U')) / (u_n - l_n)`` (0 when ``u_n = l_n``), ``b = u_n - a · u_n``.
  When ``l_n >= U'`` (the window is decided) this is ``y = x_n``, exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from faithverify.bounds.torchnet import MaxPool, _pad


@dataclass(frozen=True)
class ReluRelaxation:
    """Per point and neuron (``[N, n]``): the upper line ``upper_slope · z + upper_shift`` and CROWN's default
    lower slope; ``unstable`` marks the neurons whose lower slope is free in ``[0, 1]``."""

    upper_slope: Tensor
    upper_shift: Tensor
    lower_slope: Tensor
    unstable: Tensor  # bool

    @staticmethod
    def of(lower: Tensor, upper: Tensor) -> ReluRelaxation:
        active = lower >= 0
        unstable = (lower < 0) & (upper > 0)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        up_slope = torch.where(unstable, upper / width, active.to(upper.dtype))
        up_shift = torch.where(unstable, -up_slope * lower, torch.zeros_like(lower))
        low_slope = torch.where(unstable, (upper > -lower).to(upper.dtype), active.to(upper.dtype))
        return ReluRelaxation(up_slope, up_shift, low_slope, unstable)

    def lower_slopes(self, alpha: Tensor | None) -> Tensor:
        """The lower slopes with ``alpha`` (any shape broadcasting to ``[N, R, n]``) on unstable neurons."""
        if alpha is None:
            return self.lower_slope.unsqueeze(1)
        return torch.where(self.unstable.unsqueeze(1), alpha, self.lower_slope.unsqueeze(1))

    def back(self, a: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``a`` ``[N, R, n]`` over the ReLU's output -> (coefficients over its input, constant ``[N, R]``)."""
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        coeffs = pos * self.lower_slopes(alpha) + neg * self.upper_slope.unsqueeze(1)
        const = (neg * self.upper_shift.unsqueeze(1)).sum(-1)
        return coeffs, const


@dataclass(frozen=True)
class MaxPoolRelaxation:
    """Per point and window (``[N, out]``): ``y >= x[lower_index]`` and ``y <= upper_slope · x[upper_index] +
    upper_shift`` (indices into the flat input)."""

    lower_index: Tensor
    upper_index: Tensor
    upper_slope: Tensor
    upper_shift: Tensor
    in_size: int

    @staticmethod
    def of(pool: MaxPool, lower: Tensor, upper: Tensor) -> MaxPoolRelaxation:
        lw = _pad(lower, -torch.inf)[..., pool.windows]  # [N, out, k]
        uw = _pad(upper, -torch.inf)[..., pool.windows]
        windows = pool.windows.unsqueeze(0).expand(len(lower), -1, -1)
        m = lw.argmax(dim=-1, keepdim=True)
        if uw.shape[-1] > 1:
            top = uw.topk(2, dim=-1)
            n, u_n, u_other = top.indices[..., :1], top.values[..., 0], top.values[..., 1]
        else:
            n, u_n = torch.zeros_like(m), uw[..., 0]
            u_other = torch.full_like(u_n, -torch.inf)
        l_n = lw.gather(-1, n).squeeze(-1)
        width = u_n - l_n
        flat = width > 0
        slope = torch.where(
            flat, (u_n - torch.maximum(l_n, u_other)) / torch.where(flat, width, 1.0), torch.zeros_like(u_n)
        )
        return MaxPoolRelaxation(
            lower_index=windows.gather(-1, m).squeeze(-1),
            upper_index=windows.gather(-1, n).squeeze(-1),
            upper_slope=slope,
            upper_shift=u_n - slope * u_n,
            in_size=pool.in_size,
        )

    def back(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``a`` ``[N, R, out]`` over the pool's output -> (coefficients over its input, constant ``[N, R]``)."""
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        n, r, _ = a.shape
        coeffs = a.new_zeros(n, r, self.in_size + 1)
        coeffs = coeffs.scatter_add(-1, self.lower_index.unsqueeze(1).expand(-1, r, -1), pos)
        up = neg * self.upper_slope.unsqueeze(1)
        coeffs = coeffs.scatter_add(-1, self.upper_index.unsqueeze(1).expand(-1, r, -1), up)
        const = (neg * self.upper_shift.unsqueeze(1)).sum(-1)
        return coeffs[..., : self.in_size], const
