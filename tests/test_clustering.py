"""synthpair cluster: hand-worked features, KMeans on two obvious groups, fold hygiene, bad input, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthpair.data.clustering import (ClusterConfig, cluster_dataset, colour_histograms, mask_shape_features,
                                       pair_features, read_clusters)
from synthpair.errors import SynthpairError


def write_two_groups(root: Path, n: int = 16, size: int = 24, folds: int = 4) -> Path:
    """Even items: bright image with a large disk at the top left; odd: dark image, small disk bottom right."""
    from synthpair.data.dataset import dataset_info, write_dataset_json, write_pair
    from synthpair.io import write_json_atomic

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    items = []
    for i in range(n):
        big = i % 2 == 0
        cy, cx, r = (7, 7, 5.5) if big else (17, 17, 2.5)
        cy, cx = cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.int64)
        base = 0.4 if big else -0.6
        img = np.clip(rng.normal(base, 0.15, (3, size, size)) + 0.3 * mask[None], -1, 1)
        write_pair(root, f"img{i:03d}", img, mask)
        items.append({"id": f"img{i:03d}", "case": f"case{i:03d}", "spacing": None, "slice_index": None,
                      "foreground_fraction": float(mask.mean())})
    write_dataset_json(root, dataset_info(name="two", modality="endoscopy", channels=3,
                                          labels={"background": 0, "polyp": 1}, size=(size, size),
                                          normalisation={"method": "none"}, items=items))
    cases = [it["case"] for it in items]
    fold_of = (np.arange(n) // 2) % folds  # both groups in every fold
    write_json_atomic(root / "splits.json", {"by": "case", "seed": 0, "num_folds": folds, "folds": [
        {"fold": k, "train": [c for c, f in zip(cases, fold_of) if f != k],
         "test": [c for c, f in zip(cases, fold_of) if f == k]} for k in range(folds)]})
    return root


@pytest.fixture
def two_groups(tmp_path: Path) -> Path:
    return write_two_groups(tmp_path / "data")


def test_colour_histogram_and_mask_shape_by_hand() -> None:
    img = np.full((1, 2, 4, 4), -1.0, dtype=np.float32)
    img[0, 1, :2] = 0.99  # channel 1: half the pixels in the top bin
    h = colour_histograms(img, bins=4)
    np.testing.assert_allclose(h[0], [1, 0, 0, 0, 0.5, 0, 0, 0.5])
    m = np.zeros((2, 10, 10), dtype=np.int64)
    m[0, 2:6, 4:8] = 1  # a 4x4 square: area 16/100, centroid (3.5, 5.5), solid, one component
    f = mask_shape_features(m)
    assert f[0, 0] == pytest.approx(0.16)
    assert f[0, 3] == pytest.approx(1.0)               # solidity
    assert f[0, 4:7] == pytest.approx([0.35, 0.55, 1.0])  # centroid row/H, col/W, components
    assert f[0, 2] == pytest.approx(0.0, abs=1e-6)     # a square's eccentricity
    assert np.all(f[1] == 0)                           # empty mask → zeros
    assert np.isfinite(f).all()


def test_clusters_separate_groups_only_training_and_reproducible(two_groups: Path, tmp_path: Path) -> None:
    from synthpair.data.dataset import PreparedDataset
    from synthpair.training.trainer import read_item_subset

    ds = PreparedDataset.open(two_groups)
    train, test = ds.split(1)
    res = cluster_dataset(two_groups, tmp_path / "cl", ClusterConfig(k=2, fold=1, seed=3))
    assert set(res["assignments"]) == set(train) and not set(res["assignments"]) & set(test)
    groups = {int(i[3:]) % 2 for i, c in res["assignments"].items() if c == 0}
    assert len(groups) == 1  # each cluster is exactly one group
    assert sorted(res["sizes"]) == [6, 6] and res["fold"] == 1
    on_disk = json.loads((tmp_path / "cl" / "clusters.json").read_text())
    assert on_disk["assignments"] == res["assignments"] and on_disk["format"] == "synthpair-clusters"
    for c in range(2):
        ids = read_item_subset(tmp_path / "cl" / f"cluster_{c}.json", train, 1)  # usable as --set items=
        assert sorted(ids) == sorted(i for i, v in res["assignments"].items() if v == c)
    again = cluster_dataset(two_groups, tmp_path / "cl2", ClusterConfig(k=2, fold=1, seed=3))
    assert again["assignments"] == res["assignments"] and again["inertia"] == pytest.approx(res["inertia"])
    # a test image changed beyond recognition does not move any cluster
    from synthpair.io import save_png_atomic

    save_png_atomic(two_groups / "images" / f"{test[0]}.png", np.zeros((24, 24, 3), np.uint8))
    third = cluster_dataset(two_groups, tmp_path / "cl3", ClusterConfig(k=2, fold=1, seed=3))
    assert third["assignments"] == res["assignments"]
    assert read_clusters(tmp_path / "cl", train)["k"] == 2
    with pytest.raises(SynthpairError, match="no cluster"):
        read_clusters(tmp_path / "cl", train + test[:1])


def test_bad_input(two_groups: Path, tmp_path: Path) -> None:
    with pytest.raises(SynthpairError, match="larger than the 12 training images"):
        cluster_dataset(two_groups, tmp_path / "a", ClusterConfig(k=13, fold=0))
    assert not (tmp_path / "a").exists()
    imgs = np.zeros((2, 3, 24, 24), np.float32)
    masks = np.zeros((2, 24, 24), np.int64)
    with pytest.raises(SynthpairError, match="needs --weights"):
        pair_features(imgs, masks, "inception", None)
    with pytest.raises(SynthpairError, match="not found"):
        pair_features(imgs, masks, "inception", tmp_path / "missing.safetensors")
    import torch
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(SynthpairError, match="not an Inception-v3 state dict"):
        cluster_dataset(two_groups, tmp_path / "b", ClusterConfig(k=2, extractor="inception",
                                                                  weights=str(tmp_path / "tiny.safetensors")))
    assert not (tmp_path / "b").exists()
    with pytest.raises(SynthpairError, match="k"):
        ClusterConfig(k=0)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(SynthpairError, match="not a synthpair clusters file"):
        read_clusters(tmp_path / "bad.json")


def test_cli(two_groups: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthpair.cli.main import main

    assert main(["cluster", str(two_groups), "--fold", "0", "--k", "2", "--out", str(tmp_path / "cl")]) == 0
    assert (tmp_path / "cl" / "cluster_1.json").is_file()
    assert main(["cluster", str(two_groups), "--k", "99", "--out", str(tmp_path / "c2")]) == 2
    assert "choose k <= 12" in capsys.readouterr().err
    assert main(["cluster", str(two_groups), "--k", "2", "--out", str(tmp_path / "cl")]) == 2  # exists
