"""``synthpair evaluate images``: results on tiny sets, and bad input (channels, sizes, weights, folders)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_prepared
from synthpair.cli.main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("synthpair: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    return {"real": write_tiny_prepared(root / "real", n=12, size=24, seed=0),
            "syn": write_tiny_prepared(root / "syn", n=10, size=24, seed=7),
            "syn_rgb": write_tiny_prepared(root / "syn_rgb", n=6, size=24, channels=3, seed=8),
            "syn_big": write_tiny_prepared(root / "syn_big", n=6, size=32, seed=9)}


def test_evaluate_images_writes_every_metric_with_baseline(sets: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen.json"
    code, stdout, err = run_cli(["evaluate", "images", "--real", str(sets["real"]), "--synthetic", str(sets["syn"]),
                                 "--out", str(out)], capsys)
    assert code == 0, err
    assert "FD-radiomics" in stdout and "real-vs-real baseline" in stdout
    res = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("| metric |")
    d = res["distribution"]
    assert d["synthetic_vs_real"]["n_real"] == 12 and d["synthetic_vs_real"]["n_other"] == 10
    assert d["real_half_vs_real_half"]["n_real"] == 6 and d["real_half_vs_real_half"]["n_other"] == 6
    # 53-dim features from 12 images: FD flagged unreliable (warning), KID still reported
    assert not d["synthetic_vs_real"]["fd_reliable"] and any("fewer samples" in w for w in res["warnings"])
    assert "unreliable" in stdout and np.isfinite(d["synthetic_vs_real"]["kid"]["mean"])
    for k in ("psnr", "ssim", "ms_ssim", "mae", "mse", "rmse", "nmae"):
        assert res["paired"][k]["n"] == 10 and np.isfinite(res["paired"][k]["mean"])
        assert res["paired"]["real_vs_real"][k]["n"] == 12  # baseline: each real image vs its nearest other one
    assert res["diversity"]["ms_ssim_synthetic"]["n"] == 45 and res["diversity"]["ms_ssim_real"]["n"] == 66
    assert set(res["masks"]["class_1"]) == {"area", "components", "perimeter", "compactness"}
    assert len(res["memorisation"]["rows"]) == 10 and res["resize_policy"].startswith("same size")


def test_real_vs_itself_is_zero_and_copies_are_flagged(sets: dict[str, Path]) -> None:
    from synthpair.evaluation import evaluate_images
    from synthpair.metrics.distribution import SampleSizeWarning

    with pytest.warns(SampleSizeWarning) as record:
        res = evaluate_images(sets["real"], sets["real"])
    assert any("12 real / 12 synthetic" in str(w.message) for w in record)
    assert res["distribution"]["synthetic_vs_real"]["fd"] == 0.0
    assert res["memorisation"]["n_flagged"] == 12


def test_different_channels_is_a_clear_error(sets: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["evaluate", "images", "--real", str(sets["real"]), "--synthetic", str(sets["syn_rgb"])],
                           capsys)
    one_line_error(code, err, "3 channel(s)", "has 1", str(sets["syn_rgb"]))


def test_different_size_is_resized_and_stated(sets: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.json"
    code, stdout, err = run_cli(["evaluate", "images", "--real", str(sets["real"]), "--synthetic",
                                 str(sets["syn_big"]), "--out", str(out)], capsys)
    assert code == 0, err
    policy = json.loads(out.read_text())["resize_policy"]
    assert "resized from 32×32 to the real size 24×24" in policy and policy in stdout


def test_missing_weights_and_bad_folders_fail_in_one_line(sets: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "images", "--real", str(sets["real"]), "--synthetic", str(sets["syn"])]
    code, _, err = run_cli(base + ["--extractor", "inception", "--weights", str(tmp_path / "inc.pt")], capsys)
    one_line_error(code, err, "inc.pt", "weights file not found")
    code, _, err = run_cli(base + ["--extractor", "inception"], capsys)
    one_line_error(code, err, "--weights")
    code, _, err = run_cli(["evaluate", "images", "--real", str(tmp_path), "--synthetic", str(sets["syn"])], capsys)
    one_line_error(code, err, str(tmp_path), "dataset.json")


def test_manifest_source_case_and_faithfulness_are_used(sets: dict[str, Path], tmp_path: Path) -> None:
    from synthpair.evaluation import evaluate_images, generation_table

    syn = write_tiny_prepared(tmp_path / "syn_src", n=6, size=24, seed=11)
    lines = [json.dumps({"id": f"img{k:03d}", "seed": k, "source_case": f"case{k + 2:03d}", "faithfulness": 0.5 + k / 20})
             for k in range(6)]
    (syn / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(Warning):
        res = evaluate_images(sets["real"], syn)
    assert res["paired"]["reference"].startswith("the source real image")
    assert res["faithfulness"]["n"] == 6 and res["faithfulness"]["mean"] == pytest.approx(0.625)
    assert "mask faithfulness (Dice)" in generation_table(res)
