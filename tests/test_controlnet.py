"""ControlNet edge branch over a frozen prompt base (EMIT-Diff): zero-init, frozen base, partial export, sha check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthpair.diffusion.cond import Cond
from synthpair.errors import SynthpairError

NET = {"channels": (8, 16), "attention_levels": (False, True), "num_head_channels": 8, "norm_num_groups": 8}


def make_base_run(root: Path, data: Path, seed: int = 0) -> Path:
    """A 'prompt' generator RUN without training (keeps tests fast): the network of the prompt method for the
    fold-0 training split, every weight drawn at random (MONAI zero-initialises the U-Net's output conv, which
    would make every output 0), exported like the trainer does, plus training_cases.json."""
    from synthpair.config import to_dict
    from synthpair.data.dataset import PreparedDataset
    from synthpair.diffusion.schedule import DiffusionConfig
    from synthpair.methods import DataInfo, get_method
    from synthpair.networks.export import save_export
    from synthpair.networks.prompt import PromptConfig
    from synthpair.networks.unet import UNetConfig
    from synthpair.training.trainer import TrainConfig

    ds = PreparedDataset.open(data)
    ids, _ = ds.split(0)
    cfg = TrainConfig(method="prompt", net=UNetConfig(**NET), prompt=PromptConfig(dim=16, heads=2, max_len=8))
    method = get_method("prompt")
    info = DataInfo(ds.channels, ds.num_classes, ds.size)
    torch.manual_seed(seed)
    net = method.build_for_training(info, cfg, ds, ids)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    run = root
    save_export(run / "export", net, {"method": "prompt", "net": to_dict(cfg.net), "diffusion": to_dict(DiffusionConfig()),
                                      "data": info.to_dict(), "labels": ds.labels, "fold": 0,
                                      **method.export_extra(net, cfg)})
    (run / "training_cases.json").write_text(json.dumps({
        "fold": 0, "data": str(data.resolve()), "cases": sorted(ds.fold_cases(0)[0]), "items": ids}))
    return run


def train_control(data: Path, base: Path | str, out: Path, steps: int = 1, **control: object) -> Path:
    from synthpair.networks.controlnet import ControlConfig
    from synthpair.networks.unet import UNetConfig
    from synthpair.training.trainer import TrainConfig, train_generator

    cfg = TrainConfig(method="controlnet", steps=steps, batch_size=4, net=UNetConfig(**NET), preview_n=0,
                      preview_every=0, checkpoint_every=0, warmup_steps=0, lr=1e-2,
                      control=ControlConfig(base_run=str(base), **control))
    return train_generator(data, out, cfg, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("cn")
    data = write_tiny_prepared(root / "data", n=9, size=16)
    base = make_base_run(root / "base", data)
    ctl = train_control(data, base, root / "ctl", steps=2)
    return data, base, ctl


def _inputs(b: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((b, 1, size, size), generator=g)
    t = torch.tensor([5, 400, 900][:b])
    edges = (torch.rand((b, 1, size, size), generator=g) > 0.7).float()
    tokens = torch.tensor([[2, 3, 0, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0, 0], [2, 5, 6, 0, 0, 0, 0, 0]][:b])
    return x, t, Cond(tokens=tokens, control=edges)


def test_zero_initialised_branch_leaves_the_base_output_unchanged(runs: tuple[Path, Path, Path]) -> None:
    from synthpair.networks.controlnet import ControlConfig, ControlledUNet
    from synthpair.methods.export import load_export

    _, base_run, _ = runs
    base, _ = load_export(base_run / "export")
    net = ControlledUNet(base, ControlConfig()).eval()
    x, t, cond = _inputs()
    with torch.no_grad():
        ref = base(x, t, Cond(tokens=cond.tokens))
        out = net(x, t, cond)
        assert ref.abs().max() > 0  # a live base (not the zero output conv)
        assert torch.equal(out, ref)  # exact at step 0
        # the branch was copied from the base encoder (all shared keys), and its zero convs are live paths
        assert net.copied_from_base > 0
        assert torch.equal(net.control.conv_in.conv.weight, base.diffusion_unet.conv_in.conv.weight)
        net.control.controlnet_mid_block.conv.weight.normal_()
        assert not torch.equal(net(x, t, cond), ref)
        # edge maps of the wrong size are refused
        with pytest.raises(SynthpairError, match="do not fit"):
            net(x, t, Cond(tokens=cond.tokens, control=torch.zeros(3, 1, 8, 8)))


def test_training_changes_only_the_branch_and_export_round_trips(runs: tuple[Path, Path, Path]) -> None:
    from safetensors.torch import load_file

    from synthpair.methods.export import load_export

    _, base_run, ctl = runs
    base_state = load_file(str(base_run / "export" / "model.safetensors"))
    ckpt = torch.load(ctl / "checkpoints" / "state.pt", map_location="cpu", weights_only=True)
    model = ckpt["model"]
    # the frozen base: bit-identical after training; the branch: moved away from its initialisation
    for k, v in base_state.items():
        assert torch.equal(model[f"base.{k}"], v), k
    moved = [k for k in model if k.startswith("control.controlnet_") and model[k].abs().sum() > 0]
    assert moved, "the zero-initialised output convolutions did not train"
    # the export holds the branch only, and reloading it gives the EMA network exactly
    exported = load_file(str(ctl / "export" / "model.safetensors"))
    assert exported and all(k.startswith("control.") for k in exported)
    cfg = json.loads((ctl / "export" / "config.json").read_text())
    assert cfg["base"]["weights_sha256"] and cfg["base"]["export"] == str((base_run / "export").resolve())
    net, _ = load_export(ctl / "export")
    ema = ckpt["ema"]
    own = net.state_dict()
    assert set(own) == set(ema)
    assert all(torch.equal(own[k], ema[k].float()) for k in own)


def test_a_changed_base_is_refused(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import shutil

    from synthpair.methods.export import load_export

    data, base_run, ctl = runs
    for legacy in (False, True):  # the base named by network.json; by config.json in an export that predates it
        base2 = tmp_path / f"base{int(legacy)}"
        shutil.copytree(base_run, base2)
        ctl2 = tmp_path / f"ctl{int(legacy)}"
        shutil.copytree(ctl, ctl2)
        if legacy:
            (ctl2 / "export" / "network.json").unlink()
            cfg = json.loads((ctl2 / "export" / "config.json").read_text())
            cfg["base"]["export"] = str((base2 / "export").resolve())
            (ctl2 / "export" / "config.json").write_text(json.dumps(cfg))
        else:
            net = json.loads((ctl2 / "export" / "network.json").read_text())
            assert net["class"] == "ControlledUNet"
            net["config"]["base"]["base_export"] = str((base2 / "export").resolve())
            (ctl2 / "export" / "network.json").write_text(json.dumps(net))
        load_export(ctl2 / "export")  # same weights elsewhere: fine
        make_base_run(base2, data, seed=1)  # other weights, valid base export of its own
        with pytest.raises(SynthpairError, match="sha256 differs from the base"):
            load_export(ctl2 / "export")
        shutil.rmtree(base2)
        with pytest.raises(SynthpairError, match="base export .* is missing"):
            load_export(ctl2 / "export")


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    from conftest import write_tiny_prepared

    data = write_tiny_prepared(tmp_path / "data", n=6, size=16)
    with pytest.raises(SynthpairError, match="control.base_run: empty"):
        train_control(data, "", tmp_path / "a")
    with pytest.raises(SynthpairError, match="not a finished generator run"):
        train_control(data, tmp_path / "nothing", tmp_path / "b")
    from synthpair.networks.controlnet import ControlConfig

    with pytest.raises(SynthpairError, match="control.scale"):
        ControlConfig(scale=-1)
    # every range check of the section (an always-true isfinite(default) stood here before issue 13)
    for bad, key in [({"drop_prob": 1.0}, "control.drop_prob"), ({"drop_prob": -0.1}, "control.drop_prob"),
                     ({"aug_prob": 1.5}, "control.aug_prob"), ({"embed_channels": 0}, "control.embed_channels")]:
        with pytest.raises(SynthpairError, match=key):
            ControlConfig(**bad)
    ControlConfig(drop_prob=0.0, aug_prob=1.0, embed_channels=1, scale=0.0)  # the boundaries are valid


def test_guidance_combines_conditional_and_null_prompt_keeping_the_edges() -> None:
    import dataclasses

    from synthpair.diffusion.guidance import classifier_free as guided
    from synthpair.networks.controlnet import ControlConfig, ControlledUNet
    from synthpair.networks.prompt import PromptConfig, PromptUNet
    from synthpair.networks.unet import UNetConfig

    torch.manual_seed(0)
    base = PromptUNet(UNetConfig(**NET), 1, 1, 10, PromptConfig(dim=16, heads=2, max_len=8))
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    net = ControlledUNet(base, ControlConfig()).eval()
    x, t, cond = _inputs()
    b = x.shape[0]
    with torch.no_grad():
        c = net(x, t, cond)
        u = net(x, t, dataclasses.replace(cond, drop=torch.ones(b, dtype=torch.bool)))
        assert not torch.allclose(c, u)
        torch.testing.assert_close(guided(net, 3.0)(x, t, cond), u + 3.0 * (c - u), rtol=1e-5, atol=1e-5)
        assert torch.equal(guided(net, 1.0)(x, t, cond), c)
