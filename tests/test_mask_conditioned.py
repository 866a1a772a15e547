"""mask2image / dsdm: every network path, hybrid loss by hand, CFG, null-condition dropout, reference encoder,
SPADE at every decoder level, bad inputs, and a 2-lesion-class phantom run through train → generate → replay."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from synthpair.diffusion.cond import Cond
from synthpair.diffusion.guidance import classifier_free
from synthpair.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl, posterior, vlb_terms
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from synthpair.errors import SynthpairError
from synthpair.methods import DataInfo, get_method
from synthpair.networks.conditional import CondConfig, ReferenceEncoder, train_reference_encoder
from synthpair.networks.unet import UNetConfig

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)
SMALL = dict(ref_width=8, ref_embed=32, ref_dim=16, ref_tokens=2, spade_hidden=8, encoder_steps=2, encoder_batch=4)
INFO = DataInfo(1, 3, (16, 16))


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 1, 16, 16), generator=g) * 2 - 1, torch.randint(0, 3, (b, 16, 16), generator=g)


PATHS = {
    "mask2image": ("mask2image", None),
    "dsdm SM+RI": ("dsdm", CondConfig(**SMALL)),
    "dsdm SM": ("dsdm", CondConfig(reference=False, **SMALL)),
    "dsdm RI": ("dsdm", CondConfig(mask_mode="none", **SMALL)),
    "dsdm unconditional": ("dsdm", CondConfig(mask_mode="none", reference=False, drop_prob=0.0, **SMALL)),
    "dsdm concat, fixed variance": ("dsdm", CondConfig(mask_mode="concat", reference=False, learn_sigma=False,
                                                       **SMALL)),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_network_paths_train_and_sample(path: str) -> None:
    name, cc = PATHS[path]
    method = get_method(name)
    torch.manual_seed(0)
    model = method.build_network(INFO, NET, cond_cfg=cc)
    images, masks = _batch()
    method.setup(model, images, masks, data=INFO, seed=0, fresh=True)
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=20))
    loss = method.training_loss(model, sched, images, masks, torch.Generator().manual_seed(0), data=INFO)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    if getattr(model, "use_reference", False):  # the reference encoder is frozen
        assert all(not p.requires_grad for p in model.encoder.parameters())
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([3, 7]), Cond(mask=masks[:2], reference=images[:2]))
    assert out.shape == (2, 2 if model.cond_cfg.learn_sigma else 1, 16, 16)
    cond = Cond(mask=masks[:2], reference=images[:2])
    guidance = 1.0 if model.cond_cfg.drop_prob == 0 else 2.0
    sampler = "ddpm" if model.cond_cfg.learn_sigma else "ddim"  # ddpm uses the learned variance
    x, m = method.sample(model, sched, [5, 6], data=INFO, steps=2, sampler=sampler, cond=cond, guidance=guidance)
    x2, _ = method.sample(model, sched, [5, 6], data=INFO, steps=2, sampler=sampler, cond=cond, guidance=guidance)
    assert x.shape == (2, 1, 16, 16) and torch.equal(m, masks[:2]) and torch.equal(x, x2)
    assert x.min() >= -1 and x.max() <= 1


def test_normal_kl_and_decoder_nll_by_hand() -> None:
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(math.log(0.5)), torch.tensor(-0.1), torch.tensor(math.log(2.0))
    want = math.log(math.sqrt(2.0) / math.sqrt(0.5)) + (0.5 + 0.4 ** 2) / (2 * 2.0) - 0.5
    assert float(normal_kl(m1, lv1, m2, lv2)) == pytest.approx(want, rel=1e-6)
    x = torch.tensor([-1.0, 0.2, 1.0])
    mean, sd = torch.tensor([-0.9, 0.25, 0.8]), 0.1
    got = discretized_gaussian_log_likelihood(x, mean, torch.full((3,), math.log(sd)))
    h = 1 / 255
    want = [math.log(stats.norm.cdf((-1 + h + 0.9) / sd)),
            math.log(stats.norm.cdf((0.2 + h - 0.25) / sd) - stats.norm.cdf((0.2 - h - 0.25) / sd)),
            math.log(1 - stats.norm.cdf((1 - h - 0.8) / sd))]
    assert got.tolist() == pytest.approx(want, rel=1e-4)


def test_vlb_terms_by_hand() -> None:
    """L_t for t > 0 is the KL between the true and model posteriors; for t = 0 the decoder NLL (bits/dim)."""
    sched = NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=3, beta_start=0.1, beta_end=0.3,
                                          prediction="eps"))
    x0 = torch.tensor([0.5]).view(1, 1, 1, 1)
    x_t = torch.tensor([0.2]).view(1, 1, 1, 1)
    eps_hat = torch.tensor([0.1]).view(1, 1, 1, 1)
    v = torch.tensor([0.0]).view(1, 1, 1, 1)  # halfway between log beta_t and log beta~_t
    b = [0.1, 0.2, 0.3]
    ab = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7]
    # t = 1
    t = torch.tensor([1])
    x0_hat = (0.2 - math.sqrt(1 - ab[1]) * 0.1) / math.sqrt(ab[1])
    c0 = b[1] * math.sqrt(ab[0]) / (1 - ab[1])
    ct = (1 - ab[0]) * math.sqrt(1 - b[1]) / (1 - ab[1])
    tilde = b[1] * (1 - ab[0]) / (1 - ab[1])
    mu_true, mu_model = c0 * 0.5 + ct * 0.2, c0 * x0_hat + ct * 0.2
    lv_model = 0.5 * math.log(b[1]) + 0.5 * math.log(tilde)
    kl = 0.5 * (-1 + lv_model - math.log(tilde) + math.exp(math.log(tilde) - lv_model)
                + (mu_true - mu_model) ** 2 * math.exp(-lv_model))
    got = vlb_terms(sched, x0, x_t, t, eps_hat, v)
    assert float(got) == pytest.approx(kl / math.log(2), rel=1e-4)
    # t = 0: decoder NLL with the model mean and variance (beta~ clipped to beta~_1)
    t = torch.tensor([0])
    x0_hat = (0.2 - math.sqrt(1 - ab[0]) * 0.1) / math.sqrt(ab[0])
    mu_model = x0_hat  # posterior at t=0: c0 = 1, ct = 0
    lv_model = 0.5 * math.log(b[0]) + 0.5 * math.log(tilde)
    sd = math.exp(0.5 * lv_model)
    h = 1 / 255
    nll = -math.log(stats.norm.cdf((0.5 + h - mu_model) / sd) - stats.norm.cdf((0.5 - h - mu_model) / sd))
    got = vlb_terms(sched, x0, x_t, t, eps_hat, v)
    assert float(got) == pytest.approx(nll / math.log(2), rel=1e-4)
    mean, lv = posterior(sched, x0, x_t, torch.tensor([1]))
    assert float(mean) == pytest.approx(mu_true, rel=1e-5) and float(lv) == pytest.approx(math.log(tilde), rel=1e-5)


def test_cfg_scale_one_is_conditional_and_scale_combines() -> None:
    torch.manual_seed(0)
    model = get_method("dsdm").build_network(INFO, NET, cond_cfg=CondConfig(**SMALL))
    with torch.no_grad():  # MONAI zero-initialises output/residual/attention projections: make all of them non-zero
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.eval()
    images, masks = _batch(2)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([4, 9])
    cond = Cond(mask=masks, reference=images)
    with torch.no_grad():
        c = model(x, t, cond)
        u = model(x, t, cond.with_drop(torch.ones(2, dtype=torch.bool)))
        assert torch.allclose(classifier_free(model, 1.0, mean_channels=1)(x, t, cond), c)
        g = classifier_free(model, 3.0, mean_channels=1)(x, t, cond)
    assert not torch.allclose(c[:, :1], u[:, :1])
    assert torch.allclose(g[:, :1], u[:, :1] + 3.0 * (c[:, :1] - u[:, :1]), atol=1e-5)
    assert torch.allclose(g[:, 1:], c[:, 1:], atol=1e-6)  # variance channels: the conditional ones


def test_null_condition_dropout_rate() -> None:
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        cond_cfg = CondConfig(drop_prob=0.25, learn_sigma=False)
        use_reference = True

        def forward(self, x, t, cond):
            seen.append(cond.drop.clone())
            assert cond.mask is not None and cond.reference is not None
            return torch.zeros_like(x, requires_grad=True)

    images, masks = _batch(64)
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=10))
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        get_method("dsdm").training_loss(Spy(), sched, images, masks, g, data=INFO)
    rate = float(torch.cat(seen).float().mean())
    assert abs(rate - 0.25) < 0.03  # 3200 Bernoulli(0.25) draws: sd 0.008


def test_reference_encoder_contrastive_loss_decreases() -> None:
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    imgs = torch.stack([0.8 * torch.sign(torch.sin(xx * (0.25 + 0.2 * k) + yy * 0.3 * (k % 4))) for k in range(8)])
    enc = ReferenceEncoder(1, width=4, embed=16)
    losses = train_reference_encoder(enc, imgs[:, None], steps=30, batch=8, lr=3e-3, temperature=0.5,
                                     generator=torch.Generator().manual_seed(0))
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1
    assert all(not p.requires_grad for p in enc.parameters()) and not enc.training


def test_spade_receives_mask_at_every_decoder_level() -> None:
    from monai.networks.nets.spade_diffusion_model_unet import SPADE

    model = get_method("dsdm").build_network(INFO, NET, cond_cfg=CondConfig(reference=False, **SMALL)).eval()
    calls: dict[int, list[torch.Tensor]] = {}
    for level, block in enumerate(model.unet.up_blocks):
        for mod in block.modules():
            if isinstance(mod, SPADE):
                mod.register_forward_hook(lambda m, inp, out, lv=level: calls.setdefault(lv, []).append(inp[1]))
    assert not any(isinstance(m, SPADE) for b in model.unet.down_blocks for m in b.modules())
    _, masks = _batch(2)
    model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), Cond(mask=masks))
    assert sorted(calls) == list(range(len(model.unet.up_blocks)))
    onehot = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    for segs in calls.values():
        assert all(torch.equal(s, onehot) for s in segs)
    # the null condition zeroes the map
    calls.clear()
    model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), Cond(mask=masks, drop=torch.tensor([True, False])))
    s = calls[0][0]
    assert s[0].abs().sum() == 0 and torch.equal(s[1], onehot[1])


def test_bad_inputs_are_one_line_errors() -> None:
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=10))
    images, masks = _batch(2)
    dsdm = get_method("dsdm")
    model = dsdm.build_network(INFO, NET, cond_cfg=CondConfig(**SMALL))
    with pytest.raises(SynthpairError, match="trained for 3 classes"):
        dsdm.sample(model, sched, [0, 1], data=INFO, steps=2, cond=Cond(mask=masks + 3, reference=images))
    with pytest.raises(SynthpairError, match="channel"):
        dsdm.sample(model, sched, [0, 1], data=INFO, steps=2, cond=Cond(mask=masks, reference=images.repeat(1, 3, 1, 1)))
    m2i = get_method("mask2image")
    model = m2i.build_network(INFO, NET)
    with pytest.raises(SynthpairError, match="without classifier-free guidance"):
        m2i.sample(model, sched, [0, 1], data=INFO, steps=2, cond=Cond(mask=masks), guidance=3.0)
    for bad in (1.5, 1.0, -0.1):  # drop_prob in [0, 1) (a one-element loop over error types stood here)
        with pytest.raises(SynthpairError, match="cond.drop_prob"):
            CondConfig(drop_prob=bad)
    with pytest.raises(SynthpairError, match="cond.vlb_weight"):
        CondConfig(vlb_weight=-1.0)


def test_augmented_masks_are_seeded_and_plausible() -> None:
    from synthpair.synthesis.conditions import augment_mask, augment_params

    yy, xx = np.mgrid[:32, :32]
    m = (((yy - 16) ** 2 + (xx - 14) ** 2) < 36).astype(np.int64)
    a1 = augment_mask(m, augment_params(7, m.shape))
    a2 = augment_mask(m, augment_params(7, m.shape))
    assert np.array_equal(a1, a2)
    assert 0.6 < a1.sum() / m.sum() < 1.6


def test_faithfulness_metric_by_hand() -> None:
    from synthpair.metrics.faithfulness import mask_faithfulness

    m = np.zeros((3, 4, 4), int)
    p = np.zeros((3, 4, 4), int)
    m[0, :2, :2] = 1
    p[0, :2, :1] = 1          # dice 2*2/(4+2) = 2/3
    m[1, 0, 0], p[1, 0, 0] = 1, 2  # class 1 and class 2 each disjoint → 0
    assert mask_faithfulness(p, m, 3).tolist() == pytest.approx([2 / 3, 0.0, 1.0])


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2 lesion classes (background / class1 / class2) phantoms at 16×16 → a tiny dsdm run (SM + RI + CFG)."""
    from synthpair.data.phantoms import write_phantom_source
    from synthpair.data.prepare import PrepareConfig, prepare_dataset
    from synthpair.training.trainer import TrainConfig, train_generator

    root = tmp_path_factory.mktemp("mc")
    src = write_phantom_source(root / "src", n=12, size=32, num_classes=3)
    data = prepare_dataset(src, root / "data", PrepareConfig(size=16, folds=3, dedup=False), progress=False)
    cfg = TrainConfig(method="dsdm", steps=2, batch_size=4, preview_every=0, checkpoint_every=0, preview_n=2,
                      preview_steps=2, net=NET, amp="off", diffusion=DiffusionConfig(num_timesteps=50),
                      cond=CondConfig(**SMALL))
    run = train_generator(data, root / "run", cfg, progress=False)
    return data, run


def test_two_lesion_classes_generate_replay_and_provenance(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    from synthpair.data.dataset import PreparedDataset
    from synthpair.segmentation.leakage import check_synthetic
    from synthpair.segmentation.reference import generate_scored
    from synthpair.synthesis.generate import GenerateConfig, generate, read_manifest, verify_pair

    data, run = phantom_run
    ds = PreparedDataset.open(data)
    assert ds.num_classes == 3
    cfg = GenerateConfig(n=6, steps=2, batch_size=4, min_area=0, min_component=1, keep_empty=True, amp="off",
                         masks="augmented", reference="random", guidance=2.0, segmenter_steps=3)
    # generate never trains the --segmenter auto reference segmenter: it refuses, generate_scored trains it first
    with pytest.raises(SynthpairError, match="reference segmenter is not trained yet"):
        generate(run, tmp_path / "syn", cfg, progress=False)
    syn = generate_scored(run, tmp_path / "syn", cfg, progress=False)
    lines = read_manifest(syn)
    train_cases, test_cases = ds.fold_cases(0)
    for rec in lines:
        assert rec["source_case"] in train_cases and rec["reference_case"] in train_cases
        assert set(rec["train_cases"]) == set(train_cases)
        assert 0.0 <= rec["faithfulness"] <= 1.0 and rec["guidance"] == 2.0
        assert rec["mask_source"] == "augmented" and rec["mask_augment"] is not None
    assert max(int(np.max(PreparedDataset.open(syn, require_splits=False).load([r["id"]])[1])) for r in lines) <= 2
    assert verify_pair(syn, lines[-1]["id"])
    check_synthetic(syn, ds, [0])  # no leakage into fold 0's test split
    # own reference = the mask's own image; faithfulness filter drops pairs below the threshold
    syn2 = generate(run, tmp_path / "syn2", dataclasses.replace(cfg, reference="own", min_faithfulness=0.999,
                                                                max_attempts_factor=1.0), progress=False)
    for rec in read_manifest(syn2):
        assert rec["reference_case"] == rec["source_case"] and rec["faithfulness"] >= 0.999
    with pytest.raises(SynthpairError, match="--masks"):
        generate(run, tmp_path / "bad", dataclasses.replace(cfg, masks="fancy"), progress=False)


def test_masks_from_a_joint_run(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    """--masks joint:RUN: masks come from a joint generator; its train_cases join the pair's; replay is exact."""
    from synthpair.synthesis.generate import GenerateConfig, generate, read_manifest, verify_pair
    from synthpair.training.trainer import TrainConfig, train_generator

    data, run = phantom_run
    joint = train_generator(data, tmp_path / "joint", TrainConfig(steps=1, batch_size=2, preview_n=0,
                            checkpoint_every=0, net=NET, amp="off", diffusion=DiffusionConfig(num_timesteps=50)),
                            progress=False)
    cfg = GenerateConfig(n=2, steps=2, batch_size=2, min_area=0, min_component=1, keep_empty=True, amp="off",
                         masks=f"joint:{joint}", reference="own", segmenter="off")
    syn = generate(run, tmp_path / "syn", cfg, progress=False)
    lines = read_manifest(syn)
    assert all(r["mask_source"] == f"joint:{joint.resolve()}" and r["source_case"] is None for r in lines)
    assert verify_pair(syn, lines[-1]["id"])


def test_reinhard_colour_normalisation_matches_dataset_statistics(tmp_path: Path) -> None:
    from data_helpers import write_png_folder

    from synthpair.data.colour import _to_lab
    from synthpair.data.dataset import PreparedDataset
    from synthpair.data.prepare import PrepareConfig, prepare_dataset

    src = write_png_folder(tmp_path / "src", n=4, h=16, w=16, rgb=True)
    data = prepare_dataset(src, tmp_path / "data", PrepareConfig(size=16, folds=2, dedup=False,
                                                                 colour_normalisation="reinhard"), progress=False)
    ds = PreparedDataset.open(data)
    target = np.array(ds.info["normalisation"]["colour"]["lab_mean"])
    imgs, _ = ds.load(ds.ids)
    means = np.stack([_to_lab(im).reshape(-1, 3).mean(0) for im in imgs])
    assert np.abs(means - target).max() < 3.0  # up to gamut clipping and uint8 rounding
    with pytest.raises(SynthpairError, match="RGB"):
        prepare_dataset(write_png_folder(tmp_path / "g", n=4, h=16, w=16), tmp_path / "d2",
                        PrepareConfig(size=16, folds=2, dedup=False, colour_normalisation="reinhard"), progress=False)


def test_learned_variance_ddpm_reduces_to_fixed_posterior_variance() -> None:
    """v = -1 everywhere (f = 0) gives sigma = sqrt(beta~) — the fixed DDPM sampler; v = +1 gives sqrt(beta)."""
    from synthpair.diffusion.sampling import sample, variance_bounds

    sched = NoiseSchedule(DiffusionConfig(num_timesteps=30))

    def fixed(x, t, cond=None):
        return 0.3 * x

    def learned(v):
        return lambda x, t, cond=None: torch.cat([0.3 * x, torch.full_like(x, v)], dim=1)

    def run(model, **kw):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        x_T = torch.stack([torch.randn((1, 4, 4), generator=g) for g in gens])
        return sample(model, sched, x_T, sampler="ddpm", steps=5, generators=gens, **kw)

    assert torch.allclose(run(learned(-1.0), variance_channels=1), run(fixed), atol=1e-5)
    assert not torch.allclose(run(learned(1.0), variance_channels=1), run(fixed), atol=1e-3)
    lb, lt = variance_bounds(sched, [29, 22])[0]
    assert lb > lt  # beta_t > beta~_t


def test_guidance_doubles_every_condition_field_and_nulls_only_through_drop():
    """The combiner's 2B-row batch carries tokens, control maps and labels of the caller (rows [cond; null])."""
    seen = {}

    def model(x, t, cond):
        seen["cond"] = cond
        return x * (1.0 + (~cond.drop).float().view(-1, 1, 1, 1))  # cond rows 2x, null rows 1x

    x = torch.randn(2, 1, 4, 4)
    cond = Cond(tokens=torch.tensor([[3, 4], [5, 0]]), control=torch.rand(2, 1, 4, 4), label=torch.tensor([1, 0]))
    out = classifier_free(model, 3.0)(x, torch.zeros(2, dtype=torch.long), cond)
    c = seen["cond"]
    assert torch.equal(c.tokens, torch.cat([cond.tokens, cond.tokens]))
    assert torch.equal(c.control, torch.cat([cond.control, cond.control]))
    assert torch.equal(c.label, torch.cat([cond.label, cond.label]))
    assert c.drop.tolist() == [False, False, True, True]
    assert torch.allclose(out, x + 3.0 * (2 * x - x))  # null + s (cond - null)
