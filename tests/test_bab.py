"""Branch and bound with beta-CROWN: sound against sampling, equal to the exact MILP optimum when run to the end,
anytime (its bound only improves, and a time limit returns a sound bound), and the portfolio with the MILP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from faithverify.bounds.bab import BabSettings, NetworkBaB
from faithverify.bounds.milp import NetworkMILP, Solver
from faithverify.bounds.milp.backends import Status
from faithverify.bounds.portfolio import ExactSolver, Refiner
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.network import PiecewiseLinearNetwork
from tests.conftest import random_mlp

EXACT_TOL = 1e-4  # the MIP-style relative gap both methods stop at, on values of size ~1


def _sampled_max(
    body: nn.Module, lower: np.ndarray, upper: np.ndarray, w: np.ndarray, n: int = 20000
) -> float:
    rng = np.random.default_rng(0)
    u = rng.random((n, len(lower)))
    u[: n // 4] = np.round(u[: n // 4])
    xs = torch.from_numpy(lower + u * (upper - lower))
    with torch.no_grad():
        return float((body(xs).numpy() @ w).max())


def _problem(seed: int, dims: list[int], eps: float) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    body = random_mlp(seed, dims, scale=1.3).double()
    x0 = np.random.default_rng(seed).random(dims[0])
    return body, np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)


def _weights(c: int, i: int, j: int) -> np.ndarray:
    w = np.zeros(c)
    w[j], w[i] = 1.0, -1.0
    return w


@pytest.mark.parametrize(("seed", "eps"), [(3, 0.2), (5, 0.3)])
def test_reaches_the_exact_optimum_and_is_sound(seed: int, eps: float) -> None:
    body, lower, upper = _problem(seed, [10, 16, 16, 16, 4], eps)
    form = PiecewiseLinearNetwork.from_module(body, 10)
    bab = NetworkBaB(BoundNetwork.of(form), lower, upper)
    milp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS)
    for i, j in list(itertools.permutations(range(4), 2))[:6]:
        r = bab.max_logit_diff(i, j, time_limit=60)
        exact = milp.max_logit_diff(i, j)
        assert exact.exact and r.exact and r.status == Status.OPTIMAL
        assert r.bound >= exact.bound - 2 * EXACT_TOL * (1 + abs(exact.bound))  # never below the optimum
        assert r.bound <= exact.bound + 2 * EXACT_TOL * (1 + abs(exact.bound))  # and reaches it
        assert r.bound >= _sampled_max(body, lower, upper, _weights(4, i, j))
        assert r.witness is not None and r.witness_value is not None
        with torch.no_grad():
            value = float(body(torch.from_numpy(r.witness[None]))[0] @ torch.from_numpy(_weights(4, i, j)))
        assert value == pytest.approx(r.witness_value, abs=1e-9)


def test_anytime_bound_only_improves_and_a_time_limit_is_sound() -> None:
    body, lower, upper = _problem(7, [12, 16, 16, 16, 5], 0.3)
    form = PiecewiseLinearNetwork.from_module(body, 12)
    bab = NetworkBaB(BoundNetwork.of(form), lower, upper, settings=BabSettings(batch=16))
    w = _weights(5, 0, 1)
    short = bab.search(w, time_limit=0.3)
    bounds = [b for _, b in short.history]
    assert bounds == sorted(bounds, reverse=True)  # never increases
    full = bab.search(w, time_limit=60)
    assert full.exact
    assert short.bound >= full.bound - EXACT_TOL * (1 + abs(full.bound))
    assert short.bound >= _sampled_max(body, lower, upper, w)


def test_a_stalled_search_stops_early_with_a_sound_bound() -> None:
    from faithverify.bounds.bab import _stalled

    history = [(0.0, 1.0), (0.1, 0.5), (0.2, 0.49995)]
    assert _stalled(history, now=1.2, seconds=1.0, gain=1e-4)  # less than 1e-4 in the last second
    assert not _stalled(history, now=1.05, seconds=1.0, gain=1e-4)  # 0.5 of gain within the last second
    assert not _stalled(history, now=0.5, seconds=1.0, gain=1e-4)  # not running that long yet
    body, lower, upper = _problem(7, [12, 16, 16, 16, 5], 0.3)
    bab = NetworkBaB(BoundNetwork.of(PiecewiseLinearNetwork.from_module(body, 12)), lower, upper)
    w = _weights(5, 0, 1)
    stalled = bab.search(w, time_limit=60, stall=(0.05, 10.0))  # any gain below 10 counts as a stall
    assert stalled.status == Status.TIME_LIMIT and stalled.seconds < 30
    assert stalled.bound >= _sampled_max(body, lower, upper, w)


def test_stops_at_the_callers_levels() -> None:
    body, lower, upper = _problem(3, [10, 16, 16, 16, 4], 0.2)
    bab = NetworkBaB(BoundNetwork.of(PiecewiseLinearNetwork.from_module(body, 10)), lower, upper)
    exact = bab.search(_weights(4, 1, 2), time_limit=60)
    assert exact.exact
    high = bab.search(_weights(4, 1, 2), stop_below=exact.bound + 1.0)
    assert high.status == Status.BOUND_BELOW_CUTOFF and high.bound <= exact.bound + 1.0
    below = bab.search(_weights(4, 1, 2), cutoff=exact.best - 0.5)
    assert below.status == Status.INCUMBENT_ABOVE_CUTOFF and below.best > exact.best - 0.5


def test_cnn_with_max_pool_is_sound() -> None:
    torch.manual_seed(2)
    body = nn.Sequential(
        nn.Unflatten(1, (1, 6, 6)),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(27, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()
    x0 = np.random.default_rng(2).random(36)
    lower, upper = np.clip(x0 - 0.15, 0, 1), np.clip(x0 + 0.15, 0, 1)
    form = PiecewiseLinearNetwork.from_module(body, 36)
    bab = NetworkBaB(BoundNetwork.of(form), lower, upper)
    milp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS)
    for i, j in [(0, 1), (2, 0)]:
        r = bab.max_logit_diff(i, j, time_limit=2)  # max-pools are not split: it may not finish, but is sound
        exact = milp.max_logit_diff(i, j)
        assert exact.exact and r.bound >= exact.bound - 1e-6
        assert r.bound >= _sampled_max(body, lower, upper, _weights(3, i, j))


@pytest.mark.parametrize("refiners", [(Refiner.BAB,), (Refiner.MILP,), (Refiner.BAB, Refiner.MILP)])
def test_portfolio_members_agree_with_the_exact_optimum(refiners: tuple[Refiner, ...]) -> None:
    body, lower, upper = _problem(5, [10, 16, 16, 16, 4], 0.3)
    form = PiecewiseLinearNetwork.from_module(body, 10)
    solver = ExactSolver(form, lower, upper, refiners=refiners, milp_solver=Solver.HIGHS)
    exact = NetworkMILP(body, lower, upper, solver=Solver.HIGHS).max_logit_diff(2, 3)
    r = solver.max_logit_diff(2, 3, time_limit=30)
    assert r.bound >= exact.bound - 2 * EXACT_TOL * (1 + abs(exact.bound))
    assert r.bound <= exact.bound + 2 * EXACT_TOL * (1 + abs(exact.bound))


def test_a_leaf_lp_with_tiny_weights_keeps_its_feasible_points() -> None:
    """A decided leaf whose split row has a thousand weights of 3e-10 (HiGHS drops entries <= 1e-9): with them
    dropped, "z >= 0" read "0 >= 1.5e-7 - slack" and the leaf came out empty (-inf), though x = 1 gives
    z = 1.5e-7 > 0. The maximum of relu(z) must stay at least 1.5e-7 (bab.leaf_maximum)."""
    from faithverify.bounds.bab import leaf_maximum
    from faithverify.bounds.crown import Box

    n = 1000
    body = nn.Sequential(nn.Linear(n, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        body[0].weight.fill_(3e-10)
        body[0].bias.fill_(-1.5e-7)
        body[2].weight.fill_(1.0)
        body[2].bias.zero_()
    net = BoundNetwork.of(PiecewiseLinearNetwork.from_module(body, n))
    relu = next(k for k, layer in enumerate(net.layers) if type(layer).__name__ == "Relu")
    box = Box.of(torch.zeros(1, n, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64))
    lower = {relu: torch.tensor([[-1.5e-7]], dtype=torch.float64)}
    upper = {relu: torch.tensor([[1.5e-7]], dtype=torch.float64)}
    split = {relu: torch.tensor([[1]])}  # decided active
    out = leaf_maximum(net, box, lower, upper, split, 0, torch.ones(1, dtype=torch.float64))
    assert out is not None
    value, _ = out
    assert value >= 1.5e-7
