"""Paired augmentation of segmentation batches: the image and its mask move together.

Every augmentation is ``fn(images float (B, C, H, W) in [-1, 1], masks int64 (B, H, W), generator)`` →
augmented copies of the same shapes, dtypes and device; the result is a deterministic function of the
generator state (one seed per batch is drawn from it). Registered in :data:`AUGMENTATIONS`:

* ``flip_rot`` — the dihedral group on tensors (exact: no interpolation, no resampling); the default.
* ``affine`` — MONAI's paired dict transforms (:func:`synthpair.data.transforms.paired_train_transforms`:
  flips, 90° turns and a small random affine, masks resampled nearest), seeded from the batch generator.
* ``none`` — no augmentation.
* Classic baselines of EMIT-Diff Table 2 (MONAI transforms with nnU-Net's default 2D parameter ranges;
  each single ``random_*`` baseline fires with probability ``p = 0.5`` per sample, ``deepstack`` uses
  nnU-Net's own per-transform probabilities):

  ===================  =========================================================  ============  =========
  name                 MONAI transform (range)                                     single p      deepstack p
  ===================  =========================================================  ============  =========
  random_rotate        ``RandRotated`` angle U(−π, π), bilinear / nearest, 0-pad    0.5           0.2
  random_scale         ``RandZoomd`` zoom U(0.7, 1.4), bilinear / nearest, 0-pad    0.5           0.2
  random_noise         ``RandGaussianNoised`` σ ~ U(0, 0.05) (= 0.1 in [−1, 1])     0.5           0.1
  (blur)               ``RandGaussianSmoothd`` σ ~ U(0.5, 1) px                     —             0.2
  random_brightness    ``RandScaleIntensityd`` × U(0.75, 1.25)                      0.5           0.15
  random_contrast      ``RandScaleIntensityFixedMeand`` × U(0.75, 1.25) about the   0.5           0.15
                       image mean, range preserved
  random_resolution    ``RandSimulateLowResolutiond`` zoom U(0.5, 1), nearest down  0.5           0.25
                       / bicubic up
  (inverted gamma)     ``RandAdjustContrastd`` γ ~ U(0.7, 1.5), invert, stats kept  —             0.1
  random_gamma         ``RandAdjustContrastd`` γ ~ U(0.7, 1.5), stats kept          0.5           0.3
  random_mirror        ``RandFlipd`` per axis                                       0.5 per axis  0.5 per axis
  ===================  =========================================================  ============  =========

  ``deepstack`` chains them in nnU-Net's order (rotate, scale, noise, blur, brightness, contrast, low
  resolution, inverted gamma, gamma, mirror). Contrast is nnU-Net's *ContrastAugmentation* (deviations
  from the mean scaled, range preserved), which MONAI calls ``RandScaleIntensityFixedMean``; MONAI's
  ``RandAdjustContrast`` is a gamma curve on min–max normalised intensities, i.e. nnU-Net's
  *GammaTransform*, so it implements ``random_gamma``. Intensity transforms act on the image only and work
  in ``[0, 1]`` (``(x + 1) / 2``, so multiplicative brightness and 0-padding mean what they do for
  non-negative images); the result is clipped to ``[0, 1]`` and mapped back to ``[−1, 1]``. Spatial
  transforms resample the mask with nearest neighbour, so labels stay labels.

Costs per batch of 16 at 64×64 on one CPU thread are reported in the module's tests/README numbers
(one MONAI call per sample and transform; a transform that does not fire costs one random draw).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Augmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


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


SINGLE_P = 0.5
"""Probability per sample of each single classic baseline (``random_*``)."""

_DEEPSTACK_P = {"rotate": 0.2, "scale": 0.2, "noise": 0.1, "blur": 0.2, "brightness": 0.15, "contrast": 0.15,
                "resolution": 0.25, "gamma_inverted": 0.1, "gamma": 0.3, "mirror": 0.5}
"""nnU-Net's default 2D data-augmentation probabilities (nnUNetTrainer.get_training_transforms)."""

_CLASSIC = ("random_contrast", "random_gamma", "random_brightness", "random_noise", "random_resolution",
            "random_mirror", "random_rotate", "random_scale")


def _component(kind: str, p: float) -> list:
    """MONAI dict transform(s) over keys ``image`` (C, H, W) in [0, 1] and ``mask`` (1, H, W) float labels."""
    import monai.transforms as T

    both, img = ("image", "mask"), "image"
    if kind == "rotate":
        return [T.RandRotated(both, range_x=math.pi, prob=p, mode=("bilinear", "nearest"), padding_mode="zeros")]
    if kind == "scale":
        return [T.RandZoomd(both, prob=p, min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "nearest"),
                            padding_mode="constant")]
    if kind == "noise":
        return [T.RandGaussianNoised(img, prob=p, mean=0.0, std=0.05)]
    if kind == "blur":
        return [T.RandGaussianSmoothd(img, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=p)]
    if kind == "brightness":
        return [T.RandScaleIntensityd(img, factors=0.25, prob=p)]
    if kind == "contrast":
        return [T.RandScaleIntensityFixedMeand(img, factors=0.25, preserve_range=True, prob=p)]
    if kind == "resolution":
        return [T.RandSimulateLowResolutiond(img, prob=p, zoom_range=(0.5, 1.0), downsample_mode="nearest",
                                             upsample_mode="bicubic")]
    if kind == "gamma_inverted":
        return [T.RandAdjustContrastd(img, prob=p, gamma=(0.7, 1.5), invert_image=True, retain_stats=True)]
    if kind == "gamma":
        return [T.RandAdjustContrastd(img, prob=p, gamma=(0.7, 1.5), retain_stats=True)]
    if kind == "mirror":
        return [T.RandFlipd(both, prob=p, spatial_axis=0), T.RandFlipd(both, prob=p, spatial_axis=1)]
    raise ValueError(f"unknown augmentation component {kind!r}")


class ClassicAugmentation:
    """One classic baseline (``random_<kind>``) or the nnU-Net-style chain (``deepstack``), see module doc.

    Called as ``aug(images, masks, generator)``: images float ``(B, C, H, W)`` in [−1, 1], masks int
    ``(B, H, W)``. One seed per batch is drawn from ``generator`` and given to the MONAI ``Compose``
    (``set_random_state``), then each sample draws its own parameters (MONAI dict transforms, one call per
    sample, with metadata tracking off). Returns images in [−1, 1] and integer masks, on the input device.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "deepstack":
            self.kinds = tuple(_DEEPSTACK_P)
            self.probs = dict(_DEEPSTACK_P)
        else:
            kind = name.removeprefix("random_")
            self.kinds, self.probs = (kind,), {kind: SINGLE_P}
        self._compose = None

    def transform(self):
        """The (cached) MONAI ``Compose`` of this augmentation."""
        if self._compose is None:
            from monai.transforms import Compose

            self._compose = Compose([t for k in self.kinds for t in _component(k, self.probs[k])])
        return self._compose

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.data import get_track_meta, set_track_meta

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        comp = self.transform()
        comp.set_random_state(seed=seed)
        x01 = (images.detach().float().cpu() + 1.0) / 2.0
        m = masks.detach().cpu().float()[:, None]
        out_i, out_m = torch.empty_like(x01), torch.empty_like(m)
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors through MONAI: no MetaTensor bookkeeping per call
        try:
            for k in range(len(x01)):
                d = comp({"image": x01[k], "mask": m[k]})
                out_i[k] = torch.as_tensor(d["image"], dtype=torch.float32)
                out_m[k] = torch.as_tensor(d["mask"], dtype=torch.float32)
        finally:
            set_track_meta(tracking)
        out_i = out_i.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
        return (out_i.to(images.device, images.dtype),
                out_m[:, 0].round().to(masks.device, masks.dtype))

    def __repr__(self) -> str:
        return f"ClassicAugmentation({self.name!r})"


AUGMENTATIONS: dict[str, Augmentation | None] = {
    "flip_rot": flip_rot, "affine": monai_affine, "none": None,
    **{name: ClassicAugmentation(name) for name in (*_CLASSIC, "deepstack")},
}
"""Augmentation by name (``SegmentConfig.augment`` / ``synthpair segment --augment``); ``None`` = no-op."""


def augment_batch(fn: Augmentation | None, batch, generator: torch.Generator):
    """Augment a :class:`synthpair.segmentation.mixing.Batch`.

    A plain batch: ``fn(images, masks)``. A loss-mixing batch (``syn_images`` set): the real and the
    synthetic images get the *same* draw (the generator state is replayed), so their masks stay identical;
    the patch mask ``real_weight`` is left as drawn — it is an i.i.d. random field of cells, so applying the
    spatial transform to it would not change its distribution. Returns a new Batch.
    """
    import dataclasses

    if fn is None:
        return batch
    if batch.syn_images is None:
        x, y = fn(batch.images, batch.masks, generator)
        return dataclasses.replace(batch, images=x, masks=y)
    state = generator.get_state()
    x, y = fn(batch.images, batch.masks, generator)
    after = generator.get_state()
    generator.set_state(state)
    xs, ys = fn(batch.syn_images, batch.masks, generator)
    if not torch.equal(generator.get_state(), after) or not torch.equal(y, ys):
        raise RuntimeError(f"augmentation {fn!r} is not a function of the generator state alone")
    return dataclasses.replace(batch, images=x, masks=y, syn_images=xs)
