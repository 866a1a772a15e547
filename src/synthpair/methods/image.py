"""Image-only diffusion (``--method image``): an unconditional DDPM over the image channels alone.

It learns from images, never from masks, so it can use every labelled AND unlabelled training-side image of
a prepared folder (``PreparedDataset.image_train_ids``; ``TrainConfig.unlabelled``). Its uses:

* pre-training for every mask-aware method: ``--set init_from=RUN`` on a ``joint`` / ``mask2image`` /
  ``dsdm`` / ``pig`` / ``prompt`` run loads the shared U-Net weights and initialises the new mask inputs so
  the image prediction is unchanged where they are zero (:mod:`synthpair.networks.transfer`), leaving the N
  labelled pairs only the mask relationship to learn;
* a frozen feature extractor for diffusion-feature segmenters (:mod:`synthpair.segmentation.ddfeatures`);
* unconditional images (``synthpair generate RUN`` writes an image-only synthetic folder, e.g. for FD/KID).

Network: MONAI ``DiffusionModelUNet`` with ``in = out = C`` channels; loss: DDPM ``L_simple`` (Ho et al.
2020, eq. 14) on the configured prediction target (eps / x0 / v).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..diffusion.losses import diffusion_loss
from ..diffusion.sampling import sample as run_sampler
from .base import DataInfo, Draws, Method, Shard, register_method
from .joint import seed_generators


class ImageMethod(Method):
    """Unconditional diffusion over images (B, C, H, W) in [-1, 1]; masks are neither read nor produced."""

    name = "image"
    uses_masks = False
    makes_masks = False  # sample returns (images, None)

    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: Any = None) -> nn.Module:
        from ..networks.unet import build_unet

        return build_unet(net_cfg, in_channels=data.channels, out_channels=data.channels)

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor | None, draws: Draws, shard: Shard, generator: torch.Generator, *,
             data: DataInfo, extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``L_simple`` on images float (B, C, H, W) in [-1, 1] (``masks`` is ignored, normally None)."""
        dev = images.device
        return diffusion_loss(model, schedule, shard.take(images), shard.take(draws.t, dev),
                              shard.take(draws.noise, dev))

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False
               ) -> tuple[torch.Tensor, None]:
        """Images from seeds → (images float32 (B, C, H, W) in [-1, 1] on CPU, None). Image i depends only on
        ``seeds[i]`` (x_T and sampler noise from ``torch.Generator().manual_seed(seeds[i])``)."""
        gens = seed_generators(seeds)
        x_T = torch.stack([torch.randn((data.channels, *data.size), generator=g) for g in gens]).to(device)
        x0 = run_sampler(model, schedule, x_T, sampler=sampler, steps=steps, eta=eta, spacing=spacing, generators=gens,
                         progress=progress, autocast_dtype=autocast_dtype)
        return x0.float().clamp(-1.0, 1.0).cpu(), None


register_method("image", ImageMethod)
