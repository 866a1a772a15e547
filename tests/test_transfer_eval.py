"""Transfer evaluation (``synthpair evaluate segmenter``): agreement with ``segment`` on its own held-out split,
one transfer row per setting on another dataset, fold averaging, the CLI, and every refusal (nothing written)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.data.dataset import PreparedDataset
from synthpair.errors import SynthpairError
from synthpair.metrics.segmentation import METRICS, per_case_metrics
from synthpair.segmentation.models import load_segmenter, segmenter_data_info
from synthpair.segmentation.train import SegmentConfig, predict, segment
from synthpair.segmentation.transfer import evaluate_transfer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = SegmentConfig(steps=3, batch_size=4, eval_batch=8)


def _rename(data: Path, name: str, labels: dict[str, int] | None = None) -> Path:
    info = json.loads((data / "dataset.json").read_text())
    info["name"] = name
    if labels is not None:
        info["labels"] = labels
    (data / "dataset.json").write_text(json.dumps(info))
    return data


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("transfer")
    src = _rename(write_tiny_prepared(root / "src", n=12, seed=0), "kvasir")
    other = _rename(write_tiny_prepared(root / "other", n=8, seed=5), "other")
    segment(src, root / "seg_real", TINY, progress=False)
    segment(src, root / "seg_none", SegmentConfig(steps=3, batch_size=4, eval_batch=8, augment="none", folds=(0, 1)),
            progress=False)
    torch.set_num_threads(n)
    return {"root": root, "src": src, "other": other, "seg_real": root / "seg_real", "seg_none": root / "seg_none"}


def one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("synthpair: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_retest_on_own_held_out_split_reproduces_segment_exactly(env: dict[str, Path], tmp_path: Path) -> None:
    seg_rows = json.loads((env["seg_real"] / "results.json").read_text())["per_case"]
    res = evaluate_transfer([env["seg_real"], env["seg_none"]], env["src"], tmp_path / "out", split="test", fold=0)
    assert res["kind"] == "re-test on the training data"
    s_real, s_none = res["settings"]
    assert s_real["same_dataset"] and s_real["folds"] == [0] and s_none["folds"] == [0]  # fold 1 model saw them
    assert s_real["setting"] == "re-test kvasir fold 0 test: real-only"
    assert [r["id"] for r in s_real["per_case"]] == [r["id"] for r in seg_rows if r["fold"] == 0]
    for mine, theirs in zip(s_real["per_case"], [r for r in seg_rows if r["fold"] == 0]):
        assert mine["case"] == theirs["case"] and mine["distance_unit"] == theirs["distance_unit"] == "mm"
        for m in METRICS:
            assert mine[m] == theirs[m], (m, mine, theirs)
    theirs_none = json.loads((env["seg_none"] / "results.json").read_text())["folds"][0]["summary"]
    assert s_none["summary"] == theirs_none
    md = (tmp_path / "out" / "results.md").read_text()
    assert "NOT a transfer test" in md and "re-test kvasir fold 0 test: real-only" in md


def test_transfer_gives_one_labelled_row_per_setting_with_fold_mean(env: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tr"
    res = evaluate_transfer([env["seg_real"], env["seg_none"]], env["other"], out)
    assert res["format"] == "synthpair-transfer" and res["kind"] == "transfer test"
    names = [s["setting"] for s in res["settings"]]
    assert names == ["transfer kvasir→other: real-only", "transfer kvasir→other: real-only +none"]
    other = PreparedDataset.open(env["other"])
    for s in res["settings"]:
        assert not s["same_dataset"] and s["training_data_name"] == "kvasir" and s["target_data_name"] == "other"
        assert s["summary"]["dice"]["n"] == len(other.labelled_ids) == len(s["per_case"])
    s_none = res["settings"][1]
    assert s_none["folds"] == [0, 1] and [p["fold"] for p in s_none["per_fold"]] == [0, 1]
    # the per-case value is the mean over the fold models' per-case metrics (computed independently here)
    x, y = other.load(other.labelled_ids)
    sp = [other.spacing_of(i) for i in other.labelled_ids]
    per_fold = [per_case_metrics(predict(load_segmenter(env["seg_none"], k), torch.from_numpy(x), 8,
                                         torch.device("cpu")), y, 2, sp, other.labelled_ids) for k in (0, 1)]
    for i, row in enumerate(s_none["per_case"]):
        for m in METRICS:
            assert row[m] == pytest.approx((per_fold[0][i][m] + per_fold[1][i][m]) / 2, abs=1e-12)
    md = (out / "results.md").read_text()
    assert md.startswith("# Transfer test:") and "another dataset" in md
    assert "| transfer kvasir→other: real-only |" in md and "| transfer kvasir→other: real-only +none |" in md
    assert "held-out cases" in md  # the in-domain comparison table
    with open(out / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(other.labelled_ids) and {r["setting"] for r in rows} == set(names)
    assert {r["folds"] for r in rows} == {"0", "0 1"}


def test_cli_evaluate_segmenter(env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["evaluate", "segmenter", str(env["seg_real"]), "--data", str(env["other"]), "--out", str(out),
                 "--device", "cpu"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "transfer kvasir→other: real-only" in stdout and "transfer test results:" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "results.json", "results.md"]
    code = main(["evaluate", "segmenter", str(env["seg_real"]), "--data", str(env["other"]), "--out", str(out)])
    one_line_error(code, capsys.readouterr()[1], str(out), "--overwrite")


def test_old_seg_without_data_info_reads_the_training_dataset(env: dict[str, Path], tmp_path: Path) -> None:
    seg = tmp_path / "old"
    shutil.copytree(env["seg_real"], seg)
    res = json.loads((seg / "results.json").read_text())
    recorded = res.pop("data_info")
    (seg / "results.json").write_text(json.dumps(res))
    assert recorded == {"name": "kvasir", "channels": 1, "num_classes": 2, "size": [16, 16],
                        "labels": {"background": 0, "class1": 1}}
    assert segmenter_data_info(seg) == recorded
    res["data"] = str(tmp_path / "gone")
    (seg / "results.json").write_text(json.dumps(res))
    with pytest.raises(SynthpairError, match="results.json: records no data_info.*restore"):
        segmenter_data_info(seg)


def test_loader_refuses_unknown_model_and_corrupt_weights(env: dict[str, Path], tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    shutil.copytree(env["seg_real"], seg)
    cfg = json.loads((seg / "config.json").read_text())
    (seg / "config.json").write_text(json.dumps({**cfg, "model": "no_such_net"}))
    with pytest.raises(SynthpairError, match="config.json: model 'no_such_net' is unknown"):
        load_segmenter(seg, 0)
    (seg / "config.json").write_text(json.dumps(cfg))
    w = seg / "fold_0" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(SynthpairError, match="model.safetensors: unreadable weights"):
        load_segmenter(seg, 0)


def _refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    code = main(["evaluate", "segmenter", *argv, "--out", str(out)])
    one_line_error(code, capsys.readouterr()[1], *fragments)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*")), "something was written"


def test_refusals_write_nothing(env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    seg, other = str(env["seg_real"]), str(env["other"])
    # a SEG folder without results.json / without the weights of a fold
    no_res = tmp_path / "no_res"
    shutil.copytree(env["seg_real"], no_res)
    (no_res / "results.json").unlink()
    _refused([str(no_res), "--data", other], out, capsys, str(no_res / "results.json"), "synthpair segment")
    no_w = tmp_path / "no_w"
    shutil.copytree(env["seg_real"], no_w)
    (no_w / "fold_0" / "model.safetensors").unlink()
    _refused([str(no_w), "--data", other], out, capsys, str(no_w / "fold_0" / "model.safetensors"), "missing")
    _refused([seg, "--data", other, "--folds", "2"], out, capsys, "fold 2 was not trained")
    # targets with another channel count, label set (count or names) or image size
    rgb = write_tiny_prepared(tmp_path / "rgb", n=4, channels=3, seed=1)
    _refused([seg, "--data", str(rgb)], out, capsys, str(rgb / "dataset.json"), "3 channel(s)", "1-channel")
    three = write_tiny_prepared(tmp_path / "three", n=4, num_classes=3, seed=2)
    _refused([seg, "--data", str(three)], out, capsys, str(three / "dataset.json"), "label set", "num_classes 3")
    renamed = _rename(write_tiny_prepared(tmp_path / "renamed", n=4, seed=3), "x", {"background": 0, "polyp": 1})
    _refused([seg, "--data", str(renamed)], out, capsys, "'polyp'", "same labels")
    big = write_tiny_prepared(tmp_path / "big", n=4, size=24, seed=4)
    _refused([seg, "--data", str(big)], out, capsys, str(big / "dataset.json"), "24×24", "--size 16")
    # an empty target split (3 folds over 2 cases: fold 2 tests nothing), and --split test without --fold
    small = write_tiny_prepared(tmp_path / "small", n=2, seed=6)
    _refused([seg, "--data", str(small), "--split", "test", "--fold", "2"], out, capsys, "splits.json",
             "fold 2 is empty")
    _refused([seg, "--data", other, "--split", "test"], out, capsys, "--fold K")
    # the training data itself is not a transfer target; other folds' models saw a re-test's cases
    _refused([seg, "--data", str(env["src"])], out, capsys, "not a transfer target", "--split test --fold K")
    _refused([str(env["seg_none"]), "--data", str(env["src"]), "--split", "test", "--fold", "0", "--folds", "0",
              "1"], out, capsys, "fold-1 model saw the test cases of fold 0")
    _refused([seg, seg, "--data", other], out, capsys, "listed twice")
    assert not list(tmp_path.glob(".never.*"))
    np.testing.assert_equal(out.exists(), False)
