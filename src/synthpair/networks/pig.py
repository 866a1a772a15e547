"""The network of PIG (paper 004, method ``pig``): the guider (model x, the mask) and the mask2image image model
(model y) in one module; the method, its losses and Algorithm 2's sampler are :mod:`synthpair.methods.pig`."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..diffusion.cond import Cond
from ..errors import fail
from .conditional import MASK2IMAGE_COND, ConditionalUNet
from .pretrained import Pretrained, config_from, config_of
from .unet import UNetConfig, build_unet


class PigNet(Pretrained, nn.Module):
    """The pair of PIG denoisers in one module (so trainer, EMA, checkpoints, export and DDP see one network).

    ``guider``: (B, K + C, H, W) = cat(x_t, y_t) → (B, K, H, W), the mask prediction (model x);
    ``image``: the mask2image :class:`ConditionalUNet` (model y), ``image(y_t, t, Cond(mask=... | mask_channels=...))``
    → (B, C, H, W).
    """

    def __init__(self, net_cfg: Any, image_net_cfg: Any, channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise fail(f"num_classes={num_classes}: PIG generates masks, the data needs at least one foreground class")
        self.channels, self.num_classes = channels, num_classes
        k = num_classes - 1
        self.net_cfg, self.image_net_cfg = net_cfg, image_net_cfg
        self.guider = build_unet(net_cfg, in_channels=k + channels, out_channels=k)
        self.image = ConditionalUNet(image_net_cfg, MASK2IMAGE_COND, channels, num_classes)
        self.needs = ("mask",)

    def image_trainable(self) -> bool:
        return any(p.requires_grad for p in self.image.parameters())

    def train(self, mode: bool = True) -> "PigNet":
        super().train(mode)
        if not self.image_trainable():
            self.image.eval()  # frozen image model: always in eval mode
        return self

    def guide(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Model x: z_t = cat(y_t (C), x_t (K)) (B, C + K, H, W), t int64 (B,) → prediction for x, (B, K, H, W)."""
        c = self.channels
        return self.guider(torch.cat([z_t[:, c:], z_t[:, :c]], dim=1), t)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Any = None, image: bool = True) -> torch.Tensor:
        """Teacher-forced predictions for training: z_t = cat(y_t, x_t) (B, C + K, H, W), t int64 (B,), ``cond``:
        the CLEAN mask for model y (``Cond.mask`` int64 (B, H, W) or ``Cond.mask_channels`` (B, K, H, W)).

        Returns ``cat(out_y, out_x)`` (B, C + K, H, W), or only ``out_x`` (B, K, H, W) with ``image=False``.
        (Sampling does not call this: :func:`paired_denoiser` feeds model y the guider's x0_hat instead.)
        """
        out_x = self.guide(z_t, t)
        if not image:
            return out_x
        if not isinstance(cond, Cond) or (cond.mask is None and cond.mask_channels is None):
            raise fail("PigNet.forward needs the clean mask as cond=Cond(mask=...) for the image model")
        out_y = self.image(z_t[:, :self.channels], t, cond)
        return torch.cat([out_y, out_x.to(out_y.dtype)], dim=1)

    def network_config(self) -> dict[str, Any]:
        return {"net": config_of(self.net_cfg), "image_net": config_of(self.image_net_cfg), "channels": self.channels,
                "num_classes": self.num_classes}

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Any) -> "PigNet":
        return cls(config_from(UNetConfig, config["net"], folder, "config.net"),
                   config_from(UNetConfig, config["image_net"], folder, "config.image_net"), int(config["channels"]),
                   int(config["num_classes"]))


__all__ = ["PigNet"]
