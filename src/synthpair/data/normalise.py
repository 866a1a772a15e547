"""Intensity normalisation of raw images to [-1, 1] and the record of it that goes into dataset.json.

Methods (``PrepareConfig.normalisation``):

* ``percentile`` — clip to the ``low``/``high`` percentiles (default 0.5 / 99.5) of the image (2-D sources)
  or of the whole volume (slices), then map linearly to [-1, 1]. Default for grayscale (MR, US, unknown).
* ``ct_window`` — clip to ``[center - width/2, center + width/2]`` HU (default 40 / 400), map to [-1, 1].
  Default when the modality is CT.
* ``fixed`` — divide by the maximum of the on-disk integer type (255 for uint8, 65535 for uint16) and map
  to [-1, 1]; keeps absolute colour. Default for RGB (e.g. endoscopy) uint8 images. Float data falls
  back to ``minmax``.
* ``minmax`` — per image/volume min..max → [-1, 1] (all channels jointly).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import fail

METHODS = ("auto", "percentile", "ct_window", "fixed", "minmax")
_DTYPE_MAX = {"uint8": 255.0, "uint16": 65535.0, "int8": 127.0, "int16": 32767.0, "int32": 2147483647.0}


def resolve_method(method: str, modality: str, channels: int) -> str:
    """``auto`` → ``ct_window`` for CT, ``fixed`` for RGB, ``percentile`` otherwise; others unchanged."""
    if method not in METHODS:
        raise fail(f"normalisation={method!r}: choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    if modality.upper() == "CT":
        return "ct_window"
    return "fixed" if channels == 3 else "percentile"


def describe(method: str, *, low: float, high: float, ct_center: float, ct_width: float,
             per: str) -> dict[str, Any]:
    """The ``normalisation`` entry of dataset.json for a resolved method."""
    if method == "percentile":
        return {"method": "percentile", "low": low, "high": high, "per": per}
    if method == "ct_window":
        return {"method": "ct_window", "center": ct_center, "width": ct_width}
    if method == "fixed":
        return {"method": "fixed", "divide_by": "dtype max (255 for uint8)", "fallback_for_float": "minmax",
                "per": per}
    return {"method": "minmax", "per": per}


def intensity_range(method: str, stats: np.ndarray, dtype: str, *, low: float = 0.5, high: float = 99.5,
                    ct_center: float = 40.0, ct_width: float = 400.0) -> tuple[float, float]:
    """The raw intensity range ``(lo, hi)`` that maps to [-1, 1] for one image or volume ``stats``."""
    if method == "percentile":
        lo, hi = np.percentile(stats, [low, high])
    elif method == "ct_window":
        lo, hi = ct_center - ct_width / 2.0, ct_center + ct_width / 2.0
    elif method == "fixed" and dtype in _DTYPE_MAX:
        lo, hi = 0.0, _DTYPE_MAX[dtype]
    elif method in ("fixed", "minmax"):
        lo, hi = float(np.min(stats)), float(np.max(stats))
    else:
        raise fail(f"normalisation={method!r}: choose one of {', '.join(METHODS[1:])}")
    return float(lo), float(hi)


def apply_range(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Raw image (any shape) → float32 in [-1, 1]: clip to [lo, hi], map linearly. A constant image
    (``hi <= lo``) maps to -1."""
    image = np.asarray(image, dtype=np.float32)
    if hi <= lo:
        return np.full(image.shape, -1.0, np.float32)
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)
