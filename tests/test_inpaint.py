"""synthpair inpaint: dilation scaling, source selection, generator choice (joint / per-cluster runs /
joint_cluster with a stand-in label network), kept masks inside the region, the CLI end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthpair.cli.main import main
from synthpair.data.dataset import PreparedDataset, read_png
from synthpair.errors import SynthpairError
from synthpair.io import save_png_atomic, write_json_atomic
from synthpair.networks import UNetConfig
from synthpair.synthesis.inpaint import InpaintConfig, dilate_region, dilation_scale, inpaint, region_border
from synthpair.synthesis.manifest import read_manifest
from synthpair.training.trainer import TrainConfig, train_generator

TINY_NET = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)
TINY_TRAIN = TrainConfig(steps=3, batch_size=4, preview_every=0, checkpoint_every=0, log_every=1, net=TINY_NET,
                         amp="off")
FAST = dict(mode="fast", steps=4, jump_length=2, resample=2, batch_size=4, device="cpu", min_area=1, min_component=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 16-px dataset where training item img001 has an EMPTY mask, and a 3-step joint run on fold 0."""
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("inp")
    data = write_tiny_prepared(root / "data")
    save_png_atomic(data / "masks" / "img001.png", np.zeros((16, 16), np.uint8))
    run = train_generator(data, root / "run", TINY_TRAIN, progress=False)
    return data, run


# ------------------------------------------------------------------ dilation

def test_dilation_matches_skimage_disk_and_scales_with_resize() -> None:
    from skimage.morphology import binary_dilation, disk

    lesion = np.zeros((32, 32), bool)
    lesion[14:18, 12:20] = True
    # original 320 px → prepared 32 px: 20 original px = 2 prepared px
    sc = dilation_scale({"original_size": [320, 320]}, (32, 32))
    assert sc == (10.0, 10.0)
    assert np.array_equal(dilate_region(lesion, 20, sc), binary_dilation(lesion, disk(2)))
    # original 64 px → 20 original px = 10 prepared px
    assert np.array_equal(dilate_region(lesion, 20, dilation_scale({"original_size": [64, 64]}, (32, 32))),
                          binary_dilation(lesion, disk(10)))
    # a single pixel dilated by 20 px of a 160-px original on a 16-px grid: radius 2 → the 13-pixel disk
    dot = np.zeros((16, 16), bool)
    dot[8, 8] = True
    assert dilate_region(dot, 20, (10.0, 10.0)).sum() == 13
    # anisotropic original (rows 2x finer): the region is an ellipse, twice as tall as wide in prepared pixels
    reg = dilate_region(dot, 20, (5.0, 10.0))
    rows, cols = np.nonzero(reg)
    assert rows.max() - rows.min() == 8 and cols.max() - cols.min() == 4
    # unknown original size: prepared pixels
    assert dilation_scale({}, (16, 16)) == (1.0, 1.0)
    with pytest.raises(ValueError):
        dilate_region(np.zeros((4, 4), bool), 2)


def test_region_border() -> None:
    reg = np.zeros((6, 6), bool)
    reg[1:5, 1:5] = True
    b = region_border(reg)
    assert b.sum() == 12 and not b[2:4, 2:4].any()


# ------------------------------------------------------------------ end to end

def test_cli_inpaint_end_to_end(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny
    out = tmp_path / "syn"
    rc = main(["inpaint", str(data), "--generator", str(run), "--out", str(out), "--mode", "fast", "--steps", "4",
               "--jump-length", "2", "--resample", "2", "--dilate-px", "2", "--per-image", "2", "--items", "3",
               "--seed", "7", "--batch", "4", "--device", "cpu", "--allow-border", "--no-progress",
               "--set", "min_area=1", "--set", "min_component=1"])
    assert rc == 0
    ds = PreparedDataset.open(data)
    train_ids, test_ids = ds.split(0)
    train_cases, test_cases = ds.fold_cases(0)
    info = json.loads((out / "dataset.json").read_text())
    summ = info["inpaint"]
    assert summ["attempted"] == 6 and summ["sources"] == 3
    assert summ["kept"] + sum(summ["rejected"].values()) == 6
    assert summ["nfe_per_pair"] == 4 + 1 * 1 * 2  # n=4, L=2, r=2: one jump point (0), 2 extra evaluations
    lines = read_manifest(out)
    assert len(lines) == summ["kept"] >= 1
    # sources: the first 3 training items with a lesion (img001's mask is empty → skipped)
    expected_sources = [i for i in train_ids if i != "img001"][:3]
    assert summ["skipped_empty_sources"] == 1
    for rec in lines:
        assert rec["method"] == "fast-repaint" and rec["nfe"] == 6 and rec["target_cluster"] is None
        assert rec["source_item"] in expected_sources and rec["source_item"] in train_ids
        assert 7 <= rec["seed"] < 13 and rec["id"] == f"seed{rec['seed']:07d}"
        assert set(rec["train_cases"]) <= set(train_cases) and not set(rec["train_cases"]) & set(test_cases)
        assert rec["source_case"] in rec["train_cases"]
        assert rec["dilate_px"] == 2 and rec["dilate_px_prepared"] == [2.0, 2.0]
        region = read_png(out / "regions" / f"{rec['id']}.png").astype(bool)
        mask = read_png(out / "masks" / f"{rec['id']}.png")
        image = read_png(out / "images" / f"{rec['id']}.png")
        src_img = read_png(data / "masks" / f"{rec['source_item']}.png")
        src_mask = src_img > 0
        assert np.array_equal(region, dilate_region(src_mask, 2))
        assert not mask[~region].any() and (mask > 0).sum() == rec["mask_area"] >= 1
        # outside the region the image is the source image, pixel for pixel
        assert np.array_equal(image[~region], read_png(data / "images" / f"{rec['source_item']}.png")[~region])
    # the folder is a valid synthetic dataset for the leakage guard
    from synthpair.segmentation.leakage import check_synthetic

    check_synthetic(out, ds, [0])


def test_inpaint_is_deterministic_per_pair(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny
    cfg = InpaintConfig(**FAST, items="img002,img004", per_image=1, seed=3, require_interior=False)
    a = inpaint(data, [run], tmp_path / "a", cfg, progress=False)
    b = inpaint(data, [run], tmp_path / "b", InpaintConfig(**{**FAST, "batch_size": 1}, items="img004",
                                                           seed=4, require_interior=False),
                progress=False)
    # pair of img004 has seed 4 in both runs (index 1 in a, index 0 in b): same pixels despite other batches
    assert (a / "images" / "seed0000004.png").read_bytes() == (b / "images" / "seed0000004.png").read_bytes()
    assert (a / "masks" / "seed0000004.png").read_bytes() == (b / "masks" / "seed0000004.png").read_bytes()


def test_bad_inputs(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from conftest import write_tiny_prepared

    data, run = tiny
    with pytest.raises(SynthpairError, match="empty"):
        inpaint(data, [run], tmp_path / "x", InpaintConfig(**FAST, items="img001"), progress=False)
    with pytest.raises(SynthpairError, match="training split"):
        inpaint(data, [run], tmp_path / "x", InpaintConfig(**FAST, items="img000"), progress=False)  # a test item
    big = write_tiny_prepared(tmp_path / "big", size=32)
    with pytest.raises(SynthpairError, match="size"):
        inpaint(big, [run], tmp_path / "x", InpaintConfig(**FAST), progress=False)
    assert not (tmp_path / "x").exists()
    rc = main(["inpaint", str(data), "--generator", str(run), "--out", str(tmp_path / "y"), "--items", "img001",
               "--no-progress"])
    assert rc == 2 and not (tmp_path / "y").exists()


# ------------------------------------------------------------------ generator choice

class LabelNet(nn.Module):
    """Stand-in for H3's joint_cluster network: predicts x0 = (image c_j, mask +1) for cluster label j."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.linspace(-0.8, 0.8, k))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        lab = cond.label  # type: ignore[union-attr]
        img = self.value[lab].view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return torch.cat([img, torch.ones_like(img)], dim=1)


def _write_run(root: Path, model: nn.Module, method: str, data: Path, extra: dict) -> Path:
    from synthpair.networks.export import save_export

    ds = PreparedDataset.open(data)
    save_export(root / "export", model, {
        "method": method, "net": {}, "data": {"channels": 1, "num_classes": 2, "size": [16, 16]},
        "diffusion": {"schedule": "cosine", "num_timesteps": 100, "prediction": "x0"}, "fold": 0, **extra})
    write_json_atomic(root / "training_cases.json", {"fold": 0, "data": str(data), "cases": ds.fold_cases(0)[0]})
    return root


def test_joint_cluster_label_choice(tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthpair.methods import base
    from synthpair.methods.joint import JointMethod

    data, _ = tiny
    k = 3

    class StandIn(JointMethod):
        name = "joint_cluster"

        def build_from_export(self, info: object, cfg: dict, export_dir: Path) -> nn.Module:
            return LabelNet(int(cfg["clusters"]["k"]))

    base._load_builtin()
    monkeypatch.setitem(base._REGISTRY, "joint_cluster", StandIn)  # restored after the test
    run = _write_run(tmp_path / "jc", LabelNet(k), "joint_cluster", data, {"clusters": {"k": k}})
    clusters = tmp_path / "clusters.json"
    ds = PreparedDataset.open(data)
    write_json_atomic(clusters, {"format": "synthpair-clusters", "k": k, "fold": 0,
                                 "assignments": {i: n % k for n, i in enumerate(ds.ids)}})
    out = inpaint(data, [run], tmp_path / "syn", InpaintConfig(**FAST, per_image=4, items="all",
                                                                require_interior=False), clusters=clusters,
                  progress=False)
    lines = read_manifest(out)
    assert len(lines) > 8
    values = np.linspace(-0.8, 0.8, k)
    seen = set()
    for rec in lines:
        j = rec["target_cluster"]
        seen.add(j)
        assert rec["source_cluster"] == ds.ids.index(rec["source_item"]) % k
        region = read_png(out / "regions" / f"{rec['id']}.png").astype(bool)
        image = read_png(out / "images" / f"{rec['id']}.png").astype(float) / 127.5 - 1
        assert np.allclose(image[region], values[j], atol=1 / 127.5)  # the label-j network painted it
        assert np.array_equal(read_png(out / "masks" / f"{rec['id']}.png") > 0, region)
    assert seen == set(range(k))
    with pytest.raises(SynthpairError, match="fold"):
        write_json_atomic(clusters, {"format": "synthpair-clusters", "k": k, "fold": 1, "assignments": {"img002": 0}})
        inpaint(data, [run], tmp_path / "z", InpaintConfig(**FAST), clusters=clusters, progress=False)


def test_several_joint_runs_one_per_cluster(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny
    run2 = tmp_path / "run2"
    shutil.copytree(run, run2)
    from synthpair.methods.export import load_export
    from synthpair.networks.export import save_export

    model, cfg = load_export(run2 / "export")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    save_export(run2 / "export", model, {k: v for k, v in cfg.items() if k not in ("format", "version")})
    out = inpaint(data, [run, run2], tmp_path / "syn", InpaintConfig(**FAST, per_image=2, items="3",
                                                                      require_interior=False),
                  progress=False)
    lines = read_manifest(out)
    runs = [str(run.resolve()), str(run2.resolve())]
    assert {r["target_cluster"] for r in lines} == {0, 1}
    for rec in lines:
        assert rec["generator_run"] == runs[rec["target_cluster"]] and rec["generator_runs"] == runs
    shas = {r["target_cluster"]: r["model_sha256"] for r in lines}
    assert shas[0] != shas[1]


@pytest.mark.slow
def test_real_joint_cluster_run(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """With the committed joint_cluster method (a tiny 3-step run): targets drawn in 0..k-1, recorded, and
    harmonisation conditions on each pair's target cluster."""
    import dataclasses

    from synthpair.synthesis.harmonise import HarmoniseConfig, harmonise

    data, _ = tiny
    ds = PreparedDataset.open(data)
    train_ids, _ = ds.split(0)
    cl = tmp_path / "clusters.json"
    assign = {i: n % 2 for n, i in enumerate(train_ids)}
    write_json_atomic(cl, {"format": "synthpair-clusters", "version": 1, "k": 2, "fold": 0, "assignments": assign,
                           "sizes": [sum(c == j for c in assign.values()) for j in range(2)]})
    run = train_generator(data, tmp_path / "jc", dataclasses.replace(TINY_TRAIN, method="joint_cluster",
                                                                     clusters=str(cl)), progress=False)
    out = inpaint(data, [run], tmp_path / "syn", InpaintConfig(**FAST, per_image=2, items="3",
                                                                require_interior=False), clusters=cl,
                  progress=False)
    lines = read_manifest(out)
    assert lines and all(r["target_cluster"] in (0, 1) for r in lines)
    assert all(r["source_cluster"] == train_ids.index(r["source_item"]) % 2 for r in lines)
    h = harmonise(out, run, tmp_path / "h", HarmoniseConfig(strength=0.3, steps=10, device="cpu"), progress=False)
    assert len(read_manifest(h)) == len(lines)


def test_polyp_study_inpaints_and_harmonises_through_the_library(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """The polyp study's --diff inpaint set and its Styled-Diff set are the library's inpaint / harmonise (not the
    CLI in-process); a failing generator becomes a note of the results, not the end of the study."""
    from synthpair.cli.main import build_parser
    from synthpair.experiments.polyp import PolypExperiment

    data, run = tiny
    args = build_parser().parse_args(["experiment", "polyp", str(data), "--out", str(tmp_path / "exp"), "--diff",
                                      "inpaint", "--harmonise-strength", "0.2", "--seed", "3", "--no-progress"])
    exp = PolypExperiment(args)
    syn = exp._inpaint(data, [run], tmp_path / "exp" / "syn" / "diff", 1, cluster_file=False)
    assert syn is not None and (syn / "dataset.json").is_file() and exp.notes == []
    recs = read_manifest(syn)
    assert recs and all(r["method"] == "fast-repaint" and r["dilate_px"] == 20.0 and
                        Path(r["generator_run"]).resolve() == Path(run).resolve() for r in recs)
    assert min(r["seed"] for r in recs) >= 3 and all(r["seed"] in r["batch_seeds"] for r in recs)  # seed + p
    assert 3 in recs[0]["batch_seeds"]
    styled = exp._harmonise(syn, run, tmp_path / "exp" / "syn" / "styled")
    assert styled is not None and [r["id"] for r in read_manifest(styled)] == [r["id"] for r in recs]
    assert all(r["harmonise"]["strength"] == 0.2 for r in read_manifest(styled))
    # a missing generator: no folder, one note naming the failure
    assert exp._inpaint(data, [tmp_path / "nothing"], tmp_path / "exp" / "syn" / "full", 1, cluster_file=False) is None
    assert len(exp.notes) == 1 and exp.notes[0].startswith("full: inpainting failed (")
