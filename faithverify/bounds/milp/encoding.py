"""The exact MILP of a :class:`PiecewiseLinearNetwork` over an input box, in solver-neutral matrix form.

Variables (columns): the inputs ``x`` first (``lower <= x <= upper``), then, layer by layer, one output variable
per ReLU that is not stably inactive, one binary per unstable ReLU, and one output variable plus one binary per
candidate for every max-pool window that is not decided by its bounds. Affine layers create no variables: each
layer's values are carried as affine expressions ``A v + c`` of the variables so far (the "state"), and the
logits are such an expression of the last variables, so the objective ``z_j - z_i`` is one linear form.

ReLU ``y = max(z, 0)`` with ``z = a·v + c`` and sound bounds ``l <= z <= u``:

- ``u <= 0`` (stably inactive): ``y`` is the constant 0; no variable, no row.
- ``l >= 0`` (stably active): ``y = z``. If ``z`` is a single variable (``a`` has one entry) the expression is
  passed on; otherwise a variable ``y`` in ``[l, u]`` and the row ``y - a·v = c``.
- ``l < 0 < u`` (unstable): if ``a`` has more than one entry, ``z`` becomes a variable in ``[l, u]`` with the
  row ``z - a·v = c`` (so the rows below are short: HiGHS solved the shipped MNIST teacher's problems about
  30% faster this way, Gurobi as fast); then ``y`` in ``[0, u]``, binary ``d`` (1 = active) and the big-M rows
  ``y - a·v >= c`` (``y >= z``), ``y - a·v - l·d <= c - l`` (``y <= z - l(1 - d)``) and ``y - u·d <= 0``
  (``y <= u·d``). With ``d = 1``: ``z <= y <= z``, and ``y >= 0`` makes ``z >= 0``; with ``d = 0``:
  ``0 <= y <= 0`` and ``z <= y = 0``. So every input in the box has exactly one feasible completion, the
  network's, and the MILP's optimum is the network's maximum. The LP relaxation is the triangle relaxation.

Max-pool ``y = max_k x_k`` over a window with bounds ``l_k <= x_k <= u_k``; ``L = max_k l_k``:

- an element with ``u_m < L`` can never be the maximum (the element attaining ``L`` is at least ``L``): it is
  left out, and a window with one candidate left is that candidate's expression;
- otherwise ``y`` in ``[L, max_k u_k]``, a binary ``b_k`` per candidate with ``sum_k b_k = 1`` and rows
  ``y - x_k >= 0`` and ``y - x_k + M_k b_k <= M_k`` with ``M_k = max_{m != k} u_m - l_k`` (``y <= x_k`` when
  ``b_k = 1``; when ``b_k = 0`` the maximum is some other ``x_m <= max_{m != k} u_m``, so ``y - x_k <= M_k``).

Bounds: the bounds given for the input of each ReLU / max-pool layer (CROWN, from the caller) are intersected
with interval arithmetic over the variables' bounds, then widened by :data:`BOUND_SLACK` (relative and absolute)
so that rounding in the float64 bound propagation that produced them cannot cut off a reachable value. An
optional ``refine`` step (tighten.py: LPs over the layers encoded so far) then tightens unstable ReLUs' bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from faithverify.network import (
    AffineOp,
    MaxPoolOp,
    PiecewiseLinearNetwork,
    ReluOp,
    SparseMatrix,
    stack_rows,
)

BOUND_SLACK = 1e-9

LayerBounds = tuple[np.ndarray, np.ndarray]
# (model so far, neuron indices) -> (indices, lower, upper): sound bounds on those neurons' inputs
Refiner = Callable[["MilpModel", np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ColumnGroup:
    """What columns ``start .. start + len(index) - 1`` stand for, so that a solution can be built from an input.

    ``kind``: ``input`` (``x[index]``), ``relu_in`` (``z[index]``), ``relu_out`` (``max(z[index], 0)``),
    ``relu_on`` (``z[index] > 0``),
    ``pool_out`` (the maximum of window ``index``), ``pool_choice`` (1 for the first element of window
    ``index`` among this group's ``element`` entries that attains the window's maximum). ``z`` is the input of
    nonlinear layer ``layer``.
    """

    start: int
    layer: int
    kind: str
    index: np.ndarray
    element: np.ndarray | None = None


@dataclass(frozen=True)
class MilpModel:
    """``max cost·v + offset`` s.t. ``row_lower <= matrix·v <= row_upper``, ``col_lower <= v <= col_upper``,
    ``v_k`` integer where ``integrality[k]``; the logits are ``logits·v + logit_offset``."""

    col_lower: np.ndarray
    col_upper: np.ndarray
    integrality: np.ndarray  # bool
    matrix: SparseMatrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    logits: SparseMatrix  # [C, num_cols]
    logit_offset: np.ndarray  # [C]
    input_dim: int  # the inputs are columns 0 .. input_dim - 1
    layer_bounds: list[LayerBounds]  # the bounds used for the input of every ReLU / max-pool layer
    groups: list[ColumnGroup]

    @property
    def num_cols(self) -> int:
        return len(self.col_lower)

    @property
    def num_rows(self) -> int:
        return len(self.row_lower)

    @property
    def num_binaries(self) -> int:
        return int(self.integrality.sum())

    def objective(self, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """``(cost, offset)`` of ``weights · logits`` as a linear form of the variables."""
        w = np.asarray(weights, dtype=np.float64)
        dense = np.zeros(self.num_cols)
        np.add.at(dense, self.logits.cols, w[self.logits.rows] * self.logits.vals)
        return dense, float(w @ self.logit_offset)

    def interval_max(self, cost: np.ndarray, offset: float) -> float:
        """An upper bound of ``cost·v + offset`` over the variables' bounds alone (sound, loose)."""
        return float(offset + np.where(cost > 0, cost * self.col_upper, cost * self.col_lower).sum())

    def complete(self, network: PiecewiseLinearNetwork, x: np.ndarray) -> np.ndarray:
        """The feasible point of the MILP that the network computes at input ``x`` (a MIP start)."""
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        inputs = [z[0] for z in network.nonlinear_inputs(x)]
        ops = network.nonlinear_ops()
        v = np.zeros(self.num_cols)
        for g in self.groups:
            cols = slice(g.start, g.start + len(g.index))
            if g.kind == "input":
                v[cols] = x[0, g.index]
            elif g.kind in ("relu_in", "relu_out", "relu_on"):
                z = inputs[g.layer][g.index]
                v[cols] = {"relu_in": z, "relu_out": np.maximum(z, 0.0), "relu_on": z > 0}[g.kind]
            else:
                op = ops[g.layer]
                assert isinstance(op, MaxPoolOp)
                padded = np.append(inputs[g.layer], -np.inf)
                best = padded[op.windows[g.index]].max(axis=1)
                v[cols] = best if g.kind == "pool_out" else _first_hits(g, padded, best)
        return np.clip(v, self.col_lower, self.col_upper)

    def total_range(self) -> float:
        """``sum_k (col_upper_k - col_lower_k)``: scales the effect of LP tolerances on a bound."""
        return float((self.col_upper - self.col_lower).sum())


@dataclass(frozen=True)
class _State:
    """A layer's values as affine expressions of the variables: ``value = matrix·v + offset``."""

    matrix: SparseMatrix
    offset: np.ndarray


@dataclass
class _Builder:
    col_lower: list[np.ndarray] = field(default_factory=list)
    col_upper: list[np.ndarray] = field(default_factory=list)
    integer: list[np.ndarray] = field(default_factory=list)
    blocks: list[SparseMatrix] = field(default_factory=list)
    row_lower: list[np.ndarray] = field(default_factory=list)
    row_upper: list[np.ndarray] = field(default_factory=list)
    groups: list[ColumnGroup] = field(default_factory=list)
    num_cols: int = 0
    layer: int = -1  # the nonlinear layer being encoded

    def add_cols(
        self,
        lower: np.ndarray,
        upper: np.ndarray,
        integer: bool,
        kind: str,
        index: np.ndarray,
        element: np.ndarray | None = None,
    ) -> np.ndarray:
        n = len(lower)
        self.groups.append(ColumnGroup(self.num_cols, self.layer, kind, np.asarray(index, np.int64), element))
        self.col_lower.append(np.asarray(lower, dtype=np.float64))
        self.col_upper.append(np.asarray(upper, dtype=np.float64))
        self.integer.append(np.full(n, integer))
        idx = np.arange(self.num_cols, self.num_cols + n, dtype=np.int64)
        self.num_cols += n
        return idx

    def add_rows(self, block: SparseMatrix, lower: np.ndarray | float, upper: np.ndarray | float) -> None:
        self.blocks.append(block)
        self.row_lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), block.shape[0]))
        self.row_upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), block.shape[0]))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.col_lower), np.concatenate(self.col_upper)

    def model(self, state: _State, input_dim: int, used: list[LayerBounds]) -> MilpModel:
        """The model so far, with ``state`` as its outputs."""
        col_lower, col_upper = self.bounds()
        n = self.num_cols
        return MilpModel(
            col_lower=col_lower,
            col_upper=col_upper,
            integrality=np.concatenate(self.integer),
            matrix=stack_rows([b.with_cols(n) for b in self.blocks], n),
            row_lower=np.concatenate(self.row_lower) if self.row_lower else np.zeros(0),
            row_upper=np.concatenate(self.row_upper) if self.row_upper else np.zeros(0),
            logits=state.matrix.with_cols(n),
            logit_offset=state.offset,
            input_dim=input_dim,
            layer_bounds=list(used),
            groups=list(self.groups),
        )

    def interval(self, state: _State) -> LayerBounds:
        lo_v, hi_v = self.bounds()
        lo, hi = state.matrix.interval(lo_v, hi_v)
        return lo + state.offset, hi + state.offset


def _first_hits(group: ColumnGroup, values: np.ndarray, best: np.ndarray) -> np.ndarray:
    """1 for the first entry of each window whose element attains ``best`` (the window's maximum), else 0."""
    assert group.element is not None
    hit = values[group.element] == best
    pos = np.arange(len(group.index))
    first = np.full(int(group.index.max(initial=-1)) + 1, len(pos))
    np.minimum.at(first, group.index[hit], pos[hit])
    return (pos == first[group.index]).astype(np.float64)


def _entries(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | float, n_rows: int) -> SparseMatrix:
    vals = np.broadcast_to(np.asarray(vals, dtype=np.float64), len(rows))
    return SparseMatrix.from_coo(rows, cols, vals, (n_rows, max(int(cols.max(initial=-1)) + 1, 1)))


def _combine(n_rows: int, *parts: SparseMatrix) -> SparseMatrix:
    """Sum of row blocks with the same rows (columns are global variable indices)."""
    n_cols = max(p.shape[1] for p in parts)
    rows = np.concatenate([p.rows for p in parts])
    cols = np.concatenate([p.cols for p in parts])
    vals = np.concatenate([p.vals for p in parts])
    return SparseMatrix.from_coo(rows, cols, vals, (n_rows, n_cols))


def encode(
    network: PiecewiseLinearNetwork,
    lower: np.ndarray,
    upper: np.ndarray,
    layer_bounds: list[LayerBounds | None] | None = None,
    refine: Refiner | None = None,
) -> MilpModel:
    """The MILP of ``network`` over ``lower <= x <= upper`` (module docstring).

    ``layer_bounds``: sound bounds on the input of every ReLU / max-pool layer, in order (for a Linear/ReLU
    chain, exactly ``ChainCrown.bounds(...)[1]``); None entries (or None) mean interval arithmetic only.
    ``refine``: called before each ReLU layer after the first with the model so far, whose ``logits`` are that
    layer's inputs, and the indices of its unstable neurons; returns sound bounds for those (e.g. from LPs).
    """
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    if lower.shape != (network.input_dim,) or upper.shape != lower.shape:
        raise ValueError(f"input box of shape {lower.shape}/{upper.shape}, network takes {network.input_dim}")
    if np.any(lower > upper) or not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise ValueError("the input box must be finite with lower <= upper")
    nonlinear = network.nonlinear_ops()
    given = list(layer_bounds) if layer_bounds is not None else [None] * len(nonlinear)
    if len(given) != len(nonlinear):
        raise ValueError(f"{len(given)} layer bounds given for {len(nonlinear)} ReLU/max-pool layers")
    builder = _Builder()
    inputs = builder.add_cols(lower, upper, False, "input", np.arange(len(lower)))
    state = _State(SparseMatrix.identity(len(inputs)), np.zeros(len(inputs)))
    used: list[LayerBounds] = []
    k = 0
    for op in network.ops:
        if isinstance(op, AffineOp):
            state = _State(op.matrix @ state.matrix, op.matrix.matvec(state.offset) + op.bias)
            continue
        bounds = _layer_bounds(builder.interval(state), given[k], k)
        if refine is not None and isinstance(op, ReluOp) and builder.blocks:
            bounds = _refined(
                bounds, refine(builder.model(state, network.input_dim, used), _unstable(bounds))
            )
        used.append(bounds)
        builder.layer = k
        k += 1
        state = (
            _relu(builder, state, *bounds)
            if isinstance(op, ReluOp)
            else _maxpool(builder, state, op, *bounds)
        )
    return builder.model(state, network.input_dim, used)


def _unstable(bounds: LayerBounds) -> np.ndarray:
    lo, hi = bounds
    return np.nonzero((lo < 0) & (hi > 0))[0]


def _refined(bounds: LayerBounds, refined: tuple[np.ndarray, np.ndarray, np.ndarray]) -> LayerBounds:
    """Intersect the bounds of neurons ``idx`` with refined ones ``(idx, lo, hi)``."""
    lo, hi = bounds[0].copy(), bounds[1].copy()
    idx, r_lo, r_hi = refined
    lo[idx], hi[idx] = np.maximum(lo[idx], r_lo), np.minimum(hi[idx], r_hi)
    if np.any(lo > hi):
        raise ValueError("refined layer bounds are empty: the refinement is not sound")
    return lo, hi


def _layer_bounds(interval: LayerBounds, given: LayerBounds | None, index: int) -> LayerBounds:
    """Interval bounds, intersected with the given ones, widened by BOUND_SLACK (module docstring)."""
    lo, hi = interval
    if given is not None:
        g_lo, g_hi = (np.asarray(_numpy(b), dtype=np.float64).reshape(-1) for b in given)
        if g_lo.shape != lo.shape or g_hi.shape != hi.shape:
            raise ValueError(f"bounds for layer {index} have {g_lo.size} entries, the layer has {lo.size}")
        lo, hi = np.maximum(lo, g_lo), np.minimum(hi, g_hi)
    lo = lo - BOUND_SLACK * (1.0 + np.abs(lo))
    hi = hi + BOUND_SLACK * (1.0 + np.abs(hi))
    if np.any(lo > hi):
        raise ValueError(
            f"the bounds given for layer {index} contradict interval arithmetic: they are not sound"
        )
    return lo, hi


def _numpy(b: object) -> np.ndarray:
    detach = getattr(b, "detach", None)
    if detach is not None:  # a torch tensor
        return detach().cpu().double().numpy()
    return np.asarray(b)


def _relu(builder: _Builder, state: _State, lo: np.ndarray, hi: np.ndarray) -> _State:
    """Encode ``y = max(z, 0)`` for every row ``z`` of ``state`` (module docstring); returns the state of ``y``."""
    n = len(lo)
    a, c = state.matrix, state.offset
    row_nnz = np.bincount(a.rows, minlength=n)
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    pass_on = active & (row_nnz <= 1)
    new_active = np.nonzero(active & ~pass_on)[0]
    new_unstable = np.nonzero(unstable)[0]
    # Output expression: kept rows for pass-on neurons, a fresh variable for the others, 0 for the inactive.
    out_blocks = [a.take_rows(np.nonzero(pass_on)[0])]
    out_rows = [np.nonzero(pass_on)[0]]
    if len(new_active):
        y = builder.add_cols(lo[new_active], hi[new_active], False, "relu_out", new_active)
        # y - a·v = c
        block = _combine(
            len(y), _entries(np.arange(len(y)), y, 1.0, len(y)), a.take_rows(new_active).scaled(-1)
        )
        builder.add_rows(block, c[new_active], c[new_active])
        out_blocks.append(_entries(np.arange(len(y)), y, 1.0, len(y)))
        out_rows.append(new_active)
    if len(new_unstable):
        m = len(new_unstable)
        y_cols = _unstable_relu(builder, a, c, lo, hi, new_unstable)
        out_blocks.append(_entries(np.arange(m), y_cols, 1.0, m))
        out_rows.append(new_unstable)
    return _State(_scatter_rows(out_blocks, out_rows, n), np.where(pass_on, c, 0.0))


def _unstable_relu(
    builder: _Builder,
    a_all: SparseMatrix,
    c_all: np.ndarray,
    lo_all: np.ndarray,
    hi_all: np.ndarray,
    idx: np.ndarray,
) -> np.ndarray:
    """Big-M rows for the unstable neurons ``idx``: ``y - a·v >= c``, ``y - a·v - l·d <= c - l``,
    ``y - u·d <= 0``, where ``a·v + c`` is a variable ``z`` of its own if ``a`` has more than one entry;
    returns the ``y`` columns."""
    a, c, lo, hi = a_all.take_rows(idx), c_all[idx], lo_all[idx], hi_all[idx]
    a, c = _as_variables(builder, a, c, lo, hi, idx)
    m = len(idx)
    y = builder.add_cols(np.zeros(m), hi, False, "relu_out", idx)
    d = builder.add_cols(np.zeros(m), np.ones(m), True, "relu_on", idx)
    r = np.arange(m)
    y_part = _entries(r, y, 1.0, m)
    minus_a = a.scaled(-1)
    builder.add_rows(_combine(m, y_part, minus_a), c, np.inf)
    builder.add_rows(_combine(m, y_part, minus_a, _entries(r, d, -lo, m)), -np.inf, c - lo)
    builder.add_rows(_combine(m, y_part, _entries(r, d, -hi, m)), -np.inf, 0.0)
    return y


def _as_variables(
    builder: _Builder, a: SparseMatrix, c: np.ndarray, lo: np.ndarray, hi: np.ndarray, idx: np.ndarray
) -> tuple[SparseMatrix, np.ndarray]:
    """Rows ``a·v + c`` with more than one entry become variables ``z`` in ``[l, u]`` with ``z - a·v = c``;
    returns the new expressions (``z`` itself there, the old rows elsewhere)."""
    m = len(c)
    long = np.bincount(a.rows, minlength=m) > 1
    rows = np.nonzero(long)[0]
    if len(rows) == 0:
        return a, c
    z = builder.add_cols(lo[rows], hi[rows], False, "relu_in", idx[rows])
    own = _entries(np.arange(len(rows)), z, 1.0, len(rows))
    builder.add_rows(_combine(len(rows), own, a.take_rows(rows).scaled(-1)), c[rows], c[rows])
    short = np.nonzero(~long)[0]
    return _scatter_rows([a.take_rows(short), own], [short, rows], m), np.where(long, 0.0, c)


def _scatter_rows(blocks: list[SparseMatrix], rows: list[np.ndarray], n: int) -> SparseMatrix:
    """Rows of ``blocks`` placed at positions ``rows`` of an ``n``-row matrix."""
    parts = [(idx[b.rows], b.cols, b.vals) for b, idx in zip(blocks, rows, strict=True)]
    n_cols = max((b.shape[1] for b in blocks), default=0)
    return SparseMatrix.from_coo(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        (n, n_cols),
    )


def _maxpool(builder: _Builder, state: _State, op: MaxPoolOp, lo: np.ndarray, hi: np.ndarray) -> _State:
    """Encode ``y_w = max_k x_k`` for every window (module docstring); returns the state of ``y``."""
    windows = op.windows
    valid = windows >= 0
    l_w = np.where(valid, lo[windows], -np.inf)
    u_w = np.where(valid, hi[windows], -np.inf)
    best = l_w.argmax(axis=1)
    big_l = l_w[np.arange(len(windows)), best]
    is_best = np.arange(windows.shape[1])[None, :] == best[:, None]
    candidate = valid & ((u_w > big_l[:, None]) | is_best)
    n_cand = candidate.sum(axis=1)
    single = n_cand == 1
    # Decided windows pass their one candidate's expression on.
    single_w = np.nonzero(single)[0]
    single_elem = windows[single_w, best[single_w]]
    out_blocks = [state.matrix.take_rows(single_elem)]
    out_rows = [single_w]
    offset = np.zeros(len(windows))
    offset[single_w] = state.offset[single_elem]
    multi_w = np.nonzero(~single)[0]
    if len(multi_w):
        y = _maxpool_binaries(builder, state, windows, candidate, l_w, u_w, multi_w)
        out_blocks.append(_entries(np.arange(len(multi_w)), y, 1.0, len(multi_w)))
        out_rows.append(multi_w)
    return _State(_scatter_rows(out_blocks, out_rows, len(windows)), offset)


def _maxpool_binaries(
    builder: _Builder,
    state: _State,
    all_windows: np.ndarray,
    all_candidate: np.ndarray,
    all_l: np.ndarray,
    all_u: np.ndarray,
    chosen: np.ndarray,
) -> np.ndarray:
    """For windows ``chosen``: rows ``y - x_k >= 0``, ``y - x_k + M_k b_k <= M_k``, ``sum_k b_k = 1``;
    returns the ``y`` columns."""
    windows, candidate, l_w, u_w = all_windows[chosen], all_candidate[chosen], all_l[chosen], all_u[chosen]
    n_w = len(windows)
    u_cand = np.where(candidate, u_w, -np.inf)
    y_lower = np.where(candidate, l_w, -np.inf).max(axis=1)
    y = builder.add_cols(y_lower, u_cand.max(axis=1), False, "pool_out", chosen)
    w_idx, pos = np.nonzero(candidate)
    elem = windows[w_idx, pos]
    # max over the other candidates of u: the largest u, or the second largest where this one is the largest.
    top2 = -np.sort(-u_cand, axis=1)[:, :2]
    u_here = u_w[w_idx, pos]
    other_max = np.where(u_here >= top2[w_idx, 0], top2[w_idx, 1], top2[w_idx, 0])
    big_m = other_max - l_w[w_idx, pos]
    p = len(elem)
    b = builder.add_cols(np.zeros(p), np.ones(p), True, "pool_choice", chosen[w_idx], elem)
    r = np.arange(p)
    y_part = _entries(r, y[w_idx], 1.0, p)
    minus_x = state.matrix.take_rows(elem).scaled(-1)
    c = state.offset[elem]
    builder.add_rows(_combine(p, y_part, minus_x), c, np.inf)
    builder.add_rows(_combine(p, y_part, minus_x, _entries(r, b, big_m, p)), -np.inf, c + big_m)
    builder.add_rows(_entries(w_idx, b, 1.0, n_w), 1.0, 1.0)
    return y
