"""The native CROWN for Linear/ReLU chains against auto_LiRPA's CROWN (an independent implementation) and
against sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faithverify.bounds.crown import ChainCrown, LinearReluChain
from faithverify.bounds.lirpa import BoundMethod, NetworkBounder, pair_specification
from tests.conftest import random_mlp


@pytest.mark.parametrize(
    ("dims", "eps", "seed"),
    [
        ([20, 16, 16, 16, 5], 0.02, 0),
        ([20, 16, 16, 16, 5], 0.2, 1),
        ([30, 12, 7], 0.1, 2),
        ([8, 6, 6, 6, 6, 3], 0.5, 3),
    ],
)
def test_equals_auto_lirpa_crown(dims: list[int], eps: float, seed: int) -> None:
    net = random_mlp(seed, dims)
    x = torch.rand(40, dims[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    native = NetworkBounder(net, dims[0], dims[-1]).pair_lower_bounds(lower, upper, BoundMethod.CROWN)
    library = NetworkBounder(net, dims[0], dims[-1], engine="auto_lirpa")
    reference = library.pair_lower_bounds(lower, upper, BoundMethod.CROWN)
    scale = 1.0 + reference.abs().max()
    assert torch.allclose(native, reference, atol=1e-10 * scale, rtol=0)


def test_pre_activation_and_final_bounds_hold_on_samples() -> None:
    net = random_mlp(7, [10, 12, 12, 4], scale=1.5)
    chain = LinearReluChain.from_module(net)
    assert chain is not None
    x = torch.rand(5, 10, dtype=torch.float64)
    lower, upper = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
    spec = pair_specification(4)
    final, pre = ChainCrown(chain).bounds(lower, upper, spec)
    samples = lower[:, None] + (upper - lower)[:, None] * torch.rand(5, 5000, 10, dtype=torch.float64)
    h = samples
    layers = list(net.double())
    for k, (lo, hi) in enumerate(pre):
        z = layers[2 * k](h)
        assert torch.all(z >= lo[:, None] - 1e-12) and torch.all(z <= hi[:, None] + 1e-12)
        h = torch.relu(z)
    diffs = layers[-1](h) @ spec.T
    assert torch.all(diffs >= final[:, None] - 1e-12)


def test_only_linear_relu_chains_are_taken() -> None:
    assert LinearReluChain.from_module(nn.Sequential(nn.Linear(3, 2))) is not None
    assert LinearReluChain.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU())) is None
    assert LinearReluChain.from_module(nn.Sequential(nn.Flatten(), nn.Linear(3, 2))) is None
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    assert LinearReluChain.from_module(conv) is None
