"""Optional VGG16 perceptual features from LOCAL weights (no torchvision, no downloads).

The styling step of seed paper 002 (appendix A.3) uses VGG feature (content) and DINO-ViT (style) losses whose
pretrained weights are not available offline. This module rebuilds torchvision's ``vgg16().features`` layer
for layer (Simonyan & Zisserman 2015, configuration D: 13 3×3 convolutions with ReLU, 5 max-pools) as an
``nn.Sequential`` named ``features``, so a state dict saved from torchvision (``features.<i>.weight/bias``,
i in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; ``classifier.*`` keys are ignored) loads strictly.
Written by hand only because torchvision may not be installed here; the layer layout is torchvision's.

Inputs: float (B, 1 or 3, H, W) in [-1, 1]; grey images are repeated to 3 channels; ImageNet normalisation
(mean 0.485/0.456/0.406, sd 0.229/0.224/0.225) is applied inside. :meth:`VGG16Features.forward` returns the
activations after relu1_2, relu2_2, relu3_3, relu4_3 (the usual style/content layers, Gatys et al. 2016).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import fail

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = (3, 8, 15, 22)  # indices of relu1_2, relu2_2, relu3_3, relu4_3 in ``features``
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """torchvision-compatible ``vgg16().features`` (up to relu4_3 is evaluated) returning the tapped activations."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x float (B, 1 or 3, H, W) in [-1, 1] → [relu1_2 (B,64,H,W), relu2_2, relu3_3, relu4_3 (B,512,H/8,W/8)]."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h = ((x + 1.0) / 2.0 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
                if i == TAPS[-1]:
                    break
        return out


def load_vgg16_features(path: Path | str, device: torch.device | str = "cpu") -> VGG16Features:
    """A :class:`VGG16Features` with weights from a local ``.safetensors`` / ``.pt`` / ``.pth`` state dict.

    Accepts torchvision key names (``features.*``; ``classifier.*`` ignored). One-line errors: file missing,
    unreadable, or weights of another architecture (missing/unexpected keys or wrong shapes).
    """
    from .features import load_state_dict_file

    state = load_state_dict_file(path, missing_hint="pass a local torchvision vgg16 state dict (.safetensors or .pt) "
                                                    "or leave the style step off")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = VGG16Features()
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(state[k].shape) != tuple(want[k].shape))
    if missing or unexpected or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(want[wrong[0]].shape)}")
        raise fail(f"{path}: not VGG16 features weights ({what}); pass torchvision's vgg16 state dict")
    model.load_state_dict(state, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix of features (B, C, H, W) → (B, C, C), normalised by C·H·W (Gatys et al. 2016, eq. 3)."""
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def style_transfer(net: VGG16Features, image: torch.Tensor, style: torch.Tensor, *, steps: int = 20,
                   lr: float = 0.02, style_weight: float = 1e4, content_weight: float = 1.0,
                   region: torch.Tensor | None = None) -> torch.Tensor:
    """Optimise ``image`` with Adam to match the Gram statistics of ``style`` (the source real image) while
    keeping its own relu3_3 features (content) — Gatys et al. 2016, the VGG part of paper 002's styling.

    image, style: float (B, C, H, W) in [-1, 1]; region: optional bool (B, 1, H, W) — only pixels inside it
    are optimised (the rest stay exact). Returns float32 (B, C, H, W) clipped to [-1, 1]. Loss =
    ``style_weight Σ_l ||G(F_l(x)) − G(F_l(style))||² + content_weight ||F_3(x) − F_3(image)||²`` (means).
    """
    image = image.detach().float()
    with torch.no_grad():
        target_grams = [gram(f) for f in net(style.float())]
        target_content = net(image)[2]
    x = image.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    keep = None if region is None else region.to(image.device).float()
    for _ in range(steps):
        opt.zero_grad()
        cur = x if keep is None else keep * x + (1 - keep) * image
        feats = net(cur)
        loss = style_weight * sum(torch.mean((gram(f) - g) ** 2) for f, g in zip(feats, target_grams))
        loss = loss + content_weight * torch.mean((feats[2] - target_content) ** 2)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)
    out = x.detach() if keep is None else keep * x.detach() + (1 - keep) * image
    return out.clamp(-1.0, 1.0)
