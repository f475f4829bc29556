"""CROWN and alpha-CROWN over the one network form: linear bounds pushed back to the input box.

A lower bound on ``c · h_t`` (``h_t``: the values after layer ``t - 1``; ``h_0 = x``) is found by writing it as a
linear form of ``h_{t-1}``, then ``h_{t-2}``, ..., down to ``x``: affine layers substitute exactly
(``a · (W h + b) = (a W) · h + a · b``), ReLUs and max-pools through their linear relaxations (:mod:`.relax`),
and the final form ``A · x + c`` is minimised over the box: ``A · x_c - |A| · r + c`` (centre ``x_c``,
radius ``r``). This is CROWN (Zhang et al., 2018); auto_LiRPA's ``method="CROWN"`` gives the same bounds
(``tests/test_crown.py``).

**Intermediate bounds.** The relaxation of layer ``k`` needs bounds on its input ``h_k``. They are computed
layer by layer, front to back: interval arithmetic from the bounds before gives a cheap reference, which
settles most ReLUs of a trained network; only the neurons it leaves unstable get CROWN rows of their own (each
point its own neurons, padded to the batch's largest count). Plain CROWN keeps their CROWN bound as it is, so
that it equals auto_LiRPA's: intersecting it with the reference is sound and tighter per neuron, but CROWN's
adaptive lower slope is not monotone in the bounds, and on the shipped MNIST teacher at eps 0.1 the intersected
bounds gave final bounds up to 5.3 looser (0.005 tighter on average). alpha-CROWN, whose slopes are optimised,
intersects in its answer, but not while it optimises (no gradient reaches a row where the reference wins).
Lower and upper bounds come from one backward pass over ``[e_n; -e_n]``, since
``ub(z) = -lb(-z)``. The first affine layer sees the input directly: its interval bound is exact.

**alpha-CROWN** (Xu et al., 2021) treats the lower slope of every unstable ReLU as a parameter in ``[0, 1]``,
one per bounded row and neuron (every row of every intermediate layer too: "optimised intermediate bounds"), and
maximises the sum of the final lower bounds by projected gradient ascent (Adam). Every choice of slopes gives a
sound bound, so the optimisation needs no care for soundness: it keeps the best intermediate and final bound of
every row that it meets (each is sound), so the result is never looser than CROWN's. With ``optimize_dtype``
(float32: what screening uses, 1.5x faster on the CPU) no bound met on the way is sound, so each row keeps the
slopes of its best bound, and one float64 pass recomputes every intermediate and final bound from them (never
looser than CROWN either); on the shipped MNIST pair the mean FaithUB moves by at most 1.2e-4.

**When to stop**: most of the gain comes in the first iterations (on the shipped MNIST pair, 5 of 20 iterations
give 90% of it). With ``min_gain`` the loop ends once two iterations in a row have added less than that share of
what the optimisation has gained so far; screening uses 0.03 (``bounder.ALPHA_MIN_GAIN``). Adam's step
(:data:`ALPHA_LR`) is auto_LiRPA's default, 0.5: with the stopping rule it converges in 6-7 iterations where 0.25
took 8, at the same or a tighter mean FaithUB on the MNIST pair (1.1-1.6x the points per second,
``benchmarks/results/screening_throughput.md``; spot checks on the Fashion-MNIST and CIFAR-10 FD pairs agreed
within 1e-4).

**Floating point**: the returned bounds are for exact arithmetic on the stored weights, computed in float64;
:mod:`faithverify.bounds.softmax` widens them by a stated margin before they are used.

**Speed**: the first affine layer is where the rows meet the (large) input: ``A · (W_0 x_c + b_0)`` is a
matrix-vector product, and only ``|A W_0| · r`` needs the ``[rows, inputs]`` product, formed as
``|A (W_0 diag(r))| 1`` (``W_0 diag(r)`` kept per box) in chunks of points that stay in cache, forward and
backward (``_RadiusTerm``): this is most of alpha-CROWN's time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from faithverify.bounds.relax import MaxPoolRelaxation, ReluRelaxation
from faithverify.bounds.torchnet import Affine, BoundNetwork, MaxPool, Relu

# Points per chunk when forming |A W_0|: rows x inputs x chunk numbers stay around 4 MB of float64 on the CPU
# (in a core's cache: 32 MB chunks were 3-4 times slower on a 2-core EPYC), 2 GB on a GPU (few, large kernels).
_CHUNK_ELEMENTS = 500_000
_GPU_CHUNK_ELEMENTS = 1 << 28
# alpha-CROWN's Adam step (module docstring: when to stop).
ALPHA_LR = 0.5
# Entries of W_0 diag(r) kept per box (Box.scaled): 256 MB of float64.
_SCALED_ELEMENTS = 1 << 25

Bounds = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Box:
    """Input boxes ``[N, D]`` as centre and radius."""

    center: Tensor
    radius: Tensor
    _scaled: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def of(lower: Tensor, upper: Tensor) -> Box:
        return Box((lower + upper) / 2, (upper - lower) / 2)

    @property
    def lower(self) -> Tensor:
        return self.center - self.radius

    @property
    def upper(self) -> Tensor:
        return self.center + self.radius

    def to(self, dtype: torch.dtype) -> Box:
        return Box(self.center.to(dtype), self.radius.to(dtype))

    def take(self, index: Tensor) -> Box:
        return Box(self.center[index], self.radius[index])

    def scaled(self, weight: Tensor) -> Tensor | None:
        """``W diag(r)`` per point (``[N, m, D]`` for a dense ``W`` ``[m, D]``), kept for the box's next calls;
        None where that would be large or the boxes share one radius (branch and bound's expanded boxes)."""
        n = len(self.radius)
        if (
            weight.layout != torch.strided
            or weight.requires_grad
            or self.radius.requires_grad
            or self.radius.stride(0) == 0
            or n * weight.numel() > _SCALED_ELEMENTS
        ):
            return None
        kept = self._scaled.get(id(weight))
        if kept is None or kept[0] is not weight:
            kept = (weight, weight.unsqueeze(0) * self.radius.unsqueeze(1))
            self._scaled[id(weight)] = kept
        return kept[1]


@dataclass
class LayerRows:
    """Which neurons of a layer's input get CROWN rows: ``index[N, K]`` (padded), ``valid[N, K]``."""

    index: Tensor
    valid: Tensor

    @staticmethod
    def of(mask: Tensor) -> LayerRows:
        counts = mask.sum(dim=1)
        k = int(counts.max()) if mask.numel() else 0
        order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
        valid = torch.arange(k, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
        return LayerRows(order, valid)

    def one_hot(self, width: int, dtype: torch.dtype) -> Tensor:
        """``[N, 2K, width]``: ``e_n`` rows (lower bounds) then ``-e_n`` rows (upper bounds)."""
        n, k = self.index.shape
        rows = torch.zeros(n, k, width, dtype=dtype, device=self.index.device)
        rows.scatter_(2, self.index.unsqueeze(-1), self.valid.to(dtype).unsqueeze(-1))
        return torch.cat([rows, -rows], dim=1)

    def merge(self, reference: Bounds, both: Tensor, intersect: bool) -> Bounds:
        """The rows' bounds (``both``: ``[N, 2K]`` lower bounds of ``±e_n``) in place of ``reference``'s, or
        intersected with them."""
        lo, hi = reference
        k = self.index.shape[1]
        crown_lo, crown_hi = both[:, :k], -both[:, k:]
        old_lo, old_hi = lo.gather(1, self.index), hi.gather(1, self.index)
        if intersect:
            crown_lo, crown_hi = torch.maximum(old_lo, crown_lo), torch.minimum(old_hi, crown_hi)
        new_lo = torch.where(self.valid, crown_lo, old_lo)
        new_hi = torch.where(self.valid, crown_hi, old_hi)
        return lo.scatter(1, self.index, new_lo), hi.scatter(1, self.index, new_hi)


@dataclass
class Relaxations:
    """The relaxation of every nonlinear layer (by position), from bounds on its input."""

    relu: dict[int, ReluRelaxation] = field(default_factory=dict)
    pool: dict[int, MaxPoolRelaxation] = field(default_factory=dict)

    def add(self, net: BoundNetwork, k: int, bounds: Bounds) -> None:
        layer = net.layers[k]
        if isinstance(layer, Relu):
            self.relu[k] = ReluRelaxation.of(*bounds)
        else:
            assert isinstance(layer, MaxPool)
            self.pool[k] = MaxPoolRelaxation.of(layer, *bounds)


def backward(
    net: BoundNetwork,
    coeffs: Tensor,
    start: int,
    relax: Relaxations,
    alpha: dict[int, Tensor] | None = None,
    extra: dict[int, Tensor] | None = None,
    taps: dict[int, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Push ``coeffs`` ``[N, R, size(h_start)]`` back to ``h_1`` (the first affine layer's output).

    ``alpha[k]``: lower slopes of ReLU layer ``k`` for these rows; ``extra[k]``: ``[N, R or 1, n]`` added to the
    coefficients over ``h_k`` once they are formed (beta-CROWN's split terms); ``taps``, when given, receives the
    coefficients over each ReLU's output (branch and bound scores splits with them). Returns (coefficients over
    ``h_1`` ``[N, R, size(h_1)]``, constant ``[N, R]``).
    """
    const = coeffs.new_zeros(coeffs.shape[:2])
    for k in range(start - 1, 0, -1):
        layer = net.layers[k]
        if taps is not None and isinstance(layer, Relu):
            taps[k] = coeffs
        if isinstance(layer, Affine):
            const = const + coeffs @ layer.bias
            coeffs = layer.back(coeffs)
        elif isinstance(layer, Relu):
            coeffs, c = relax.relu[k].back(coeffs, None if alpha is None else alpha.get(k))
            const = const + c
        else:
            coeffs, c = relax.pool[k].back(coeffs)
            const = const + c
        if extra is not None and k in extra:
            coeffs = coeffs + extra[k]
    return coeffs, const


def concretize(net: BoundNetwork, coeffs: Tensor, const: Tensor, box: Box) -> Tensor:
    """``min_{x in box} coeffs · layers[0](x) + const`` for coefficients over ``h_1`` (``backward``'s output)."""
    first = net.layers[0]
    if not isinstance(first, Affine):
        # Only a network that starts with a ReLU or max-pool: relax it over the box like any other layer.
        relax = Relaxations()
        relax.add(net, 0, (box.lower, box.upper))
        coeffs, c = relax.relu[0].back(coeffs) if isinstance(first, Relu) else relax.pool[0].back(coeffs)
        return _over_box(coeffs, box) + const + c
    mid = first.forward(box.center)  # W_0 x_c + b_0
    centre_term = (coeffs @ mid.unsqueeze(-1)).squeeze(-1)
    scaled = box.scaled(first.weight)
    if scaled is None:
        return const + centre_term - _radius_term(coeffs, first, box.radius)
    return const + centre_term - _RadiusTerm.apply(coeffs, scaled)


def _chunk(coeffs: Tensor, width: int) -> int:
    budget = _CHUNK_ELEMENTS if coeffs.device.type == "cpu" else _GPU_CHUNK_ELEMENTS
    return max(1, budget // max(1, coeffs.shape[1] * width))


def _radius_term(coeffs: Tensor, first: Affine, radius: Tensor) -> Tensor:
    """``|coeffs W_0| r`` through autograd (any layout of ``W_0``)."""
    chunk = _chunk(coeffs, first.in_size)
    parts = []
    for s in range(0, len(coeffs), chunk):
        full = first.back(coeffs[s : s + chunk])  # [chunk, R, D]
        full = full.abs() if full.requires_grad else full.abs_()
        parts.append((full @ radius[s : s + chunk].unsqueeze(-1)).squeeze(-1))
    return torch.cat(parts)


class _RadiusTerm(torch.autograd.Function):
    """``|A W_0| r``, as ``|A (W_0 diag(r))| 1`` (``A``: ``[N, R, m]``, ``W_0 diag(r)``: ``[N, m, D]``), and its
    gradient in ``A``, ``g sign(A W_0 diag(r)) (W_0 diag(r))^T``, chunk by chunk: autograd would keep every
    ``[N, R, D]`` product (and ``|.|``'s sign) alive until the backward pass, out of cache; here the backward pass
    forms each chunk's product again (cheap with ``m`` small) while it is in cache. With ``r`` folded into the
    weights there is no product with ``r`` left (a batched matrix-vector product as long as the matrix one)."""

    @staticmethod
    def forward(ctx: Any, coeffs: Tensor, scaled: Tensor) -> Tensor:
        ctx.save_for_backward(coeffs, scaled)
        n, rows, _ = coeffs.shape
        out = coeffs.new_empty(n, rows)
        chunk = _chunk(coeffs, scaled.shape[2])
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            torch.sum(torch.bmm(coeffs[s:e], scaled[s:e]).abs_(), dim=-1, out=out[s:e])
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        coeffs, scaled = ctx.saved_tensors
        out = torch.empty_like(coeffs)
        chunk = _chunk(coeffs, scaled.shape[2])
        for s in range(0, len(coeffs), chunk):
            e = min(len(coeffs), s + chunk)
            sign = torch.bmm(coeffs[s:e], scaled[s:e]).sign_()
            torch.bmm(sign, scaled[s:e].transpose(1, 2), out=out[s:e])
        return out.mul_(grad.unsqueeze(-1)), None


def _over_box(coeffs: Tensor, box: Box) -> Tensor:
    return (coeffs @ box.center.unsqueeze(-1)).squeeze(-1) - (
        coeffs.abs() @ box.radius.unsqueeze(-1)
    ).squeeze(-1)


def lower_bound(
    net: BoundNetwork,
    coeffs: Tensor,
    start: int,
    relax: Relaxations,
    box: Box,
    alpha: dict[int, Tensor] | None = None,
    extra: dict[int, Tensor] | None = None,
) -> Tensor:
    """Lower bound ``[N, R]`` of ``coeffs · h_start`` over the box."""
    if start == 0:
        return _over_box(coeffs, box)
    a, c = backward(net, coeffs, start, relax, alpha, extra)
    return concretize(net, a, c, box)


def _needs_rows(net: BoundNetwork, k: int, reference: Bounds) -> Tensor | None:
    """Which neurons of ``h_k`` (the input of nonlinear layer ``k``) get CROWN rows, or None for none."""
    if k < 2 or not isinstance(net.layers[k - 1], Affine):
        return None  # the first affine layer's output is exact; a nonlinear layer's output is its interval
    lo, hi = reference
    if isinstance(net.layers[k], Relu):
        return (lo < 0) & (hi > 0)
    return torch.ones_like(lo, dtype=torch.bool)


def _interval_step(net: BoundNetwork, k: int, bounds: Bounds) -> Bounds:
    layer = net.layers[k]
    lo, hi = bounds
    if isinstance(layer, Affine):
        return layer.interval(lo, hi)
    if isinstance(layer, Relu):
        return lo.clamp(min=0), hi.clamp(min=0)
    return layer.forward(lo), layer.forward(hi)


@dataclass
class LayerBounds:
    """Bounds on the input of every nonlinear layer (by position) and their relaxations."""

    pre: dict[int, Bounds]
    relax: Relaxations

    def as_list(self) -> list[Bounds]:
        """In layer order: what the MILP encoding takes."""
        return [self.pre[k] for k in sorted(self.pre)]


def intermediate_bounds(
    net: BoundNetwork,
    box: Box,
    *,
    rows: dict[int, LayerRows] | None = None,
    alpha: dict[int, dict[int, Tensor]] | None = None,
    best: dict[int, Bounds] | None = None,
    fixed: dict[int, Bounds] | None = None,
    raw: dict[int, Tensor] | None = None,
    intersect: bool | None = None,
) -> tuple[LayerBounds, dict[int, LayerRows]]:
    """CROWN bounds on the input of every nonlinear layer, front to back (module docstring).

    ``rows``: which neurons get CROWN rows per layer (default: those the interval reference leaves undecided);
    ``alpha[k][j]``: lower slopes of ReLU layer ``j`` for layer ``k``'s rows; ``best``: sound bounds known
    already, intersected in; ``fixed``: layers whose bounds are given and not recomputed; ``raw``, when given,
    receives each layer's row bounds (``[N, 2K]`` lower bounds of ``±e_n``) before any intersection;
    ``intersect``: whether rows are intersected with the interval reference (default: with slopes or known
    bounds given, not for plain CROWN; module docstring). Returns the bounds and the rows used.
    """
    relax = Relaxations()
    pre: dict[int, Bounds] = {}
    used: dict[int, LayerRows] = {}
    current: Bounds = (box.lower, box.upper)
    for k, layer in enumerate(net.layers):
        if not isinstance(layer, Affine):
            if fixed is not None and k in fixed:
                current = fixed[k]
            else:
                if best is not None and k in best:
                    current = (torch.maximum(current[0], best[k][0]), torch.minimum(current[1], best[k][1]))
                plan = rows[k] if rows is not None and k in rows else None
                if plan is None:
                    mask = _needs_rows(net, k, current)
                    plan = LayerRows.of(mask) if mask is not None and bool(mask.any()) else None
                if plan is not None and plan.index.shape[1] > 0:
                    used[k] = plan
                    start_rows = plan.one_hot(current[0].shape[1], current[0].dtype)
                    both = lower_bound(
                        net, start_rows, k, relax, box, None if alpha is None else alpha.get(k)
                    )
                    if raw is not None:
                        raw[k] = both
                    meet = (alpha is not None or best is not None) if intersect is None else intersect
                    current = plan.merge(current, both, intersect=meet)
            pre[k] = current
            relax.add(net, k, current)
        current = _interval_step(net, k, current)
    return LayerBounds(pre, relax), used


def crown(net: BoundNetwork, box: Box, spec: Tensor) -> tuple[Tensor, LayerBounds]:
    """CROWN lower bounds ``[N, R]`` of ``spec · logits`` (``spec``: ``[R, C]`` or ``[N, R, C]``), and the
    intermediate bounds."""
    layers, _ = intermediate_bounds(net, box)
    return final_bound(net, box, spec, layers), layers


def final_bound(
    net: BoundNetwork,
    box: Box,
    spec: Tensor,
    layers: LayerBounds,
    alpha: dict[int, Tensor] | None = None,
    extra: dict[int, Tensor] | None = None,
) -> Tensor:
    """Lower bounds ``[N, R]`` of ``spec · logits`` with the given intermediate bounds."""
    coeffs = spec.to(box.center.dtype)
    if coeffs.dim() == 2:
        coeffs = coeffs.unsqueeze(0).expand(len(box.center), -1, -1)
    return lower_bound(net, coeffs, len(net.layers), layers.relax, box, alpha, extra)


def interval_bound(net: BoundNetwork, box: Box, spec: Tensor) -> Tensor:
    """Interval (IBP) lower bounds of ``spec · logits``: the last affine layer's rows over the interval of its
    input (exact for that layer)."""
    bounds: Bounds = (box.lower, box.upper)
    for k in range(len(net.layers) - 1):
        bounds = _interval_step(net, k, bounds)
    last = net.layers[-1]
    assert isinstance(last, Affine)
    coeffs = spec.to(box.center.dtype)
    inner = Box.of(*bounds)
    if coeffs.dim() == 2:
        # One specification for every point: fold it into the last layer once, then two [N, n] x [n, R] products
        # (per-point copies of the folded rows cost 2x at 1000 points).
        folded = last.back(coeffs)  # [R, n]
        return inner.center @ folded.T - inner.radius @ folded.abs().T + coeffs @ last.bias
    folded = last.back(coeffs)
    return _over_box(folded, inner) + coeffs @ last.bias


# --- alpha-CROWN ----------------------------------------------------------------------------------------------


@dataclass
class AlphaResult:
    """alpha-CROWN's bounds (float64, sound), the best intermediate bounds met, and the final lower slopes
    (``[N, R, n]`` per ReLU layer, for the rows of ``spec``) that branch and bound starts from."""

    lower: Tensor
    layers: LayerBounds
    alpha: dict[int, Tensor]


def _init_alpha(relax: Relaxations, rows: int, ks: list[int], dtype: torch.dtype) -> dict[int, Tensor]:
    """CROWN's own slopes as the starting point, one copy per row."""
    out = {}
    for k in ks:
        base = relax.relu[k].lower_slope.to(dtype).unsqueeze(1)
        out[k] = base.expand(-1, rows, -1).clone().requires_grad_(True)
    return out


def _relu_layers_before(net: BoundNetwork, k: int) -> list[int]:
    return [j for j in range(1, k) if isinstance(net.layers[j], Relu)]


def alpha_crown(
    net: BoundNetwork,
    box: Box,
    spec: Tensor,
    *,
    iterations: int = 20,
    lr: float = ALPHA_LR,
    lr_decay: float = 0.9,
    optimize_intermediate: bool = True,
    optimize_dtype: torch.dtype | None = None,
    deadline: float | None = None,
    min_gain: float | None = None,
) -> AlphaResult:
    """alpha-CROWN lower bounds of ``spec · logits`` (module docstring); with ``optimize_intermediate=False``
    only the final rows' slopes are optimised and the intermediate bounds stay CROWN's (several times cheaper
    per iteration). ``deadline`` (``time.monotonic()``): no iteration starts that would end after it, as long as
    the last one took (every iteration's bounds are sound, so stopping early only leaves them looser, never
    looser than CROWN). ``min_gain``: stop once the last :data:`_GAIN_WINDOW` iterations raised the mean final
    lower bound by less than this (the optimisation has converged; further steps cost as much for nothing)."""
    dtype = box.center.dtype
    optimize_dtype = optimize_dtype or dtype
    began = time.monotonic()
    base_layers, rows = intermediate_bounds(net, box)
    base = final_bound(net, box, spec, base_layers)
    # An iteration is not started when it (as long as the last one; at first, twice this CROWN pass: it also
    # goes backwards) and the final pass after the loop (as long as this one) would end after the deadline.
    final = time.monotonic() - began
    step = 2 * final
    if iterations <= 0 or not base_layers.relax.relu:
        return AlphaResult(base, base_layers, {})
    fast_net, fast_box = net.to(optimize_dtype), box.to(optimize_dtype)
    fast_spec = spec.to(optimize_dtype)
    n_spec = spec.shape[-2]
    # One set of slopes per bounded layer (its CROWN rows) and one for the final rows.
    alpha: dict[int, dict[int, Tensor]] = {}
    for k, plan in rows.items() if optimize_intermediate else ():
        ks = _relu_layers_before(net, k)
        alpha[k] = _init_alpha(base_layers.relax, 2 * plan.index.shape[1], ks, optimize_dtype)
    end = len(net.layers)
    alpha[end] = _init_alpha(base_layers.relax, n_spec, _relu_layers_before(net, end), optimize_dtype)
    params = [t for per in alpha.values() for t in per.values()]
    if not params:  # no ReLU before any bounded row (a network that opens with one): nothing to optimise
        return AlphaResult(base, base_layers, {})
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, lr_decay)
    best = {k: (lo.to(optimize_dtype), hi.to(optimize_dtype)) for k, (lo, hi) in base_layers.pre.items()}
    fixed = None if optimize_intermediate else best
    trusted = optimize_dtype == dtype  # every iteration's bounds are sound: keep the best of each
    best_final = base.clone()
    # In a lower precision no bound met on the way is sound, so each row keeps instead the slopes that gave its
    # best bound, and the final pass recomputes every row from them.
    chosen: dict[int, dict[int, Tensor]] = {}
    chosen_value: dict[int, Tensor] = {}
    raw: dict[int, Tensor] | None = None if trusted else {}
    done = 0
    progress: list[float] = []  # the best mean final bound after each iteration
    with torch.enable_grad():
        for _ in range(iterations):
            began = time.monotonic()
            if deadline is not None and began + step + final >= deadline:
                break
            done += 1
            # The rows are not intersected with the interval reference or the best bounds met so far while
            # they are optimised: where those are tighter, torch.maximum passes no gradient to the row's slopes,
            # and they stall (on the MNIST teacher at the paper's eps 0.2, 5% of the gain lost against
            # auto_LiRPA). The best bounds are kept aside for the final pass instead.
            layers, _ = intermediate_bounds(
                fast_net, fast_box, rows=rows, alpha=alpha, fixed=fixed, raw=raw, intersect=False
            )
            lb = final_bound(fast_net, fast_box, fast_spec, layers, alpha[end])
            if trusted:
                best_final = torch.maximum(best_final, lb.detach())
            else:
                assert raw is not None
                _keep_best_slopes(alpha, {**raw, end: lb}, chosen, chosen_value)
            mean = float(lb.detach().mean())
            progress.append(max(mean, progress[-1]) if progress else mean)
            if min_gain is not None and _converged(progress, min_gain):
                best = _tightest(best, layers.pre) if trusted else best
                break
            loss = -lb.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for t in params:
                    t.clamp_(0.0, 1.0)
                best = _tightest(best, layers.pre) if trusted else best
            step = time.monotonic() - began
    if done == 0:  # out of time before the first iteration: CROWN's bounds, without another pass
        return AlphaResult(base, base_layers, {})
    # The answer: one more pass with the final slopes, in the caller's dtype (a lower-precision optimisation's
    # bounds are never trusted), and the best bound of every row met on the way; never looser than CROWN.
    with torch.no_grad():
        source = alpha if trusted else {k: chosen.get(k, per) for k, per in alpha.items()}
        slopes = {k: {j: t.detach().to(dtype) for j, t in per.items()} for k, per in source.items()}
        layers = base_layers
        if optimize_intermediate:
            known = best if trusted else base_layers.pre
            layers, _ = intermediate_bounds(net, box, rows=rows, alpha=slopes, best=known)
        lb = torch.maximum(final_bound(net, box, spec, layers, slopes[end]), best_final)
    return AlphaResult(lb, layers, slopes[end])


def _tightest(known: dict[int, Bounds], new: dict[int, Bounds]) -> dict[int, Bounds]:
    """Per layer, the intersection of two sets of sound bounds (detached)."""
    return {
        k: (torch.maximum(known[k][0], lo.detach()), torch.minimum(known[k][1], hi.detach()))
        if k in known
        else (lo.detach(), hi.detach())
        for k, (lo, hi) in new.items()
    }


# How many iterations back the convergence test of alpha-CROWN (``min_gain``) looks: Adam's first steps can
# overshoot and lose a little before they gain again.
_GAIN_WINDOW = 2


def _converged(progress: list[float], min_gain: float) -> bool:
    if len(progress) <= _GAIN_WINDOW:
        return False
    return progress[-1] - progress[-1 - _GAIN_WINDOW] < min_gain * max(progress[-1] - progress[0], 1e-9)


def _keep_best_slopes(
    alpha: dict[int, dict[int, Tensor]],
    values: dict[int, Tensor],
    chosen: dict[int, dict[int, Tensor]],
    chosen_value: dict[int, Tensor],
) -> None:
    """For every row (``values[k]``: ``[N, R]`` bounds of layer ``k``'s rows with the slopes ``alpha[k]``), the
    slopes of its best bound so far."""
    with torch.no_grad():
        for k, value in values.items():
            if k not in alpha:
                continue
            value = value.detach()
            if k not in chosen:
                chosen[k] = {j: t.detach().clone() for j, t in alpha[k].items()}
                chosen_value[k] = value.clone()
                continue
            better = value > chosen_value[k]
            chosen_value[k] = torch.where(better, value, chosen_value[k])
            mask = better.unsqueeze(-1)
            for j, t in alpha[k].items():
                chosen[k][j] = torch.where(mask, t.detach(), chosen[k][j])


def batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, max(1, size)):
        yield start, min(n, start + size)
