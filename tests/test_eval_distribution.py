"""Fréchet distance and KID: identical sets, hand-computed Gaussian case, known unbiased-MMD case, small n."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from synthpair.metrics.distribution import (FeatureStats, SampleSizeWarning, frechet_distance, kid, mmd2_unbiased)


def exact_sample(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points whose sample mean and sample covariance (ddof=1) are exactly ``mean`` and ``cov``."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def test_identical_features_give_zero() -> None:
    f = np.random.default_rng(0).normal(size=(50, 4))
    assert frechet_distance(f, f) == 0.0
    assert frechet_distance(f, f.copy()) == 0.0


def test_frechet_matches_hand_computation_on_2d_gaussians() -> None:
    # Σ1 = 4 I, Σ2 = [[2, 1], [1, 2]] (eigenvalues 3, 1): (Σ1 Σ2)^½ = 2 Σ2^½, Tr Σ2^½ = √3 + 1
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, 2.0])
    s1, s2 = 4 * np.eye(2), np.array([[2.0, 1.0], [1.0, 2.0]])
    x, y = exact_sample(mu1, s1, 200, 0), exact_sample(mu2, s2, 300, 1)
    hand = (1 + 4) + (8 + 4) - 2 * 2 * (math.sqrt(3) + 1)
    assert frechet_distance(x, y) == pytest.approx(hand, rel=1e-9)
    # diagonal case: ‖Δμ‖² + Σ (σ1 + σ2 − 2 √(σ1 σ2))
    x, y = exact_sample(mu1, np.diag([1.0, 4.0]), 100, 2), exact_sample(mu1, np.diag([4.0, 1.0]), 100, 3)
    assert frechet_distance(x, y) == pytest.approx(2.0, rel=1e-9)


def test_kid_unbiased_estimator_known_case() -> None:
    # 1-D, k(a, b) = (ab + 1)^3: Kxx off-diagonal 1, Kyy off-diagonal 7^3, Kxy mean (1 + 1 + 27 + 64) / 4
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    expected = 1.0 + 343.0 - 2 * 93 / 4
    assert mmd2_unbiased(x, y) == pytest.approx(expected)
    res = kid(x, y, subset_size=1000)
    assert res["mean"] == pytest.approx(expected) and res["subset_size"] == 2 and res["sd"] == 0.0


def test_kid_near_zero_for_same_distribution_and_larger_for_shift() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same = kid(a, b, subsets=20, subset_size=200)
    shifted = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same["mean"]) < 0.05 and shifted["mean"] > 0.5


def test_fewer_samples_than_dimensions_warns_and_kid_still_works() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 30)), rng.normal(size=(12, 30)) + 1.0
    with pytest.warns(SampleSizeWarning, match="fewer samples than dimensions"):
        fd = frechet_distance(a, b)
    assert np.isfinite(fd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = kid(a, b)
    assert np.isfinite(res["mean"]) and res["mean"] > 0


def test_feature_accumulator_and_bad_input() -> None:
    rng = np.random.default_rng(0)
    a, b = FeatureStats(), FeatureStats()
    data = rng.normal(size=(60, 3))
    for i in range(0, 60, 16):
        a.update(data[i:i + 16])
    b.update(data)
    assert a.features().shape == (60, 3) and a.frechet_distance(b) == 0.0
    with pytest.raises(ValueError, match="dimension"):
        a.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(data, data[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        kid(data, np.full((4, 3), np.nan))


def test_kid_subsets_equal_the_per_subset_estimator() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(50, 5)) + 0.2
    res = kid(a, b, subsets=7, subset_size=20, seed=3)
    draws = np.random.default_rng(3)
    idx = [(draws.choice(60, 20, replace=False), draws.choice(50, 20, replace=False)) for _ in range(7)]
    vals = [mmd2_unbiased(a[i], b[j]) for i, j in idx]
    assert res["mean"] == pytest.approx(np.mean(vals), rel=1e-10)
    assert res["sd"] == pytest.approx(np.std(vals, ddof=1), rel=1e-8)
    assert res["subsets"] == 7 and res["subset_size"] == 20
