"""Sound bounds on logit differences ``z_j - z_i`` of one network over an input box, from its exact MILP.

One :class:`NetworkMILP` per network and box: the model is encoded and handed to the solver once, and each
:meth:`NetworkMILP.max_logit_diff` only changes the objective.

Soundness. The returned ``bound`` is the solver's dual bound plus :func:`soundness_margin`, and never above
the trivial interval bound of the objective over the variables' bounds. Why that is sound:

- The MILP is exact: every input of the box has exactly one feasible completion, the network's own values
  (encoding.py), provided the layer bounds are sound; they are widened by ``BOUND_SLACK`` against rounding.
- The dual bound is valid at any stop (optimal, time limit, cut-off): branch and bound only ever closes a node
  whose LP bound is below the incumbent or whose LP solution is integral, and each LP bound covers every
  integer point of its node. The feasibility and integrality tolerances only *enlarge* what the solver accepts
  as feasible, which can only raise the maximum it reports: they cannot make the bound too small.
- What can make it too small is the LP bound itself being computed inexactly: a reduced cost of the wrong sign
  by up to the dual feasibility tolerance ``delta`` on column ``k`` understates the LP maximum by at most
  ``delta·(u_k - l_k)`` (the argument behind Neumaier and Shcherbina's safe LP bounds). Hence the term
  ``delta·sum_k (u_k - l_k)``, with ``delta = 1e-9`` set on both solvers. Floating-point error in the
  solvers' arithmetic is covered by the relative and absolute terms, 1e-6 each (1e3 times the rounding error
  of sums of a few thousand float64 terms of the size of the logits). This is an engineering margin, not a
  proof: solvers scale the model internally and apply their tolerances to the scaled problem. The caller adds
  the rounding margins of :mod:`faithverify.bounds.softmax` on top.
- The MIP gap tolerances only decide when a solve stops; the dual bound is reported, not the incumbent, so
  they need no margin.

Early stops: ``max_logit_diff(i, j, cutoff=c)`` stops as soon as the dual bound plus its margin is ``<= c`` (then
``bound <= c``: the caller's question is answered) or an incumbent exceeds ``c + margin`` (a witness that the
maximum is above ``c``; ``bound`` is still the dual bound at that moment, sound but not tight). The solver's
incumbent value is only feasible up to its tolerances (integrality 1e-6 times a big-M constant): the
``witness_value`` of the result, recomputed by a forward pass at the witness input, is the one to trust.
``stop_below=s`` only stops on the bound (once ``bound <= s``: the caller needs no tighter one); with both,
the bound stop is at the larger of the two levels. Either way the status is ``bound_below_cutoff``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from torch import nn

from faithverify.bounds.milp.backends import (
    DUAL_FEASIBILITY_TOL,
    GUROBI_SIZE_LIMIT,
    Backend,
    GurobiBackend,
    GurobiLicenseLimit,
    HighsBackend,
    RawSolve,
    SolverOptions,
    Status,
    StopRule,
    gurobi_env,
    gurobi_size_limited,
)
from faithverify.bounds.milp.encoding import LayerBounds, MilpModel, encode
from faithverify.bounds.milp.prebounds import crown_layer_bounds
from faithverify.bounds.milp.tighten import MilpTightening, lp_refiner, milp_refiner
from faithverify.bounds.softmax import LogitDiffBounds
from faithverify.errors import SolverError
from faithverify.methods import Solver
from faithverify.network import PiecewiseLinearNetwork

log = logging.getLogger(__name__)

ABS_MARGIN = 1e-6
REL_MARGIN = 1e-6
# LP bound tightening stops after this long per layer, or at the caller's deadline (the rest keep CROWN's
# bounds): a cap for big CNNs, far above what MNIST-size MLPs need (~0.2 s per layer of 30 neurons).
_TIGHTEN_SECONDS_PER_LAYER = 10.0
_GUESS_STEPS = 12  # signed-gradient steps for a first incumbent (step sizes halve: 1/2 ... 1/4096 of the box)


@dataclass(frozen=True)
class SolveResult:
    """One maximisation of a linear form of the logits over the box.

    ``bound``: sound upper bound on the maximum, the solver's dual bound plus the margin (module docstring),
    never the incumbent. ``incumbent``: the best feasible objective value found (a lower bound on the maximum
    up to solver tolerances), for information. ``exact``: solved to optimality within the MIP gap tolerances.
    ``status``: a :class:`Status` value (optimal, time_limit, bound_below_cutoff, incumbent_above_cutoff,
    stopped). ``witness``: the input of the incumbent; ``witness_value``: the objective recomputed there by a
    float64 forward pass of the network (a true lower bound on the maximum, up to float64 rounding).
    """

    bound: float
    incumbent: float | None
    exact: bool
    status: str
    seconds: float
    solver: str  # "highs" or "gurobi"
    witness: np.ndarray | None = None
    witness_value: float | None = None


def logit_diff_weights(num_classes: int, i: int, j: int) -> np.ndarray:
    """The linear form of the logits that is ``z_j - z_i`` (what every exact method's ``max_logit_diff`` solves)."""
    if not (0 <= i < num_classes and 0 <= j < num_classes) or i == j:
        raise ValueError(f"need two different classes in [0, {num_classes}), got i={i}, j={j}")
    weights = np.zeros(num_classes)
    weights[j], weights[i] = 1.0, -1.0
    return weights


class ExactMethod(ABC):
    """A sound maximiser of linear forms of one network's logits over one box (the MILP, branch and bound, or
    both): ``maximize`` is each method's own, ``max_logit_diff`` is the form ``z_j - z_i`` for all of them.

    ``cutoff=c``: it may stop once the answer to "is the maximum <= c?" is known; ``stop_below=s``: as soon as
    the bound is at most ``s``; ``start``: inputs ``[K, D]`` (e.g. attack witnesses) to seed a first incumbent.
    """

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @abstractmethod
    def maximize(
        self,
        weights: np.ndarray,
        *,
        time_limit: float | None = None,
        cutoff: float | None = None,
        stop_below: float | None = None,
        start: np.ndarray | None = None,
    ) -> SolveResult:
        """Sound upper bound on ``max_{x in box} weights · z(x)``."""

    def max_logit_diff(
        self,
        i: int,
        j: int,
        *,
        time_limit: float | None = None,
        cutoff: float | None = None,
        stop_below: float | None = None,
        start: np.ndarray | None = None,
    ) -> SolveResult:
        """Sound upper bound on ``max_{x in box} z_j(x) - z_i(x)``."""
        weights = logit_diff_weights(self.num_classes, i, j)
        return self.maximize(
            weights, time_limit=time_limit, cutoff=cutoff, stop_below=stop_below, start=start
        )


def soundness_margin(bound: float, total_range: float) -> float:
    """What is added to a solver's dual bound (module docstring)."""
    return ABS_MARGIN + REL_MARGIN * abs(bound) + DUAL_FEASIBILITY_TOL * total_range


def _stop_level(cutoff: float, total_range: float) -> float:
    """The largest ``s`` with ``s + soundness_margin(s) <= cutoff``."""
    k = cutoff - ABS_MARGIN - DUAL_FEASIBILITY_TOL * total_range
    return k / (1.0 + REL_MARGIN) if k >= 0 else k / (1.0 - REL_MARGIN)


class NetworkMILP(ExactMethod):
    """One model per network and input box; only the objective changes between solves."""

    def __init__(
        self,
        body: nn.Module | PiecewiseLinearNetwork,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        solver: Solver = Solver.AUTO,
        preactivation: list[LayerBounds | None] | None = None,
        threads: int = 1,
        time_limit: float | None = None,
        mip_rel_gap: float = 1e-4,
        mip_abs_gap: float = 1e-6,
        tighten: bool = True,
        deadline: float | None = None,
        milp_tightening: MilpTightening | None = None,
    ) -> None:
        """``body`` takes flat inputs ``[N, D]`` (a torch module or the network form); ``lower``/``upper`` are one
        box (``[D]`` or ``[1, D]``).

        ``preactivation``: sound bounds on the input of every ReLU and max-pool layer, in order (for an MLP
        exactly the ``pre`` list of ``ChainCrown.bounds``; arrays or tensors of ``[width]`` or ``[1, width]``).
        When None, CROWN computes them (prebounds.py). ``tighten``: improve the bounds of unstable ReLUs with
        LPs over the layers below before encoding them (tighten.py): fewer binaries, smaller big-M constants.
        ``deadline`` (``time.monotonic()``): the tightening stops by then (the rest keep their bounds), so that a
        caller's time limit covers building the model as well as solving it. ``milp_tightening`` (with ``tighten``):
        per-neuron MILPs in the deepest layers after the LPs (tighten.py), for callers with minutes to spend.
        """
        lower = np.asarray(lower, dtype=np.float64).reshape(-1)
        upper = np.asarray(upper, dtype=np.float64).reshape(-1)
        self.network = (
            body
            if isinstance(body, PiecewiseLinearNetwork)
            else PiecewiseLinearNetwork.from_module(body, len(lower))
        )
        if preactivation is None:
            preactivation = crown_layer_bounds(self.network, lower, upper)
        refine = None
        if tighten and milp_tightening is not None:
            refine = milp_refiner(
                self.network,
                soundness_margin,
                milp_tightening,
                lp_time_limit=_TIGHTEN_SECONDS_PER_LAYER,
                deadline=deadline,
            )
        elif tighten:
            refine = lp_refiner(soundness_margin, _TIGHTEN_SECONDS_PER_LAYER, deadline)
        self.model: MilpModel = encode(self.network, lower, upper, preactivation, refine)
        self._box = (lower, upper)
        self.time_limit = time_limit
        self._options = SolverOptions(threads=threads, mip_rel_gap=mip_rel_gap, mip_abs_gap=mip_abs_gap)
        self._requested = Solver(solver)
        self._backend: Backend = self._make_backend()
        self._range = self.model.total_range()

    @property
    def num_classes(self) -> int:
        return len(self.model.logit_offset)

    @property
    def num_variables(self) -> int:
        return self.model.num_cols

    @property
    def num_constraints(self) -> int:
        return self.model.num_rows

    @property
    def num_binaries(self) -> int:
        return self.model.num_binaries

    def solver_used(self) -> str:
        return self._backend.name

    def _make_backend(self) -> Backend:
        if self._requested is Solver.HIGHS:
            return HighsBackend(self.model, self._options)
        if self._requested is Solver.GUROBI:
            gurobi_env()
            return GurobiBackend(self.model, self._options)
        try:
            gurobi_env()
            limited = gurobi_size_limited()
        except SolverError as exc:
            log.info("using HiGHS for the MILP: %s", exc)
            return HighsBackend(self.model, self._options)
        too_big = max(self.model.num_cols, self.model.num_rows) > GUROBI_SIZE_LIMIT
        if limited and too_big:
            log.info(
                "using HiGHS for the MILP: %d variables and %d constraints exceed the size-limited Gurobi "
                "license (%d of each)",
                self.model.num_cols,
                self.model.num_rows,
                GUROBI_SIZE_LIMIT,
            )
            return HighsBackend(self.model, self._options)
        return GurobiBackend(self.model, self._options)

    def maximize(
        self,
        weights: np.ndarray,
        *,
        time_limit: float | None = None,
        cutoff: float | None = None,
        stop_below: float | None = None,
        start: np.ndarray | None = None,
    ) -> SolveResult:
        """Sound upper bound on ``max_{x in box} weights · z(x)`` (any linear form of the logits); with
        ``cutoff`` it may stop early once the answer to "is the maximum <= cutoff?" is known, with ``stop_below``
        as soon as the bound is at most that (module docstring). ``start``: inputs ``[K, D]`` (e.g. attack
        witnesses) to seed the search for a first incumbent."""
        weights = np.asarray(weights, dtype=np.float64)
        cost, offset = self.model.objective(weights)
        limit = time_limit if time_limit is not None else self.time_limit
        stop = None
        if cutoff is not None or stop_below is not None:
            levels = [float(v) for v in (cutoff, stop_below) if v is not None]
            above = (
                math.inf if cutoff is None else float(cutoff) + soundness_margin(float(cutoff), self._range)
            )
            stop = StopRule(_stop_level(max(levels), self._range), above)
        x0 = self._first_guess(weights, start)
        # Below the stop level every answer is the same to the caller: the search only looks above it.
        floor = None if stop is None else stop.bound_at_most
        raw = self._solve(cost, offset, limit, stop, self.model.complete(self.network, x0), floor)
        return self._result(raw, cost, offset, weights)

    def _first_guess(self, weights: np.ndarray, start: np.ndarray | None) -> np.ndarray:
        """The best input found by a short signed-gradient ascent from the box centre, the box vertex the
        centre's gradient points to, and the given starts (a first incumbent for the solver)."""
        lo, hi = self._box
        centre = (lo + hi) / 2
        _, g = self.network.gradient(centre[None], weights)
        points = [centre[None], np.where(g > 0, hi, lo)]
        if start is not None:
            points.append(np.clip(np.asarray(start, dtype=np.float64).reshape(-1, len(lo)), lo, hi))
        x = np.concatenate(points)
        best_x, best_v = x[0], -math.inf
        for step in range(_GUESS_STEPS + 1):
            value, g = self.network.gradient(x, weights)
            k = int(np.argmax(value))
            if value[k] > best_v:
                best_x, best_v = x[k].copy(), float(value[k])
            x = np.clip(x + (0.5**step) * (hi - lo) * np.sign(g), lo, hi)
        return best_x

    def _solve(
        self,
        cost: np.ndarray,
        offset: float,
        limit: float | None,
        stop: StopRule | None,
        start: np.ndarray,
        floor: float | None = None,
    ) -> RawSolve:
        try:
            return self._backend.solve(cost, offset, limit, stop, start, floor)
        except GurobiLicenseLimit as exc:
            if self._requested is not Solver.AUTO:
                raise
            log.warning("Gurobi's license refused the MILP (%s); falling back to HiGHS", exc)
            self._backend = HighsBackend(self.model, self._options)
            return self._backend.solve(cost, offset, limit, stop, start, floor)

    def _result(self, raw: RawSolve, cost: np.ndarray, offset: float, weights: np.ndarray) -> SolveResult:
        trivial = self.model.interval_max(cost, offset)
        bound = min(raw.dual_bound + soundness_margin(raw.dual_bound, self._range), trivial)
        witness = witness_value = None
        if raw.solution is not None:
            witness = raw.solution[: self.model.input_dim].copy()
            witness_value = float(self.network.forward(witness[None])[0] @ weights)
        return SolveResult(
            bound=float(bound) if not math.isnan(bound) else trivial,
            incumbent=raw.incumbent,
            exact=raw.status is Status.OPTIMAL,
            status=str(raw.status),
            seconds=raw.seconds,
            solver=self._backend.name,
            witness=witness,
            witness_value=witness_value,
        )


def logit_diff_bounds_milp(
    body: nn.Module,
    lower: np.ndarray,
    upper: np.ndarray,
    pairs: list[tuple[int, int]] | None = None,
    *,
    fallback: LogitDiffBounds | None = None,
    solver: Solver = Solver.AUTO,
    preactivation: list[LayerBounds | None] | None = None,
    threads: int = 1,
    time_limit: float | None = None,
    tighten: bool = True,
) -> LogitDiffBounds:
    """Bounds on ``z_j - z_i`` for ONE box (``[D]`` or ``[1, D]``), as ``LogitDiffBounds`` of shape ``[1, C, C]``.

    Each ordered pair ``(i, j)`` in ``pairs`` (default: all) is one MILP solve for the upper bound of
    ``z_j - z_i``, which also gives the lower bound of ``z_i - z_j``. Entries not solved keep ``fallback`` (its
    first point) or +/-inf; solved ones are intersected with the fallback.
    """
    milp = NetworkMILP(
        body,
        lower,
        upper,
        solver=solver,
        preactivation=preactivation,
        threads=threads,
        time_limit=time_limit,
        tighten=tighten,
    )
    c = milp.num_classes
    up = np.full((c, c), np.inf)
    lo = np.full((c, c), -np.inf)
    if fallback is not None:
        up, lo = np.array(fallback.upper[0], dtype=np.float64), np.array(fallback.lower[0], dtype=np.float64)
    todo = pairs if pairs is not None else [(i, j) for i in range(c) for j in range(c) if i != j]
    for i, j in todo:
        up[i, j] = min(up[i, j], milp.max_logit_diff(i, j).bound)
        lo[j, i] = max(lo[j, i], -up[i, j])
    np.fill_diagonal(up, 0.0)
    np.fill_diagonal(lo, 0.0)
    return LogitDiffBounds(lower=lo[None], upper=up[None])
