"""The CLI: one end-to-end run on tiny phantoms, and bad input → one line, exit 2, nothing half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthpair.cli.main import main

TINY_NET = ["--set", "net.channels=[8,16]", "--set", "net.attention_levels=[false,false]",
            "--set", "net.norm_num_groups=8", "--set", "net.num_head_channels=8"]
TINY_TRAIN = ["--steps", "2", "--set", "batch_size=4", "--set", "preview_every=0", "--set", "amp=off", *TINY_NET]
TINY_RUN = ["--set", "phantoms=12", "--set", "phantom_size=32", "--set", "prepare.size=16",
            "--set", "prepare.folds=3", "--set", "train.steps=3", "--set", "train.batch_size=4",
            "--set", "train.preview_every=0", "--set", "train.net.channels=[8,16]",
            "--set", "train.net.attention_levels=[false,false]", "--set", "train.net.norm_num_groups=8",
            "--set", "train.net.num_head_channels=8", "--set", "generate.n=6", "--set", "generate.steps=3",
            "--set", "generate.min_area=0", "--set", "generate.keep_empty=true",
            "--set", "segment.steps=3", "--set", "segment.batch_size=4", "--set", "ratios=[0.5]"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("synthpair: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthpair.data.phantoms import write_phantom_source

    root = tmp_path_factory.mktemp("cli")
    src = write_phantom_source(root / "src", n=12, size=32, seed=1)
    assert main(["prepare", str(src), "--out", str(root / "data"), "--size", "16", "--folds", "3"]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def trained(prepared: Path) -> Path:
    run = prepared.parent / "run"
    assert main(["train", str(prepared), "--method", "joint", "--out", str(run), "--fold", "0", *TINY_TRAIN]) == 0
    return run


def test_end_to_end_demo_command_on_tiny_phantoms(tmp_path: Path) -> None:
    """The real console entry point, in a subprocess, as a user runs it."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "synthpair", "demo", "--out", str(out), *TINY_RUN],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| real-only |" in proc.stdout and "| real+synthetic r=0.5 |" in proc.stdout
    assert f"report: {out / 'report' / 'report.html'}" in proc.stdout
    res = json.loads((out / "report" / "results.json").read_text())
    assert set(res["settings"]) == {"real-only", "real+synthetic r=0.5"}
    for s in res["settings"].values():
        assert s["summary"]["dice"]["n"] == len(s["per_case"]) > 0
    for fig in ("real_pairs.png", "synthetic_pairs_fold_0.png", "loss_curves.png"):
        assert (out / "report" / "figures" / fig).stat().st_size > 1000
    assert (out / "generator" / "fold_0" / "export" / "model.safetensors").is_file()
    # rerunning the finished command is a no-op resume, not an error
    again = subprocess.run([sys.executable, "-m", "synthpair", "demo", "--out", str(out), *TINY_RUN],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    # …but a different config into the same folder is refused
    other = subprocess.run([sys.executable, "-m", "synthpair", "demo", "--out", str(out), *TINY_RUN,
                            "--set", "segment.steps=4"], capture_output=True, text=True, env=env, timeout=300)
    assert other.returncode == 2 and "another config" in other.stderr and "Traceback" not in other.stderr


def test_dry_run_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["run", "SRC", "--out", "x", "--dry-run", "--set", "train.steps=77",
                            "--set", "folds=[0,1]"], capsys)
    cfg = json.loads(out)
    assert code == 0 and cfg["train"]["steps"] == 77 and cfg["folds"] == [0, 1]
    assert not Path("x").exists()


@pytest.mark.parametrize("args, fragments", [
    (["run", "SRC", "--out", "x", "--dry-run", "--set", "train.stepz=3"], ["train.stepz", "valid keys"]),
    (["run", "SRC", "--out", "x", "--dry-run", "--set", "train.steps=many"], ["train.steps", "integer"]),
    (["demo", "--dry-run", "--set", "segment.model=resnet9000"], ["resnet9000", "unet"]),
])
def test_bad_set_keys_and_values(args: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *fragments)


def test_prepare_missing_and_empty_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, str(tmp_path / "empty"))
    assert not (tmp_path / "o").exists()


def test_unknown_method_and_model(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", str(prepared), "--method", "gan", "--out", str(tmp_path / "r"), *TINY_TRAIN],
                           capsys)
    assert_one_line_error(code, err, "gan", "joint")
    assert not (tmp_path / "r" / "export").exists()
    code, _, err = run_cli(["segment", str(prepared), "--out", str(tmp_path / "s"), "--model", "vgg"], capsys)
    assert_one_line_error(code, err, "vgg", "unet")


def test_resume_with_another_config(prepared: Path, trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", str(prepared), "--method", "joint", "--out", str(trained), "--resume",
                            *TINY_TRAIN, "--set", "lr=0.5"], capsys)
    assert_one_line_error(code, err, "state.pt", "lr")


def test_synthetic_without_manifest(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    fake = tmp_path / "fake_syn"
    shutil.copytree(prepared, fake)
    code, _, err = run_cli(["segment", str(prepared), "--out", str(tmp_path / "s"), "--synthetic", str(fake),
                            "--mix", "ratio=0.5", "--steps", "2"], capsys)
    assert_one_line_error(code, err, "manifest.jsonl", str(fake))
    assert not (tmp_path / "s").exists()


def test_leakage_guard_through_the_cli(prepared: Path, trained: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    syn = tmp_path / "syn"
    assert main(["generate", str(trained), "--n", "4", "--out", str(syn), "--steps", "2", "--keep-empty",
                 "--set", "amp=off"]) == 0
    capsys.readouterr()
    # the generator saw fold 0's training cases, which are fold 1's test cases: refused
    code, _, err = run_cli(["segment", str(prepared), "--out", str(tmp_path / "s1"), "--synthetic", str(syn),
                            "--mix", "ratio=0.5", "--folds", "1", "--steps", "2"], capsys)
    assert_one_line_error(code, err, str(syn), "fold 1")
    assert not (tmp_path / "s1").exists()
    # on its own fold it is accepted
    code, out, err = run_cli(["segment", str(prepared), "--out", str(tmp_path / "s0"), "--synthetic", str(syn),
                              "--mix", "ratio=0.5", "--folds", "0", "--steps", "2", "--set", "batch_size=4"], capsys)
    assert code == 0, err
    assert (tmp_path / "s0" / "results.json").is_file()


def test_unwritable_out_is_one_line(prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["prepare", str(prepared.parent / "src"), "--out", "/proc/synthpair-out"], capsys)
    assert_one_line_error(code, err, "/proc/synthpair-out")
