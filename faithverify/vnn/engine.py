"""Decide a VNN-style query: is there an input in the box whose outputs fall in the unsafe set?

A query has one or more networks that read the same input ``x`` (one box, or a disjunction of boxes) and an
unsafe set over their outputs ``y`` (the concatenation of every network's outputs, in order): a disjunction of
conjunctions ``A y <= b``. The answer is

- ``sat`` with a counterexample ``x`` whose outputs, computed by onnxruntime on the query's own ONNX files,
  satisfy every row of one conjunction (nothing else is ever reported as ``sat``);
- ``unsat`` when every conjunction is refuted on every box by a sound bound: some row has ``a·y - b > 0``
  everywhere;
- ``unknown`` or ``timeout`` otherwise.

The stages are the certify pipeline's: PGD looks for a counterexample; CROWN (float64, widened by the margins
of :mod:`faithverify.bounds.softmax`) bounds each row; the exact MILP (:mod:`faithverify.bounds.milp`) takes
the rows CROWN leaves open. A row that reads the logits of one network is bounded directly as a linear form of
those logits. Softmax outputs (a network whose ONNX ends in Softmax) are bounded through eq. 5 from the
logit-difference bounds, and rows mixing networks by interval arithmetic over each output's bounds (sound,
looser). A query shaped like the faithfulness property of a teacher/student pair (every conjunction one row
``±(p_t,i - p_s,i) >= delta``) is refined with the pair's MILP stage (:mod:`faithverify.refine`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from faithverify.attack import float32_box, maximize_in_box
from faithverify.attack_config import PGDConfig
from faithverify.bounds.bounder import BoundMethod, NetworkBounder
from faithverify.bounds.coupled import coupled_bound
from faithverify.bounds.crown import Box, LayerBounds
from faithverify.bounds.milp import Solver
from faithverify.bounds.milp.backends import Status
from faithverify.bounds.portfolio import ExactSolver
from faithverify.bounds.softmax import LogitDiffBounds, float_margin, softmax_bounds
from faithverify.errors import FaithverifyError
from faithverify.onnx_io import LoadedModel
from faithverify.refine import refine_point
from faithverify.threads import torch_threads

_PGD = PGDConfig()  # the certify attack's settings (a VNN query gets twice its restarts: one objective each)


class Outcome(StrEnum):
    SAT = "sat"
    UNSAT = "unsat"
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    ERROR = "error"  # the instance could not be run (a missing file, an internal error): bench records it


@dataclass(frozen=True)
class ProblemNetwork:
    """One network of a query: its logits model and whether the query reads its softmax instead."""

    name: str
    model: LoadedModel
    probabilities: bool  # the query's outputs are softmax(logits) (the ONNX file ends in Softmax)

    @property
    def num_outputs(self) -> int:
        return self.model.num_classes

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.model.input_shape))


Conjunct = tuple[np.ndarray, np.ndarray]  # (A [k, M], b [k]): all rows A y <= b


@dataclass
class Problem:
    """Networks reading one input, input boxes (flat, a disjunction) and the unsafe set over their outputs.

    ``reference`` computes, with onnxruntime on the query's own files, the outputs the property is written over
    (``[N, M']``), and ``unsafe_reference`` is the unsafe set over those: a counterexample must satisfy it there.
    For most queries they are the concatenated network outputs and ``unsafe`` itself; a paired graph whose only
    output is ``softmax(z_t) - softmax(z_s)`` is bounded as two networks but checked on the paired graph.
    """

    networks: list[ProblemNetwork]
    boxes: list[tuple[np.ndarray, np.ndarray]]
    unsafe: list[Conjunct]
    reference: Callable[[np.ndarray], np.ndarray]
    unsafe_reference: list[Conjunct]

    def __post_init__(self) -> None:
        dims = {n.input_dim for n in self.networks}
        if len(dims) != 1:
            raise ProblemError(
                f"the networks of a query must read the same input; their sizes are {sorted(dims)}"
            )
        (dim,) = dims
        outputs = sum(n.num_outputs for n in self.networks)
        for lower, upper in self.boxes:
            if lower.shape != (dim,) or upper.shape != (dim,):
                raise ProblemError(f"an input box has {lower.size} values; the networks read {dim}")
            if np.any(lower > upper):
                raise ProblemError("an input box is empty (a lower bound above its upper bound)")
        for a, b in self.unsafe:
            if a.ndim != 2 or a.shape[1] != outputs or b.shape != (a.shape[0],):
                raise ProblemError(
                    f"an output constraint reads {a.shape[-1]} outputs; the networks have {outputs}"
                )
        if len(self.unsafe) != len(self.unsafe_reference):
            raise ProblemError("the unsafe set and its reference form differ in length")

    @property
    def input_dim(self) -> int:
        return self.networks[0].input_dim

    def slices(self) -> list[slice]:
        out, start = [], 0
        for n in self.networks:
            out.append(slice(start, start + n.num_outputs))
            start += n.num_outputs
        return out


class ProblemError(FaithverifyError):
    """A query the engine cannot take (mismatched inputs or outputs)."""


@dataclass
class Answer:
    outcome: Outcome
    stage: str  # attack | crown | milp | none
    seconds: float
    x: np.ndarray | None = None  # the counterexample input (flat float32) for sat
    y: np.ndarray | None = None  # the reference outputs there (onnxruntime)
    reason: str = ""


def problem_outputs(query: Problem, x: torch.Tensor) -> torch.Tensor:
    """The concatenated outputs of every network at flat inputs ``x [N, D]`` (torch, differentiable)."""
    parts = []
    for net in query.networks:
        z = net.model.module(x.reshape(len(x), *net.model.input_shape))
        parts.append(torch.softmax(z, dim=-1) if net.probabilities else z)
    return torch.cat(parts, dim=-1)


def _holds(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> bool:
    return bool(np.all(a @ y - b <= 0))


def _check(query: Problem, x: np.ndarray, index: int) -> np.ndarray | None:
    """The reference outputs at ``x`` when they satisfy conjunction ``index``, else None."""
    y = query.reference(x.reshape(1, -1).astype(np.float32))[0]
    a, b = query.unsafe_reference[index]
    return y if _holds(a, b, y) else None


def _attack(
    query: Problem,
    lower: np.ndarray,
    upper: np.ndarray,
    steps: int,
    restarts: int,
    seed: int,
    deadline: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The certify attack's ascent (:func:`faithverify.attack.maximize_in_box`, APGD steps) on
    ``-max_k (A y(x) - b)_k`` for every conjunction and restart at once (one batch); a counterexample that
    onnxruntime confirms (the best iterate of each run is checked, then the runs' final points), or None."""
    if time.monotonic() > deadline:
        return None
    lo32, hi32 = float32_box(lower, upper)
    lo, hi = torch.from_numpy(lo32)[None], torch.from_numpy(hi32)[None]
    generator = torch.Generator().manual_seed(seed)
    # Conjunctions padded to the same number of rows with rows that never attain the maximum.
    rows = max(len(b) for _, b in query.unsafe)
    outputs = query.unsafe[0][0].shape[1]
    a = torch.zeros(len(query.unsafe), rows, outputs)
    b = torch.full((len(query.unsafe), rows), 1e30)
    for index, (a_k, b_k) in enumerate(query.unsafe):
        a[index, : len(b_k)] = torch.from_numpy(a_k).float()
        b[index, : len(b_k)] = torch.from_numpy(b_k).float()
    restarts = max(1, restarts)
    conj = torch.arange(len(query.unsafe)).repeat(restarts)  # batch row -> conjunction
    # Restart 0 from the box's centre, the others from uniform random points of the box.
    k, dim = len(query.unsafe), lo.shape[1]
    centre = ((lo + hi) / 2).expand(k, -1)
    starts = torch.cat(
        [centre] + [lo + torch.rand((k, dim), generator=generator) * (hi - lo) for _ in range(restarts - 1)]
    )
    lo_b, hi_b = lo.expand(len(starts), -1), hi.expand(len(starts), -1)

    def objective(x: torch.Tensor) -> torch.Tensor:
        y = problem_outputs(query, x)
        return -(torch.einsum("nrm,nm->nr", a[conj], y) - b[conj]).amax(dim=-1)

    best, value = maximize_in_box(objective, starts, lo_b, hi_b, steps, deadline=deadline)
    # Most violated first; onnxruntime has the last word (the float32 torch model can differ near 0).
    for n in torch.argsort(value, descending=True).tolist()[:1000]:
        if time.monotonic() > deadline:
            return None
        if float(value[n]) < -1e-3:
            break
        confirmed = _check(query, best.numpy()[n], int(conj[n]))
        if confirmed is not None:
            return best.numpy()[n], confirmed
    return None


def _widen(value: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """A lower bound on ``a · z`` pushed down by :func:`float_margin` with ``||a||_1 = weight`` (a form
    ``1000 z_0 - 1000 z_1`` can be off by 1000 times a logit's error however small its value)."""
    return value - float_margin(value, weight)


@dataclass
class _BoxBounds:
    """Sound bounds over one box: per network, the bounder, logit-difference bounds and output intervals."""

    bounders: list[NetworkBounder]
    diffs: list[LogitDiffBounds]
    layers: list[LayerBounds]
    out_lower: np.ndarray  # [M]
    out_upper: np.ndarray


def _box_bounds(query: Problem, lower: np.ndarray, upper: np.ndarray) -> _BoxBounds:
    lo = torch.from_numpy(lower)[None]
    hi = torch.from_numpy(upper)[None]
    bounders, diffs, layers, out_lo, out_hi = [], [], [], [], []
    for net in query.networks:
        bounder = NetworkBounder(net.model.network, net.input_dim, net.num_outputs)
        bounders.append(bounder)
        d, layer_bounds = bounder.logit_diff_bounds_with_layers(lo, hi, BoundMethod.CROWN)
        assert layer_bounds is not None
        diffs.append(d)
        layers.append(layer_bounds)
        if net.probabilities:
            s = softmax_bounds(d.widened())
            out_lo.append(s.lower[0])
            out_hi.append(s.upper[0])
        else:
            eye = torch.eye(net.num_outputs, dtype=torch.float64)
            lb = _widen(
                bounder.linear_lower_bounds(lo, hi, torch.cat([eye, -eye]), BoundMethod.CROWN)[0].numpy()
            )
            out_lo.append(lb[: net.num_outputs])
            out_hi.append(-lb[net.num_outputs :])
    return _BoxBounds(bounders, diffs, layers, np.concatenate(out_lo), np.concatenate(out_hi))


def _pair_screen(bounds: _BoxBounds, box: tuple[np.ndarray, np.ndarray], deadline: float) -> float:
    """A pair query's FaithUB by certify's default screening (CROWN, then the coupled bound over both, its
    optimisation stopped by ``deadline``)."""
    nets = (bounds.bounders[0].network, bounds.bounders[1].network)
    lo, hi = (torch.from_numpy(b)[None].to(nets[0].device, nets[0].dtype) for b in box)
    centre = (lo + hi) / 2
    result = coupled_bound(
        nets,
        (bounds.layers[0], bounds.layers[1]),
        (bounds.diffs[0], bounds.diffs[1]),
        Box.of(lo, hi),
        [centre],
        deadline=deadline,
    )
    return float(result.value[0])


def _single_logits_network(query: Problem, row: np.ndarray) -> int | None:
    """The network whose logits are the only outputs ``row`` reads, if there is one."""
    for k, (net, part) in enumerate(zip(query.networks, query.slices(), strict=True)):
        outside = np.delete(row, np.arange(part.start, part.stop))
        if not np.any(outside) and not net.probabilities:
            return k
    return None


def _row_lower_bound(
    query: Problem,
    bounds: _BoxBounds,
    box: tuple[np.ndarray, np.ndarray],
    row: np.ndarray,
    deadline: float | None = None,
) -> float:
    """A sound lower bound on ``row · y`` over the box (alpha-CROWN's iterations stopped by ``deadline``)."""
    interval = float(np.sum(np.where(row > 0, row * bounds.out_lower, row * bounds.out_upper)))
    k = _single_logits_network(query, row)
    if k is None:
        return interval
    part = query.slices()[k]
    spec = torch.from_numpy(row[part][None].astype(np.float64))
    lo, hi = (torch.from_numpy(v)[None] for v in box)
    lower = bounds.bounders[k].linear_lower_bounds(lo, hi, spec, BoundMethod.ALPHA_CROWN, deadline)[0].numpy()
    direct = float(_widen(lower, float(np.abs(row[part]).sum()))[0])
    return max(direct, interval)


def _pair_faithfulness_delta(query: Problem) -> float | None:
    """``delta`` when the query is a pair's faithfulness property (every conjunction one row
    ``±(p_t,i - p_s,i) >= delta`` over two softmax networks), else None."""
    if len(query.networks) != 2 or not all(n.probabilities for n in query.networks):
        return None
    c = query.networks[0].num_outputs
    if query.networks[1].num_outputs != c:
        return None
    deltas = set()
    for a, b in query.unsafe:
        if a.shape[0] != 1:
            return None
        row = a[0]
        nonzero = np.flatnonzero(row)
        if len(nonzero) != 2 or nonzero[1] != nonzero[0] + c:
            return None
        s = row[nonzero[0]]
        if abs(s) != 1 or row[nonzero[1]] != -s:
            return None
        deltas.add(float(-b[0]))  # -s (p_t - p_s) <= -delta  <=>  s (p_t - p_s) >= delta
    return deltas.pop() if len(deltas) == 1 else None


def verify(
    query: Problem,
    timeout: float = 60.0,
    *,
    solver: Solver = Solver.AUTO,
    attack_steps: int = _PGD.steps,
    restarts: int = 2 * _PGD.restarts,
    seed: int = 0,
    milp: bool = True,
) -> Answer:
    """Decide ``query`` within ``timeout`` seconds (see the module docstring)."""
    started = time.monotonic()
    deadline = started + timeout

    def answer(outcome: Outcome, stage: str, reason: str = "", **kw: object) -> Answer:
        return Answer(outcome, stage, time.monotonic() - started, reason=reason, **kw)  # type: ignore[arg-type]

    open_boxes: list[tuple[tuple[np.ndarray, np.ndarray], list[int], _BoxBounds]] = []
    pair_delta = _pair_faithfulness_delta(query)
    # How long one CROWN pass over the networks takes: building an exact solver costs at least that much (its
    # root bounds), so one is not started with less time left.
    crown_seconds = 0.0
    for box in query.boxes:
        with torch_threads(1):
            found = _attack(query, *box, attack_steps, restarts, seed, deadline)
        if found is not None:
            return answer(Outcome.SAT, "attack", x=found[0], y=found[1])
        if time.monotonic() > deadline:
            return answer(Outcome.TIMEOUT, "attack", "out of time in the attack")
        began = time.monotonic()
        bounds = _box_bounds(query, *box)
        crown_seconds = max(crown_seconds, time.monotonic() - began)
        if pair_delta is not None and _pair_screen(bounds, box, deadline) < pair_delta:
            continue  # the pair's faithfulness property holds on this box: FaithUB < delta
        remaining = []
        for index, (a, b) in enumerate(query.unsafe):
            # Each row's alpha-CROWN bound takes a while on a large network: the deadline is checked between.
            if time.monotonic() > deadline:
                return answer(Outcome.TIMEOUT, "crown", "out of time in CROWN")
            refuted = any(
                _row_lower_bound(query, bounds, box, a[k], deadline) - b[k] > 0 for k in range(len(b))
            )
            if not refuted:
                remaining.append(index)
        if remaining:
            open_boxes.append((box, remaining, bounds))
    if not open_boxes:
        return answer(Outcome.UNSAT, "crown")
    if not milp:
        return answer(Outcome.UNKNOWN, "crown", "CROWN leaves some conjunctions open; the MILP is off")
    delta = _pair_faithfulness_delta(query)
    for box, remaining, bounds in open_boxes:
        left = deadline - time.monotonic()
        if left <= crown_seconds:
            return answer(Outcome.TIMEOUT, "milp", "out of time before the MILP")
        if delta is not None:
            outcome = _refine_pair(query, box, bounds, delta, solver, left)
        else:
            outcome, found = _refine_rows(query, box, remaining, solver, deadline, crown_seconds)
            if found is not None:
                return answer(Outcome.SAT, "milp", x=found[0], y=found[1])
        if outcome is not Outcome.UNSAT:
            reason = (
                "out of time in the MILP" if outcome is Outcome.TIMEOUT else "no bound refutes a conjunction"
            )
            return answer(outcome, "milp", reason)
    return answer(Outcome.UNSAT, "milp")


def _refine_pair(
    query: Problem,
    box: tuple[np.ndarray, np.ndarray],
    bounds: _BoxBounds,
    delta: float,
    solver: Solver,
    budget: float,
) -> Outcome:
    """The pair's MILP stage: unsat when FaithUB < delta (strictly: a gap of exactly delta is unsafe)."""
    teacher, student = query.networks
    x0 = (box[0] + box[1]) / 2
    result = refine_point(
        teacher.model.module.flat_body(),
        student.model.module.flat_body(),
        box[0],
        box[1],
        bounds.diffs[0],
        bounds.diffs[1],
        x0,
        delta=delta,  # refine_point certifies FaithUB < delta, the strictness the unsafe set (gap >= delta) needs
        solver=solver,
        time_budget=budget,
    )
    if result.faith_ub < delta:
        return Outcome.UNSAT
    return Outcome.TIMEOUT if result.timed_out else Outcome.UNKNOWN


def _refine_rows(
    query: Problem,
    box: tuple[np.ndarray, np.ndarray],
    remaining: list[int],
    solver: Solver,
    deadline: float,
    build_seconds: float = 0.0,
) -> tuple[Outcome, tuple[np.ndarray, np.ndarray] | None]:
    """Refute each open conjunction by one of its rows on a single network's logits, solved exactly (no solver
    is built with less than ``build_seconds`` left)."""
    milps: dict[int, ExactSolver] = {}
    for index in remaining:
        a, b = query.unsafe[index]
        refuted = False
        for k in range(len(b)):
            net_index = _single_logits_network(query, a[k])
            if net_index is None:
                continue
            if time.monotonic() + (0.0 if net_index in milps else build_seconds) >= deadline:
                return Outcome.TIMEOUT, None
            if net_index not in milps:
                net = query.networks[net_index]
                milps[net_index] = ExactSolver(net.model.network, *box, milp_solver=solver, deadline=deadline)
            # The time left after building the solver (its root alpha-CROWN bounds), not before.
            left = deadline - time.monotonic()
            if left <= 0:
                return Outcome.TIMEOUT, None
            part = query.slices()[net_index]
            # Refuted when max(-a·z) < -b strictly; stop as soon as that is proven or disproven.
            target = math.nextafter(-float(b[k]), -math.inf)
            # The MILP's bound is for the network in exact arithmetic; onnxruntime evaluates it in float32,
            # so the bound must clear the target by the same margin as CROWN's (``_widen``).
            weight = float(np.abs(a[k][part]).sum())
            margin = float(float_margin(np.array(target), weight))
            result = milps[net_index].maximize(-a[k][part], time_limit=left, cutoff=target - margin)
            if -float(_widen(np.array([-result.bound]), weight)[0]) <= target:
                refuted = True
                break
            if result.witness is not None and len(b) == 1:
                y = _check(query, result.witness, index)
                if y is not None:
                    return Outcome.SAT, (result.witness.astype(np.float32), y)
            if result.status == Status.TIME_LIMIT:
                return Outcome.TIMEOUT, None
        if not refuted:
            return Outcome.UNKNOWN, None
    return Outcome.UNSAT, None
