"""Memorisation flags exact copies; mask statistics on hand-made masks; statistics helpers vs scipy."""
from __future__ import annotations

import numpy as np
import pytest

from synthpair.data.phantoms import phantom_pair
from synthpair.metrics.features import RadiomicsExtractor, standardize
from synthpair.metrics.masks import binary_mask_stats, compare_mask_stats
from synthpair.metrics.memorisation import closest, feature_nearest, memorisation
from synthpair.metrics.statistics import across_seeds, mean_sd, paired_comparison, summarize_rows


def _phantoms(n: int, seed: int) -> np.ndarray:
    return (np.stack([phantom_pair(i, 32, seed)[0] for i in range(n)]).astype(np.float32) / 127.5 - 1.0)[:, None]


def test_memorisation_flags_an_exact_copy_and_not_fresh_images() -> None:
    real, syn = _phantoms(24, 0), _phantoms(8, 5)
    syn[3] = real[11]
    ex = RadiomicsExtractor()
    fr, fs = standardize(ex(real), ex(syn))
    res = memorisation(real, fr, syn, fs)
    row = res["rows"][3]
    assert row["flagged"] and row["flag_feat"] and row["flag_ssim"]
    assert row["feat_nn"] == 11 and row["ssim_nn"] == 11 and row["feat_dist"] == 0.0 and row["ssim"] == pytest.approx(1.0)
    assert closest(res, 1)[0]["index"] == 3
    others = [r for r in res["rows"] if r["index"] != 3]
    assert sum(r["flagged"] for r in others) <= 2, others
    assert res["n_real"] == 24 and res["thresholds"]["ssim"] < 1.0


def test_feature_nearest_leave_one_out() -> None:
    f = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    idx, d = feature_nearest(f, f, exclude_self=True)
    assert idx.tolist() == [1, 0, 1] and d[0] == pytest.approx(1.0)


def test_mask_stats_on_hand_made_masks() -> None:
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 15 ** 2
    two = np.zeros((64, 64), bool)
    two[5:10, 5:10] = True
    two[40:50, 40:50] = True
    ragged = disk & (np.random.default_rng(0).random((64, 64)) > 0.15)
    s = binary_mask_stats(np.stack([disk, two, np.zeros((64, 64), bool), ragged]))
    assert s["components"].tolist()[:3] == [1, 2, 0]
    assert s["area"][1] == pytest.approx(125 / 4096)
    assert s["compactness"][0] == pytest.approx(1.0, abs=0.1)
    assert s["compactness"][3] < 0.3 * s["compactness"][0]
    assert np.isnan(s["compactness"][2])
    cmp_ = compare_mask_stats(np.stack([disk, disk]).astype(int), np.stack([two, two]).astype(int))
    assert cmp_["class_1"]["components"]["real"]["mean"] == 1 and cmp_["class_1"]["components"]["synthetic"]["mean"] == 2
    assert cmp_["class_1"]["area"]["wasserstein"] > 0


def test_statistics_paired_wilcoxon_and_seeds() -> None:
    from scipy.stats import wilcoxon

    base = [{"fold": 0, "id": f"c{i}", "dice": 0.5 + 0.01 * i} for i in range(10)]
    diffs = [0.02, 0.01, -0.005, 0.03, 0.015, 0.0, 0.025, 0.01, -0.01, 0.04]
    other = [{"fold": 0, "id": f"c{i}", "dice": base[i]["dice"] + diffs[i]} for i in range(10)]
    other.append({"fold": 1, "id": "unpaired", "dice": 0.9})
    res = paired_comparison(base, other, "dice")
    assert res["n"] == 10 and res["mean_diff"] == pytest.approx(np.mean(diffs))
    assert res["p_value"] == pytest.approx(wilcoxon(diffs, zero_method="wilcox").pvalue)
    same = paired_comparison(base, base, "dice")
    assert same["p_value"] is None and same["mean_diff"] == 0.0
    s = summarize_rows(base, ("dice",))
    assert s["dice"]["n"] == 10 and s["dice"]["sd"] == pytest.approx(np.std([r["dice"] for r in base], ddof=1))
    seeds = across_seeds({0: base, 1: other[:10]}, ("dice",))
    assert seeds["dice"]["n"] == 2 and seeds["dice"]["per_seed"][0] == pytest.approx(np.mean([r["dice"] for r in base]))
    assert mean_sd([1.0, None, float("nan"), 3.0]) == {"mean": 2.0, "sd": pytest.approx(np.sqrt(2)), "n": 2}
