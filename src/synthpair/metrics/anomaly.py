"""Anomaly-detection metrics (survey Table 13; AnoDDPM sec. 4): pure functions on scores, labels and maps.

Image level (label 1 = abnormal, score: higher = more anomalous):

* ``auc`` — area under the ROC curve (scikit-learn ``roc_auc_score``; ties count one half);
* a decision threshold is chosen on VALIDATION scores (:func:`choose_threshold`: the one maximising Youden's
  J = sensitivity + specificity - 1, i.e. the balanced accuracy, so a class imbalance does not push it to
  "always normal"), then applied to the test scores: ``top1_error`` = fraction misclassified (the survey's
  Top-1 error of a two-class decision), ``balanced_error`` = 1 - balanced accuracy.

Pixel level (maps where masks exist; label 1 = lesion pixel):

* ``pixel_auprc`` — average precision over every pixel of the test images (normal images contribute negatives);
* ``dice_at`` — Dice of ``map >= threshold`` with the mask per image; the pixel threshold is chosen on the
  validation abnormal images (:func:`choose_pixel_threshold`, best mean Dice over candidate quantiles).

Also :func:`image_score` (map → one score per image: mean, max or mean of the top fraction after an optional
Gaussian smoothing) and :func:`binary_dice`.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

ScoreKind = Literal["mean", "max", "top"]


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (1 = abnormal); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = _arr(labels).astype(int).ravel(), _arr(scores).astype(np.float64).ravel()
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def choose_threshold(labels: Any, scores: Any) -> float:
    """The threshold ``th`` (predict abnormal when ``score >= th``) maximising Youden's J on these (validation)
    scores; candidates are the midpoints between sorted distinct scores and the two ends. Ties → the lowest."""
    y, s = _arr(labels).astype(int).ravel(), _arr(scores).astype(np.float64).ravel()
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-12], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1e-12]]) if len(u) else np.array([0.0])
    pos, neg = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    best, best_j = float(cands[0]), -np.inf
    for th in cands:
        pred = s >= th
        j = (pred & (y == 1)).sum() / pos + (~pred & (y == 0)).sum() / neg - 1.0
        if j > best_j + 1e-12:
            best, best_j = float(th), j
    return best


def classification_errors(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """At ``threshold``: ``top1_error`` (fraction misclassified), ``balanced_error`` (1 - mean of sensitivity and
    specificity), ``sensitivity``, ``specificity`` (NaN when a class is absent)."""
    y, s = _arr(labels).astype(int).ravel(), _arr(scores).astype(np.float64).ravel()
    pred = s >= threshold
    pos, neg = (y == 1), (y == 0)
    sens = float((pred & pos).sum() / pos.sum()) if pos.any() else float("nan")
    spec = float((~pred & neg).sum() / neg.sum()) if neg.any() else float("nan")
    return {"top1_error": float((pred != pos).mean()) if len(y) else float("nan"),
            "balanced_error": 1.0 - (sens + spec) / 2.0, "sensitivity": sens, "specificity": spec}


def pixel_auprc(masks: Any, maps: Any) -> float:
    """Average precision of the per-pixel ``maps`` (N, H, W) for the binary ``masks`` (N, H, W) over all pixels;
    NaN when no pixel is positive."""
    from sklearn.metrics import average_precision_score

    y = (_arr(masks) > 0).ravel()
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, _arr(maps).astype(np.float64).ravel()))


def binary_dice(pred: Any, ref: Any) -> np.ndarray:
    """Dice per image of binary maps (N, H, W) → float64 (N,); both empty → 1 (the project's convention)."""
    p, r = _arr(pred).astype(bool), _arr(ref).astype(bool)
    p, r = p.reshape(len(p), -1), r.reshape(len(r), -1)
    inter = (p & r).sum(1)
    tot = p.sum(1) + r.sum(1)
    return np.where(tot == 0, 1.0, 2.0 * inter / np.maximum(tot, 1))


def dice_at(masks: Any, maps: Any, threshold: float) -> np.ndarray:
    """Dice per image of ``maps >= threshold`` vs ``masks > 0`` → float64 (N,)."""
    return binary_dice(_arr(maps) >= threshold, _arr(masks) > 0)


def choose_pixel_threshold(masks: Any, maps: Any, quantiles: int = 64) -> float:
    """The pixel threshold with the best mean Dice on these (validation, abnormal) images among ``quantiles``
    candidate quantiles of the map values (from the 50th to the 99.9th percentile)."""
    m = _arr(maps).astype(np.float64)
    cands = np.unique(np.quantile(m, np.linspace(0.5, 0.999, quantiles)))
    scores = [float(dice_at(masks, m, th).mean()) for th in cands]
    return float(cands[int(np.argmax(scores))])


def image_score(maps: Any, kind: ScoreKind = "top", top_fraction: float = 0.05, smooth_sigma: float = 0.0
                ) -> np.ndarray:
    """Anomaly maps (N, H, W) (or (N, C, H, W): channels averaged) → one score per image float64 (N,): the
    ``mean``, the ``max``, or the mean of the highest ``top_fraction`` of the pixels (``top``), after an optional
    Gaussian smoothing of ``smooth_sigma`` pixels (suppresses isolated noisy pixels before max/top)."""
    m = _arr(maps).astype(np.float64)
    if m.ndim == 4:
        m = m.mean(axis=1)
    if smooth_sigma > 0:
        from scipy import ndimage

        m = np.stack([ndimage.gaussian_filter(x, smooth_sigma) for x in m])
    flat = m.reshape(len(m), -1)
    if kind == "mean":
        return flat.mean(1)
    if kind == "max":
        return flat.max(1)
    if kind == "top":
        k = max(1, int(round(top_fraction * flat.shape[1])))
        return np.sort(flat, axis=1)[:, -k:].mean(1)
    raise ValueError(f"image score {kind!r}: choose mean, max or top")


__all__ = ["auc", "binary_dice", "choose_pixel_threshold", "choose_threshold", "classification_errors", "dice_at",
           "image_score", "pixel_auprc"]
