"""Exact methods for one network and one box, behind one interface: branch and bound, the MILP, or both.

Every member is an :class:`~faithverify.bounds.milp.model.ExactMethod`: ``maximize(weights, time_limit=,
cutoff=, stop_below=, start=)`` and ``max_logit_diff(i, j, ...)`` give a sound upper bound (a ``SolveResult``).
The portfolio runs branch and bound first for a share of the time (it is cheap to start and finds good
incumbents), and, if that did not settle the question, the MILP for the rest, seeded with branch and bound's
incumbent; the answer is the smaller of the two bounds (both are
sound) and the better of the two witnesses. Both members start from the same intermediate bounds: alpha-CROWN's,
optimised over every logit difference of the box, which also shrinks the MILP (fewer unstable ReLUs, smaller
big-M constants).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from faithverify.bounds import crown
from faithverify.bounds.bab import BabSettings, NetworkBaB
from faithverify.bounds.crown import Box, LayerBounds
from faithverify.bounds.milp import NetworkMILP, Solver, SolveResult
from faithverify.bounds.milp.backends import Status
from faithverify.bounds.milp.encoding import LayerBounds as LayerBoundsArrays
from faithverify.bounds.milp.model import ExactMethod
from faithverify.bounds.milp.tighten import MilpTightening
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.methods import Refiner
from faithverify.network import PiecewiseLinearNetwork

# Share of a solve's time that branch and bound gets before the MILP takes over (when both are in use).
BAB_SHARE = 0.4
# Share of the time left that building the MILP (its LP bound tightening) may take before the solve.
_TIGHTEN_SHARE = 0.5
_ROOT_ALPHA_ITERATIONS = 20


_SETTLED = {str(Status.BOUND_BELOW_CUTOFF), str(Status.INCUMBENT_ABOVE_CUTOFF)}


def _settled(result: SolveResult) -> bool:
    return result.status in _SETTLED or result.exact


def root_bounds(
    network: BoundNetwork, lower: np.ndarray, upper: np.ndarray, deadline: float | None = None
) -> LayerBounds:
    """alpha-CROWN's intermediate bounds over one box, optimised for every logit difference (until ``deadline``,
    ``time.monotonic()``: on a large network its iterations take seconds)."""
    from faithverify.bounds.bounder import pair_specification

    lo = torch.from_numpy(np.asarray(lower, dtype=np.float64).reshape(1, -1)).to(
        network.device, network.dtype
    )
    hi = torch.from_numpy(np.asarray(upper, dtype=np.float64).reshape(1, -1)).to(
        network.device, network.dtype
    )
    spec = pair_specification(network.output_dim).to(network.device, network.dtype)
    box = Box.of(lo, hi)
    return crown.alpha_crown(network, box, spec, iterations=_ROOT_ALPHA_ITERATIONS, deadline=deadline).layers


class ExactSolver(ExactMethod):
    """Sound bounds on ``z_j - z_i`` of one network over one box, by the chosen refiners (module docstring)."""

    def __init__(
        self,
        form: PiecewiseLinearNetwork,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        refiners: Sequence[Refiner] = (Refiner.BAB, Refiner.MILP),
        milp_solver: Solver = Solver.AUTO,
        bab: BabSettings | None = None,
        device: torch.device | str = "cpu",
        deadline: float | None = None,
    ) -> None:
        """``deadline`` (``time.monotonic()``): building the solver (its root alpha-CROWN bounds) stops by then."""
        if not refiners:
            raise ValueError("name at least one refiner")
        self.form = form
        self.box = (
            np.asarray(lower, dtype=np.float64).reshape(-1),
            np.asarray(upper, dtype=np.float64).reshape(-1),
        )
        self.refiners = tuple(dict.fromkeys(Refiner(r) for r in refiners))
        self.milp_solver = milp_solver
        self.network = BoundNetwork.of(form, device)
        self.root = root_bounds(self.network, *self.box, deadline=deadline)
        self._bab = (
            NetworkBaB(self.network, *self.box, root=self.root, settings=bab)
            if Refiner.BAB in self.refiners
            else None
        )
        self._milp: NetworkMILP | None = None
        self._deepened = False
        self._bab_used = False

    @property
    def milp(self) -> NetworkMILP:
        return self.milp_by(None)

    def milp_by(self, deadline: float | None) -> NetworkMILP:
        """The MILP, built on first use (encoding and LP tightening cost up to a second, and branch and bound
        often settles a question alone); its LP tightening stops by ``deadline`` (``time.monotonic()``)."""
        if self._milp is None:
            pre: list[LayerBoundsArrays | None] = [
                (lo[0].cpu().numpy(), hi[0].cpu().numpy()) for lo, hi in self.root.as_list()
            ]
            self._milp = NetworkMILP(
                self.form, *self.box, solver=self.milp_solver, preactivation=pre, deadline=deadline
            )
        return self._milp

    def deepened_milp(self, tightening: MilpTightening, deadline: float | None) -> NetworkMILP:
        """The MILP rebuilt once with per-neuron MILP tightening of its deepest layers (tighten.py), from the
        bounds the current model was built on, so that no bound gets looser (beyond the float64 slack,
        ``encoding.BOUND_SLACK``, that every build adds); the tightening stops by ``deadline``
        (``time.monotonic()``) and the neurons it did not reach keep those bounds. For callers with minutes left:
        the joint MILP of a coupled term, and its class's row, are solved on it."""
        current = self.milp_by(deadline)
        if not self._deepened:
            current = self._milp = NetworkMILP(
                self.form,
                *self.box,
                solver=self.milp_solver,
                preactivation=list(current.model.layer_bounds),
                deadline=deadline,
                milp_tightening=tightening,
            )
            self._deepened = True
        return current

    @property
    def num_classes(self) -> int:
        return self.network.output_dim

    def solver_used(self) -> str | None:
        used = []
        if self._bab is not None and self._bab_used:
            used.append("bab")
        if self._milp is not None:
            used.append(self._milp.solver_used())
        return "+".join(used) or None

    def maximize(
        self,
        weights: np.ndarray,
        *,
        time_limit: float | None = None,
        cutoff: float | None = None,
        stop_below: float | None = None,
        start: np.ndarray | None = None,
    ) -> SolveResult:
        """Sound upper bound on ``max_{x in box} weights · z(x)`` (module docstring)."""
        clock = time.perf_counter()
        limit = math.inf if time_limit is None else time_limit
        kw = {"cutoff": cutoff, "stop_below": stop_below}

        def left() -> float:
            return limit - (time.perf_counter() - clock)

        def milp() -> NetworkMILP:
            # Building it is part of the time limit: its LP tightening gets at most half of what is left, the solve
            # the rest (a solver needs a while to start: HiGHS's presolve overran a 0.1 s limit by 1.6 s).
            return self.milp_by(None if math.isinf(limit) else time.monotonic() + _TIGHTEN_SHARE * left())

        if self._bab is None:
            model = milp()
            # With no time left the solver stops at once; its bound is still sound (the interval bound at worst).
            return model.maximize(
                weights, time_limit=None if math.isinf(limit) else max(left(), 1e-3), start=start, **kw
            )
        self._bab_used = True
        share = limit if Refiner.MILP not in self.refiners else BAB_SHARE * limit
        first = self._bab.maximize(
            weights, time_limit=None if math.isinf(share) else share, start=start, **kw
        )
        if Refiner.MILP not in self.refiners or _settled(first):
            return first
        if left() <= 0.05:
            return first
        model = milp()
        if left() <= 0.05:  # building the MILP took the rest of the time
            return first
        seeds = start if first.witness is None else _stack(start, first.witness)
        second = model.maximize(weights, time_limit=None if math.isinf(limit) else left(), start=seeds, **kw)
        return _combine(first, second, time.perf_counter() - clock)


def _stack(start: np.ndarray | None, witness: np.ndarray) -> np.ndarray:
    w = witness.reshape(1, -1)
    return (
        w
        if start is None
        else np.concatenate([np.asarray(start, dtype=np.float64).reshape(-1, w.shape[1]), w])
    )


def _combine(bab: SolveResult, milp: SolveResult, seconds: float) -> SolveResult:
    """The tighter bound (both are sound), the better witness, and the MILP's status unless branch and bound's
    bound is the one that settles it."""
    best = max(
        (r for r in (bab, milp) if r.witness_value is not None),
        key=lambda r: r.witness_value or -math.inf,
        default=None,
    )
    bound = min(bab.bound, milp.bound)
    return replace(
        milp,
        bound=bound,
        exact=milp.exact or bab.exact,
        seconds=seconds,
        solver=f"bab+{milp.solver}",
        witness=None if best is None else best.witness,
        witness_value=None if best is None else best.witness_value,
        incumbent=None if best is None else best.incumbent,
    )
