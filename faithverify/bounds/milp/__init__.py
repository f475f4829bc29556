"""Exact MILP bounds on logit differences (the paper's eq. 4), solved by HiGHS or Gurobi.

- :mod:`~faithverify.network` (shared with every bound): the network as sparse affine maps, ReLUs and max-pools;
- :mod:`~faithverify.bounds.milp.encoding`: the MILP (big-M ReLUs, exact max-pools) in matrix form;
- :mod:`~faithverify.bounds.milp.prebounds`: CROWN bounds for the big-M constants;
- :mod:`~faithverify.bounds.milp.tighten`: tighter bounds of unstable ReLUs from LPs, before branching;
- :mod:`~faithverify.bounds.milp.backends`: HiGHS and Gurobi behind one interface;
- :mod:`~faithverify.bounds.milp.model`: :class:`NetworkMILP` and the soundness margin.
"""

from faithverify.bounds.milp.backends import Status
from faithverify.bounds.milp.encoding import MilpModel, encode
from faithverify.bounds.milp.model import (
    NetworkMILP,
    Solver,
    SolveResult,
    logit_diff_bounds_milp,
    soundness_margin,
)
from faithverify.network import PiecewiseLinearNetwork

__all__ = [
    "MilpModel",
    "NetworkMILP",
    "PiecewiseLinearNetwork",
    "SolveResult",
    "Solver",
    "Status",
    "encode",
    "logit_diff_bounds_milp",
    "soundness_margin",
]
