"""Fallback for the three ``einops.layers.torch.Rearrange`` patterns MONAI's attention blocks use.

MONAI's ``DiffusionModelUNet`` always builds attention in its middle block, and MONAI imports einops
lazily (``optional_import``), so without einops the network cannot even be constructed. einops is not yet
a dependency of this project; until it is, :func:`ensure_rearrange` installs this small equivalent into
MONAI's attention modules. With einops installed it does nothing.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn


class Rearrange(nn.Module):
    """The subset of ``einops.layers.torch.Rearrange`` that MONAI's SABlock / CrossAttentionBlock need."""

    def __init__(self, pattern: str, **sizes: int) -> None:
        super().__init__()
        self.pattern = " ".join(pattern.split())
        self.sizes = sizes
        if self.pattern not in ("b h (qkv l d) -> qkv b l h d", "b h (l d) -> b l h d", "b l h d -> b h (l d)"):
            raise NotImplementedError(f"Rearrange pattern {pattern!r} (install einops)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pattern == "b h (qkv l d) -> qkv b l h d":
            b, h, _ = x.shape
            return x.view(b, h, self.sizes["qkv"], self.sizes["l"], -1).permute(2, 0, 3, 1, 4)
        if self.pattern == "b h (l d) -> b l h d":
            b, h, _ = x.shape
            return x.view(b, h, self.sizes["l"], -1).permute(0, 2, 1, 3)
        b, l, h, d = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, h, l * d)


def ensure_rearrange() -> None:
    """Patch MONAI's attention modules with :class:`Rearrange` when einops is not installed."""
    if importlib.util.find_spec("einops") is not None:
        return
    from monai.networks.blocks import crossattention, selfattention

    for mod in (selfattention, crossattention):
        if getattr(mod, "Rearrange", None) is not Rearrange:
            mod.Rearrange = Rearrange
