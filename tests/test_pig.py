"""PIG (paper 004): Algorithm 1 training draw, Algorithm 2 joint sampling by hand, CLI round trip, mask2image reuse."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from synthpair.cli.main import main
from synthpair.diffusion.cond import Cond
from synthpair.diffusion.sampling import respaced_timesteps, sample as run_sampler
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from synthpair.errors import SynthpairError
from synthpair.methods import DataInfo, get_method
from synthpair.methods.joint import pack_joint, seed_generators, unpack_joint
from synthpair.methods.pig import PigConfig, PigNet, paired_denoiser
from synthpair.networks import UNetConfig

NET = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8)
TINY = ["--set", "net.channels=[8,16]", "--set", "net.attention_levels=[false,false]", "--set",
        "net.norm_num_groups=8", "--set", "net.num_head_channels=8", "--set", "batch_size=4", "--set",
        "preview_every=0", "--set", "checkpoint_every=0", "--set", "amp=off", "--set", "preview_n=0", "--no-progress"]


def tiny_net(num_classes: int = 2, channels: int = 1, seed: int = 0) -> PigNet:
    """A tiny PigNet whose (zero-initialised, in MONAI) output layers are perturbed so outputs are not trivial."""
    torch.manual_seed(seed)
    net = PigNet(NET, NET, channels, num_classes).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def eps_schedule(T: int = 20) -> NoiseSchedule:
    return NoiseSchedule(DiffusionConfig(schedule="linear", num_timesteps=T, prediction="eps"))


class Spy(nn.Module):
    """Records (args, cond, output) of every call of the wrapped submodule."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out = self.inner(x, t, cond) if cond is not None else self.inner(x, t)
        self.calls.append({"x": x.clone(), "t": t.clone(), "cond": cond, "out": out.clone()})
        return out


# ----------------------------------------------------------------------------------- Algorithm 1
@pytest.mark.parametrize("frozen", [False, True])
def test_training_draw_same_t_independent_noises_and_loss_by_hand(frozen: bool) -> None:
    sched = eps_schedule(50)
    net = tiny_net(num_classes=3)
    if frozen:
        for p in net.image.parameters():
            p.requires_grad_(False)
    data = DataInfo(1, 3, (16, 16))
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    masks = torch.randint(0, 3, (4, 16, 16))
    seen: dict[str, Any] = {}

    class Wrapper:  # stands in for a DDP wrapper: .module is the PigNet, calls go through it
        module = net

        def __call__(self, z_t: torch.Tensor, t: torch.Tensor, cond: Any = None, image: bool = True) -> torch.Tensor:
            seen.update(z_t=z_t, t=t, cond=cond, image=image)
            return net(z_t, t, cond, image=image)

    loss = get_method("pig").training_loss(Wrapper(), sched, images, masks, torch.Generator().manual_seed(5), data=data)
    g = torch.Generator().manual_seed(5)  # the same draws, by hand
    t = torch.randint(0, 50, (4,), generator=g)
    eps_y, eps_x = torch.randn((4, 1, 16, 16), generator=g), torch.randn((4, 2, 16, 16), generator=g)
    assert torch.equal(seen["t"], t)
    a, s = sched.sqrt_ab[t].view(-1, 1, 1, 1), sched.sqrt_1mab[t].view(-1, 1, 1, 1)
    x0 = pack_joint(images, masks, 3)[:, 1:]
    # both members noised at the SAME t_i (eqs. 9-10) with their own noise
    torch.testing.assert_close(seen["z_t"][:, :1], a * images + s * eps_y)
    torch.testing.assert_close(seen["z_t"][:, 1:], a * x0 + s * eps_x)
    assert abs(torch.corrcoef(torch.stack([eps_x[:, 0].flatten(), eps_y[:, 0].flatten()]))[0, 1]) < 0.1
    assert torch.equal(seen["cond"].mask, masks) and seen["image"] is (not frozen)
    with torch.no_grad():
        out_x = net.guider(torch.cat([seen["z_t"][:, 1:], seen["z_t"][:, :1]], 1), t)
        want = ((out_x - eps_x) ** 2).mean()
        if not frozen:
            want = want + ((net.image(seen["z_t"][:, :1], t, Cond(mask=masks)) - eps_y) ** 2).mean()
    torch.testing.assert_close(loss.detach(), want)


# ----------------------------------------------------------------------------------- Algorithm 2
@pytest.mark.parametrize("num_classes", [2, 3])
def test_joint_loop_is_algorithm_2_by_hand(num_classes: int) -> None:
    sched, steps = eps_schedule(20), 6
    net = tiny_net(num_classes)
    c, k = 1, num_classes - 1
    ts = respaced_timesteps(20, steps)
    ab = sched.alphas_cumprod64
    seeds = [3, 11]
    z_T = torch.stack([torch.randn((c + k, 8, 8), generator=gen) for gen in seed_generators(seeds)])
    # the paper's loop, written out: x = mask (guider), y = image (mask2image model fed x0_hat of the same step)
    x, y = z_T[:, c:].clone(), z_T[:, :c].clone()
    with torch.no_grad():
        for i, t in enumerate(ts):
            a_t, a_p = float(ab[t]), float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            tb = torch.full((2,), t)
            eps_x = net.guider(torch.cat([x, y], 1), tb)
            x0 = ((x - (1 - a_t) ** 0.5 * eps_x) / a_t ** 0.5).clamp(-1, 1)                 # eq. 6 (clipped)
            eps_x = (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5                                   # eps of the clipped x0
            eps_y = net.image(y, tb, Cond(mask_channels=x0))                                  # Alg. 2 line 6
            y0 = ((y - (1 - a_t) ** 0.5 * eps_y) / a_t ** 0.5).clamp(-1, 1)
            eps_y = (y - a_t ** 0.5 * y0) / (1 - a_t) ** 0.5
            x = a_p ** 0.5 * x0 + (1 - a_p) ** 0.5 * eps_x                                    # eq. 7, sigma = 0
            y = a_p ** 0.5 * y0 + (1 - a_p) ** 0.5 * eps_y
    z0 = run_sampler(paired_denoiser(net, sched), sched, z_T, sampler="ddim", steps=steps, eta=0.0,
                     generators=seed_generators(seeds))
    torch.testing.assert_close(z0, torch.cat([y, x], 1), atol=1e-5, rtol=1e-5)

    # spies on the submodules: at EACH step the image model receives the guider's x0_hat of that step
    net.guider, net.image = Spy(net.guider), Spy(net.image)
    data = DataInfo(c, num_classes, (8, 8))
    images, masks = get_method("pig").sample(net, sched, seeds, data=data, sampler="ddim", steps=steps)
    gcalls, icalls = net.guider.calls, net.image.calls
    assert len(gcalls) == len(icalls) == len(ts)
    for i, (gc, ic) in enumerate(zip(gcalls, icalls)):
        x_t, y_t = gc["x"][:, :k], gc["x"][:, k:]
        assert torch.equal(gc["t"], ic["t"]) and int(gc["t"][0]) == ts[i]
        assert torch.equal(ic["x"], y_t)  # same y_t for both models
        x0_hat = sched.to_x0_eps(gc["out"], x_t, gc["t"])[0].clamp(-1, 1)
        assert ic["cond"].mask is None
        torch.testing.assert_close(ic["cond"].mask_channels, x0_hat)
    ref_images, ref_masks = unpack_joint(torch.cat([y, x], 1), c, num_classes)
    torch.testing.assert_close(images, ref_images, atol=1e-5, rtol=1e-5)
    assert images.shape == (2, c, 8, 8) and masks.shape == (2, 8, 8) and masks.dtype == torch.int64
    assert int(masks.max()) <= k


def test_sampling_is_deterministic_per_seed_for_ddim_and_ddpm() -> None:
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=30))
    net = tiny_net(3, channels=3)
    data = DataInfo(3, 3, (8, 8))
    method = get_method("pig")
    for sampler, eta in (("ddim", 0.0), ("ddpm", 0.0)):
        a = method.sample(net, sched, [7, 8, 9], data=data, sampler=sampler, steps=5, eta=eta)
        b = method.sample(net, sched, [7, 8, 9], data=data, sampler=sampler, steps=5, eta=eta)
        one = method.sample(net, sched, [8], data=data, sampler=sampler, steps=5, eta=eta)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        torch.testing.assert_close(one[0][0], a[0][1], atol=1e-5, rtol=1e-5)  # pair depends only on its seed
        assert a[0].shape == (3, 3, 8, 8) and set(a[1].unique().tolist()) <= {0, 1, 2}
    other = method.sample(net, sched, [10], data=data, steps=5)
    assert not torch.equal(other[0][0], a[0][0])


def test_mask_channels_override_the_mask_in_concat_mode_only() -> None:
    net = tiny_net(3).image
    y, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 4])
    m = torch.randint(0, 3, (2, 8, 8))
    onehot = pack_joint(y, m, 3)[:, 1:]
    with torch.no_grad():
        torch.testing.assert_close(net(y, t, Cond(mask_channels=onehot)), net(y, t, Cond(mask=m)))
        soft = net(y, t, Cond(mask_channels=0.3 * onehot))
    assert not torch.allclose(soft, net(y, t, Cond(mask=m)))
    with pytest.raises(SynthpairError, match="channel"):
        net(y, t, Cond(mask_channels=onehot[:, :1]))


# ----------------------------------------------------------------------------------- CLI end to end
def test_train_export_generate_via_cli_multiclass(tmp_path: Path) -> None:
    from conftest import write_tiny_prepared
    from synthpair.methods.export import load_export
    from synthpair.synthesis.generate import read_manifest, verify_pair

    data = write_tiny_prepared(tmp_path / "data", n=9, num_classes=3)
    run, syn = tmp_path / "run", tmp_path / "syn"
    assert main(["train", str(data), "--method", "pig", "--out", str(run), "--steps", "1", *TINY]) == 0
    model, cfg = load_export(run / "export")
    assert isinstance(model, PigNet) and cfg["method"] == "pig" and cfg["pig"]["image_from"] is None
    assert main(["generate", str(run), "--n", "3", "--out", str(syn), "--steps", "2", "--min-area", "0",
                 "--keep-empty", "--set", "amp=off", "--set", "min_component=1"]) == 0
    lines = read_manifest(syn)
    assert len(lines) == 3 and {ln["method"] for ln in lines} == {"pig"}
    cases = json.loads((run / "training_cases.json").read_text())["cases"]
    assert lines[0]["train_cases"] == sorted(cases)
    assert verify_pair(syn, lines[1]["id"])  # the export reloads and reproduces the pair bit for bit

    # the experiment's "+N pairs" subsets: the first N pairs, a valid synthetic folder for segment
    from synthpair.data.dataset import PreparedDataset
    from synthpair.experiments.pig import subset_synthetic
    from synthpair.segmentation.leakage import check_synthetic

    sub = subset_synthetic(syn, tmp_path / "syn2", 2)
    assert read_manifest(sub) == lines[:2]
    assert (sub / "images" / f"{lines[1]['id']}.png").read_bytes() == (syn / "images" / f"{lines[1]['id']}.png").read_bytes()
    opened = check_synthetic(sub, PreparedDataset.open(data), [0])
    assert sorted(opened.ids) == sorted(ln["id"] for ln in lines[:2])
    with pytest.raises(SynthpairError, match="fewer than the 5"):
        subset_synthetic(syn, tmp_path / "syn5", 5)


def test_image_from_reuses_a_frozen_mask2image_run(tmp_path: Path) -> None:
    from conftest import write_tiny_prepared
    from safetensors.torch import load_file

    data = write_tiny_prepared(tmp_path / "data", n=9)
    m2i, run = tmp_path / "m2i", tmp_path / "pig"
    assert main(["train", str(data), "--method", "mask2image", "--out", str(m2i), "--steps", "1", *TINY]) == 0
    assert main(["train", str(data), "--method", "pig", "--out", str(run), "--steps", "2", *TINY,
                 "--set", f"pig.image_from={m2i}", "--set", "pig.freeze_image=true", "--set",
                 "checkpoint_every=1"]) == 0
    src = load_file(m2i / "export" / "model.safetensors")
    state = torch.load(run / "checkpoints" / "state.pt", weights_only=True)
    for key in ("model", "ema"):
        image = {k[len("image."):]: v for k, v in state[key].items() if k.startswith("image.")}
        assert image.keys() == src.keys()
        for k, v in src.items():  # frozen: the image weights are the mask2image run's
            torch.testing.assert_close(image[k].float(), v, atol=1e-6, rtol=1e-6)
    exported = load_file(run / "export" / "model.safetensors")
    assert {k for k in exported if k.startswith("image.")} == {f"image.{k}" for k in src}
    cfg = json.loads((run / "export" / "config.json").read_text())
    assert cfg["pig"]["image_from"]["run"] == str(m2i.resolve()) and cfg["pig"]["image_from"]["frozen"]
    log = (run / "log.txt").read_text()
    n_img = sum(v.numel() for v in src.values())
    total = int(log.split("params=")[1].split()[0])
    assert int(log.split("trainable=")[1].split()[0]) == total - n_img  # only the guider trains


def test_bad_image_from_and_freeze_without_source_are_one_line_errors(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_tiny_prepared

    data = write_tiny_prepared(tmp_path / "data", n=9)
    joint = tmp_path / "joint"  # a (stub) finished joint run: export/config.json + training_cases.json
    (joint / "export").mkdir(parents=True)
    (joint / "export" / "config.json").write_text(json.dumps({"format": "synthpair-generator", "method": "joint"}))
    (joint / "training_cases.json").write_text(json.dumps({"fold": 0, "cases": []}))
    code = main(["train", str(data), "--method", "pig", "--out", str(tmp_path / "a"), "--steps", "1", *TINY,
                 "--set", f"pig.image_from={joint}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "mask2image run" in err and "'joint'" in err and len(err.splitlines()) == 1
    code = main(["train", str(data), "--method", "pig", "--out", str(tmp_path / "b"), "--steps", "1", *TINY,
                 "--set", f"pig.image_from={tmp_path / 'nowhere'}"])
    assert code == 2 and "pig.image_from must be" in capsys.readouterr().err
    with pytest.raises(SynthpairError, match="pig.freeze_image=true needs pig.image_from"):
        PigConfig(freeze_image=True)


def test_paper_preset_trains_and_samples_with_the_paper_settings(tmp_path: Path, capsys) -> None:
    """--preset pig-paper (issue 15): T = 1024 linear betas 1e-4..0.02, eps prediction, method pig for train;
    DDIM (eta 0) 256 steps for generate; --set and explicit flags still win; an unknown preset is one line."""
    from conftest import write_tiny_prepared

    from synthpair.config import PRESETS
    from synthpair.synthesis.manifest import read_manifest

    data = write_tiny_prepared(tmp_path / "data", n=6)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--preset", "pig-paper", "--steps", "1", *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "pig"
    assert cfg["diffusion"] == {**cfg["diffusion"], "schedule": "linear", "num_timesteps": 1024, "beta_start": 1e-4,
                                "beta_end": 0.02, "prediction": "eps"}
    syn = tmp_path / "syn"
    assert main(["generate", str(run), "--out", str(syn), "--preset", "pig-paper", "--n", "1", "--batch", "1",
                 "--keep-empty", "--segmenter", "off"]) == 0
    rec = read_manifest(syn)[0]
    assert (rec["sampler"], rec["steps"], rec["eta"], rec["spacing"]) == ("ddim", 256, 0.0, "uniform")
    assert PRESETS["pig-paper"]["generate"]["steps"] == 256
    # flags and --set over the preset
    assert main(["generate", str(run), "--out", str(tmp_path / "syn2"), "--preset", "pig-paper", "--n", "1",
                 "--batch", "1", "--keep-empty", "--segmenter", "off", "--steps", "3"]) == 0
    assert read_manifest(tmp_path / "syn2")[0]["steps"] == 3
    run2 = tmp_path / "run2"
    assert main(["train", str(data), "--out", str(run2), "--preset", "pig-paper", "--steps", "1", "--method",
                 "joint", "--set", "diffusion.num_timesteps=100", *TINY]) == 0
    cfg2 = json.loads((run2 / "config.json").read_text())
    assert cfg2["method"] == "joint" and cfg2["diffusion"]["num_timesteps"] == 100
    assert cfg2["diffusion"]["schedule"] == "linear"
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(tmp_path / "run3"), "--preset", "pig", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--preset 'pig': unknown; choose one of pig-paper" in err and not (tmp_path / "run3").exists()
