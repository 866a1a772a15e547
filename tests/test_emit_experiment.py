"""``synthpair experiment emit-diff`` end to end on phantoms (tiny budgets), stage resume, tables, pool guard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthpair.errors import SynthpairError


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["experiment", "emit-diff", str(data), "--out", str(out), "--gen-steps", "1", "--seg-steps", "2",
            "--gen-batch", "4", "--seg-batch", "4", "--net-channels", "8", "16", "--sample-steps", "1",
            "--n", "1", "2", "--alphas", "0.5", "--patches", "4", "--models", "unet",
            "--table-model", "unet", "--augmentations", "random_gamma", "--base-set", "prompt.dim=16",
            "--base-set", "prompt.heads=2", "--no-progress", *extra]


@pytest.mark.slow
def test_emit_experiment_end_to_end_and_resume(tmp_path: Path) -> None:
    from conftest import write_tiny_prepared

    from synthpair.cli.main import main

    data = write_tiny_prepared(tmp_path / "data", n=6, size=16, folds=3)
    out = tmp_path / "exp"
    assert main(_argv(data, out)) == 0
    res = json.loads((out / "results.json").read_text())
    main_t = res["tables"]["main"]
    rows = list(main_t["rows"])
    assert rows[0] == "Baseline (no augmentation)" and "RandomGamma" in rows
    assert any(r.startswith("EMIT-Diff (ours)") for r in rows)
    n_test = len(json.loads((data / "splits.json").read_text())["folds"][0]["test"])
    assert all(s["dice"]["n"] == n_test for s in main_t["rows"].values())
    assert set(main_t["paired"]) == set(rows[1:])
    titles = set(res["tables"])
    assert {"ablation: n (synthetic versions per real pair)", "ablation: backbone",
            "ablation: mixing (image vs loss)", "ablation: patch size", "ablation: alpha (real fraction of patches)"} <= titles
    # the n=1 ablation trains on a subset holding version 0 of each real pair only
    sub = [json.loads(ln) for ln in (out / "fold_0" / "synthetic_n1" / "manifest.jsonl").read_text().splitlines()]
    full = [json.loads(ln) for ln in (out / "fold_0" / "synthetic" / "manifest.jsonl").read_text().splitlines()]
    assert len(full) == 2 * len(sub) and {r["version"] for r in sub} == {0}
    # one SEG folder per distinct setting: rows of several tables that train the same thing share it
    seg = sorted((out / "fold_0" / "seg").glob("*/results.json"))
    assert len(seg) == 8  # 5 main rows + n=1 + patch=4 + loss mixing (n=2, alpha=0.5, unet rows reuse)
    md = (out / "results.md").read_text()
    assert "| Method | Dice ↑" in md and "(baseline)" in md
    # rerunning resumes: every stage is complete, nothing is retrained (results unchanged, seg folders kept)
    mtimes = {p: p.stat().st_mtime for p in (out / "fold_0" / "seg").glob("*/results.json")}
    assert main(_argv(data, out)) == 0
    assert {p: p.stat().st_mtime for p in (out / "fold_0" / "seg").glob("*/results.json")} == mtimes
    # other result-relevant settings are refused (the CLI prints the one-line error and exits 2)
    assert main(_argv(data, out, "--alpha", "0.3")) == 2
    from synthpair.experiments.emit import _check_config

    with pytest.raises(SynthpairError, match=r"other settings: alpha \(0.5 -> 0.3\)"):
        _check_config(out, {**json.loads((out / "config.json").read_text()), "alpha": 0.3})


def test_pool_leakage_guard_by_case_and_by_content(tmp_path: Path) -> None:
    from conftest import write_tiny_prepared

    from synthpair.data.dataset import PreparedDataset
    from synthpair.experiments.emit import check_pool_leakage

    target = PreparedDataset.open(write_tiny_prepared(tmp_path / "t", n=6, size=16, seed=0))
    other = PreparedDataset.open(write_tiny_prepared(tmp_path / "o", n=6, size=16, seed=5))
    same = PreparedDataset.open(write_tiny_prepared(tmp_path / "s", n=6, size=16, seed=0))
    with pytest.raises(SynthpairError, match="test case"):
        check_pool_leakage(other, target, [0])  # same case ids (case000...) → refused by id
    # rename the cases of an identical copy: still refused, by image content
    info = json.loads((tmp_path / "s" / "dataset.json").read_text())
    for it in info["items"]:
        it["case"] = "x" + it["case"]
    (tmp_path / "s" / "dataset.json").write_text(json.dumps(info))
    splits = json.loads((tmp_path / "s" / "splits.json").read_text())
    for f in splits["folds"]:
        f["train"], f["test"] = ["x" + c for c in f["train"]], ["x" + c for c in f["test"]]
    (tmp_path / "s" / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SynthpairError, match="test case"):
        check_pool_leakage(PreparedDataset.open(tmp_path / "s"), target, [0])
    del same
    # a disjoint pool (other cases, other images) passes
    info = json.loads((tmp_path / "o" / "dataset.json").read_text())
    for it in info["items"]:
        it["case"] = "o" + it["case"]
    (tmp_path / "o" / "dataset.json").write_text(json.dumps(info))
    splits = json.loads((tmp_path / "o" / "splits.json").read_text())
    for f in splits["folds"]:
        f["train"], f["test"] = ["o" + c for c in f["train"]], ["o" + c for c in f["test"]]
    (tmp_path / "o" / "splits.json").write_text(json.dumps(splits))
    check_pool_leakage(PreparedDataset.open(tmp_path / "o"), target, [0])


def test_table_settings_are_compute_matched_and_shaped_like_table_2() -> None:
    import argparse

    from synthpair.experiments.emit import CLASSIC, ablation_settings, add_arguments, table_settings

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["DATA", "--out", "X"])
    rows = table_settings(args)
    names = [r[0] for r in rows]
    assert names[:2] == ["Baseline (no augmentation)", "Baseline + flip_rot (synthpair default)"]
    assert len(rows) == 2 + len(CLASSIC) + 1 + 2 and "DeepStack" in names
    assert all(kw["model"] == "attention_unet" for _, kw, _ in rows)  # the paper's backbone for every row
    ours = [r for r in rows if r[2] == "full"]
    assert ours[0][1] == {"model": "attention_unet", "mixing": "patch", "alpha": 0.5, "patch": 8, "augment": "none"}
    abl = ablation_settings(args)
    assert [r[0] for r in abl["n (synthetic versions per real pair)"]][1:] == ["ours n=1", "ours n=2", "ours n=5", "ours n=10"]
    assert [r[2] for r in abl["n (synthetic versions per real pair)"]][1:] == ["n=1", "n=2", "n=5", "full"]
    assert len(abl["backbone"]) == 6 and abl["mixing (image vs loss)"][2][1]["mixing"] == "patch_loss"


def test_rows_are_claimed_by_one_process_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from synthpair.experiments.emit import claim

    lock = tmp_path / "seg" / ".row.lock"
    assert claim(lock) and lock.read_text() == str(os.getpid())
    assert not claim(lock)  # held by a live process (this one)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # that process has exited
    assert claim(lock) and lock.read_text() == str(os.getpid())
