"""CROWN bounds on the input of every ReLU / max-pool layer: what makes the big-M constants small.

With interval (IBP) bounds instead, 3-10 times more ReLUs are unstable and solves are 10-30 times slower
(DESIGN.md), so the MILP takes CROWN's intermediate bounds: from the native :class:`ChainCrown` for a
Linear/ReLU chain, and from auto_LiRPA's CROWN pass for anything else (each ``BoundRelu`` / ``BoundMaxPool``
node's input holds ``.lower``/``.upper`` after ``compute_bounds``). The encoding intersects whatever comes from
here with interval arithmetic, so a layer left without CROWN bounds is still encoded soundly, only with larger M.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from faithverify.bounds.crown import ChainCrown, LinearReluChain
from faithverify.bounds.milp.encoding import LayerBounds
from faithverify.bounds.milp.network import MaxPoolOp, PiecewiseLinearNetwork, ReluOp
from faithverify.errors import BoundingError

log = logging.getLogger(__name__)

_NODE_KINDS = {"BoundRelu": ReluOp, "BoundMaxPool": MaxPoolOp}


def crown_layer_bounds(
    body: nn.Module, network: PiecewiseLinearNetwork, lower: np.ndarray, upper: np.ndarray
) -> list[LayerBounds | None]:
    """CROWN bounds for the input of each of ``network.nonlinear_ops()`` (None where none are available)."""
    lo = torch.from_numpy(np.asarray(lower, dtype=np.float64).reshape(1, -1))
    hi = torch.from_numpy(np.asarray(upper, dtype=np.float64).reshape(1, -1))
    chain = LinearReluChain.from_module(body)
    if chain is not None:
        spec = torch.zeros(
            1, network.output_dim, dtype=torch.float64
        )  # only the intermediate bounds are used
        with torch.no_grad():
            _, pre = ChainCrown(chain).bounds(lo, hi, spec)
        # ChainCrown also reports the first layer's bounds for a single Linear, which has no ReLU.
        out: list[LayerBounds | None] = [(lb[0].numpy(), ub[0].numpy()) for lb, ub in pre]
        return out[: len(network.nonlinear_ops())]
    try:
        return _auto_lirpa_layer_bounds(body, network, lo, hi)
    except BoundingError as exc:
        log.warning(
            "no CROWN bounds for the MILP (%s); using interval bounds, which make it much slower", exc
        )
        return [None] * len(network.nonlinear_ops())


def _auto_lirpa_layer_bounds(
    body: nn.Module, network: PiecewiseLinearNetwork, lower: torch.Tensor, upper: torch.Tensor
) -> list[LayerBounds | None]:
    from faithverify.bounds.lirpa import BoundMethod, NetworkBounder

    bounder = NetworkBounder(body, network.input_dim, network.output_dim, engine="auto_lirpa")
    bounder.pair_lower_bounds(lower, upper, BoundMethod.CROWN)
    nodes = [n for n in bounder.module._modules.values() if type(n).__name__ in _NODE_KINDS]
    ops = network.nonlinear_ops()
    kinds = [_NODE_KINDS[type(n).__name__] for n in nodes]
    if kinds != [type(op) for op in ops]:
        raise BoundingError(
            f"auto_LiRPA's graph has layers {kinds}, the MILP's network {[type(o) for o in ops]}"
        )
    out: list[LayerBounds | None] = []
    for node, op in zip(nodes, ops, strict=True):
        source = node.inputs[0]
        lb, ub = getattr(source, "lower", None), getattr(source, "upper", None)
        size = op.size if isinstance(op, ReluOp) else op.in_size
        if lb is None or ub is None or lb.numel() != size:
            out.append(None)
            continue
        out.append(
            (lb.detach().cpu().double().reshape(-1).numpy(), ub.detach().cpu().double().reshape(-1).numpy())
        )
    return out
