"""Augmentation prompts of EMIT-Diff (sec. 4.4): phrases ``c_aug`` such as "enhanced contrast" appended to an
item's prompt ``c_t``, each tied to an image transform, so the generator learns what the phrase means and can
later be asked for ``c_t + c_aug`` variants of a training pair.

The paper does not say how its model learned the phrases (Stable Diffusion already knows such words from
natural images); our text encoder is trained from scratch, so during training an item gets, with probability
``prompt.aug_prob``, a random phrase: its image is transformed by the phrase's transform and the phrase is
appended to its prompt (:class:`synthpair.methods.prompt.PromptMethod`).

Every transform maps images float (B, C, H, W) in [-1, 1] to the same shape and range (clipped). Intensity
maps work on ``u = (x + 1) / 2`` in [0, 1] with the dataset's fixed range (not per-image min/max like MONAI's
``AdjustContrast``, which would make "low contrast" undo itself); blur uses MONAI's ``GaussianFilter``. The
noise transforms draw their noise from the caller's ``torch.Generator`` (the trainer's, so a resumed run is
exact); the others are deterministic functions of the image.

====================  =============================================================================
phrase                transform (u = (x + 1) / 2, m = per-image mean of x)
====================  =============================================================================
enhanced contrast     x' = m + 1.5 (x - m)
low contrast          x' = m + 0.5 (x - m)
high brightness       x' = x + 0.3
low brightness        x' = x - 0.3
gamma high            u' = u ** 1.6 (darker mid-tones)
gamma low             u' = u ** 0.6 (brighter mid-tones)
high resolution       unsharp mask: x' = x + 1.0 (x - G_1(x)), G_s = Gaussian blur with sigma s px
low resolution        2x area down-sampling, then bilinear up-sampling
smooth                x' = G_1(x)
gaussian noise        x' = x + 0.1 n, n ~ N(0, 1)
speckle               u' = u (1 + 0.25 n), n ~ N(0, 1) (multiplicative, ultrasound-like)
====================  =============================================================================
(then clipped to [-1, 1]).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AUG_PHRASES: tuple[str, ...] = (
    "enhanced contrast", "low contrast", "high brightness", "low brightness", "gamma high", "gamma low",
    "high resolution", "low resolution", "smooth", "gaussian noise", "speckle",
)


def _blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    from monai.networks.layers import GaussianFilter

    return GaussianFilter(2, sigma).to(x.device)(x.float()).to(x.dtype)


def _contrast(x: torch.Tensor, k: float) -> torch.Tensor:
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return m + k * (x - m)


def _gamma(x: torch.Tensor, g: float) -> torch.Tensor:
    u = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    return u.pow(g) * 2.0 - 1.0


def _lowres(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.avg_pool2d(x, 2, ceil_mode=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _speckle(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    u = (x + 1.0) / 2.0
    return (u * (1.0 + 0.25 * n)) * 2.0 - 1.0


_TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "enhanced contrast": lambda x, n: _contrast(x, 1.5),
    "low contrast": lambda x, n: _contrast(x, 0.5),
    "high brightness": lambda x, n: x + 0.3,
    "low brightness": lambda x, n: x - 0.3,
    "gamma high": lambda x, n: _gamma(x, 1.6),
    "gamma low": lambda x, n: _gamma(x, 0.6),
    "high resolution": lambda x, n: x + 1.0 * (x - _blur(x)),
    "low resolution": lambda x, n: _lowres(x),
    "smooth": lambda x, n: _blur(x),
    "gaussian noise": lambda x, n: x + 0.1 * n,
    "speckle": _speckle,
}


def check_phrases(phrases: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The phrases to use (empty → all of :data:`AUG_PHRASES`); unknown phrases are a one-line error."""
    from ..errors import fail

    chosen = tuple(phrases) or AUG_PHRASES
    bad = [p for p in chosen if p not in _TRANSFORMS]
    if bad:
        raise fail(f"prompt.aug_phrases: unknown phrase {bad[0]!r}; choose from {', '.join(AUG_PHRASES)}")
    return chosen


def apply_phrase(images: torch.Tensor, phrase: str, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Transform images float (B, C, H, W) in [-1, 1] as ``phrase`` says (table in the module docstring).

    ``noise`` (B, C, H, W) standard normal for the noise phrases; when None it is drawn from ``generator``
    (CPU; a fresh ``Generator().manual_seed(0)`` when that is None too, so the call is deterministic)."""
    check_phrases([phrase])
    if noise is None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        noise = torch.randn(images.shape, generator=g)
    return _TRANSFORMS[phrase](images, noise.to(images.device, images.dtype)).clamp(-1.0, 1.0)


def augment_batch(images: torch.Tensor, choice: torch.Tensor, phrases: tuple[str, ...],
                  noise: torch.Tensor) -> torch.Tensor:
    """Row i transformed by ``phrases[choice[i]]``; ``choice[i] = -1`` leaves it unchanged.

    images float (B, C, H, W) in [-1, 1]; choice int64 (B,); noise (B, C, H, W) N(0, 1) for the noise phrases.
    """
    out = images.clone()
    for k in sorted({int(c) for c in choice.tolist() if int(c) >= 0}):
        rows = (choice == k).nonzero().flatten().to(images.device)
        out[rows] = apply_phrase(images[rows], phrases[k], noise[rows.cpu()])
    return out


__all__ = ["AUG_PHRASES", "apply_phrase", "augment_batch", "check_phrases"]
