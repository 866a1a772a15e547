"""The EMIT-Diff edge branch: a MONAI ``ControlNet`` over a frozen prompt-conditioned base U-Net.

EMIT-Diff (sec. 4.1, Fig. 1) conditions the noise predictor ``eps_theta(x_t, c_t, c_e, t)`` on a text prompt
``c_t`` (cross-attention of the base U-Net) and an edge map ``c_e`` through a ControlNet branch (Zhang &
Agrawala 2023): a trainable copy of the base encoder + middle block whose outputs pass through
zero-initialised convolutions and are *added* to the base's skip connections and middle block:

    down_i, mid = ControlNet(x_t, t, c_e, context=enc(c_t)) * scale
    eps         = base_unet(x_t, t, context=enc(c_t), down_block_additional_residuals=down_i,
                            mid_block_additional_residual=mid)

Both networks are MONAI's (``monai.networks.nets.ControlNet`` and ``DiffusionModelUNet``); this module only
wires them. MONAI 1.6.1 has no ``copy_weights_to_controlnet``; the branch is initialised from the base with
``monai.networks.utils.copy_model_state`` (every key the two share: conv_in, time embedding, down blocks,
middle block). MONAI zero-initialises the ``controlnet_down_blocks``, ``controlnet_mid_block`` and the
conditioning embedding's ``conv_out``, so at step 0 the residuals are exactly zero and the output equals the
base's (tested). The conditioning embedding has one stage (``conditioning_embedding_num_channels=(E,)``):
pixel-space diffusion, so the edge map is already at the U-Net's input resolution (MONAI's multi-stage
embedding downsamples by 2 per stage, meant for latent diffusion).

Grayscale data gives a 1-channel model, RGB data a 3-channel one (the paper's cross-channel average block
exists only because it reuses an RGB Stable Diffusion; a native model needs no such trick).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.edges import EdgeConfig
from ..errors import fail
from .pretrained import Pretrained, config_from, config_of


@dataclass(frozen=True)
class ControlConfig:
    """``TrainConfig.control``: the ControlNet branch of method ``controlnet`` (ignored by other methods)."""

    base_run: str = ""            # a finished 'prompt' RUN (or RUN/export); its weights stay frozen
    scale: float = 1.0            # conditioning scale of the residuals (ControlNet's conditioning_scale)
    embed_channels: int = 16      # channels of the one-stage edge-map embedding
    drop_prob: float = 0.1        # prompt (c_t) null-condition rate while training the branch (CFG); edges stay
    aug_prob: float = 0.1         # rate of rows trained with a random augmentation phrase (image transformed)
    edges: EdgeConfig = field(default_factory=EdgeConfig)

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise fail(f"control.scale={self.scale}: must be >= 0 (1 = as trained)")
        if self.embed_channels < 1:
            raise fail(f"control.embed_channels={self.embed_channels}: must be >= 1")
        if not 0.0 <= self.drop_prob < 1.0:
            raise fail(f"control.drop_prob={self.drop_prob}: must be in [0, 1)")
        if not 0.0 <= self.aug_prob <= 1.0:
            raise fail(f"control.aug_prob={self.aug_prob}: must be in [0, 1]")


def cross_attention_dim(unet: nn.Module) -> int:
    """The context width D of a MONAI ``DiffusionModelUNet`` built with ``with_conditioning=True``."""
    for name, mod in unet.named_modules():
        if name.endswith("attn2.to_k") and isinstance(mod, nn.Linear):
            return int(mod.in_features)
    raise fail("base network: no cross-attention layer (with_conditioning=False or no attention level); the "
               "ControlNet branch needs a prompt-conditioned base with at least one attention level")


def base_context(base: nn.Module, cond: Any) -> torch.Tensor:
    """Context (B, L, D) of the base for ``cond.tokens`` (int64 (B, L)), null prompt on rows ``cond.drop``.

    Uses ``base.context(cond, B)`` when the base defines it (:class:`~synthpair.networks.prompt.PromptUNet`: its
    learned null context), else ``base.encode(tokens)`` with dropped rows replaced by all-padding tokens (0)."""
    if cond is None or getattr(cond, "tokens", None) is None:
        raise fail("ControlNet: cond.tokens (prompt token ids, int64 (B, L)) missing; pass the prompts")
    if hasattr(base, "context"):
        return base.context(cond, int(cond.tokens.shape[0]))
    tokens = cond.tokens
    if cond.drop is not None:
        tokens = torch.where(cond.drop.to(tokens.device).view(-1, 1), torch.zeros_like(tokens), tokens)
    return base.encode(tokens)


class ControlledUNet(Pretrained, nn.Module):
    """``forward(x_t (B, C, H, W), t int64 (B,), cond: Cond(tokens (B, L), control (B, 1, H, W) in [0, 1],
    drop (B,) bool | None)) -> (B, C, H, W)`` (module docstring). ``base`` exposes ``diffusion_unet`` (MONAI
    ``DiffusionModelUNet``, with_conditioning) and ``encode(tokens) -> (B, L, D)``; ``net_cfg`` is the
    base's :class:`~synthpair.networks.unet.UNetConfig`."""

    needs = ("tokens", "control")
    # the frozen base this branch sits on: {"base_export", "base_weights_sha256"} (networks.pretrained.base_record),
    # set by the method that builds the branch; network.json records it, the weights file holds the branch only
    base_source: dict[str, str] | None = None
    phrases: tuple[str, ...] = ()

    def __init__(self, base: nn.Module, cfg: ControlConfig, net_cfg: Any = None, *, init_from_base: bool = True
                 ) -> None:
        super().__init__()
        net_cfg = net_cfg if net_cfg is not None else base.cfg
        from monai.networks.nets import ControlNet
        from monai.networks.utils import copy_model_state

        self.base = base
        self.cfg = cfg
        unet = base.diffusion_unet
        self.control = ControlNet(
            spatial_dims=2, in_channels=unet.in_channels, num_res_blocks=unet.num_res_blocks,
            channels=tuple(unet.block_out_channels), attention_levels=tuple(unet.attention_levels),
            norm_num_groups=net_cfg.norm_num_groups, resblock_updown=net_cfg.resblock_updown,
            num_head_channels=unet.num_head_channels, with_conditioning=True,
            cross_attention_dim=cross_attention_dim(unet), conditioning_embedding_in_channels=1,
            conditioning_embedding_num_channels=(cfg.embed_channels,),
            use_flash_attention=net_cfg.use_flash_attention)
        if init_from_base:  # every key the branch shares with the base encoder (MONAI logs the count at INFO)
            log = logging.getLogger("monai.networks.utils")
            level = log.level
            log.setLevel(logging.WARNING)
            try:
                _, copied, _ = copy_model_state(self.control, unet)
            finally:
                log.setLevel(level)
            self.copied_from_base = len(copied)
        self.scale = float(cfg.scale)

    def freeze_base(self) -> None:
        """Frozen base (paper: only the branch is trained): no gradients, eval mode kept by :meth:`train`."""
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base.eval()

    def train(self, mode: bool = True) -> "ControlledUNet":
        super().train(mode)
        self.base.eval()  # the base never trains here
        return self

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is None or getattr(cond, "control", None) is None:
            raise fail("ControlNet: cond.control (edge maps float (B, 1, H, W) in [0, 1]) missing; pass edge maps")
        if tuple(cond.control.shape[-2:]) != tuple(x_t.shape[-2:]) or cond.control.shape[1] != 1:
            raise fail(f"ControlNet: edge maps {tuple(cond.control.shape)} do not fit x_t {tuple(x_t.shape)}; "
                       f"expected (B, 1, {x_t.shape[-2]}, {x_t.shape[-1]})")
        ctx = base_context(self.base, cond)
        edges = cond.control.to(device=x_t.device, dtype=x_t.dtype)
        down, mid = self.control(x_t, t, controlnet_cond=edges, conditioning_scale=self.scale, context=ctx)
        return self.base.diffusion_unet(x_t, t, context=ctx, down_block_additional_residuals=tuple(down),
                                        mid_block_additional_residual=mid)

    def network_config(self) -> dict[str, Any]:
        if not self.base_source:
            raise ValueError("ControlledUNet.base_source is not set: the branch cannot name the base it sits on")
        return {"control": config_of(self.cfg), "base": dict(self.base_source), "phrases": list(self.phrases)}

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Any) -> "ControlledUNet":
        """Loads the base export (sha256 checked; one-line error when it is gone) and builds the branch on it."""
        from pathlib import Path

        from .pretrained import load_base

        base_export = Path(config["base"]["base_export"])
        if not (base_export / "model.safetensors").is_file():
            raise fail(f"{folder}: its base export {base_export} is missing; the ControlNet branch needs the frozen "
                       f"'prompt' base it was trained on")
        try:
            base = load_base(config["base"], Path(folder), "ControlNet",
                             "the ControlNet branch needs the frozen 'prompt' base it was trained on")
        except RuntimeError as err:
            raise fail(f"{Path(config['base']['base_export']) / 'model.safetensors'}: sha256 differs from the base this "
                       f"ControlNet was trained on ({err}); restore that base run or retrain the branch") from None
        net = cls(base, config_from(ControlConfig, config["control"], folder, "config.control"), init_from_base=False)
        net.base_source = dict(config["base"])
        net.phrases = tuple(config.get("phrases") or ())
        return net

    def saved_state(self) -> dict[str, torch.Tensor]:
        """The branch only (the base has its own export)."""
        return self.branch_state()

    def load_saved_state(self, state: dict[str, torch.Tensor], folder: Any) -> None:
        self.load_branch_state(state)

    def branch_state(self) -> dict[str, torch.Tensor]:
        """The branch's weights only (what the export stores), keys ``control.*``."""
        return {f"control.{k}": v for k, v in self.control.state_dict().items()}

    def load_branch_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`branch_state` (strict: RuntimeError on missing/unexpected keys or shapes)."""
        bad = [k for k in state if not k.startswith("control.")]
        if bad:
            raise RuntimeError(f"unexpected keys outside the ControlNet branch: {bad[:3]}")
        self.control.load_state_dict({k[len("control."):]: v for k, v in state.items()}, strict=True)
