"""Hand-worked cases for the segmentation metrics and their empty-mask convention."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthpair.metrics.segmentation import (METRICS, SegmentationMetrics, case_metrics, distance_unit, per_case_metrics,
                                            summarize)


def square(size: int = 32, y: int = 8, x: int = 8, side: int = 8, label: int = 1) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.int64)
    m[y:y + side, x:x + side] = label
    return m


def one(metric: str, pred: np.ndarray, ref: np.ndarray, num_classes: int = 2, spacing=None) -> float:
    return float(case_metrics(pred[None], ref[None], num_classes, None if spacing is None else [spacing])[metric][0])


def test_overlap_of_known_rectangles():
    # pred: 8×8 = 64 px; ref: the same square shifted right by 2 → overlap 8×6 = 48, union 80.
    pred, ref = square(), square(x=10)
    assert one("dice", pred, ref) == pytest.approx(2 * 48 / 128)
    assert one("iou", pred, ref) == pytest.approx(48 / 80)
    # pred 8×8 inside a 8×16 ref: TP 64, FP 0, FN 64.
    big = np.zeros((32, 32), np.int64)
    big[8:16, 8:24] = 1
    assert one("precision", pred, big) == pytest.approx(1.0)
    assert one("recall", pred, big) == pytest.approx(0.5)
    assert one("dice", pred, big) == pytest.approx(2 * 64 / 192)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_of_shifted_square_is_the_shift(k):
    # Every edge pixel lies within k of the other edge; the whole left column (8 of 28 edge pixels, > 5 %)
    # lies at exactly k, so the 95th percentile is k.
    assert one("hd95", square(), square(x=8 + k)) == pytest.approx(k)
    assert one("hd95", square(), square(y=8 + k)) == pytest.approx(k)


def test_assd_of_shifted_square_by_hand():
    # 8×8 square shifted right by 2; 28 edge pixels per square, distances pred-edge → ref-edge:
    # left column 8 × 2; top & bottom rows: the pixel next to the left corner 1 each, rest 0;
    # right column (6 inner pixels) min(2, d_top, d_bottom) = 1,2,2,2,2,1 → 10. Sum 28 → mean 1.0,
    # and the reverse direction is the mirror image, so the symmetric mean is 1.0.
    assert one("assd", square(), square(x=10)) == pytest.approx(1.0)


def test_anisotropic_spacing():
    sp = (2.0, 0.5)  # (row, col) mm
    # horizontal shift by 2 columns → 2 × 0.5 mm; vertical shift by 2 rows → 2 × 2 mm
    assert one("hd95", square(), square(x=10), spacing=sp) == pytest.approx(1.0)
    assert one("hd95", square(), square(y=10), spacing=sp) == pytest.approx(4.0)
    # ASSD, horizontal shift 2 with spacing (2, 0.5): left column 8 × 1.0; top & bottom 0.5 each;
    # right column: min(1.0 (ref's right column), 2·d_top, 2·d_bottom) = 1.0 × 6. Sum 15 over 28.
    assert one("assd", square(), square(x=10), spacing=sp) == pytest.approx(15 / 28)
    # overlap metrics do not depend on spacing
    assert one("dice", square(), square(x=10), spacing=sp) == pytest.approx(0.75)


def test_empty_conventions():
    e, s = np.zeros((32, 32), np.int64), square()
    diag = math.hypot(32, 32)
    both = case_metrics(e[None], e[None], 2)
    assert {m: both[m][0] for m in METRICS} == {"dice": 1, "iou": 1, "precision": 1, "recall": 1,
                                                "pixel_accuracy": 1, "hd95": 0, "assd": 0}
    ref_empty = case_metrics(s[None], e[None], 2)
    assert {m: ref_empty[m][0] for m in METRICS} == pytest.approx(
        {"dice": 0, "iou": 0, "precision": 0, "recall": 1, "pixel_accuracy": 1 - 64 / 1024, "hd95": diag,
         "assd": diag})
    pred_empty = case_metrics(e[None], s[None], 2)
    assert {m: pred_empty[m][0] for m in METRICS} == pytest.approx(
        {"dice": 0, "iou": 0, "precision": 1, "recall": 0, "pixel_accuracy": 1 - 64 / 1024, "hd95": diag,
         "assd": diag})
    # worst case distance is in mm when the spacing is known: diagonal of 32×2 mm by 32×0.5 mm
    mm = case_metrics(e[None], s[None], 2, [(2.0, 0.5)])
    assert mm["hd95"][0] == pytest.approx(math.hypot(64, 16))


def test_multiclass_averages_present_classes():
    # class 1: identical squares (Dice 1, HD 0); class 2: present in ref only (Dice 0, HD diagonal);
    # class 3: absent on both sides → not averaged.
    ref = square(label=1)
    ref[20:24, 20:24] = 2
    pred = square(label=1)
    rows = per_case_metrics(pred[None], ref[None], 4, spacings=None, ids=["a"])
    r = rows[0]
    assert r["dice"] == pytest.approx(0.5)
    assert r["hd95"] == pytest.approx(math.hypot(32, 32) / 2)
    assert r["dice_1"] == 1.0 and r["dice_2"] == 0.0 and r["dice_3"] == 1.0
    assert r["recall"] == pytest.approx(0.5) and r["precision"] == pytest.approx(1.0)
    assert r["id"] == "a" and r["distance_unit"] == "pixel"


def test_accepts_tensors_and_wrapper_matches_pure_function():
    rng = np.random.default_rng(0)
    preds, refs = [], []
    for i in range(7):
        refs.append(square(y=int(rng.integers(2, 20)), x=int(rng.integers(2, 20)), side=int(rng.integers(3, 10))))
        preds.append(square(y=int(rng.integers(2, 20)), x=int(rng.integers(2, 20)), side=int(rng.integers(3, 10))))
    preds[3][:] = 0  # an empty prediction in the mix
    p, r = np.stack(preds), np.stack(refs)
    sp = [(0.5, 0.5)] * 7
    ids = [f"c{i}" for i in range(7)]
    rows = per_case_metrics(torch.from_numpy(p), torch.from_numpy(r), 2, sp, ids)
    m = SegmentationMetrics(2)
    m.update(p[:3], r[:3], sp[:3], ids[:3])
    m.update(p[3:], r[3:], sp[3:], ids[3:])
    assert m.rows == rows
    summary = m.compute()
    assert summary == summarize(rows)
    dice = np.array([row["dice"] for row in rows])
    assert summary["dice"]["mean"] == pytest.approx(dice.mean())
    assert summary["dice"]["sd"] == pytest.approx(dice.std(ddof=1))
    assert summary["dice"]["n"] == 7
    assert distance_unit(m.rows) == "mm" and distance_unit([]) == "none"
    assert rows[3]["dice"] == 0.0 and rows[3]["hd95"] == pytest.approx(math.hypot(16, 16))
    m.reset()
    assert m.rows == []


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int), 2)
    with pytest.raises(ValueError, match="integer"):
        case_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), 2)


def test_pixel_accuracy_by_hand():
    """Pixel accuracy = agreeing pixels / all pixels, every class including background (DiffusionDCI Table 6)."""
    # shifted squares: 16 pixels disagree (2 columns × 8 rows on each side) out of 32² = 1024
    assert one("pixel_accuracy", square(), square(x=10)) == pytest.approx(1 - 32 / 1024)
    assert one("pixel_accuracy", np.zeros((32, 32), np.int64), np.zeros((32, 32), np.int64)) == 1.0
    assert one("pixel_accuracy", square(), np.zeros((32, 32), np.int64)) == pytest.approx(1 - 64 / 1024)
    # multi-class: a class-2 square of 16 px predicted as background, class 1 right → 1 - 16/1024, whatever the
    # number of classes present (not a mean of per-class accuracies)
    ref = square(label=1)
    ref[20:24, 20:24] = 2
    r = per_case_metrics(square(label=1)[None], ref[None], 4, ids=["a"])[0]
    assert r["pixel_accuracy"] == pytest.approx(1 - 16 / 1024)


def test_summaries_of_rows_written_before_a_metric_existed():
    rows = [{"dice": 0.5, "iou": 0.4}, {"dice": 0.7, "iou": 0.6}]
    s = summarize(rows, ("dice", "pixel_accuracy"))
    assert s["dice"]["mean"] == pytest.approx(0.6) and s["pixel_accuracy"] == {"mean": None, "sd": None, "n": 0}
