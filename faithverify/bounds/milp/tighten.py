"""Tighter ReLU bounds before branching: maximise and minimise each unstable neuron's input over the LP
relaxation of the layers below it (optimisation-based bound tightening).

The LP relaxation of the big-M encoding is the triangle relaxation of every ReLU below, coupled through the
shared input variables, which is at least as tight as CROWN's relaxation with the same lower-layer bounds (CROWN
picks one linear lower bound per neuron where the LP keeps both). So every bound can only improve, neurons that
the LP proves stable need no binary, and the remaining big-M constants shrink. On deep nets most of the gap
between CROWN's intermediate bounds and the true ranges is in the deep layers, which is where this helps.

Soundness: the LP maximum over a relaxation of the network is at least the neuron's true maximum over the box;
each LP value gets the same :func:`~faithverify.bounds.milp.model.soundness_margin` as a MILP bound (the LP
dual feasibility tolerance is the same 1e-9). A neuron whose LP does not finish optimally keeps its bound.

:func:`milp_refiner` goes one step further in the deep layers: after the LPs, each neuron still unstable gets
two short MILPs over the exact encoding of the layers below (the ReLUs below keep their binaries), and takes the
solver's dual bound at its time limit, never an incumbent, with the same margin. The LP relaxation loses most
in the deep layers, where the errors of every layer below compound; a MILP there removes that loss, at the cost
of a branch-and-bound search per neuron (progressive bound tightening, as in Tjeng et al.'s MIPVerify).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from faithverify.bounds.milp.backends import (
    DUAL_FEASIBILITY_TOL,
    PRIMAL_FEASIBILITY_TOL,
    HighsBackend,
    SolverOptions,
    StopRule,
    highs_threads,
    new_highs,
    pass_model,
)
from faithverify.bounds.milp.encoding import MilpModel
from faithverify.errors import SolverError
from faithverify.network import PiecewiseLinearNetwork, ReluOp

Refine = Callable[[MilpModel, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def lp_refiner(
    margin: Callable[[float, float], float],
    time_limit: float | None = None,
    deadline: float | None = None,
) -> Refine:
    """A ``refine`` for :func:`~faithverify.bounds.milp.encoding.encode` that solves two LPs per neuron with
    HiGHS (always available, no size limit; LPs this small take milliseconds). ``margin(value, total_range)``
    is added outward to every LP value; ``time_limit`` caps the LPs of one layer together, and ``deadline``
    (``time.monotonic()``) all of them: the caller's time limit covers building the model too. Neurons left
    when time runs out keep the bounds they had (sound, looser)."""

    def refine(model: MilpModel, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stop = math.inf if time_limit is None else time.monotonic() + time_limit
        if deadline is not None:
            stop = min(stop, deadline)
        return _refine_layer(model, idx, margin, stop)

    return refine


def _refine_layer(
    model: MilpModel,
    idx: np.ndarray,
    margin: Callable[[float, float], float],
    stop: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import highspy

    lo, hi = np.full(len(idx), -math.inf), np.full(len(idx), math.inf)
    if len(idx) == 0 or time.monotonic() >= stop:
        return idx, lo, hi
    h = _relaxation(model)
    rows = model.logits.take_rows(idx)
    ptr = rows.indptr()
    total = model.total_range()
    prev = np.zeros(0, dtype=np.int32)
    for k in range(len(idx)):
        cols = rows.cols[ptr[k] : ptr[k + 1]].astype(np.int32)
        vals = rows.vals[ptr[k] : ptr[k + 1]]
        # Reset the previous neuron's costs, then set this one's; the basis carries over (warm start).
        h.changeColsCost(len(prev), prev, np.zeros(len(prev)))
        h.changeColsCost(len(cols), cols, vals)
        prev = cols
        offset = float(model.logit_offset[idx[k]])
        for sense in (highspy.ObjSense.kMaximize, highspy.ObjSense.kMinimize):
            if math.isfinite(stop):
                left = stop - time.monotonic()
                if left <= 0:
                    return idx, lo, hi
                h.setOptionValue("time_limit", left)
            h.changeObjectiveSense(sense)
            highs_threads(1)
            h.run()
            if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                continue
            value = float(h.getInfo().objective_function_value) + offset
            if sense == highspy.ObjSense.kMaximize:
                hi[k] = value + margin(value, total)
            else:
                lo[k] = value - margin(value, total)
    return idx, lo, hi


@dataclass(frozen=True)
class MilpTightening:
    """Which layers get per-neuron MILPs after the LPs, and how long each may take.

    ``last_layers``: the deepest ReLU layers that get them (the first layer's bounds are exact already, so at
    most all but the first); ``seconds_per_neuron``: the time of one neuron's two MILPs together;
    ``seconds_per_layer``: a cap for all of a layer's."""

    last_layers: int = 2
    seconds_per_neuron: float = 1.0
    seconds_per_layer: float = 30.0


def milp_refiner(
    network: PiecewiseLinearNetwork,
    margin: Callable[[float, float], float],
    tightening: MilpTightening,
    *,
    lp_time_limit: float | None = None,
    deadline: float | None = None,
) -> Refine:
    """A ``refine`` that runs :func:`lp_refiner`'s LPs, then, in the last ``tightening.last_layers`` ReLU
    layers of ``network``, two MILPs for each neuron the LPs left unstable (module docstring). ``margin`` as
    for :func:`lp_refiner`; ``deadline`` (``time.monotonic()``) stops both stages."""
    lp = lp_refiner(margin, lp_time_limit, deadline)
    relu_layers = sum(1 for op in network.nonlinear_ops() if isinstance(op, ReluOp))
    first = relu_layers - tightening.last_layers

    def refine(model: MilpModel, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, lo, hi = lp(model, idx)
        # The model so far encodes the nonlinear layers below this one: its index is their count.
        if len(model.layer_bounds) < first or model.num_binaries == 0:
            return idx, lo, hi
        stop = time.monotonic() + tightening.seconds_per_layer
        if deadline is not None:
            stop = min(stop, deadline)
        return _milp_layer(network, model, idx, lo, hi, margin, tightening.seconds_per_neuron, stop)

    return refine


def _milp_layer(
    network: PiecewiseLinearNetwork,
    model: MilpModel,
    idx: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    margin: Callable[[float, float], float],
    seconds_per_neuron: float,
    stop: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tighten the bounds ``lo``/``hi`` of neurons ``idx`` (their LP bounds, or -inf/+inf where the LPs did not
    finish) by MILP; a neuron the LPs proved stable is skipped."""
    lo, hi = lo.copy(), hi.copy()
    # Widest first: where a layer runs out of time, the neurons whose big-M constants cost most are done.
    todo = sorted((k for k in range(len(idx)) if not (hi[k] <= 0 or lo[k] >= 0)), key=lambda k: lo[k] - hi[k])
    if not todo or time.monotonic() >= stop:
        return idx, lo, hi
    backend = HighsBackend(model, SolverOptions(threads=1))
    # The network's own values at the box centre are feasible: the solver starts from an incumbent.
    centre = (model.col_lower[: model.input_dim] + model.col_upper[: model.input_dim]) / 2
    start = model.complete(network, centre)
    total = model.total_range()
    rows = model.logits.take_rows(idx)
    ptr = rows.indptr()
    for k in todo:
        cost = np.zeros(model.num_cols)
        np.add.at(cost, rows.cols[ptr[k] : ptr[k + 1]], rows.vals[ptr[k] : ptr[k + 1]])
        offset = float(model.logit_offset[idx[k]])
        for sign in (1.0, -1.0):
            left = stop - time.monotonic()
            if left <= 0:
                return idx, lo, hi
            limit = min(seconds_per_neuron / 2, left)  # half a neuron's time per side
            # A dual bound at or below 0 makes the neuron stable: no tighter bound is needed then.
            raw = backend.solve(sign * cost, sign * offset, limit, StopRule(0.0, math.inf), start)
            if not math.isfinite(raw.dual_bound):
                continue
            bound = raw.dual_bound + margin(raw.dual_bound, total)
            if sign > 0:
                hi[k] = min(hi[k], bound)
            else:
                lo[k] = max(lo[k], -bound)
    return idx, lo, hi


def _relaxation(model: MilpModel):  # type: ignore[no-untyped-def]
    """The model's LP relaxation in HiGHS (no integrality), objective all zero."""
    import highspy

    h = new_highs()
    for key, value in {
        "output_flag": False,
        "threads": 1,
        "primal_feasibility_tolerance": PRIMAL_FEASIBILITY_TOL,
        "dual_feasibility_tolerance": DUAL_FEASIBILITY_TOL,
    }.items():
        h.setOptionValue(key, value)
    status = pass_model(h, model, np.zeros(model.num_cols, dtype=np.int32))
    if status == highspy.HighsStatus.kError:
        raise SolverError("HiGHS could not take the LP relaxation for bound tightening")
    return h
