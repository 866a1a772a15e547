"""Edge maps: the spatial condition ``c_e`` of the EMIT-Diff ControlNet branch (paper sec. 4.2-4.3).

EMIT-Diff conditions its generator on "the boundary of the target mask combined with the inherent edge data"
of the image (sec. 4.3, Fig. 3). Here an edge map is

    E = max( boundary(mask), canny(mean_c(image); sigma) )           float32 (1, H, W), values in {0, 1} ⊂ [0, 1]

- ``boundary(mask)``: :func:`skimage.segmentation.find_boundaries` (``mode="inner"``: the foreground pixels
  that touch another label, so the outline lies on the object and a mask touching the image border keeps its
  outline there too) — every label change, so multi-class masks give every class outline;
- ``canny``: :func:`skimage.feature.canny` on the channel mean of the image rescaled to [0, 1] (RGB images
  are averaged to one intensity channel for the *edge detector only*; the generated images stay RGB), with
  Gaussian ``sigma`` (pixels) and skimage's default hysteresis thresholds unless ``low``/``high`` are set.

Deterministic (no randomness anywhere). The paper uses HED (a deep edge detector) for its pre-training
edges; HED needs pretrained weights that synthpair does not ship or download, so it is not offered: Canny is
the documented substitute (``EdgeConfig.detector`` only accepts ``"canny"``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import fail


@dataclass(frozen=True)
class EdgeConfig:
    """How edge maps are made (recorded in the ControlNet export and in every manifest line)."""

    detector: str = "canny"       # the only image-edge detector offered (HED needs weights; see module doc)
    sigma: float = 1.5            # Gaussian sigma of Canny, pixels
    low: float | None = None      # Canny hysteresis thresholds (None: skimage defaults)
    high: float | None = None
    image_edges: bool = True      # include Canny edges of the image
    mask_boundary: bool = True    # include the mask outline

    def __post_init__(self) -> None:
        if self.detector != "canny":
            raise fail(f"control.edges.detector={self.detector!r}: only 'canny' is available (HED needs pretrained "
                       f"weights that synthpair does not ship); use detector=canny")
        if self.sigma < 0:
            raise fail(f"control.edges.sigma={self.sigma}: must be >= 0 (pixels), e.g. 1.5")
        if not (self.image_edges or self.mask_boundary):
            raise fail("control.edges: image_edges and mask_boundary are both off, the edge map would be empty; "
                       "turn one on")

    def to_record(self) -> dict[str, Any]:
        return {"detector": self.detector, "sigma": self.sigma, "low": self.low, "high": self.high,
                "image_edges": self.image_edges, "mask_boundary": self.mask_boundary}


def edge_map(image: np.ndarray, mask: np.ndarray, cfg: EdgeConfig = EdgeConfig()) -> np.ndarray:
    """Edge map of one pair (module docstring). image: float (C, H, W) in [-1, 1]; mask: int (H, W) labels.

    Returns float32 (1, H, W) with values in {0, 1}. Image and mask of different sizes → one-line error.
    """
    from skimage.feature import canny
    from skimage.segmentation import find_boundaries

    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask)
    if image.ndim != 3 or mask.ndim != 2 or image.shape[1:] != mask.shape:
        raise fail(f"edge map: image {tuple(image.shape)} (C, H, W) and mask {tuple(mask.shape)} (H, W) must have the "
                   f"same H and W; pass a pair from the same dataset")
    out = np.zeros(mask.shape, dtype=bool)
    if cfg.mask_boundary:
        out |= find_boundaries(mask.astype(np.int64), mode="inner")
    if cfg.image_edges:
        gray = np.clip((image.mean(axis=0) + 1.0) / 2.0, 0.0, 1.0)
        out |= canny(gray, sigma=cfg.sigma, low_threshold=cfg.low, high_threshold=cfg.high)
    return out.astype(np.float32)[None]


def edge_maps(images: np.ndarray, masks: np.ndarray, cfg: EdgeConfig = EdgeConfig()) -> np.ndarray:
    """Edge maps of a batch: images (N, C, H, W) in [-1, 1], masks (N, H, W) → float32 (N, 1, H, W) in {0, 1}."""
    images, masks = np.asarray(images), np.asarray(masks)
    if images.shape[0] != masks.shape[0]:
        raise fail(f"edge maps: {images.shape[0]} images but {masks.shape[0]} masks; pass matching pairs")
    if images.shape[0] == 0:
        return np.zeros((0, 1, *images.shape[2:]), dtype=np.float32)
    return np.stack([edge_map(im, m, cfg) for im, m in zip(images, masks)])


def check_edge_maps(edges: Any, size: Sequence[int], batch: int | None = None, where: str = "edge map") -> None:
    """Refuse an edge map batch that is not float (B, 1, H, W) with (H, W) == ``size`` and values in [0, 1]."""
    shape = tuple(getattr(edges, "shape", ()))
    want = (batch if batch is not None else (shape[0] if shape else None), 1, int(size[0]), int(size[1]))
    if len(shape) != 4 or shape[1:] != want[1:] or (batch is not None and shape[0] != batch):
        raise fail(f"{where}: shape {shape}, expected {want} (B, 1, H, W) at the generator's size "
                   f"{int(size[0])}x{int(size[1])}; compute edge maps with synthpair.data.edges.edge_maps on pairs of "
                   f"that size")
    lo, hi = float(edges.min()), float(edges.max())
    if lo < 0.0 or hi > 1.0:
        raise fail(f"{where}: values in [{lo:.3g}, {hi:.3g}], expected [0, 1]; use synthpair.data.edges.edge_maps")
