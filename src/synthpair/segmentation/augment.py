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
  nnU-Net's own per-transform probabilities, nnUNetTrainer.get_training_transforms):

  ===================  ==========================================================  ==========  ===========
  name                 transform (range)                                            single p    deepstack p
  ===================  ==========================================================  ==========  ===========
  random_rotate        angle U(−π, π) about the centre (MONAI ``AffineTransform``)    0.5         0.2
  random_scale         zoom U(0.7, 1.4) about the centre (same resample as rotate)   0.5         0.2
  random_noise         ``RandGaussianNoised`` σ ~ U(0, 0.05) (= 0.1 in [−1, 1])       0.5         0.1
  (blur)               ``RandGaussianSmoothd`` σ ~ U(0.5, 1) px                       —           0.2
  random_brightness    ``RandScaleIntensityd`` × U(0.75, 1.25)                        0.5         0.15
  random_contrast      ``RandScaleIntensityFixedMeand`` × U(0.75, 1.25) about the     0.5         0.15
                       image mean, range preserved
  random_resolution    ``RandSimulateLowResolutiond`` zoom U(0.5, 1), nearest down    0.5         0.25
                       / bicubic up
  (inverted gamma)     ``RandAdjustContrastd`` γ ~ U(0.7, 1.5), invert, stats kept    —           0.1
  random_gamma         ``RandAdjustContrastd`` γ ~ U(0.7, 1.5), stats kept            0.5         0.3
  random_mirror        flip per axis                                                  0.5/axis    0.5/axis
  ===================  ==========================================================  ==========  ===========

  ``deepstack`` chains them in nnU-Net's order (rotation+zoom, noise, blur, brightness, contrast, low
  resolution, inverted gamma, gamma; mirroring is done with the spatial part, see
  :class:`ClassicAugmentation`). Contrast is nnU-Net's *ContrastAugmentation* (deviations from the mean
  scaled, range preserved), which MONAI calls ``RandScaleIntensityFixedMean``; MONAI's
  ``RandAdjustContrast`` is a gamma curve on min–max normalised intensities, i.e. nnU-Net's
  *GammaTransform*, so it implements ``random_gamma``. Intensity transforms act on the image only and work
  in ``[0, 1]`` (``(x + 1) / 2``, so multiplicative brightness means what it does for non-negative
  images); the result is clipped to ``[0, 1]`` and mapped back to ``[−1, 1]``. Spatial transforms are
  batched (one MONAI ``AffineTransform`` resample per batch — the resampler ``RandRotate`` / ``RandZoom``
  use — with per-sample parameters drawn from the generator; bilinear image, nearest mask, zero padding =
  black image and background mask), because one MONAI call per sample costs ~3 ms each at 64×64.

Cost per batch of 16 at 64×64 on one CPU thread (process CPU time; wall time was ~3× that on the shared,
overloaded 2-core machine; best of 3 × 20 batches): flip_rot 0.6 ms, random_mirror 0.5 ms, random_rotate /
random_scale 2.6 ms, the intensity baselines 1.1–2.2 ms, deepstack 10.7 ms; ``affine`` (per-sample MONAI
``RandAffined``) 22 ms. A U-Net training step at that size costs ~85 ms.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch

Augmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@contextmanager
def _no_meta():
    """MONAI transforms on plain tensors (no MetaTensor bookkeeping per call: ~2× faster at 64×64)."""
    from monai.data import get_track_meta, set_track_meta

    tracking = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(tracking)


def flip_rot(images: torch.Tensor, masks: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random element of the dihedral group per sample to image and mask alike.

    Args:
        images: float ``(B, C, H, W)``; masks: int ``(B, H, W)``.
        generator: CPU generator; draws 3 integers per sample (hflip, vflip, quarter turns), so the result
            is a deterministic function of the generator state.

    Returns augmented copies with the same shapes (quarter turns only by 0/180° when ``H != W``).
    """
    from ..data.transforms import flip_pairs

    b, _, h, w = images.shape
    draws = torch.randint(0, 4, (b, 3), generator=generator)
    out_i, out_m = flip_pairs(images, masks, draws[:, 0] % 2 == 1, -1)
    out_i, out_m = flip_pairs(out_i, out_m, draws[:, 1] % 2 == 1, -2)
    for i in range(b):
        k = int(draws[i, 2]) if h == w else 2 * (int(draws[i, 2]) % 2)
        if k:
            out_i[i], out_m[i] = torch.rot90(out_i[i], k, (-2, -1)), torch.rot90(out_m[i], k, (-2, -1))
    return out_i, out_m


def monai_affine(images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """flip_rot + a small random affine (MONAI ``RandAffined``; bilinear image, nearest mask) per sample.

    images float ``(B, C, H, W)``, masks int ``(B, H, W)``; one seed is drawn from ``generator`` per batch, so
    the result is a deterministic function of the generator state. Returns tensors on the input device.
    """
    from ..data.transforms import apply_paired, paired_train_transforms

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    transform = paired_train_transforms("affine", seed=seed, size=int(images.shape[-1]),
                                        square=images.shape[-1] == images.shape[-2])
    with _no_meta():
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


_SPATIAL = ("rotate", "scale", "mirror")
ROTATE_RANGE = math.pi
"""Rotation angle ~ U(−ROTATE_RANGE, ROTATE_RANGE) (nnU-Net 2D: ±180°)."""
ZOOM_RANGE = (0.7, 1.4)
"""Zoom factor ~ U(0.7, 1.4) (nnU-Net scaling; > 1 magnifies)."""


def _component(kind: str, p: float) -> list:
    """MONAI dict transform(s) on key ``image`` (C, H, W) in [0, 1] for an intensity ``kind``."""
    import monai.transforms as T

    img = "image"
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
    raise ValueError(f"unknown intensity augmentation {kind!r}")


def _spatial(x01: torch.Tensor, m: torch.Tensor, probs: dict[str, float],
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched rotation / zoom / mirroring of images ``(B, C, H, W)`` in [0, 1] and float masks ``(B, 1, H, W)``.

    Draws 7 uniforms per sample from ``generator`` (whatever fires). Rotation (angle ~ U(−π, π)) and zoom
    (~ U(0.7, 1.4)) each fire with their probability and are composed into one affine about the image
    centre, resampled once per batch with MONAI's batched ``AffineTransform`` layer (the resampler MONAI's
    ``RandRotate`` / ``RandZoom`` use per sample): bilinear image, nearest mask, zero padding (black image,
    background mask). Mirroring flips each axis with its probability. One batched call instead of one MONAI
    call per sample keeps this ~1 ms per batch of 16 at 64×64.
    """
    b = x01.shape[0]
    u = torch.rand(b, 7, generator=generator)
    rot = u[:, 0] < probs.get("rotate", 0.0)
    zoom = u[:, 2] < probs.get("scale", 0.0)
    hit = rot | zoom
    if bool(hit.any()):
        from monai.networks.layers import AffineTransform

        angle = torch.where(rot, (2 * u[:, 1] - 1) * ROTATE_RANGE, torch.zeros(b))
        factor = torch.where(zoom, ZOOM_RANGE[0] + u[:, 3] * (ZOOM_RANGE[1] - ZOOM_RANGE[0]), torch.ones(b))
        cos, sin = angle.cos() / factor, angle.sin() / factor
        theta = torch.zeros(b, 3, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta[:, 2, 2] = 1.0  # pull matrix in centred pixel coordinates: input = R(angle) · output / zoom
        idx = hit.nonzero()[:, 0]
        kw = dict(normalized=False, zero_centered=True, align_corners=False, padding_mode="zeros")
        x01, m = x01.clone(), m.clone()
        x01[idx] = AffineTransform(mode="bilinear", **kw)(x01[idx], theta[idx])
        m[idx] = AffineTransform(mode="nearest", **kw)(m[idx], theta[idx])
    p_mirror = probs.get("mirror", 0.0)
    if p_mirror:
        from ..data.transforms import flip_pairs

        for axis, col in ((-1, 4), (-2, 5)):
            x01, m = flip_pairs(x01, m, u[:, col] < p_mirror, axis)
    return x01, m


class ClassicAugmentation:
    """One classic baseline (``random_<kind>``) or the nnU-Net-style chain (``deepstack``), see module doc.

    Called as ``aug(images, masks, generator)``: images float ``(B, C, H, W)`` in [−1, 1], masks int
    ``(B, H, W)``. The spatial part (rotation, zoom, mirroring) is batched (:func:`_spatial`, drawn from
    ``generator``); then one seed per batch is drawn from ``generator`` for the MONAI ``Compose`` of the
    intensity transforms (``set_random_state``), which runs once per sample (each sample draws its own
    parameters; metadata tracking off). Spatial-then-intensity is nnU-Net's order except that mirroring, last
    in nnU-Net, comes first — the same distribution, since the intensity transforms do not depend on
    orientation. Returns images in [−1, 1] and integer masks, on the input device.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "deepstack":
            self.probs = dict(_DEEPSTACK_P)
        else:
            self.probs = {name.removeprefix("random_"): SINGLE_P}
        self.intensity = tuple(k for k in self.probs if k not in _SPATIAL)
        self._compose = None

    def transform(self):
        """The (cached) MONAI ``Compose`` of the intensity transforms (None when there are none)."""
        if self._compose is None and self.intensity:
            from monai.transforms import Compose

            self._compose = Compose([t for k in self.intensity for t in _component(k, self.probs[k])])
        return self._compose

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x01 = (images.detach().float().cpu() + 1.0) / 2.0
        m = masks.detach().cpu().float()[:, None]
        if any(k in _SPATIAL for k in self.probs):
            x01, m = _spatial(x01, m, self.probs, generator)
        comp = self.transform()
        if comp is not None:
            comp.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            out = torch.empty_like(x01)
            with _no_meta():
                for k in range(len(x01)):
                    out[k] = torch.as_tensor(comp({"image": x01[k]})["image"], dtype=torch.float32)
            x01 = out
        x = x01.clamp(0.0, 1.0).mul_(2.0).sub_(1.0)
        return x.to(images.device, images.dtype), m[:, 0].round().to(masks.device, masks.dtype)

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
