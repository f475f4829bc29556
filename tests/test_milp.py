"""The MILP bounds against independent computations: exact optima by enumerating activation patterns and the
vertices of each linear region (2 inputs), dense grids and sampling (never above the bound), CROWN (never
tighter), and the two solvers against each other."""

from __future__ import annotations

import functools
import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import faithverify.bounds.milp.model as milp_model
from faithverify.bounds import crown as native_crown
from faithverify.bounds.bounder import BoundMethod, NetworkBounder, pair_specification
from faithverify.bounds.crown import Box
from faithverify.bounds.milp import (
    NetworkMILP,
    PiecewiseLinearNetwork,
    Solver,
    Status,
    logit_diff_bounds_milp,
    soundness_margin,
)
from faithverify.bounds.milp.backends import GurobiBackend, HighsBackend, SolverOptions, solver_rows
from faithverify.bounds.milp.encoding import MilpModel
from faithverify.bounds.milp.tighten import MilpTightening
from faithverify.bounds.softmax import LogitDiffBounds
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.errors import BoundingError
from faithverify.network import SparseMatrix
from faithverify.onnx_io import load_model
from faithverify.onnx_io.layers import ConstAdd, ConstMul, Reshape, Transpose
from tests.conftest import export_onnx, random_cnn, random_mlp

# With the MIP gaps at 1e-9, a bound exceeds the optimum by the soundness margin (~3e-6 on these nets) at most.
EXACT_TOL = 1e-5


def _gurobi_usable() -> bool:
    try:
        import gurobipy as gp

        with gp.Env(empty=True) as env:
            env.setParam("OutputFlag", 0)
            env.start()
            with gp.Model(env=env) as m:
                x = m.addMVar(2, lb=0.0, ub=1.0)
                x.Obj = np.ones(2)
                m.optimize()
                return bool(m.Status == gp.GRB.OPTIMAL)
    except Exception:
        return False


GUROBI = _gurobi_usable()
needs_gurobi = pytest.mark.skipif(not GUROBI, reason="gurobipy cannot optimise even a 2-variable model here")
SOLVERS = [Solver.HIGHS, pytest.param(Solver.GUROBI, marks=needs_gurobi)]


def torch_logits(body: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return body(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def grid(lower: np.ndarray, upper: np.ndarray, n: int) -> np.ndarray:
    axes = [np.linspace(lo, hi, n) for lo, hi in zip(lower, upper, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(lower))


def sampled_max(body: nn.Module, lower: np.ndarray, upper: np.ndarray, w: np.ndarray, n: int = 4000) -> float:
    """Largest ``w · z`` over random points and random vertices of the box."""
    rng = np.random.default_rng(0)
    u = rng.random((n, len(lower)))
    u[: n // 4] = np.round(u[: n // 4])
    return float((torch_logits(body, lower + u * (upper - lower)) @ w).max())


# --- an independent exact maximum for 2 inputs: enumerate activation patterns, then the vertices of each region


def _pieces(body: nn.Sequential) -> list[tuple[str, object]]:
    """The tiny test networks as dense affine maps, ReLUs and max-pool windows (read off the torch layers)."""
    out: list[tuple[str, object]] = []
    for layer in body:
        if isinstance(layer, nn.Linear):
            out.append(
                ("affine", (layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()))
            )
        elif isinstance(layer, nn.ReLU):
            out.append(("relu", None))
        elif isinstance(layer, nn.Conv2d):  # the 1x1 convolutions of the test nets on a [1, 1, 2] image
            assert layer.kernel_size == (1, 1)
            w = layer.weight.detach().double().numpy()[:, 0, 0, 0]
            b = layer.bias.detach().double().numpy()
            # x (2 pixels) -> [channel, pixel] flattened channel-major
            out.append(("affine", (np.kron(w[:, None], np.eye(2)), np.repeat(b, 2))))
        elif isinstance(layer, nn.MaxPool2d):  # over the two pixels of each channel
            out.append(("maxpool", None))
    return out


def exact_max_2d(body: nn.Sequential, lower: np.ndarray, upper: np.ndarray, w: np.ndarray) -> float:
    """``max w · f(x)`` over the box, exactly: for every choice of ReLU signs and max-pool winners the network
    is affine on a polygon ``G x <= h``, whose maximum is at a vertex: an intersection of two of its lines."""
    box_g = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    box_h = np.array([upper[0], -lower[0], upper[1], -lower[1]])
    best = -math.inf
    for p, q, g_rows, h_rows in _regions(_pieces(body), np.eye(2), np.zeros(2), [box_g], [box_h]):
        g, h = np.concatenate(g_rows), np.concatenate(h_rows)
        c, c0 = w @ p, w @ q
        for a, b in itertools.combinations(range(len(g)), 2):
            m = g[[a, b]]
            if abs(np.linalg.det(m)) < 1e-12:
                continue
            x = np.linalg.solve(m, h[[a, b]])
            if np.all(g @ x <= h + 1e-9):
                best = max(best, float(c @ x + c0))
    return best


def _regions(pieces, p, q, g_rows, h_rows):  # type: ignore[no-untyped-def]
    """Yield ``(P, q, G, h)``: the network is ``P x + q`` where ``G x <= h`` (one per pattern)."""
    if not pieces:
        yield p, q, g_rows, h_rows
        return
    (kind, data), rest = pieces[0], pieces[1:]
    if kind == "affine":
        wm, b = data  # type: ignore[misc]
        yield from _regions(rest, wm @ p, wm @ q + b, g_rows, h_rows)
    elif kind == "relu":
        for signs in itertools.product([0.0, 1.0], repeat=len(q)):
            s = np.array(signs)
            # active: z >= 0, i.e. -P x <= q; inactive: P x <= -q
            g = np.where(s[:, None] > 0, -p, p)
            h = np.where(s > 0, q, -q)
            yield from _regions(rest, s[:, None] * p, s * q, [*g_rows, g], [*h_rows, h])
    else:  # max over pixel pairs (2c, 2c + 1)
        n = len(q) // 2
        for winners in itertools.product([0, 1], repeat=n):
            win = np.array([2 * c + k for c, k in enumerate(winners)])
            lose = np.array([2 * c + 1 - k for c, k in enumerate(winners)])
            # x_lose - x_win <= 0
            g, h = p[lose] - p[win], q[win] - q[lose]
            yield from _regions(rest, p[win], q[win], [*g_rows, g], [*h_rows, h])


def tiny_mlp(seed: int) -> nn.Sequential:
    return random_mlp(seed, [2, 4, 3, 3], scale=2.0).double()


def tiny_pool_net(seed: int) -> nn.Sequential:
    """[1, 1, 2] image -> 1x1 Conv (3 channels) -> ReLU -> MaxPool over the 2 pixels -> Linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        Reshape((1, 1, 2)),
        nn.Conv2d(1, 3, 1),
        nn.ReLU(),
        nn.MaxPool2d((1, 2)),
        nn.Flatten(),
        nn.Linear(3, 3),
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    return net


def diff_weights(c: int, i: int, j: int) -> np.ndarray:
    w = np.zeros(c)
    w[j], w[i] = 1.0, -1.0
    return w


@pytest.mark.parametrize("make", [tiny_mlp, tiny_pool_net])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_exact_optimum_on_two_inputs(make, seed: int) -> None:  # type: ignore[no-untyped-def]
    body = make(seed)
    x0 = np.random.default_rng(seed).random(2)
    lower, upper = x0 - 0.6, x0 + 0.6
    milp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS, mip_rel_gap=1e-9, mip_abs_gap=1e-9)
    dense = torch_logits(body, grid(lower, upper, 201))
    for i, j in [(0, 1), (1, 0), (2, 0), (1, 2)]:
        w = diff_weights(3, i, j)
        exact = exact_max_2d(body, lower, upper, w)
        result = milp.max_logit_diff(i, j)
        assert result.exact and result.status == "optimal"
        assert exact <= result.bound <= exact + EXACT_TOL, (i, j, exact, result)
        assert (dense @ w).max() <= result.bound
        # The grid checks exact_max_2d itself: never above it, and close below it.
        assert exact - 0.1 <= (dense @ w).max() <= exact + 1e-9
        # The witness is a real input attaining the bound (checked with torch, not the MILP's own forward pass).
        assert result.witness is not None
        assert float(torch_logits(body, result.witness[None])[0] @ w) >= exact - EXACT_TOL


def test_three_inputs_against_grid_and_witness() -> None:
    body = random_mlp(4, [3, 6, 5, 3], scale=2.0).double()
    lower, upper = np.array([0.1, -0.3, 0.2]), np.array([0.7, 0.4, 0.5])
    milp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS, mip_rel_gap=1e-9, mip_abs_gap=1e-9)
    dense = torch_logits(body, grid(lower, upper, 41))
    for i, j in [(0, 1), (2, 1)]:
        w = diff_weights(3, i, j)
        result = milp.max_logit_diff(i, j)
        assert result.witness is not None and result.exact
        attained = float(torch_logits(body, result.witness[None])[0] @ w)
        assert attained <= result.bound <= attained + EXACT_TOL
        assert (dense @ w).max() <= result.bound


def test_cnn_with_padding_and_maxpool_is_sound_and_attained() -> None:
    torch.manual_seed(3)
    body = nn.Sequential(
        Reshape((1, 2, 2)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # auto_LiRPA's CROWN needs stride == kernel size
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()
    x0 = np.random.default_rng(3).random(4)
    lower, upper = x0 - 0.3, x0 + 0.3
    milp = NetworkMILP(body, lower, upper, mip_rel_gap=1e-9, mip_abs_gap=1e-9)
    dense = torch_logits(body, grid(lower, upper, 17))
    crown = NetworkBounder(body, 4, 3).logit_diff_bounds(
        torch.from_numpy(lower[None]), torch.from_numpy(upper[None]), BoundMethod.CROWN
    )
    for i, j in [(0, 1), (1, 2), (2, 0)]:
        w = diff_weights(3, i, j)
        result = milp.max_logit_diff(i, j)
        assert result.witness is not None and result.exact
        attained = float(torch_logits(body, result.witness[None])[0] @ w)
        assert (dense @ w).max() <= result.bound <= attained + EXACT_TOL
        assert (
            result.bound <= crown.upper[0, i, j] + EXACT_TOL
        )  # equal where CROWN is exact, but for the margin


def test_onnx_cnn_flat_body(tmp_path: Path) -> None:
    """A CNN as the pipeline sees it: exported to ONNX, loaded, flat_body() (Reshape, Conv, ReLU, MaxPool,
    Reshape, Linear, ReLU, Linear), CROWN pre-bounds from auto_LiRPA."""
    loaded = load_model(export_onnx(random_cnn(0), torch.zeros(1, 1, 8, 8), tmp_path / "cnn.onnx"))
    body = loaded.module.flat_body().double()
    x0 = np.random.default_rng(0).random(64)
    lower, upper = np.clip(x0 - 0.1, 0, 1), np.clip(x0 + 0.1, 0, 1)
    milp = NetworkMILP(body, lower, upper, mip_rel_gap=1e-9, mip_abs_gap=1e-9)  # exact: see EXACT_TOL
    assert milp.num_binaries > 0
    crown = NetworkBounder(body, 64, 5).logit_diff_bounds(
        torch.from_numpy(lower[None]), torch.from_numpy(upper[None]), BoundMethod.CROWN
    )
    for i, j in [(0, 1), (2, 3)]:
        w = diff_weights(5, i, j)
        result = milp.max_logit_diff(i, j)
        assert result.exact and result.witness is not None
        attained = float(torch_logits(body, result.witness[None])[0] @ w)
        assert sampled_max(body, lower, upper, w) <= result.bound <= attained + EXACT_TOL
        assert result.bound < crown.upper[0, i, j] - 1e-3  # strictly tighter on this net


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_tighter_than_crown_and_above_sampling(eps: float) -> None:
    body = random_mlp(11, [10, 8, 8, 4], scale=1.5).double()
    x0 = np.random.default_rng(11).random(10)
    lower, upper = x0 - eps, x0 + eps
    lo_t, up_t = torch.from_numpy(lower[None]), torch.from_numpy(upper[None])
    net = BoundNetwork.of(PiecewiseLinearNetwork.from_module(body, 10))
    _, layers = native_crown.crown(net, Box.of(lo_t, up_t), pair_specification(4))
    pre = [(lo[0].numpy(), hi[0].numpy()) for lo, hi in layers.as_list()]
    crown = LogitDiffBounds.from_lower(
        NetworkBounder(body, 10, 4).logit_diff_bounds(lo_t, up_t, BoundMethod.CROWN).lower
    )
    milp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS, preactivation=pre)
    for i, j in itertools.permutations(range(4), 2):
        result = milp.max_logit_diff(i, j)
        assert result.exact
        assert sampled_max(body, lower, upper, diff_weights(4, i, j)) <= result.bound
        assert (
            result.bound <= crown.upper[0, i, j] + EXACT_TOL
        )  # equal where CROWN is exact, but for the margin


def test_logit_diff_bounds_for_all_pairs_and_a_subset() -> None:
    body = random_mlp(12, [5, 8, 3], scale=2.0).double()
    x0 = np.random.default_rng(12).random(5)
    lower, upper = x0 - 0.2, x0 + 0.2
    full = logit_diff_bounds_milp(body, lower, upper, solver=Solver.HIGHS)
    assert full.lower.shape == (1, 3, 3)
    assert np.allclose(full.lower[0], -full.upper[0].T)
    z = torch_logits(body, lower + np.random.default_rng(0).random((3000, 5)) * (upper - lower))
    d = z[:, None, :] - z[:, :, None]
    assert np.all(d <= full.upper) and np.all(d >= full.lower)
    # Only (0, 1): upper[0, 1] and lower[1, 0] are solved; the rest keep the fallback.
    fallback = LogitDiffBounds(lower=np.full((1, 3, 3), -50.0), upper=np.full((1, 3, 3), 50.0))
    part = logit_diff_bounds_milp(body, lower, upper, pairs=[(0, 1)], fallback=fallback, solver=Solver.HIGHS)
    assert part.upper[0, 0, 1] == pytest.approx(full.upper[0, 0, 1])
    assert part.lower[0, 1, 0] == pytest.approx(full.lower[0, 1, 0])
    assert part.upper[0, 1, 2] == 50.0 and part.lower[0, 2, 1] == -50.0
    none = logit_diff_bounds_milp(body, lower, upper, pairs=[], solver=Solver.HIGHS)
    assert np.isinf(none.upper[0, 0, 1]) and none.upper[0, 0, 0] == 0.0


@needs_gurobi
def test_gurobi_and_highs_agree() -> None:
    body = random_mlp(13, [8, 10, 10, 4], scale=1.5).double()
    x0 = np.random.default_rng(13).random(8)
    lower, upper = x0 - 0.15, x0 + 0.15
    kwargs = {"mip_rel_gap": 1e-9, "mip_abs_gap": 1e-9}
    highs = NetworkMILP(body, lower, upper, solver=Solver.HIGHS, **kwargs)  # type: ignore[arg-type]
    gurobi = NetworkMILP(body, lower, upper, solver=Solver.GUROBI, **kwargs)  # type: ignore[arg-type]
    assert (highs.solver_used(), gurobi.solver_used()) == ("highs", "gurobi")
    for i, j in itertools.permutations(range(4), 2):
        a, b = highs.max_logit_diff(i, j), gurobi.max_logit_diff(i, j)
        assert a.exact and b.exact
        assert a.bound == pytest.approx(b.bound, abs=1e-5)


@functools.cache
def hard_problem() -> tuple[nn.Sequential, np.ndarray, np.ndarray]:
    """Minutes for HiGHS to solve (50 inputs, 3x30 hidden, a large box)."""
    body = random_mlp(5, [50, 30, 30, 30, 5]).double()
    x0 = np.random.default_rng(0).random(50)
    return body, x0 - 0.5, x0 + 0.5


@functools.cache
def hard_problem_reachable() -> float:
    """A value of ``z_1 - z_0`` that the hard problem's network attains in its box."""
    body, lower, upper = hard_problem()
    return pgd_max(body, lower, upper, diff_weights(5, 0, 1))


def pgd_max(body: nn.Module, lower: np.ndarray, upper: np.ndarray, w: np.ndarray) -> float:
    """A strong lower bound on the maximum: signed-gradient ascent from random points, best value seen."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(lower + rng.random((64, len(lower))) * (upper - lower))
    lo, hi, wt = torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(w)
    best = -math.inf
    for step in range(40):
        x.requires_grad_(True)
        value = body(x) @ wt
        (grad,) = torch.autograd.grad(value.sum(), x)
        best = max(best, float(value.detach().max()))
        x = torch.clamp(x.detach() + 0.05 * (hi - lo) * 0.95**step * grad.sign(), lo, hi)
    return best


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_limit_reports_the_dual_bound(solver: Solver) -> None:
    body, lower, upper = hard_problem()
    milp = NetworkMILP(body, lower, upper, solver=solver)
    result = milp.max_logit_diff(0, 1, time_limit=0.3)
    assert result.status == "time_limit" and not result.exact
    assert result.incumbent is not None and result.witness_value is not None
    assert result.bound > result.incumbent + 1e-3  # the dual bound, not the incumbent
    assert result.bound >= hard_problem_reachable()
    # The solver's value of its incumbent may differ from the network's by its feasibility tolerances.
    assert result.witness_value == pytest.approx(result.incumbent, abs=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_cutoff_stops_early_and_stays_sound(solver: Solver) -> None:
    body, lower, upper = hard_problem()
    w = diff_weights(5, 0, 1)
    reachable = hard_problem_reachable()
    milp = NetworkMILP(body, lower, upper, solver=solver)
    trivial = milp.model.interval_max(*milp.model.objective(w))
    # Far above the maximum (the root LP bound is ~1.2, the maximum ~0.4): proven at the root, before the
    # solve is done, with a bound below the cutoff and below the bound from the variables' bounds alone.
    cut = trivial - 0.1
    above = milp.max_logit_diff(0, 1, cutoff=cut, time_limit=30)
    assert above.status == Status.BOUND_BELOW_CUTOFF and not above.exact
    assert reachable <= above.bound <= cut
    assert above.seconds < 5
    # Below a value the network reaches: an incumbent above the cutoff ends the solve; the bound stays sound.
    below = milp.max_logit_diff(0, 1, cutoff=reachable - 0.1, time_limit=30)
    assert below.status == Status.INCUMBENT_ABOVE_CUTOFF and not below.exact
    assert below.incumbent is not None and below.incumbent > reachable - 0.1
    assert below.bound >= reachable and below.bound >= below.incumbent
    assert below.seconds < 5


def small_milp(solver: Solver, seed: int = 5, point_seed: int = 0) -> tuple[NetworkMILP, np.ndarray]:
    """A random 20-12-12-3 MLP's MILP on the box of half-width 0.3 around a random point (more than 10 binaries,
    solved exactly in well under a second), and that point."""
    body = random_mlp(seed, [20, 12, 12, 3]).double()
    x0 = np.random.default_rng(point_seed).random(20)
    milp = NetworkMILP(body, x0 - 0.3, x0 + 0.3, solver=solver)
    assert milp.num_binaries > 10
    return milp, x0


@pytest.mark.parametrize("solver", SOLVERS)
def test_stop_below_stops_on_the_bound_and_no_stop_carries_over(solver: Solver) -> None:
    milp, _ = small_milp(solver)
    exact = milp.max_logit_diff(0, 1)
    assert exact.status == Status.OPTIMAL
    # A level above the maximum: the solve stops once its bound is there, before it is exact.
    stopped = milp.max_logit_diff(0, 1, stop_below=exact.bound + 0.3)
    assert stopped.status == Status.BOUND_BELOW_CUTOFF and exact.bound <= stopped.bound <= exact.bound + 0.3
    # Each stop is this solve's own: HiGHS keeps a callback's interrupt flag between runs, and a flag left
    # set would end the next solve at once. A level below the maximum is never reached: solved exactly.
    for _ in range(2):
        again = milp.max_logit_diff(0, 1, stop_below=exact.bound - 0.1)
        assert again.status == Status.OPTIMAL and again.bound == pytest.approx(exact.bound, abs=1e-5)
        milp.max_logit_diff(0, 1, cutoff=exact.bound + 1.0)  # stops on its bound: sets the flag


def test_over_the_gurobi_size_limit_falls_back_to_highs(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(2500, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x0 = np.random.default_rng(0).random(2500)
    with caplog.at_level(logging.INFO, logger="faithverify.bounds.milp"):
        milp = NetworkMILP(body, x0 - 0.01, x0 + 0.01, solver=Solver.AUTO)
    if GUROBI and not milp_model.gurobi_size_limited():
        pytest.skip("this Gurobi license has no size limit")
    assert milp.solver_used() == "highs"
    assert any("HiGHS" in r.getMessage() for r in caplog.records)
    result = milp.max_logit_diff(0, 1)
    assert result.solver == "highs" and result.exact


@needs_gurobi
def test_license_refusal_at_optimize_falls_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not milp_model.gurobi_size_limited():
        pytest.skip("this Gurobi license has no size limit")
    # Pretend the license has no limit: the model goes to Gurobi, whose optimize() then refuses it (10010).
    monkeypatch.setattr(milp_model, "gurobi_size_limited", lambda: False)
    body = nn.Sequential(nn.Linear(2100, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x0 = np.random.default_rng(0).random(2100)
    milp = NetworkMILP(body, x0 - 0.01, x0 + 0.01, solver=Solver.AUTO)
    assert milp.solver_used() == "gurobi"
    with caplog.at_level(logging.WARNING, logger="faithverify.bounds.milp"):
        result = milp.max_logit_diff(1, 0)
    assert result.solver == "highs" and milp.solver_used() == "highs"
    assert any("falling back to HiGHS" in r.getMessage() for r in caplog.records)


# --- the network conversion


def test_conversion_matches_torch_on_assorted_layers() -> None:
    torch.manual_seed(0)
    body = nn.Sequential(
        Reshape((2, 5, 6)),
        ConstMul(torch.tensor([[[2.0]], [[0.5]]])),
        ConstAdd(torch.tensor(0.25)),
        nn.Conv2d(2, 4, 3, stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2),
        nn.BatchNorm2d(4).eval(),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1, padding=1, ceil_mode=True),
        nn.AvgPool2d(2, ceil_mode=True),
        Transpose((0, 1, 3, 2)),
        nn.Conv2d(4, 3, 2, padding="same", padding_mode="reflect"),
        nn.Flatten(),
        nn.Linear(3 * 2 * 3, 7),
        nn.ReLU(),
        nn.Linear(7, 4),
    ).double()
    with torch.no_grad():
        bn = body[4]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    network = PiecewiseLinearNetwork.from_module(body, 60)
    x = np.random.default_rng(0).standard_normal((20, 60))
    assert np.allclose(network.forward(x), torch_logits(body, x), atol=1e-12)
    assert network.output_dim == 4


def test_linear_on_the_last_axis() -> None:
    body = nn.Sequential(Reshape((3, 4)), nn.Linear(4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(6, 2)).double()
    network = PiecewiseLinearNetwork.from_module(body, 12)
    x = np.random.default_rng(1).standard_normal((5, 12))
    assert np.allclose(network.forward(x), torch_logits(body, x), atol=1e-12)


def test_unsupported_layers_are_refused() -> None:
    with pytest.raises(BoundingError, match="Sigmoid"):
        PiecewiseLinearNetwork.from_module(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), 3)
    with pytest.raises(BoundingError, match="training mode"):
        PiecewiseLinearNetwork.from_module(nn.Sequential(nn.Linear(3, 3), nn.Dropout().train()), 3)


def test_given_bounds_are_checked_and_start_points_are_feasible() -> None:
    body = random_mlp(14, [4, 6, 6, 3], scale=2.0).double()
    x0 = np.random.default_rng(14).random(4)
    lower, upper = x0 - 0.3, x0 + 0.3
    with pytest.raises(ValueError, match="not sound"):
        NetworkMILP(body, lower, upper, preactivation=[(np.full(6, 50.0), np.full(6, 60.0)), None])
    with pytest.raises(ValueError, match="layer bounds"):
        NetworkMILP(body, lower, upper, preactivation=[None])
    milp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS)
    model = milp.model
    for x in lower + np.random.default_rng(2).random((20, 4)) * (upper - lower):
        v = model.complete(milp.network, x)
        rows = model.matrix.matvec(v)
        assert np.all(rows >= model.row_lower - 1e-9) and np.all(rows <= model.row_upper + 1e-9)
        assert np.all(v[model.integrality] == np.round(v[model.integrality]))
        cost, offset = model.objective(diff_weights(3, 0, 2))
        assert cost @ v + offset == pytest.approx(
            float(torch_logits(body, x[None])[0] @ diff_weights(3, 0, 2))
        )


def test_lp_tightening_is_sound_and_only_tightens() -> None:
    body = random_mlp(15, [6, 12, 12, 12, 3], scale=1.5).double()
    x0 = np.random.default_rng(15).random(6)
    lower, upper = x0 - 0.3, x0 + 0.3
    plain = NetworkMILP(body, lower, upper, solver=Solver.HIGHS, tighten=False)
    tight = NetworkMILP(body, lower, upper, solver=Solver.HIGHS, tighten=True)
    assert tight.num_binaries <= plain.num_binaries
    widths = [(u - lo).sum() for lo, u in tight.model.layer_bounds]
    assert sum(widths) < sum((u - lo).sum() for lo, u in plain.model.layer_bounds)  # it does something here
    # Pre-activations of sampled inputs lie within the tightened bounds.
    h = torch.from_numpy(lower + np.random.default_rng(3).random((20000, 6)) * (upper - lower))
    for (lo, u), (p_lo, p_up) in zip(tight.model.layer_bounds, plain.model.layer_bounds, strict=True):
        assert np.all(lo >= p_lo) and np.all(u <= p_up)
    _assert_preactivations_within(body, h, tight)
    _assert_same_exact_logit_bounds(plain, tight)


def _assert_preactivations_within(body: torch.nn.Sequential, inputs: torch.Tensor, milp: NetworkMILP) -> None:
    """The pre-activations of an MLP ``body`` (Linear/ReLU pairs) at ``inputs`` lie within the model's bounds."""
    h = inputs
    for k, (lo, u) in enumerate(milp.model.layer_bounds):
        with torch.no_grad():
            z = body[2 * k](h)
            h = torch.relu(z)
        assert np.all(z.numpy() >= lo) and np.all(z.numpy() <= u)


def _assert_same_exact_logit_bounds(a: NetworkMILP, b: NetworkMILP) -> None:
    """Tighter intermediate bounds change the model, not its optimum: both solve two logit differences exactly
    to the same value."""
    for i, j in [(0, 1), (2, 0)]:
        first, second = a.max_logit_diff(i, j), b.max_logit_diff(i, j)
        assert first.exact and second.exact
        assert first.bound == pytest.approx(second.bound, abs=1e-4)


def _tiny_coefficient_model() -> MilpModel:
    """max y s.t. y <= 1e-10 x, x in [0, 1e5], plus one binary: the maximum is 1e-5, at x = 1e5 (far above the
    MILP's soundness margin, 1e-6)."""
    return MilpModel(
        col_lower=np.zeros(3),
        col_upper=np.array([1e5, 1.0, 1.0]),
        integrality=np.array([False, False, True]),
        matrix=SparseMatrix.from_coo(
            np.array([0, 0, 1]), np.array([1, 0, 2]), np.array([1.0, -1e-10, 1.0]), (2, 3)
        ),
        row_lower=np.array([-np.inf, 0.0]),
        row_upper=np.array([0.0, 1.0]),
        logits=SparseMatrix.from_coo(np.array([0]), np.array([1]), np.array([1.0]), (1, 3)),
        logit_offset=np.zeros(1),
        input_dim=1,
        layer_bounds=[],
        groups=[],
    )


def test_highs_drops_tiny_matrix_entries() -> None:
    """The premise of backends.solver_rows: HiGHS (small_matrix_value 1e-9) reads ``y <= 1e-10 x`` as
    ``y <= 0``, a different model, and says its maximum is 0."""
    import highspy

    model = _tiny_coefficient_model()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    a = model.matrix
    h.passModel(
        3, 2, a.nnz, int(highspy.MatrixFormat.kRowwise), int(highspy.ObjSense.kMaximize), 0.0,
        np.array([0.0, 1.0, 0.0]), model.col_lower, model.col_upper, model.row_lower, model.row_upper,
        a.indptr().astype(np.int32), a.cols.astype(np.int32), a.vals, model.integrality.astype(np.int32),
    )  # fmt: skip
    h.run()
    assert h.getInfo().objective_function_value == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_tiny_matrix_entries_are_relaxed_not_dropped(solver: Solver) -> None:
    """What the solvers get is a relaxation of the model, so the dual bound stays above its maximum."""
    model = _tiny_coefficient_model()
    matrix, lower, upper = solver_rows(model)
    assert matrix.nnz == 2 and upper[0] >= 1e-5 and lower[0] == -np.inf
    cost = np.array([0.0, 1.0, 0.0])
    backend = (GurobiBackend if solver is Solver.GUROBI else HighsBackend)(model, SolverOptions())
    raw = backend.solve(cost, 0.0, 10.0, None, np.array([1e5, 1e-5, 0.0]))
    assert raw.dual_bound >= 1e-5 - 1e-12


def test_milp_tightening_is_sound_and_tighter_than_the_lps() -> None:
    body = random_mlp(15, [6, 12, 12, 12, 3], scale=1.5).double()
    x0 = np.random.default_rng(15).random(6)
    lower, upper = x0 - 0.3, x0 + 0.3
    lp = NetworkMILP(body, lower, upper, solver=Solver.HIGHS)
    deep = NetworkMILP(
        body,
        lower,
        upper,
        solver=Solver.HIGHS,
        milp_tightening=MilpTightening(last_layers=2, seconds_per_neuron=5),
    )
    assert deep.num_binaries <= lp.num_binaries
    # The first layer's bounds are exact already; the last two get MILPs, and only get tighter.
    np.testing.assert_array_equal(deep.model.layer_bounds[0][0], lp.model.layer_bounds[0][0])
    for k in (1, 2):
        (lo, hi), (lp_lo, lp_hi) = deep.model.layer_bounds[k], lp.model.layer_bounds[k]
        assert np.all(lo >= lp_lo) and np.all(hi <= lp_hi)
        assert (hi - lo).sum() < (lp_hi - lp_lo).sum()  # it does something here
    # Pre-activations of sampled inputs, and at PGD-like corners, lie within the MILP's bounds.
    rng = np.random.default_rng(4)
    h = torch.from_numpy(
        np.concatenate(
            [
                lower + rng.random((20000, 6)) * (upper - lower),
                np.where(rng.random((5000, 6)) < 0.5, lower, upper),
            ]
        )
    )
    _assert_preactivations_within(body, h, deep)
    _assert_same_exact_logit_bounds(lp, deep)


def test_highs_runs_with_changing_thread_counts() -> None:
    body = random_mlp(16, [5, 8, 8, 3]).double()
    x0 = np.random.default_rng(16).random(5)
    bounds = {
        threads: NetworkMILP(body, x0 - 0.2, x0 + 0.2, solver=Solver.HIGHS, threads=threads)
        .max_logit_diff(0, 1)
        .bound
        for threads in (1, 2, 1)
    }
    assert bounds[1] == pytest.approx(bounds[2], abs=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_pure_lp_model_is_bounded_by_its_optimum(solver: Solver) -> None:
    """All ReLUs stably active: no binaries, an LP, where HiGHS reports mip_dual_bound = 0 (not a bound)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        body[0].bias += 10.0
    lower, upper = np.zeros(3), np.ones(3)
    milp = NetworkMILP(body, lower, upper, solver=solver)
    assert milp.num_binaries == 0 and milp.num_constraints > 0
    w = diff_weights(3, 0, 1)
    result = milp.max_logit_diff(0, 1)
    assert result.exact and result.witness is not None
    attained = float(torch_logits(body, result.witness[None])[0] @ w)
    assert attained > 1.0  # far from 0, the value HiGHS reports as the dual bound of an LP
    margin = soundness_margin(attained, milp.model.total_range())
    assert sampled_max(body, lower, upper, w) <= result.bound <= attained + margin + 1e-9
    assert result.bound < milp.model.interval_max(*milp.model.objective(w)) - 1e-3


def test_single_linear_layer() -> None:
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(3, 3)).double()
    milp = NetworkMILP(body, np.zeros(3), np.ones(3), solver=Solver.HIGHS)
    w = diff_weights(3, 2, 0)
    assert milp.max_logit_diff(2, 0).bound >= sampled_max(body, np.zeros(3), np.ones(3), w)
