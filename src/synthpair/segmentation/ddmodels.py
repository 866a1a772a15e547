"""Segmenters built on a diffusion generator (DiffusionDCI Table 5, Fig. 4; Baranchuk et al. 2022).

Every model maps images (B, C, H, W) in [-1, 1] to logits (B, K, H, W), like the MONAI segmenters of
:mod:`.models`, so the training loop, mixing, augmentation and evaluation of :mod:`.train` apply unchanged.

* ``ddpm_unet`` — the **denoising U-Net trained end to end as a segmenter** ("Denoising U-Net" of Table 5):
  a MONAI ``DiffusionModelUNet`` with the generator's configuration, initialised from the generator's
  weights (:func:`synthpair.networks.transfer.transfer_weights`: every shared tensor; the image input columns
  of a joint / mask2image first convolution; SPADE decoder norms → plain norms) and a new output convolution
  with K channels. It reads the clean image with the timestep embedding of ``features.e2e_timestep``. A DSDM
  generator with reference images has cross-attention transformer blocks: the segmenter keeps them (so their
  weights transfer) and feeds them the generator's fixed null-reference context (buffer ``null_context``).
* ``ddpm_unet_skip`` — + **skip connections**: the frozen generator's features of the chosen blocks (at the
  chosen fusion timesteps, concatenated over timesteps) go through a zero-initialised 1×1 convolution and
  are added to the output of the same block of the segmentation U-Net (so at initialisation the model is
  exactly ``ddpm_unet``).
* ``ddpm_unet_caa`` — + **cross-attention alignment** (CAA, Fig. 4, eq. 11): at each chosen block the
  segmentation features F_s (queries, every position) attend to the frozen diffusion features F_d (keys and
  values, average-pooled to at most ``features.caa_tokens`` positions to bound CPU cost):
  ``F_s + W_o softmax(W_q F_s (W_k F_d)^T / sqrt(d)) W_v F_d`` (scaled-dot-product attention, one head of
  width d = C_b, W_o zero-initialised: the model starts as ``ddpm_unet``).
* ``ddpm_pixel`` — the **label-efficient per-pixel classifier** (Baranchuk et al.; DiffusionDCI's
  "Label-efficient DDPM" row): an ensemble of ``features.ensemble`` heads of 1×1 convolutions (MLP with
  ``hidden`` units, BatchNorm and ReLU, or linear) on the upsampled, concatenated frozen features of the
  chosen blocks × timesteps; probabilities averaged. Trained on cached features (:mod:`.pixel`).

The frozen generator (:class:`~synthpair.segmentation.ddfeatures.DiffusionFeatures`) is held outside the
module's parameters and state dict: a saved segmenter is its own weights plus the generator's path and sha256
(recorded in SEG/config.json and results.json).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import fail
from .ddfeatures import DiffusionFeatures, FeatureConfig, cache_precision, stack_features

DDPM_MODELS = ("ddpm_unet", "ddpm_unet_skip", "ddpm_unet_caa", "ddpm_pixel")


def is_ddpm(model: str) -> bool:
    return model in DDPM_MODELS


class PixelHead(nn.Module):
    """One per-pixel classifier: (B, D, H, W) → (B, K, H, W) logits with 1×1 convolutions."""

    def __init__(self, in_channels: int, num_classes: int, kind: str = "mlp", hidden: int = 64) -> None:
        super().__init__()
        if kind == "linear":
            self.net = nn.Conv2d(in_channels, num_classes, 1)
        else:
            self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(), nn.BatchNorm2d(hidden),
                                     nn.Conv2d(hidden, hidden // 2, 1), nn.ReLU(), nn.BatchNorm2d(hidden // 2),
                                     nn.Conv2d(hidden // 2, num_classes, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)


class PixelEnsemble(nn.Module):
    """``ensemble`` :class:`PixelHead` s. ``forward`` → per-head logits (E, B, K, H, W) in training;
    ``predict_logits`` → log of the mean softmax over heads (B, K, H, W)."""

    def __init__(self, in_channels: int, num_classes: int, kind: str, hidden: int, ensemble: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList([PixelHead(in_channels, num_classes, kind, hidden) for _ in range(ensemble)])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(feats) for h in self.heads])

    def predict_logits(self, feats: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([h(feats).float().softmax(1) for h in self.heads]).mean(0)
        return probs.clamp_min(1e-8).log()


class PixelSegmenter(nn.Module):
    """Frozen extractor + :class:`PixelEnsemble` as an image → logits model (inference, transfer tests);
    training uses cached features instead (:mod:`.pixel`). The features are rounded to the cache's storage
    precision before upsampling, so this is the function the heads were trained on; ``segment`` scores the
    test split through this forward, as a SEG reloaded by ``load_segmenter`` does (the re-test is exact)."""

    def __init__(self, extractor: DiffusionFeatures, cells: Sequence[tuple[str, int]], head: PixelEnsemble) -> None:
        super().__init__()
        object.__setattr__(self, "extractor", extractor)  # not a submodule: not in the state dict
        self.cells = [(str(b), int(t)) for b, t in cells]
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        by_t: dict[int, list[str]] = {}
        for b, t in self.cells:
            by_t.setdefault(t, []).append(b)
        feats = {}
        for t, blocks in by_t.items():
            for b, v in self.extractor.extract(images, t, blocks).items():
                feats[(b, t)] = cache_precision(v)
        return stack_features(feats, self.cells, images.shape[2:]).to(images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.predict_logits(self.features(images))


class _CrossAttention(nn.Module):
    """CAA at one block: queries from the segmentation features, keys/values from the diffusion features."""

    def __init__(self, channels: int, context_channels: int, max_tokens: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(context_channels, channels, 1)
        self.v = nn.Conv2d(context_channels, channels, 1)
        self.o = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)
        self.max_tokens = max_tokens

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        if ctx.shape[2:] != h.shape[2:]:
            ctx = F.interpolate(ctx, size=(hh, ww), mode="bilinear", align_corners=False)
        while ctx.shape[2] * ctx.shape[3] > self.max_tokens:
            ctx = F.avg_pool2d(ctx, 2)
        q = self.q(h).flatten(2).transpose(1, 2)           # (B, hw, C)
        k = self.k(ctx).flatten(2).transpose(1, 2)         # (B, n, C)
        v = self.v(ctx).flatten(2).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)       # softmax(QK^T / sqrt(C)) V
        return h + self.o(a.transpose(1, 2).reshape(b, c, hh, ww))


def _null_context(extractor: DiffusionFeatures) -> torch.Tensor | None:
    """(1, tokens, dim) float32: the cross-attention context a DSDM generator with reference images gets under
    the null condition (Psi_FC of its null reference embedding, what the extractor feeds it); None for
    generators without cross-attention."""
    m = extractor.model
    if not getattr(m.unet, "with_conditioning", False) or not getattr(m, "use_reference", False):
        return None
    with torch.no_grad():
        emb = m.null_reference.detach().float().view(1, -1)
        return m.to_tokens(emb).float().view(1, m.cond_cfg.ref_tokens, m.cond_cfg.ref_dim).cpu().clone()


class DiffusionUNetSegmenter(nn.Module):
    """``ddpm_unet`` / ``_skip`` / ``_caa`` (module doc). ``fusion``: None, "skip" or "caa"; ``blocks`` and
    ``timesteps``: where the frozen features are injected and at which timesteps they are taken."""

    def __init__(self, extractor: DiffusionFeatures, num_classes: int, *, e2e_timestep: int = 0,
                 fusion: str | None = None, blocks: Sequence[str] = (), timesteps: Sequence[int] = (),
                 caa_tokens: int = 256) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        from ..networks.transfer import transfer_weights

        net = extractor.cfg["net"]
        ctx = _null_context(extractor)  # cross-attention generators: same attention blocks, fed the null context
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=extractor.channels_in, out_channels=num_classes,
            num_res_blocks=net["num_res_blocks"], channels=tuple(net["channels"]),
            attention_levels=tuple(net["attention_levels"]), norm_num_groups=net["norm_num_groups"],
            num_head_channels=net["num_head_channels"], resblock_updown=net.get("resblock_updown", False),
            use_flash_attention=net.get("use_flash_attention", True),
            **({} if ctx is None else {"with_conditioning": True, "cross_attention_dim": int(ctx.shape[-1])}))
        self.register_buffer("null_context", ctx)  # fixed (not trained); None: plain self-attention U-Net
        nn.init.kaiming_uniform_(self.unet.out[2].conv.weight, a=5 ** 0.5)  # MONAI zero-inits it (for denoising)
        self.transfer = transfer_weights(self.unet, extractor.model.state_dict(), skip=("out.2.",))
        object.__setattr__(self, "extractor", extractor)  # frozen, not in the state dict
        self.e2e_timestep = int(e2e_timestep)
        self.fusion = fusion
        self.blocks = [str(b) for b in blocks] if fusion else []
        self.timesteps = [int(t) for t in timesteps] if fusion else []
        if fusion and (not self.blocks or not self.timesteps):
            raise fail(f"ddpm_unet_{fusion}: needs blocks and timesteps for the frozen features")
        extractor.check(self.blocks, self.timesteps)
        mods = {f"down{i}": b for i, b in enumerate(self.unet.down_blocks)}
        mods["mid"] = self.unet.middle_block
        mods.update({f"up{i}": b for i, b in enumerate(self.unet.up_blocks)})
        self.fuse = nn.ModuleDict()
        for b in self.blocks:
            c = extractor.channels[b]
            ctx = c * len(self.timesteps)
            if fusion == "skip":
                proj = nn.Conv2d(ctx, c, 1)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                self.fuse[b] = proj
            elif fusion == "caa":
                self.fuse[b] = _CrossAttention(c, ctx, caa_tokens)
            else:
                raise fail(f"fusion={fusion!r}: choose skip or caa")
            mods[b].register_forward_hook(self._hook(b))
        self._ctx: dict[str, torch.Tensor] | None = None

    def _hook(self, block: str):
        def fn(module: nn.Module, args: Any, output: Any) -> Any:
            if self._ctx is None:
                return output
            h, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
            ctx = self._ctx[block].to(h.device, h.dtype)
            new = h + self.fuse[block](ctx) if self.fusion == "skip" else self.fuse[block](h, ctx)
            return (new, *rest) if rest is not None else new
        return fn

    @torch.no_grad()
    def frozen_context(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen diffusion features per block, concatenated over the fusion timesteps → {block: (B, C·T, h, w)}."""
        per_t = [self.extractor.extract(images, t, self.blocks) for t in self.timesteps]
        return {b: torch.cat([f[b] for f in per_t], dim=1) for b in self.blocks}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        t = torch.full((images.shape[0],), self.e2e_timestep, dtype=torch.long, device=images.device)
        self._ctx = self.frozen_context(images) if self.fusion else None
        kw = {} if self.null_context is None else {
            "context": self.null_context.to(images.device).expand(images.shape[0], -1, -1)}
        try:
            return self.unet(images, t, **kw)
        finally:
            self._ctx = None


def build_ddpm_segmenter(name: str, extractor: DiffusionFeatures, num_classes: int, cfg: FeatureConfig,
                         blocks: Sequence[str], timesteps: Sequence[int]) -> nn.Module:
    """The ``ddpm_*`` model ``name`` for ``extractor`` (``ddpm_pixel`` gets its head from :mod:`.pixel`)."""
    if name == "ddpm_unet":
        return DiffusionUNetSegmenter(extractor, num_classes, e2e_timestep=cfg.e2e_timestep)
    if name in ("ddpm_unet_skip", "ddpm_unet_caa"):
        fusion_t = list(timesteps)[: cfg.fusion_timesteps]
        return DiffusionUNetSegmenter(extractor, num_classes, e2e_timestep=cfg.e2e_timestep,
                                      fusion=name.rsplit("_", 1)[1], blocks=blocks, timesteps=fusion_t,
                                      caa_tokens=cfg.caa_tokens)
    if name == "ddpm_pixel":
        d = sum(extractor.channels[b] for b in blocks) * len(timesteps)
        head = PixelEnsemble(d, num_classes, cfg.head, cfg.hidden, cfg.ensemble)
        return PixelSegmenter(extractor, [(b, t) for t in timesteps for b in blocks], head)
    raise fail(f"model {name!r}: not a diffusion-feature segmenter ({', '.join(DDPM_MODELS)})")


def rebuild_ddpm_segmenter(seg_dir: Any, fold: int, results: dict[str, Any], config: dict[str, Any],
                           info: dict[str, Any], device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
    """The ``ddpm_*`` model of ``fold`` of a SEG folder, rebuilt without its trained weights →
    ``(model, module whose state dict fold_<k>/model.safetensors holds)`` (``model.head`` for ``ddpm_pixel``,
    the model itself for the U-Net variants; the frozen generator is never in that file).

    The generator, blocks, timesteps, noise seed/draws, ``e2e_timestep`` and ``fusion_timesteps`` come from
    the fold's ``results.json`` ``features`` record; the head/fusion sizes from ``config.json`` ``features``.
    One-line errors when the record is missing or the generator's weights are gone or changed (sha256)."""
    import dataclasses
    from pathlib import Path

    from ..config import from_dict
    from ..networks.export import sha256_file
    from .pixel import build_pixel_segmenter

    seg_dir = Path(seg_dir)
    name = str(config.get("model"))
    where = seg_dir / "results.json"
    rec = next((f.get("features") for f in results.get("folds", []) if int(f.get("fold", -1)) == int(fold)), None)
    if not isinstance(rec, dict) or not rec.get("generator") or not rec.get("weights_sha256"):
        raise fail(f"{where}: fold {fold} of this {name} segmenter records no diffusion-feature generator "
                   f"('features' with generator and weights_sha256); rerun 'synthpair segment' for it")
    fc = from_dict(FeatureConfig, dict(config.get("features") or {}), where=f"{seg_dir / 'config.json'}:features")
    export = Path(str(rec["generator"]))
    weights = export / "model.safetensors"
    if not weights.is_file():
        raise fail(f"{weights}: the generator whose frozen features fold {fold} of {seg_dir} was trained on is gone; "
                   f"restore that run (the segmenter cannot be rebuilt without it)")
    if sha256_file(weights) != rec["weights_sha256"]:
        raise fail(f"{weights}: the generator's weights changed since {seg_dir} was trained (sha256 differs from "
                   f"results.json); restore the original run or retrain the segmenter on this generator")
    extractor = DiffusionFeatures(export, seed=int(rec.get("noise_seed", fc.noise_seed)),
                                  draws=int(rec.get("draws", fc.draws)), device=device)
    extractor.check_data(int(info["channels"]), info["size"], str(seg_dir))
    blocks = [str(b) for b in rec.get("blocks", [])]
    timesteps = [int(t) for t in rec.get("timesteps", [])]
    extractor.check(blocks, timesteps)
    k = int(info["num_classes"])
    with torch.random.fork_rng(devices=[]):  # initialisation is overwritten by the loaded weights
        if name == "ddpm_pixel":
            model = build_pixel_segmenter(extractor, [(b, t) for t in timesteps for b in blocks], k, fc)
            return model, model.head
        fc = dataclasses.replace(fc, e2e_timestep=int(rec.get("e2e_timestep", fc.e2e_timestep)))
        if name != "ddpm_unet":
            fusion_t = [int(t) for t in rec.get("fusion_timesteps", timesteps[: fc.fusion_timesteps])]
            fc = dataclasses.replace(fc, fusion_timesteps=max(1, len(fusion_t)))
            timesteps = fusion_t
        model = build_ddpm_segmenter(name, extractor, k, fc, blocks, timesteps)
    return model, model


__all__ = ["DDPM_MODELS", "is_ddpm", "PixelHead", "PixelEnsemble", "PixelSegmenter", "DiffusionUNetSegmenter",
           "build_ddpm_segmenter", "rebuild_ddpm_segmenter"]
