"""Training the label-efficient per-pixel classifier (``ddpm_pixel``) on cached diffusion features.

The frozen generator runs once per (labelled training item, dihedral transform, timestep)
(:class:`~synthpair.segmentation.ddfeatures.FeatureCache`; ``segment`` scores the test items with the model
itself, as a reloaded SEG does, in ``eval_batch`` batches); the heads then train for
``SegmentConfig.steps`` steps of ``batch_size`` images drawn from those cached (item, transform) rows — the
same iteration budget as every other segmenter — with DiceCE (summed over the ensemble), AdamW and a cosine
learning-rate decay. Augmentation: the dihedral group (exact on cached features: the features of the
transformed image are computed, not transformed) for ``augment=flip_rot``, none for ``augment=none``; other
augmentations change pixel values every step and cannot use a cache (use ``ddpm_unet*`` for them).
Inputs are standardised per channel with the training rows' statistics (stored in the head's state dict).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from ..env import rebalance_threads
from ..errors import fail
from .ddfeatures import CACHE_DTYPE, DiffusionFeatures, FeatureCache, dihedral, dihedral_transforms, stack_features
from .ddmodels import PixelEnsemble, PixelSegmenter

PIXEL_AUGMENT = ("flip_rot", "none")


def cell_features(cache: FeatureCache, keys: Sequence[Any], images: torch.Tensor,
                  cells: Sequence[tuple[str, int]]) -> dict[tuple[str, int], torch.Tensor]:
    """{(block, t): float16 (B, C_b, h_b, w_b)} for ``images`` identified by ``keys`` (computed once)."""
    by_t: dict[int, list[str]] = {}
    for b, t in cells:
        by_t.setdefault(int(t), []).append(b)
    out = {}
    for t, blocks in by_t.items():
        for b, v in cache.get(keys, images, t, blocks).items():
            out[(b, t)] = v.to(CACHE_DTYPE)
    return out


class _Standardise(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, d, 1, 1))
        self.register_buffer("std", torch.ones(1, d, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class StandardisedEnsemble(PixelEnsemble):
    """:class:`PixelEnsemble` whose input is standardised with stored per-channel statistics."""

    def __init__(self, in_channels: int, num_classes: int, kind: str, hidden: int, ensemble: int) -> None:
        super().__init__(in_channels, num_classes, kind, hidden, ensemble)
        self.norm = _Standardise(in_channels)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(feats))

    def predict_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return super().predict_logits(self.norm(feats))


def build_pixel_segmenter(extractor: DiffusionFeatures, cells: Sequence[tuple[str, int]], num_classes: int,
                          features: Any) -> PixelSegmenter:
    """The ``ddpm_pixel`` model (frozen extractor + standardised head ensemble) for ``cells``."""
    d = sum(extractor.channels[b] for b, _ in cells)
    head = StandardisedEnsemble(d, num_classes, features.head, features.hidden, features.ensemble)
    return PixelSegmenter(extractor, cells, head)


def train_pixel(model: PixelSegmenter, images: torch.Tensor, masks: torch.Tensor, ids: Sequence[str], *,
                steps: int, batch_size: int, lr: float, weight_decay: float, augment: str, seed: int,
                generator: torch.Generator, cache: FeatureCache, progress: bool = False, desc: str = "pixel"
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``model.head`` on the cached features of ``images`` (N, C, H, W) / ``masks`` (N, H, W) (labelled
    training items ``ids``) → (per-step losses, info {"transforms", "rows", "feature_seconds"})."""
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    if augment not in PIXEL_AUGMENT:
        raise fail(f"--augment {augment}: the ddpm_pixel classifier trains on cached features and supports "
                   f"{' / '.join(PIXEL_AUGMENT)} (dihedral transforms computed exactly); use --model ddpm_unet* "
                   f"for other augmentations")
    transforms = dihedral_transforms(augment, images.shape[-1] == images.shape[-2])
    t0 = time.perf_counter()
    rows_x: dict[tuple[str, int], list[torch.Tensor]] = {c: [] for c in model.cells}
    rows_y = []
    for k in transforms:
        xk = dihedral(images, k)
        feats = cell_features(cache, [(i, k) for i in ids], xk, model.cells)
        for c in model.cells:
            rows_x[c].append(feats[c])
        rows_y.append(dihedral(masks, k))
    feat_rows = {c: torch.cat(v) for c, v in rows_x.items()}
    labels = torch.cat(rows_y)
    feature_s = time.perf_counter() - t0
    n = labels.shape[0]
    size = images.shape[2:]
    # standardisation statistics over the training rows (a subsample of 64 rows)
    sub = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:64]
    x_sub = stack_features({c: v[sub].float() for c, v in feat_rows.items()}, model.cells, size)
    model.head.norm.mean.copy_(x_sub.mean(dim=(0, 2, 3), keepdim=True))
    model.head.norm.std.copy_(x_sub.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))
    del x_sub
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.head.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        rebalance_threads()  # only under --threads auto (the default), every REBALANCE_SECONDS
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        x = stack_features({c: v[idx].float() for c, v in feat_rows.items()}, model.cells, size)
        y = labels[idx].unsqueeze(1)
        logits = model.head(x)                                  # (E, B, K, H, W)
        loss = torch.stack([loss_fn(lg, y) for lg in logits]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_now = sched.get_last_lr()[0]
        sched.step()
        losses.append({"step": step + 1, "loss": float(loss.detach()), "lr": float(lr_now)})
    bar.close()
    model.head.eval()
    return losses, {"transforms": transforms, "rows": int(n), "feature_seconds": round(feature_s, 3)}


@torch.no_grad()
def predict_pixel(model: PixelSegmenter, images: torch.Tensor, ids: Sequence[str], cache: FeatureCache,
                  batch: int = 16) -> torch.Tensor:
    """Labels int64 (N, H, W) for ``images`` (N, C, H, W) through cached features (identity transform); equal to
    ``model(images).argmax(1)`` up to the last bits of batched fp32 kernels (the cache's batches may differ)."""
    model.head.eval()
    out = []
    for s in range(0, len(ids), batch):
        sl = slice(s, s + batch)
        feats = cell_features(cache, [(i, 0) for i in ids[sl]], images[sl], model.cells)
        x = stack_features({c: v.float() for c, v in feats.items()}, model.cells, images.shape[2:])
        out.append(model.head.predict_logits(x).argmax(1))
    return torch.cat(out) if out else torch.empty((0, *images.shape[2:]), dtype=torch.long)


__all__ = ["build_pixel_segmenter", "train_pixel", "predict_pixel", "StandardisedEnsemble", "PIXEL_AUGMENT",
           "cell_features"]
