"""Sample grids: image+mask pairs as images with a coloured mask contour per class (previews, report figures)."""
from __future__ import annotations

import numpy as np

# One colour per foreground class (class k uses PALETTE[(k - 1) % len]); chosen to read on grey images.
PALETTE = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
                    [255, 128, 0], [160, 64, 255]], dtype=np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary of a boolean mask (H, W): pixels inside it with at least one 4-neighbour outside (image edge = outside)."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    interior = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~interior


def pair_grid(images: np.ndarray, masks: np.ndarray, ncols: int = 8, num_classes: int | None = None,
              pad: int = 2) -> np.ndarray:
    """Tile pairs into one RGB picture.

    images: float (N, C, H, W) in [-1, 1] (C = 1 grey, C = 3 RGB, otherwise the first channel is shown);
    masks: int (N, H, W) labels 0..K. Each tile is the image with the contour of each class k >= 1 drawn
    in ``PALETTE[k - 1]``. Returns uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, 3), background black.
    """
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks)
    if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"pair_grid: images (N,C,H,W) and masks (N,H,W) expected, got {images.shape} and {masks.shape}")
    n, c, h, w = images.shape
    k_max = int(num_classes - 1) if num_classes is not None else int(masks.max(initial=0))
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    out = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.uint8)
    rgb = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for i in range(n):
        tile = rgb[i].transpose(1, 2, 0) if c == 3 else np.repeat(rgb[i, :1].transpose(1, 2, 0), 3, axis=2)
        tile = tile.copy()
        for k in range(1, k_max + 1):
            tile[contour(masks[i] == k)] = PALETTE[(k - 1) % len(PALETTE)]
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = tile
    return out
