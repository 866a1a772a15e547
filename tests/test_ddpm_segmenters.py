"""Diffusion-feature segmenters (issue 11, DiffusionDCI stage 2): features come from the frozen generator (bit for
bit unchanged after training), cached features equal recomputed ones and depend neither on the batch nor on the
run, the per-pixel classifier recovers a mask, block/timestep choice never reads the test split, the Table-5
variants train through ``segment`` and reload through ``load_segmenter`` (re-test reproduces ``segment``),
weight transfer from joint / dsdm generators, and every refusal (one line, nothing written).

Everything runs on 16×16 data with a 3-step ``image`` generator (channels (8, 8): blocks down0, down1, mid, up0,
up1; 50 timesteps)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.data.budget import BudgetConfig, make_budget_view
from synthpair.data.dataset import PreparedDataset, write_pair
from synthpair.diffusion import DiffusionConfig
from synthpair.errors import SynthpairError
from synthpair.metrics.segmentation import METRICS
from synthpair.networks.export import sha256_file
from synthpair.networks.unet import UNetConfig
from synthpair.segmentation import feature_analysis as fa
from synthpair.segmentation.ddfeatures import (DiffusionFeatures, FeatureCache, FeatureConfig, cache_precision,
                                               dihedral, dihedral_transforms, stack_features)
from synthpair.segmentation.ddmodels import (DiffusionUNetSegmenter, PixelEnsemble, PixelSegmenter,
                                             build_ddpm_segmenter)
from synthpair.segmentation.models import load_segmenter
from synthpair.segmentation.pixel import build_pixel_segmenter, cell_features, predict_pixel, train_pixel
from synthpair.segmentation.train import SegmentConfig, predict, segment
from synthpair.segmentation.transfer import evaluate_transfer
from synthpair.synthesis.generate import GenerateConfig, generate
from synthpair.training.trainer import TrainConfig, train_generator

pytestmark = pytest.mark.usefixtures("one_thread")

NET = UNetConfig(channels=(8, 8), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)
T = 50
GEN = TrainConfig(method="image", steps=3, batch_size=4, log_every=1, preview_every=0, preview_n=0,
                  checkpoint_every=0, amp="off", warmup_steps=1, net=NET, diffusion=DiffusionConfig(num_timesteps=T))
BLOCKS, TIMESTEPS = ("down1", "up1"), (0, 20)
CANDIDATES = {"candidate_blocks": ("down1", "mid", "up1"), "candidate_timesteps": (0, 20), "analysis_folds": 2,
              "n_blocks": 2, "n_timesteps": 1}
VARIANTS = ("ddpm_unet", "ddpm_unet_skip", "ddpm_unet_caa", "ddpm_pixel")


def seg_cfg(model: str, generator: Path | str, **features) -> SegmentConfig:
    fc = {"generator": str(generator), "hidden": 8, "ensemble": 2, **features}
    return SegmentConfig(model=model, steps=3, batch_size=4, eval_batch=8, features=FeatureConfig(**fc))


def _add_unlabelled(data: Path, n: int) -> Path:
    info = json.loads((data / "dataset.json").read_text())
    rng = np.random.default_rng(7)
    for k in range(n):
        write_pair(data, f"unl{k}", np.clip(rng.normal(-0.3, 0.3, (1, 16, 16)), -1, 1), None)
        info["items"].append({"id": f"unl{k}", "case": f"ucase{k}", "labelled": False, "spacing": None,
                              "slice_index": None, "foreground_fraction": None})
    (data / "dataset.json").write_text(json.dumps(info))
    return data


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class Spy:
    """Records, in order, what a run loads from DATA, what the feature analysis gets and what images the
    extractor sees."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.extractors: list[DiffusionFeatures] = []

    def install(self, mp: pytest.MonkeyPatch) -> "Spy":
        load, load_images, extract = PreparedDataset.load, PreparedDataset.load_images, DiffusionFeatures.extract
        init, analyse = DiffusionFeatures.__init__, fa.analyse_features

        def spy_load(ds, ids):
            self.events.append(("load", list(ids)))
            return load(ds, ids)

        def spy_load_images(ds, ids):
            self.events.append(("load_images", list(ids)))
            return load_images(ds, ids)

        def spy_extract(ex, images, t, blocks):
            self.events.append(("extract", images.detach().clone()))
            return extract(ex, images, t, blocks)

        def spy_init(ex, *a, **k):
            init(ex, *a, **k)
            self.extractors.append(ex)

        def spy_analyse(extractor, images, masks, **kw):
            self.events.append(("analysis", images.clone(), masks.clone(), list(kw.get("keys") or [])))
            return analyse(extractor, images, masks, **kw)

        mp.setattr(PreparedDataset, "load", spy_load)
        mp.setattr(PreparedDataset, "load_images", spy_load_images)
        mp.setattr(DiffusionFeatures, "extract", spy_extract)
        mp.setattr(DiffusionFeatures, "__init__", spy_init)
        mp.setattr(fa, "analyse_features", spy_analyse)
        return self


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """DATA (12 labelled disks, 3 folds, + 2 unlabelled images) → a 3-step ``image`` generator on fold 0 → one SEG
    per Table-5 variant through ``segment`` (ddpm_pixel with automatic blocks/timesteps), each run spied."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ddpm")
    data = _add_unlabelled(write_tiny_prepared(root / "data", n=12, folds=3), 2)
    train_generator(data, root / "gen", GEN, progress=False)
    export = root / "gen" / "export"
    out = {"root": root, "data": data, "gen": root / "gen", "export": export,
           "before": _tensors(export / "model.safetensors"), "sha": sha256_file(export / "model.safetensors"),
           "spies": {}, "seg": {}}
    try:
        for model in VARIANTS:
            feats = CANDIDATES if model == "ddpm_pixel" else {"blocks": BLOCKS, "timesteps": TIMESTEPS}
            spy = Spy()
            with pytest.MonkeyPatch.context() as mp:
                spy.install(mp)
                segment(data, root / model, seg_cfg(model, root / "gen", **feats), progress=False)
            out["spies"][model], out["seg"][model] = spy, root / model
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def extractor(env) -> DiffusionFeatures:
    return DiffusionFeatures(env["gen"])


def _fold0(env) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    ds = PreparedDataset.open(env["data"])
    train, test = ds.split(0)
    x, y = ds.load(train)
    return train, test, torch.from_numpy(x), torch.from_numpy(y)


# ------------------------------------------------------------------ 1. the generator stays frozen
@pytest.mark.parametrize("model", VARIANTS)
def test_generator_weights_bit_for_bit_unchanged_after_training(env, model):
    after = _tensors(env["export"] / "model.safetensors")
    assert sha256_file(env["export"] / "model.safetensors") == env["sha"]
    assert after.keys() == env["before"].keys()
    assert all(torch.equal(after[k], env["before"][k]) for k in after)
    spy = env["spies"][model]
    assert spy.extractors, "segment built no extractor"
    for ex in spy.extractors:  # the in-memory generator the segmenter was trained against
        state = ex.model.state_dict()
        assert state.keys() == env["before"].keys()
        assert all(torch.equal(state[k], env["before"][k]) for k in state), model
        assert not any(p.requires_grad for p in ex.model.parameters())
    rec = json.loads((env["seg"][model] / "results.json").read_text())["folds"][0]["features"]
    assert rec["weights_sha256"] == env["sha"] and Path(rec["generator"]) == env["export"].resolve()


# ------------------------------------------------------------------ 2. cached = recomputed, batch-free, deterministic
def test_cached_features_equal_recomputed_also_after_dihedral_transforms(env, extractor):
    train, _, x, _ = _fold0(env)
    cache = FeatureCache(extractor)  # one batch of the 8 rows, as the direct call
    small = FeatureCache(extractor, batch=3)  # other batches: equal up to the last bits of batched kernels
    for k in (0, 3, 5):
        xk = dihedral(x, k)
        for t in TIMESTEPS:
            got = cache.get([(i, k) for i in train], xk, t, BLOCKS)
            got3 = small.get([(i, k) for i in train], xk, t, BLOCKS)
            direct = extractor.extract(xk, t, BLOCKS)
            for b in BLOCKS:
                assert got[b].dtype == torch.float32
                assert torch.equal(got[b], cache_precision(direct[b])), (k, t, b)
                assert torch.allclose(got[b], direct[b], rtol=1e-3, atol=1e-3)
                assert torch.allclose(got3[b], got[b], rtol=1e-3, atol=1e-4)
    n = cache.computed
    assert n == 3 * len(TIMESTEPS) * len(train)
    order = list(reversed(range(len(train))))  # cached rows come back by key, in the order asked
    again = cache.get([(train[i], 5) for i in order], dihedral(x, 5)[order], 20, BLOCKS)
    assert cache.computed == n
    ref = cache_precision(extractor.extract(dihedral(x, 5), 20, BLOCKS)["up1"])
    assert torch.equal(again["up1"], ref[order])


def test_features_do_not_depend_on_the_batch_and_are_deterministic(env, extractor):
    _, _, x, _ = _fold0(env)
    other = DiffusionFeatures(env["gen"])  # a second load of the same generator
    exact = extractor.autocast is not None  # bf16 features: bit-identical; fp32: batched kernels' last bits differ
    for t in (0, 20, T - 1):
        full = extractor.extract(x, t, extractor.order)
        assert torch.equal(full["up1"], other.extract(x, t, extractor.order)["up1"])
        assert torch.equal(full["up1"], extractor.extract(x, t, extractor.order)["up1"])
        for i in (0, 5):
            alone = extractor.extract(x[i:i + 1], t, extractor.order)
            for b in extractor.order:
                assert torch.equal(alone[b][0], full[b][i]) if exact else \
                    torch.allclose(alone[b][0], full[b][i], rtol=1e-5, atol=1e-5), (t, i, b)
        part = extractor.extract(x[2:5], t, ["mid"])  # early stop after mid: same values
        assert torch.equal(part["mid"], full["mid"][2:5])
    assert not torch.equal(extractor.extract(x[:2], 20, ["mid"])["mid"],
                           DiffusionFeatures(env["gen"], seed=1).extract(x[:2], 20, ["mid"])["mid"])
    assert extractor.channels == {b: 8 for b in extractor.order}
    assert extractor.resolution["down1"] == (8, 8) and extractor.resolution["up1"] == (16, 16)


def test_extraction_stops_after_the_last_block_asked_for(env, extractor):
    _, _, x, _ = _fold0(env)
    calls = []
    h = extractor.modules["up1"].register_forward_hook(lambda *a: calls.append(1))
    try:
        extractor.extract(x[:2], 10, ["down1"])
        assert calls == []
        extractor.extract(x[:2], 10, ["down1", "up1"])
        assert calls == [1]
    finally:
        h.remove()


def test_draws_average_seeded_noise(env):
    _, _, x, _ = _fold0(env)
    two = DiffusionFeatures(env["gen"], draws=2, autocast=False)
    single = DiffusionFeatures(env["gen"], autocast=False)
    a = two.extract(x[:3], 20, ["mid"])["mid"]
    d0 = single.extract(x[:3], 20, ["mid"])["mid"]
    assert not torch.equal(two.noise(20, 0), two.noise(20, 1)) and not torch.equal(two.noise(20, 0), two.noise(10, 0))
    assert not torch.allclose(a, d0)  # the second draw changed the mean
    assert torch.equal(two.noise(20, 0), single.noise(20, 0))


def test_pixel_model_on_the_fly_is_the_cached_function_even_in_fp32(env):
    """The model ``load_segmenter`` rebuilds computes its features itself; they are rounded like the cache's, so
    it is the function ``segment`` scored through the cache (regression: fp32 features differed by ~1e-4)."""
    _, test, _, _ = _fold0(env)
    x = torch.from_numpy(PreparedDataset.open(env["data"]).load(test)[0])
    ex = DiffusionFeatures(env["gen"], autocast=False)  # fp32 features: the cache's float16 rounding matters
    cells = [(b, t) for t in TIMESTEPS for b in BLOCKS]
    torch.manual_seed(0)
    model = build_pixel_segmenter(ex, cells, 2, FeatureConfig(generator="x", hidden=8, ensemble=2)).eval()
    raw = ex.extract(x, TIMESTEPS[1], ["up1"])["up1"]
    assert not torch.equal(raw, cache_precision(raw))  # the rounding is not a no-op here
    cached = stack_features({c: v.float() for c, v in cell_features(FeatureCache(ex), [(i, 0) for i in test],
                                                                    x, cells).items()}, cells, x.shape[2:])
    with torch.no_grad():
        assert torch.equal(model.features(x), cached)
        assert torch.equal(model(x), model.head.predict_logits(cached))
        assert torch.equal(model(x).argmax(1), predict_pixel(model, x, test, FeatureCache(ex)))


def test_dihedral_group_is_exact_and_paired():
    x = torch.arange(2 * 16 * 16).reshape(2, 1, 16, 16).float()
    m = (x[:, 0] % 3 == 0).long()
    seen = set()
    for k in range(8):
        xk, mk = dihedral(x, k), dihedral(m, k)
        assert torch.equal((xk[:, 0] % 3 == 0).long(), mk)  # image and mask move together
        seen.add(xk.numpy().tobytes())
    assert len(seen) == 8  # eight different, exact (pixel-permuting) transforms
    assert dihedral_transforms("none", True) == [0] and dihedral_transforms("flip_rot", True) == list(range(8))
    assert dihedral_transforms("flip_rot", False) == [0, 2, 4, 6]  # no quarter turns on non-square images


# ------------------------------------------------------------------ 3. the pixel classifier learns a mask
class _Planted:
    """A stand-in extractor whose 'features' ARE the input: channel 0 the mask plus noise, the rest noise."""

    channels = {"f": 4}

    def extract(self, images, t, blocks):
        return {"f": images.float()}


def _planted(masks: torch.Tensor, noise: float, seed: int, signal: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn((masks.shape[0], 4, *masks.shape[1:]), generator=g) * noise
    if signal:
        f[:, 0] += 2.0 * masks.float() - 1.0
    return f


def _dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    inter = float(((pred == 1) & (ref == 1)).sum())
    return 2 * inter / float((pred == 1).sum() + (ref == 1).sum())


@pytest.mark.parametrize("signal,head", [(True, "mlp"), (True, "linear"), (False, "mlp")])
def test_pixel_classifier_recovers_a_planted_mask(signal, head):
    ds_masks = []
    yy, xx = np.mgrid[:16, :16]
    rng = np.random.default_rng(0)
    for _ in range(16):
        cy, cx, r = rng.uniform(5, 11), rng.uniform(5, 11), rng.uniform(2.5, 4.5)
        ds_masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.int64))
    masks = torch.from_numpy(np.stack(ds_masks))
    feats = _planted(masks, 0.4, 1, signal)
    torch.manual_seed(0)
    model = build_pixel_segmenter(_Planted(), [("f", 0)], 2, FeatureConfig(generator="x", head=head, hidden=16,
                                                                               ensemble=2))
    ids = [f"i{k}" for k in range(12)]
    losses, info = train_pixel(model, feats[:12], masks[:12], ids, steps=60, batch_size=8, lr=1e-2,
                               weight_decay=0.0, augment="flip_rot", seed=0,
                               generator=torch.Generator().manual_seed(0), cache=FeatureCache(_Planted()))
    assert info["transforms"] == list(range(8)) and info["rows"] == 12 * 8 and len(losses) == 60
    pred = predict_pixel(model, feats[12:], [f"t{k}" for k in range(4)], FeatureCache(_Planted()))
    dice = _dice(pred, masks[12:])
    if signal:
        assert dice > 0.9, dice
        assert losses[-1]["loss"] < losses[0]["loss"]
    else:  # nothing to learn: the same classifier must not "recover" the mask
        assert dice < 0.6, dice


def test_ensemble_averages_probabilities():
    torch.manual_seed(0)
    ens = PixelEnsemble(3, 2, "linear", 8, 3)
    x = torch.randn(2, 3, 4, 4)
    per_head = ens(x)
    assert per_head.shape == (3, 2, 2, 4, 4)
    assert torch.allclose(ens.predict_logits(x).exp(), per_head.softmax(2).mean(0), atol=1e-6)


# ------------------------------------------------------------------ 4. the choice never reads the test split
def test_block_timestep_choice_reads_only_labelled_training_items(env):
    ds = PreparedDataset.open(env["data"])
    train, test = ds.split(0)
    events = env["spies"]["ddpm_pixel"].events
    first_test = next(i for i, e in enumerate(events) if e[0] in ("load", "load_images") and set(e[1]) & set(test))
    after = [e for e in events[first_test:] if e[0] in ("load", "load_images")]
    assert [e for e in after if e[0] == "load"] == [("load", test)]  # the evaluation loads the test split once
    assert all(e[1] == test for e in after)
    before = events[:first_test]
    loaded = [e for e in before if e[0] in ("load", "load_images")]
    assert loaded and all(set(e[1]) <= set(train) for e in loaded), loaded
    analyses = [e for e in before if e[0] == "analysis"]
    assert len(analyses) == 1
    _, images, masks, keys = analyses[0]
    x, y = ds.load(train)
    assert keys == train and torch.equal(images, torch.from_numpy(x)) and torch.equal(masks, torch.from_numpy(y))
    # every image the generator saw before evaluation: the zero probe or a dihedral view of a training image
    allowed = {dihedral(torch.from_numpy(x), k)[i].numpy().tobytes() for k in range(8) for i in range(len(train))}
    for e in before:
        if e[0] == "extract":
            for row in e[1]:
                assert not row.any() or row.numpy().tobytes() in allowed
    seg = env["seg"]["ddpm_pixel"]
    analysis = json.loads((seg / "fold_0" / "feature_analysis.json").read_text())
    assert analysis["items"] == train and analysis["n_items"] == len(train)
    assert analysis["blocks"] == list(CANDIDATES["candidate_blocks"])
    assert np.asarray(analysis["dice"]).shape == (3, 2)
    assert (seg / "fold_0" / "feature_analysis.png").read_bytes()[:4] == b"\x89PNG"
    rec = json.loads((seg / "results.json").read_text())["folds"][0]["features"]
    assert rec["blocks"] == analysis["chosen_blocks"] and rec["timesteps"] == analysis["chosen_timesteps"]
    assert (rec["blocks"], rec["timesteps"]) == fa.choose_cells(analysis, 2, 1)


def test_choose_cells_on_a_hand_made_matrix():
    a = {"blocks": ["a", "b", "c"], "timesteps": [1, 2, 3],
         "dice": [[0.1, 0.5, 0.2],
                  [0.3, 0.9, 0.1],
                  [0.2, 0.8, 0.7]]}
    # timestep means over blocks 0.2 / 0.733 / 0.333 → {2, 3}; block means over those 0.35 / 0.5 / 0.75 → {b, c}
    assert fa.choose_cells(a, 2, 2) == (["b", "c"], [2, 3])
    assert fa.choose_cells(a, 1, 1) == (["b"], [2])
    assert fa.choose_cells(a, 3, 3) == (["a", "b", "c"], [1, 2, 3])
    tie = {"blocks": ["x", "y"], "timesteps": [5, 6], "dice": [[0.5, 0.5], [0.5, 0.5]]}
    assert fa.choose_cells(tie, 1, 1) == (["x"], [5])  # ties: the earlier candidate


def test_feature_analysis_leaves_the_callers_rng_alone(env, extractor):
    """Regression: the probes used to reseed torch, so ddpm_unet_skip/caa with automatic blocks started from
    another output-layer initialisation than ddpm_unet (not compute-matched, not 'exactly ddpm_unet')."""
    _, _, x, y = _fold0(env)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    fa.analyse_features(extractor, x, y, blocks=["mid"], timesteps=[0], num_classes=2, folds=2, steps=2)
    assert torch.equal(torch.random.get_rng_state(), state)


# ------------------------------------------------------------------ 5. the Table-5 variants
@pytest.mark.parametrize("model", VARIANTS)
def test_variant_trains_through_segment_and_records_its_features(env, model):
    seg = env["seg"][model]
    res = json.loads((seg / "results.json").read_text())
    cfg = json.loads((seg / "config.json").read_text())
    assert cfg["model"] == model and res["config"]["model"] == model
    fold = res["folds"][0]
    assert fold["n_test"] == 4 and len(res["per_case"]) == 4 and fold["n_train_real"] == 8
    assert all(np.isfinite(r[m]) for r in res["per_case"] for m in METRICS)
    assert len((seg / "fold_0" / "loss.jsonl").read_text().splitlines()) == 3
    rec = fold["features"]
    assert rec["method"] == "image" and rec["draws"] == 1 and rec["noise_seed"] == 0
    if model == "ddpm_pixel":
        assert rec["transforms"] == list(range(8)) and rec["rows"] == 8 * 8 and rec["analysis"]
        assert set(_tensors(seg / "fold_0" / "model.safetensors")) == set(
            load_segmenter(seg, 0).head.state_dict())
    else:
        assert rec["blocks"] == list(BLOCKS) and rec["timesteps"] == list(TIMESTEPS) and rec["e2e_timestep"] == 0
        assert rec["init"]["copied"] > 100 and rec["init"]["new"] == 2  # only out.2 (+ bias) is new
        if model != "ddpm_unet":
            assert rec["fusion_timesteps"] == [TIMESTEPS[0]]
        keys = set(_tensors(seg / "fold_0" / "model.safetensors"))
        assert keys and all(k.startswith(("unet.", "fuse.")) for k in keys)  # the frozen extractor is not saved
        assert any(k.startswith("fuse.") for k in keys) == (model != "ddpm_unet")


@pytest.mark.parametrize("model", ["ddpm_unet_skip", "ddpm_unet_caa"])
def test_fusion_variants_start_exactly_as_ddpm_unet(env, extractor, model):
    _, _, x, _ = _fold0(env)
    fc = FeatureConfig(generator="x")
    torch.manual_seed(0)
    base = build_ddpm_segmenter("ddpm_unet", extractor, 2, fc, BLOCKS, TIMESTEPS).eval()
    torch.manual_seed(0)
    fused = build_ddpm_segmenter(model, extractor, 2, fc, BLOCKS, TIMESTEPS).eval()
    assert fused.blocks == list(BLOCKS) and fused.timesteps == [TIMESTEPS[0]]
    with torch.no_grad():
        a, b = base(x), fused(x)
    assert a.shape == (8, 2, 16, 16) and torch.equal(a, b)
    ctx = fused.frozen_context(x)
    assert ctx["up1"].shape == (8, 8, 16, 16) and ctx["up1"].abs().sum() > 0  # features are there, just zero-gated


def test_end_to_end_unet_is_initialised_from_the_generator(env, extractor):
    torch.manual_seed(0)
    m = build_ddpm_segmenter("ddpm_unet", extractor, 2, FeatureConfig(generator="x"), (), ())
    gen = extractor.model.state_dict()
    mine = m.state_dict()
    for k, v in mine.items():
        if k.startswith("unet.out.2."):
            assert v.shape[0] == 2  # a new output layer for K classes
        else:
            assert torch.equal(v, gen[k]), k
    assert mine["unet.out.2.conv.weight"].abs().sum() > 0  # not MONAI's zero init (no gradient to the rest)
    assert not any(k.startswith("extractor") for k in mine) and m.null_context is None
    assert sorted(n for n, p in m.named_parameters() if p.requires_grad) == sorted(n for n, _ in m.named_parameters())
    _, _, x, _ = _fold0(env)  # same input, same timestep: the generator's hidden states up to the output layer
    got = {}
    hooks = [extractor.modules["up1"].register_forward_hook(lambda mod, a, o: got.__setitem__("gen", o)),
             m.unet.up_blocks[1].register_forward_hook(lambda mod, a, o: got.__setitem__("seg", o))]
    try:
        with torch.no_grad():
            extractor.model.unet(x[:2], torch.zeros(2, dtype=torch.long))
            m.eval()(x[:2])
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(got["gen"], got["seg"], rtol=0, atol=1e-5)  # (kernels may differ in the last bit)


# ------------------------------------------------------------------ A. reload: re-test reproduces segment
@pytest.mark.parametrize("model", VARIANTS)
def test_retest_of_reloaded_segmenter_reproduces_segment_exactly(env, model, tmp_path):
    seg = env["seg"][model]
    rows = [r for r in json.loads((seg / "results.json").read_text())["per_case"] if r["fold"] == 0]
    res = evaluate_transfer([seg], env["data"], tmp_path / "re", split="test", fold=0)
    mine = res["settings"][0]["per_case"]
    assert res["settings"][0]["model"] == model and [r["id"] for r in mine] == [r["id"] for r in rows]
    for a, b in zip(mine, rows):
        for m in METRICS:
            assert a[m] == b[m], (model, m, a, b)


def test_load_segmenter_rebuilds_the_recorded_model(env):
    pix = load_segmenter(env["seg"]["ddpm_pixel"], 0)
    rec = json.loads((env["seg"]["ddpm_pixel"] / "results.json").read_text())["folds"][0]["features"]
    assert isinstance(pix, PixelSegmenter) and not pix.training
    assert pix.cells == [(b, t) for t in rec["timesteps"] for b in rec["blocks"]]
    assert len(pix.head.heads) == 2 and pix.extractor.weights_sha256 == env["sha"]
    saved = _tensors(env["seg"]["ddpm_pixel"] / "fold_0" / "model.safetensors")
    assert all(torch.equal(pix.head.state_dict()[k], v) for k, v in saved.items())
    caa = load_segmenter(env["seg"]["ddpm_unet_caa"], 0)
    assert isinstance(caa, DiffusionUNetSegmenter) and caa.fusion == "caa" and caa.timesteps == [TIMESTEPS[0]]
    saved = _tensors(env["seg"]["ddpm_unet_caa"] / "fold_0" / "model.safetensors")
    assert saved.keys() == caa.state_dict().keys()
    assert all(torch.equal(caa.state_dict()[k], v) for k, v in saved.items())
    _, test, _, _ = _fold0(env)
    x = torch.from_numpy(PreparedDataset.open(env["data"]).load(test)[0])
    assert torch.equal(predict(pix, x, 3, torch.device("cpu")), predict(pix, x, 8, torch.device("cpu")))


def _edited_seg(env, tmp_path: Path, model: str, **record) -> Path:
    seg = tmp_path / f"{model}_edited"
    shutil.copytree(env["seg"][model], seg)
    res = json.loads((seg / "results.json").read_text())
    res["folds"][0]["features"].update(record)
    (seg / "results.json").write_text(json.dumps(res))
    return seg


def test_reload_refuses_a_changed_or_missing_generator(env, tmp_path):
    seg = _edited_seg(env, tmp_path, "ddpm_unet", weights_sha256="0" * 64)
    with pytest.raises(SynthpairError, match="generator's weights changed") as err:
        load_segmenter(seg, 0)
    assert "\n" not in str(err.value)
    seg = _edited_seg(env, tmp_path, "ddpm_pixel", generator=str(tmp_path / "gone" / "export"))
    with pytest.raises(SynthpairError, match="is gone") as err:
        load_segmenter(seg, 0)
    assert "\n" not in str(err.value)
    out = tmp_path / "never"
    assert main(["evaluate", "segmenter", str(seg), "--data", str(env["data"]), "--split", "test", "--fold", "0",
                 "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob(".never.*"))
    res = json.loads((seg / "results.json").read_text())
    del res["folds"][0]["features"]
    (seg / "results.json").write_text(json.dumps(res))
    with pytest.raises(SynthpairError, match="records no diffusion-feature generator"):
        load_segmenter(seg, 0)


# ------------------------------------------------------------------ 6. transfer_weights from joint / dsdm
def _random_network(method: str):
    from synthpair.methods import DataInfo, get_method

    info = DataInfo.from_dict({"channels": 1, "num_classes": 2, "size": [16, 16]})
    meth = get_method(method)
    kw = {"cond_cfg": meth.cond_config(None)} if hasattr(meth, "cond_config") else {}
    net = meth.build_network(info, NET, **kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():  # distinguishable from any initialisation (norm affines are 1/0 at init)
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + 0.5)
    return net


def _segmenter_unet():
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    return DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=2, num_res_blocks=1, channels=(8, 8),
                              attention_levels=(False, True), norm_num_groups=8, num_head_channels=8)


def test_transfer_from_a_joint_generator_takes_the_image_columns_and_skips_the_output():
    from synthpair.networks.transfer import transfer_weights

    src = _random_network("joint").state_dict()
    assert src["unet.conv_in.conv.weight"].shape[1] == 2  # image + one mask channel
    dst = _segmenter_unet()
    out_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("out.2.")}
    rep = transfer_weights(dst, src, skip=("out.2.",))
    got = dst.state_dict()
    assert torch.equal(got["conv_in.conv.weight"], src["unet.conv_in.conv.weight"][:, :1])
    assert "conv_in.conv.weight" in rep["adapted_keys"]
    assert all(torch.equal(got[k], v) for k, v in out_before.items())  # out.2 kept its initialisation
    assert sorted(rep["new_keys"]) == ["out.2.conv.bias", "out.2.conv.weight"]
    for k, v in got.items():
        if not k.startswith(("out.2.", "conv_in.conv.weight")):
            assert torch.equal(v, src["unet." + k]), k


def test_transfer_from_a_dsdm_generator_gives_plain_norms_the_param_free_affine():
    from synthpair.networks.transfer import transfer_weights

    src = _random_network("dsdm").state_dict()
    spade = [k for k in src if k.endswith("param_free_norm.weight")]
    assert spade, "dsdm has SPADE decoder norms"
    dst = _segmenter_unet()
    rep = transfer_weights(dst, src, skip=("out.2.",))
    got = dst.state_dict()
    for k in spade:
        plain = k.replace("unet.", "", 1).replace(".param_free_norm", "")
        assert torch.equal(got[plain], src[k]), plain
        assert torch.equal(got[plain.replace(".weight", ".bias")], src[k.replace(".weight", ".bias")])
        assert plain in rep["adapted_keys"]
    assert torch.equal(got["conv_in.conv.weight"], src["unet.conv_in.conv.weight"])
    assert not any("out.2." in k for k in rep["adapted_keys"])


@pytest.mark.parametrize("method", ["joint", "mask2image", "dsdm"])
def test_features_and_end_to_end_init_from_mask_aware_generators(env, tmp_path, method):
    """joint / mask2image / dsdm exports serve as extractors (null mask) and initialise ddpm_unet."""
    from synthpair.config import to_dict
    from synthpair.methods import get_method
    from synthpair.networks.export import save_export

    net = _random_network(method)
    meth = get_method(method)
    extra = {"cond": to_dict(meth.cond_config(None))} if getattr(meth, "conditional", False) else {}
    save_export(tmp_path / "export", net, {**extra, "method": method, "net": to_dict(NET),
                                          "diffusion": to_dict(DiffusionConfig(num_timesteps=T)),
                                          "data": {"channels": 1, "num_classes": 2, "size": [16, 16]}})
    ex = DiffusionFeatures(tmp_path / "export")
    _, _, x, _ = _fold0(env)
    f = ex.extract(x[:2], 10, ["down1", "up1"])
    assert f["up1"].shape == (2, 8, 16, 16) and torch.isfinite(f["up1"]).all()
    assert torch.equal(ex.extract(x[:1], 10, ["up1"])["up1"][0], f["up1"][0])
    torch.manual_seed(0)
    m = build_ddpm_segmenter("ddpm_unet_skip", ex, 2, FeatureConfig(generator="x"), ["up1"], [10])
    assert m.transfer["new"] == 2 and m.transfer["copied"] > 100  # everything but the new output layer
    with torch.no_grad():
        assert m.eval()(x[:2]).shape == (2, 2, 16, 16)
    if method == "dsdm":  # reference cross-attention: kept (regression: its 34 tensors were left random), fed the
        ctx = net.to_tokens(net.null_reference.view(1, -1)).view(1, -1, net.cond_cfg.ref_dim)  # null context
        assert torch.allclose(m.null_context, ctx)
        assert torch.equal(m.state_dict()["unet.middle_block.attention.proj_in.conv.weight"],
                           net.state_dict()["unet.middle_block.attention.proj_in.conv.weight"])
    else:
        assert m.null_context is None


# ------------------------------------------------------------------ 7. bad input: one line, nothing written
def _refused(fn, out: Path, *fragments: str) -> None:
    with pytest.raises(SynthpairError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*")), "something was written"


@pytest.mark.parametrize("kind", ["size", "channels"])
def test_generator_of_another_size_or_channel_count_is_refused(env, tmp_path, kind):
    other = write_tiny_prepared(tmp_path / "d", n=6, size=32 if kind == "size" else 16,
                                channels=3 if kind == "channels" else 1)
    out = tmp_path / "seg"
    _refused(lambda: segment(other, out, seg_cfg("ddpm_unet", env["gen"]), progress=False), out,
             "the generator was trained on 1-channel 16×16 images",
             "32×32" if kind == "size" else "3-channel")


@pytest.mark.parametrize("features,fragment", [
    ({"blocks": ("up9",), "timesteps": (0,)}, "features.blocks: 'up9' is not a block"),
    ({"blocks": ("mid",), "timesteps": (T,)}, f"features.timesteps: {T} is outside the generator's schedule "
                                               f"0..{T - 1}"),
    ({"blocks": ("mid",), "timesteps": (0, 1000)}, "features.timesteps: 1000 is outside"),
    ({}, "features.candidate_blocks: 'down2' is not a block"),  # the defaults name a third level
    ({"candidate_blocks": ("mid",), "candidate_timesteps": (400,)}, "features.candidate_timesteps: 400"),
    ({"blocks": ("mid",), "timesteps": (0,), "e2e_timestep": T + 5}, f"features.e2e_timestep: {T + 5}"),
])
def test_blocks_or_timesteps_that_do_not_exist_are_refused(env, tmp_path, features, fragment):
    out = tmp_path / "seg"
    _refused(lambda: segment(env["data"], out, seg_cfg("ddpm_unet_skip", env["gen"], **features), progress=False),
             out, fragment)


def test_negative_timesteps_and_bad_heads_are_refused_by_the_config():
    with pytest.raises(SynthpairError, match="timesteps must be >= 0"):
        FeatureConfig(generator="x", timesteps=(-1,))
    with pytest.raises(SynthpairError, match="features.head='conv'"):
        FeatureConfig(generator="x", head="conv")


@pytest.fixture(scope="module")
def labelled_generator(env) -> dict:
    """A 2-step mask2image run that saw the masks of all 8 training items of fold 0, and a few of its pairs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = env["root"]
    try:
        train_generator(env["data"], root / "m2i", dataclasses.replace(GEN, method="mask2image", steps=2),
                        progress=False)
        generate(root / "m2i", root / "syn", GenerateConfig(n=4, steps=2, batch_size=4, segmenter="off", amp="off",
                                                             min_area=0, min_component=1, keep_empty=True),
                 progress=False)
        view = make_budget_view(env["data"], root / "v4", BudgetConfig(n=4, seed=0), progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"run": root / "m2i", "syn": root / "syn", "view": view}


def test_generator_that_saw_more_labels_than_the_budget_is_refused_unless_allowed(labelled_generator, tmp_path):
    view, run = labelled_generator["view"], labelled_generator["run"]
    out = tmp_path / "seg"
    _refused(lambda: segment(view, out, seg_cfg("ddpm_unet", run), progress=False), out,
             "saw the masks of 4 item(s) outside this segmenter's 4 labelled training items", "--allow-more-labels")
    res = segment(view, out, dataclasses.replace(seg_cfg("ddpm_unet", run), allow_label_excess=True),
                  progress=False)
    assert res["generator_saw_more_labels"] is True
    assert res["setting"].endswith("[generator saw more labels]")
    fold = res["folds"][0]
    assert fold["features"]["method"] == "mask2image"
    assert fold["label_accounting"]["synthetic_check"]["generator_saw_more_labels"] is True
    assert len(fold["label_accounting"]["mask_items"]) == 8  # the 4 labels + the generator's 8 (a superset)


def test_generator_that_saw_a_test_case_is_refused(env, tmp_path):
    run = tmp_path / "leaky"
    shutil.copytree(env["gen"], run)
    tc = json.loads((run / "training_cases.json").read_text())
    _, test_cases = PreparedDataset.open(env["data"]).fold_cases(0)
    tc["cases"] = sorted(set(tc["cases"]) | {test_cases[0]})
    (run / "training_cases.json").write_text(json.dumps(tc))
    out = tmp_path / "seg"
    _refused(lambda: segment(env["data"], out, seg_cfg("ddpm_unet", run), progress=False), out,
             "the generator was trained on 1 case(s) of the test split of fold 0", test_cases[0])


def test_non_unet_generator_method_is_refused(env, tmp_path, monkeypatch):
    import synthpair.methods.export as export

    load = export.load_export
    monkeypatch.setattr(export, "load_export", lambda d, device="cpu": (lambda m, c: (m, {**c, "method": "prompt"}))(
        *load(d, device=device)))
    out = tmp_path / "seg"
    _refused(lambda: segment(env["data"], out, seg_cfg("ddpm_unet", env["gen"]), progress=False), out,
             "a 'prompt' generator cannot serve as a feature extractor", "image, joint, mask2image, dsdm")


def test_export_without_run_provenance_is_refused(env, tmp_path):
    export = tmp_path / "loose" / "export_copy"
    shutil.copytree(env["export"], export)
    out = tmp_path / "seg"
    _refused(lambda: segment(env["data"], out, seg_cfg("ddpm_unet", export), progress=False), out,
             "no training_cases.json next to this export")


def test_pixel_classifier_with_synthetic_pairs_is_refused(env, labelled_generator, tmp_path):
    out = tmp_path / "seg"
    cfg = dataclasses.replace(seg_cfg("ddpm_pixel", env["gen"], **CANDIDATES), ratio=0.5)
    _refused(lambda: segment(env["data"], out, cfg, synthetic_dir=labelled_generator["syn"], progress=False), out,
             "--model ddpm_pixel trains on cached features of the real labelled items")


def test_pixel_classifier_with_other_augmentation_is_refused_before_any_work(env, tmp_path, monkeypatch):
    out = tmp_path / "seg"
    monkeypatch.setattr(fa, "analyse_features", lambda *a, **k: pytest.fail("analysis ran before the refusal"))
    cfg = dataclasses.replace(seg_cfg("ddpm_pixel", env["gen"], **CANDIDATES), augment="affine")
    _refused(lambda: segment(env["data"], out, cfg, progress=False), out,
             "--augment affine: the ddpm_pixel classifier", "flip_rot / none")


def _cli_refused(argv: list[str], out: Path, capsys, *fragments: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("synthpair: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not out.exists()


def test_cli_ddpm_model_needs_a_generator_and_others_refuse_one(env, tmp_path, capsys):
    out = tmp_path / "seg"
    data = str(env["data"])
    _cli_refused(["segment", data, "--out", str(out), "--model", "ddpm_unet"], out, capsys,
                 "--model ddpm_unet: needs a generator run", "--generator RUN")
    _cli_refused(["segment", data, "--out", str(out), "--generator", str(env["gen"])], out, capsys,
                 "features.generator is set but --model unet does not use diffusion features")
    _cli_refused(["segment", data, "--out", str(out), "--model", "ddpm_unet_skip", "--generator", str(env["gen"]),
                  "--set", 'features.blocks=["up9"]', "--set", "features.timesteps=[0]"], out, capsys,
                 "'up9' is not a block")
    _cli_refused(["segment", data, "--out", str(out), "--model", "ddpm_unet", "--generator", str(tmp_path / "nope")],
                 out, capsys, "not a generator run or export")
