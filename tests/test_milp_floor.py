"""A solve's floor (backends.py): the row ``objective >= floor`` for one solve, read back as a sound bound."""

from __future__ import annotations

import numpy as np
import pytest

from faithverify.bounds.milp import NetworkMILP, Solver, Status
from faithverify.bounds.milp.backends import (
    TINY_COEFFICIENT,
    Backend,
    GurobiBackend,
    HighsBackend,
    SolverOptions,
    objective_row,
)
from tests.test_milp import SOLVERS, diff_weights, hard_problem, hard_problem_reachable, small_milp


def _backend(milp: NetworkMILP, solver: Solver) -> Backend:
    return (GurobiBackend if solver is Solver.GUROBI else HighsBackend)(milp.model, SolverOptions())


def _rows(backend: Backend) -> int:
    if isinstance(backend, HighsBackend):
        return int(backend._h.getNumRow())
    assert isinstance(backend, GurobiBackend)
    return int(backend._m.NumConstrs)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_floor_above_the_maximum_is_proved_and_one_below_changes_nothing(solver: Solver) -> None:
    milp, x0 = small_milp(solver)
    cost, offset = milp.model.objective(diff_weights(3, 0, 1))
    start = milp.model.complete(milp.network, x0)
    backend = _backend(milp, solver)
    rows = _rows(backend)
    exact = backend.solve(cost, offset, 60.0, None, start)
    assert exact.status == Status.OPTIMAL
    # Above the maximum: nothing is left above the floor, and the floor is the bound.
    above = backend.solve(cost, offset, 60.0, None, start, floor=exact.dual_bound + 0.2)
    assert above.status == Status.BOUND_BELOW_CUTOFF and above.solution is None
    assert above.dual_bound == exact.dual_bound + 0.2
    # Below it: the same maximum, attained (the floor row cuts nothing that matters).
    below = backend.solve(cost, offset, 60.0, None, start, floor=exact.dual_bound - 0.2)
    assert below.status == Status.OPTIMAL and below.incumbent is not None
    assert below.dual_bound == pytest.approx(exact.dual_bound, abs=1e-6)
    # Each floor is its solve's own: the row is gone afterwards, and a solve without one is as before.
    assert _rows(backend) == rows
    again = backend.solve(cost, offset, 60.0, None, start)
    assert again.status == Status.OPTIMAL and again.dual_bound == pytest.approx(exact.dual_bound, abs=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_stopped_search_with_a_floor_keeps_a_sound_bound(solver: Solver) -> None:
    body, lower, upper = hard_problem()
    milp = NetworkMILP(body, lower, upper, solver=solver)
    cost, offset = milp.model.objective(diff_weights(5, 0, 1))
    start = milp.model.complete(milp.network, (lower + upper) / 2)
    reachable = hard_problem_reachable()
    backend = _backend(milp, solver)
    for floor in (reachable - 0.2, reachable + 0.05):
        raw = backend.solve(cost, offset, 0.5, None, start, floor=floor)
        assert raw.dual_bound >= max(floor, reachable)
        if raw.solution is not None:  # anything found is above the floor
            assert raw.incumbent is not None and raw.incumbent >= floor - 1e-6


@pytest.mark.parametrize("solver", SOLVERS)
def test_network_milp_stops_on_its_level_with_the_floor(solver: Solver) -> None:
    """``maximize`` with a level puts its floor there: a bound at most the level asked, never below the max."""
    milp, _ = small_milp(solver, seed=7, point_seed=1)
    exact = milp.max_logit_diff(2, 0)
    for level in (exact.bound + 0.1, exact.bound + 1e-3):
        stopped = milp.max_logit_diff(2, 0, stop_below=level)
        assert stopped.status == Status.BOUND_BELOW_CUTOFF
        assert exact.bound - 1e-5 <= stopped.bound <= level + 1e-12  # the level, up to rounding


def test_the_floor_row_only_ever_weakens() -> None:
    """Entries a solver would drop are relaxed into the row's side, and the side is lowered past rounding."""
    cost = np.array([1.0, 0.0, TINY_COEFFICIENT / 10, -2.0])
    lower_cols = np.array([0.0, 0.0, -1e4, -1.0])
    upper_cols = np.array([1.0, 1.0, 3e4, 1.0])
    cols, vals, side = objective_row(cost, 0.5, 0.75, lower_cols, upper_cols)
    assert cols.tolist() == [0, 3] and vals.tolist() == [1.0, -2.0]
    # The dropped entry could add as little as -1e-9 * 3e4 = -3e-5 to the objective.
    assert side < 0.75 - 0.5 - 3e-5
    assert side > 0.75 - 0.5 - 3e-5 - 1e-9
    # Every point with objective >= floor satisfies the row.
    rng = np.random.default_rng(0)
    v = lower_cols + rng.random((2000, 4)) * (upper_cols - lower_cols)
    keep = v @ cost + 0.5 >= 0.75
    assert keep.any() and np.all(v[keep][:, cols] @ vals >= side)
