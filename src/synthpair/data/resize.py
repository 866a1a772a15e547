"""Resizing to the square prepared grid.

Images are resized with bilinear interpolation and Gaussian anti-aliasing (``skimage.transform.resize``)
straight to ``size × size``: the aspect ratio is **not** preserved (no padding), so pixels of the prepared
grid may be anisotropic; the per-item ``spacing`` records that. Masks use nearest neighbour, so labels
stay labels (a very thin structure can vanish when downsampling; ``foreground_fraction`` is measured after
resizing).
"""
from __future__ import annotations

import numpy as np
from skimage.transform import resize


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """float (H, W) or (H, W, C) → float32 (size, size[, C]) with anti-aliasing; values stay in the input range."""
    out_shape = (size, size) + tuple(image.shape[2:])
    if image.shape[:2] == (size, size):
        return image.astype(np.float32)
    return resize(image.astype(np.float32), out_shape, order=1, mode="edge", anti_aliasing=True,
                  preserve_range=True).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """int labels (H, W) → uint8 labels (size, size), nearest neighbour (no new label values)."""
    if mask.shape == (size, size):
        return mask.astype(np.uint8)
    return resize(mask.astype(np.uint8), (size, size), order=0, mode="edge", anti_aliasing=False,
                  preserve_range=True).astype(np.uint8)


def resized_spacing(spacing: tuple[float, float] | None, original: tuple[int, int],
                    size: int) -> list[float] | None:
    """Spacing (row, col) mm of the original grid → of the ``size × size`` grid (None stays None)."""
    if spacing is None:
        return None
    return [float(spacing[0]) * original[0] / size, float(spacing[1]) * original[1] / size]
