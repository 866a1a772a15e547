"""The denoising U-Net: MONAI's ``DiffusionModelUNet`` behind the network signature ``forward(x_t, t, cond)``.

Every diffusion network in synthpair answers ``forward(x_t (B, C_in, H, W) float, t int64 (B,), cond=None)
-> (B, C_out, H, W)``; the math in :mod:`synthpair.diffusion` only relies on that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import fail
from .pretrained import Pretrained, config_from, config_of


@dataclass(frozen=True)
class UNetConfig:
    """MONAI ``DiffusionModelUNet`` hyper-parameters (2D). ``channels[i]`` must be divisible by ``norm_num_groups``."""

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16
    resblock_updown: bool = False
    use_flash_attention: bool = True

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention_levels):
            raise fail(f"net.channels {list(self.channels)} and net.attention_levels {list(self.attention_levels)} "
                       "must have the same length")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise fail(f"net.channels {list(self.channels)}: each must be divisible by "
                       f"net.norm_num_groups={self.norm_num_groups}")


class DiffusionUNet(Pretrained, nn.Module):
    """Thin wrapper: ``forward(x_t, t, cond=None)``; ``cond`` is unused by the unconditional (joint) U-Net.
    ``network.json`` config: ``{"net": UNetConfig, "in_channels", "out_channels", "monai_kwargs"}``."""

    def __init__(self, cfg: UNetConfig, in_channels: int, out_channels: int, **monai_kwargs: Any) -> None:
        """``monai_kwargs`` go to MONAI's constructor as they are (e.g. ``num_class_embeds`` for class
        conditioning, ``with_conditioning``/``cross_attention_dim`` for cross-attention); subclasses that use
        them override ``forward``."""
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.cfg = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.monai_kwargs = dict(monai_kwargs)
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
            num_res_blocks=cfg.num_res_blocks, channels=tuple(cfg.channels),
            attention_levels=tuple(cfg.attention_levels), norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels, resblock_updown=cfg.resblock_updown,
            use_flash_attention=cfg.use_flash_attention, **monai_kwargs)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x_t: (B, in_channels, H, W); t: int64 (B,) in [0, T-1] → (B, out_channels, H, W)."""
        return self.unet(x_t, t)

    def network_config(self) -> dict[str, Any]:
        return {"net": config_of(self.cfg), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "monai_kwargs": dict(self.monai_kwargs)}

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Any) -> "DiffusionUNet":
        return cls(config_from(UNetConfig, config["net"], folder, "config.net"), int(config["in_channels"]),
                   int(config["out_channels"]), **dict(config.get("monai_kwargs") or {}))


class ClusterUNet(DiffusionUNet):
    """The joint U-Net with a class embedding (method ``joint_cluster``): ``forward(x_t, t, cond)`` reads
    ``cond.label`` int64 (B,) in 0..k-1. ``prior``: the training clusters' sizes (label-free sampling draws from
    them), kept in ``network.json`` with ``k``."""

    needs = ("label",)

    def __init__(self, cfg: UNetConfig, in_channels: int, out_channels: int, k: int,
                 prior: list[float] | None = None) -> None:
        super().__init__(cfg, in_channels, out_channels, num_class_embeds=int(k))
        self.k = int(k)
        self.prior = [float(v) for v in prior] if prior is not None else [1.0] * self.k

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x_t (B, C+K, H, W), t int64 (B,), cond.label int64 (B,) in 0..k-1 → (B, C+K, H, W)."""
        if cond is None or getattr(cond, "label", None) is None:
            raise ValueError("joint_cluster network needs cond.label (int64 (B,) cluster ids)")
        return self.unet(x_t, t, class_labels=cond.label.to(x_t.device).long())

    def network_config(self) -> dict[str, Any]:
        return {"net": config_of(self.cfg), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "k": self.k, "prior": [float(v) for v in self.prior]}

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Any) -> "ClusterUNet":
        return cls(config_from(UNetConfig, config["net"], folder, "config.net"), int(config["in_channels"]),
                   int(config["out_channels"]), int(config["k"]), config.get("prior"))


def build_unet(cfg: UNetConfig, in_channels: int, out_channels: int, **monai_kwargs: Any) -> DiffusionUNet:
    """Build the wrapped MONAI U-Net (H and W must be divisible by 2**(len(channels)-1)); ``monai_kwargs``
    are passed to ``DiffusionModelUNet`` unchanged."""
    return DiffusionUNet(cfg, in_channels, out_channels, **monai_kwargs)
