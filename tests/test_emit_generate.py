"""Per-real generation of the EMIT-Diff ControlNet generator: n versions per real training pair, provenance,
seeds, determinism, resume, replay and the leakage guard."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthpair.errors import SynthpairError


@pytest.fixture(scope="module")
def ctl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import write_tiny_prepared
    from test_controlnet import make_base_run, train_control

    root = tmp_path_factory.mktemp("emitgen")
    data = write_tiny_prepared(root / "data", n=6, size=16, folds=3)
    base = make_base_run(root / "base", data)
    return data, train_control(data, base, root / "ctl", steps=1)


def _lines(syn: Path) -> list[dict]:
    return [json.loads(ln) for ln in (syn / "manifest.jsonl").read_text().splitlines()]


def test_n_versions_per_real_pair_with_provenance_and_determinism(ctl_run: tuple[Path, Path], tmp_path: Path) -> None:
    from synthpair.data.dataset import PreparedDataset, read_png
    from synthpair.synthesis.generate import GenerateConfig, generate, verify_pair

    data, ctl = ctl_run
    ds = PreparedDataset.open(data)
    train_ids, test_ids = ds.split(0)
    cfg = GenerateConfig(per_real=2, steps=2, batch_size=3, seed=10)
    syn = generate(ctl, tmp_path / "a", cfg, progress=False)
    lines = _lines(syn)
    assert len(lines) == 2 * len(train_ids)  # every version of every training pair, nothing more
    assert [r["seed"] for r in lines] == list(range(10, 10 + len(lines)))  # one seed per sample
    assert sorted(r["source_item"] for r in lines) == sorted(train_ids * 2)
    by_item: dict[str, list[int]] = {}
    for r in lines:
        by_item.setdefault(r["source_item"], []).append(r["version"])
        assert r["method"] == "controlnet" and r["source_case"] == ds.case_of(r["source_item"])
        assert r["prompt"].endswith(r["aug_phrase"]) and r["guidance"] == 1.0
        assert r["base_model_sha256"] and r["model_sha256"] and r["edges"]["detector"] == "canny"
        assert r["fold"] == 0 and not set(r["train_cases"]) & {ds.case_of(i) for i in test_ids}
        # the label is the real pair's mask
        np.testing.assert_array_equal(read_png(syn / "masks" / f"{r['id']}.png"),
                                      read_png(data / "masks" / f"{r['source_item']}.png"))
    assert all(sorted(v) == [0, 1] for v in by_item.values())
    # the phrase of a sample is a function of its seed only
    assert lines[0]["aug_phrase"] == _lines(syn)[0]["aug_phrase"]
    # bit-exact replay of a pair from the middle of a batch, and a second run gives identical files
    assert verify_pair(syn, lines[4]["id"])
    syn2 = generate(ctl, tmp_path / "b", cfg, progress=False)
    for r in lines:
        assert (syn / "images" / f"{r['id']}.png").read_bytes() == (syn2 / "images" / f"{r['id']}.png").read_bytes()
    # --aug-prompts none: plain prompts
    plain = _lines(generate(ctl, tmp_path / "c", GenerateConfig(per_real=1, steps=1, aug_prompts="none"), progress=False))
    assert all(r["aug_phrase"] is None and "," in r["prompt"] for r in plain)


def test_resume_after_an_interruption_gives_the_same_folder(ctl_run: tuple[Path, Path], tmp_path: Path) -> None:
    from synthpair.io import write_json_atomic
    from synthpair.synthesis.generate import GenerateConfig, generate

    _, ctl = ctl_run
    cfg = GenerateConfig(per_real=1, steps=1, batch_size=2)
    full = generate(ctl, tmp_path / "full", cfg, progress=False)
    part = tmp_path / "part"
    generate(ctl, part, cfg, progress=False)
    # simulate a stop after the first batch: progress says 2 pairs, files beyond stay as strays
    state = json.loads((part / "progress.json").read_text())
    write_json_atomic(part / "progress.json", {**state, "next_seed": 2, "kept": 2, "attempted": 2, "complete": False})
    (part / "dataset.json").unlink()
    generate(ctl, part, cfg, progress=False)
    assert (part / "manifest.jsonl").read_text().replace(str(part), "") == \
        (full / "manifest.jsonl").read_text().replace(str(full), "")


def test_leakage_guard_accepts_the_folder_and_refuses_a_test_item(ctl_run: tuple[Path, Path], tmp_path: Path) -> None:
    from synthpair.data.dataset import PreparedDataset
    from synthpair.segmentation.leakage import check_synthetic
    from synthpair.synthesis.generate import GenerateConfig, generate

    data, ctl = ctl_run
    real = PreparedDataset.open(data)
    syn = generate(ctl, tmp_path / "ok", GenerateConfig(per_real=1, steps=1), progress=False)
    check_synthetic(syn, real, [0])  # generated from fold 0's training pairs: accepted
    with pytest.raises(SynthpairError, match="evaluation split of fold 1"):
        check_synthetic(syn, real, [1])  # fold 1's test cases were training cases of this generator
    bad = tmp_path / "bad"
    shutil.copytree(syn, bad)
    test_item = real.split(0)[1][0]
    lines = _lines(bad)
    lines[0].update(source_item=test_item, source_id=test_item, source_case=real.case_of(test_item))
    (bad / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(SynthpairError, match="evaluation split of fold 0"):
        check_synthetic(bad, real, [0])


def test_per_real_is_required_and_only_for_controlnet(ctl_run: tuple[Path, Path], tmp_path: Path) -> None:
    from synthpair.cli.main import main
    from synthpair.synthesis.generate import GenerateConfig, generate

    _, ctl = ctl_run
    with pytest.raises(SynthpairError, match="pass --per-real N"):
        generate(ctl, tmp_path / "x", GenerateConfig(n=4), progress=False)
    with pytest.raises(SynthpairError, match="must be >= 0"):
        GenerateConfig(per_real=-1)
    assert main(["generate", str(ctl), "--out", str(tmp_path / "cli"), "--per-real", "1", "--steps", "1",
                 "--aug-prompts", "none"]) == 0
    assert len(_lines(tmp_path / "cli")) == 4
