"""prepare: round trip through PreparedDataset, splits, resize, normalisation, near-duplicates, configs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_helpers import textured, write_nifti_folder, write_nnunet_folder, write_png_folder
from synthpair.config import from_dict, to_dict
from synthpair.data.dataset import PreparedDataset
from synthpair.data.dedup import case_level_pairs, find_duplicate_pairs, thumbnail, union_groups
from synthpair.data.normalise import apply_range, intensity_range
from synthpair.data.phantoms import write_phantom_source
from synthpair.data.prepare import PrepareConfig, prepare_dataset
from synthpair.data.resize import resize_mask, resized_spacing
from synthpair.data.splits import kfold_by_case


def _cfg(**kw):
    return PrepareConfig(**{"size": 16, "folds": 3, **kw})


def test_prepare_phantoms_round_trip(tmp_path):
    src = write_phantom_source(tmp_path / "src", n=8, size=32, seed=0)
    out = prepare_dataset(src, tmp_path / "data", _cfg(), progress=False)
    ds = PreparedDataset.open(out)
    assert len(ds.items) == 8 and ds.channels == 1 and ds.num_classes == 2 and ds.size == (16, 16)
    assert ds.labels == {"background": 0, "lesion": 1}
    x, m = ds.load(ds.ids)
    assert x.shape == (8, 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    assert m.shape == (8, 16, 16) and set(np.unique(m)) == {0, 1}
    info = json.loads((out / "dataset.json").read_text())
    it = info["items"][0]
    assert it["id"] == "phantom_0000" and it["case"] == "phantom_0000" and it["spacing"] is None
    assert it["original_size"] == [32, 32] and it["source_image"] == "images/phantom_0000.png"
    assert it["foreground_fraction"] == pytest.approx(float((m[0] > 0).mean()))
    assert info["normalisation"]["method"] == "percentile" and info["normalisation"]["low"] == 0.5
    assert info["prepare_config"]["size"] == 16
    assert json.loads((out / "duplicates.json").read_text())["groups"] == []
    tr, te = ds.split(0)
    assert set(tr).isdisjoint(te) and len(tr) + len(te) == 8
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_prepare_multiclass_and_rgb(tmp_path):
    src = write_phantom_source(tmp_path / "ph", n=6, size=32, num_classes=3)
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d1", _cfg(), progress=False))
    assert ds.num_classes == 3 and set(np.unique(ds.load(ds.ids)[1])) == {0, 1, 2}
    rgb = write_png_folder(tmp_path / "rgb", n=4, rgb=True, image_ext=".jpg")
    ds = PreparedDataset.open(prepare_dataset(rgb, tmp_path / "d2", _cfg(folds=2), progress=False))
    assert ds.channels == 3 and ds.info["normalisation"]["method"] == "fixed"
    x, _ = ds.load(ds.ids)
    raw = np.asarray(Image.open(rgb / "images" / "img_00.jpg").resize((16, 16), Image.BILINEAR), np.float32)
    # fixed normalisation: v -> v/127.5 - 1 of the raw colour (up to resampling differences)
    assert np.abs(x[0].transpose(1, 2, 0) - (raw / 127.5 - 1)).mean() < 0.08


def test_prepare_volumes_spacing_and_slices(tmp_path):
    src = write_nifti_folder(tmp_path / "v", n_cases=3, shape=(20, 24, 10), zooms=(0.8, 0.9, 2.5))
    cfg = _cfg(size=10, foreground_only=True, empty_fraction=0.0, modality="MR")
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", cfg, progress=False))
    assert len(ds.items) == 3 * 4
    assert ds.ids[0] == "case0_s0003" and ds.case_of("case0_s0005") == "case0"
    assert ds.spacing_of("case0_s0003") == pytest.approx((0.8 * 20 / 10, 0.9 * 24 / 10))
    assert ds.modality == "MR" and ds.info["normalisation"]["per"] == "volume"
    for k in range(3):  # all slices of a volume share a case → the same side of every split
        tr, te = ds.split(k)
        assert {ds.case_of(i) for i in tr}.isdisjoint({ds.case_of(i) for i in te})


def test_prepare_nnunet_ct_window(tmp_path):
    src = write_nnunet_folder(tmp_path / "nn", n_cases=3)
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", _cfg(), progress=False))
    assert ds.modality == "CT" and ds.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert ds.info["normalisation"] == {"method": "ct_window", "center": 40.0, "width": 400.0}
    assert len(ds.items) == 30


def test_keep_empty_false_drops_empty_masks(tmp_path):
    src = write_png_folder(tmp_path / "s", n=5)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(src / "masks" / "img_01.png")
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "a", _cfg(), progress=False))
    assert "img_01" in ds.ids
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "b", _cfg(keep_empty=False), progress=False))
    assert "img_01" not in ds.ids and len(ds.ids) == 4


def test_splits_by_case_seeded():
    cases = [f"c{i}" for i in range(11)]
    s = kfold_by_case(cases, 4, seed=3)
    assert s["by"] == "case" and s["num_folds"] == 4 and s["seed"] == 3
    tests = [c for f in s["folds"] for c in f["test"]]
    assert sorted(tests) == sorted(cases)  # each case in exactly one test fold
    for f in s["folds"]:
        assert set(f["train"]) | set(f["test"]) == set(cases) and not set(f["train"]) & set(f["test"])
        assert len(f["test"]) in (2, 3)
    assert kfold_by_case(list(reversed(cases)), 4, seed=3) == s
    assert kfold_by_case(cases, 4, seed=4) != s


def test_metadata_cases_stay_together_in_splits(tmp_path):
    src = write_png_folder(tmp_path / "s", n=6)
    (src / "metadata.csv").write_text("stem,case\n" + "".join(f"img_{i:02d},P{i // 2}\n" for i in range(6)))
    out = prepare_dataset(src, tmp_path / "d", _cfg(dedup=False), progress=False)
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(c for f in splits["folds"] for c in f["test"]) == ["P0", "P1", "P2"]
    ds = PreparedDataset.open(out)
    tr, te = ds.split(0)
    assert len(te) == 2 and ds.case_of(te[0]) == ds.case_of(te[1])


def test_resize_keeps_labels_and_scales_spacing():
    m = np.zeros((37, 53), np.int64)
    m[5:20, 10:40] = 2
    m[25:30, 5:15] = 1
    r = resize_mask(m, 16)
    assert r.shape == (16, 16) and set(np.unique(r)) == {0, 1, 2}
    assert resized_spacing((0.5, 1.0), (37, 53), 16) == pytest.approx([0.5 * 37 / 16, 53 / 16])
    assert resized_spacing(None, (37, 53), 16) is None


def test_normalisation_ranges():
    img = np.arange(1001, dtype=np.float32)
    lo, hi = intensity_range("percentile", img, "float32", low=0.5, high=99.5)
    assert (lo, hi) == pytest.approx((5.0, 995.0))
    out = apply_range(img, lo, hi)
    assert out.min() == -1 and out.max() == 1 and out[500] == pytest.approx(0.0)
    assert intensity_range("ct_window", img, "int16", ct_center=40, ct_width=400) == (-160.0, 240.0)
    assert intensity_range("fixed", img, "uint8") == (0.0, 255.0)
    assert intensity_range("fixed", img, "float32") == (0.0, 1000.0)
    assert apply_range(np.full(4, 7.0), 7.0, 7.0).tolist() == [-1.0] * 4


def test_dedup_finds_planted_near_duplicates_only():
    rng = np.random.default_rng(0)
    imgs = [textured(rng, 48, 48).astype(np.float32) / 127.5 - 1 for _ in range(10)]
    imgs.append(np.clip(imgs[2] + rng.normal(0, 0.05, imgs[2].shape), -1, 1))  # noisy copy of #2
    imgs.append(np.clip(imgs[7] * 0.9 + 0.05, -1, 1))  # contrast-changed copy of #7
    th = np.stack([thumbnail(i) for i in imgs])
    pairs = find_duplicate_pairs(th, 0.9, 12)
    assert sorted((i, j) for i, j, _ in pairs) == [(2, 10), (7, 11)]
    assert union_groups(len(imgs), pairs) == [[2, 10], [7, 11]]
    # same-case pairs are ignored
    assert find_duplicate_pairs(th, 0.9, 12, groups=[str(i) for i in range(10)] + ["2", "x"]) == \
        [p for p in pairs if p[:2] == (7, 11)]


def test_dedup_does_not_chain_near_blank_images():
    """Near-blank images (empty MR slices of different patients) become ≈ −mean once the dataset mean is
    subtracted, so they correlated ≈ 1 and were grouped; their raw thumbnails share nothing, so they are not."""
    rng = np.random.default_rng(1)
    imgs = [textured(rng, 48, 48).astype(np.float32) / 127.5 - 1 for _ in range(10)]
    blank_a = np.full((48, 48), -1.0, np.float32) + rng.normal(0, 0.01, (48, 48)).astype(np.float32)
    blank_b = np.full((48, 48), -1.0, np.float32) + rng.normal(0, 0.01, (48, 48)).astype(np.float32)
    th = np.stack([thumbnail(i) for i in imgs + [blank_a, blank_b]])
    centred = th - th.mean(axis=0, keepdims=True)
    z = (centred - centred.mean(axis=(1, 2), keepdims=True)).reshape(12, -1)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    assert float(z[10] @ z[11]) > 0.99  # what the mean-subtracted check alone saw: a "duplicate"
    assert find_duplicate_pairs(th, 0.9, 12) == []
    # a real copy of a near-blank image is still found
    th2 = np.stack([thumbnail(i) for i in imgs + [blank_a, blank_a + 0.001]])
    assert [(i, j) for i, j, _ in find_duplicate_pairs(th2, 0.9, 12)] == [(10, 11)]


def test_case_level_pairs_merges_volumes_only_when_they_match_as_a_whole():
    # items 0-3: patient A (4 slices), 4-7: patient B (4 slices), 8-9: patient C (2 slices), 10, 11: 2-D images
    cases = ["A"] * 4 + ["B"] * 4 + ["C"] * 2 + ["x", "y"]
    one_level = [(1, 5, 0.95)]                           # A and B alike at one level: 1 of 4 slices each
    copied = [(0, 8, 0.97), (1, 9, 0.96)]                 # C copies two of A's slices: all of C
    within = [(2, 3, 0.99)]                               # inside A: kept as is
    two_d = [(10, 11, 0.93)]                              # one-image cases: one match is the whole case
    assert case_level_pairs(one_level + copied + within + two_d, cases) == copied + within + two_d
    assert case_level_pairs([(0, 4, 0.9), (1, 5, 0.9)], cases) == [(0, 4, 0.9), (1, 5, 0.9)]  # half of A: kept
    assert case_level_pairs([(0, 4, 0.9), (0, 5, 0.9)], cases) == [(0, 4, 0.9), (0, 5, 0.9)]  # half of B: kept
    assert case_level_pairs([(0, 4, 0.9)], cases, min_share=0.3) == []                     # 1/4 < 0.3


def test_prepare_groups_duplicates_into_one_case(tmp_path):
    src = write_png_folder(tmp_path / "s", n=8)
    a = np.asarray(Image.open(src / "images" / "img_01.png")).astype(np.int16)
    noisy = np.clip(a + np.random.default_rng(1).integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(src / "images" / "img_06.png")
    out = prepare_dataset(src, tmp_path / "d", _cfg(folds=4), progress=False)
    dup = json.loads((out / "duplicates.json").read_text())
    assert dup["groups"] == [["img_01", "img_06"]] and dup["threshold"] == 0.9
    ds = PreparedDataset.open(out)
    assert ds.case_of("img_06") == "img_01" and len(ds.cases()) == 7
    for k in range(4):
        tr, te = ds.split(k)
        assert ("img_01" in tr) == ("img_06" in tr) and ("img_01" in te) == ("img_06" in te)


def test_overwrite_and_config_round_trip(tmp_path):
    src = write_png_folder(tmp_path / "s", n=4)
    out = prepare_dataset(src, tmp_path / "d", _cfg(folds=2), progress=False)
    prepare_dataset(src, out, _cfg(folds=2, size=8), overwrite=True, progress=False)
    assert PreparedDataset.open(out).size == (8, 8)
    cfg = _cfg(empty_fraction=0.25, name="x")
    assert from_dict(PrepareConfig, to_dict(cfg)) == cfg


def test_progress_report_on_stderr(tmp_path, capsys):
    src = write_png_folder(tmp_path / "s", n=4)
    prepare_dataset(src, tmp_path / "d", _cfg(folds=2), progress=True)
    err = capsys.readouterr().err
    assert "4 items" in err and "near-duplicate group" in err
