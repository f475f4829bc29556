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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from faithverify.bounds.milp.backends import (
    DUAL_FEASIBILITY_TOL,
    PRIMAL_FEASIBILITY_TOL,
    highs_threads,
    new_highs,
    pass_model,
)
from faithverify.bounds.milp.encoding import MilpModel
from faithverify.errors import SolverError


def lp_refiner(
    margin: Callable[[float, float], float],
    time_limit: float | None = None,
    deadline: float | None = None,
) -> Callable[[MilpModel, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
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
