"""Diffusion as the segmenter (MedSegDiff-style): K-sample fusion (mean, majority, STAPLE) and uncertainty by hand,
and the pipeline end to end on a label-budget view against the U-Net."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks_helpers import FIT, mr_data
from synthpair.data.budget import BudgetConfig, make_budget_view
from synthpair.errors import SynthpairError
from synthpair.evaluation.tasks.common import decode_masks, one_hot_pm1
from synthpair.evaluation.tasks.segdiff import SegDiffConfig, fuse, run_segdiff, staple, uncertainty

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(labels: list[np.ndarray], kc: int = 1) -> torch.Tensor:
    """Label maps → (K, 1, K_c, H, W) samples in {-1, +1}."""
    return torch.stack([one_hot_pm1(torch.from_numpy(l)[None].long(), kc + 1) for l in labels])


def test_fusion_rules_by_hand():
    a = np.array([[1, 1, 0, 0]])
    b = np.array([[1, 0, 1, 0]])
    c = np.array([[1, 1, 1, 0]])
    s = _samples([a, b, c])
    assert fuse(s, "majority")[0].tolist() == [[1, 1, 1, 0]]
    assert fuse(s, "mean")[0].tolist() == [[1, 1, 1, 0]]
    assert fuse(s, "staple")[0].tolist() == [[1, 1, 1, 0]]
    # K = 2 with a tie → background (the lower label)
    assert fuse(_samples([a, b]), "majority")[0].tolist() == [[1, 0, 0, 0]]
    # mean fuses the continuous channels: +0.9, -0.2, -0.2 → +0.5/3 > 0 even when 2 of 3 say background
    cont = torch.tensor([0.9, -0.2, -0.2]).view(3, 1, 1, 1, 1)
    assert fuse(cont, "mean")[0, 0, 0] == 1 and fuse(cont, "majority")[0, 0, 0] == 0
    # three classes: labels 1..2 decode from two channels; majority per pixel
    m = [np.array([[2, 1, 0]]), np.array([[2, 2, 0]]), np.array([[1, 2, 2]])]
    assert fuse(_samples(m, kc=2), "majority")[0].tolist() == [[2, 2, 0]]
    assert decode_masks(one_hot_pm1(torch.tensor([[[0, 1, 2]]]), 3))[0].tolist() == [[0, 1, 2]]
    # uncertainty: zero where the samples agree, positive where they differ; zero for one sample
    u = uncertainty(s)
    assert u[0, 0, 0] == 0 and u[0, 0, 3] == 0 and u[0, 0, 1] > 0 and uncertainty(s[:1]).abs().sum() == 0


def test_staple_downweights_an_unreliable_rater():
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.3
    good = [truth ^ (rng.random(400) < 0.03) for _ in range(3)]
    bad = rng.random(400) < 0.5
    w = staple(np.stack(good + [bad, bad]))              # two copies of a coin-flip rater: majority would suffer
    acc = ((w > 0.5) == truth).mean()
    votes = np.stack(good + [bad, bad]).sum(0) > 2.5
    assert acc > 0.95 and acc >= (votes == truth).mean()


@pytest.fixture(scope="module")
def view(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("segdiff")
    data = mr_data(root, n=16, size=16, per_patient=2, folds=2, lesion_fraction=0.8)
    return make_budget_view(data, root / "view", BudgetConfig(fold=0, n=4, seed=0), progress=False)


def test_segdiff_end_to_end_on_a_label_budget_view(view, tmp_path):
    cfg = SegDiffConfig(generator=FIT, k=(1, 2, 3), steps=2, eval_batch=8, n_examples=2, device="cpu")
    res = run_segdiff(view, tmp_path / "out", cfg, progress=False)
    assert res["n_labelled"] == 4
    rows = res["tables"][0]["rows"]
    assert len(rows) == 3 * 3 + 1 and rows[-1]["method"].startswith("MONAI unet")
    for r in rows:
        assert 0.0 <= r["dice"]["mean"] <= 1.0 and r["hd95"]["n"] == r["dice"]["n"]
    assert [r["nfe_per_image"] for r in rows[:3]] == [2, 4, 6]
    # the U-Net had the same data (4 labelled items) and budget (steps × batch)
    unet = json.loads((tmp_path / "out" / "unet" / "results.json").read_text())
    assert unet["config"]["steps"] == FIT.steps and unet["config"]["batch_size"] == FIT.batch_size
    assert unet["folds"][0]["n_train_real"] == 4
    unc = res["tables"][1]["rows"][0]
    assert unc["k"] == 3 and unc["mean_uncertainty"] >= 0
    assert (tmp_path / "out" / "figures" / "dice_vs_k.png").is_file()


def test_bad_settings_are_refused():
    with pytest.raises(SynthpairError, match="fusion"):
        SegDiffConfig(fusion=("vote",))
    with pytest.raises(SynthpairError, match="ensemble sizes"):
        SegDiffConfig(k=(0, 2))
