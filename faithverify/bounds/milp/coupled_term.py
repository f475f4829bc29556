"""One coupled term, ``sigma_i(z_a(x)) - sigma_i(z_b(x))``, bounded by one MILP over both networks and a shared x.

Eq. 6 and the coupled linear bound relax each network; this model does not: both networks are their exact
MILPs (encoding.py) on the same input columns, so only the softmax is relaxed, piecewise linearly, and that
relaxation tightens with its number of pieces. For a logit-difference vector ``d`` of one network (``d_j = z_j -
z_i``, ``j != i``, inside sound intervals ``[L_j, U_j]``) write, with ``m = max(0, max_j U_j)`` and ``c = e^-m``,

    sigma_i = 1 / (1 + sum_j e^{d_j}) = h(R),   h(R) = c / (c + R),   R = sum_j r_j,   r_j = e^{d_j - m} in (0, 1],

so every column stays within [0, 1] whatever the logits' size. ``exp`` and ``h`` are convex, and ``h`` decreases:

- the network whose softmax is bounded above (``p_a >= sigma_i`` is all the objective may use): ``r_j`` at least
  tangents of ``exp`` (linear rows), ``p_a`` at most the chords of ``h`` between breakpoints of ``R`` (a
  piecewise-linear function above ``h``, encoded incrementally with one binary per breakpoint);
- the network bounded below (``p_b <= sigma_i``): ``r_j`` at most the chords of ``exp`` between breakpoints of
  ``d_j`` (incremental, binaries), ``p_b`` at least tangents of ``h`` (linear rows).

Every input of the box has a feasible completion (its networks' values, and ``r``, ``R``, ``p`` at their true
values: tangents lie below and chords above a convex function), so the MILP's maximum of ``p_a - p_b`` is at
least the term's; the dual bound plus the MILP's soundness margin (model.py) and the float32 evaluation margin
of a coupled term (:func:`~faithverify.bounds.coupled.coupled_margin`) bounds what onnxruntime can compute.
Chord values are rounded up, tangent constants down and column bounds outward by a relative 1e-12, far above
float64's rounding of them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from faithverify.bounds.coupled import coupled_margin
from faithverify.bounds.milp.backends import (
    GUROBI_SIZE_LIMIT,
    Backend,
    GurobiBackend,
    GurobiLicenseLimit,
    HighsBackend,
    SolverOptions,
    Status,
    StopRule,
    gurobi_env,
    gurobi_size_limited,
)
from faithverify.bounds.milp.encoding import MilpModel
from faithverify.bounds.milp.model import NetworkMILP, soundness_margin
from faithverify.bounds.softmax import LogitDiffBounds, softmax_of
from faithverify.errors import SolverError
from faithverify.methods import Solver
from faithverify.network import SparseMatrix

PIECES = (
    8  # chords per piecewise-linear function (point 16 of the first MNIST pair: 4 -> 0.0979, 8 -> 0.0925)
)
_TANGENTS = 8  # tangent rows per exp / h
_EXP_RANGE = 20.0  # below d_j - m = -20, e^{d_j - m} < 2.1e-9: one chord covers the rest of [L_j, U_j]
_ROUND = 1e-12  # relative: chord values up, tangent constants down, column bounds out
_MIN_LIMIT = 1e-3  # seconds
_D_MAX = 600.0  # logit differences past this (e^-600 is near float64's least normal) are not modelled


@dataclass(frozen=True)
class TermMilpResult:
    """One term's MILP: a sound bound, and the input of the best solution found with the term's true value."""

    bound: float
    status: Status
    seconds: float
    witness: np.ndarray | None  # [D]
    reachable: float  # the term at ``witness`` (float64 forward pass); -inf without one
    # The relaxed objective at the solver's best solution: near ``reachable`` when the softmax relaxation is
    # tight there, so a bound far above both says the ReLU branching, not the softmax, is what is left.
    incumbent: float | None = None


class _Columns:
    """A growing column list with its rows, in the MilpModel's conventions."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[bool] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def add(self, lo: float, hi: float, integer: bool = False) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(integer)
        return len(self.lower) - 1

    def row(self, coeffs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coeffs, lo, hi))


def _plus(a: dict[int, float], b: dict[int, float], scale: float = 1.0) -> dict[int, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + scale * v
    return out


@dataclass(frozen=True)
class _Pwl:
    """Incremental encoding of a piecewise-linear function on breakpoints ``b`` with values ``v``: its
    argument is ``b_0 + sum_k delta_k (b_{k+1} - b_k)``, its value ``v_0 + sum_k delta_k (v_{k+1} - v_k)``."""

    b: np.ndarray
    v: np.ndarray
    deltas: list[int]
    binaries: list[int]

    @staticmethod
    def add(cols: _Columns, b: np.ndarray, v: np.ndarray) -> _Pwl:
        deltas = [cols.add(0.0, 1.0) for _ in range(len(b) - 1)]
        binaries = [cols.add(0.0, 1.0, integer=True) for _ in range(len(b) - 2)]
        for k, w in enumerate(binaries):  # delta_{k+1} <= w_k <= delta_k: segments fill in order
            cols.row({deltas[k + 1]: 1.0, w: -1.0}, -math.inf, 0.0)
            cols.row({w: 1.0, deltas[k]: -1.0}, -math.inf, 0.0)
        return _Pwl(b, v, deltas, binaries)

    def argument(self) -> tuple[dict[int, float], float]:
        return {d: float(self.b[k + 1] - self.b[k]) for k, d in enumerate(self.deltas)}, float(self.b[0])

    def value(self) -> tuple[dict[int, float], float]:
        return {d: float(self.v[k + 1] - self.v[k]) for k, d in enumerate(self.deltas)}, float(self.v[0])

    def start(self, x: float, out: np.ndarray) -> None:
        """Set this encoding's columns in ``out`` to represent argument ``x`` (clipped to the breakpoints)."""
        x = min(max(x, self.b[0]), self.b[-1])
        for k, d in enumerate(self.deltas):
            width = self.b[k + 1] - self.b[k]
            out[d] = 0.0 if width <= 0 else min(max((x - self.b[k]) / width, 0.0), 1.0)
        for k, w in enumerate(self.binaries):
            out[w] = 1.0 if out[self.deltas[k + 1]] > 0.0 else 0.0


@dataclass(frozen=True)
class _Softmax:
    """The columns bounding one network's ``sigma_i``, and what a start needs to fill them."""

    net: int
    cls: int
    m: float
    r: list[int]  # r_j per other class j, in order
    chords: list[_Pwl | None]  # per r_j: its chord encoding (bounded below) or None (tangents)
    total: int  # R
    h_chords: _Pwl | None  # p's chord encoding (bounded above) or None (tangents)
    p: int


def _exp_breakpoints(lo: float, hi: float, pieces: int) -> np.ndarray:
    top = max(lo, hi - _EXP_RANGE)
    inner = np.linspace(top, hi, pieces + 1) if hi > top else np.array([lo, hi])
    b = np.unique(np.concatenate([[lo], inner]))
    return b if len(b) > 1 else np.array([lo, lo + 1e-9])


def _h_breakpoints(c: float, lo: float, hi: float, pieces: int) -> np.ndarray:
    b = np.unique(np.geomspace(c + lo, c + hi, pieces + 1) - c)
    b[0], b[-1] = lo, hi
    return b if len(b) > 1 else np.array([lo, lo + 1e-12])


class CoupledTermMILP:
    """The joint MILP of one box: both networks' exact models on shared inputs, one term at a time on top."""

    def __init__(
        self,
        teacher: NetworkMILP,
        student: NetworkMILP,
        diffs: tuple[LogitDiffBounds, LogitDiffBounds],
        *,
        solver: Solver = Solver.AUTO,
        pieces: int = PIECES,
        threads: int = 1,
    ) -> None:
        """``diffs``: sound ``[1, C, C]`` logit-difference bounds of each network over the box (widened here)."""
        self.nets = (teacher, student)
        self.diffs = tuple(d.widened() for d in diffs)
        self.pieces = pieces
        self.solver = solver
        self.threads = threads
        a, b = teacher.model, student.model
        if a.input_dim != b.input_dim:
            raise SolverError(f"networks of {a.input_dim} and {b.input_dim} inputs")
        d = a.input_dim
        # Student columns past the shared inputs follow the teacher's.
        self._remap = (
            np.arange(a.num_cols),
            np.concatenate([np.arange(d), np.arange(d, b.num_cols) + a.num_cols - d]),
        )
        self.num_classes = len(a.logit_offset)
        self.d_max = max(float(np.abs(np.stack([x.lower, x.upper])).max()) for x in self.diffs)

    def _logit(self, net: int, k: int) -> tuple[dict[int, float], float]:
        model = self.nets[net].model
        sel = model.logits.rows == k
        cols = self._remap[net][model.logits.cols[sel]]
        return dict(zip(cols.tolist(), model.logits.vals[sel].tolist(), strict=True)), float(
            model.logit_offset[k]
        )

    def _diff(self, net: int, i: int, j: int) -> tuple[dict[int, float], float]:
        zj, oj = self._logit(net, j)
        zi, oi = self._logit(net, i)
        return _plus(zj, zi, -1.0), oj - oi

    def _side(self, cols: _Columns, net: int, i: int, above: bool) -> _Softmax:
        """Columns and rows bounding ``sigma_i`` of network ``net`` above (``above``) or below."""
        lo_d, hi_d = self.diffs[net].lower[0, i], self.diffs[net].upper[0, i]
        others = [j for j in range(self.num_classes) if j != i]
        m = max(0.0, float(max(hi_d[j] for j in others)))
        c = math.exp(-m)
        r_cols: list[int] = []
        pwls: list[_Pwl | None] = []
        for j in others:
            lo, hi = float(lo_d[j]), float(hi_d[j])
            r = cols.add(math.exp(lo - m) * (1.0 - _ROUND), math.exp(hi - m) * (1.0 + _ROUND))
            expr, off = self._diff(net, i, j)
            if above:  # r_j >= e^{a - m} (1 + d_j - a): tangents at points where e^{d - m} matters
                for t in np.unique(np.linspace(max(lo, hi - _EXP_RANGE), hi, _TANGENTS)):
                    s = math.exp(t - m)
                    rhs = s * (1.0 - t + off)
                    cols.row(_plus({r: 1.0}, expr, -s), rhs - _ROUND * (abs(rhs) + s), math.inf)
                pwls.append(None)
            else:  # r_j <= chord of e^{d - m} at d_j, d_j = its incremental argument
                b = _exp_breakpoints(lo, hi, self.pieces)
                pwl = _Pwl.add(cols, b, np.exp(b - m) * (1.0 + _ROUND))
                arg, arg_off = pwl.argument()
                cols.row(_plus(expr, arg, -1.0), arg_off - off, arg_off - off)  # d_j == argument
                val, val_off = pwl.value()
                cols.row(_plus({r: 1.0}, val, -1.0), -math.inf, val_off)
                pwls.append(pwl)
            r_cols.append(r)
        r_lo = sum(cols.lower[r] for r in r_cols) * (1.0 - _ROUND)
        r_hi = sum(cols.upper[r] for r in r_cols) * (1.0 + _ROUND)
        big_r = cols.add(r_lo, r_hi)
        cols.row(_plus({big_r: 1.0}, {r: -1.0 for r in r_cols}), 0.0, 0.0)
        p = cols.add(0.0, 1.0)
        h_pwl = None
        if above:  # p <= chord of h at R
            b = _h_breakpoints(c, r_lo, r_hi, self.pieces)
            h_pwl = _Pwl.add(cols, b, c / (c + b) * (1.0 + _ROUND))
            arg, arg_off = h_pwl.argument()
            cols.row(_plus({big_r: 1.0}, arg, -1.0), arg_off, arg_off)
            val, val_off = h_pwl.value()
            cols.row(_plus({p: 1.0}, val, -1.0), -math.inf, val_off)
        else:  # p >= h(t) + h'(t) (R - t): tangents of h
            for t in np.unique(np.geomspace(c + r_lo, c + r_hi, 2 * _TANGENTS) - c):
                slope = c / (c + t) ** 2
                rhs = c / (c + t) + slope * t
                cols.row({p: 1.0, big_r: slope}, rhs * (1.0 - _ROUND), math.inf)
        return _Softmax(net, i, m, r_cols, pwls, big_r, h_pwl, p)

    def _model(self, direction: int, cls: int) -> tuple[MilpModel, list[_Softmax]]:
        a, b = (0, 1) if direction == 0 else (1, 0)
        cols = _Columns()
        base = [self.nets[0].model, self.nets[1].model]
        n_base = base[0].num_cols + base[1].num_cols - base[0].input_dim
        for _ in range(n_base):
            cols.add(0.0, 0.0)
        sides = [self._side(cols, a, cls, above=True), self._side(cols, b, cls, above=False)]
        col_lo = np.array(cols.lower)
        col_hi = np.array(cols.upper)
        integer = np.array(cols.integer)
        blocks_r, blocks_c, blocks_v, row_lo, row_hi = [], [], [], [], []
        n_rows = 0
        for net, model in enumerate(base):
            remap = self._remap[net]
            col_lo[remap] = model.col_lower
            col_hi[remap] = model.col_upper
            integer[remap] = model.integrality
            blocks_r.append(model.matrix.rows + n_rows)
            blocks_c.append(remap[model.matrix.cols])
            blocks_v.append(model.matrix.vals)
            row_lo.append(model.row_lower)
            row_hi.append(model.row_upper)
            n_rows += model.num_rows
        for coeffs, lo, hi in cols.rows:
            keys = np.fromiter(coeffs.keys(), np.int64, len(coeffs))
            blocks_r.append(np.full(len(keys), n_rows, np.int64))
            blocks_c.append(keys)
            blocks_v.append(np.fromiter(coeffs.values(), np.float64, len(coeffs)))
            row_lo.append(np.array([lo]))
            row_hi.append(np.array([hi]))
            n_rows += 1
        n_cols = len(col_lo)
        matrix = SparseMatrix.from_coo(
            np.concatenate(blocks_r), np.concatenate(blocks_c), np.concatenate(blocks_v), (n_rows, n_cols)
        )
        model = MilpModel(
            col_lower=col_lo,
            col_upper=col_hi,
            integrality=integer,
            matrix=matrix,
            row_lower=np.concatenate(row_lo),
            row_upper=np.concatenate(row_hi),
            logits=SparseMatrix(
                np.array([0, 1]), np.array([sides[0].p, sides[1].p]), np.array([1.0, 1.0]), (2, n_cols)
            ),
            logit_offset=np.zeros(2),
            input_dim=base[0].input_dim,
            layer_bounds=[],
            groups=[],
        )
        return model, sides

    def _start(self, model: MilpModel, sides: list[_Softmax], x: np.ndarray) -> np.ndarray:
        """The feasible point at input ``x``: both networks' completions, the relaxation at the true values."""
        v = np.zeros(model.num_cols)
        logits = []
        for net, milp in enumerate(self.nets):
            v[self._remap[net]] = milp.model.complete(milp.network, x)
            logits.append(milp.network.forward(x[None])[0])
        for side in sides:
            z = logits[side.net]
            others = [j for j in range(self.num_classes) if j != side.cls]
            for j, r, pwl in zip(others, side.r, side.chords, strict=True):
                d = float(z[j] - z[side.cls])
                v[r] = math.exp(d - side.m)
                if pwl is not None:
                    pwl.start(d, v)
            v[side.total] = sum(v[r] for r in side.r)
            if side.h_chords is not None:
                side.h_chords.start(v[side.total], v)
            v[side.p] = softmax_of(z)[side.cls]
        return np.clip(v, model.col_lower, model.col_upper)

    def _backend(self, model: MilpModel) -> Backend:
        options = SolverOptions(threads=self.threads, mip_rel_gap=1e-4, mip_abs_gap=1e-6)
        if self.solver is Solver.HIGHS:
            return HighsBackend(model, options)
        try:
            gurobi_env()
            too_big = gurobi_size_limited() and max(model.num_cols, model.num_rows) > GUROBI_SIZE_LIMIT
        except SolverError:
            if self.solver is Solver.GUROBI:
                raise
            return HighsBackend(model, options)
        if too_big and self.solver is Solver.AUTO:
            return HighsBackend(model, options)
        return GurobiBackend(model, options)

    def term(
        self, direction: int, cls: int, *, time_limit: float, below: float | None, start: np.ndarray
    ) -> TermMilpResult:
        """Sound upper bound on term ``(direction, cls)`` (direction 0: teacher above); ``below``: enough once the
        bound is under it; ``start``: an input ``[D]`` of the box (a first incumbent)."""
        began = time.perf_counter()
        if self.d_max > _D_MAX:
            # e^-m would underflow and c / (c + R) lose its meaning: no bound from here.
            return TermMilpResult(1.0, Status.STOPPED, time.perf_counter() - began, None, -math.inf)
        model, sides = self._model(direction, cls)
        cost, offset = model.objective(np.array([1.0, -1.0]))
        margin = float(coupled_margin(np.array([self.d_max]), self.num_classes)[0])
        total = model.total_range()
        stop = floor = None
        if below is not None:
            # Stop once dual + its margins is below: solve for a level a little under ``below``, and only above
            # it (the floor row: point 7 of the first MNIST pair, backends.py).
            floor = below - margin - soundness_margin(below, total)
            stop = StopRule(bound_at_most=floor, incumbent_above=math.inf)
        time_limit = max(
            time_limit, _MIN_LIMIT
        )  # HiGHS refuses a negative limit (a caller's deadline passed)
        x = np.asarray(start, np.float64).reshape(-1)
        v0 = self._start(model, sides, x)
        backend = self._backend(model)
        try:
            raw = backend.solve(cost, offset, time_limit, stop, v0, floor)
        except GurobiLicenseLimit:
            if self.solver is not Solver.AUTO:
                raise
            raw = HighsBackend(model, SolverOptions(threads=self.threads)).solve(
                cost, offset, time_limit, stop, v0, floor
            )
        bound = raw.dual_bound + soundness_margin(raw.dual_bound, total) + margin
        bound = min(bound, 1.0) if math.isfinite(bound) else 1.0
        witness, reachable = None, -math.inf
        if raw.solution is not None:
            witness = raw.solution[: model.input_dim].copy()
            reachable = self.value(direction, cls, witness)
        return TermMilpResult(
            max(bound, 0.0), raw.status, time.perf_counter() - began, witness, reachable, raw.incumbent
        )

    def value(self, direction: int, cls: int, x: np.ndarray) -> float:
        """The term at input ``x`` (float64 forward passes of both networks)."""
        t, s = (
            softmax_of(milp.network.forward(np.asarray(x, np.float64).reshape(1, -1))[0])
            for milp in self.nets
        )
        return float(t[cls] - s[cls]) * (1.0 if direction == 0 else -1.0)
