"""Eq. 4-6 against direct computation on sampled logits."""

from __future__ import annotations

import numpy as np
import pytest

from faithverify.bounds.softmax import (
    LogitDiffBounds,
    faithfulness_bound,
    faithfulness_from_logit_bounds,
    softmax_bounds,
    softmax_eval_error,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def box_diff_bounds(lo: np.ndarray, hi: np.ndarray) -> LogitDiffBounds:
    """Bounds on z_j - z_i when each logit lies in [lo, hi] independently."""
    return LogitDiffBounds(lower=lo[:, None, :] - hi[:, :, None], upper=hi[:, None, :] - lo[:, :, None])


@pytest.mark.parametrize("scale", [0.1, 3.0, 60.0])
def test_softmax_interval_contains_sampled_softmax(scale: float) -> None:
    rng = np.random.default_rng(1)
    n, c = 20, 10
    center = rng.normal(size=(n, c)) * scale
    radius = rng.uniform(0, 1, size=(n, c)) * scale / 4
    bounds = softmax_bounds(box_diff_bounds(center - radius, center + radius))
    z = center[:, None] + radius[:, None] * rng.uniform(-1, 1, size=(n, 2000, c))
    p = softmax(z)
    assert np.all(p >= bounds.lower[:, None] - 1e-15)
    assert np.all(p <= bounds.upper[:, None] + 1e-15)
    assert np.all((bounds.lower >= 0) & (bounds.upper <= 1) & (bounds.lower <= bounds.upper))


def test_point_bounds_equal_softmax() -> None:
    z = np.array([[1.0, -2.0, 0.5], [300.0, -300.0, 0.0]])
    b = softmax_bounds(LogitDiffBounds.point(z))
    # Equal up to the stated float32 evaluation margin, and on the right side of it.
    r = softmax_eval_error(3)
    assert np.all(b.lower <= softmax(z)) and np.all(softmax(z) <= b.upper)
    np.testing.assert_allclose(b.lower, softmax(z), rtol=1.01 * r, atol=1e-300)
    np.testing.assert_allclose(b.upper, softmax(z), rtol=1.01 * r, atol=1e-300)


def test_faithfulness_at_a_point_is_the_gap() -> None:
    rng = np.random.default_rng(2)
    zt, zs = rng.normal(size=(50, 10)) * 5, rng.normal(size=(50, 10)) * 5
    gap = np.abs(softmax(zt) - softmax(zs)).max(axis=1)
    ub = faithfulness_from_logit_bounds(LogitDiffBounds.point(zt), LogitDiffBounds.point(zs)).value
    assert np.all(ub >= gap)
    np.testing.assert_allclose(ub, gap, atol=2e-5)


def test_faithfulness_bound_covers_sampled_pairs() -> None:
    rng = np.random.default_rng(3)
    n, c = 10, 4
    ct, cs = rng.normal(size=(n, c)) * 2, rng.normal(size=(n, c)) * 2
    r = 0.5
    ub = faithfulness_bound(
        softmax_bounds(box_diff_bounds(ct - r, ct + r)), softmax_bounds(box_diff_bounds(cs - r, cs + r))
    ).value
    zt = ct[:, None] + r * rng.uniform(-1, 1, size=(n, 5000, c))
    zs = cs[:, None] + r * rng.uniform(-1, 1, size=(n, 5000, c))
    gaps = np.abs(softmax(zt) - softmax(zs)).max(axis=-1).max(axis=-1)
    assert np.all(gaps <= ub)
    assert np.all(ub <= 1.0)


def test_from_lower_mirrors_upper() -> None:
    lower = np.arange(18, dtype=float).reshape(2, 3, 3)
    b = LogitDiffBounds.from_lower(lower)
    assert b.upper[0, 1, 2] == -lower[0, 2, 1]


def test_large_logit_differences_do_not_overflow() -> None:
    z = np.array([[1000.0, -1000.0, 0.0]])
    b = softmax_bounds(box_diff_bounds(z - 500, z + 500))
    assert np.all(np.isfinite(b.lower)) and np.all(np.isfinite(b.upper))
