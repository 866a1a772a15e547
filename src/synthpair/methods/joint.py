"""Joint image+mask diffusion (seed paper 002, Saragih et al., sec. 2.3): the mask is extra input channels.

Representation (docs/architecture.md): ``x = cat(image (C channels in [-1, 1]), one-hot foreground channels
(K = num_classes - 1, each in {-1, +1}))``, shape (B, C + K, H, W). One unconditional network denoises all
C + K channels together, so every sample is an image with its own mask. Decoding: K = 1 → ``x_mask > 0``;
K > 1 → ``1 + argmax_k x_k`` where ``max_k x_k > 0``, else background.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..diffusion.losses import diffusion_loss
from ..diffusion.sampling import sample as run_sampler
from .base import DataInfo, Draws, Method, Shard, register_method


def pack_joint(images: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """images float (B, C, H, W) in [-1, 1], masks int64 (B, H, W) in 0..K → float (B, C + K, H, W) in [-1, 1]."""
    classes = torch.arange(1, num_classes, device=masks.device).view(1, -1, 1, 1)
    onehot = (masks.unsqueeze(1) == classes).to(images.dtype) * 2.0 - 1.0
    return torch.cat([images, onehot], dim=1)


def unpack_joint(x: torch.Tensor, channels: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float (B, C + K, H, W) → (images float32 (B, C, H, W) clipped to [-1, 1], masks int64 (B, H, W) in 0..K)."""
    images = x[:, :channels].float().clamp(-1.0, 1.0)
    m = x[:, channels:].float()
    if m.shape[1] != num_classes - 1:
        raise ValueError(f"expected {num_classes - 1} mask channels, got {m.shape[1]}")
    if m.shape[1] == 1:
        masks = (m[:, 0] > 0).long()
    else:
        best, idx = m.max(dim=1)
        masks = torch.where(best > 0, idx + 1, torch.zeros_like(idx))
    return images, masks


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per pair, ``torch.Generator().manual_seed(seed)``."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def joint_loss(model: Callable[..., torch.Tensor], schedule: Any, images: torch.Tensor, masks: torch.Tensor,
               draws: Draws, shard: Shard, *, data: DataInfo, cond: Any = None) -> torch.Tensor:
    """DDPM ``L_simple`` (Ho et al. 2020, eq. 14) on the packed (C + K)-channel tensor of this rank's rows.

    ``draws``: t ~ U{0..T-1} and eps ~ N(0, I) (C + K channels) of the whole global batch (:class:`Draws`);
    ``cond`` (a :class:`~synthpair.diffusion.cond.Cond` of the whole batch, e.g. cluster labels) is cut to the same
    rows and passed to the network.
    """
    device = images.device
    x0 = pack_joint(shard.take(images), shard.take(masks), data.num_classes)
    cond = None if cond is None else cond.rows(shard.rows).to(device)
    return diffusion_loss(model, schedule, x0, shard.take(draws.t, device), shard.take(draws.noise, device), cond)


class JointMethod(Method):
    """Unconditional diffusion over the packed (C + K)-channel image+mask tensor."""

    name = "joint"
    joint_state = True  # the network denoises cat(image, mask): RePaint inpaints / harmonises with it

    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None) -> nn.Module:
        from ..networks.unet import build_unet

        c = data.channels + data.num_classes - 1
        return build_unet(net_cfg, in_channels=c, out_channels=c)

    def noise_channels(self, data: DataInfo) -> tuple[int, ...]:
        return (data.channels + data.num_classes - 1,)

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor, draws: Draws, shard: Shard, generator: torch.Generator, *, data: DataInfo,
             extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """DDPM ``L_simple`` on the packed tensor (:func:`joint_loss`)."""
        return joint_loss(model, schedule, images, masks, draws, shard, data=data)

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs from seeds (pair i depends only on ``seeds[i]``: x_T and the sampler noise come from
        ``torch.Generator().manual_seed(seeds[i])``) → (images float32 (B, C, H, W), masks int64 (B, H, W)) on CPU."""
        c = data.channels + data.num_classes - 1
        gens = seed_generators(seeds)
        x_T = torch.stack([torch.randn((c, *data.size), generator=g) for g in gens]).to(device)
        x0 = run_sampler(model, schedule, x_T, sampler=sampler, steps=steps, eta=eta, spacing=spacing, generators=gens,
                         progress=progress, autocast_dtype=autocast_dtype)
        images, masks = unpack_joint(x0, data.channels, data.num_classes)
        return images.cpu(), masks.cpu()


register_method("joint", JointMethod)
