"""Mask-conditioned denoising networks (``mask2image`` and DSDM) and the reference-image encoder.

Every network answers ``forward(x_t (B, C, H, W), t int64 (B,), cond: Cond) -> (B, C_out, H, W)`` with
``C_out = C`` or ``2·C`` when the variance is learned (Improved DDPM; DSDM eq. 13–16).

- ``mask_mode="concat"`` (``mask2image``, the segmentation-guided-diffusion baseline): the foreground one-hot
  of the mask (K = num_classes - 1 channels, each in {-1, +1}; the null condition is all zeros) is
  concatenated to ``x_t`` and fed to MONAI's ``DiffusionModelUNet``; ``cond.mask_channels`` (float (B, K, H, W)
  in [-1, 1], a continuous one-hot such as PIG's predicted mask x0_hat) is concatenated instead when given.
- ``mask_mode="spade"`` (DSDM, sec. III-B "Diffusion decoder"): MONAI's ``SPADEDiffusionModelUNet``; the
  decoder's group norms are SPADE layers that receive the full one-hot mask (num_classes channels in {0, 1};
  the null condition is all zeros) at every up level.
- ``mask_mode="none"``: no mask (the unconditional U-Net of DSDM's Table 1 ablation, or RI only).
- ``reference=True`` (DSDM "Reference image encoder" + "MCAA", eqs. 10–11): a frozen ResNet-18-like encoder
  maps the reference image (B, C, H, W) in [-1, 1] to a 512-d embedding F_r; an FC layer Psi_FC lifts it to
  ``ref_tokens`` tokens of width ``ref_dim``, the context of MONAI's cross-attention transformer blocks at
  every level with attention (``net.attention_levels``) and in the middle block, which compute
  ``softmax(Q K^T / sqrt(C)) V`` with ``Q = W_Q F_m`` and K, V projections of the tokens and add the result
  to F_m (residual). The null condition is a learned null embedding in place of F_r.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.cond import Cond
from ..errors import fail
from .pretrained import Pretrained, config_from, config_of
from .unet import UNetConfig


@dataclass(frozen=True)
class CondConfig:
    """Conditioning options of the mask-conditioned methods (``TrainConfig.cond``; only ``dsdm`` reads all).

    ``mask_mode``: spade | concat | none; ``reference``: reference-image cross-attention on/off;
    ``drop_prob``: probability that a training row gets the null condition (classifier-free guidance; 0 = no
    CFG, then ``generate --guidance`` is refused); ``learn_sigma`` + ``vlb_weight`` (lambda of eq. 14): the
    hybrid loss with learned variance; ``ref_*`` / ``encoder_*``: the reference encoder (width of its first
    stage, embedding size 512 as in the paper, number of context tokens and their width) and its SimCLR
    pre-training (steps, batch, lr, NT-Xent temperature); ``spade_hidden``: SPADE's hidden channels.
    """

    mask_mode: Literal["spade", "concat", "none"] = "spade"
    reference: bool = True
    drop_prob: float = 0.1
    learn_sigma: bool = True
    vlb_weight: float = 0.001
    ref_embed: int = 512
    ref_tokens: int = 4
    ref_dim: int = 64
    ref_width: int = 16
    encoder_steps: int = 200
    encoder_batch: int = 32
    encoder_lr: float = 1e-3
    encoder_temperature: float = 0.2
    spade_hidden: int = 32
    ref_norm: Literal["batch", "group"] = "batch"  # reference encoder normalisation (see ReferenceEncoder)

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_prob < 1.0:
            raise fail(f"cond.drop_prob={self.drop_prob}: must be in [0, 1)")
        if self.vlb_weight < 0:
            raise fail(f"cond.vlb_weight={self.vlb_weight}: must be >= 0")
        for name in ("ref_embed", "ref_tokens", "ref_dim", "ref_width", "encoder_batch", "spade_hidden"):
            if getattr(self, name) < 1:
                raise fail(f"cond.{name}={getattr(self, name)}: must be >= 1")
        if self.encoder_batch < 2:
            raise fail(f"cond.encoder_batch={self.encoder_batch}: contrastive training needs >= 2")


# ---------------------------------------------------------------------------------- reference encoder
def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(min(8, c), c)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.c1(x)))
        return F.relu(self.n2(self.c2(h)) + self.skip(x))


class ReferenceEncoder(nn.Module):
    """ResNet-18 layout (4 stages × 2 basic blocks, widths w, 2w, 4w, 8w) whose classification layer is
    replaced by a fully connected projection to ``embed`` (512) dims (DSDM sec. III-B).

    forward: images float (B, C, H, W) in [-1, 1] → float (B, embed). BatchNorm as in ResNet-18: batch
    statistics only during the contrastive pre-training; the encoder is then frozen in eval mode (running
    statistics), so an image's embedding never depends on its batch (per-pair reproducibility).
    ``norm="group"`` (GroupNorm, min(8, C) groups) is the first version's layout, kept so its runs still load;
    its pooled features are nearly batch-constant at initialisation and learn slowly contrastively.
    """

    def __init__(self, in_channels: int, width: int = 16, embed: int = 512, norm: str = "batch") -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), _norm(norm, width),
                                  nn.ReLU())
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers, cin = [], width
        for i, c in enumerate(chans):
            layers += [_BasicBlock(cin, c, 1 if i == 0 else 2, norm), _BasicBlock(c, c, 1, norm)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.fc(h.mean(dim=(2, 3)))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SimCLR-style views for images (B, C, H, W) in [-1, 1]: random resized crop (scale 0.5–1), flips,
    brightness/contrast jitter and Gaussian noise; all draws from ``g`` (CPU)."""
    b = x.shape[0]
    scale = 0.5 + 0.5 * torch.rand(b, generator=g)
    s = scale.sqrt()
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - s)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - s)
    fx = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    fy = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s * fx, s * fy
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = (torch.rand(b, 1, 1, 1, generator=g) * 0.4 - 0.2).to(x.device)
    contrast = (0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)).to(x.device)
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * contrast + mean + bright
    v = v + 0.05 * torch.randn(v.shape, generator=g).to(x.device)
    return v.clamp(-1.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy (Chen et al. 2020, eq. 1) for two views (B, D) each."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def train_reference_encoder(encoder: ReferenceEncoder, images: torch.Tensor, *, steps: int, batch: int,
                            lr: float, temperature: float, generator: torch.Generator,
                            log: Any = None) -> list[float]:
    """Contrastive (SimCLR, ref. [43] of DSDM) pre-training of ``encoder`` on ``images`` (N, C, H, W) in [-1, 1];
    a 2-layer projection head is used for the loss and then discarded. Afterwards the encoder is frozen
    (``requires_grad=False``, eval mode). Returns the loss of every step."""
    dev = images.device
    embed = encoder.fc.out_features
    head = nn.Sequential(nn.Linear(embed, embed), nn.ReLU(), nn.Linear(embed, 128)).to(dev)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    encoder.train()
    losses = []
    n = images.shape[0]
    for step in range(steps):
        idx = (torch.randperm(n, generator=generator)[:batch] if batch <= n
               else torch.randint(0, n, (batch,), generator=generator))
        x = images[idx.to(dev)]
        v1, v2 = _augment(x, generator), _augment(x, generator)
        loss = nt_xent(head(encoder(v1)), head(encoder(v2)), temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % 50 == 0:
            log(f"reference encoder step {step + 1}/{steps} nt-xent {sum(losses[-50:]) / 50:.4f}")
    freeze(encoder)
    return losses


def freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


# ------------------------------------------------------------------------------------- the U-Net
class ConditionalUNet(Pretrained, nn.Module):
    """Mask (+ reference) conditioned denoiser; see module docstring. ``needs``: the Cond fields it reads.
    ``network.json`` config: ``{"net": UNetConfig, "cond": CondConfig, "channels", "num_classes"}``."""

    def __init__(self, net: UNetConfig, cond_cfg: CondConfig, channels: int, num_classes: int) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet, SPADEDiffusionModelUNet

        self.cfg, self.cond_cfg = net, cond_cfg
        self.channels, self.num_classes = channels, num_classes
        self.out_channels = 2 * channels if cond_cfg.learn_sigma else channels
        self.mask_mode = cond_cfg.mask_mode
        self.use_reference = cond_cfg.reference
        self.needs = tuple((["mask"] if self.mask_mode != "none" else []) + (["reference"] if self.use_reference else []))
        kw: dict[str, Any] = dict(
            spatial_dims=2, out_channels=self.out_channels, num_res_blocks=net.num_res_blocks,
            channels=tuple(net.channels), attention_levels=tuple(net.attention_levels),
            norm_num_groups=net.norm_num_groups, num_head_channels=net.num_head_channels,
            resblock_updown=net.resblock_updown, use_flash_attention=net.use_flash_attention)
        if self.use_reference:
            kw.update(with_conditioning=True, cross_attention_dim=cond_cfg.ref_dim)
        if self.mask_mode == "spade":
            self.unet = SPADEDiffusionModelUNet(in_channels=channels, label_nc=num_classes,
                                                spade_intermediate_channels=cond_cfg.spade_hidden, **kw)
        else:
            extra = num_classes - 1 if self.mask_mode == "concat" else 0
            self.unet = DiffusionModelUNet(in_channels=channels + extra, **kw)
        if self.use_reference:
            self.encoder = ReferenceEncoder(channels, cond_cfg.ref_width, cond_cfg.ref_embed, cond_cfg.ref_norm)
            freeze(self.encoder)  # trained contrastively before the diffusion training (methods.conditional)
            self.to_tokens = nn.Linear(cond_cfg.ref_embed, cond_cfg.ref_tokens * cond_cfg.ref_dim)  # Psi_FC
            self.null_reference = nn.Parameter(torch.zeros(cond_cfg.ref_embed))

    def train(self, mode: bool = True) -> "ConditionalUNet":
        super().train(mode)
        if self.use_reference:
            self.encoder.eval()  # frozen: always in eval mode
        return self

    def network_config(self) -> dict[str, Any]:
        return {"net": config_of(self.cfg), "cond": config_of(self.cond_cfg), "channels": self.channels,
                "num_classes": self.num_classes}

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Any) -> "ConditionalUNet":
        return cls(config_from(UNetConfig, config["net"], folder, "config.net"),
                   config_from(CondConfig, config["cond"], folder, "config.cond"), int(config["channels"]),
                   int(config["num_classes"]))

    def check_cond(self, cond: Any, batch: int) -> Cond:
        """One-line errors for missing conditions or a reference image of another channel count."""
        if not isinstance(cond, Cond):
            raise fail(f"this network needs a Cond with {', '.join(self.needs) or 'nothing'}; got {type(cond).__name__}")
        if "mask" in self.needs and cond.mask is None and cond.mask_channels is None:
            raise fail("this mask-conditioned network needs cond.mask (B, H, W) labels")
        if cond.mask_channels is not None and self.mask_mode == "spade" and cond.mask is None:
            raise fail("cond.mask_channels (continuous one-hot) is read by mask_mode=concat only; pass cond.mask labels")
        if (cond.mask_channels is not None and self.mask_mode == "concat"
                and cond.mask_channels.shape[1] != self.num_classes - 1):
            raise fail(f"cond.mask_channels has {cond.mask_channels.shape[1]} channel(s) but the generator needs "
                       f"{self.num_classes - 1} (one per foreground class)")
        if self.use_reference and cond.reference is None and cond.reference_embedding is None:
            raise fail("this DSDM network was trained with reference images; pass cond.reference (B, C, H, W)")
        if self.use_reference and cond.reference is not None and cond.reference.shape[1] != self.channels:
            raise fail(f"reference image has {cond.reference.shape[1]} channel(s) but the generator was trained on "
                       f"{self.channels}-channel images; use reference images of the generator's dataset")
        if cond.mask is not None and int(cond.mask.max()) >= self.num_classes:
            raise fail(f"mask has label {int(cond.mask.max())} but the generator was trained for {self.num_classes} "
                       f"classes (0..{self.num_classes - 1}); use masks of the generator's dataset")
        return cond

    @torch.no_grad()
    def embed_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """Reference images (B, C, H, W) in [-1, 1] → frozen embeddings F_r (B, ref_embed), float32."""
        return self.encoder(reference.float()).float()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x_t (B, C, H, W), t int64 (B,), cond: Cond → (B, C or 2C, H, W)."""
        cond = self.check_cond(cond, x_t.shape[0])
        drop = cond.drop
        keep = None if drop is None else (~drop.to(x_t.device)).to(x_t.dtype).view(-1, 1, 1, 1)
        kwargs: dict[str, Any] = {}
        if self.use_reference:
            emb = cond.reference_embedding
            if emb is None:
                emb = self.embed_reference(cond.reference.to(x_t.device))
            emb = emb.to(x_t.device).float()
            if drop is not None:
                emb = torch.where(drop.to(x_t.device).view(-1, 1), self.null_reference.view(1, -1).to(emb.dtype), emb)
            ctx = self.to_tokens(emb).view(emb.shape[0], self.cond_cfg.ref_tokens, self.cond_cfg.ref_dim)
            kwargs["context"] = ctx
        if self.mask_mode == "spade":
            onehot = F.one_hot(cond.mask.long().to(x_t.device), self.num_classes).permute(0, 3, 1, 2).to(x_t.dtype)
            if keep is not None:
                onehot = onehot * keep
            return self.unet(x_t, t, seg=onehot, **kwargs)
        if self.mask_mode == "concat" and cond.mask_channels is not None:  # continuous one-hot (PIG's x0_hat)
            fg = cond.mask_channels.to(x_t.device, x_t.dtype)
            if keep is not None:
                fg = fg * keep
            x_t = torch.cat([x_t, fg], dim=1)
        elif self.mask_mode == "concat":
            classes = torch.arange(1, self.num_classes, device=x_t.device).view(1, -1, 1, 1)
            fg = (cond.mask.to(x_t.device).unsqueeze(1) == classes).to(x_t.dtype) * 2.0 - 1.0
            if keep is not None:
                fg = fg * keep
            x_t = torch.cat([x_t, fg], dim=1)
        return self.unet(x_t, t, **kwargs)


# the fixed conditioning of method mask2image (and of PIG's image model): the mask concatenated to x_t, no reference,
# no classifier-free null condition, fixed variance
MASK2IMAGE_COND = CondConfig(mask_mode="concat", reference=False, drop_prob=0.0, learn_sigma=False)

__all__ = ["CondConfig", "MASK2IMAGE_COND", "ConditionalUNet", "ReferenceEncoder", "train_reference_encoder", "nt_xent"]
