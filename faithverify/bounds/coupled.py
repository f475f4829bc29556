"""A faithfulness bound that couples teacher and student through their shared input.

Eq. 6 bounds ``sigma_t,i(x) - sigma_s,i(x)`` by ``max_x sigma_t,i - min_x sigma_s,i``: the two extremes are taken
at different inputs, so even exact per-network bounds leave a floor above the true worst gap (when the student's
confidence drops, the teacher's usually drops with it). Here the difference is bounded at one ``x`` at a time:

1. **Softmax, relaxed linearly in the logit differences** ``d_j = z_j - z_i`` (``j != i``) over their intervals
   ``[l_j, u_j]``, with ``sigma_i = g(S)``, ``g(S) = 1 / (1 + S)``, ``S = sum_j exp(d_j)``; ``g`` is convex and
   decreasing, ``exp`` convex:

   - upper line (the network on top): ``exp(d_j) >= e^{t_j} (1 + d_j - t_j)`` (a tangent, below the convex
     ``exp``), so ``S >= L(d)``; and ``g(S) <= g(S_lo) + k (S - S_lo)`` on ``[S_lo, S_hi] = [sum e^{l_j},
     sum e^{u_j}]`` (the chord of the convex ``g``, slope ``k <= 0``), which only grows when ``S`` is replaced
     by the smaller ``L(d)``: ``sigma_i <= g(S_lo) + k (L(d) - S_lo)``;
   - lower line (the network below): ``exp(d_j) <= m_j d_j + b_j`` (the chord of ``exp`` over ``[l_j, u_j]``),
     so ``S <= U(d)``; and ``g(S) >= g(S_0) + g'(S_0) (S - S_0)`` (a tangent, below the convex ``g``), which only
     shrinks when ``S`` is replaced by the larger ``U(d)`` (``g' < 0``): ``sigma_i >= g(S_0) + g'(S_0) (U(d) - S_0)``.

   The tangent points ``t_j`` and ``S_0`` are free: any choice is sound. They are taken at an anchor input
   (``x0`` and the attack's witness; the smaller bound wins).

2. **One linear form of both networks' logits**: step 1 gives ``sigma_t,i(x) - sigma_s,i(x) <= c_t · z_t(x) +
   c_s · z_s(x) + k0``. Each network's part is pushed back to the input by CROWN with its own intermediate
   bounds, and the two input forms are **added before** the box is minimised over: where teacher and student
   respond alike to ``x``, their input terms cancel. Eq. 6 would concretise each part on its own.

The result is intersected with eq. 6 term by term, so it is never looser. Floating point: the logit-difference
intervals are the widened ones of :mod:`faithverify.bounds.softmax`, the propagation runs in float64, and the
result gets the margin of :func:`coupled_margin`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from faithverify.bounds import crown
from faithverify.bounds.crown import Box, LayerBounds
from faithverify.bounds.softmax import (
    LOGIT_MARGIN,
    RELATIVE_MARGIN,
    FaithfulnessBound,
    LogitDiffBounds,
    faithfulness_bound,
    gap_eval_margin,
    softmax_bounds,
)
from faithverify.bounds.torchnet import BoundNetwork

# Logit differences are clipped here before exp: a term with a difference this large has a softmax bound of 0
# or 1 already, and the clip only loosens the relaxation (the interval still contains the true values).
EXP_CLIP = 60.0


def coupled_margin(d_abs_max: np.ndarray, num_classes: int) -> np.ndarray:
    """Float32 evaluation can move each logit difference by ``LOGIT_MARGIN + RELATIVE_MARGIN |d|``; a softmax
    output moves by at most a quarter of the sum of those moves (``|d sigma_i / d d_j| <= 1/4`` summed over
    ``j`` is at most ``sigma_i (1 - sigma_i) <= 1/4`` per unit), for each of the two networks; then float32's
    own softmax and subtraction (:func:`~faithverify.bounds.softmax.gap_eval_margin`), plus float64 rounding."""
    logit_part = 2 * 0.25 * (LOGIT_MARGIN + RELATIVE_MARGIN * d_abs_max)
    return logit_part + gap_eval_margin(num_classes) + 1e-12


@dataclass(frozen=True)
class CoupledBound:
    """Per point: the coupled FaithUB (never above eq. 6), eq. 6 itself, and per term which one won."""

    value: np.ndarray  # [N]
    eq6: np.ndarray  # [N]
    per_term: np.ndarray  # [N, 2, C]: min(eq. 6 term, coupled term); row 0 teacher above, row 1 student above
    coupled_won: np.ndarray  # bool [N]: the coupled bound is below eq. 6 for this point


def sigma_upper_line(lo: Tensor, hi: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Upper line of ``sigma_i`` over ``d in [lo, hi]`` (``[N, J]``), tangents at ``t``: (slopes over ``d``,
    constant)."""
    s_lo, s_hi = lo.exp().sum(-1), hi.exp().sum(-1)
    g_lo, g_hi = 1 / (1 + s_lo), 1 / (1 + s_hi)
    wide = s_hi > s_lo
    k = torch.where(wide, (g_hi - g_lo) / torch.where(wide, s_hi - s_lo, 1.0), torch.zeros_like(s_lo))
    et = t.exp()
    slopes = k.unsqueeze(-1) * et
    const = g_lo + k * ((et * (1 - t)).sum(-1) - s_lo)
    return slopes, const


def sigma_lower_line(lo: Tensor, hi: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """Lower line of ``sigma_i`` over ``d in [lo, hi]``, the tangent of ``g`` at ``s0``: (slopes, constant)."""
    e_lo, e_hi = lo.exp(), hi.exp()
    wide = hi > lo
    m = torch.where(wide, (e_hi - e_lo) / torch.where(wide, hi - lo, 1.0), torch.zeros_like(lo))
    b = e_lo - m * lo
    g0 = 1 / (1 + s0)
    dg = -(g0**2)
    slopes = dg.unsqueeze(-1) * m
    const = g0 + dg * (b.sum(-1) - s0)
    return slopes, const


def _others(c: int) -> Tensor:
    """``[C, C-1]``: the classes other than each ``i``, in order."""
    return torch.tensor([[j for j in range(c) if j != i] for i in range(c)], dtype=torch.long)


def _logit_form(slopes: Tensor, others: Tensor, c: int) -> Tensor:
    """Coefficients over the logits of ``sum_j slopes_j (z_j - z_i)``: ``[N, C(i), C(logit)]``."""
    n = slopes.shape[0]
    coeffs = torch.zeros(n, c, c, dtype=slopes.dtype, device=slopes.device)
    coeffs.scatter_add_(2, others.unsqueeze(0).expand(n, -1, -1), slopes)
    idx = torch.arange(c, device=slopes.device)
    coeffs[:, idx, idx] -= slopes.sum(-1)
    return coeffs


def _input_form(
    net: BoundNetwork, layers: LayerBounds, coeffs: Tensor, alpha: dict[int, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``coeffs · z(x) >= A · x + c`` over the box (CROWN with lower slopes ``alpha``): ``(A, c)``."""
    a, const = crown.backward(net, coeffs, len(net.layers), layers.relax, alpha)
    first = net.layers[0]
    assert isinstance(first, crown.Affine)
    return first.back(a), const + a @ first.bias


def _d_at(net: BoundNetwork, x: Tensor, others: Tensor) -> Tensor:
    """``[N, C, C-1]``: ``z_j(x) - z_i(x)`` at the anchors."""
    z = net.forward(x)
    return z.unsqueeze(1).expand(-1, z.shape[1], -1).gather(
        2, others.unsqueeze(0).expand(len(z), -1, -1)
    ) - z.unsqueeze(-1)


def _intervals(
    diffs: LogitDiffBounds, others: Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``[N, C, C-1]`` bounds on ``z_j - z_i`` (``j != i``), widened, clipped for ``exp``."""
    w = diffs.widened()
    index = others.unsqueeze(0).expand(len(w.lower), -1, -1)
    lo = torch.from_numpy(w.lower).to(device, dtype).gather(2, index)
    hi = torch.from_numpy(w.upper).to(device, dtype).gather(2, index)
    return lo.clamp(-EXP_CLIP, EXP_CLIP), hi.clamp(-EXP_CLIP, EXP_CLIP)


def _logit(u: Tensor) -> Tensor:
    u = u.clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


@dataclass(frozen=True)
class _Direction:
    """One direction of eq. 6's terms: ``sigma_top,i - sigma_low,i`` for every class ``i``."""

    nets: tuple[BoundNetwork, BoundNetwork]  # (top, low)
    layers: tuple[LayerBounds, LayerBounds]
    top: tuple[Tensor, Tensor]  # the top network's logit-difference intervals [N, C, C-1]
    low: tuple[Tensor, Tensor]
    others: Tensor

    def forms(self, theta_t: Tensor, theta_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Step 1 with the tangent points at ``sigmoid(theta)`` of their intervals: for every class ``i``,
        ``sigma_top,i - sigma_low,i <= top[:, i] · z_top - low[:, i] · z_low + const[:, i]`` on the box, as
        ``(top [N, C, C], low [N, C, C], const [N, C])``."""
        (lo_a, hi_a), (lo_b, hi_b) = self.top, self.low
        c = self.nets[0].output_dim
        t = lo_a + torch.sigmoid(theta_t) * (hi_a - lo_a)
        s_lo, s_hi = lo_b.exp().sum(-1), hi_b.exp().sum(-1)
        s = s_lo + torch.sigmoid(theta_s) * (s_hi - s_lo)
        up_slopes, up_const = sigma_upper_line(lo_a, hi_a, t)  # sigma_top <= coeffs_a · z_top + up_const
        low_slopes, low_const = sigma_lower_line(lo_b, hi_b, s)  # sigma_low >= coeffs_b · z_low + low_const
        coeffs_a, coeffs_b = _logit_form(up_slopes, self.others, c), _logit_form(low_slopes, self.others, c)
        return coeffs_a, coeffs_b, up_const - low_const

    def bound(
        self, box: Box, theta_t: Tensor, theta_s: Tensor, alphas: list[dict[int, Tensor] | None]
    ) -> Tensor:
        """Upper bounds ``[N, C]`` with the tangent points at ``sigmoid(theta)`` of their intervals."""
        coeffs_a, coeffs_b, const = self.forms(theta_t, theta_s)
        # term <= coeffs_a · z_top - coeffs_b · z_low + const: minimise the negation jointly.
        a_top, k_top = _input_form(self.nets[0], self.layers[0], -coeffs_a, alphas[0])
        a_low, k_low = _input_form(self.nets[1], self.layers[1], coeffs_b, alphas[1])
        a = a_top + a_low
        lower = (a @ box.center.unsqueeze(-1)).squeeze(-1) - (a.abs() @ box.radius.unsqueeze(-1)).squeeze(-1)
        return -(lower + k_top + k_low) + const

    def optimised(
        self,
        box: Box,
        at_top: Tensor,
        at_low: Tensor,
        iterations: int,
        lr: float,
        deadline: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The best bound met from tangents at the anchor's values, over ``iterations`` Adam steps (none started
        after ``deadline``), and the tangent parameters that gave it per term (``theta_t``, ``theta_s``)."""
        (lo_a, hi_a), (lo_b, hi_b) = self.top, self.low
        t0 = (torch.minimum(torch.maximum(at_top, lo_a), hi_a) - lo_a) / (hi_a - lo_a).clamp(min=1e-12)
        s_lo, s_hi = lo_b.exp().sum(-1), hi_b.exp().sum(-1)
        s_at = at_low.clamp(max=EXP_CLIP).exp().sum(-1)
        s0 = (torch.minimum(torch.maximum(s_at, s_lo), s_hi) - s_lo) / (s_hi - s_lo).clamp(min=1e-300)
        theta_t, theta_s = _logit(t0), _logit(s0)
        if deadline is not None and time.monotonic() >= deadline:
            iterations = 0  # out of time: the bound at the anchor's tangents alone (one evaluation)
        if iterations <= 0:
            with torch.no_grad():
                return self.bound(box, theta_t, theta_s, [None, None]), theta_t, theta_s
        theta_t, theta_s = theta_t.clone().requires_grad_(True), theta_s.clone().requires_grad_(True)
        c = self.nets[0].output_dim
        alphas: list[dict[int, Tensor] | None] = [
            _row_alphas(n, lay, c) for n, lay in zip(self.nets, self.layers, strict=True)
        ]
        params = [theta_t, theta_s, *(v for a in alphas if a for v in a.values())]
        optimizer = torch.optim.Adam(params, lr=lr)
        with torch.no_grad():
            best = self.bound(box, theta_t, theta_s, alphas)
        kept = (theta_t.detach().clone(), theta_s.detach().clone())

        def keep(value: Tensor, best: Tensor) -> Tensor:
            nonlocal kept
            better = value < best
            kept = (
                torch.where(better.unsqueeze(-1), theta_t.detach(), kept[0]),
                torch.where(better, theta_s.detach(), kept[1]),
            )
            return torch.where(better, value, best)

        step = 0.0  # the last step's seconds: one that would end after the deadline is not started
        with torch.enable_grad():
            for _ in range(iterations):
                began = time.monotonic()
                if deadline is not None and began + step >= deadline:
                    break
                value = self.bound(box, theta_t, theta_s, alphas)
                best = keep(value.detach(), best)
                optimizer.zero_grad(set_to_none=True)
                value.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    for a in alphas:
                        for v in (a or {}).values():
                            v.clamp_(0.0, 1.0)
                step = time.monotonic() - began
        with torch.no_grad():
            best = keep(self.bound(box, theta_t, theta_s, alphas), best)
        return best, *kept


def coupled_terms(
    nets: tuple[BoundNetwork, BoundNetwork],
    layers: tuple[LayerBounds, LayerBounds],
    diffs: tuple[LogitDiffBounds, LogitDiffBounds],
    box: Box,
    anchor: Tensor,
    iterations: int = 0,
    lr: float = 0.2,
    deadline: float | None = None,
) -> Tensor:
    """Coupled upper bounds ``[N, 2, C]`` on ``sigma_t,i - sigma_s,i`` (row 0) and ``sigma_s,i - sigma_t,i``
    (row 1), tangents first taken at ``anchor`` ``[N, D]``. With ``iterations``, the tangent points and every
    unstable ReLU's lower slope in both networks (one per bounded term) are then optimised by Adam for the
    smallest bound: every value is sound, so the best met per term is kept."""
    forms = coupled_forms(nets, layers, diffs, box, anchor, iterations, lr, deadline)
    return torch.stack([f.bound for f in forms], dim=1)


@dataclass(frozen=True)
class TermForms:
    """One direction's coupled terms as linear forms of both networks' logits: for every class ``i``,
    ``sigma_top,i - sigma_low,i <= top[:, i] · z_top - low[:, i] · z_low + const[:, i]`` on the box, and the
    bound (before the float margin) that concretising it gave; ``nets`` = (top, low) as positions in the pair."""

    nets: tuple[int, int]
    bound: Tensor  # [N, C]
    top: Tensor  # [N, C, C]
    low: Tensor  # [N, C, C]
    const: Tensor  # [N, C]
    # How the softmax was relaxed, for re-relaxing it over a smaller region (bounds/coupled_bab.py): the logit-
    # difference intervals [N, C, C-1] of each network (widened, clipped), the tangent parameters and, per
    # class, the other classes.
    top_interval: tuple[Tensor, Tensor]
    low_interval: tuple[Tensor, Tensor]
    theta_top: Tensor  # [N, C, C-1]
    theta_low: Tensor  # [N, C]
    others: Tensor  # [C, C-1]

    def paired_weights(self, n: int, i: int) -> Tensor:
        """Term ``i`` of point ``n`` as a form of ``[z_teacher; z_student]`` (:mod:`.paired`)."""
        parts = {self.nets[0]: self.top[n, i], self.nets[1]: -self.low[n, i]}
        return torch.cat([parts[0], parts[1]])


def coupled_forms(
    nets: tuple[BoundNetwork, BoundNetwork],
    layers: tuple[LayerBounds, LayerBounds],
    diffs: tuple[LogitDiffBounds, LogitDiffBounds],
    box: Box,
    anchor: Tensor,
    iterations: int = 0,
    lr: float = 0.2,
    deadline: float | None = None,
) -> list[TermForms]:
    """:func:`coupled_terms`, with each term's linear form at the tangent points of its best bound: what is
    left to maximise over ``x`` once the softmax is relaxed (branch and bound on the paired network,
    :mod:`.paired`, does that exactly). One :class:`TermForms` per direction."""
    dtype, device = box.center.dtype, box.center.device
    others = _others(nets[0].output_dim).to(device)
    intervals = [_intervals(d, others, dtype, device) for d in diffs]
    at = [_d_at(net, anchor, others) for net in nets]
    out = []
    for top, low in ((0, 1), (1, 0)):
        direction = _Direction(
            (nets[top], nets[low]), (layers[top], layers[low]), intervals[top], intervals[low], others
        )
        bound, theta_t, theta_s = direction.optimised(box, at[top], at[low], iterations, lr, deadline)
        with torch.no_grad():
            coeffs_top, coeffs_low, const = direction.forms(theta_t, theta_s)
        term = TermForms(
            (top, low), bound.detach(), coeffs_top, coeffs_low, const, intervals[top], intervals[low],
            theta_t.detach(), theta_s.detach(), others,
        )  # fmt: skip
        out.append(term)
    return out


def _row_alphas(net: BoundNetwork, layers: LayerBounds, rows: int) -> dict[int, Tensor]:
    """CROWN's own lower slopes, one copy per bounded row, as parameters."""
    return {
        k: r.lower_slope.unsqueeze(1).expand(-1, rows, -1).clone().requires_grad_(True)
        for k, r in layers.relax.relu.items()
    }


def coupled_bound(
    nets: tuple[BoundNetwork, BoundNetwork],
    layers: tuple[LayerBounds, LayerBounds],
    diffs: tuple[LogitDiffBounds, LogitDiffBounds],
    box: Box,
    anchors: list[Tensor],
    iterations: int = 20,
    deadline: float | None = None,
) -> CoupledBound:
    """FaithUB with each eq. 6 term replaced by the coupled bound where that is smaller (module docstring);
    ``anchors``: candidate tangent points ``[N, D]`` each (the best of them counts, per term); ``iterations``:
    optimisation steps of the tangents and ReLU slopes from the first anchor (0: none), none started after
    ``deadline`` (``time.monotonic()``; every step's bound is sound, so stopping only leaves it looser)."""
    eq6: FaithfulnessBound = faithfulness_bound(
        softmax_bounds(diffs[0].widened()), softmax_bounds(diffs[1].widened())
    )
    t_sm, s_sm = softmax_bounds(diffs[0].widened()), softmax_bounds(diffs[1].widened())
    eq6_terms = np.clip(np.stack([t_sm.upper - s_sm.lower, s_sm.upper - t_sm.lower], axis=1), 0.0, 1.0)
    with torch.no_grad():
        best = None
        for k, anchor in enumerate(anchors):
            steps = iterations if k == 0 else 0
            terms = (
                coupled_terms(nets, layers, diffs, box, anchor.to(box.center.dtype), steps, deadline=deadline)
                .cpu()
                .numpy()
            )
            best = terms if best is None else np.minimum(best, terms)
    assert best is not None
    d_max = np.maximum(np.abs(diffs[0].lower), np.abs(diffs[0].upper)).max(axis=(1, 2))
    d_max = np.maximum(d_max, np.maximum(np.abs(diffs[1].lower), np.abs(diffs[1].upper)).max(axis=(1, 2)))
    margin = coupled_margin(d_max, diffs[0].lower.shape[1])
    best = np.nan_to_num(best, nan=1.0, posinf=1.0) + margin[:, None, None]
    per_term = np.clip(np.minimum(eq6_terms, best), 0.0, 1.0)
    value = per_term.max(axis=(1, 2))
    return CoupledBound(value=value, eq6=eq6.value, per_term=per_term, coupled_won=value < eq6.value - 1e-12)
