"""Classic augmentation baselines (MONAI, nnU-Net ranges): image and mask stay aligned, intensity transforms
leave the mask alone, values stay in [-1, 1], results are a function of the generator state."""
from __future__ import annotations

import pytest
import torch

from synthpair.segmentation.augment import AUGMENTATIONS, ClassicAugmentation, augment_batch
from synthpair.segmentation.mixing import Batch

SPATIAL = ("random_mirror", "random_rotate", "random_scale")
INTENSITY = ("random_contrast", "random_gamma", "random_brightness", "random_noise", "random_resolution")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def disks(n: int = 16, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-centre disks (so flips/rotations move them): masks int64 (n, size, size), images = 2·mask − 1."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.stack([(((yy - 7 - i % 5) ** 2 + (xx - 9 - i % 3) ** 2) < 20).long() for i in range(n)])
    return masks[:, None].float() * 2 - 1, masks


@pytest.mark.parametrize("name", SPATIAL)
def test_spatial_augmentations_move_image_and_mask_together(name):
    images, masks = disks()
    ai, am = AUGMENTATIONS[name](images, masks, torch.Generator().manual_seed(0))
    assert ai.shape == images.shape and am.shape == masks.shape and am.dtype == torch.int64
    assert set(am.unique().tolist()) <= {0, 1} and float(ai.min()) >= -1 and float(ai.max()) <= 1
    inside, outside = ai[:, 0] > 0.5, ai[:, 0] < -0.5      # bilinear image vs nearest mask
    assert (am[inside] == 1).float().mean() > 0.97 and (am[outside] == 0).float().mean() > 0.97
    moved = sum(not torch.equal(am[i], masks[i]) for i in range(16))
    assert 3 <= moved <= 15  # p = 0.5 per sample (per axis for mirror): some move, not all


@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_augmentations_leave_the_mask_alone(name):
    images, masks = disks()
    images = images * 0.6 + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    ai, am = AUGMENTATIONS[name](images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(am, masks)
    assert float(ai.min()) >= -1 and float(ai.max()) <= 1
    changed = [not torch.allclose(ai[i], images[i], atol=1e-5) for i in range(16)]
    assert 3 <= sum(changed) <= 15  # p = 0.5 per sample
    for i in range(16):  # the object stays brighter than the background where it is
        assert ai[i, 0][masks[i] == 1].mean() > ai[i, 0][masks[i] == 0].mean() + 0.3


def test_deepstack_keeps_alignment_and_range():
    images, masks = disks(32)
    ai, am = AUGMENTATIONS["deepstack"](images, masks, torch.Generator().manual_seed(4))
    assert ai.shape == images.shape and set(am.unique().tolist()) <= {0, 1}
    assert float(ai.min()) >= -1 and float(ai.max()) <= 1
    assert sum(not torch.equal(ai[i], images[i]) for i in range(32)) >= 16   # the chain fires often
    for i in range(32):  # after every spatial and intensity step the mask still marks the bright object
        if am[i].any() and (am[i] == 0).any():
            assert ai[i, 0][am[i] == 1].mean() > ai[i, 0][am[i] == 0].mean() + 0.5
    aug = AUGMENTATIONS["deepstack"]
    assert isinstance(aug, ClassicAugmentation) and len(aug.probs) == 10
    assert len(aug.transform().transforms) == 7 and AUGMENTATIONS["random_rotate"].transform() is None


def test_rotation_and_zoom_are_about_the_image_centre():
    from synthpair.segmentation.augment import _spatial

    size = 32
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centred = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < 64).float()  # disk of radius 8 at the centre
    m = centred.expand(20, 1, size, size).clone()
    x = m.clone()
    xr, mr = _spatial(x, m, {"rotate": 1.0}, torch.Generator().manual_seed(0))
    assert (mr != m).float().mean() < 0.01                 # a centred disk is rotation-invariant
    assert (xr - x).abs().mean() < 0.02 and not torch.equal(xr, x)
    xz, mz = _spatial(x, m, {"scale": 1.0}, torch.Generator().manual_seed(0))
    areas = mz.sum((1, 2, 3)) / m[0].sum()
    assert 0.45 < float(areas.min()) and float(areas.max()) < 2.0 and float(areas.std()) > 0.1  # zoom² in 0.49..1.96
    for k in range(20):                                     # the disk stays centred
        w = mz[k, 0]
        assert abs(float((w * yy).sum() / w.sum()) - size / 2) < 0.3
        assert abs(float((w * xx).sum() / w.sum()) - size / 2) < 0.3


@pytest.mark.parametrize("name", ["deepstack", "random_rotate", "random_noise"])
def test_augmentation_is_a_function_of_the_generator_state(name):
    images, masks = disks(8)
    fn = AUGMENTATIONS[name]
    a = fn(images, masks, torch.Generator().manual_seed(11))
    b = fn(images, masks, torch.Generator().manual_seed(11))
    c = fn(images, masks, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(11)   # the generator advances: consecutive batches differ
    first, second = fn(images, masks, g), fn(images, masks, g)
    assert torch.equal(first[0], a[0]) and not torch.equal(first[0], second[0])


def test_loss_mixing_batch_gets_the_same_spatial_draw_for_both_images():
    images, masks = disks(8)
    batch = Batch(images, masks, syn_images=-images, real_weight=torch.ones(8, 24, 24, dtype=torch.bool))
    out = augment_batch(AUGMENTATIONS["deepstack"], batch, torch.Generator().manual_seed(3))
    assert torch.equal(out.real_weight, batch.real_weight)
    for x, sign in ((out.images, 1), (out.syn_images, -1)):  # both images still match the one mask
        for i in range(8):
            if out.masks[i].any() and (out.masks[i] == 0).any():
                diff = x[i, 0][out.masks[i] == 1].mean() - x[i, 0][out.masks[i] == 0].mean()
                assert sign * diff > 0.5
    assert augment_batch(None, batch, torch.Generator()) is batch
    plain = augment_batch(AUGMENTATIONS["random_mirror"], Batch(images, masks), torch.Generator().manual_seed(0))
    assert plain.syn_images is None
    assert torch.equal(plain.images, AUGMENTATIONS["random_mirror"](images, masks, torch.Generator().manual_seed(0))[0])


def test_every_classic_augmentation_takes_rgb_non_square_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 24, generator=g) * 2 - 1
    m = (torch.rand(4, 16, 24, generator=g) > 0.5).long()
    for name, fn in AUGMENTATIONS.items():
        if isinstance(fn, ClassicAugmentation):
            a, b = fn(x, m, torch.Generator().manual_seed(1))
            assert a.shape == x.shape and b.shape == m.shape and b.dtype == torch.int64, name
            assert float(a.min()) >= -1 and float(a.max()) <= 1, name


def test_affine_keeps_non_square_shapes_and_alignment():
    """MONAI's quarter turns would swap H and W: for H != W the affine chain leaves them out."""
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(6, 16, 24, generator=g) > 0.5).long()
    x = (m.float() * 2 - 1)[:, None]
    for seed in range(4):
        a, b = AUGMENTATIONS["affine"](x, m, torch.Generator().manual_seed(seed))
        assert a.shape == x.shape and b.shape == m.shape
        inside = (a[:, 0] > 0.5) & (b == 1)
        assert inside.sum() > 0.5 * (b == 1).sum()  # image still bright where the mask is
