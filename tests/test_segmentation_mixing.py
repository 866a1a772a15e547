"""Mixing strategies draw the documented proportions; paired augmentation keeps image and mask aligned."""
from __future__ import annotations

import pytest
import torch

from synthpair.segmentation.augment import flip_rot
from synthpair.segmentation.mixing import PoolStream, RatioMixing, SyntheticOnly, make_mixing


def pools(n_real: int = 10, n_syn: int = 7, size: int = 4):
    # real pairs carry mask value 0 and image value = index; synthetic pairs mask value 1
    rx = torch.arange(n_real, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    ry = torch.zeros(n_real, size, size, dtype=torch.long)
    sx = torch.full((n_syn, 1, size, size), -1.0)
    sy = torch.ones(n_syn, size, size, dtype=torch.long)
    return rx, ry, sx, sy


@pytest.mark.parametrize("ratio,expected", [(0.5, 1 / 3), (1.0, 0.5), (3.0, 0.75)])
def test_ratio_draws_the_documented_proportion(ratio, expected):
    rx, ry, sx, sy = pools()
    mix = RatioMixing(rx, ry, 16, ratio, sx, sy)
    g = torch.Generator().manual_seed(0)
    syn = total = 0
    for step in range(300):
        b = mix.batch(step, g)
        x, y = b.images, b.masks
        assert x.shape == (16, 1, 4, 4) and y.shape == (16, 4, 4)  # batch size fixed whatever the ratio
        syn += int((y[:, 0, 0] == 1).sum())
        total += len(y)
    # 4800 Bernoulli slots: sd of the fraction ≈ 0.007
    assert abs(syn / total - expected) < 0.025
    assert mix.describe()["p_synthetic_per_slot"] == pytest.approx(expected)


def test_real_only_sees_every_real_pair_equally_often():
    rx, ry, sx, sy = pools()
    mix = make_mixing("ratio", real_images=rx, real_masks=ry, batch_size=16, ratio=0.0, syn_images=sx, syn_masks=sy)
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(10)
    for step in range(25):  # 400 draws from a pool of 10 → 40 each
        b = mix.batch(step, g)
        x, y = b.images, b.masks
        assert int(y.sum()) == 0
        counts += torch.bincount(x[:, 0, 0, 0].long(), minlength=10)
    assert counts.tolist() == [40.0] * 10


def test_pool_stream_and_synthetic_only():
    s = PoolStream(5)
    g = torch.Generator().manual_seed(0)
    got = torch.cat([s.take(3, g) for _ in range(5)])
    assert sorted(got[:5].tolist()) == [0, 1, 2, 3, 4] and sorted(got[5:10].tolist()) == [0, 1, 2, 3, 4]
    rx, ry, sx, sy = pools()
    mix = SyntheticOnly(sx, sy, 8)
    b = mix.batch(0, g)
    x, y = b.images, b.masks
    assert bool((y == 1).all()) and x.shape == (8, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown mixing"):
        make_mixing("patchy", real_images=rx, real_masks=ry, batch_size=4)
    with pytest.raises(ValueError, match="synthetic pool"):
        RatioMixing(rx, ry, 4, 0.5)


@pytest.mark.parametrize("h,w", [(8, 8), (6, 10)])
def test_flip_rot_moves_image_and_mask_together(h, w):
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (64, h, w))
    images = torch.stack([masks.float(), -masks.float() + 0.5], 1)  # channels are functions of the mask
    ai, am = flip_rot(images, masks, g)
    assert ai.shape == images.shape and am.shape == masks.shape
    assert torch.equal(ai[:, 0], am.float()) and torch.equal(ai[:, 1], -am.float() + 0.5)
    # the transforms really happen, and all 8 (square) or 4 (non-square) distinct results are reached
    changed = sum(not torch.equal(am[i], masks[i]) for i in range(64))
    assert changed > 32
    ref = masks[0]
    variants = {tuple(flip_rot(images[:1], ref[None], g)[1].flatten().tolist()) for _ in range(200)}
    assert len(variants) == (8 if h == w else 4)


def test_monai_affine_keeps_mask_aligned_and_is_seeded():
    from synthpair.segmentation.augment import monai_affine

    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    masks = torch.stack([(((yy - 8 - i) ** 2 + (xx - 12) ** 2) < 25).long() for i in range(8)])
    images = masks[:, None].float() * 2 - 1  # the image is the mask in [-1, 1]
    ai, am = monai_affine(images, masks, torch.Generator().manual_seed(3))
    assert ai.shape == images.shape and am.shape == masks.shape and am.dtype == masks.dtype
    assert set(am.unique().tolist()) <= {0, 1}                      # nearest: labels stay labels
    # bilinear image vs nearest mask agree wherever the image is clearly inside/outside
    inside, outside = ai[:, 0] > 0.5, ai[:, 0] < -0.5
    assert (am[inside] == 1).float().mean() > 0.97 and (am[outside] == 0).float().mean() > 0.97
    assert sum(not torch.equal(am[i], masks[i]) for i in range(8)) >= 4   # it does transform
    again = monai_affine(images, masks, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], ai) and torch.equal(again[1], am)   # same generator state, same batch
