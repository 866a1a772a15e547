"""Anomaly detection (AnoDDPM vs autoencoder vs supervised classifier): metrics by hand, the pipeline end to end
through the CLI, and the refusals (abnormal training items, no normal images)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_prepared
from tasks_helpers import FIT, NETFIT, mr_data
from synthpair.cli.main import main
from synthpair.config import to_dict
from synthpair.evaluation.tasks.anomaly import AnomalyConfig, run_anomaly
from synthpair.errors import SynthpairError
from synthpair.metrics import anomaly as am

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = AnomalyConfig(generator=FIT, autoencoder=NETFIT, classifier=NETFIT, t_star=(20, 50), recon_steps=2,
                     eval_batch=8, n_examples=4, device="cpu")


def test_anomaly_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    assert am.auc(y, [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert np.isnan(am.auc([1, 1], [0.2, 0.3]))
    th = am.choose_threshold(y, [0.1, 0.2, 0.7, 0.9])       # perfect separation: a threshold between 0.2 and 0.7
    assert 0.2 < th <= 0.7
    err = am.classification_errors(y, [0.1, 0.8, 0.7, 0.2], 0.5)
    assert err["top1_error"] == 0.5 and err["sensitivity"] == 0.5 and err["specificity"] == 0.5
    # Youden, not accuracy: with 9 normals and 1 abnormal the chosen threshold still catches the abnormal one
    y2 = np.array([0] * 9 + [1])
    s2 = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95, 0.9])
    assert am.classification_errors(y2, s2, am.choose_threshold(y2, s2))["sensitivity"] == 1.0
    masks = np.zeros((2, 4, 4), int)
    masks[1, :2, :2] = 1
    maps = np.zeros((2, 4, 4))
    maps[1, :2, :2] = 1.0
    assert am.pixel_auprc(masks, maps) == 1.0
    assert am.dice_at(masks[1:], maps[1:], 0.5)[0] == 1.0
    assert am.binary_dice(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))[0] == 1.0   # both empty
    assert am.choose_pixel_threshold(masks[1:], maps[1:] + 0.01 * np.arange(16).reshape(1, 4, 4)) > 0.2
    m = np.arange(100, dtype=float).reshape(1, 10, 10)
    assert am.image_score(m, "mean")[0] == 49.5 and am.image_score(m, "max")[0] == 99
    assert am.image_score(m, "top", top_fraction=0.02)[0] == 98.5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mr_data(tmp_path_factory.mktemp("anomaly"), n=24, size=16, per_patient=2, folds=2)


def test_anomaly_end_to_end_through_the_cli(data, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(TINY)))
    out = tmp_path / "out"
    rc = main(["anomaly", str(data), "--out", str(out), "--config", str(cfg_file), "--t-star", "20", "50",
               "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "anomaly" and res["format"] == "synthpair-task-results"
    test = next(t for t in res["tables"] if t["name"] == "test")
    methods = [r["method"] for r in test["rows"]]
    assert methods == ["AnoDDPM gaussian", "AnoDDPM simplex", "AnoDDPM simplex-on-gaussian", "autoencoder",
                       "supervised classifier (upper reference)"]
    for r in test["rows"]:
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["top1_error"] <= 1.0
    assert all(0.0 <= r["pixel_auprc"] <= 1.0 for r in test["rows"][:4])
    assert res["best"]["arm"] in ("gaussian", "simplex", "simplex-on-gaussian") and res["best"]["t_star"] in (20, 50)
    sweep = next(t for t in res["tables"] if t["name"] == "sweep")
    assert len(sweep["rows"]) == 6
    # the generator was trained by the project trainer on normal training items only, none of them validation/test
    split = json.loads((out / "split.json").read_text())
    tc = json.loads((out / "generator" / "training_cases.json").read_text())
    assert tc["items"] == split["train_normal"] and not set(tc["items"]) & set(split["val"] + split["test"])
    info = json.loads((data / "dataset.json").read_text())
    empty = {it["id"] for it in info["items"] if it["foreground_fraction"] == 0}
    assert set(tc["items"]) <= empty
    assert (out / "report.html").is_file() and (out / "figures" / "examples.png").is_file()
    assert (out / "models" / "simplex_ddpm" / "model.safetensors").is_file()
    html = (out / "report.html").read_text()
    assert "AnoDDPM simplex" in html and "data:image/png;base64" in html
    assert "report:" in capsys.readouterr().out


def test_abnormal_training_items_are_refused_and_nothing_is_written(data, tmp_path, capsys):
    info = json.loads((data / "dataset.json").read_text())
    splits = json.loads((data / "splits.json").read_text())
    train_cases = set(splits["folds"][0]["train"])
    ab = [it["id"] for it in info["items"] if it["case"] in train_cases and it["foreground_fraction"] > 0]
    items = tmp_path / "items.json"
    items.write_text(json.dumps(ab[:1]))
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(TINY)))   # never the default (long) settings if the refusal were missed
    out = tmp_path / "out"
    rc = main(["anomaly", str(data), "--out", str(out), "--train-items", str(items), "--config", str(cfg_file),
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "non-empty mask (abnormal" in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(SynthpairError, match="not a labelled training item"):
        items.write_text(json.dumps(["no_such_item"]))
        run_anomaly(data, out, AnomalyConfig(**{**TINY.__dict__, "train_items": str(items)}), progress=False)
    assert not out.exists()


def test_a_dataset_without_normal_images_is_refused(tmp_path):
    data = write_tiny_prepared(tmp_path / "d", n=8, folds=2)    # every item has a lesion
    with pytest.raises(SynthpairError, match="0 normal"):
        run_anomaly(data, tmp_path / "out", TINY, progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_refused():
    with pytest.raises(SynthpairError, match="noise_types"):
        AnomalyConfig(noise_types=("perlin",))
    with pytest.raises(SynthpairError, match="t_star"):
        AnomalyConfig(t_star=(1000,))
