"""Paired augmentation of segmentation batches: the image and its mask move together.

* ``flip_rot`` — the dihedral group on tensors (exact: no interpolation, no resampling); the default.
* ``affine`` — MONAI's paired dict transforms (:func:`synthpair.data.transforms.paired_train_transforms`:
  flips, 90° turns and a small random affine, masks resampled nearest), seeded from the batch generator.
"""
from __future__ import annotations

import torch


def flip_rot(images: torch.Tensor, masks: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random element of the dihedral group per sample to image and mask alike.

    Args:
        images: float ``(B, C, H, W)``; masks: int ``(B, H, W)``.
        generator: CPU generator; draws 3 integers per sample (hflip, vflip, quarter turns), so the result
            is a deterministic function of the generator state.

    Returns augmented copies with the same shapes (quarter turns only by 0/180° when ``H != W``).
    """
    b, _, h, w = images.shape
    draws = torch.randint(0, 4, (b, 3), generator=generator)
    out_i, out_m = images.clone(), masks.clone()
    for i in range(b):
        img, msk = images[i], masks[i]
        if draws[i, 0] % 2:
            img, msk = img.flip(-1), msk.flip(-1)
        if draws[i, 1] % 2:
            img, msk = img.flip(-2), msk.flip(-2)
        k = int(draws[i, 2]) if h == w else 2 * (int(draws[i, 2]) % 2)
        if k:
            img, msk = torch.rot90(img, k, (-2, -1)), torch.rot90(msk, k, (-2, -1))
        out_i[i], out_m[i] = img, msk
    return out_i, out_m


def monai_affine(images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """flip_rot + a small random affine (MONAI ``RandAffined``; bilinear image, nearest mask) per sample.

    images float ``(B, C, H, W)``, masks int ``(B, H, W)``; one seed is drawn from ``generator`` per batch, so
    the result is a deterministic function of the generator state. Returns tensors on the input device.
    """
    from ..data.transforms import apply_paired, paired_train_transforms

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    transform = paired_train_transforms("affine", seed=seed, size=int(images.shape[-1]))
    out_i, out_m = apply_paired(transform, images.detach().cpu().numpy(), masks.detach().cpu().numpy())
    return (torch.from_numpy(out_i).to(images.device, images.dtype),
            torch.from_numpy(out_m).to(masks.device, masks.dtype))


AUGMENTATIONS = {"flip_rot": flip_rot, "affine": monai_affine, "none": None}
