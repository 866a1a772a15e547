"""Reinhard colour normalisation (Reinhard et al. 2001; DiffusionDCI sec. IV-B-1) of RGB images.

Each image is converted to CIE L*a*b*, and every channel is shifted and scaled so that its mean and
standard deviation equal the dataset's mean statistics (the average over images of the per-image channel
means and standard deviations) — the "modified Reinhard" of DiffusionDCI, which matches every patch to the
average colour distribution instead of to one hand-picked target image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _to_lab(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.clip((img.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0))


def lab_stats(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """images: float (3, H, W) in [-1, 1] → (mean of per-image Lab means (3,), mean of per-image Lab sds (3,))."""
    labs = [_to_lab(im).reshape(-1, 3) for im in images]
    return np.mean([l.mean(0) for l in labs], axis=0), np.mean([l.std(0) for l in labs], axis=0)


def reinhard(img: np.ndarray, target_mean: np.ndarray, target_sd: np.ndarray) -> np.ndarray:
    """One RGB image float (3, H, W) in [-1, 1] → normalised float32 (3, H, W) in [-1, 1]."""
    from skimage.color import lab2rgb

    lab = _to_lab(img)
    mean, sd = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    out = (lab - mean) / np.maximum(sd, 1e-6) * target_sd + target_mean
    rgb = lab2rgb(out)
    return (np.clip(rgb, 0.0, 1.0) * 2.0 - 1.0).transpose(2, 0, 1).astype(np.float32)


def normalise_colours(images: list[np.ndarray], reference: Sequence[int] | None = None
                      ) -> tuple[list[np.ndarray], dict[str, list[float]]]:
    """Reinhard-normalise a list of RGB images (3, H, W) to the mean Lab statistics of ``images[reference]``
    (all of them when None; prepare passes the training side only, so no test image shapes the target).

    Returns the new images (every image normalised) and ``{"lab_mean": [...], "lab_sd": [...]}`` (recorded in
    dataset.json).
    """
    ref = list(range(len(images))) if reference is None else list(reference)
    if not ref:
        raise ValueError("normalise_colours: the reference set is empty")
    mean, sd = lab_stats([images[k] for k in ref])
    return [reinhard(im, mean, sd) for im in images], {"lab_mean": mean.tolist(), "lab_sd": sd.tolist()}
