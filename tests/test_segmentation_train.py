"""End-to-end segment on the tiny dataset, determinism, leakage guard and input checks."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_prepared
from synthpair.data.dataset import PreparedDataset, dataset_info, write_dataset_json, write_pair
from synthpair.errors import SynthpairError
from synthpair.metrics.segmentation import METRICS
from synthpair.segmentation.leakage import check_synthetic
from synthpair.segmentation.models import build_segmenter, check_model
from synthpair.segmentation.train import SegmentConfig, segment

TINY = SegmentConfig(steps=12, batch_size=4, eval_batch=8)


@pytest.fixture(autouse=True)
def one_thread():
    # two threads on two shared, busy cores spin-wait and run ~50× slower; one thread is steady
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_syn(root: Path, train_cases: list[str], n: int = 6, size: int = 16, channels: int = 1,
              num_classes: int = 2, source_cases: list[str] | None = None, manifest: bool = True) -> Path:
    """A synthetic folder in the SYN layout (dataset.json, images/, masks/, manifest.jsonl)."""
    rng = np.random.default_rng(1)
    items, lines = [], []
    for i in range(n):
        mask = np.zeros((size, size), np.int64)
        mask[4:10, 5:11] = 1 + i % (num_classes - 1)
        img = np.clip(rng.normal(-0.5, 0.1, (channels, size, size)) + (mask > 0)[None], -1, 1)
        write_pair(root, f"syn{i:03d}", img, mask)
        src = (source_cases or train_cases)[i % len(source_cases or train_cases)]
        items.append({"id": f"syn{i:03d}", "case": f"syn{i:03d}", "spacing": None})
        lines.append({"id": f"syn{i:03d}", "seed": i, "train_cases": train_cases, "fold": 0,
                      "source_case": src, "method": "joint"})
    labels = {"background": 0, **{f"class{k}": k for k in range(1, num_classes)}}
    write_dataset_json(root, dataset_info(name="syn", modality="phantom", channels=channels, labels=labels,
                                          size=(size, size), normalisation={"method": "none"}, items=items))
    if manifest:
        (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_segment_end_to_end_writes_all_outputs(tiny_data, tmp_path):
    out = tmp_path / "seg"
    res = segment(tiny_data, out, TINY, progress=False)
    ds = PreparedDataset.open(tiny_data)
    _, test_ids = ds.split(0)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == res["summary"]
    assert on_disk["setting"] == "real-only" and on_disk["distance_unit"] == "mm"
    assert [r["id"] for r in on_disk["per_case"]] == test_ids
    for row in on_disk["per_case"]:
        assert row["fold"] == 0 and row["case"] == ds.case_of(row["id"])
        for m in METRICS:
            assert math.isfinite(row[m])
        assert 0 <= row["dice"] <= 1 and 0 <= row["hd95"] <= math.hypot(16, 16)
    for m in METRICS:
        assert on_disk["summary"][m]["n"] == len(test_ids)
        assert on_disk["summary"][m]["mean"] == pytest.approx(np.mean([r[m] for r in on_disk["per_case"]]))
    fold = on_disk["folds"][0]
    assert fold["n_train_real"] == 8 and fold["n_test"] == 4 and fold["n_synthetic"] == 0
    losses = [json.loads(x) for x in (out / "fold_0" / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in losses] == list(range(1, 13)) and all(math.isfinite(x["loss"]) for x in losses)
    with open(out / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == test_ids and float(rows[0]["dice"]) == pytest.approx(res["per_case"][0]["dice"])
    assert json.loads((out / "config.json").read_text())["steps"] == 12
    from safetensors.torch import load_file

    model = build_segmenter("unet", 1, 2)
    model.load_state_dict(load_file(out / "fold_0" / "model.safetensors"))
    # refuses to overwrite a finished folder
    with pytest.raises(SynthpairError, match="already exists"):
        segment(tiny_data, out, TINY, progress=False)


def test_segment_is_deterministic_and_learns(tiny_data, tmp_path):
    cfg = SegmentConfig(steps=30, batch_size=4, lr=3e-3)
    a = segment(tiny_data, tmp_path / "a", cfg, progress=False)
    b = segment(tiny_data, tmp_path / "b", cfg, progress=False)
    assert a["per_case"] == b["per_case"]
    la = (tmp_path / "a" / "fold_0" / "loss.jsonl").read_text()
    assert la == (tmp_path / "b" / "fold_0" / "loss.jsonl").read_text()
    losses = [json.loads(x)["loss"] for x in la.splitlines()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the bright disks are easy: the loss must fall


def test_segment_with_clean_synthetic_folder(tiny_data, tmp_path):
    ds = PreparedDataset.open(tiny_data)
    train_cases, _ = ds.fold_cases(0)
    syn = write_syn(tmp_path / "syn", train_cases)
    res = segment(tiny_data, tmp_path / "seg", SegmentConfig(steps=6, batch_size=4, ratio=1.0), synthetic_dir=syn,
                  progress=False)
    assert res["setting"] == "real+synthetic r=1" and res["folds"][0]["n_synthetic"] == 6
    assert res["synthetic"] == str(syn.resolve())


def test_leakage_guard_refuses_test_cases(tiny_data, tmp_path):
    ds = PreparedDataset.open(tiny_data)
    train_cases, test_cases = ds.fold_cases(0)
    leaky = write_syn(tmp_path / "leaky", train_cases + test_cases[:2])
    with pytest.raises(SynthpairError) as err:
        segment(tiny_data, tmp_path / "seg", SegmentConfig(steps=2, ratio=0.5), synthetic_dir=leaky, progress=False)
    msg = str(err.value)
    assert str(leaky) in msg and "fold 0" in msg and test_cases[0] in msg and test_cases[1] in msg
    assert "\n" not in msg and not (tmp_path / "seg").exists()
    # source_case alone can leak too
    src_leak = write_syn(tmp_path / "src_leak", train_cases, source_cases=[test_cases[0]])
    with pytest.raises(SynthpairError, match=f"fold 0.*{test_cases[0]}"):
        check_synthetic(src_leak, ds, [0])
    # a folder clean for fold 0 leaks into fold 1 (fold 0's training cases are fold 1's test cases)
    clean = write_syn(tmp_path / "clean", train_cases)
    assert check_synthetic(clean, ds, [0]).channels == 1
    with pytest.raises(SynthpairError, match="fold 1"):
        check_synthetic(clean, ds, [0, 1])


def test_synthetic_folder_checks(tiny_data, tmp_path):
    ds = PreparedDataset.open(tiny_data)
    train_cases, _ = ds.fold_cases(0)
    no_manifest = write_syn(tmp_path / "nomani", train_cases, manifest=False)
    expected = "has no manifest.jsonl; synthetic folders must come from `synthpair generate`"
    with pytest.raises(SynthpairError, match=expected):
        check_synthetic(no_manifest, ds, [0])
    with pytest.raises(SynthpairError, match="size 32×32 but the real data"):
        check_synthetic(write_syn(tmp_path / "big", train_cases, size=32), ds, [0])
    with pytest.raises(SynthpairError, match="3 channel"):
        check_synthetic(write_syn(tmp_path / "rgb", train_cases, channels=3), ds, [0])
    with pytest.raises(SynthpairError, match="3 classes"):
        check_synthetic(write_syn(tmp_path / "multi", train_cases, num_classes=3), ds, [0])
    with pytest.raises(SynthpairError, match="ratio=0"):
        segment(tiny_data, tmp_path / "s", SegmentConfig(steps=2), progress=False,
                synthetic_dir=write_syn(tmp_path / "ok", train_cases))
    with pytest.raises(SynthpairError, match="needs a synthetic folder"):
        segment(tiny_data, tmp_path / "s", SegmentConfig(steps=2, ratio=0.5), progress=False)


def test_unknown_model_and_bad_sizes(tiny_data, tmp_path):
    with pytest.raises(SynthpairError) as err:
        check_model("transunet")
    assert str(err.value) == ("--model 'transunet': unknown segmenter; choose one of unet, attention_unet, "
                              "basic_unet, segresnet, swin_unetr, resnet50_unet")
    with pytest.raises(ValueError, match="unknown"):
        SegmentConfig(model="transunet")
    with pytest.raises(SynthpairError, match="swin_unetr: image size 16×16"):
        segment(tiny_data, tmp_path / "s", SegmentConfig(model="swin_unetr", steps=2), progress=False)
    with pytest.raises(SynthpairError, match="folds 0..2"):
        segment(tiny_data, tmp_path / "s", SegmentConfig(steps=2, folds=(5,)), progress=False)


@pytest.mark.parametrize("name", ["attention_unet", "segresnet", "basic_unet", "swin_unetr", "resnet50_unet"])
def test_other_segmenters_build_and_run(name):
    size = {"basic_unet": 32, "swin_unetr": 64, "resnet50_unet": 64}.get(name, 16)
    model = build_segmenter(name, 3, 4, (size, size))
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 4, size, size)


def test_resnet50_unet_is_the_resnet50_encoder_and_trains(tmp_path):
    """EMIT-Diff's backbone ablation: a ResNet-50 encoder (its bottleneck blocks: 3, 4, 6, 3), random weights,
    one channel in; a few steps of 'synthpair segment' on 64×64 data lower nothing to NaN and write results."""
    model = build_segmenter("resnet50_unet", 1, 2, (64, 64))
    enc = model.encoder
    assert [len(getattr(enc, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert 25e6 < sum(p.numel() for p in model.parameters()) < 40e6
    with pytest.raises(SynthpairError, match="multiple of 32"):
        check_model("resnet50_unet", (48, 48))
    data = write_tiny_prepared(tmp_path / "d", n=6, size=64, folds=2)
    res = segment(data, tmp_path / "seg", SegmentConfig(model="resnet50_unet", steps=2, batch_size=2,
                                                        augment="none", folds=(0,)), progress=False)
    assert all(math.isfinite(r["dice"]) for r in res["per_case"])


def test_multiclass_rgb_end_to_end(tmp_path):
    data = write_tiny_prepared(tmp_path / "d", n=9, size=16, folds=3, channels=3, num_classes=3)
    res = segment(data, tmp_path / "seg", SegmentConfig(steps=4, batch_size=4, augment="none"), progress=False)
    assert {"dice_1", "dice_2", "hd95_2"} <= set(res["per_case"][0]) and res["num_classes"] == 3
