"""MILP refinement of one point: tighten only the logit-difference bounds that can change the answer.

FaithUB (eq. 6) is a maximum over classes ``i`` and two directions of terms such as
``sigma_t,i^ub - sigma_s,i^lb``. The term for ``(i, teacher above student)`` depends on the teacher's lower
bounds of ``z_j - z_i`` and the student's upper bounds of ``z_j - z_i`` (j != i), nothing else; its mirror on
the same bounds with the networks swapped. So instead of all 2·C·(C-1) exact solves (the paper's FaithUB), the
refinement repeatedly takes the largest term, and among the solves it depends on runs the one with the largest
*possible* gain: the drop of that term if the bound became the largest value of ``z_j - z_i`` seen so far in
the box (at ``x0``, the attack's witnesses and every solver incumbent, all evaluated on both networks): no
sound bound can be tighter than a value the network actually takes. With every bound that is not final at
those values, each term has an *optimistic* value, and the largest of them is the *floor*: no sound bounds
through eq. 5-6 can take FaithUB below it. The refinement stops when

- with a threshold ``delta``: every term is ``<= delta`` (certified), or the largest term has nothing left to
  solve (its bounds are exact or timed out: eq. 5-6 cannot go lower), or the time budget is spent, or the
  floor is above ``delta`` (then no MILP can certify the point, and spending the budget would only delay the
  answer ``unknown``);
- without one (the paper's FaithUB): the largest term is at the floor, or its bounds are all final (exact or
  out of time), so no solve can lower FaithUB further.

Each solve stops as soon as what it serves is settled, not at optimality:

- at its *sufficient level*: the largest bound with which the term it serves is ``<= delta`` (without
  ``delta``, ``<=`` the floor, below which the term cannot matter), its other bounds as they are;
- with ``delta``, at its *cut-off*: the largest bound with which the term could still reach ``delta`` with its
  other bounds at their optimistic values. An incumbent above it proves the point cannot be certified; a dual
  bound below it is enough for now (the solve may run again later without the cut-off, when a tighter bound
  is needed).

Every bound used is a solver's dual bound plus a margin (:mod:`faithverify.bounds.milp.model`), intersected
with CROWN's. The incumbents' inputs are kept as candidate witnesses for the attack's lower bound.

Last, the coupled bound (:mod:`faithverify.bounds.coupled`) on the final per-network bounds, and, with branch
and bound among the exact methods, a search on its largest terms over the paired network
(:mod:`faithverify.bounds.coupled_bab`) with the time left (at least ``_SEARCH_SHARE`` of the budget), and,
with the MILP among them too, the joint MILP of both networks on those terms
(:mod:`faithverify.bounds.milp.coupled_term`, which relaxes only the softmax): they can decide a point that
eq. 6 cannot reach with any per-network bounds. Where the search goes first, it leaves the joint MILP half of
the time (when 10 s or more are left) and gets back what the MILP does not use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from faithverify.bounds.coupled import CoupledBound, coupled_bound
from faithverify.bounds.coupled_bab import search_terms
from faithverify.bounds.crown import Box, LayerBounds, intermediate_bounds
from faithverify.bounds.milp import Solver
from faithverify.bounds.milp.backends import Status
from faithverify.bounds.milp.coupled_term import CoupledTermMILP
from faithverify.bounds.milp.model import NetworkMILP
from faithverify.bounds.milp.tighten import MilpTightening
from faithverify.bounds.portfolio import ExactSolver, Refiner
from faithverify.bounds.softmax import LogitDiffBounds, softmax_bounds, softmax_of
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.network import PiecewiseLinearNetwork

_NEGLIGIBLE = 1e-9  # a bound this close to a value the network takes needs no solve
# Of a point's time budget, what is kept for the coupled bound on the final bounds (at most a second): the
# solves stop earlier by that much, so that the point's answer, its last stage included, is in time.
_FINAL_SHARE, _FINAL_MAX = 0.1, 1.0
# Of the budget, what is kept for branch and bound on the coupled terms at the end (bounds/coupled_bab.py), with
# whatever the per-network solves leave.
_SEARCH_SHARE = 0.3
# Of the time left for that search, what one term's joint MILP may take (bounds/milp/coupled_term.py): for the
# paper's FaithUB, and against a delta (where every term must come below it: point 16 of the first MNIST pair at
# eps 0.05 needs 7-12 s for its largest term alone).
_JOINT_SHARE, _JOINT_SHARE_DELTA = 0.5, 0.9
# Past this many inputs and neurons in the two networks together the joint MILP is not tried (a CNN's model: its
# LP tightening and rows alone would take the budget; the MNIST MLPs have 1,044).
_JOINT_MAX_COLUMNS = 20_000
# Up to this many binaries in the two MILPs together the joint MILP runs before the branch-and-bound search
# (point 16 of the first MNIST pair at eps 0.05: 71, settled in 7-12 s per term by the MILP, where the search
# stalls at 0.127 against delta 0.1); the shipped pair's undecided points at the paper's eps 0.15-0.2 have 70-160.
_JOINT_FIRST_BINARIES = 80
_JOINT_MIN_SECONDS = 0.1  # a term's MILP is not started with less time than this
# Where the search comes first, what of the time left it may take before the joint MILP gets its turn (the search
# gets whatever the joint MILP leaves after that). Without a cap its stall rule, relative to the time left, let
# it take it all: point 15 of the shipped pair at the paper's eps 0.15 (delta 0.3) was certified with 30 s (the
# search stalled at 0.311 after 10 s, the joint MILP took the last term below delta in 0.4 s) and not with 60 s
# (the search took 50 s to 0.3045 and left the MILP 0.5 s). With less than _JOINT_RESERVE_FROM seconds left the
# search keeps it all: there the joint MILP of the shipped pair's undecided points (70-160 binaries) rarely
# settles a term, and halving the search at 10 s per point left one more point unknown at eps 0.15 (6 of 50).
_SEARCH_BEFORE_JOINT = 0.5
_JOINT_RESERVE_FROM = 10.0
# With at least _JOINT_ROWS_FROM seconds left, a term's joint MILP is first given its class's row of each
# network's logit-difference bounds (z_j - z_cls, both signs) solved by that network's own MILP, in at most
# _JOINT_ROWS_SHARE of the time left: the joint model's softmax relaxation is built on that row, and a point the
# per-network solves gave up on early (out of reach of eq. 6) still has alpha-CROWN's there. Point 7 of the first
# MNIST pair (eps 0.05, largest term): the joint MILP alone 0.586 after 300 s; the row in 143 s, then the joint
# MILP 0.337 after 60 s and 0.248 after 300 s (benchmarks/results/joint_term_point7.md). Below 60 s the solves
# would take the time the joint MILP needs (the 10-30 s budgets of the benchmarks never get here).
_JOINT_ROWS_FROM = 60.0
_JOINT_ROWS_SHARE = 0.5
# With at least _JOINT_DEEPEN_FROM seconds left, each network's MILP is rebuilt before the joint one with
# per-neuron MILP tightening of its last two ReLU layers (tighten.milp_refiner), in at most _JOINT_DEEPEN_SHARE of
# the time left (half of it per network, shared evenly by its layers; the student first). Point 7 of the first
# MNIST pair (eps 0.05, largest term), 2 s per neuron: the teacher's binaries 87 -> 78 in 68 s, its row solved
# in 114 s instead of 134 s, and the joint MILP after 60 s on it 0.227 instead of 0.346; end to end (certify
# --delta 0.2, side by side) FaithUB 0.4307 -> 0.4327 with 300 s per point and 0.3498 -> 0.3302 with 600 s
# (benchmarks/results/joint_term_point7_milp_tightening.md).
_JOINT_DEEPEN_FROM = 120.0
_JOINT_DEEPEN_SHARE = 0.3
_DEEPEN_LAST_LAYERS = 2
_DEEPEN_SECONDS_PER_NEURON = 2.0


@dataclass
class RefineResult:
    """The MILP stage's answer for one point."""

    faith_ub: float
    solves: int
    exact: bool  # eq6 is what exact solves of every pair would give (not cut short by a time limit)
    timed_out: bool  # the time budget ran out before the stopping rule was met
    seconds: float
    solver: str
    witnesses: list[np.ndarray] = field(default_factory=list)  # inputs of the solvers' incumbents
    out_of_reach: bool = False  # with delta: no per-network bound could bring eq. 6 down to delta
    coupled: float | None = None  # the coupled bound on the final per-network bounds (bounds/coupled.py)
    eq6: float = 1.0  # eq. 6 on the final per-network bounds (faith_ub is the smaller of this and coupled)
    searched: int = 0  # branch-and-bound searches on coupled terms (bounds/coupled_bab.py)


@dataclass
class _Side:
    """One network, its current ``[C, C]`` logit-difference bounds and (once needed) its exact solver."""

    form: PiecewiseLinearNetwork
    box: tuple[np.ndarray, np.ndarray]
    solver: Solver
    refiners: tuple[Refiner, ...]
    device: str
    lower: np.ndarray
    upper: np.ndarray
    reached: np.ndarray  # the largest z_j - z_i seen in the box: no sound bound can be tighter than this
    solved: set[tuple[int, int]] = field(default_factory=set)  # (i, j): upper of z_j - z_i is final
    cut: set[tuple[int, int]] = field(default_factory=set)  # (i, j): stopped early below a cut-off once
    inexact: set[tuple[int, int]] = field(default_factory=set)  # (i, j): final, a dual bound at a time limit
    deadline: float | None = None  # time.monotonic(): building the exact solver stops by then
    _exact: ExactSolver | None = None
    _net: BoundNetwork | None = None
    _crown_layers: LayerBounds | None = None

    @property
    def net(self) -> BoundNetwork:
        if self._net is None:
            self._net = (
                self._exact.network if self._exact is not None else BoundNetwork.of(self.form, self.device)
            )
        return self._net

    @property
    def exact(self) -> ExactSolver:
        # Built on first use: its root bounds cost a fraction of a second, and most points need no solve on
        # one side.
        if self._exact is None:
            self._exact = ExactSolver(
                self.form,
                *self.box,
                refiners=self.refiners,
                milp_solver=self.solver,
                device=self.device,
                deadline=self.deadline,
            )
        return self._exact

    def observe(self, xs: np.ndarray) -> None:
        """Raise ``reached`` with the logit differences at inputs ``xs`` (``[K, D]``, clipped into the box so
        that every value counted is one the network takes there)."""
        z = self.form.forward(np.clip(xs, *self.box))
        self.reached = np.maximum(self.reached, (z[:, None, :] - z[:, :, None]).max(axis=0))

    def solver_used(self) -> str | None:
        return None if self._exact is None else self._exact.solver_used()

    def bounds(self) -> LogitDiffBounds:
        return LogitDiffBounds(lower=self.lower[None], upper=self.upper[None])

    def layers(self) -> LayerBounds:
        """Intermediate bounds over the box: the exact solver's (alpha-CROWN) where it was built, else CROWN's."""
        if self._exact is not None:
            return self._exact.root
        if self._crown_layers is None:
            lo, hi = (torch.tensor(b.reshape(1, -1), device=self.net.device) for b in self.box)
            with torch.no_grad():
                self._crown_layers = intermediate_bounds(self.net, Box.of(lo, hi))[0]
        return self._crown_layers


# A hypothetical tightening: (i, j, v) sets the bound of z_j - z_i on a side to v (and of z_i - z_j to -v).
Tightening = tuple[int, int, float]


def _tightened(side: _Side, changes: Sequence[Tightening] = ()) -> LogitDiffBounds:
    """The side's ``[1, C, C]`` bounds with ``changes`` applied to copies (the side itself is not touched)."""
    lower, upper = side.lower.copy(), side.upper.copy()
    for i, j, value in changes:
        upper[i, j] = min(upper[i, j], value)
        lower[j, i] = max(lower[j, i], -value)
    return LogitDiffBounds(lower=lower[None], upper=upper[None])


def _terms(
    teacher: _Side,
    student: _Side,
    teacher_changes: Sequence[Tightening] = (),
    student_changes: Sequence[Tightening] = (),
) -> np.ndarray:
    """``[2, C]``: eq. 6's terms, row 0 ``sigma_t^ub - sigma_s^lb`` and row 1 ``sigma_s^ub - sigma_t^lb``, on the
    current bounds or, with changes, on what they would be after those tightenings."""
    t = softmax_bounds(_tightened(teacher, teacher_changes).widened())
    s = softmax_bounds(_tightened(student, student_changes).widened())
    return np.clip(np.stack([t.upper[0] - s.lower[0], s.upper[0] - t.lower[0]]), 0.0, 1.0)


def _terms_if(teacher: _Side, student: _Side, changes: Sequence[tuple[_Side, Tightening]]) -> np.ndarray:
    """:func:`_terms` after ``changes``, each naming the side it tightens."""
    return _terms(
        teacher,
        student,
        [c for side, c in changes if side is teacher],
        [c for side, c in changes if side is student],
    )


def _candidates(cls: int, direction: int, teacher: _Side, student: _Side) -> list[tuple[_Side, int, int]]:
    """The bounds of the term ``(direction, cls)`` that are not final yet (:func:`_term_bounds`)."""
    return [
        (side, i, j)
        for side, i, j in _term_bounds(cls, direction, teacher, student)
        if (i, j) not in side.solved
    ]


def _term_bounds(cls: int, direction: int, teacher: _Side, student: _Side) -> list[tuple[_Side, int, int]]:
    """Solves the term ``(direction, cls)`` depends on, as ``(side, i, j)``: maximise ``z_j - z_i`` on side.

    Row 0 (teacher above): teacher's lower bounds of ``z_j - z_cls`` (= -max ``z_cls - z_j``) and the
    student's upper bounds of ``z_j - z_cls``. Row 1: the same with the networks swapped.
    """
    high, low = (teacher, student) if direction == 0 else (student, teacher)
    c = teacher.lower.shape[0]
    out = []
    for j in range(c):
        if j == cls:
            continue
        out.append((high, j, cls))  # max z_cls - z_j  -> lower bound of z_j - z_cls on the upper-bounded side
        out.append((low, cls, j))  # max z_j - z_cls  -> upper bound of z_j - z_cls on the lower-bounded side
    return out


def _optimistic_term(
    teacher: _Side,
    student: _Side,
    direction: int,
    cls: int,
    fixed: tuple[_Side, int, int, float] | None = None,
) -> float:
    """The term ``(direction, cls)`` if each of its bounds that is not final became the largest value seen
    (and ``fixed = (side, i, j, v)`` set one bound to ``v`` instead). No sound bound can be below a value the
    network takes, so no MILP can bring the term lower than this."""
    changes = []
    for side, i, j in _candidates(cls, direction, teacher, student):
        value = float(side.reached[i, j])
        if fixed is not None and fixed[0] is side and (fixed[1], fixed[2]) == (i, j):
            value = fixed[3]
        changes.append((side, (i, j, value)))
    return float(_terms_if(teacher, student, changes)[direction, cls])


def _cutoff(
    teacher: _Side, student: _Side, direction: int, cls: int, side: _Side, i: int, j: int, delta: float
) -> float | None:
    """The largest bound of ``z_j - z_i`` on ``side`` at which the term can still reach ``delta`` (its other
    bounds at their optimistic values). None when even the current bound would do."""
    return _level(
        lambda v: _optimistic_term(teacher, student, direction, cls, (side, i, j, v)), side, i, j, delta
    )


def _sufficient_level(
    teacher: _Side, student: _Side, direction: int, cls: int, side: _Side, i: int, j: int, target: float
) -> float | None:
    """The largest bound of ``z_j - z_i`` on ``side`` that takes the term to ``target`` with its other bounds
    as they are now: a solve can stop there, the term needs nothing tighter from it. None when no bound can
    (the term needs other bounds tightened too) or when the current bound already does."""
    if _term_with(teacher, student, direction, cls, side, i, j, float(side.reached[i, j])) > target:
        return None
    return _level(lambda v: _term_with(teacher, student, direction, cls, side, i, j, v), side, i, j, target)


def _term_with(
    teacher: _Side, student: _Side, direction: int, cls: int, side: _Side, i: int, j: int, value: float
) -> float:
    """The term ``(direction, cls)`` with the bound of ``z_j - z_i`` on ``side`` set to ``value``."""
    return float(_terms_with(teacher, student, side, i, j, value)[direction, cls])


def _terms_with(teacher: _Side, student: _Side, side: _Side, i: int, j: int, value: float) -> np.ndarray:
    """All terms (:func:`_terms`) with the bound of ``z_j - z_i`` on ``side`` set to ``value``."""
    return _terms_if(teacher, student, [(side, (i, j, value))])


def _level(term: Callable[[float], float], side: _Side, i: int, j: int, target: float) -> float | None:
    """The largest ``v`` in ``[largest value seen, current bound]`` with ``term(v) <= target`` (bisection; the term
    grows with the bound). None when the current bound already gives that."""
    lo, hi = float(side.reached[i, j]), float(side.upper[i, j])
    if term(hi) <= target:
        return None
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if term(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def _floor(teacher: _Side, student: _Side) -> float:
    """No sound bounds can take FaithUB below this: the largest of the optimistic terms."""
    c = teacher.lower.shape[0]
    return max(_optimistic_term(teacher, student, d, k) for d in (0, 1) for k in range(c))


def _gain(teacher: _Side, student: _Side, side: _Side, i: int, j: int, current: float) -> float:
    """How much FaithUB would drop if the bound of ``z_j - z_i`` on ``side`` became the largest value seen."""
    return current - float(_terms_with(teacher, student, side, i, j, float(side.reached[i, j])).max())


def refine_point(
    teacher_body: nn.Module | PiecewiseLinearNetwork,
    student_body: nn.Module | PiecewiseLinearNetwork,
    lower: np.ndarray,
    upper: np.ndarray,
    teacher_crown: LogitDiffBounds,
    student_crown: LogitDiffBounds,
    x0: np.ndarray,
    *,
    delta: float | None,
    solver: Solver = Solver.AUTO,
    refiners: tuple[Refiner, ...] = (Refiner.BAB, Refiner.MILP),
    device: str = "cpu",
    time_budget: float = 60.0,
    solve_limit: float | None = None,
    starts: np.ndarray | None = None,
) -> RefineResult:
    """Refine one point's FaithUB with exact MILP solves (module docstring). Inputs are flat ``[D]`` arrays;
    the CROWN bounds are ``[1, C, C]``. ``delta=None`` asks for the paper's all-pairs FaithUB. ``starts``
    (``[K, D]``, e.g. the attack's witness) seed each solve's first incumbent, with ``x0`` and the incumbents
    of the solves before: an early incumbent above a cut-off ends a solve at once."""
    start = time.perf_counter()
    # The budget covers every stage: the solves (and building their solvers) stop by ``solve_deadline``, the
    # coupled bound on the final bounds and the search on its terms by ``deadline``.
    search = Refiner.BAB in refiners
    deadline = time.monotonic() + time_budget
    solve_deadline = deadline - min(_FINAL_SHARE * time_budget, _FINAL_MAX)
    if search:
        solve_deadline -= _SEARCH_SHARE * time_budget
    if delta is not None:
        # Certified means FaithUB < delta (faithverify.verdict): the rules below compare with <=, so they get the
        # largest float below delta.
        delta = math.nextafter(delta, -math.inf)
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    x0_flat = np.asarray(x0, dtype=np.float64).reshape(-1)
    seen = x0_flat[None]
    if starts is not None:
        starts = np.asarray(starts, dtype=np.float64).reshape(-1, len(x0_flat))
        seen = np.concatenate([seen, starts])
    sides = [
        _make_side(body, crown, (lower, upper), solver, refiners, device, solve_deadline, seen)
        for body, crown in ((teacher_body, teacher_crown), (student_body, student_crown))
    ]
    teacher, student = sides
    anchors = [x0_flat, *([] if starts is None else list(starts[:1]))]
    coupled_hope: bool | None = None
    solves = 0
    witnesses: list[np.ndarray] = []

    def finish(timed_out: bool, out_of_reach: float | None = None) -> RefineResult:
        return _result(
            teacher, student, solves, timed_out, start, witnesses, anchors, deadline, out_of_reach,
            target=delta, search=search,
        )  # fmt: skip

    while True:
        terms = _terms(teacher, student)
        worst = float(terms.max())
        if delta is not None and worst <= delta:
            break
        if (
            delta is not None
            and _coupled(teacher, student, [*anchors, *witnesses[-1:]], solve_deadline) <= delta
        ):
            break  # the coupled bound certifies what eq. 6 does not yet
        floor = _floor(teacher, student)
        if worst <= floor + _NEGLIGIBLE:  # no sound bound can lower FaithUB any further
            break
        if time.monotonic() >= solve_deadline:
            return finish(timed_out=True)
        if delta is not None and floor > delta:
            # Eq. 6 cannot reach delta with any per-network bounds. The coupled bound still may, if these bounds
            # were at the values the networks reach: keep solving then, else give up at once.
            if coupled_hope is None:
                # No bound can go below the gap at an input of the box: a point whose x0 (or start) is above
                # delta already is out of reach, whatever the optimistic bound (not sound) says.
                coupled_hope = _gap_at(teacher, student, seen) <= delta and (
                    _coupled(teacher, student, anchors, solve_deadline, optimistic=True) <= delta
                )
            if not coupled_hope:
                return finish(timed_out=False, out_of_reach=delta)
        # Only the largest term can lower FaithUB: one of its bounds is solved next (_pick_bound).
        direction, cls = (int(k) for k in np.unravel_index(int(terms.argmax()), terms.shape))
        picked = _pick_bound(teacher, student, direction, cls, worst)
        if picked is None:
            break
        side, i, j = picked
        side.exact  # noqa: B018  (built first: its root bounds are part of the budget, not extra to it)
        remaining = solve_deadline - time.monotonic()
        if remaining <= 0:
            return finish(timed_out=True)
        limit = remaining if solve_limit is None else min(solve_limit, remaining)
        cutoff = None
        if delta is not None and (i, j) not in side.cut:
            cutoff = _cutoff(teacher, student, direction, cls, side, i, j, delta)
        # Enough for this term: delta, or (the paper's FaithUB) the floor, below which the term cannot matter.
        enough = _sufficient_level(
            teacher, student, direction, cls, side, i, j, floor if delta is None else delta
        )
        seeds = np.concatenate(
            [x0_flat[None], *([] if starts is None else [starts]), *(w[None] for w in witnesses)]
        )
        result = side.exact.max_logit_diff(
            i, j, time_limit=limit, cutoff=cutoff, stop_below=enough, start=seeds
        )
        solves += 1
        tightened = _tightened(side, [(i, j, result.bound)])
        side.lower, side.upper = tightened.lower[0], tightened.upper[0]
        if result.status == Status.BOUND_BELOW_CUTOFF:
            # At the term's level the term is done with. At the optimistic cut-off only, it is enough for now;
            # a later, tighter need re-solves it without that cut-off.
            if enough is None or result.bound > enough:
                side.cut.add((i, j))
        else:
            side.solved.add((i, j))
            if not result.exact:
                side.inexact.add((i, j))
        if result.witness is not None:
            witnesses.append(result.witness)
            for s in sides:
                s.observe(result.witness[None])
    return finish(timed_out=False)


def _make_side(
    body: nn.Module | PiecewiseLinearNetwork,
    crown: LogitDiffBounds,
    box: tuple[np.ndarray, np.ndarray],
    solver: Solver,
    refiners: tuple[Refiner, ...],
    device: str,
    deadline: float,
    seen: np.ndarray,
) -> _Side:
    """One network's side, starting from its screening bounds and the values it takes at ``seen``."""
    c = crown.lower.shape[-1]
    form = (
        body
        if isinstance(body, PiecewiseLinearNetwork)
        else PiecewiseLinearNetwork.from_module(body, len(box[0]))
    )
    side = _Side(
        form, box, solver, tuple(refiners), device, crown.lower[0].copy(), crown.upper[0].copy(),
        np.full((c, c), -math.inf), deadline=deadline,
    )  # fmt: skip
    side.observe(seen)
    return side


def _pick_bound(
    teacher: _Side, student: _Side, direction: int, cls: int, worst: float
) -> tuple[_Side, int, int] | None:
    """Which bound of the largest term ``(direction, cls)`` to solve next: the largest possible gain first.

    One solve alone often cannot move a saturated term (any other loose bound keeps it at 1), so ties go to
    the loosest bound; the term's solves run out only when all of its bounds are final. A bound already at a
    value the network takes is final without a solve. None when nothing is left to solve.
    """
    best: tuple[tuple[float, float], _Side, int, int] | None = None
    for side, i, j in _candidates(cls, direction, teacher, student):
        looseness = float(side.upper[i, j] - side.reached[i, j])
        if looseness <= _NEGLIGIBLE:
            side.solved.add((i, j))
            continue
        key = (_gain(teacher, student, side, i, j, worst), looseness)
        if best is None or key > best[0]:
            best = (key, side, i, j)
    return None if best is None else best[1:]


def _coupled(
    teacher: _Side,
    student: _Side,
    anchors: list[np.ndarray],
    deadline: float | None = None,
    optimistic: bool = False,
) -> float:
    """The coupled FaithUB (bounds/coupled.py) on the two sides' current bounds; ``optimistic``: on the values
    seen instead of every bound that is not final (not sound: what the coupled bound could reach at best)."""
    return float(_coupled_bound(teacher, student, anchors, deadline, optimistic).value[0])


def _coupled_bound(
    teacher: _Side,
    student: _Side,
    anchors: list[np.ndarray],
    deadline: float | None = None,
    optimistic: bool = False,
) -> CoupledBound:
    device = teacher.net.device
    # torch.tensor copies: the box may be a read-only array (one that came through Ray's object store).
    lo, hi = (torch.tensor(b.reshape(1, -1), device=device) for b in teacher.box)
    points = [torch.from_numpy(np.clip(a.reshape(1, -1), *teacher.box)).to(device) for a in anchors]
    diffs = (
        (_optimistic_bounds(teacher), _optimistic_bounds(student))
        if optimistic
        else (teacher.bounds(), student.bounds())
    )
    layers = (teacher.layers(), student.layers())
    return coupled_bound((teacher.net, student.net), layers, diffs, Box.of(lo, hi), points, deadline=deadline)


def _optimistic_bounds(side: _Side) -> LogitDiffBounds:
    upper = side.upper.copy()
    for i, j in np.ndindex(*upper.shape):
        if i != j and (i, j) not in side.solved:
            upper[i, j] = min(upper[i, j], side.reached[i, j])
    return LogitDiffBounds(lower=-upper.T[None], upper=upper[None])


def _gap_at(teacher: _Side, student: _Side, xs: np.ndarray) -> float:
    """The largest ``|sigma_t,i - sigma_s,i|`` at inputs ``xs`` (``[K, D]``, clipped into the box), float64."""
    t, s = (softmax_of(side.form.forward(np.clip(xs, *side.box))) for side in (teacher, student))
    return float(np.abs(t - s).max())


def _joint_stage(teacher: _Side, student: _Side) -> int | None:
    """Where the joint MILP goes among the searches on the coupled terms (0: first, 1: after branch and bound),
    or None where its model would be too large (a CNN's). Counted on the root bounds: the MILPs' binaries, which
    LP tightening barely lowers on MNIST MLPs, would take a second to count by building them."""
    neurons = unstable = 0
    for side in (teacher, student):
        for lo, hi in side.exact.root.as_list():
            neurons += lo.numel()
            unstable += int(((lo < 0) & (hi > 0)).sum())
    if teacher.form.input_dim + neurons > _JOINT_MAX_COLUMNS:
        return None
    return 0 if unstable <= _JOINT_FIRST_BINARIES else 1


def _joint_terms(
    teacher: _Side,
    student: _Side,
    terms: np.ndarray,
    anchor: np.ndarray,
    target: float | None,
    deadline: float,
    reached: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Lower the largest coupled terms (``[2, C]``) with the joint MILP of both networks
    (bounds/milp/coupled_term.py), largest first, each with at most a share of the time left, until
    every term is ``<= target`` (None: until the largest is settled), a witness takes a term above ``target``,
    or a term's solve ends without getting it below the next: the branch-and-bound search gets what is left.
    ``reached``: the gap at an input of the box (no FaithUB can be below it, so no term needs to be either).
    Returns the terms, the solutions' inputs (candidate witnesses) and the number of solves."""
    terms = np.array(terms, dtype=np.float64)
    witnesses: list[np.ndarray] = []
    solves = 0
    joint: CoupledTermMILP | None = None
    done: set[tuple[int, int]] = set()
    rows: set[int] = set()  # classes whose rows were solved for the joint model
    while True:
        order = np.argsort(-terms.reshape(-1))
        row, col = (int(k) for k in np.unravel_index(int(order[0]), terms.shape))
        worst = (row, col)
        value = float(terms[worst])
        remaining = deadline - time.monotonic()
        settled = value <= (reached if target is None else target)
        if settled or worst in done or remaining <= _JOINT_MIN_SECONDS:
            break
        if joint is None:
            milps = _network_milps(teacher, student, deadline)
            joint = CoupledTermMILP(*milps, (teacher.bounds(), student.bounds()), solver=teacher.solver)
            remaining = deadline - time.monotonic()
            if remaining <= _JOINT_MIN_SECONDS:
                break  # building it (LP tightening) took the time
        if remaining >= _JOINT_ROWS_FROM and col not in rows:
            rows.add(col)
            # The student first, with half the rows' time (what it leaves goes to the teacher): on the MNIST pairs
            # its row takes seconds where the teacher's takes minutes.
            now = time.monotonic()
            solves += _solve_row(student, col, now + _JOINT_ROWS_SHARE * remaining / 2)
            solves += _solve_row(teacher, col, now + _JOINT_ROWS_SHARE * remaining)
            # The same MILPs (only their bounds on the row changed), and eq. 6 on the new bounds may be lower.
            joint = CoupledTermMILP(*milps, (teacher.bounds(), student.bounds()), solver=teacher.solver)
            terms = np.minimum(terms, _terms(teacher, student))
            continue  # the row may have settled this term, or made another the largest
        # The solve's floor (backends.py): nothing under it changes the answer, so the search prunes there.
        below = target if target is not None else max(float(terms.reshape(-1)[order[1]]), reached)
        # Against a delta every term must come below it, so a term may take all the time left (no other can
        # decide the point without it); for the paper's FaithUB each term gets a share, the next largest the rest.
        share = _JOINT_SHARE_DELTA if target is not None else _JOINT_SHARE
        result = joint.term(row, col, time_limit=share * remaining, below=below, start=anchor)
        solves += 1
        terms[worst] = min(value, result.bound)
        if result.witness is not None:
            witnesses.append(result.witness)
        if target is not None and result.reachable > target:
            break  # a witness above delta (onnxruntime re-checks it): the point is violated
        if result.status is not Status.BOUND_BELOW_CUTOFF:
            done.add(worst)  # solved, or out of its time: the search may still lower it
    return terms, witnesses, solves


def _network_milps(teacher: _Side, student: _Side, deadline: float) -> tuple[NetworkMILP, NetworkMILP]:
    """Each network's MILP for the joint model: deepened (MILP-tightened, ``_JOINT_DEEPEN_FROM``) where minutes
    are left, else as the per-network solves built it."""
    remaining = deadline - time.monotonic()
    if remaining < _JOINT_DEEPEN_FROM:
        return teacher.exact.milp_by(deadline), student.exact.milp_by(deadline)
    budget = _JOINT_DEEPEN_SHARE * remaining
    tightening = MilpTightening(
        last_layers=_DEEPEN_LAST_LAYERS,
        seconds_per_neuron=_DEEPEN_SECONDS_PER_NEURON,
        seconds_per_layer=budget / (2 * _DEEPEN_LAST_LAYERS),
    )
    until = time.monotonic() + budget
    # The student first (the smaller model). Each layer has its own cap, so the teacher does not inherit what
    # the student leaves; the shared deadline holds both to the budget.
    student_milp = student.exact.deepened_milp(tightening, until)
    return teacher.exact.deepened_milp(tightening, until), student_milp


def _solve_row(side: _Side, cls: int, until: float) -> int:
    """Solve the bounds of ``z_j - z_cls`` (both signs) that are not final yet by the side's exact solver, the time
    left until ``until`` shared evenly among the solves left (one ending early leaves its time to the rest).
    Returns the number of solves."""
    classes = len(side.upper)
    todo = [(i, j) for k in range(classes) if k != cls for i, j in ((cls, k), (k, cls))]
    todo = [pair for pair in todo if pair not in side.solved]
    solves = 0
    for n, (i, j) in enumerate(todo):
        left = until - time.monotonic()
        if left <= _JOINT_MIN_SECONDS:
            break
        result = side.exact.max_logit_diff(i, j, time_limit=left / (len(todo) - n))
        solves += 1
        tightened = _tightened(side, [(i, j, result.bound)])
        side.lower, side.upper = tightened.lower[0], tightened.upper[0]
        side.solved.add((i, j))
        if not result.exact:
            side.inexact.add((i, j))
    return solves


def _result(
    teacher: _Side,
    student: _Side,
    solves: int,
    timed_out: bool,
    start: float,
    witnesses: list[np.ndarray],
    anchors: list[np.ndarray],
    deadline: float,
    out_of_reach: float | None = None,
    *,
    target: float | None = None,
    search: bool = False,
) -> RefineResult:
    """The refinement's answer (its coupled bound optimised until ``deadline`` at most); ``out_of_reach``: the
    delta that eq. 6 was found unable to reach (reported as out of reach unless the coupled bound reaches it
    after all). With ``search``, the time left goes to branch and bound on the largest terms' coupled forms
    (bounds/coupled_bab.py), until every term is ``<= target`` (None: as low as the largest term goes)."""
    terms = _terms(teacher, student)
    value = float(terms.max())
    # Exact: exact solves of every pair would give the same FaithUB. So it is at the floor, or when every bound
    # of the largest term is final and none of them is a dual bound left by a time limit. Decided here, on the
    # bounds ``value`` comes from (the joint stage below may solve more of them).
    direction, cls = (int(k) for k in np.unravel_index(int(terms.argmax()), terms.shape))
    settled = all(
        (i, j) in side.solved and (i, j) not in side.inexact
        for side, i, j in _term_bounds(cls, direction, teacher, student)
    )
    final = _coupled_bound(teacher, student, [*anchors, *witnesses[-1:]], deadline)
    coupled = float(final.value[0])
    searched = 0
    if search and (target is None or min(value, coupled) > target) and time.monotonic() < deadline:
        # Two searches on the largest terms: branch and bound over the paired network (relaxes ReLUs and the
        # softmax, cheap per step) and the joint MILP (relaxes only the softmax, slower per term). The joint MILP
        # goes first where the two networks' MILPs are small, else it gets what the search leaves (run first
        # on the shipped pair at the paper's eps 0.15 / 0.2, it took the budget from terms the search settles in
        # a fraction of it: 7 / 19 points unknown instead of 5 / 15).
        per_term, searched = final.per_term[0], 0
        stages = ["search"]
        place = _joint_stage(teacher, student) if Refiner.MILP in teacher.refiners else None
        if place is not None:
            stages.insert(place, "joint")
        if place == 1:
            stages.append("search")  # the time the joint MILP leaves
        for n, stage in enumerate(stages):
            now = time.monotonic()
            if now >= deadline or (target is not None and float(per_term.max()) <= target):
                break
            if stage == "search":
                reserve = "joint" in stages[n + 1 :] and deadline - now >= _JOINT_RESERVE_FROM
                until = now + _SEARCH_BEFORE_JOINT * (deadline - now) if reserve else deadline
                outcome = search_terms(
                    (teacher.net, student.net),
                    # alpha-CROWN's intermediate bounds (the exact solver's root), built now if no solve needed them
                    (teacher.exact.root, student.exact.root),
                    (teacher.bounds(), student.bounds()),
                    *teacher.box,
                    anchors[0],
                    per_term,
                    target=target,
                    deadline=until,
                )
                witnesses = [*witnesses, *outcome.witnesses]  # re-checked by onnxruntime before they count
                per_term, searched = outcome.terms, searched + outcome.searched
                if target is not None and outcome.reached > target:
                    break  # a witness above delta
            else:
                seen = np.concatenate([np.reshape(x, (1, -1)) for x in (*anchors, *witnesses)])
                reached = _gap_at(teacher, student, seen)
                per_term, found, joint_solves = _joint_terms(
                    teacher, student, per_term, anchors[0], target, deadline, reached=reached
                )
                witnesses, searched = [*witnesses, *found], searched + joint_solves
        coupled = min(coupled, float(per_term.max()))
    exact = value <= _floor(teacher, student) + _NEGLIGIBLE or (settled and not timed_out)
    eq6 = value if math.isfinite(value) else 1.0
    value = min(eq6, coupled)
    return RefineResult(
        faith_ub=value if math.isfinite(value) else 1.0,
        solves=solves,
        exact=exact,
        timed_out=timed_out,
        seconds=time.perf_counter() - start,
        solver=teacher.solver_used() or student.solver_used() or "none",
        witnesses=witnesses,
        out_of_reach=out_of_reach is not None and value > out_of_reach,
        coupled=coupled,
        eq6=eq6,
        searched=searched,
    )
