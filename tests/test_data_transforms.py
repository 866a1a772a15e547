"""Paired MONAI transforms keep image and mask aligned and masks as labels."""
from __future__ import annotations

import numpy as np
import pytest

from synthpair.data.phantoms import phantom_labels
from synthpair.data.transforms import KINDS, apply_paired, paired_train_transforms
from synthpair.errors import SynthpairError


def _batch(n=6, size=24):
    masks = np.stack([phantom_labels(i, size, 0, num_classes=3)[1] for i in range(n)]).astype(np.int64)
    # image channels are functions of the mask, so alignment can be checked after any spatial op
    images = np.stack([masks * 0.5 - 0.5, masks * -0.25], axis=1).astype(np.float32)
    return images, masks


@pytest.mark.parametrize("kind", ["flip", "flip_rot"])
def test_exact_spatial_ops_keep_alignment(kind):
    images, masks = _batch()
    out_i, out_m = apply_paired(paired_train_transforms(kind, seed=1), images, masks)
    assert out_i.shape == images.shape and out_m.shape == masks.shape and out_m.dtype == np.int64
    assert np.array_equal(out_i[:, 0], out_m * 0.5 - 0.5) and np.array_equal(out_i[:, 1], out_m * -0.25)
    assert not np.array_equal(out_m, masks)  # something moved
    assert sorted(np.bincount(out_m.ravel())) == sorted(np.bincount(masks.ravel()))  # a permutation of pixels


def test_affine_resamples_mask_nearest_and_stays_aligned():
    images, masks = _batch()
    out_i, out_m = apply_paired(paired_train_transforms("affine", seed=5, size=24), images, masks[:, None])
    assert out_m.shape == (6, 1, 24, 24)
    assert set(np.unique(out_m)) <= {0, 1, 2}
    recovered = np.rint((out_i[:, 0] + 0.5) / 0.5)
    assert (recovered == out_m[:, 0]).mean() > 0.97  # bilinear edges differ by at most a pixel ring


def test_seeded_and_none():
    images, masks = _batch(3)
    a = apply_paired(paired_train_transforms("affine", seed=2), images, masks)
    b = apply_paired(paired_train_transforms("affine", seed=2), images, masks)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    same = apply_paired(paired_train_transforms("none"), images, masks)
    assert np.array_equal(same[0], images) and np.array_equal(same[1], masks)
    with pytest.raises(SynthpairError, match="augmentation kind"):
        paired_train_transforms("elastic")
    assert set(KINDS) == {"none", "flip", "flip_rot", "affine"}
