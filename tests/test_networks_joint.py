"""Joint packing, the U-Net wrapper, the method registry and the preview grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpair.errors import SynthpairError
from synthpair.methods import DataInfo, get_method
from synthpair.methods.joint import pack_joint, unpack_joint
from synthpair.networks import UNetConfig, build_unet
from synthpair.report.grid import PALETTE, contour, pair_grid


def test_pack_unpack_binary_round_trip():
    images = torch.linspace(-1, 1, 2 * 16).view(2, 1, 4, 4)
    masks = torch.tensor([[0, 1, 1, 0]] * 4).unsqueeze(0).repeat(2, 1, 1)
    x = pack_joint(images, masks, num_classes=2)
    assert x.shape == (2, 2, 4, 4)
    assert torch.equal(x[:, 1], masks.float() * 2 - 1)  # {0,1} -> {-1,+1}
    im, mk = unpack_joint(x, channels=1, num_classes=2)
    assert torch.equal(im, images) and torch.equal(mk, masks)


def test_pack_unpack_three_class_round_trip_and_decoding():
    masks = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    images = torch.zeros(1, 3, 2, 3)
    x = pack_joint(images, masks, num_classes=3)
    assert x.shape == (1, 5, 2, 3)
    assert torch.equal(x[0, 3], torch.tensor([[-1.0, 1, -1], [-1, 1, -1]]))
    assert torch.equal(unpack_joint(x, 3, 3)[1], masks)
    # noisy decoding: label = 1 + argmax where the max is > 0, else background
    y = torch.tensor([[[[0.2, -0.5]], [[0.7, -0.1]]]])  # (1, K=2, 1, 2)
    noisy = torch.cat([torch.zeros(1, 1, 1, 2), y], dim=1)
    assert torch.equal(unpack_joint(noisy, 1, 3)[1], torch.tensor([[[2, 0]]]))


def test_unet_wrapper_shapes_and_attention():
    net = build_unet(UNetConfig(channels=(8, 16), attention_levels=(False, True), num_head_channels=8,
                                norm_num_groups=8), in_channels=3, out_channels=3)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0, 999]))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(SynthpairError, match="divisible"):
        UNetConfig(channels=(8, 12), attention_levels=(False, False), norm_num_groups=8)


def test_get_method_unknown_lists_valid():
    assert get_method("joint").name == "joint"
    with pytest.raises(SynthpairError, match="joint"):
        get_method("nope")


def test_joint_network_channels():
    net = get_method("joint").build_network(DataInfo(3, 4, (16, 16)), UNetConfig(
        channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8))
    assert net.in_channels == 6 and net.out_channels == 6


def test_pair_grid_contours_and_layout():
    images = np.full((3, 1, 6, 6), -1.0, dtype=np.float32)
    masks = np.zeros((3, 6, 6), dtype=np.int64)
    masks[0, 1:5, 1:5] = 1
    masks[1, 2:4, 2:4] = 2
    g = pair_grid(images, masks, ncols=2, num_classes=3, pad=2)
    assert g.dtype == np.uint8 and g.shape == (2 * 8 + 2, 2 * 8 + 2, 3)
    tile0 = g[2:8, 2:8]
    assert (tile0[1, 1] == PALETTE[0]).all() and (tile0[2, 2] == 0).all()  # contour, not the inside
    tile1 = g[2:8, 10:16]
    assert (tile1[2, 2] == PALETTE[1]).all()
    assert contour(np.ones((3, 3), bool)).sum() == 8
