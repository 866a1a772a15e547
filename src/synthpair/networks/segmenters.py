"""Segmenter builders by name (MONAI 2D networks).

Every builder maps ``(B, channels, H, W)`` float images in ``[-1, 1]`` to ``(B, num_classes, H, W)``
logits. CPU costs at 128×128 are in shared/stack-notes.md §3d; ``unet`` is the fastest. They live in the networks
layer so that both segmentation (training them) and synthesis (scoring mask faithfulness with a trained
reference segmenter) can build them.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import fail


def _unet(c: int, k: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=c, out_channels=k, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=2)


def _attention_unet(c: int, k: int) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=2, in_channels=c, out_channels=k, channels=(16, 32, 64, 128),
                         strides=(2, 2, 2))


def _basic_unet(c: int, k: int) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=c, out_channels=k, features=(16, 16, 32, 64, 128, 16))


def _segresnet(c: int, k: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=2, in_channels=c, out_channels=k, init_filters=8)


def _swin_unetr(c: int, k: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(spatial_dims=2, in_channels=c, out_channels=k, feature_size=12)


def _resnet50_unet(c: int, k: int) -> nn.Module:
    """EMIT-Diff's backbone ablation (sec. 4, "ResNet50"): a U-Net decoder on a ResNet-50 encoder — MONAI's
    FlexibleUNet, randomly initialised (``pretrained=False``: nothing is downloaded; ~32 M parameters)."""
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(in_channels=c, out_channels=k, backbone="resnet50", pretrained=False, spatial_dims=2)


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "unet": _unet, "attention_unet": _attention_unet, "basic_unet": _basic_unet, "segresnet": _segresnet,
    "swin_unetr": _swin_unetr, "resnet50_unet": _resnet50_unet,
}

# Input side lengths must be multiples of this (the nets downsample that often) and at least ``_MIN_SIDE``.
_MULTIPLE = {"unet": 8, "attention_unet": 8, "basic_unet": 16, "segresnet": 8, "swin_unetr": 32, "resnet50_unet": 32}
# smaller inputs leave a 1×1 bottleneck, which instance norm rejects in training
# (resnet50_unet: batch norm needs more than one value per channel at the 1/32 bottleneck, so 64 = 2×2 there)
_MIN_SIDE = {"unet": 16, "attention_unet": 16, "basic_unet": 32, "segresnet": 16, "swin_unetr": 64, "resnet50_unet": 64}


def check_model(name: str, size: tuple[int, int] | None = None) -> None:
    """One-line error for an unknown model name or an image size the model cannot take."""
    if name not in MODELS:
        raise fail(f"--model {name!r}: unknown segmenter; choose one of {', '.join(MODELS)}")
    if size is None:
        return
    mult = _MULTIPLE[name]
    low = _MIN_SIDE.get(name, mult)
    if any(s % mult or s < low for s in size):
        raise fail(f"--model {name}: image size {size[0]}×{size[1]} must be a multiple of {mult} and at least "
                   f"{low}; prepare the dataset at such a size (e.g. 64 or 128) or choose --model unet")


def build_segmenter(name: str, channels: int, num_classes: int, size: tuple[int, int] | None = None) -> nn.Module:
    """Build segmenter ``name`` for ``channels`` input channels and ``num_classes`` output logits."""
    check_model(name, size)
    return MODELS[name](int(channels), int(num_classes))


__all__ = ["MODELS", "build_segmenter", "check_model"]
