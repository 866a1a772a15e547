"""Distribution metrics on features: Fréchet distance and KID (pure functions of two feature matrices).

Features come from any extractor (:mod:`synthpair.metrics.features`): ``real`` ``(N, D)`` and ``fake``
``(M, D)`` float arrays. Nothing here knows about images, so the extractor is swappable (Inception-v3 →
the familiar FID; the radiomics-style default → "FD-radiomics", in the spirit of the Fréchet Radiomics
Distance of Osuala et al. 2024).

* Fréchet distance (Heusel et al. 2017, eq. (6); Dowson & Landau 1982):
  ``FD = ||μ_r − μ_f||² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2})`` with sample covariances (ddof = 1). The matrix
  square root is ``scipy.linalg.sqrtm``; its (numerically) imaginary part is dropped and a tiny diagonal
  offset is added when the product is singular — the pytorch-fid recipe. With fewer samples than feature
  dimensions the covariances are rank-deficient and the estimate is strongly biased: a
  :class:`SampleSizeWarning` says so (and the result carries ``reliable = False``); use KID then.
* KID (Bińkowski et al. 2018, "Demystifying MMD GANs", eq. (4)): the unbiased estimator of the squared
  MMD with the cubic polynomial kernel ``k(x, y) = (xᵀy / D + 1)³``, averaged over ``subsets`` random
  subsets of ``subset_size`` samples of each set (clean-fid/torch-fidelity protocol). Unbiased: it can be
  slightly negative and is ≈ 0 in expectation for two samples of one distribution, at any sample size.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np


class SampleSizeWarning(UserWarning):
    """Fewer samples than feature dimensions: the Fréchet distance is unreliable (KID is still valid)."""


def _features(x: Any, name: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name}: expected features (N >= 2, D), got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name}: features contain NaN/inf; check the extractor input")
    return f


def gaussian_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) → (mean (D,), sample covariance (D, D), ddof = 1)."""
    f = _features(features, "features")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (≥ 0; 0 for identical statistics)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)


def frechet_distance(real: Any, fake: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    Warns (:class:`SampleSizeWarning`) when either set has fewer samples than feature dimensions.
    """
    r, f = _features(real, "real features"), _features(fake, "fake features")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, fake {f.shape[1]}")
    d = r.shape[1]
    if min(r.shape[0], f.shape[0]) < d:
        warnings.warn(f"Fréchet distance on {r.shape[0]} real / {f.shape[0]} synthetic samples of {d}-dim features: "
                      f"fewer samples than dimensions, the covariances are singular and the FD is unreliable; "
                      f"read KID (unbiased at any n) or use more samples", SampleSizeWarning, stacklevel=2)
    if np.array_equal(r, f):
        return 0.0
    return frechet_distance_from_stats(*gaussian_stats(r), *gaussian_stats(f))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """``(γ xᵀy + c)^degree`` with γ = 1 / D by default → (N, M)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. (3)) with the polynomial kernel, for x (m, D), y (n, D):
    ``Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i,y_j)/(mn)``."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree), polynomial_kernel(x, y, degree)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(real: Any, fake: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        degree: int = 3) -> dict[str, float | int]:
    """Kernel Inception Distance on features → {"mean", "sd", "subsets", "subset_size"}.

    ``subset_size`` is capped at the smaller set; with ``subset_size`` equal to both set sizes every subset
    is the full sets, so the result is exactly :func:`mmd2_unbiased` of the two sets (sd 0).
    """
    r, f = _features(real, "real features"), _features(fake, "fake features")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, fake {f.shape[1]}")
    size = int(min(subset_size, r.shape[0], f.shape[0]))
    if size == r.shape[0] == f.shape[0]:
        v = mmd2_unbiased(r, f, degree)
        return {"mean": v, "sd": 0.0, "subsets": 1, "subset_size": size}
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(r.shape[0], size, replace=False), rng.choice(f.shape[0], size, replace=False))
             for _ in range(subsets)]
    if max(r.shape[0], f.shape[0]) <= 4000:
        # kernel matrices once; each subset's block sums are quadratic forms vᵀ K w of its indicator vectors,
        # for all subsets in three matrix products (same numbers as mmd2_unbiased per subset, far faster)
        kxx, kyy, kxy = polynomial_kernel(r, r, degree), polynomial_kernel(f, f, degree), polynomial_kernel(r, f, degree)
        vr = np.zeros((r.shape[0], subsets))
        vf = np.zeros((f.shape[0], subsets))
        for s_, (i, j) in enumerate(draws):
            vr[i, s_] = 1.0
            vf[j, s_] = 1.0
        m = size
        sxx = np.einsum("is,is->s", vr, kxx @ vr) - vr.T @ np.diag(kxx)
        syy = np.einsum("is,is->s", vf, kyy @ vf) - vf.T @ np.diag(kyy)
        sxy = np.einsum("is,is->s", vr, kxy @ vf)
        vals = sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (m * m)
    else:
        vals = np.array([mmd2_unbiased(r[i], f[j], degree) for i, j in draws])
    return {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if subsets > 1 else 0.0,
            "subsets": int(subsets), "subset_size": size}


class FeatureStats:
    """Accumulating wrapper: ``update(features)`` per batch; ``features()`` → (N, D) for FD/KID."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def update(self, features: Any) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features: expected (B, D), got {f.shape}")
        if self._chunks and f.shape[1] != self._chunks[0].shape[1]:
            raise ValueError(f"features: dimension {f.shape[1]} differs from earlier batches ({self._chunks[0].shape[1]})")
        self._chunks.append(f)

    def features(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros((0, 0))

    def frechet_distance(self, other: "FeatureStats") -> float:
        return frechet_distance(self.features(), other.features())

    def kid(self, other: "FeatureStats", **kw: Any) -> dict[str, float | int]:
        return kid(self.features(), other.features(), **kw)


__all__ = ["FeatureStats", "SampleSizeWarning", "frechet_distance", "frechet_distance_from_stats",
           "gaussian_stats", "kid", "mmd2_unbiased", "polynomial_kernel"]
