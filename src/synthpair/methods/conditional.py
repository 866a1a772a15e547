"""Mask-conditioned generation: ``mask2image`` (mask concatenated to the noisy input) and ``dsdm`` (the Dual
Semantic Diffusion Model of DiffusionDCI: SPADE mask injection, reference-image cross-attention,
classifier-free guidance, learned variance with the hybrid loss).

The image is generated for a given mask: ``sample(..., cond=Cond(mask=(B, H, W) int64 in 0..K,
reference=(B, C, H, W) in [-1, 1]))`` returns that mask unchanged with the generated image. The networks live
in :mod:`synthpair.networks.conditional`; the math (losses, guidance, the one sampling loop) in
:mod:`synthpair.diffusion`. Which parts are on is ``TrainConfig.cond`` (:class:`CondConfig`), so DSDM's
ablations are configurations: unconditional U-Net (``mask_mode=none, reference=false``), +SM (``spade``),
+RI (``none`` + ``reference``), +SM+RI (default); CFG on/off (``drop_prob`` > 0 / = 0).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..diffusion.cond import Cond
from ..diffusion.guidance import classifier_free
from ..diffusion.losses import diffusion_loss, hybrid_loss
from ..diffusion.sampling import sample as run_sampler
from ..errors import fail
from ..networks.conditional import MASK2IMAGE_COND, CondConfig, ConditionalUNet, train_reference_encoder
from .base import DataInfo, Draws, Method, Shard, register_method, unwrap
from .joint import seed_generators



class DSDMMethod(Method):
    """The Dual Semantic Diffusion Model (all parts configurable by :class:`CondConfig`)."""

    name = "dsdm"
    config_sections = ("cond",)
    condition = "masks"   # sampled for given masks (+ reference images): synthesis.conditions.ConditionSource
    conditional = True
    makes_masks = False   # returns the given masks

    def cond_config(self, cfg: CondConfig | None) -> CondConfig:
        return cfg if cfg is not None else CondConfig()

    def build_network(self, data: DataInfo, net_cfg: Any, cond_cfg: CondConfig | None = None) -> nn.Module:
        return ConditionalUNet(net_cfg, self.cond_config(cond_cfg), data.channels, data.num_classes)

    def setup(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, data: DataInfo, seed: int,
              fresh: bool, log: Callable[[str], None] | None = None, cfg: Any = None,
              run_dir: Any = None) -> None:
        """Before diffusion training: keep preview conditions (first 16 training pairs) and, on a fresh run
        with a reference encoder, pre-train it contrastively on the training images and freeze it (its own
        generator seeded ``seed + 7919``, so the trainer's random stream is untouched)."""
        self._preview = (masks[:16].detach().cpu(), images[:16].detach().cpu())
        net = unwrap(model)
        if fresh and net.use_reference and net.cond_cfg.encoder_steps > 0:
            cc = net.cond_cfg
            losses = train_reference_encoder(net.encoder, images, steps=cc.encoder_steps, batch=cc.encoder_batch,
                                             lr=cc.encoder_lr, temperature=cc.encoder_temperature,
                                             generator=torch.Generator().manual_seed(seed + 7919), log=log)
            if log is not None and losses:
                log(f"reference encoder: nt-xent {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps; frozen")

    def drop_prob(self, net: nn.Module) -> float | None:
        """``cond.drop_prob`` when CFG is trained (> 0), else no draw."""
        return net.cond_cfg.drop_prob if net.cond_cfg.drop_prob > 0 else None

    def loss(self, model: Callable[..., torch.Tensor], net: nn.Module, schedule: Any, images: torch.Tensor,
             masks: torch.Tensor, draws: Draws, shard: Shard, generator: torch.Generator, *, data: DataInfo,
             extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``L_simple`` (eq. 15) or ``L_hybrid`` (eq. 14) on the image given its mask (+ itself as the reference
        image); null-condition rows from ``draws.drop`` (probability ``cond.drop_prob``)."""
        cc: CondConfig = net.cond_cfg
        dev = images.device
        x0 = shard.take(images)
        cond = Cond(mask=shard.take(masks), reference=x0 if net.use_reference else None,
                    drop=None if draws.drop is None else shard.take(draws.drop, dev))
        tt, nn_ = shard.take(draws.t, dev), shard.take(draws.noise, dev)
        if cc.learn_sigma:
            return hybrid_loss(model, schedule, x0, tt, nn_, cond, vlb_weight=cc.vlb_weight)
        return diffusion_loss(model, schedule, x0, tt, nn_, cond)

    def default_guidance(self, model: nn.Module) -> float:
        return 3.0 if unwrap(model).cond_cfg.drop_prob > 0 else 1.0

    def sample(self, model: Callable[..., torch.Tensor], schedule: Any, seeds: Sequence[int], *, data: DataInfo,
               sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None, progress: bool = False, cond: Cond | None = None,
               guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images for the masks of ``cond`` → (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W)) on CPU.

        ``cond.mask``: int64 (B, H, W) in 0..K; ``cond.reference``: float (B, C, H, W) in [-1, 1] (networks with
        a reference encoder). ``guidance``: scale s of :mod:`synthpair.diffusion.guidance` (None: 3 for a
        CFG-trained model, else 1); s != 1 needs a model trained with ``cond.drop_prob > 0``. Pair i depends
        only on ``seeds[i]`` and its conditions (x_T and sampler noise from ``Generator().manual_seed(seed)``).
        """
        net = unwrap(model)
        cc: CondConfig = net.cond_cfg
        if cond is None:
            if getattr(self, "_preview", None) is None:
                raise fail(f"method {self.name}: sampling needs masks (cond=Cond(mask=...)); pass them from a mask source")
            pm, pi = self._preview
            idx = torch.arange(len(seeds)) % pm.shape[0]
            cond = Cond(mask=pm[idx], reference=pi[idx] if net.use_reference else None)
        if guidance is None:
            guidance = self.default_guidance(net)
        if float(guidance) != 1.0 and cc.drop_prob <= 0:
            raise fail(f"guidance={guidance}: this {self.name} generator was trained without classifier-free guidance "
                       f"(cond.drop_prob=0); use --guidance 1 or retrain with --set cond.drop_prob=0.1")
        if cond.mask is None or cond.mask.shape[0] != len(seeds):
            raise fail(f"cond.mask: need one mask per seed ({len(seeds)}), got "
                       f"{None if cond.mask is None else cond.mask.shape[0]}")
        dev = torch.device(device)
        net.check_cond(cond, len(seeds))
        masks = cond.mask.long()
        emb = None
        if net.use_reference:
            emb = net.embed_reference(cond.reference.to(dev)) if cond.reference is not None else cond.reference_embedding
        run_cond = Cond(mask=masks.to(dev), reference_embedding=emb)
        gens = seed_generators(seeds)
        x_T = torch.stack([torch.randn((data.channels, *data.size), generator=g) for g in gens]).to(dev)
        c = data.channels
        guided = classifier_free(model, guidance, mean_channels=c)
        x0 = run_sampler(guided, schedule, x_T, sampler=sampler, steps=steps, eta=eta, spacing=spacing, cond=run_cond,
                         generators=gens, progress=progress, autocast_dtype=autocast_dtype,
                         variance_channels=c if cc.learn_sigma else None)
        return x0[:, :c].float().clamp(-1, 1).cpu(), masks.cpu()


class Mask2ImageMethod(DSDMMethod):
    """Segmentation-guided diffusion baseline: the foreground one-hot mask concatenated to x_t; no reference,
    no CFG, fixed variance, ``L_simple`` (it has no ``cond`` section: :data:`MASK2IMAGE_COND` is fixed)."""

    name = "mask2image"
    config_sections = ()

    def cond_config(self, cfg: CondConfig | None) -> CondConfig:
        return MASK2IMAGE_COND


register_method("dsdm", DSDMMethod)
register_method("mask2image", Mask2ImageMethod)
