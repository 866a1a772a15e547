"""Paired image metrics: PSNR, SSIM, MS-SSIM, MAE, MSE, RMSE, NMAE — pure, batched functions.

Inputs: two arrays/tensors of the same shape, a batch ``(N, C, H, W)`` (a single ``(H, W)`` or ``(C, H, W)``
image is promoted to a batch of one). Values are expected in ``[0, data_range]``; the default
``data_range = 1.0`` is the ``[0, 1]`` convention of the papers' tables. Prepared/synthetic folders hold
images in ``[-1, 1]``: convert them with :func:`to_unit` first. Every function returns one value per image,
float64 ``(N,)``, so callers can average, take sd, or pair them by case.

Definitions (per image, means over all pixels and channels):

* ``MSE = mean((x - y)^2)``, ``RMSE = sqrt(MSE)``, ``MAE = mean(|x - y|)``, ``NMAE = MAE / data_range``;
* ``PSNR = 10 log10(data_range^2 / MSE)`` (``inf`` for identical images), as ``skimage.metrics.peak_signal_noise_ratio``;
* SSIM — Wang et al. 2004, eq. (13): ``((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with
  ``C1 = (0.01 L)², C2 = (0.03 L)²``, local statistics under an 11×11 Gaussian window (σ = 1.5, truncated at
  3.5 σ and renormalised), population (not sample) covariances, averaged over the *valid* window positions
  and the channels. This equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=L)`` (which filters with reflection and then crops the 5-pixel
  border: the cropped values never see the padding) and MONAI's ``SSIMMetric``.
* MS-SSIM — Wang, Simoncelli & Bovik 2003, eq. (7): ``Π_j cs_j^{w_j}`` over scales ``j = 1..M-1`` times
  ``ssim_M^{w_M}``, 2×2 average pooling between scales, weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``,
  negative ``cs`` clipped at 0 (as MONAI/pytorch-msssim do). Five scales need images larger than
  ``(11 − 1)·16 = 160`` pixels; smaller images use the largest number of scales ``M`` whose coarsest image
  is still ≥ 11 pixels and the first ``M`` weights renormalised to sum to 1 (stated in the results as
  ``ms_ssim_scales``). With ``M = 5`` the value equals MONAI's ``MultiScaleSSIMMetric``.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN = 11
SIGMA = 1.5


def to_unit(images: Any) -> np.ndarray:
    """Images in ``[-1, 1]`` (the dataset convention) → float32 in ``[0, 1]``."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)


def _batch(x: Any, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"{name}: expected (N, C, H, W), (C, H, W) or (H, W), got shape {tuple(t.shape)}")
    return t


def _pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _batch(x, "x"), _batch(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"image metrics: x {tuple(a.shape)} and y {tuple(b.shape)} must have the same shape")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.to(dtype), b.to(dtype)


def mse(x: Any, y: Any) -> np.ndarray:
    """Mean squared error per image → float64 (N,)."""
    a, b = _pair(x, y)
    return ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).numpy()


def rmse(x: Any, y: Any) -> np.ndarray:
    """Root mean squared error per image → float64 (N,)."""
    return np.sqrt(mse(x, y))


def mae(x: Any, y: Any) -> np.ndarray:
    """Mean absolute error per image → float64 (N,)."""
    a, b = _pair(x, y)
    return (a.double() - b.double()).abs().mean(dim=(1, 2, 3)).numpy()


def nmae(x: Any, y: Any, data_range: float = 1.0) -> np.ndarray:
    """MAE normalised by the data range (``MAE / data_range``, in [0, 1]) per image → float64 (N,)."""
    return mae(x, y) / float(data_range)


def psnr(x: Any, y: Any, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image (``inf`` when identical) → float64 (N,)."""
    m = mse(x, y)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(float(data_range) ** 2 / m)


def _gauss_1d(win: int = WIN, sigma: float = SIGMA, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r = torch.arange(win, dtype=torch.float64) - (win - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


@functools.lru_cache(maxsize=64)
def _band_cached(n: int, taps: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    w = len(taps)
    m = n - w + 1
    t = torch.zeros(n, m, dtype=dtype)
    cols = torch.arange(m)
    for k in range(w):
        t[cols + k, cols] = taps[k]
    return t


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n, n − win + 1) matrix T with T[j + k, j] = g[k]: ``x @ T`` is the valid correlation of rows with g
    (cached: the search loops call this with the same n and taps thousands of times)."""
    return _band_cached(int(n), tuple(float(v) for v in g.tolist()), g.dtype)


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filter of (B, C, H, W) → (B, C, H-win+1, W-win+1).

    Done as two banded matrix products (BLAS), ~6× faster on CPU than depthwise ``conv2d`` with 1×11 kernels."""
    h, w = x.shape[-2:]
    return _band(h, g).T @ (x @ _band(w, g))


def local_stats(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-window local mean and local mean of squares of (B, C, H, W) → two (B, C, H-10, W-10) maps
    (reusable across many SSIM comparisons of the same image, as the memorisation search does)."""
    g = _gauss_1d(dtype=a.dtype)
    n = a.shape[0]
    mu, xx = _filter(torch.cat([a, a * a], dim=0), g).split(n, dim=0)
    return mu, xx


def ssim_from_stats(mu_x: torch.Tensor, xx: torch.Tensor, mu_y: torch.Tensor, yy: torch.Tensor, a: torch.Tensor,
                    b: torch.Tensor, data_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and cs from precomputed :func:`local_stats` of ``a`` and ``b`` (only the
    cross term ``x·y`` is filtered here)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cs = _filter(a * b, _gauss_1d(dtype=a.dtype))          # E[xy], turned into cs in place (few temporaries:
    mxy = mu_x * mu_y                                       # this runs millions of times in the memorisation search)
    mx2, my2 = mu_x * mu_x, mu_y * mu_y
    cs.sub_(mxy).mul_(2).add_(c2)                           # 2 σxy + C2
    cs.div_((xx - mx2).add_(yy).sub_(my2).add_(c2))         # / (σx² + σy² + C2)
    lum = mxy.mul_(2).add_(c1).div_(mx2.add_(my2).add_(c1))  # (2 μx μy + C1) / (μx² + μy² + C1)
    return lum.mul_(cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def _ssim_cs(a: torch.Tensor, b: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term cs (valid window positions, all channels)."""
    n = a.shape[0]
    mu, sq = local_stats(torch.cat([a, b], dim=0))
    return ssim_from_stats(mu[:n], sq[:n], mu[n:], sq[n:], a, b, data_range)


def _check_size(a: torch.Tensor) -> None:
    if min(a.shape[-2:]) < WIN:
        raise ValueError(f"SSIM needs images of at least {WIN}×{WIN} pixels, got {tuple(a.shape[-2:])}")


def ssim(x: Any, y: Any, data_range: float = 1.0, chunk: int = 256) -> np.ndarray:
    """SSIM (Wang et al. 2004) per image, Gaussian 11×11 window σ = 1.5 → float64 (N,) in [-1, 1]."""
    a, b = _pair(x, y)
    _check_size(a)
    out = [_ssim_cs(a[i:i + chunk], b[i:i + chunk], data_range)[0] for i in range(0, a.shape[0], chunk)]
    return torch.cat(out).double().numpy()


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales used for an image of this size (5 when ≥ 161 px, fewer for small images)."""
    m = 1
    while m < len(MS_SSIM_WEIGHTS) and min(height, width) // (2 ** m) >= WIN:
        m += 1
    return m


def ms_ssim(x: Any, y: Any, data_range: float = 1.0, chunk: int = 256) -> np.ndarray:
    """MS-SSIM (Wang et al. 2003) per image → float64 (N,) in [0, 1]; see the module docstring for scales."""
    a, b = _pair(x, y)
    _check_size(a)
    m = ms_ssim_scales(*a.shape[-2:])
    w = torch.tensor(MS_SSIM_WEIGHTS[:m], dtype=torch.float64)
    w = w / w.sum()
    out = []
    for i in range(0, a.shape[0], chunk):
        xa, xb = a[i:i + chunk], b[i:i + chunk]
        terms = []
        for j in range(m):
            s, cs = _ssim_cs(xa, xb, data_range)
            terms.append(torch.relu(s if j == m - 1 else cs).double())
            if j < m - 1:
                xa, xb = F.avg_pool2d(xa, 2), F.avg_pool2d(xb, 2)
        out.append(torch.prod(torch.stack(terms) ** w[:, None], dim=0))
    return torch.cat(out).numpy()


PAIRED_METRICS = ("psnr", "ssim", "ms_ssim", "mae", "mse", "rmse", "nmae")


def paired_metrics(x: Any, y: Any, data_range: float = 1.0) -> dict[str, np.ndarray]:
    """All paired metrics per image: {name: float64 (N,)} (``x``, ``y`` in ``[0, data_range]``)."""
    return {"psnr": psnr(x, y, data_range), "ssim": ssim(x, y, data_range), "ms_ssim": ms_ssim(x, y, data_range),
            "mae": mae(x, y), "mse": mse(x, y), "rmse": rmse(x, y), "nmae": nmae(x, y, data_range)}


class PairedImageMetrics:
    """Accumulating wrapper: ``update(x, y)`` per batch, ``aggregate()`` → {metric: {"mean", "sd", "n"}}."""

    def __init__(self, data_range: float = 1.0):
        self.data_range = float(data_range)
        self.values: dict[str, list[np.ndarray]] = {k: [] for k in PAIRED_METRICS}

    def update(self, x: Any, y: Any) -> dict[str, np.ndarray]:
        vals = paired_metrics(x, y, self.data_range)
        for k, v in vals.items():
            self.values[k].append(v)
        return vals

    def aggregate(self) -> dict[str, dict[str, float | int | None]]:
        from .statistics import mean_sd

        return {k: mean_sd(np.concatenate(v) if v else np.array([])) for k, v in self.values.items()}


__all__ = ["MS_SSIM_WEIGHTS", "PAIRED_METRICS", "PairedImageMetrics", "mae", "ms_ssim", "ms_ssim_scales", "mse",
           "nmae", "paired_metrics", "psnr", "rmse", "ssim", "to_unit"]
