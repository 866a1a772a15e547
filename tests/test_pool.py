"""``synthpair pool``: ids, prompts, channel conversion, excluded test splits (leakage), errors; a prompt run
pre-trained on a pool keeps the target's original case ids in its provenance."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.data.dataset import PreparedDataset
from synthpair.data.pool import build_pool, convert_channels, parse_source
from synthpair.errors import SynthpairError


pytestmark = pytest.mark.usefixtures("one_thread")


def _named(root: Path, name: str, ids_prefix: str = "", **kw) -> Path:
    """A tiny prepared folder named ``name`` whose item ids get ``ids_prefix`` (e.g. 'benign_') and whose
    case ids start with the name (distinct datasets, distinct cases)."""
    data = write_tiny_prepared(root, **kw)
    info = json.loads((data / "dataset.json").read_text())
    info["name"] = name
    for it in info["items"]:
        it["case"] = f"{name}{it['case']}"
    splits = json.loads((data / "splits.json").read_text())
    for f in splits["folds"]:
        f["train"] = [f"{name}{c}" for c in f["train"]]
        f["test"] = [f"{name}{c}" for c in f["test"]]
    (data / "splits.json").write_text(json.dumps(splits))
    if ids_prefix:
        for it in info["items"]:
            for sub in ("images", "masks"):
                (data / sub / f"{it['id']}.png").rename(data / sub / f"{ids_prefix}{it['id']}.png")
            it["id"] = ids_prefix + it["id"]
    (data / "dataset.json").write_text(json.dumps(info))
    return data


def test_pool_ids_prompts_channels_and_splits(tmp_path: Path) -> None:
    gray = _named(tmp_path / "g", "usdata", ids_prefix="benign_", n=6)
    rgb = _named(tmp_path / "c", "endo", n=4, channels=3, seed=1)
    out = build_pool(tmp_path / "pool", [(gray, "US, breast, {finding}"), (rgb, "endoscopy, colon, polyp")],
                     channels=1, progress=False)
    ds = PreparedDataset.open(out)
    assert ds.channels == 1 and ds.size == (16, 16) and len(ds.items) == 10
    first = ds.items[0]
    assert first["id"] == "usdata__benign_img000" and first["prompt"] == "US, breast, benign"
    assert first["source_dataset"] == "usdata" and first["source_id"] == "benign_img000"
    assert first["case"] == "usdatacase000" and first["source_data"] == str(gray.resolve())
    endo = [it for it in ds.items if it["source_dataset"] == "endo"]
    assert [it["prompt"] for it in endo] == ["endoscopy, colon, polyp"] * 4
    # gray items are byte copies; RGB items are luminance (Rec. 709 via skimage) of the [0, 1] intensities
    assert (out / "images" / "usdata__benign_img000.png").read_bytes() == (gray / "images" / "benign_img000.png").read_bytes()
    src = PreparedDataset.open(rgb)
    rgb_img, rgb_mask = src.load(["img000"])
    pooled_img, pooled_mask = ds.load(["endo__img000"])
    u = (rgb_img[0] + 1) / 2
    want = (0.2125 * u[0] + 0.7154 * u[1] + 0.0721 * u[2]) * 2 - 1
    assert np.abs(pooled_img[0, 0] - want).max() <= 1.0 / 127.5 + 1e-6
    assert np.array_equal(pooled_mask, rgb_mask)
    # one training-only fold with every case
    train, test = ds.split(0)
    assert len(train) == 10 and test == []
    assert json.loads((out / "splits.json").read_text())["num_folds"] == 1
    # gray → RGB by repetition
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32)
    assert np.array_equal(convert_channels(x, 3), np.repeat(x, 3, axis=1))
    assert parse_source("a/b:US, breast") == (Path("a/b"), "US, breast")
    assert parse_source("a/b") == (Path("a/b"), "{name}, {finding}")


def test_exclude_test_keeps_test_cases_out(tmp_path: Path) -> None:
    target = _named(tmp_path / "t", "target", n=9, folds=3)
    other = _named(tmp_path / "o", "other", n=3, seed=2)
    rc = main(["pool", "--out", str(tmp_path / "pool"), f"{target}:US, lesion", f"{other}:phantom, lesion",
               "--exclude-test", f"{target}:1"])
    assert rc == 0
    ds = PreparedDataset.open(tmp_path / "pool")
    tds = PreparedDataset.open(target)
    train_cases, test_cases = tds.fold_cases(1)
    pooled = {it["case"] for it in ds.items if it["source_dataset"] == "target"}
    assert pooled == set(train_cases) and not pooled & set(test_cases)
    assert len([it for it in ds.items if it["source_dataset"] == "other"]) == 3
    src = json.loads((tmp_path / "pool" / "dataset.json").read_text())["pool"]["sources"]
    assert src[0]["excluded_test"] == {"fold": 1, "test_cases": len(test_cases)} and src[1]["excluded_test"] is None


def test_pool_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _named(tmp_path / "a", "a", n=4)
    big = _named(tmp_path / "b", "b", n=4, size=32)
    with pytest.raises(SynthpairError, match=r"size 32x32 differs from the pool size 16x16; re-prepare it with "
                                             r"'synthpair prepare SRC --size 16'"):
        build_pool(tmp_path / "p1", [(a, "x"), (big, "y")], progress=False)
    assert not (tmp_path / "p1").exists()
    same = _named(tmp_path / "a2", "a", n=4)
    with pytest.raises(SynthpairError, match="both named 'a'"):
        build_pool(tmp_path / "p2", [(a, "x"), (same, "y")], progress=False)
    with pytest.raises(SynthpairError, match="not one of the pool's sources"):
        build_pool(tmp_path / "p3", [(a, "x")], exclude_test={str(big): 0}, progress=False)
    assert main(["pool", "--out", str(tmp_path / "p4"), f"{a}:x", "--exclude-test", f"{a}"]) == 2
    assert "expected DATA:FOLD" in capsys.readouterr().err


def test_pool_pretraining_records_original_target_cases(tmp_path: Path) -> None:
    """pool (target with fold-0 test excluded) → prompt run → full fine-tune on the target: the fine-tuned
    run's training cases are the target's original fold-0 training cases, never a test case."""
    from synthpair.diffusion import DiffusionConfig
    from synthpair.networks.prompt import PromptConfig
    from synthpair.networks.unet import UNetConfig
    from synthpair.training import TrainConfig, train_generator

    target = _named(tmp_path / "t", "busi", ids_prefix="benign_", n=6, folds=3)
    other = _named(tmp_path / "o", "phantom", n=3, seed=2)
    pool = build_pool(tmp_path / "pool", [(target, "US, breast, {finding}"), (other, "US, phantom, lesion")],
                      exclude_test={str(target): 0}, progress=False)
    cfg = TrainConfig(method="prompt", steps=1, batch_size=2, log_every=1, preview_every=0, preview_n=0,
                      checkpoint_every=0, amp="off", warmup_steps=1, device="cpu",
                      net=UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8,
                                     norm_num_groups=8),
                      prompt=PromptConfig(dim=16, max_len=6, heads=2, template="US, breast, {finding}"),
                      diffusion=DiffusionConfig(num_timesteps=20))
    train_generator(pool, tmp_path / "pre", cfg, progress=False)
    pre_cases = json.loads((tmp_path / "pre" / "training_cases.json").read_text())["cases"]
    train_cases, test_cases = PreparedDataset.open(target).fold_cases(0)
    assert set(train_cases) <= set(pre_cases) and not set(pre_cases) & set(test_cases)
    import dataclasses

    train_generator(target, tmp_path / "ft", dataclasses.replace(cfg, init_from=str(tmp_path / "pre")),
                    progress=False)
    ft = json.loads((tmp_path / "ft" / "training_cases.json").read_text())
    assert set(train_cases) <= set(ft["cases"]) and not set(ft["cases"]) & set(test_cases)
    vocab = json.loads((tmp_path / "ft" / "export" / "config.json").read_text())["vocabulary"]
    assert {"us", "breast", "benign", "phantom"} <= set(vocab)
