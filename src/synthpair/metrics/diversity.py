"""Diversity within one image set: mean pairwise MS-SSIM and an LPIPS-style perceptual distance.

* Mean pairwise MS-SSIM (as used by seed 002 and by Odena et al. 2017 for class diversity): the average
  MS-SSIM over random pairs of distinct images of one set — *lower* means more diverse. Compare the
  synthetic set with the real set: a synthetic value clearly above the real one signals mode collapse.
* LPIPS-style distance (Zhang et al. 2018, eq. (1) with uniform weights ``w_l = 1``): for layers ``l`` of a
  network, ``d(x, y) = Σ_l mean_hw ||ŷ_l − ŷ'_l||²`` where ``ŷ`` are the activations unit-normalised along
  channels. The learned linear heads of LPIPS need torchvision's backbones (unusable here), so this is the
  "baseline" variant of the paper on the Inception-v3 of :mod:`synthpair.metrics.features`, and it is only
  computed when local weights are given. Higher pairwise distance = more diverse.

Images are ``(N, C, H, W)`` in ``[-1, 1]``; pairs are drawn with a seeded generator (all pairs when there are
at most ``max_pairs``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .image import ms_ssim, to_unit
from .statistics import mean_sd


def sample_pairs(n: int, max_pairs: int, seed: int = 0) -> np.ndarray:
    """Index pairs (P, 2) with i < j: all pairs if n(n−1)/2 ≤ max_pairs, else ``max_pairs`` random distinct ones."""
    total = n * (n - 1) // 2
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], 1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=4 * max_pairs)
    j = rng.integers(0, n, size=4 * max_pairs)
    keep = i != j
    pairs = np.unique(np.sort(np.stack([i[keep], j[keep]], 1), axis=1), axis=0)
    return pairs[rng.permutation(len(pairs))[:max_pairs]]


def pairwise_ms_ssim(images: Any, max_pairs: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean pairwise MS-SSIM within a set (images (N, C, H, W) in [-1, 1]) → {"mean", "sd", "n" (pairs)}."""
    images = np.asarray(images, dtype=np.float32)
    pairs = sample_pairs(len(images), max_pairs, seed)
    if len(pairs) == 0:
        return {"mean": None, "sd": None, "n": 0}
    unit = to_unit(images)
    return mean_sd(ms_ssim(unit[pairs[:, 0]], unit[pairs[:, 1]]))


def _unit_normalise(f: torch.Tensor) -> torch.Tensor:
    return f / (f.norm(dim=1, keepdim=True) + 1e-10)


@torch.inference_mode()
def lpips_style_distance(x: Any, y: Any, model: torch.nn.Module, layers: tuple[str, ...] | None = None,
                         batch_size: int = 16) -> np.ndarray:
    """LPIPS-style distance per pair (x, y each (N, C, H, W) in [-1, 1]) with an :class:`InceptionV3` → (N,)."""
    from .features import clean_resize

    layers = layers or model.LPIPS_LAYERS
    last = max(layers, key=model.ORDER.index)
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    out = []
    for i in range(0, len(x), batch_size):
        fx = model.layers(clean_resize(x[i:i + batch_size]), until=last)
        fy = model.layers(clean_resize(y[i:i + batch_size]), until=last)
        d = sum(((_unit_normalise(fx[l]) - _unit_normalise(fy[l])) ** 2).sum(1).mean(dim=(1, 2)) for l in layers)
        out.append(d.double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pairwise_lpips(images: Any, model: torch.nn.Module, max_pairs: int = 100, seed: int = 0) -> dict[str, Any]:
    """Mean pairwise LPIPS-style distance within a set → {"mean", "sd", "n" (pairs)} (higher = more diverse)."""
    images = np.asarray(images, dtype=np.float32)
    pairs = sample_pairs(len(images), max_pairs, seed)
    if len(pairs) == 0:
        return {"mean": None, "sd": None, "n": 0}
    return mean_sd(lpips_style_distance(images[pairs[:, 0]], images[pairs[:, 1]], model))


__all__ = ["lpips_style_distance", "pairwise_lpips", "pairwise_ms_ssim", "sample_pairs"]
