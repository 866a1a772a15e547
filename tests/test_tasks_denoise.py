"""Denoising (diffusion started at the matched noise level vs DnCNN vs non-local means): the noise models, the
level → start step, the pipeline end to end with a fixed segmenter, and the refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks_helpers import FIT, NETFIT, mr_data
from synthpair.cli.main import main
from synthpair.config import to_dict
from synthpair.diffusion.partial import noise_to_signal
from synthpair.diffusion.schedule import NoiseSchedule
from synthpair.errors import SynthpairError
from synthpair.evaluation.tasks.denoise import (DenoiseConfig, add_noise, estimate_sigma, noise_sigma, parse_noise,
                                                run_denoise)
from synthpair.segmentation.train import SegmentConfig, segment

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = DenoiseConfig(generator=FIT, dncnn=NETFIT, dncnn_depth=3, steps=2, cond_steps=2, eval_batch=8,
                     noise=("gaussian:0.1", "poisson:30", "speckle:0.2"), device="cpu")


def test_noise_models_have_the_stated_statistics():
    u = torch.full((4, 1, 64, 64), 0.4)
    g = torch.Generator().manual_seed(0)
    for spec in ("gaussian:0.1", "poisson:50", "speckle:0.2"):
        v = add_noise(u, spec, g)
        emp = float((v - u).std()) * 2.0                          # in [-1, 1] units
        assert abs(emp - float(noise_sigma(u, spec)[0])) / emp < 0.05, spec
        assert abs(float(v.mean()) - 0.4) < 0.01                 # all three are unbiased
    pois = add_noise(u, "poisson:50", g) * 50
    assert torch.allclose(pois, pois.round(), atol=1e-4)         # photon counts
    # per-row generators: a row depends only on its own generator
    a = add_noise(u[:2], "gaussian:0.1", [torch.Generator().manual_seed(s) for s in (1, 2)])
    b = add_noise(u[:1], "gaussian:0.1", [torch.Generator().manual_seed(2)])
    assert torch.equal(a[1], b[0])
    assert parse_noise("speckle:0.25") == ("speckle", 0.25)
    for bad in ("gauss:0.1", "gaussian", "poisson:-3", "speckle:nan"):
        with pytest.raises(SynthpairError, match="MODEL:LEVEL"):
            parse_noise(bad)
    rng = np.random.default_rng(0)
    assert abs(estimate_sigma(0.5 + 0.05 * rng.standard_normal((1, 128, 128))) - 0.05) < 0.005


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("denoise")
    d = mr_data(root, n=12, size=16, per_patient=2, folds=2)
    segment(d, root / "seg", SegmentConfig(steps=2, batch_size=4, folds=(0,), device="cpu"), progress=False)
    return d


def test_denoise_end_to_end_with_a_fixed_segmenter(data, tmp_path):
    cfg = DenoiseConfig(**{**TINY.__dict__, "conditional": True, "segmenter": str(data.parent / "seg")})
    res = run_denoise(data, tmp_path / "out", cfg, progress=False)
    rows = res["tables"][0]["rows"]
    methods = {r["method"] for r in rows}
    assert {"noisy (no denoising)", "non-local means", "DnCNN", "diffusion (start at matched t)",
            "conditional diffusion", "clean reference"} == methods
    assert len(rows) == 1 + 3 * 5
    sched = NoiseSchedule(FIT.diffusion)
    nsr = noise_to_signal(sched)
    for r in rows:
        for m in ("rmse", "psnr", "ssim", "dice"):
            assert r[m]["n"] == (0 if (m, r["method"]) == ("psnr", "clean reference") else 6), (r["method"], m)
        if r["method"].startswith("diffusion"):
            lo, _, hi = str(r["t_start"]).partition("–")
            t_lo = int(lo)
            assert abs(np.log(float(nsr[t_lo])) - np.log(r["sigma"])) < 0.5  # started where the level matches
    clean = next(r for r in rows if r["method"] == "clean reference")
    assert clean["rmse"]["mean"] == 0.0 and clean["ssim"]["mean"] > 0.999
    out = tmp_path / "out"
    assert (out / "figures" / "examples_gaussian_0.1.png").is_file()
    assert (out / "models" / "dncnn" / "model.safetensors").is_file()


def test_noise_level_outside_the_schedule_is_refused(data, tmp_path, capsys):
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(to_dict(TINY)))   # never the default (long) settings if a refusal were missed
    out = tmp_path / "out"
    base = ["denoise", str(data), "--out", str(out), "--config", str(cfg_file), "--no-progress"]
    rc = main(base + ["--noise", "gaussian:1e-7"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "noise gaussian:1e-7" in err and "outside the diffusion schedule" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    # a 10-step cosine schedule starts at noise std 0.17: a level of 0.1 (gaussian:0.05) has no timestep
    rc = main(base + ["--noise", "gaussian:0.05", "--set", "generator.diffusion.num_timesteps=10"])
    assert rc == 2 and "outside the diffusion schedule" in capsys.readouterr().err and not out.exists()
    rc = main(base + ["--noise", "salt:0.1"])
    assert rc == 2 and "MODEL:LEVEL" in capsys.readouterr().err and not out.exists()


def _edited_seg(data: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(data.parent / "seg", dst)
    res = json.loads((dst / "results.json").read_text())
    edit(res)
    (dst / "results.json").write_text(json.dumps(res))
    return dst


def test_a_segmenter_without_the_fold_or_that_saw_a_test_item_is_refused(data, tmp_path):
    def other_fold(res):
        res["folds"][0]["fold"] = 1

    seg1 = _edited_seg(data, tmp_path / "seg1", other_fold)
    with pytest.raises(SynthpairError, match="no fold 0 model"):
        run_denoise(data, tmp_path / "o", DenoiseConfig(**{**TINY.__dict__, "segmenter": str(seg1)}), progress=False)
    items = json.loads((data / "dataset.json").read_text())["items"]
    test_cases = json.loads((data / "splits.json").read_text())["folds"][0]["test"]
    test_item = next(it["id"] for it in items if it["case"] in test_cases)

    def leak(res):
        res["folds"][0]["label_accounting"]["image_items"].append(test_item)

    leaky = _edited_seg(data, tmp_path / "leaky", leak)
    with pytest.raises(SynthpairError, match="saw test item"):
        run_denoise(data, tmp_path / "o", DenoiseConfig(**{**TINY.__dict__, "segmenter": str(leaky)}), progress=False)
    assert not (tmp_path / "o").exists()
