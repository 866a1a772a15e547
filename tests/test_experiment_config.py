"""Studies share one resume check (``config.claim_config``) and every registered experiment has ``--dry-run``:
it validates, prints the resolved config and the planned runs, and writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthpair.config import claim_config
from synthpair.errors import SynthpairError
from test_clustering import write_two_groups


def test_claim_config_writes_checks_ignores_and_grows(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    first = {"steps": 10, "rows": ["a", "b"], "stages": ["x"], "size": 64}
    assert claim_config(path, first) == first
    assert json.loads(path.read_text()) == first
    # the same settings (stages may change: ignored) resume; the saved file records the new stages
    claim_config(path, {**first, "stages": ["y"]}, ignore=("stages",))
    assert json.loads(path.read_text())["stages"] == ["y"]
    # another result-relevant value is refused in one line naming the key, the old and the new value
    with pytest.raises(SynthpairError, match=r"holds a study with other settings: steps \(10 -> 20\)") as err:
        claim_config(path, {**first, "steps": 20, "stages": ["y"]}, what="study", ignore=("stages",))
    assert "\n" not in str(err.value)
    assert json.loads(path.read_text())["steps"] == 10  # nothing written on refusal
    # a growing key is the union, old order first; it is never a change
    merged = claim_config(path, {**first, "rows": ["c", "a"], "stages": ["y"]}, ignore=("stages",), grow=("rows",))
    assert merged["rows"] == ["a", "b", "c"] and json.loads(path.read_text())["rows"] == ["a", "b", "c"]
    # only: just these keys are compared
    claim_config(path, {**merged, "size": 128}, only=("steps",))
    # write=False: checked, not written
    before = path.read_text()
    claim_config(path, {**first, "steps": 10, "extra": 1}, only=("steps",), write=False)
    assert path.read_text() == before


def test_every_experiment_has_dry_run() -> None:
    from synthpair.cli.main import build_parser
    from synthpair.experiments import EXPERIMENTS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    exp = next(a for a in sub.choices["experiment"]._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(exp.choices) == set(EXPERIMENTS)
    for name, p in exp.choices.items():
        assert any("--dry-run" in a.option_strings for a in p._actions), name


def test_emit_dry_run_plans_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from synthpair.cli.main import main

    data = write_two_groups(tmp_path / "data", n=8, size=16)
    out = tmp_path / "emit"
    assert main(["experiment", "emit-diff", str(data), "--out", str(out), "--gen-steps", "7", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    cfg = json.loads(printed[:printed.index("\n}") + 2])
    assert cfg["gen_steps"] == 7 and cfg["data"] == str(data.resolve()) and "dry_run" not in cfg
    assert f"fold 0: prompt base 7 steps -> {out / 'fold_0' / 'base'}" in printed
    assert "ablation 'alpha (real fraction of patches)', 5 rows" in printed
    assert not out.exists()
    # bad input is still refused before anything is written
    assert main(["experiment", "emit-diff", str(data), "--out", str(out), "--size", "32", "--dry-run"]) == 2
    assert main(["experiment", "emit-diff", str(tmp_path / "nothing"), "--out", str(out), "--dry-run"]) == 2
    assert not out.exists()


def _fake_run(path: Path) -> Path:
    (path / "export").mkdir(parents=True)
    for f in ("model.safetensors", "version.json", "config.json"):
        (path / "export" / f).write_text("{}")
    return path


def test_pig_dry_run_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from synthpair.cli.main import main

    data = write_two_groups(tmp_path / "data", n=8, size=16)
    out = tmp_path / "pig"
    m2i, joint, seg = tmp_path / "m2i", tmp_path / "joint", tmp_path / "seg"
    args = ["experiment", "pig", "--data", str(data), "--out", str(out), "--mask2image", str(m2i), "--joint",
            str(joint), "--segmenter", str(seg), "--n", "5", "10"]
    # the runs it reads are checked first: a missing one is one line naming it and the flag
    assert main([*args, "--dry-run"]) == 2
    assert f"{m2i}: no finished mask2image run" in capsys.readouterr().err
    _fake_run(m2i), _fake_run(joint)
    assert main([*args, "--dry-run"]) == 2
    assert "not a finished 'synthpair segment' folder" in capsys.readouterr().err
    seg.mkdir()
    (seg / "results.json").write_text("{}")
    assert main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"gen: 10 joint pairs (DDIM 25) -> {out / 'syn' / 'joint_10'}" in printed
    assert f"seg: real + 5 pig pairs, 600 steps x batch 16 -> {out / 'seg' / 'pig_5'}" in printed
    assert not out.exists()
    # a resumed experiment with another result-relevant setting is refused (stages, methods and N may change)
    out.mkdir()
    assert main([*args, "--stages", "table", "--seg-steps", "9", "--dry-run"]) == 0  # dry runs never claim
    from synthpair.experiments.pig import RESUME_FREE, resolve
    from synthpair.cli.main import build_parser

    ns = build_parser().parse_args([*args, "--seg-steps", "9"])
    claim_config(out / "config.json", resolve(ns), what="experiment", ignore=RESUME_FREE)
    ns2 = build_parser().parse_args([*args, "--seg-steps", "10", "--methods", "pig"])
    with pytest.raises(SynthpairError, match=r"seg_steps \(9 -> 10\)"):
        claim_config(out / "config.json", resolve(ns2), what="experiment", ignore=RESUME_FREE)


def test_polyp_dry_run_plans_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from synthpair.cli.main import main

    data = write_two_groups(tmp_path / "data", n=8, size=16)
    out = tmp_path / "polyp"
    assert main(["experiment", "polyp", str(data), "--out", str(out), "--diff", "inpaint", "--per-cluster",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "clusters: k = 4 (handcrafted features)" in printed and "prepare:" not in printed
    assert f"synthetic: diff_pc, 1 pair(s) per training image (RePaint (fast)) -> {out / 'syn' / 'diff_pc'}" in printed
    assert not out.exists()
    assert main(["experiment", "polyp", str(tmp_path / "none"), "--out", str(out), "--dry-run"]) == 2
    assert not out.exists()


def test_args_config_drops_the_cli_keys_and_lists_tuples() -> None:
    import argparse

    from synthpair.config import args_config

    ns = argparse.Namespace(func=print, command="experiment", experiment="pig", dry_run=True, out="o", n=(1, 2),
                            seed=3)
    assert args_config(ns) == {"out": "o", "n": [1, 2], "seed": 3}
    assert args_config(ns, drop=("out",)) == {"n": [1, 2], "seed": 3}
