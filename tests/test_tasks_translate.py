"""Modality conversion (conditional diffusion vs U-Net L1) on two-contrast phantoms: channel selection by name,
held-out patients, the pipeline end to end through the CLI, and the refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks_helpers import FIT, mr_data
from synthpair.cli.main import main
from synthpair.config import to_dict
from synthpair.data.dataset import PreparedDataset
from synthpair.errors import SynthpairError
from synthpair.evaluation.tasks.common import channel_names
from synthpair.evaluation.tasks.translate import TranslateConfig, select_channels, validation_cases

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TranslateConfig(generator=FIT, steps=2, eval_batch=8, n_examples=2, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mr_data(tmp_path_factory.mktemp("translate"), n=12, size=16, contrasts=("T1w", "T2w", "FLAIR"),
                   per_patient=2, folds=2)


def test_channel_selection_by_name(data):
    ds = PreparedDataset.open(data)
    assert channel_names(ds) == ["T1w", "T2w", "FLAIR"]
    assert select_channels(ds, ("t1w", "FLAIR"), ("T2W",)) == ([0, 2], [1])
    for src, tgt, msg in (((), ("T2w",), "name at least one"), (("T1",), ("T2w",), "channel 'T1': not a channel"),
                          (("T1w",), ("T1w",), "both a source and a target"),
                          (("T1w", "t1w"), ("T2w",), "named twice")):
        with pytest.raises(SynthpairError, match=msg):
            select_channels(ds, src, tgt)


def test_translate_end_to_end_through_the_cli(data, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(TINY)))
    out = tmp_path / "out"
    rc = main(["translate", str(data), "--source", "T1w", "FLAIR", "--target", "T2w", "--out", str(out),
               "--config", str(cfg_file), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["direction"] == "T1w + FLAIR → T2w"
    rows = res["tables"][0]["rows"]
    assert [r["method"].split(" ")[0] for r in rows] == ["conditional", "U-Net"]
    for r in rows:
        assert 0 <= r["nmae"]["mean"] <= 1 and r["ssim"]["n"] == 6 and r["psnr_patients"]["n"] == 3
    # held-out patients: no patient of the test split is on the training side
    ds = PreparedDataset.open(data)
    tr, te = ds.split(0)
    assert not {ds.case_of(i) for i in tr} & {ds.case_of(i) for i in te}
    assert res["n_test_patients"] == len({ds.case_of(i) for i in te})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"] == ["T1w", "FLAIR"] and cfg["target"] == ["T2w"]
    # the U-Net's learning rate: the lowest validation L1 of the sweep, on validation patients of the training side
    lr = res["baseline_lr"]
    assert [r["lr"] for r in lr["sweep"]] == list(TINY.baseline_lrs)
    assert lr["chosen"] == min(lr["sweep"], key=lambda r: r["val_l1"])["lr"]
    assert all(r["val_l1"] > 0 for r in lr["sweep"]) and res["cost"]["unet_lr_sweep_cpu_s"] >= 0
    assert f"lr {lr['chosen']:g} (chosen on " in " ".join(res["notes"])
    # the paired test over the 3 test patients: diffusion − U-Net of the per-patient means, as the tables show
    pp, by = res["paired_by_patient"], {r["method"].split(" ")[0]: r for r in rows}
    assert pp["nmae"]["n"] == 3 and pp["base"] == "U-Net L1"
    assert pp["nmae"]["mean_diff"] == pytest.approx(by["conditional"]["nmae_patients"]["mean"]
                                                    - by["U-Net"]["nmae_patients"]["mean"], abs=1e-9)
    assert (out / "report.html").is_file() and (out / "figures" / "examples.png").is_file()


def test_unknown_channel_names_are_refused_and_nothing_is_written(data, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(TINY)))
    out = tmp_path / "out"
    rc = main(["translate", str(data), "--source", "T1", "--target", "T2w", "--out", str(out), "--config",
               str(cfg_file), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "channel 'T1': not a channel" in err and "T1w, T2w, FLAIR" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_validation_patients_are_whole_training_side_cases(data):
    ds = PreparedDataset.open(data)
    tr, te = ds.split(0)
    cases = {ds.case_of(i) for i in tr}
    val = validation_cases(ds, tr, 0.2, seed=0)
    assert len(val) == min(max(round(0.2 * len(cases)), 1), len(cases) - 1) and val < cases
    assert not val & {ds.case_of(i) for i in te}
    assert validation_cases(ds, tr, 0.2, seed=0) == val  # seeded
    one_case = [i for i in tr if ds.case_of(i) == sorted(cases)[0]]
    with pytest.raises(SynthpairError, match="needs at least 2"):
        validation_cases(ds, one_case, 0.2, seed=0)
    with pytest.raises(SynthpairError, match="baseline_lrs"):
        TranslateConfig(baseline_lrs=(1e-3, 0.0))
