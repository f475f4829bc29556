"""The joint MILP of a coupled term (bounds/milp/coupled_term.py): sound, and tight where the MILP finishes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faithverify.attack import input_box
from faithverify.bounds.bounder import BoundMethod, PairBounder
from faithverify.bounds.milp import Solver
from faithverify.bounds.milp.backends import Status
from faithverify.bounds.milp.coupled_term import CoupledTermMILP
from faithverify.bounds.milp.encoding import BOUND_SLACK
from faithverify.bounds.milp.model import NetworkMILP
from faithverify.bounds.portfolio import Refiner
from faithverify.certify import CertifyConfig, RefineMode, certify
from faithverify.data import fit_to_input_shape, load_dataset
from faithverify.pair import Pair, load_pair
from faithverify.refine import RefineResult, refine_point
from tests.test_coupled import strangers  # noqa: F401  (fixture)
from tests.test_coupled_bab import _sampled_terms


def _joint(pair: Pair, x0: np.ndarray, eps: float, solver: Solver, pieces: int = 8) -> CoupledTermMILP:
    bounder = PairBounder(pair, torch.device("cpu"))
    lower, upper = input_box(x0, eps)
    diffs = bounder.logit_bounds(lower, upper, BoundMethod.CROWN)
    lo, hi = lower.reshape(-1), upper.reshape(-1)
    milps = [NetworkMILP(form, lo, hi, solver=Solver.HIGHS) for form in bounder.forms]
    return CoupledTermMILP(milps[0], milps[1], diffs, solver=solver, pieces=pieces)


def _solvers() -> list[Solver]:
    try:
        import gurobipy  # noqa: F401
    except ImportError:
        return [Solver.HIGHS]
    return [Solver.HIGHS, Solver.GUROBI]


@pytest.mark.parametrize("eps", [0.05, 0.2])
@pytest.mark.parametrize("solver", _solvers())
def test_every_term_is_sound(strangers: Pair, eps: float, solver: Solver) -> None:  # noqa: F811
    x0 = np.random.default_rng(7).random((1, 8), dtype=np.float32)
    joint = _joint(strangers, x0, eps, solver)
    lower, upper = (b.reshape(-1) for b in input_box(x0, eps))
    sampled = _sampled_terms(strangers, lower, upper, 20_000)
    for direction in (0, 1):
        for cls in range(4):
            result = joint.term(direction, cls, time_limit=30.0, below=None, start=x0.reshape(-1))
            assert sampled[direction, cls] <= result.bound, (direction, cls, sampled, result)
            if result.witness is not None:
                # the term at the solver's input, by onnxruntime, is a value the networks take: below the bound
                w = np.clip(result.witness, lower, upper)[None].astype(np.float32)
                gap = float(strangers.gap_onnxruntime(w)[0, cls]) * (1 if direction == 0 else -1)
                assert gap <= result.bound


def test_closes_on_a_value_the_networks_take(strangers: Pair) -> None:  # noqa: F811
    """Only the softmax is relaxed, and its chords close in with more pieces: solved to the end, the bound
    comes within the "known" tolerance (results.EXACT_GAP) of the term at the solver's own input."""
    x0 = np.random.default_rng(5).random((1, 8), dtype=np.float32)
    joint = _joint(strangers, x0, 0.05, Solver.HIGHS, pieces=32)
    lower, upper = (b.reshape(-1) for b in input_box(x0, 0.05))
    sampled = _sampled_terms(strangers, lower, upper, 5_000)
    direction, cls = (int(k) for k in np.unravel_index(int(sampled.argmax()), sampled.shape))
    result = joint.term(direction, cls, time_limit=60.0, below=None, start=x0.reshape(-1))
    assert result.status is Status.OPTIMAL
    assert result.reachable <= result.bound
    assert result.bound - result.reachable <= 1e-3, result
    # The relaxed objective at the solution: at most the bound, and (solved to the end) within the same
    # tolerance of the term's true value there.
    assert result.incumbent is not None and result.incumbent <= result.bound
    assert abs(result.incumbent - result.reachable) <= 1e-3, result


def test_stops_once_below_the_level_asked(strangers: Pair) -> None:  # noqa: F811
    x0 = np.random.default_rng(6).random((1, 8), dtype=np.float32)
    joint = _joint(strangers, x0, 0.1, Solver.HIGHS)
    full = joint.term(0, 1, time_limit=60.0, below=None, start=x0.reshape(-1))
    level = full.bound + 0.05
    early = joint.term(0, 1, time_limit=60.0, below=level, start=x0.reshape(-1))
    assert early.bound <= level
    # A deadline already passed (a negative limit once reached HiGHS as an error): a sound bound all the same.
    late = joint.term(0, 1, time_limit=-1.0, below=None, start=x0.reshape(-1))
    assert late.bound >= full.bound - 1e-9


def _refined_soundly(pair: Pair, time_budget: float) -> RefineResult:
    """One point's refinement with both refiners (the paper's FaithUB), checked against dense sampling."""
    x0 = np.random.default_rng(8).random((1, 8), dtype=np.float32)
    bounder = PairBounder(pair, torch.device("cpu"))
    lower, upper = input_box(x0, 0.15)
    t, s = bounder.logit_bounds(lower, upper, BoundMethod.CROWN)
    result = refine_point(
        *bounder.forms, lower, upper, t, s, x0, delta=None, solver=Solver.HIGHS,
        refiners=(Refiner.BAB, Refiner.MILP), time_budget=time_budget,
    )  # fmt: skip
    sampled = _sampled_terms(pair, lower.reshape(-1), upper.reshape(-1), 20_000)
    assert float(sampled.max()) <= result.faith_ub
    return result


def test_the_refinement_runs_it_and_stays_sound(strangers: Pair, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """With both branch and bound and the MILP among the refiners, a point's refinement lowers its terms with
    the joint MILP too (these small networks: before the search), and what it reports is still sound."""
    calls: list[float] = []
    floors: list[float] = []
    original = CoupledTermMILP.term

    def spy(self: CoupledTermMILP, *args: object, **kwargs: object) -> object:
        result = original(self, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(result.bound)
        floors.append(float(kwargs["below"]))  # type: ignore[arg-type]
        return result

    monkeypatch.setattr(CoupledTermMILP, "term", spy)
    result = _refined_soundly(strangers, time_budget=20.0)
    assert calls and result.searched >= len(calls)
    # No term needs a bound below the gap at x0 (FaithUB cannot go there): no solve is asked for one.
    x0 = np.random.default_rng(8).random((1, 8), dtype=np.float32)  # _refined_soundly's point
    at_x0 = float(np.abs(strangers.gap_onnxruntime(x0)).max())
    assert min(floors) >= at_x0 - 1e-6


def test_a_search_before_it_leaves_it_time(strangers: Pair, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Where the joint MILP comes after the branch-and-bound search (and enough time is left), the search may
    take only part of the time left (refine._SEARCH_BEFORE_JOINT), the joint MILP runs after it, the search
    gets what it leaves, and the answer stays sound."""
    import time

    from faithverify import refine

    monkeypatch.setattr(refine, "_JOINT_FIRST_BINARIES", -1)  # every pair: the search first
    monkeypatch.setattr(refine, "_JOINT_RESERVE_FROM", 0.0)  # a reserve whatever the time left
    order: list[tuple[str, float, float]] = []  # stage, when it started, its deadline
    search, joint = refine.search_terms, refine._joint_terms

    def spy_search(*args: object, **kwargs: object) -> object:
        order.append(("search", time.monotonic(), float(kwargs["deadline"])))  # type: ignore[arg-type]
        return search(*args, **kwargs)  # type: ignore[arg-type]

    def spy_joint(*args: object, **kwargs: object) -> object:
        order.append(("joint", time.monotonic(), float(args[5])))  # type: ignore[arg-type]  # its deadline
        return joint(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(refine, "search_terms", spy_search)
    monkeypatch.setattr(refine, "_joint_terms", spy_joint)
    _refined_soundly(strangers, time_budget=10.0)
    stages = [stage for stage, _, _ in order]
    assert stages[:2] == ["search", "joint"], order
    _, started, until = order[0]
    final_deadline = order[1][2]
    assert until < final_deadline
    assert until - started <= refine._SEARCH_BEFORE_JOINT * (final_deadline - started) + 1e-6
    assert stages[2:] in ([], ["search"])


def test_a_long_joint_stage_solves_its_row_first(strangers: Pair, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """With time enough (refine._JOINT_ROWS_FROM, lowered here), a term's joint MILP first gets its class's row
    of each network's logit-difference bounds from that network's own solves: both networks, once per class,
    every bound sound against sampling and never looser than before; the answer stays sound."""
    from faithverify import refine

    monkeypatch.setattr(refine, "_JOINT_ROWS_FROM", 0.0)
    calls: list[int] = []
    solve_row = refine._solve_row

    def spy(side: refine._Side, cls: int, until: float) -> int:
        before = side.upper.copy()
        solves = solve_row(side, cls, until)
        calls.append(cls)
        assert np.all(side.upper <= before)
        rng = np.random.default_rng(cls)
        lo, hi = side.box
        z = side.form.forward(lo + (hi - lo) * rng.random((5_000, len(lo))))
        sampled = (z[:, None, :] - z[:, :, None]).max(axis=0)  # [i, j]: max z_j - z_i
        assert np.all(sampled[cls] <= side.upper[cls] + 1e-9) and np.all(
            sampled[:, cls] <= side.upper[:, cls] + 1e-9
        )
        return solves

    monkeypatch.setattr(refine, "_solve_row", spy)
    _refined_soundly(strangers, time_budget=10.0)
    assert calls and len(calls) % 2 == 0 and calls[0] == calls[1], calls  # both networks, the same class
    assert len(set(calls)) == len(calls) // 2, calls  # once per class


def test_a_long_joint_stage_deepens_the_milps(strangers: Pair, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """With minutes left (refine._JOINT_DEEPEN_FROM, lowered here), each network's MILP is rebuilt once with MILP
    tightening of its deepest layers before the joint MILP: no layer's bounds get looser than the model it
    replaces, the deepened model is the one the joint MILP and the later solves use, and the answer stays sound."""
    from faithverify import refine
    from faithverify.bounds.portfolio import ExactSolver

    monkeypatch.setattr(refine, "_JOINT_DEEPEN_FROM", 0.0)
    monkeypatch.setattr(refine, "_JOINT_ROWS_FROM", 0.0)
    deepened: list[tuple[ExactSolver, NetworkMILP, NetworkMILP]] = []
    original = ExactSolver.deepened_milp

    def spy(self: ExactSolver, *args: object, **kwargs: object) -> NetworkMILP:
        before = self.milp_by(None)
        after = original(self, *args, **kwargs)  # type: ignore[arg-type]
        deepened.append((self, before, after))
        return after

    monkeypatch.setattr(ExactSolver, "deepened_milp", spy)
    _refined_soundly(strangers, time_budget=10.0)
    assert len(deepened) == 2 and deepened[0][0] is not deepened[1][0]  # once per network
    for solver, before, after in deepened:
        assert solver.milp is after  # the row solves and the joint MILP use it
        assert after.num_binaries <= before.num_binaries
        for (lo, hi), (old_lo, old_hi) in zip(
            after.model.layer_bounds, before.model.layer_bounds, strict=True
        ):
            # Every build widens the bounds it is given by the encoder's float64 slack (encoding.BOUND_SLACK).
            slack_lo, slack_hi = (BOUND_SLACK * (1.0 + np.abs(b)) for b in (old_lo, old_hi))
            assert np.all(lo >= old_lo - slack_lo) and np.all(hi <= old_hi + slack_hi)


@pytest.mark.data
@pytest.mark.slow
def test_a_confident_point_keeps_its_joint_bound_sound(data_root: Path, shipped_pair_paths) -> None:
    """MNIST test point 451 at the paper's eps 0.025 (0.0077 px), as the reproduction certifies it: the joint
    MILP of term (student above, class 3) has matrix entries below 1e-9 (tangent slopes e^{d - m} times weights),
    which HiGHS drops; with them dropped it bounded the term by 9.02e-5 where an input of the box reaches
    9.75e-5, and certify stopped on its own soundness check (backends.solver_rows)."""
    pair = load_pair(*shipped_pair_paths)
    test = load_dataset("mnist", "test", data_root=data_root)
    x = fit_to_input_shape(test.x[451:452], pair.input_shape)
    config = CertifyConfig(
        eps=[0.0077025], methods=(BoundMethod.CROWN, BoundMethod.ALPHA_CROWN, BoundMethod.COUPLED),
        robustness=False, device="cpu", refine_mode=RefineMode.ALL, refiners=(Refiner.BAB, Refiner.MILP),
        milp_timeout=5, refine_known=True,
    )  # fmt: skip
    (record,) = certify(
        pair, x, None, config, indices=np.array([451])
    )  # raises SoundnessViolation if unsound
    assert record.milp is not None and record.milp.searched > 0  # the joint MILP ran
    assert record.faith_ub >= record.emp_lb >= 9.7e-5
