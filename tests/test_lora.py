"""LoRA adapters (networks/lora.py) and LoRA fine-tuning of a prompt run (methods/prompt.py) end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.diffusion.cond import Cond
from synthpair.errors import SynthpairError
from synthpair.networks.lora import (LoRAConfig, LoRAConv2d, LoRALinear, inject_lora, lora_parameters,
                                     lora_state_dict, merge_lora)
from synthpair.networks.prompt import PromptConfig, PromptUNet
from synthpair.networks.unet import UNetConfig

NET = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)
PC = PromptConfig(dim=16, max_len=6, heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> PromptUNet:
    torch.manual_seed(seed)
    net = PromptUNet(NET, 1, 1, 12, PC)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # MONAI zero-inits output/attention projections; make every layer matter
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, Cond]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 1, 16, 16, generator=g), torch.tensor([5, 30]),
            Cond(tokens=torch.tensor([[2, 3, 4, 0, 0, 0], [5, 0, 0, 0, 0, 0]])))


def _step(net: nn.Module, lr: float = 0.05) -> None:
    x, t, c = _inputs()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    loss = net(x, t, c).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_linear_and_conv_adapters_by_hand() -> None:
    torch.manual_seed(0)
    lin = LoRALinear(nn.Linear(5, 3), rank=2, alpha=4.0)
    x = torch.randn(4, 5)
    assert torch.equal(lin(x), lin.base(x))  # B = 0 at start
    nn.init.normal_(lin.lora_B.weight)
    want = lin.base(x) + 2.0 * x @ lin.lora_A.weight.t() @ lin.lora_B.weight.t()
    assert torch.allclose(lin(x), want, atol=1e-5)
    conv = LoRAConv2d(nn.Conv2d(3, 4, 3, padding=1), rank=2, alpha=2.0)
    nn.init.normal_(conv.lora_B.weight)
    xi = torch.randn(2, 3, 6, 6)
    merged = F.conv2d(xi, conv.base.weight + conv.delta_weight(), conv.base.bias, padding=1)
    assert torch.allclose(conv(xi), merged, atol=1e-5)  # B∘A is the rank-2 kernel delta_weight
    assert torch.linalg.matrix_rank(conv.delta_weight().reshape(4, -1)) == 2


def test_inject_zero_init_freeze_and_one_step() -> None:
    net = _net()
    x, t, c = _inputs()
    with torch.no_grad():
        before = net(x, t, c)
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    wrapped = inject_lora(net, LoRAConfig(rank=2, alpha=2.0))
    assert any(n.endswith("attn2.to_k") for n in wrapped) and any(n.endswith("conv1.conv") for n in wrapped)
    with torch.no_grad():
        assert torch.equal(net(x, t, c), before)  # zero-initialised B: output unchanged at step 0
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(wrapped) == len(lora_parameters(net))
    _step(net)
    after = net.state_dict()
    for k, v in base_state.items():  # base weights untouched (their keys moved under .base)
        key = k if k in after else k.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        assert torch.equal(after[key], v), k
    assert any(after[k].abs().sum() > 0 for k in after if ".lora_B." in k)
    sd = lora_state_dict(net)
    assert set(sd) == {k for k in after if ".lora_A." in k or ".lora_B." in k}
    attn_only = _net()
    names = inject_lora(attn_only, LoRAConfig(targets=("attention",)))
    assert names and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "out_proj") for n in names)
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(attn_only, LoRAConfig())


def test_merge_is_exact() -> None:
    net = _net()
    inject_lora(net, LoRAConfig(rank=3, alpha=6.0))
    for _ in range(2):
        _step(net, lr=0.5)
    x, t, c = _inputs()
    with torch.no_grad():
        adapted = net(x, t, c)
        merge_lora(net)
        merged = net(x, t, c)
    assert not any(isinstance(m, (LoRALinear, LoRAConv2d)) for m in net.modules())
    assert set(net.state_dict()) == set(_net().state_dict())
    assert torch.allclose(adapted, merged, atol=1e-5, rtol=1e-5)


def test_config_errors() -> None:
    with pytest.raises(SynthpairError, match="lora.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(SynthpairError, match="lora.targets"):
        LoRAConfig(targets=("mlp",))
    plain = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(SynthpairError, match="no matching layers"):
        inject_lora(plain, LoRAConfig())


# ------------------------------------------------------------------------------------ end to end
TINY = dict(steps=3, batch_size=4, log_every=1, preview_every=0, preview_n=0, preview_steps=2,
            checkpoint_every=0, amp="off", warmup_steps=1, device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from synthpair.config import apply_overrides
    from synthpair.diffusion import DiffusionConfig
    from synthpair.training import TrainConfig, train_generator

    tmp = tmp_path_factory.mktemp("lora_e2e")
    data = write_tiny_prepared(tmp / "data", n=8)
    base_cfg = TrainConfig(method="prompt", net=NET, prompt=PromptConfig(dim=16, max_len=6, heads=2, aug_prob=0.3),
                           diffusion=DiffusionConfig(num_timesteps=50), **TINY)
    # the base run through the CLI (--set for the prompt section), the fine-tuning runs through the library
    sets = ["steps=3", "batch_size=4", "log_every=1", "preview_every=0", "preview_n=0", "preview_steps=2",
            "checkpoint_every=0",
            "amp=off", "warmup_steps=1", "device=cpu", "net.channels=[8,16]", "net.attention_levels=[false,true]",
            "net.num_head_channels=8", "net.norm_num_groups=8", "prompt.dim=16", "prompt.max_len=6",
            "prompt.heads=2", "prompt.aug_prob=0.3", "diffusion.num_timesteps=50"]
    rc = main(["train", str(data), "--method", "prompt", "--out", str(tmp / "base"), "--no-progress",
               *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    from synthpair.training.trainer import load_train_config

    assert load_train_config(tmp / "base" / "config.json") == base_cfg
    lora_cfg = apply_overrides(base_cfg, [f"init_from={tmp / 'base'}", "lora.enabled=true", "lora.rank=2",
                                          "lr=0.01", "steps=2", "preview_n=2"])
    train_generator(data, tmp / "lora", lora_cfg, progress=False)
    full_cfg = apply_overrides(base_cfg, [f"init_from={tmp / 'base'}", "steps=1", "seed=1"])
    train_generator(data, tmp / "full", full_cfg, progress=False)
    return {"data": data, "base": tmp / "base", "lora": tmp / "lora", "full": tmp / "full", "tmp": tmp}


def test_lora_finetune_exports_adapters_only_and_reloads(runs: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    from synthpair.methods.prompt import PromptMethod
    from synthpair.methods.export import load_export

    log = (runs["lora"] / "log.txt").read_text()
    assert "lora:" in log and "init_from=" in log
    cfg = json.loads((runs["lora"] / "export" / "config.json").read_text())
    assert cfg["lora"]["base_export"] == str((runs["base"] / "export").resolve())
    assert cfg["vocabulary"] == json.loads((runs["base"] / "export" / "config.json").read_text())["vocabulary"]
    state = load_file(str(runs["lora"] / "export" / "model.safetensors"))
    assert set(state) == {k for k in state if ".lora_" in k} | {"text.token.weight"}
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in state.items())
    # reload (base + adapters, merged) == base + adapters applied by hand without merging
    model, _ = load_export(runs["lora"] / "export")
    base, _ = load_export(runs["base"] / "export")
    inject_lora(base, LoRAConfig(**{**cfg["lora"]["config"], "targets": tuple(cfg["lora"]["config"]["targets"])}))
    base.load_state_dict({**base.state_dict(), **state})
    m = PromptMethod()
    tok = m.encode_prompts(cfg, ["tiny, class1", "tiny, class1, smooth"])
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 40])
    with torch.no_grad():
        assert torch.allclose(model(x, t, Cond(tokens=tok)), base(x, t, Cond(tokens=tok)), atol=1e-5)
    # the fine-tuned runs recorded their base and its cases
    cases = json.loads((runs["lora"] / "training_cases.json").read_text())
    assert cases["init_from"]["export"] == str((runs["base"] / "export").resolve())


def test_lora_for_another_base_is_a_clear_error(runs: dict[str, Path]) -> None:
    import shutil

    from synthpair.methods.export import load_export

    for legacy in (False, True):  # the base named by network.json; by config.json in an export that predates it
        moved = runs["tmp"] / f"lora_other_base{int(legacy)}"
        shutil.copytree(runs["lora"] / "export", moved)
        name, cfg = ("config.json", json.loads((moved / "config.json").read_text())) if legacy else \
            ("network.json", json.loads((moved / "network.json").read_text()))
        if legacy:
            (moved / "network.json").unlink()
        record = cfg["lora"] if legacy else cfg["config"]["partial"]
        assert legacy or (cfg["class"] == "PromptUNet" and record["kind"] == "lora")
        record["base_export"] = str((runs["full"] / "export").resolve())  # same shapes, other weights
        (moved / name).write_text(json.dumps(cfg))
        with pytest.raises(SynthpairError, match="LoRA checkpoint for another base model"):
            load_export(moved)
        record["base_export"] = str(runs["tmp"] / "nowhere")
        (moved / name).write_text(json.dumps(cfg))
        with pytest.raises(SynthpairError, match="base export of this LoRA generator not found"):
            load_export(moved)


def test_full_finetune_and_lora_needs_base(runs: dict[str, Path]) -> None:
    from synthpair.training import TrainConfig, train_generator
    from synthpair.diffusion import DiffusionConfig

    from safetensors.torch import load_file

    full = load_file(str(runs["full"] / "export" / "model.safetensors"))
    base = load_file(str(runs["base"] / "export" / "model.safetensors"))
    assert set(full) == set(base)  # full fine-tuning exports every weight
    cfg = TrainConfig(method="prompt", net=NET, prompt=PC, diffusion=DiffusionConfig(num_timesteps=50),
                      lora=LoRAConfig(enabled=True), **TINY)
    with pytest.raises(SynthpairError, match="needs a base run"):
        train_generator(runs["data"], runs["tmp"] / "nobase", cfg, progress=False)
