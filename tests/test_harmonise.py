"""synthpair harmonise: mask kept exactly, strength 0 = identity, colour matching, seam metric, local VGG16
weights (missing / wrong / tiny random ones the test creates)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthpair.cli.main import main
from synthpair.data.dataset import read_png
from synthpair.errors import SynthpairError
from synthpair.metrics.perceptual import VGG16Features, gram, load_vgg16_features, style_transfer
from synthpair.networks import UNetConfig
from synthpair.synthesis.harmonise import (HarmoniseConfig, colour_distance, harmonise, match_colour,
                                           seam_ratio)
from synthpair.synthesis.inpaint import InpaintConfig, inpaint
from synthpair.synthesis.manifest import read_manifest
from synthpair.training.trainer import TrainConfig, train_generator

TINY_NET = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)
TINY_TRAIN = TrainConfig(steps=3, batch_size=4, preview_every=0, checkpoint_every=0, log_every=1, net=TINY_NET,
                         amp="off")


@pytest.fixture(scope="module")
def inpainted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("harm")
    data = write_tiny_prepared(root / "data")
    run = train_generator(data, root / "run", TINY_TRAIN, progress=False)
    syn = inpaint(data, [run], root / "syn", InpaintConfig(mode="fast", steps=4, jump_length=2, resample=2,
                                                           dilate_px=2, items="4", batch_size=4, device="cpu",
                                                           require_interior=False, min_component=1),
                  progress=False)
    assert len(read_manifest(syn)) >= 2
    return data, run, syn


def _cfg(**kw: object) -> HarmoniseConfig:
    return HarmoniseConfig(**{"steps": 10, "device": "cpu", "batch_size": 4, **kw})


def test_strength_zero_is_identity(inpainted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run, syn = inpainted
    out = harmonise(syn, run, tmp_path / "h0", _cfg(strength=0.0), progress=False)
    for rec in read_manifest(out):
        for sub in ("images", "masks", "regions"):
            assert (out / sub / f"{rec['id']}.png").read_bytes() == (syn / sub / f"{rec['id']}.png").read_bytes()
        assert rec["harmonise"]["delta_all"] == 0.0 and rec["harmonise"]["nfe"] == 0


def test_harmonise_keeps_mask_and_changes_image(inpainted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, run, syn = inpainted
    rc = main(["harmonise", str(syn), "--generator", str(run), "--out", str(tmp_path / "h"), "--strength", "0.5",
               "--steps", "10", "--colour-match", "--device", "cpu", "--seed", "3", "--no-progress"])
    assert rc == 0
    out = tmp_path / "h"
    recs = read_manifest(out)
    assert [r["id"] for r in recs] == [r["id"] for r in read_manifest(syn)]
    changed = 0
    for rec in recs:
        assert (out / "masks" / f"{rec['id']}.png").read_bytes() == (syn / "masks" / f"{rec['id']}.png").read_bytes()
        a = read_png(out / "images" / f"{rec['id']}.png").astype(int)
        b = read_png(syn / "images" / f"{rec['id']}.png").astype(int)
        changed += int(np.abs(a - b).max() > 0)
        h = rec["harmonise"]
        assert h["strength"] == 0.5 and h["nfe"] == 5 and h["seed"] >= 3  # timesteps < 500 of 10 respaced
        # colour matched to the source: mean/sd distance is ~0 after (up to uint8 rounding and clipping)
        assert h["colour_dist_after"] <= h["colour_dist_before"] + 1e-6 and h["colour_dist_after"] < 0.05
        for k in ("delta_inside", "delta_outside", "seam_before", "seam_after"):
            assert k in h
    assert changed == len(recs)
    info = json.loads((out / "dataset.json").read_text())
    assert info["harmonise"]["pairs"] == len(recs) and "mean_seam_after" in info["harmonise"]
    # same seed → same result
    again = harmonise(syn, run, tmp_path / "h2", _cfg(strength=0.5, colour_match=True, seed=3), progress=False)
    assert all((again / "images" / f"{r['id']}.png").read_bytes() == (out / "images" / f"{r['id']}.png").read_bytes()
               for r in recs)


def test_local_harmonisation_margin(inpainted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from scipy import ndimage

    _, run, syn = inpainted
    out = harmonise(syn, run, tmp_path / "hm", _cfg(strength=0.5, margin=1), progress=False)
    for rec in read_manifest(out):
        grown = ndimage.binary_dilation(read_png(syn / "regions" / f"{rec['id']}.png").astype(bool), iterations=1)
        a = read_png(out / "images" / f"{rec['id']}.png")
        b = read_png(syn / "images" / f"{rec['id']}.png")
        assert np.array_equal(a[~grown], b[~grown]) and not np.array_equal(a[grown], b[grown])
        assert rec["harmonise"]["delta_outside"] <= rec["harmonise"]["delta_inside"]


def test_colour_match_and_measurements() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(0.2, 0.1, (1, 16, 16)).clip(-1, 1)
    src = rng.normal(-0.3, 0.15, (1, 16, 16)).clip(-1, 1)
    out = match_colour(img, src)
    assert abs(out.mean() - src.mean()) < 1e-5 and abs(out.std() - src.std()) < 1e-4
    assert colour_distance(out, src) < 1e-4 < colour_distance(img, src)
    rgb = rng.uniform(-0.8, 0.8, (3, 8, 8))
    rgb_src = rng.uniform(-0.5, 0.2, (3, 8, 8))
    assert colour_distance(match_colour(rgb, rgb_src), rgb_src) < 0.05 * colour_distance(rgb, rgb_src) + 0.01
    # seam: a ramp has the same gradient everywhere (ratio 1); a step on the region border is a seam
    ramp = np.tile(np.linspace(-1, 1, 16), (16, 1))[None]
    region = np.zeros((16, 16), bool)
    region[4:12, 4:12] = True
    assert seam_ratio(ramp, region) == pytest.approx(1.0)
    step = np.where(region, 0.5, -0.5)[None] + 0.01 * ramp
    assert seam_ratio(step, region) > 10


def test_perceptual_weights(tmp_path: Path, inpainted: tuple[Path, Path, Path]) -> None:
    from safetensors.torch import save_file

    with pytest.raises(SynthpairError, match="not found"):
        load_vgg16_features(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.pt"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "features.0.bias": torch.zeros(8)}, bad)
    with pytest.raises(SynthpairError, match="not VGG16"):
        load_vgg16_features(bad)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SynthpairError, match="unreadable"):
        load_vgg16_features(tmp_path / "garbage.pt")
    torch.manual_seed(0)
    ref = VGG16Features()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's head is ignored
    good = tmp_path / "vgg16.safetensors"
    save_file(state, str(good))
    net = load_vgg16_features(good)
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(net(x), ref(x)))
    assert [f.shape[1] for f in net(x)] == [64, 128, 256, 512]
    g = gram(torch.ones(1, 2, 2, 2))
    assert torch.allclose(g, torch.full((1, 2, 2), 0.5))
    # style step: only the region changes, and the Gram distance to the style image drops
    style = torch.rand(1, 1, 16, 16) * 2 - 1
    region = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    region[..., 4:12, 4:12] = True
    out = style_transfer(net, x, style, steps=5, lr=0.05, region=region)
    assert torch.equal(out[~region.expand_as(out)], x[~region.expand_as(x)])
    assert not torch.equal(out, x)
    # harmonise refuses missing weights with a one-line error (exit 2), nothing written
    _, run, syn = inpainted
    rc = main(["harmonise", str(syn), "--generator", str(run), "--out", str(tmp_path / "hs"), "--style-weights",
               str(tmp_path / "nope.pt"), "--no-progress"])
    assert rc == 2 and not (tmp_path / "hs").exists()
    with pytest.raises(SynthpairError, match="strength"):
        HarmoniseConfig(strength=1.5)
