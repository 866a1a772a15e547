"""Edge maps of the EMIT-Diff ControlNet branch: hand-worked outlines, range, determinism, bad sizes."""
from __future__ import annotations

import numpy as np
import pytest

from synthpair.data.edges import EdgeConfig, check_edge_maps, edge_map, edge_maps
from synthpair.errors import SynthpairError


def _square(size: int = 9, lo: int = 2, hi: int = 7) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.int64)
    m[lo:hi, lo:hi] = 1
    return m


def test_mask_outline_by_hand_on_a_flat_image() -> None:
    # a flat image has no Canny edges, so the map is exactly the mask's inner outline: the 5x5 square's
    # border ring = 25 - 9 = 16 pixels, all inside the square
    mask = _square()
    e = edge_map(np.zeros((1, 9, 9), np.float32), mask)
    assert e.shape == (1, 9, 9) and e.dtype == np.float32
    ring = mask.copy()
    ring[3:6, 3:6] = 0
    np.testing.assert_array_equal(e[0], ring.astype(np.float32))
    assert e.sum() == 16


def test_image_edges_and_mask_outline_are_combined_by_max() -> None:
    # image: a vertical step at column 16 (no mask) → Canny marks pixels next to the step only
    img = np.full((1, 32, 32), -0.8, np.float32)
    img[:, :, 16:] = 0.8
    empty = np.zeros((32, 32), np.int64)
    e = edge_map(img, empty, EdgeConfig(sigma=1.0))
    cols = np.nonzero(e[0].any(axis=0))[0]
    assert e.sum() > 0 and set(cols) <= {15, 16}
    assert np.array_equal(edge_map(img, empty, EdgeConfig(sigma=1.0, image_edges=False)), np.zeros((1, 32, 32)))
    mask = np.zeros((32, 32), np.int64)
    mask[4:10, 4:10] = 1
    both = edge_map(img, mask, EdgeConfig(sigma=1.0))
    only_mask = edge_map(img, mask, EdgeConfig(sigma=1.0, image_edges=False))
    np.testing.assert_array_equal(both, np.maximum(e, only_mask))
    assert only_mask.sum() == 6 * 6 - 4 * 4


def test_range_rgb_batch_and_determinism() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (3, 3, 24, 24)).astype(np.float32)
    masks = np.stack([_square(24, 4, 12 + i) for i in range(3)])
    a = edge_maps(imgs, masks)
    b = edge_maps(imgs.copy(), masks.copy())
    assert a.shape == (3, 1, 24, 24) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    # RGB images: the detector sees the channel mean
    np.testing.assert_array_equal(a[0], edge_map(np.repeat(imgs[0].mean(0, keepdims=True), 3, 0), masks[0]))
    # multi-class masks: every label change is outlined
    two = np.zeros((12, 12), np.int64)
    two[2:6, 2:10], two[6:10, 2:10] = 1, 2
    e2 = edge_map(np.zeros((1, 12, 12)), two, EdgeConfig(image_edges=False))
    assert e2[0, 5, 5] == 1 and e2[0, 6, 5] == 1 and e2[0, 4, 5] == 0


def test_wrong_sizes_and_settings_are_one_line_errors() -> None:
    with pytest.raises(SynthpairError, match="same H and W"):
        edge_map(np.zeros((1, 8, 8)), np.zeros((9, 9), np.int64))
    with pytest.raises(SynthpairError, match=r"expected \(2, 1, 16, 16\)"):
        check_edge_maps(np.zeros((2, 1, 8, 8), np.float32), (16, 16), batch=2)
    with pytest.raises(SynthpairError, match=r"expected \[0, 1\]"):
        check_edge_maps(np.full((1, 1, 4, 4), 2.0, np.float32), (4, 4))
    check_edge_maps(np.zeros((2, 1, 16, 16), np.float32), (16, 16), batch=2)  # fits
    with pytest.raises(SynthpairError, match="only 'canny'"):
        EdgeConfig(detector="hed")
    with pytest.raises(SynthpairError, match="both off"):
        EdgeConfig(image_edges=False, mask_boundary=False)
