"""Segmentation metrics: Dice, IoU, precision, recall, pixel accuracy, HD95 and ASSD, per case, with an empty-mask
convention.

Inputs are batches of label maps ``pred`` and ``ref``: int arrays or tensors of shape ``(N, H, W)`` with
values ``0..num_classes-1`` (0 = background). Every metric is computed per foreground class ``c = 1..K-1``
by MONAI's functions (``compute_dice``, ``compute_iou``, ``get_confusion_matrix``,
``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(symmetric=True)``) on
one-hot batches — one vectorised call per metric, no Python loops over pixels — and then averaged over the
foreground classes of each case.

Distances: HD95 is MONAI's symmetric 95th-percentile Hausdorff distance between the mask edges (the max of
the two directed 95th percentiles); ASSD is the mean of the distances of *all* edge pixels of both masks
to the other mask's edge (symmetric). They are in **mm** when the item's spacing ``(row, col)`` is known
(anisotropic spacing is honoured) and in **pixels** otherwise; each row records its ``distance_unit``.

Empty-mask convention (per case and class; every value is finite, so means are honest and nothing is
silently skipped):

=========================  =====  =====  =========  ======  =============  =============
case                       Dice   IoU    precision  recall  HD95           ASSD
=========================  =====  =====  =========  ======  =============  =============
both empty                 1      1      1          1       0              0
reference empty, pred not  0      0      0          1 (*)   diagonal       diagonal
pred empty, reference not  0      0      1 (*)      0       diagonal       diagonal
=========================  =====  =====  =========  ======  =============  =============

(*) a 0/0 ratio is read as "vacuously perfect": an empty reference has nothing to miss (recall 1), an empty
prediction has no false positives (precision 1). The failure is carried by Dice/IoU (0), by the other one
of precision/recall (0) and by the distances. ``diagonal`` is the worst possible distance: the image
diagonal ``sqrt((H·row)² + (W·col)²)`` in the same unit as the other distances (``sqrt(H² + W²)`` pixels
when the spacing is unknown).

Class averaging: a case's value is the mean over the foreground classes that are present in the
reference **or** the prediction of that case (classes absent from both say nothing about the case and
would otherwise inflate multi-class means with free 1s/0s); when no foreground class is present on either
side the case counts as "both empty" (1 / 0 above). For binary masks this is simply the class-1 value.
Per-class values are kept in the rows as ``<metric>_<class>`` when ``num_classes > 2``.

Pixel accuracy (DiffusionDCI Table 6, "PA") is the fraction of ALL pixels whose label agrees,
``mean(pred == ref)`` over the image, every class including background — one value per case, not a per-class
mean (it is stored per class as that same value so class averaging leaves it unchanged; both empty → 1).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch

METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "pixel_accuracy", "hd95", "assd")
"""Names of the per-case metrics, in the order they appear in rows and summaries."""

Spacing = tuple[float, float]
SpacingArg = Spacing | Sequence[Spacing | None] | None


def _as_labels(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
    if t.ndim != 3:
        raise ValueError(f"{name}: expected a batch of label maps (N, H, W), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"{name}: expected integer labels, got {t.dtype}")
    return t.long()


def _one_hot_foreground(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) labels → float (N, K-1, H, W) one-hot of the foreground classes 1..K-1."""
    classes = torch.arange(1, num_classes).view(1, -1, 1, 1)
    return (labels[:, None] == classes).float()


def _spacing_list(spacings: SpacingArg, n: int) -> list[Spacing | None]:
    if spacings is None:
        return [None] * n
    if len(spacings) == 2 and all(isinstance(v, (int, float)) for v in spacings):  # one spacing for all
        return [(float(spacings[0]), float(spacings[1]))] * n  # type: ignore[index]
    out = [None if s is None else (float(s[0]), float(s[1])) for s in spacings]  # type: ignore[index,union-attr]
    if len(out) != n:
        raise ValueError(f"spacings: got {len(out)} entries for {n} items")
    return out


def class_metrics(pred: Any, ref: Any, num_classes: int, spacings: SpacingArg = None) -> dict[str, np.ndarray]:
    """Per-case, per-foreground-class metrics with the empty-mask convention applied.

    Args:
        pred, ref: int label maps ``(N, H, W)``, values ``0..num_classes-1``.
        num_classes: labels including background (2 for a binary mask).
        spacings: ``None`` (pixels), one ``(row, col)`` in mm for every item, or one per item (``None``
            entries mean unknown → pixels for that item).

    Returns:
        ``{metric: float64 (N, K-1)}`` for every name in :data:`METRICS`, plus ``"present"`` (bool
        ``(N, K-1)``: class in ref or pred) and ``"diagonal"`` (``(N,)`` worst-case distance per item).
        All values are finite.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + a foreground class), got {num_classes}")
    p, r = _as_labels(pred, "pred"), _as_labels(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred {tuple(p.shape)} and ref {tuple(r.shape)} differ in shape")
    n, h, w = p.shape
    sp = _spacing_list(spacings, n)
    sp_mm = [s if s is not None else (1.0, 1.0) for s in sp]
    diag = np.array([math.hypot(h * s[0], w * s[1]) for s in sp_mm], dtype=np.float64)
    if n == 0:
        z = np.zeros((0, num_classes - 1))
        return {**{m: z for m in METRICS}, "present": z.astype(bool), "diagonal": diag}

    yp, yr = _one_hot_foreground(p, num_classes), _one_hot_foreground(r, num_classes)
    p_any = yp.flatten(2).amax(-1).bool().numpy()  # (N, K-1)
    r_any = yr.flatten(2).amax(-1).bool().numpy()
    both_empty, one_empty = ~p_any & ~r_any, p_any ^ r_any

    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_iou, get_confusion_matrix)

    out: dict[str, np.ndarray] = {}
    # ignore_empty=False: both empty → 1, exactly one empty → 0 (the convention above).
    out["dice"] = compute_dice(yp.double(), yr.double(), include_background=True, ignore_empty=False).double().numpy()
    out["iou"] = compute_iou(yp.double(), yr.double(), include_background=True, ignore_empty=False).double().numpy()
    cm = get_confusion_matrix(yp, yr, include_background=True).double().numpy()  # (N, K-1, [tp, fp, tn, fn])
    tp, fp, fn = cm[..., 0], cm[..., 1], cm[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["precision"] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        out["recall"] = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    agree = (p == r).flatten(1).double().mean(1).numpy()  # (N,) over every pixel and class
    out["pixel_accuracy"] = np.repeat(agree[:, None], num_classes - 1, axis=1)

    spacing_arg = [list(s) for s in sp_mm]
    with warnings.catch_warnings():  # MONAI warns on empty masks and on a deprecated numpy flag
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=spacing_arg)
        asd = compute_average_surface_distance(yp, yr, include_background=True, symmetric=True,
                                               spacing=spacing_arg)
    worst = np.broadcast_to(diag[:, None], both_empty.shape)
    for name, val in (("hd95", hd), ("assd", asd)):
        v = val.double().numpy().reshape(n, num_classes - 1)
        v = np.where(both_empty, 0.0, np.where(one_empty, worst, v))
        out[name] = v
    for name in METRICS:
        if not np.all(np.isfinite(out[name])):  # a MONAI change would otherwise leak NaNs into the means
            raise RuntimeError(f"{name}: non-finite value after applying the empty-mask convention")
    out["present"] = p_any | r_any
    out["diagonal"] = diag
    return out


def case_metrics(pred: Any, ref: Any, num_classes: int, spacings: SpacingArg = None) -> dict[str, np.ndarray]:
    """Per-case metrics averaged over the foreground classes present in ref or pred (see module doc).

    Returns ``{metric: float64 (N,)}`` for every name in :data:`METRICS`; all finite.
    """
    return _reduce_classes(class_metrics(pred, ref, num_classes, spacings))


def _reduce_classes(cls: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    present = cls["present"]
    count = present.sum(1)
    out = {}
    for name in METRICS:
        v = cls[name]
        mean_present = (v * present).sum(1) / np.maximum(count, 1)
        out[name] = np.where(count > 0, mean_present, 0.0 if name in ("hd95", "assd") else 1.0)
    return out


def per_case_metrics(pred: Any, ref: Any, num_classes: int, spacings: SpacingArg = None,
                     ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per case: ``{"id", <metric>: float, ..., "distance_unit": "mm"|"pixel"}``.

    With ``num_classes > 2`` the rows also carry ``<metric>_<class>`` per foreground class (that class's
    value under the empty convention, whether or not it is present). ``ids`` default to ``"0".."N-1"``.
    """
    cls = class_metrics(pred, ref, num_classes, spacings)
    agg = _reduce_classes(cls)
    n = len(agg["dice"])
    sp = _spacing_list(spacings, n)
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"ids: got {len(ids)} ids for {n} items")
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": ids[i]}
        row.update({name: float(agg[name][i]) for name in METRICS})
        row["distance_unit"] = "pixel" if sp[i] is None else "mm"
        if num_classes > 2:
            for c in range(1, num_classes):
                row.update({f"{name}_{c}": float(cls[name][i, c - 1]) for name in METRICS})
        rows.append(row)
    return rows


def summarize(rows: Iterable[dict[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Rows → ``{metric: {"mean", "sd", "n"}}`` (sd is the sample SD, ddof=1; 0 for n = 1; NaN for n = 0).

    Every row value is finite by construction, so ``n`` is the number of rows (nothing is skipped) — except a
    metric that NO row has (results written before it existed): ``{"mean": None, "sd": None, "n": 0}``.
    """
    rows = list(rows)
    out: dict[str, Any] = {}
    for name in metrics:
        if rows and not any(name in r for r in rows):  # rows written before the metric existed (pixel accuracy)
            out[name] = {"mean": None, "sd": None, "n": 0}
            continue
        v = np.array([float(r[name]) for r in rows], dtype=np.float64)
        out[name] = {"mean": float(v.mean()) if len(v) else float("nan"),
                     "sd": float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) == 1 else float("nan")),
                     "n": int(len(v))}
    return out


def distance_unit(rows: Iterable[dict[str, Any]]) -> str:
    """The unit of the HD95/ASSD values of ``rows``: ``"mm"``, ``"pixel"``, ``"mixed"`` or ``"none"`` (no rows)."""
    units = sorted({r.get("distance_unit", "pixel") for r in rows})
    return units[0] if len(units) == 1 else ("mixed" if units else "none")


class SegmentationMetrics:
    """Accumulating wrapper over :func:`per_case_metrics` (like MONAI's ``DiceMetric`` over ``compute_dice``).

    >>> m = SegmentationMetrics(num_classes=2)
    >>> m.update(pred_batch, ref_batch, spacings=[(0.5, 0.5)] * len(pred_batch), ids=batch_ids)
    >>> m.compute()   # {metric: {"mean", "sd", "n"}} over every case seen so far
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.rows: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.rows = []

    def update(self, pred: Any, ref: Any, spacings: SpacingArg = None,
               ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Score a batch ``(N, H, W)``, keep its rows, and return them. Default ids continue a counter."""
        n = len(pred)
        if ids is None:
            ids = [str(len(self.rows) + i) for i in range(n)]
        rows = per_case_metrics(pred, ref, self.num_classes, spacings, ids)
        self.rows.extend(rows)
        return rows

    def compute(self) -> dict[str, dict[str, float]]:
        return summarize(self.rows)
