"""The two MILP solvers behind one small interface: HiGHS (highspy, MIT, no size limit) and Gurobi (gurobipy).

Both maximise ``cost·v + offset`` over a :class:`MilpModel` built once; only the objective changes between
solves. What each returns as the bound is the solver's *dual* bound (best bound) on the maximum, never the
incumbent, so it stays an upper bound of the optimum when a solve stops early (time limit, cut-off).

Behaviour verified on highspy 1.16 / gurobipy 13 (tests/test_milp.py repeats the checks that matter):

- HiGHS, objective sense ``kMaximize``: ``getInfo().mip_dual_bound`` and the callback's ``mip_dual_bound``
  are upper bounds in the maximisation sense (they fall towards the optimum as branching proceeds) and include
  the objective offset; the callback's ``mip_primal_bound`` is the incumbent, also in the maximisation sense,
  ``-inf`` before one is found (``+inf`` for the dual bound before the root LP). ``time_limit`` applies to each
  ``run()`` separately, not to the object's life. A ``kCallbackMipInterrupt`` callback that calls
  ``interrupt()`` stops the solve with model status ``kInterrupt``, after which ``mip_dual_bound`` is still the
  valid bound at that moment. Pitfalls: a model without integer columns is solved as an LP and
  ``mip_dual_bound`` stays 0 (not a bound); a solution passed by ``setSolution`` is dropped by any later model
  change (``changeColsCost``), so it is set last; without one, the primal heuristics often find no feasible
  point at all on these models; the thread scheduler is process-wide and a run asking for another ``threads``
  count fails until it is reset; the first ``Highs()`` prints a banner on stdout before options can be set.
- Gurobi, ``ModelSense = -1``: ``ObjBound`` is the upper bound, valid also at a time limit or user objective
  limit. For a maximisation ``BestBdStop = s`` stops once ``ObjBound <= s`` and ``BestObjStop = s`` once the
  incumbent ``>= s`` (status ``USER_OBJ_LIMIT``). The matrix API (``addMConstr``, ``A @ x``) needs scipy, which
  this project does not install, so rows are added one ``LinExpr`` at a time (0.5 s for 1.5 M nonzeros).
  The bundled PyPI license refuses models over 2000 variables or 2000 constraints with errno 10010 at
  ``optimize()``.

A solve may be given a *floor*: a level below which the caller does not need to know the maximum (its
answer is already settled there: a delta to prove, a larger term, an attack's value). The backend then adds
the row ``cost·v + offset >= floor`` for that solve only, so that the search prunes every node whose bound is
under the floor instead of under its incumbent, and reports ``max(dual bound of the restricted model, floor)``:
every point of the model is either in the restricted one or has an objective below the floor, so that is an
upper bound of the unrestricted maximum, and a restricted model proved infeasible reads as the floor itself
(status ``bound_below_cutoff``). Neither solver offers this as an option that can be trusted here: HiGHS's
``objective_bound`` is read in its internal minimisation sense, and on a small knapsack maximised with it set
to minus a level above the optimum (highspy 1.16) it reported "optimal" 405 with dual bound 409 where the
optimum is 407. On point 7 of the first MNIST pair (eps 0.05, the student-above term of class 9, the joint
MILP on alpha-CROWN's bounds) the row at 0.6 proved the term below it in 22 s, where the same solve without
it still stood at 0.67 after 60 s.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from faithverify import interrupt
from faithverify.bounds.milp.encoding import MilpModel
from faithverify.errors import SolverError
from faithverify.network import SparseMatrix

log = logging.getLogger(__name__)

# Tolerances set on both solvers. The dual feasibility (optimality) tolerance enters the soundness margin
# (faithverify.bounds.milp.model), so it is set tight; 1e-9 is the smallest value both solvers accept. The
# feasibility and integrality tolerances only let more points count as feasible, which cannot lower a dual
# bound (model.py); the integrality tolerance stays at HiGHS's default, since 1e-9 made HiGHS 1.7 times slower
# on the shipped MNIST teacher (Gurobi: no difference). The witness is re-evaluated by a forward pass anyway.
DUAL_FEASIBILITY_TOL = 1e-9
PRIMAL_FEASIBILITY_TOL = 1e-9
INTEGRALITY_TOL = 1e-6
GUROBI_SIZE_LIMIT = 2000
_GUROBI_LICENSE_LIMIT_ERRNO = 10010
# HiGHS sets matrix entries of magnitude <= small_matrix_value (1e-9 by default, highspy 1.16) to zero when a
# model is passed (passModel returns a warning, which reads like success; the maintainers' word in
# jump-dev/HiGHS.jl issue 73): a different model, and not a relaxation of ours. The coupled-term MILP has
# such entries where e^{d - m} is tiny (tangent slopes times weights, chord steps); with them dropped HiGHS
# proved a maximum of 7.03e-5 "optimal" for a term whose true value at an input of the box is 9.75e-5 (MNIST
# FD pair, test point 451, eps 0.0077), and called the model infeasible without a start. So entries at or
# below this are removed here, before any solver sees them, and each row they leave is relaxed by what they
# could contribute over their columns' bounds (:func:`solver_rows`): the model handed over is a relaxation of
# ours, and its dual bound stays an upper bound of our maximum.
TINY_COEFFICIENT = 1e-8


class Status(StrEnum):
    OPTIMAL = "optimal"  # proven optimal within the MIP gap tolerances
    TIME_LIMIT = "time_limit"
    BOUND_BELOW_CUTOFF = "bound_below_cutoff"  # the dual bound proved the maximum <= cutoff
    INCUMBENT_ABOVE_CUTOFF = "incumbent_above_cutoff"  # a feasible solution is above the cutoff
    STOPPED = "stopped"  # any other early stop (node or solution limit, interrupt)


@dataclass(frozen=True)
class StopRule:
    """Stop as soon as the dual bound is ``<= bound_at_most`` or the incumbent is ``> incumbent_above``."""

    bound_at_most: float
    incumbent_above: float


@dataclass(frozen=True)
class RawSolve:
    """What a solver reports, before the soundness margin."""

    dual_bound: float  # upper bound of the maximum; +inf when the solver has none
    incumbent: float | None
    solution: np.ndarray | None  # values of all variables at the incumbent
    status: Status
    seconds: float


class GurobiLicenseLimit(SolverError):
    """gurobipy's size-limited license refused the model (errno 10010)."""


class Backend(Protocol):
    name: str

    def solve(
        self,
        cost: np.ndarray,
        offset: float,
        time_limit: float | None,
        stop: StopRule | None,
        start: np.ndarray,
        floor: float | None = None,
    ) -> RawSolve:
        """Maximise ``cost·v + offset``, starting from the feasible point ``start``; with ``floor``, only above it
        (module docstring): the dual bound returned is then never below ``floor``."""
        ...


@dataclass(frozen=True)
class SolverOptions:
    threads: int = 1
    mip_rel_gap: float = 1e-4
    mip_abs_gap: float = 1e-6


# What HiGHS's presolve may take per column of the model (measured 0.001 s; twice that, to be safe).
_PRESOLVE_SECONDS_PER_COLUMN = 0.002


class HighsBackend:
    """HiGHS through highspy; the model is passed once in row-wise (CSR) form."""

    name = "highs"

    def __init__(self, model: MilpModel, options: SolverOptions) -> None:
        import highspy

        self._highspy = highspy
        h = new_highs()
        self._threads = options.threads
        # Without integer columns HiGHS solves an LP and leaves mip_dual_bound at 0 (seen in highspy 1.16: a
        # maximum of 0.94 reported with dual bound 0), so an LP's bound is read from its optimal objective.
        self._is_lp = model.num_binaries == 0
        for key, value in {
            "output_flag": False,
            "threads": options.threads,
            "mip_rel_gap": options.mip_rel_gap,
            "mip_abs_gap": options.mip_abs_gap,
            "mip_feasibility_tolerance": INTEGRALITY_TOL,
            "primal_feasibility_tolerance": PRIMAL_FEASIBILITY_TOL,
            "dual_feasibility_tolerance": DUAL_FEASIBILITY_TOL,
        }.items():
            _highs_ok(h.setOptionValue(key, value), f"set option {key}")
        # Each solve starts from a good incumbent and only its dual bound is used, so HiGHS's sub-MIP
        # heuristics, which look for better incumbents, are wasted: on the shipped MNIST teacher (57 binaries)
        # they took 4.2 of a 5.5 s solve (solving report, "subMIP time"); without them it took 1.3 s, and
        # mip_heuristic_effort=0 does not turn them off (highspy 1.16). The options came with HiGHS 1.11; an
        # older HiGHS rejects them and runs as before, only slower.
        for key in ("mip_heuristic_run_rins", "mip_heuristic_run_rens"):
            if h.setOptionValue(key, False) == highspy.HighsStatus.kError:
                log.debug("this HiGHS has no option %s", key)
        status = pass_model(h, model, model.integrality.astype(np.int32))
        _highs_ok(status, "pass the model to")
        self._h = h
        self._cols = np.arange(model.num_cols, dtype=np.int32)
        self._col_lower, self._col_upper = model.col_lower, model.col_upper
        self._bounded = bool(np.isfinite(model.col_lower).all() and np.isfinite(model.col_upper).all())

    def solve(
        self,
        cost: np.ndarray,
        offset: float,
        time_limit: float | None,
        stop: StopRule | None,
        start: np.ndarray,
        floor: float | None = None,
    ) -> RawSolve:
        h = self._h
        _highs_ok(h.changeColsCost(len(self._cols), self._cols, cost), "set the objective in")
        _highs_ok(h.changeObjectiveOffset(offset), "set the objective offset in")
        floor_row = None
        if floor is not None:
            cols, vals, lower = objective_row(cost, offset, floor, self._col_lower, self._col_upper)
            floor_row = h.getNumRow()
            _highs_ok(
                h.addRow(lower, math.inf, len(cols), cols.astype(np.int32), vals), "add the floor row to"
            )
        # Without a start HiGHS's heuristics often find no feasible point at all on these models. It must come
        # after the objective: changing the model discards a solution set before.
        _highs_ok(h.setSolution(len(self._cols), self._cols, start), "set the start of")
        _highs_ok(
            h.setOptionValue("time_limit", math.inf if time_limit is None else time_limit), "set time_limit"
        )
        # HiGHS's MIP presolve does not look at the time limit (1.7 s on the 1816 columns of a 3x200 ReLU MLP,
        # whatever the limit; 0.27 s without it under a 0.05 s limit): with less time than it may take, it is
        # skipped, so that the solve stops in time.
        presolve = time_limit is None or time_limit >= _PRESOLVE_SECONDS_PER_COLUMN * len(self._cols)
        _highs_ok(h.setOptionValue("presolve", "choose" if presolve else "off"), "set presolve")
        reason: list[Status] = []
        stopped_at: list[float] = []  # the dual bound the callback stopped on

        def on_interrupt(event: Any) -> None:
            # Called from HiGHS's branch and bound; both values are in the maximisation sense (module docstring).
            try:
                out = event.data_out
                if interrupt.requested():
                    reason.append(Status.STOPPED)
                elif stop is not None and out.mip_dual_bound <= stop.bound_at_most:
                    reason.append(Status.BOUND_BELOW_CUTOFF)
                    stopped_at.append(float(out.mip_dual_bound))
                elif stop is not None and out.mip_primal_bound > stop.incumbent_above:
                    reason.append(Status.INCUMBENT_ABOVE_CUTOFF)
            except KeyboardInterrupt:  # Ctrl-C landed in this callback: stop HiGHS, raise after run()
                interrupt.request()
                reason.append(Status.STOPPED)
            # Set the flag both ways: HiGHS keeps the callback's input between runs (highspy 1.16), so a flag
            # left True by the solve before would stop this one at its first call with no reason given.
            event.interrupt(bool(reason))

        # Subscribed even without a stop rule: it is how a Ctrl-C reaches a long solve.
        h.cbMipInterrupt.subscribe(on_interrupt)
        began = time.perf_counter()
        highs_threads(self._threads)
        try:
            status = h.run()
            interrupt.raise_if_requested()  # before reading an interrupted solve as a result
            _highs_ok(status, "solve with")
            seconds = time.perf_counter() - began
            return self._result(
                reason[0] if reason else None, seconds, floor, stopped_at[0] if stopped_at else None
            )
        finally:
            h.cbMipInterrupt.unsubscribe(on_interrupt)
            if floor_row is not None:  # the model stays the caller's for the next solve
                h.deleteRows(1, np.array([floor_row], dtype=np.int32))

    def _result(
        self,
        reason: Status | None,
        seconds: float,
        floor: float | None = None,
        stopped_at: float | None = None,
    ) -> RawSolve:
        hs = self._highspy
        h = self._h
        model_status = h.getModelStatus()
        info = h.getInfo()
        statuses = {
            hs.HighsModelStatus.kOptimal: Status.OPTIMAL,
            hs.HighsModelStatus.kTimeLimit: Status.TIME_LIMIT,
        }
        if model_status == hs.HighsModelStatus.kInterrupt and reason is not None:
            status = reason
        elif model_status in statuses:
            status = statuses[model_status]
        elif (
            floor is not None
            and self._bounded
            and model_status
            in (
                hs.HighsModelStatus.kInfeasible,
                hs.HighsModelStatus.kUnboundedOrInfeasible,  # every column is bounded: infeasible
            )
        ):
            # Only the floor row can make it so (the model alone has its start): nothing is above the floor.
            return RawSolve(floor, None, None, Status.BOUND_BELOW_CUTOFF, seconds)
        elif model_status in (hs.HighsModelStatus.kInfeasible, hs.HighsModelStatus.kUnboundedOrInfeasible):
            raise SolverError(
                "HiGHS reports the network's MILP infeasible: the input box or the layer bounds are wrong"
            )
        elif model_status in (hs.HighsModelStatus.kSolveError, hs.HighsModelStatus.kModelError):
            raise SolverError(f"HiGHS failed: {h.modelStatusToString(model_status)}")
        else:
            status = Status.STOPPED
        has_solution = info.primal_solution_status == hs.SolutionStatus.kSolutionStatusFeasible
        dual = float(info.mip_dual_bound)
        if self._is_lp:
            # At LP optimality primal and dual objectives agree up to the dual feasibility tolerance, which
            # soundness_margin covers; short of optimality there is no bound.
            dual = float(info.objective_function_value) if status is Status.OPTIMAL else math.inf
        dual = dual if math.isfinite(dual) else math.inf  # none yet (+inf) or not a number
        if status is Status.BOUND_BELOW_CUTOFF and stopped_at is not None and floor is not None:
            # With a floor row the restricted model may have no point left at all: the callback then stops on a
            # dual bound of -inf, and the info after the interrupt has none (+inf). What it stopped on holds.
            dual = min(dual, stopped_at)
        return RawSolve(
            dual_bound=dual if floor is None else max(dual, floor),
            incumbent=float(info.objective_function_value) if has_solution else None,
            solution=np.array(h.getSolution().col_value) if has_solution else None,
            status=status,
            seconds=seconds,
        )


def objective_row(
    cost: np.ndarray, offset: float, floor: float, col_lower: np.ndarray, col_upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The row ``cost·v + offset >= floor`` as a solver should get it: its columns, their coefficients and its
    lower side, the entries of magnitude <= ``TINY_COEFFICIENT`` removed and the side lowered by what they could
    contribute (as :func:`solver_rows` does), then by a relative 1e-12, far above float64's rounding of the
    side: only ever a weaker row."""
    cost = np.asarray(cost, np.float64)
    tiny = (cost != 0) & (np.abs(cost) <= TINY_COEFFICIENT)
    with np.errstate(invalid="ignore"):
        slack = float(
            np.sum(np.abs(cost[tiny]) * np.maximum(np.abs(col_lower[tiny]), np.abs(col_upper[tiny])))
        )
    cols = np.flatnonzero(np.abs(cost) > TINY_COEFFICIENT)
    lower = floor - offset - slack - 1e-12 * (abs(floor) + abs(offset) + slack)
    return cols, cost[cols], lower


def solver_rows(model: MilpModel) -> tuple[SparseMatrix, np.ndarray, np.ndarray]:
    """The model's rows as a solver should get them: entries of magnitude <= ``TINY_COEFFICIENT`` removed, and the
    bounds of each row that had them widened by ``sum |a_k| max(|l_k|, |u_k|)`` over those entries (then one
    float64 step outward, against the rounding of that sum). Every point of the model stays feasible."""
    a = model.matrix
    tiny = np.abs(a.vals) <= TINY_COEFFICIENT
    if not tiny.any():
        return a, model.row_lower, model.row_upper
    cols = a.cols[tiny]
    with np.errstate(invalid="ignore"):  # 0 * inf: an entry of 0 is never stored (SparseMatrix)
        reach = np.abs(a.vals[tiny]) * np.maximum(
            np.abs(model.col_lower[cols]), np.abs(model.col_upper[cols])
        )
    slack = np.bincount(a.rows[tiny], weights=reach, minlength=model.num_rows) * (1.0 + 1e-12)
    widened = slack > 0
    lower, upper = model.row_lower.copy(), model.row_upper.copy()
    lower[widened] = np.nextafter(lower[widened] - slack[widened], -np.inf)
    upper[widened] = np.nextafter(upper[widened] + slack[widened], np.inf)
    keep = ~tiny
    return SparseMatrix(a.rows[keep], a.cols[keep], a.vals[keep], a.shape), lower, upper


def pass_model(h: Any, model: MilpModel, integrality: np.ndarray) -> Any:
    """Hand ``model`` to a ``highspy.Highs`` in row-wise (CSR) form (:func:`solver_rows`), maximising a zero
    objective (each solve sets its own); ``integrality``: 1 = integer, 0 = continuous per column. Returns
    HiGHS's status."""
    import highspy

    a, row_lower, row_upper = solver_rows(model)
    return h.passModel(
        model.num_cols,
        model.num_rows,
        a.nnz,
        int(highspy.MatrixFormat.kRowwise),
        int(highspy.ObjSense.kMaximize),
        0.0,
        np.zeros(model.num_cols),
        model.col_lower,
        model.col_upper,
        row_lower,
        row_upper,
        a.indptr().astype(np.int32),
        a.cols.astype(np.int32),
        a.vals,
        integrality,
    )


def new_highs() -> Any:
    """A quiet ``highspy.Highs``. The first one in a process prints a banner to stdout from C++ before any
    option can be set; stdout (file descriptor 1, where the banner goes) is pointed at /dev/null meanwhile, so
    that it cannot mix into output such as JSON on stdout."""
    import highspy

    if _HIGHS.banner_shown:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _HIGHS.banner_shown = True
    h.setOptionValue("output_flag", False)
    return h


@dataclass
class _HighsProcess:
    """What this process's HiGHS has done so far (both are process-wide in HiGHS)."""

    banner_shown: bool = False
    scheduler_threads: int | None = None


_HIGHS = _HighsProcess()


def highs_threads(n: int) -> None:
    """Make HiGHS's thread scheduler fit a run with option ``threads = n``.

    The scheduler is created by the first run in a process (thread) and kept: a later run asking for another
    count fails ("the scheduler has already been initialized to use 1 threads"). So it is reset whenever the
    count changes; call this right before ``run()``.
    """
    import highspy

    if _HIGHS.scheduler_threads not in (None, n):
        highspy.Highs.resetThreadScheduler(True)
    _HIGHS.scheduler_threads = n


def _highs_ok(status: Any, action: str) -> None:
    import highspy

    interrupt.raise_if_requested()  # an interrupted run reports an error: it is the user's Ctrl-C, not HiGHS
    if status == highspy.HighsStatus.kError:
        raise SolverError(f"HiGHS could not {action} the model")


@functools.cache
def gurobi_env() -> Any:
    """One quiet Gurobi environment per process; raises SolverError when gurobipy or its license is missing."""
    try:
        import gurobipy as gp

        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        return env
    except ImportError as exc:
        raise SolverError("gurobipy is not installed") from exc
    except Exception as exc:  # gurobipy.GurobiError: no or invalid license
        raise SolverError(f"Gurobi is not usable: {exc}") from exc


@functools.cache
def gurobi_size_limited() -> bool:
    """Whether this Gurobi license is the bundled size-limited one (it refuses a model of 2001 variables)."""
    import gurobipy as gp

    m = gp.Model(env=gurobi_env())
    try:
        m.addMVar(GUROBI_SIZE_LIMIT + 1, lb=0.0, ub=1.0)
        m.optimize()
        return False
    except gp.GurobiError as exc:
        if exc.errno == _GUROBI_LICENSE_LIMIT_ERRNO:
            return True
        raise SolverError(f"Gurobi is not usable: {exc}") from exc
    finally:
        m.dispose()


class GurobiBackend:
    """Gurobi through gurobipy (rows as LinExpr: the matrix API would need scipy)."""

    name = "gurobi"

    def __init__(self, model: MilpModel, options: SolverOptions) -> None:
        import gurobipy as gp

        self._gp = gp
        m = gp.Model(env=gurobi_env())
        for key, value in {
            "Threads": options.threads,
            "MIPGap": options.mip_rel_gap,
            "MIPGapAbs": options.mip_abs_gap,
            "IntFeasTol": INTEGRALITY_TOL,
            "FeasibilityTol": PRIMAL_FEASIBILITY_TOL,
            "OptimalityTol": DUAL_FEASIBILITY_TOL,
        }.items():
            m.setParam(key, value)
        vtype = np.where(model.integrality, gp.GRB.BINARY, gp.GRB.CONTINUOUS)
        vtype = np.where(
            model.integrality & ((model.col_lower != 0) | (model.col_upper != 1)), gp.GRB.INTEGER, vtype
        )
        x = m.addMVar(model.num_cols, lb=model.col_lower, ub=model.col_upper, vtype=vtype)
        self._xs = x.tolist()
        _add_rows(m, self._xs, model)
        m.ModelSense = gp.GRB.MAXIMIZE
        self._m, self._x = m, x
        self._col_lower, self._col_upper = model.col_lower, model.col_upper
        self._bounded = bool(np.isfinite(model.col_lower).all() and np.isfinite(model.col_upper).all())
        self._no_stop = (m.getParamInfo("BestBdStop")[5], m.getParamInfo("BestObjStop")[5])

    def solve(
        self,
        cost: np.ndarray,
        offset: float,
        time_limit: float | None,
        stop: StopRule | None,
        start: np.ndarray,
        floor: float | None = None,
    ) -> RawSolve:
        gp, m = self._gp, self._m
        self._x.setAttr("Obj", cost)
        self._x.setAttr("Start", start)
        m.ObjCon = offset
        m.setParam("TimeLimit", gp.GRB.INFINITY if time_limit is None else time_limit)
        m.setParam("BestBdStop", stop.bound_at_most if stop else self._no_stop[0])
        # BestObjStop stops at incumbent >= s; the rule asks for > incumbent_above.
        m.setParam("BestObjStop", np.nextafter(stop.incumbent_above, math.inf) if stop else self._no_stop[1])
        floor_row = None
        if floor is not None:
            cols, vals, lower = objective_row(cost, offset, floor, self._col_lower, self._col_upper)
            expr = gp.LinExpr(vals.tolist(), [self._xs[c] for c in cols.tolist()])
            floor_row = m.addLConstr(expr, gp.GRB.GREATER_EQUAL, lower)
        began = time.perf_counter()
        try:
            try:
                m.optimize()
            except gp.GurobiError as exc:
                if exc.errno == _GUROBI_LICENSE_LIMIT_ERRNO:
                    raise GurobiLicenseLimit(str(exc)) from exc
                raise SolverError(f"Gurobi failed: {exc}") from exc
            if m.Status == gp.GRB.INTERRUPTED:
                # Gurobi caught the Ctrl-C itself (its own SIGINT handler during optimize()); Python never saw it.
                interrupt.request()
            interrupt.raise_if_requested()
            return self._result(stop, time.perf_counter() - began, floor)
        finally:
            if floor_row is not None:  # the model stays the caller's for the next solve
                m.remove(floor_row)
                m.update()

    def _result(self, stop: StopRule | None, seconds: float, floor: float | None = None) -> RawSolve:
        grb, m = self._gp.GRB, self._m
        if floor is not None and self._bounded and m.Status in (grb.INFEASIBLE, grb.INF_OR_UNBD):
            # Only the floor row can make it so (the model alone has its start): nothing is above the floor.
            return RawSolve(floor, None, None, Status.BOUND_BELOW_CUTOFF, seconds)
        if m.Status in (grb.INFEASIBLE, grb.INF_OR_UNBD):
            raise SolverError(
                "Gurobi reports the network's MILP infeasible: the input box or the layer bounds are wrong"
            )
        has_solution = m.SolCount > 0
        incumbent = float(m.ObjVal) if has_solution else None
        try:
            dual = float(m.ObjBound)
        except (AttributeError, self._gp.GurobiError):  # no bound available (stopped before the root LP)
            dual = math.inf
        if m.Status == grb.OPTIMAL:
            status = Status.OPTIMAL
        elif m.Status == grb.TIME_LIMIT:
            status = Status.TIME_LIMIT
        elif m.Status == grb.USER_OBJ_LIMIT and stop is not None:
            below = dual <= stop.bound_at_most
            status = Status.BOUND_BELOW_CUTOFF if below else Status.INCUMBENT_ABOVE_CUTOFF
        elif m.Status in (grb.NUMERIC, grb.LOADED):
            raise SolverError(f"Gurobi failed with status {m.Status}")
        else:
            status = Status.STOPPED
        return RawSolve(
            dual_bound=dual if floor is None else max(dual, floor),
            incumbent=incumbent,
            solution=np.asarray(self._x.X) if has_solution else None,
            status=status,
            seconds=seconds,
        )


def _add_rows(m: Any, xs: list[Any], model: MilpModel) -> None:
    """One linear constraint per row: ``=`` where both sides are equal, else the finite side."""
    import gurobipy as gp

    a, row_lower, row_upper = solver_rows(model)  # Gurobi too: one model for both solvers
    ptr = a.indptr()
    cols, vals = a.cols.tolist(), a.vals.tolist()
    for r in range(model.num_rows):
        lo, hi = float(row_lower[r]), float(row_upper[r])
        expr = gp.LinExpr(vals[ptr[r] : ptr[r + 1]], [xs[c] for c in cols[ptr[r] : ptr[r + 1]]])
        if lo == hi:
            m.addLConstr(expr, gp.GRB.EQUAL, lo)
        elif math.isfinite(lo) and math.isfinite(hi):
            m.addRange(expr, lo, hi)
        elif math.isfinite(lo):
            m.addLConstr(expr, gp.GRB.GREATER_EQUAL, lo)
        elif math.isfinite(hi):
            m.addLConstr(expr, gp.GRB.LESS_EQUAL, hi)
        # else: a row relaxed to no constraint at all (solver_rows)
    m.update()
