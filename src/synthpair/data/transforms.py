"""Paired (image, mask) augmentations for segmentation / diffusion training, built from MONAI dict transforms.

Keys: ``image`` float (C, H, W) and ``mask`` int (1, H, W). Every spatial operation draws its random
parameters once and applies them to both keys, so image and mask stay aligned; masks are resampled with
nearest neighbour (labels stay labels), images bilinearly with border padding.

Kinds (``paired_train_transforms(kind)``):

* ``none`` — identity.
* ``flip`` — random horizontal and vertical flips (p = 0.5 each).
* ``flip_rot`` — flips + random 90° rotations (the default; exact, no interpolation).
* ``affine`` — ``flip_rot`` + a random small affine (rotation ±15°, scale ±10 %, translation ±6 %, p = 0.5).
"""
from __future__ import annotations

import numpy as np

from ..errors import fail

KINDS = ("none", "flip", "flip_rot", "affine")


def paired_train_transforms(kind: str = "flip_rot", seed: int | None = 0, size: int | None = None,
                            square: bool = True):
    """A seeded ``monai.transforms.Compose`` over keys ``image`` (C, H, W) and ``mask`` (1, H, W).

    ``size`` is only used by ``affine`` to express the translation range in pixels (default 64).
    ``square=False`` (H != W) leaves out the quarter turns, which would swap H and W (the two flips still
    give the 180° turn).
    """
    from monai.transforms import Compose, RandAffined, RandFlipd, RandRotate90d

    if kind not in KINDS:
        raise fail(f"augmentation kind {kind!r}: choose one of {', '.join(KINDS)}")
    keys = ("image", "mask")
    ops = []
    if kind in ("flip", "flip_rot", "affine"):
        ops += [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1)]
    if kind in ("flip_rot", "affine") and square:
        ops.append(RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(0, 1)))
    if kind == "affine":
        t = 0.06 * (size or 64)
        ops.append(RandAffined(keys, prob=0.5, rotate_range=(np.pi / 12,), scale_range=(0.1, 0.1),
                               translate_range=(t, t), mode=("bilinear", "nearest"),
                               padding_mode=("border", "zeros")))
    comp = Compose(ops)
    if seed is not None:
        comp.set_random_state(seed=int(seed))
    return comp


def apply_paired(transform, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transform`` to each pair of a numpy batch.

    ``images`` float (N, C, H, W); ``masks`` int (N, H, W) or (N, 1, H, W). Returns float32 (N, C, H, W)
    and int64 masks of the input mask shape. Each pair draws its own random parameters.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    squeeze = masks.ndim == 3
    m4 = masks[:, None] if squeeze else masks
    if images.ndim != 4 or m4.ndim != 4 or len(images) != len(m4) or images.shape[2:] != m4.shape[2:]:
        raise ValueError(f"apply_paired: images {images.shape} and masks {masks.shape} do not pair up "
                         f"(expected (N, C, H, W) and (N, H, W))")
    out_i = np.empty(images.shape, np.float32)
    out_m = np.empty(m4.shape, np.int64)
    for k in range(len(images)):
        d = transform({"image": images[k].astype(np.float32), "mask": m4[k].astype(np.float32)})
        out_i[k] = np.asarray(d["image"], dtype=np.float32)
        out_m[k] = np.rint(np.asarray(d["mask"], dtype=np.float32)).astype(np.int64)
    return out_i, (out_m[:, 0] if squeeze else out_m)


def flip_pairs(images: "torch.Tensor", masks: "torch.Tensor | None", flags: "torch.Tensor", axis: int
               ) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """Flip the rows ``i`` with ``flags[i]`` along ``axis`` (-1 horizontal, -2 vertical), image and mask together.

    images (B, C, H, W); masks (B, H, W) or (B, 1, H, W), or None (image-only batches); flags bool (B,). Exact
    (``torch.where`` over flipped copies); the one paired flip of the trainer and the segmentation augmentations."""
    import torch

    f = flags.to(images.device).view(-1, *([1] * (images.dim() - 1)))
    images = torch.where(f, images.flip(axis), images)
    if masks is not None:
        fm = flags.to(masks.device).view(-1, *([1] * (masks.dim() - 1)))
        masks = torch.where(fm, masks.flip(axis), masks)
    return images, masks
