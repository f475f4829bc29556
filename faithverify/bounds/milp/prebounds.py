"""CROWN bounds on the input of every ReLU / max-pool layer: what makes the big-M constants small.

With interval (IBP) bounds instead, 3-10 times more ReLUs are unstable and solves are 10-30 times slower
(docs/design.md), so the MILP takes the native engine's CROWN intermediate bounds (:mod:`faithverify.bounds.crown`),
or tighter ones (alpha-CROWN's, branch and bound's) when the caller has them. The encoding intersects whatever
comes from here with interval arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from faithverify.bounds.crown import Box, intermediate_bounds
from faithverify.bounds.milp.encoding import LayerBounds
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.network import PiecewiseLinearNetwork


def crown_layer_bounds(
    network: PiecewiseLinearNetwork, lower: np.ndarray, upper: np.ndarray
) -> list[LayerBounds | None]:
    """CROWN bounds for the input of each of ``network.nonlinear_ops()``, in order."""
    lo = torch.from_numpy(np.asarray(lower, dtype=np.float64).reshape(1, -1))
    hi = torch.from_numpy(np.asarray(upper, dtype=np.float64).reshape(1, -1))
    net = BoundNetwork.of(network)
    with torch.no_grad():
        layers, _ = intermediate_bounds(net, Box.of(lo, hi))
    return [(lb[0].numpy(), ub[0].numpy()) for lb, ub in layers.as_list()]
