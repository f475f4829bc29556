"""Branch and bound on the coupled terms (bounds/coupled_bab.py): sound, never looser, exact when finished."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faithverify.attack import input_box
from faithverify.bounds import coupled_bab
from faithverify.bounds.bounder import BoundMethod, PairBounder
from faithverify.bounds.coupled import coupled_forms
from faithverify.bounds.coupled_bab import PairedBaB, search_terms
from faithverify.bounds.crown import Box
from faithverify.bounds.milp import Solver
from faithverify.bounds.milp.model import NetworkMILP
from faithverify.pair import Pair, load_pair
from tests.conftest import export_onnx, random_mlp
from tests.test_coupled import strangers  # noqa: F401  (fixture)


def _setup(pair: Pair, x0: np.ndarray, eps: float):
    bounder = PairBounder(pair, torch.device("cpu"))
    lower, upper = input_box(x0, eps)
    (t, t_layers), (s, s_layers) = bounder.logit_bounds_with_layers(lower, upper, BoundMethod.ALPHA_CROWN)
    assert t_layers is not None and s_layers is not None
    coupled = bounder.coupled(
        lower, upper, (t, s), (t_layers, s_layers), [torch.from_numpy(x0.astype(np.float64))]
    )
    nets = (bounder.bounders[0].network, bounder.bounders[1].network)
    return nets, (t_layers, s_layers), (t, s), lower.reshape(-1), upper.reshape(-1), coupled


def _sampled_terms(pair: Pair, lower: np.ndarray, upper: np.ndarray, samples: int) -> np.ndarray:
    """``[2, C]``: the largest ``sigma_t,i - sigma_s,i`` (row 0) and its mirror (row 1) over random points and
    vertices of the box, by onnxruntime."""
    rng = np.random.default_rng(0)
    u = rng.random((samples, len(lower)))
    u[: samples // 4] = np.round(u[: samples // 4])
    xs = (lower + u * (upper - lower)).astype(np.float32)
    xs = np.clip(xs, lower.astype(np.float32), upper.astype(np.float32))
    gap = pair.gap_onnxruntime(xs)
    return np.stack([gap.max(axis=0), (-gap).max(axis=0)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_is_sound_and_never_looser(strangers: Pair, seed: int) -> None:  # noqa: F811
    x0 = np.random.default_rng(seed).random((1, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, coupled = _setup(strangers, x0, 0.1)
    before = coupled.per_term[0]
    outcome = search_terms(
        nets, layers, diffs, lower, upper, x0.reshape(-1), before, target=None,
        deadline=time.monotonic() + 5.0,
    )  # fmt: skip
    assert outcome.searched >= 1
    assert np.all(outcome.terms <= before)
    sampled = _sampled_terms(strangers, lower, upper, 20_000)
    assert np.all(sampled <= outcome.terms + 1e-12), (sampled, outcome.terms)


def test_search_gives_up_a_stalled_term(strangers: Pair, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Every term search runs under the stall rule (at least _STALL_MIN seconds, or _STALL_SHARE of the time
    left, without a gain of _STALL_GAIN ends it): the rule was once defined and never passed down."""
    seen: list[tuple[float, float] | None] = []
    original = PairedBaB.term

    def spy(self: PairedBaB, *args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("stall"))  # type: ignore[arg-type]
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PairedBaB, "term", spy)
    x0 = np.random.default_rng(1).random((1, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, coupled = _setup(strangers, x0, 0.1)
    search_terms(
        nets, layers, diffs, lower, upper, x0.reshape(-1), coupled.per_term[0], target=None,
        deadline=time.monotonic() + 4.0,
    )  # fmt: skip
    assert seen and all(s is not None for s in seen)
    seconds, gain = seen[0]  # type: ignore[misc]
    assert coupled_bab._STALL_MIN <= seconds <= max(coupled_bab._STALL_MIN, 4.0 * coupled_bab._STALL_SHARE)
    assert gain == coupled_bab._STALL_GAIN


def test_search_stops_at_a_reached_threshold(strangers: Pair) -> None:  # noqa: F811
    x0 = np.random.default_rng(3).random((1, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, coupled = _setup(strangers, x0, 0.1)
    before = coupled.per_term[0]
    target = float(before.max()) + 0.01  # met already: nothing to search
    outcome = search_terms(
        nets, layers, diffs, lower, upper, x0.reshape(-1), before, target=target,
        deadline=time.monotonic() + 5.0,
    )  # fmt: skip
    assert outcome.searched == 0 and np.array_equal(outcome.terms, before)


def test_paired_branch_and_bound_finishes_at_the_milp_optimum(strangers: Pair) -> None:  # noqa: F811
    """Run to the end, the search on a term's linear form meets its exact maximum over the paired network
    (an independent MILP over the same paired network)."""
    x0 = np.random.default_rng(4).random((1, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, _ = _setup(strangers, x0, 0.15)
    box = Box.of(torch.from_numpy(lower[None]), torch.from_numpy(upper[None]))
    forms = coupled_forms(nets, layers, diffs, box, torch.from_numpy(x0.astype(np.float64)))
    paired = PairedBaB(nets, layers, lower, upper)
    milp = NetworkMILP(paired.net.form, lower, upper, solver=Solver.HIGHS)
    for direction, cls in ((0, 0), (1, 2)):
        w = forms[direction].paired_weights(0, cls)
        result = paired.maximize(w, 0.0, 0.0, time_limit=60.0)
        optimum = milp.maximize(w.numpy(), time_limit=60.0)
        assert result.finished and optimum.exact
        assert optimum.witness is not None
        # (the solver's point may sit outside the box by its feasibility tolerance: clipped, it is a true input)
        taken = float(paired.net.form.forward(np.clip(optimum.witness, lower, upper)[None])[0] @ w.numpy())
        assert taken <= result.bound + 1e-12  # sound: no value the network takes is above it
        assert result.bound <= optimum.bound  # and as tight as the MILP's dual bound


def test_term_search_closes_on_a_value_the_networks_take(strangers: Pair) -> None:  # noqa: F811
    """With the softmax re-relaxed on every domain, the search's bound on a term comes down to the term's value
    at an input it found (onnxruntime's gap there): the term's worst case is known."""
    x0 = np.random.default_rng(5).random((1, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, coupled = _setup(strangers, x0, 0.05)
    box = Box.of(torch.from_numpy(lower[None]), torch.from_numpy(upper[None]))
    forms = coupled_forms(nets, layers, diffs, box, torch.from_numpy(x0.astype(np.float64)), iterations=20)
    terms = coupled.per_term[0]
    direction, cls = (int(k) for k in np.unravel_index(int(terms.argmax()), terms.shape))
    paired = PairedBaB(nets, layers, lower, upper)
    result = paired.term(forms[direction], cls, 1e-5, time_limit=60.0, start=x0.reshape(-1))
    assert result.bound <= terms[direction, cls]
    assert result.witness is not None
    gap = strangers.gap_onnxruntime(result.witness[None].astype(np.float32))[0, cls]
    value = gap if direction == 0 else -gap
    assert value <= result.bound  # sound
    # and close to it: once every ReLU is split the networks are affine, the softmax is not, and its lines on
    # the smallest domains leave this much (the tolerance of a "known" worst case, results.EXACT_GAP)
    assert result.bound - value <= 1e-3


def test_networks_that_do_not_line_up_keep_their_coupled_bound(tmp_path: Path) -> None:
    """A CNN teacher (ReLU then max-pool) and an MLP student cannot be paired layer by layer: the search is
    skipped, the terms stay as given, nothing fails."""
    from torch import nn

    from tests.conftest import export_onnx, random_cnn

    image = torch.zeros(1, 1, 8, 8)
    torch.manual_seed(3)
    student = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 7), nn.ReLU(), nn.Linear(7, 5)
    )
    pair = load_pair(
        export_onnx(random_cnn(2), image, tmp_path / "t.onnx"),
        export_onnx(student, image, tmp_path / "s.onnx"),
    )
    x0 = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, coupled = _setup(pair, x0, 0.05)
    outcome = search_terms(
        nets, layers, diffs, lower, upper, x0.reshape(-1), coupled.per_term[0], target=None,
        deadline=time.monotonic() + 5.0,
    )  # fmt: skip
    assert outcome.searched == 0 and np.array_equal(outcome.terms, coupled.per_term[0])


def test_logit_splits_close_a_term_where_every_relu_is_stable(tmp_path: Path) -> None:
    """Where no ReLU is unstable the networks are affine on the box and ReLU splits have nothing to split: only
    the softmax lines are loose. Splitting a logit difference narrows the interval they are drawn on, so the
    term's bound still comes down to a value the networks take (before logit splits it stayed at the root's)."""
    teacher = random_mlp(41, [8, 6, 4])
    with torch.no_grad():
        teacher[0].bias += 4.0  # every hidden pre-activation stays positive on the box below
    student = copy.deepcopy(teacher)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pair = load_pair(
        export_onnx(teacher, torch.zeros(1, 8), tmp_path / "t.onnx"),
        export_onnx(student, torch.zeros(1, 8), tmp_path / "s.onnx"),
    )
    x0 = np.random.default_rng(0).random((1, 8), dtype=np.float32)
    nets, layers, diffs, lower, upper, coupled = _setup(pair, x0, 0.5)
    assert all(float(lo.min()) > 0 for net_layers in layers for lo, _ in net_layers.pre.values())
    box = Box.of(torch.from_numpy(lower[None]), torch.from_numpy(upper[None]))
    forms = coupled_forms(nets, layers, diffs, box, torch.from_numpy(x0.astype(np.float64)), iterations=20)
    root = float(coupled.per_term[0][0, 0])
    paired = PairedBaB(nets, layers, lower, upper)
    result = paired.term(forms[0], 0, 1e-5, time_limit=5.0, start=x0.reshape(-1))
    assert result.witness is not None
    value = float(pair.gap_onnxruntime(result.witness[None].astype(np.float32))[0, 0])
    sampled = float(_sampled_terms(pair, lower, upper, 20_000)[0, 0])
    assert max(value, sampled) <= result.bound  # sound
    assert root - value > 2e-3  # the root's lines were loose here ...
    assert result.bound - value <= 1e-3  # ... and the logit splits closed them
