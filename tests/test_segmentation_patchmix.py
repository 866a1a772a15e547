"""Patch mixing (EMIT-Diff Algorithm 1) and its loss-mixing variant, replacement mixing (paper 002 §2.6.2),
seeded nested real subsets, the config/CLI grammar and a tiny end-to-end ``segment`` with each of them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from synthpair.cli.main import _parse_mix, main
from synthpair.data.dataset import PreparedDataset
from synthpair.errors import SynthpairError
from synthpair.segmentation.leakage import check_synthetic
from synthpair.segmentation.mixing import (Batch, PatchMixing, ReplaceMixing, batch_loss, group_by_source,
                                           make_mixing, random_patch_mask)
from synthpair.segmentation.train import SegmentConfig, segment, setting_name, training_items
from test_segmentation_train import write_syn


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def add_sources(syn: Path, sources: list[str | None]) -> Path:
    """Give the manifest lines of ``syn`` the ``source_item`` values ``sources`` (cycled)."""
    path = syn / "manifest.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for i, rec in enumerate(lines):
        src = sources[i % len(sources)]
        rec["source_item"] = src
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return syn


def version_pools(n_real=5, size=8, versions=(2, 0, 3, 1, 1)):
    """Real item r: constant image r/10 and mask r%2; its versions: constant -(j+1)/10 and mask 1 - r%2."""
    rx = (torch.arange(n_real, dtype=torch.float32) / 10).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    ry = (torch.arange(n_real) % 2).view(-1, 1, 1).expand(-1, size, size).clone()
    groups, j = [], 0
    for r, k in enumerate(versions):
        groups.append(list(range(j, j + k)))
        j += k
    owner = [r for r, g in enumerate(groups) for _ in g]
    sx = (-(torch.arange(j, dtype=torch.float32) + 1) / 10).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    sy = (1 - torch.tensor(owner) % 2).view(-1, 1, 1).expand(-1, size, size).clone()
    return rx, ry, sx, sy, groups


# ---------------------------------------------------------------- the patch mask

@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_patch_mask_real_fraction_is_alpha_and_cells_are_constant(alpha):
    g = torch.Generator().manual_seed(0)
    m = random_patch_mask(400, (16, 16), alpha, 4, g)
    assert m.shape == (400, 16, 16) and m.dtype == torch.bool
    # 400 × 16 independent cells: sd of the fraction ≈ 0.006
    assert abs(m.float().mean().item() - alpha) < 0.025
    blocks = m.view(400, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(400, 16, 16)  # (n, cell, pixel in cell)
    assert bool((blocks == blocks[..., :1]).all())  # nearest upsampling: each 4×4 cell is one value


def test_patch_mask_extremes_and_non_dividing_patch():
    g = torch.Generator().manual_seed(1)
    per_image = random_patch_mask(300, (16, 16), 0.3, 16, g)       # patch = image size: a per-image choice
    assert bool((per_image == per_image[:, :1, :1]).all())
    assert abs(per_image[:, 0, 0].float().mean().item() - 0.3) < 0.08
    per_pixel = random_patch_mask(4, (16, 16), 0.5, 1, g)          # patch = 1: per pixel
    assert 0.4 < per_pixel.float().mean().item() < 0.6
    assert sum(bool((per_pixel[i] != per_pixel[i].flatten()[0]).any()) for i in range(4)) == 4
    odd = random_patch_mask(50, (16, 16), 0.5, 5, g)               # ceil(16/5) = 4 cells, the last 1 px wide
    cells = odd[:, ::5, ::5]
    assert cells.shape == (50, 4, 4)
    assert torch.equal(odd, cells.repeat_interleave(5, 1).repeat_interleave(5, 2)[:, :16, :16])
    assert not bool((odd[:, :, 14] == odd[:, :, 15]).all())         # a new cell starts at column 15
    assert bool(random_patch_mask(3, (8, 8), 1.0, 2, g).all())
    assert not bool(random_patch_mask(3, (8, 8), 0.0, 2, g).any())


# ---------------------------------------------------------------- Algorithm 1

def test_patch_input_is_exactly_m_x0_plus_one_minus_m_xi():
    rx, ry, sx, sy, groups = version_pools()
    mix = PatchMixing(rx, ry, sx, sy, groups, batch_size=8, alpha=0.5, patch=2)
    twin = PatchMixing(rx, ry, sx, sy, groups, batch_size=8, alpha=0.5, patch=2, loss_mixing=True)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seen_versions = set()
    for step in range(30):
        b, t = mix.batch(step, g1), twin.batch(step, g2)
        assert b.syn_images is None and b.real_weight is None
        # the loss-mixing twin draws the same items, versions and masks: recompose Algorithm 1 by hand
        m = t.real_weight.float()[:, None]
        assert torch.equal(b.images, m * t.images + (1 - m) * t.syn_images)
        assert torch.equal(b.masks, t.masks)
        for i in range(8):
            r = int(round(t.images[i, 0, 0, 0].item() * 10))                 # the real item of the slot
            assert torch.equal(b.masks[i], ry[r])                            # label = the REAL mask
            x = b.images[i, 0]
            if not groups[r]:                                                # no version: unmixed
                assert torch.equal(x, rx[r, 0]) and bool(t.real_weight[i].all())
                continue
            j = int(round(-t.syn_images[i, 0, 0, 0].item() * 10)) - 1      # the version picked
            assert j in groups[r]
            seen_versions.add(j)
            recovered = x == r / 10                                          # recover m from the constant images
            assert torch.equal(recovered, t.real_weight[i])
            assert bool((recovered | (x == sx[j, 0])).all())
            cells = recovered.view(4, 2, 4, 2)                               # 2×2 cells
            assert bool((cells == cells[:, :1, :, :1]).all())
    assert seen_versions == set(range(len(sx)))                              # every version is used
    d = mix.describe()
    assert d["n_real"] == 5 and d["n_synthetic"] == 7 and d["n_real_unmixed"] == 1
    assert d["n_real_with_synthetic"] == 4 and d["versions_per_real"] == {"min": 1, "max": 3, "mean": 1.75}
    assert d["n_synthetic_mask_mismatch"] == 7 and d["forward_passes_per_slot"] == 1
    # 4 of 5 real items mix at alpha 0.5, one is unmixed: expected real fraction 0.8·0.5 + 0.2 = 0.6
    assert abs(d["observed_real_pixel_fraction"] - 0.6) < 0.05
    assert twin.describe()["forward_passes_per_slot"] == 2 and twin.describe()["strategy"] == "patch_loss"


def test_versions_are_picked_uniformly_and_real_items_epoch_style():
    rx, ry, sx, sy, groups = version_pools(versions=(3, 3, 3, 3, 3))
    mix = ReplaceMixing(rx, ry, sx, sy, groups, batch_size=10, p=1.0)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(15)
    for step in range(300):
        x = mix.batch(step, g).images
        counts += torch.bincount((-x[:, 0, 0, 0] * 10).round().long() - 1, minlength=15)
    assert counts.sum() == 3000 and torch.equal(counts.view(5, 3).sum(1), torch.full((5,), 600.0))  # 600 per item
    assert (counts - 200).abs().max() < 45  # binomial(600, 1/3): sd ≈ 11.5


def test_loss_mixing_equals_hand_computed_weighted_loss():
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    b, k, h, w = 2, 3, 4, 4
    logit_real = torch.randn(b, k, h, w, generator=g, requires_grad=True)
    logit_syn = torch.randn(b, k, h, w, generator=g, requires_grad=True)
    y = torch.randint(0, k, (b, h, w), generator=g)
    m = random_patch_mask(b, (h, w), 0.5, 2, g)
    assert m.any() and (~m).any()
    real_img, syn_img = torch.zeros(b, 1, h, w), torch.ones(b, 1, h, w)
    forward = lambda x: logit_real if x.mean() == 0 else logit_syn  # noqa: E731  (the "network")
    loss = batch_loss(forward, DiceCELoss(to_onehot_y=True, softmax=True), Batch(real_img, y, syn_img, m))

    mf = m.float()
    ce = (mf * F.cross_entropy(logit_real, y, reduction="none")
          + (1 - mf) * F.cross_entropy(logit_syn, y, reduction="none")).mean()
    p = mf[:, None] * logit_real.softmax(1) + (1 - mf[:, None]) * logit_syn.softmax(1)
    onehot = F.one_hot(y, k).permute(0, 3, 1, 2).float()
    inter, denom = (p * onehot).sum((2, 3)), p.sum((2, 3)) + onehot.sum((2, 3))
    dice = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    assert loss.item() == pytest.approx((ce + dice).item(), rel=1e-5)
    loss.backward()
    # each pass gets gradient only where its pixels are scored
    assert logit_real.grad.abs().sum() > 0 and logit_syn.grad.abs().sum() > 0
    # the plain batch is plain DiceCE
    plain = batch_loss(lambda x: logit_real, DiceCELoss(to_onehot_y=True, softmax=True), Batch(real_img, y))
    assert plain.item() == pytest.approx(DiceCELoss(to_onehot_y=True, softmax=True)(logit_real, y[:, None]).item())


# ---------------------------------------------------------------- replacement

@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 1.0])
def test_replace_frequency_is_p_and_uses_the_versions_own_pairs(p):
    rx, ry, sx, sy, groups = version_pools()
    mix = make_mixing("replace", real_images=rx, real_masks=ry, batch_size=16, syn_images=sx, syn_masks=sy,
                      groups=groups, replace_p=p)
    g = torch.Generator().manual_seed(2)
    replaced = eligible = 0
    for step in range(150):
        b = mix.batch(step, g)
        v = b.images[:, 0, 0, 0]
        syn_slot = v < 0
        assert not bool((v == 0.1).logical_and(syn_slot).any())
        # a replaced slot carries its version's own mask (1 - r%2 here), a kept slot the real mask
        j = (-v[syn_slot] * 10).round().long() - 1
        assert torch.equal(b.masks[syn_slot][:, 0, 0], sy[j, 0, 0])
        r = (v[~syn_slot] * 10).round().long()
        assert torch.equal(b.masks[~syn_slot][:, 0, 0], ry[r, 0, 0])
        replaced += int(syn_slot.sum())
        eligible += int(syn_slot.sum()) + int((r != 1).sum())  # item 1 has no version: never replaced
    assert abs(replaced / eligible - p) < 0.04  # ~1900 eligible slots: sd ≤ 0.012
    d = mix.describe()
    assert d["strategy"] == "replace" and d["p"] == p and d["n_real_unmixed"] == 1
    assert d["observed_replaced_fraction"] == pytest.approx(replaced / 2400)


def test_version_mixing_needs_versions():
    rx, ry, sx, sy, _ = version_pools()
    with pytest.raises(ValueError, match="no real training item has a synthetic version"):
        PatchMixing(rx, ry, sx, sy, [[] for _ in range(5)], 4)
    with pytest.raises(ValueError, match="grouping by source item"):
        make_mixing("patch", real_images=rx, real_masks=ry, batch_size=4, syn_images=sx, syn_masks=sy)
    assert group_by_source(["a", "b"], ["b", None, "c", "a", "b"]) == [[3], [0, 4]]


# ---------------------------------------------------------------- subsets

def test_subsets_are_nested_deterministic_and_seeded(tiny_data):
    ds = PreparedDataset.open(tiny_data)
    train_ids, _ = ds.split(0)
    assert training_items(ds, 0) == train_ids and training_items(ds, 0, 0, 7) == train_ids
    for seed in (0, 1, 2):
        subsets = [training_items(ds, 0, n, seed) for n in range(1, len(train_ids) + 1)]
        for small, big in zip(subsets, subsets[1:]):
            assert set(small) < set(big) and len(big) == len(small) + 1
        assert subsets[-1] == train_ids
        assert all(s == [i for i in train_ids if i in s] for s in subsets)  # dataset order
        assert training_items(ds, 0, 3, seed) == subsets[2]                # deterministic
    firsts = {tuple(training_items(ds, 0, 3, s)) for s in range(6)}
    assert len(firsts) > 2                                                # the seed matters
    with pytest.raises(SynthpairError, match=r"n_real=9: fold 0 .* has only 8 training items"):
        training_items(ds, 0, 9)


# ---------------------------------------------------------------- config + CLI grammar

def test_config_validation_and_setting_names():
    assert setting_name(SegmentConfig(mixing="patch", alpha=0.5, patch=8)) == "patch a=0.5 p=8"
    assert setting_name(SegmentConfig(mixing="patch_loss", alpha=0.25, patch=64)) == "patch-loss a=0.25 p=64"
    assert setting_name(SegmentConfig(mixing="replace", replace_p=0.5, n_real=16)) == "replace p=0.5 n=16"
    assert setting_name(SegmentConfig(augment="deepstack")) == "real-only +deepstack"
    assert setting_name(SegmentConfig(ratio=0.5)) == "real+synthetic r=0.5"
    for kwargs, msg in [({"alpha": 1.5}, r"alpha must be in \[0, 1\]"), ({"patch": 0}, "patch must be >= 1"),
                        ({"replace_p": -0.1}, "replace_p must be in"), ({"n_real": -1}, "n_real must be >= 0"),
                        ({"augment": "mixup"}, "choose one of flip_rot, affine, none, random_contrast"),
                        ({"mixing": "patch", "ratio": 0.5}, "only used by mixing='ratio'")]:
        with pytest.raises(ValueError, match=msg):
            SegmentConfig(**kwargs)
    assert SegmentConfig(mixing="patch").needs_synthetic and not SegmentConfig().needs_synthetic


def test_mix_grammar():
    assert _parse_mix("ratio=0.5") == {"mixing": "ratio", "ratio": 0.5}
    assert _parse_mix("synthetic_only") == {"mixing": "synthetic_only", "ratio": 0.0}
    assert _parse_mix("patch:alpha=0.3,patch=16") == {"mixing": "patch", "ratio": 0.0, "alpha": 0.3, "patch": 16}
    assert _parse_mix("patch_loss:alpha=0.5") == {"mixing": "patch_loss", "ratio": 0.0, "alpha": 0.5}
    assert _parse_mix("replace:p=0.25") == {"mixing": "replace", "ratio": 0.0, "replace_p": 0.25}
    example = "e.g. --mix ratio=0.5 | synthetic_only | patch:alpha=0.5,patch=8"
    for bad, msg in [("patchy:alpha=1", "unknown mixing 'patchy'"),
                     ("patch:beta=2", "patch takes alpha=…, patch=…"),
                     ("patch:patch=2.5", "patch must be an integer"), ("replace:p", "replace takes p=…"),
                     ("ratio=x", "ratio must be a number"), ("synthetic_only:p=1", "takes no parameters")]:
        with pytest.raises(SynthpairError) as err:
            _parse_mix(bad)
        assert msg in str(err.value) and example in str(err.value) and "\n" not in str(err.value)


def test_cli_errors_exit_2_with_one_line(tiny_data, tmp_path, capsys):
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "s"), "--mix", "patch:alpha=2"]) == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "s"), "--mix", "replace:p=0.5"]) == 2
    assert "needs --synthetic SYN" in capsys.readouterr().err
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "s"), "--augment", "mixup"]) == 2
    err = capsys.readouterr().err
    assert "augment 'mixup' is unknown" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- end to end

def test_segment_patch_mixing_end_to_end(tiny_data, tmp_path):
    ds = PreparedDataset.open(tiny_data)
    train_cases, _ = ds.fold_cases(0)
    train_ids, _ = ds.split(0)
    syn = add_sources(write_syn(tmp_path / "syn", train_cases, n=6), train_ids[:3])  # 2 versions of 3 items
    cfg = SegmentConfig(steps=4, batch_size=4, mixing="patch", alpha=0.5, patch=4, augment="random_mirror")
    res = segment(tiny_data, tmp_path / "seg", cfg, synthetic_dir=syn, progress=False)
    assert res["setting"] == "patch a=0.5 p=4 +random_mirror"
    mix = res["folds"][0]["mixing"]
    assert mix["strategy"] == "patch" and mix["n_real"] == 8 and mix["n_synthetic"] == 6
    assert mix["n_real_with_synthetic"] == 3 and mix["n_real_unmixed"] == 5 and mix["versions_per_real"]["max"] == 2
    assert res["config"]["alpha"] == 0.5 and res["folds"][0]["real_subset"] is None
    losses = [json.loads(x)["loss"] for x in (tmp_path / "seg" / "fold_0" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    again = segment(tiny_data, tmp_path / "seg2", cfg, synthetic_dir=syn, progress=False)
    assert again["per_case"] == res["per_case"]                                   # deterministic
    from synthpair.config import load_config

    assert load_config(SegmentConfig, tmp_path / "seg" / "config.json") == cfg
    # the same through the CLI grammar
    assert main(["segment", str(tiny_data), "--out", str(tmp_path / "cli"), "--synthetic", str(syn), "--mix",
                 "patch:alpha=0.5,patch=4", "--augment", "random_mirror", "--steps", "4",
                 "--set", "batch_size=4"]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli["per_case"] == res["per_case"] and cli["setting"] == res["setting"]

    # loss mixing and replacement on a subset of 4 real items: only the kept items' versions count
    keep = training_items(ds, 0, 4, 3)
    assert len(set(keep) & set(train_ids[:3])) == 2  # 2 of the 3 items with versions are kept
    # (the synthetic folder's generator saw every training case: a label-budget excess, allowed and marked here)
    with pytest.raises(SynthpairError, match="outside this segmenter's 4 labelled training items"):
        segment(tiny_data, tmp_path / "refused", SegmentConfig(steps=3, batch_size=4, mixing="replace", n_real=4,
                                                               subset_seed=3), synthetic_dir=syn, progress=False)
    assert not (tmp_path / "refused").exists()
    for mixing, extra in [("patch_loss", {"alpha": 0.3, "patch": 16}), ("replace", {"replace_p": 0.5})]:
        r = segment(tiny_data, tmp_path / mixing, SegmentConfig(steps=3, batch_size=4, mixing=mixing, n_real=4,
                                                                 subset_seed=3, allow_label_excess=True, **extra),
                    synthetic_dir=syn, progress=False)
        assert r["generator_saw_more_labels"] and r["setting"].endswith("[generator saw more labels]")
        f = r["folds"][0]
        assert f["real_subset"] == {"n_real": 4, "subset_seed": 3, "items": keep}
        assert f["n_train_real"] == 4 and f["mixing"]["n_real_with_synthetic"] == 2
        assert f["mixing"]["n_synthetic"] == 4 and f["mixing"]["n_real_unmixed"] == 2
    # ratio mixing on a subset: only pairs whose source_item was kept
    r = segment(tiny_data, tmp_path / "ratio", SegmentConfig(steps=2, batch_size=4, ratio=1.0, n_real=4, subset_seed=3,
                                                             allow_label_excess=True),
                synthetic_dir=syn, progress=False)
    assert r["folds"][0]["n_synthetic"] == 4
    assert r["setting"] == "real+synthetic r=1 n=4 [generator saw more labels]"


def test_version_mixing_refuses_folders_without_source_items(tiny_data, tmp_path):
    ds = PreparedDataset.open(tiny_data)
    train_cases, _ = ds.fold_cases(0)
    train_ids, test_ids = ds.split(0)
    plain = write_syn(tmp_path / "plain", train_cases)
    with pytest.raises(SynthpairError) as err:
        segment(tiny_data, tmp_path / "s", SegmentConfig(steps=2, mixing="patch"), synthetic_dir=plain, progress=False)
    msg = str(err.value)
    assert "6 of 6 synthetic pairs have no manifest 'source_item' (e.g. syn000)" in msg and "--mix ratio=0.5" in msg
    # versions of items of another fold's training split only: nothing to mix with in fold 0
    other = add_sources(write_syn(tmp_path / "other", train_cases), ["not_an_item"])
    with pytest.raises(SynthpairError, match="none of the 6 synthetic pairs is a version"):
        segment(tiny_data, tmp_path / "s", SegmentConfig(steps=2, mixing="replace"), synthetic_dir=other,
                progress=False)
    # ratio mixing on a subset that keeps none of the pairs' source items
    one = add_sources(write_syn(tmp_path / "one", train_cases), [train_ids[0]])
    seed = next(k for k in range(20) if training_items(ds, 0, 1, k) != [train_ids[0]])
    with pytest.raises(SynthpairError, match="n_real=1: no synthetic pair of the folder is a version"):
        segment(tiny_data, tmp_path / "s", SegmentConfig(steps=2, ratio=0.5, n_real=1, subset_seed=seed,
                                                         allow_label_excess=True),  # past the label-budget check
                synthetic_dir=one, progress=False)
    # a source_item in the test split is leakage even when no case field names it
    leaky = add_sources(write_syn(tmp_path / "leaky", train_cases), [train_ids[0], test_ids[0]])
    with pytest.raises(SynthpairError, match=f"fold 0 .*{ds.case_of(test_ids[0])}"):
        check_synthetic(leaky, ds, [0])
    assert not (tmp_path / "s").exists()
