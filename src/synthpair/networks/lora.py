"""LoRA: low-rank adapters for fine-tuning a frozen generator (Hu et al. 2021; used for Stable Diffusion
fine-tuning in the diffusion review, paper 003 sec. 4.1, where LoRA adapts the U-Net's attention layers).

Written by hand, not with ``peft`` — a measured choice (issue 13). ``peft`` can wrap any ``nn.Module`` by layer
name (``inject_adapter_in_model(LoraConfig(target_modules=[...]), model)``; the earlier note here that it only
targets Hugging Face layouts was wrong), and it installs beside torch 2.13 without pulling another torch. But
``pip install --dry-run peft`` (peft 0.21.2, with this project's environment) adds 13 packages that nothing
else here needs — transformers 5.24, accelerate 1.15, tokenizers, pydantic + pydantic-core, typer, rich,
psutil, … — and peft names its tensors ``<layer>.base_layer.weight`` / ``<layer>.lora_A.default.weight``: every
LoRA export written so far (``<layer>.lora_A.weight`` beside the base's own names) would need a key migration,
and the adapters' initialisation and merge would change the numbers of existing LoRA runs. Against ~150 lines
that do exactly what is needed and are tested (tests/test_lora.py), that is no gain; revisit if a peft-only
adapter type (DoRA, LoHa, …) is wanted. Our U-Net is MONAI's ``DiffusionModelUNet``, whose attention blocks
(``SABlock``, ``CrossAttentionBlock``) project with ``nn.Linear`` children named ``to_q``, ``to_k``, ``to_v``,
``out_proj``, and whose residual blocks use ``nn.Conv2d`` (3×3) layers.

- :class:`LoRALinear` wraps ``base: nn.Linear`` (W (out, in), b): ``y = W x + b + (alpha / r) B A x`` with
  ``A`` (r, in) Kaiming-uniform and ``B`` (out, r) zero-initialised, so the output is unchanged at step 0.
- :class:`LoRAConv2d` wraps ``base: nn.Conv2d`` (W (out, in, kh, kw), groups 1): ``A`` is a conv with the
  base's kernel/stride/padding/dilation to r channels, ``B`` a 1×1 conv r → out (zero-init); their
  composition is the conv with kernel ``B[:, :, 0, 0] @ A.reshape(r, -1)`` (a rank-r kernel), added to W.
- :func:`inject_lora` replaces the targeted modules of ``model.diffusion_unet`` (or ``model``) in place
  and freezes every other parameter; :func:`merge_lora` folds ``W + (alpha / r) ΔW`` into the base modules
  and removes the wrappers (same outputs up to float rounding); :func:`lora_state_dict` returns the adapter
  tensors only (``*.lora_A.weight``, ``*.lora_B.weight``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import fail

ATTENTION_NAMES = ("to_q", "to_k", "to_v", "out_proj")
TARGETS = ("attention", "conv")


@dataclass(frozen=True)
class LoRAConfig:
    """``TrainConfig.lora``: ``enabled`` (fine-tune with adapters; needs ``train.init_from``), ``rank`` r,
    ``alpha`` (the update is scaled by alpha / r), ``targets``: ``attention`` (to_q/to_k/to_v/out_proj of every
    self- and cross-attention block) and/or ``conv`` (every 3×3 ``Conv2d`` of the U-Net);
    ``train_embeddings``: also train the prompt token embedding (so words the base run never saw get learned;
    the table is saved with the adapters)."""

    enabled: bool = False
    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ("attention", "conv")
    train_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise fail(f"lora.rank={self.rank}: must be >= 1")
        if self.alpha <= 0:
            raise fail(f"lora.alpha={self.alpha}: must be > 0")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise fail(f"lora.targets={list(self.targets)}: choose one or more of {', '.join(TARGETS)}")


class LoRALinear(nn.Module):
    """``base(x) + scale * lora_B(lora_A(x))`` for ``base: nn.Linear`` (x (..., in) → (..., out))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.lora_A = nn.Linear(base.in_features, rank, bias=False).to(base.weight.device, base.weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False).to(base.weight.device, base.weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))

    def delta_weight(self) -> torch.Tensor:
        """scale · B A, shape of ``base.weight`` (out, in)."""
        return self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())


class LoRAConv2d(nn.Module):
    """``base(x) + scale * lora_B(lora_A(x))`` for ``base: nn.Conv2d`` (groups 1, zero padding)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError("LoRAConv2d needs groups=1 and zero padding")
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.lora_A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                                bias=False).to(base.weight.device, base.weight.dtype)
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False).to(base.weight.device, base.weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))

    def delta_weight(self) -> torch.Tensor:
        """scale · (B ∘ A) as one kernel (out, in, kh, kw)."""
        a = self.lora_A.weight.float()
        b = self.lora_B.weight.float()[:, :, 0, 0]
        return self.scale * (b @ a.reshape(a.shape[0], -1)).reshape(b.shape[0], *a.shape[1:])


LORA_TYPES = (LoRALinear, LoRAConv2d)


def _target_root(model: nn.Module) -> nn.Module:
    from . import unwrap

    net = unwrap(model)
    return getattr(net, "diffusion_unet", net)


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap the targeted layers of ``model.diffusion_unet`` (or of ``model``) in LoRA modules, in place, and
    freeze all non-adapter parameters. Returns the names of the wrapped modules (relative to the U-Net).
    Calling it on a model that already has adapters is an error."""
    root = _target_root(model)
    if any(isinstance(m, LORA_TYPES) for m in model.modules()):
        raise ValueError("model already has LoRA adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: list[str] = []
    for name, module in list(root.named_modules()):
        for child_name, child in list(module.named_children()):
            new: nn.Module | None = None
            if "attention" in cfg.targets and child_name in ATTENTION_NAMES and isinstance(child, nn.Linear):
                new = LoRALinear(child, cfg.rank, cfg.alpha)
            elif ("conv" in cfg.targets and type(child) is nn.Conv2d and child.groups == 1
                  and child.padding_mode == "zeros" and tuple(child.kernel_size) != (1, 1)):
                new = LoRAConv2d(child, cfg.rank, cfg.alpha)
            if new is not None:
                setattr(module, child_name, new)
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise fail(f"lora.targets={list(cfg.targets)}: no matching layers in this network "
                   f"(attention needs net.attention_levels with a true entry)")
    return wrapped


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LORA_TYPES)
            for p in (m.lora_A.weight, m.lora_B.weight)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only: ``{"<path>.lora_A.weight": (r, in[, kh, kw]), "<path>.lora_B.weight": ...}``."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (``W <- W + scale · ΔW``) and put the base layer back in place
    of the wrapper; returns ``model`` (modified in place). Outputs match the adapter model to float rounding."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LORA_TYPES):
                base = child.base
                base.weight.add_(child.delta_weight().to(base.weight.dtype))
                setattr(module, child_name, base)
    return model


def check_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise RuntimeError when ``state``'s adapter keys/shapes do not match the model's adapters."""
    own = lora_state_dict(model)
    keys = {k for k in state if ".lora_A." in k or ".lora_B." in k}
    if keys != set(own):
        missing = sorted(set(own) - keys)[:1] or sorted(keys - set(own))[:1]
        raise RuntimeError(f"LoRA adapters do not match this network (e.g. {missing[0] if missing else '?'})")
    for k in keys:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise RuntimeError(f"LoRA adapter {k}: shape {tuple(state[k].shape)} != {tuple(own[k].shape)}")


__all__ = ["LoRAConfig", "LoRALinear", "LoRAConv2d", "inject_lora", "merge_lora", "lora_state_dict",
           "lora_parameters", "check_adapter_state"]
