"""Start a network from another method's weights (``train.init_from`` across methods).

Written by hand because no library maps one MONAI ``DiffusionModelUNet`` onto a wider or SPADE variant of
itself: ``load_state_dict`` needs equal shapes and names, ``monai.networks.utils.copy_model_state`` skips
what differs. The typical use is an image-only run (``--method image``) as the starting point of a
mask-aware method, whose U-Net has extra mask inputs (joint, mask2image), extra outputs (joint, learned
variance) or SPADE decoder norms (dsdm).

Every tensor is matched by its **core name**: the key from the MONAI U-Net's own top level on
(``conv_in``, ``time_embed``, ``down_blocks``, ``middle_block``, ``up_blocks``, ``out``, ...), whatever
wrapper holds it (``unet.``, ``diffusion_unet.``, PIG's ``image.unet.`` / ``guider.unet.``). Then:

* equal shapes → copied;
* ``conv_in.conv.weight`` with more input channels (O, C_t, k, k) ⊃ (O, C_s, k, k) → the first C_s
  columns copied, the extra ones (mask channels) set to zero, so with the extra inputs at zero the first
  layer — and hence the whole network — computes what the source computed; with fewer input channels (a
  joint / mask2image source, an image-only target such as a segmenter) → the first C_t columns (the image);
* ``out.2.conv.*`` with more output channels → the first C_s rows copied; the extra rows (mask channels,
  learned variance) keep the target's initialisation (MONAI zero-initialises this layer);
* a SPADE norm (``...normK.param_free_norm`` + ``mlp_gamma`` / ``mlp_beta`` / ``mlp_shared``) whose plain
  counterpart ``...normK.weight/bias`` exists in the source → the GroupNorm affine goes to
  ``param_free_norm`` and ``mlp_gamma`` / ``mlp_beta`` are zeroed, so ``norm(x)·(1 + γ) + β`` equals the
  source's norm whatever the mask;
* a plain norm ``...normK.weight/bias`` whose source is a SPADE norm → the SPADE's ``param_free_norm``
  affine (the mask-dependent modulation is dropped);
* anything else keeps its initialisation and is reported as new (e.g. cross-attention, class embeddings), as
  does every key starting with one of ``skip`` (e.g. a segmenter's new output layer ``out.2.``).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

TOP_LEVEL = ("conv_in", "time_embed", "class_embedding", "down_blocks", "middle_block", "up_blocks", "out")
_CORE = re.compile(r"(?:^|\.)((?:" + "|".join(TOP_LEVEL) + r")\..*)$")
_SPADE = re.compile(r"^(?P<norm>.*\.norm\d*)\.(?P<part>param_free_norm|mlp_gamma|mlp_beta|mlp_shared)\.(?P<rest>.*)$")


def core_name(key: str) -> str | None:
    """``unet.down_blocks.0.resnets.0.conv1.conv.weight`` → ``down_blocks.0.resnets.0.conv1.conv.weight``;
    None for tensors outside a diffusion U-Net (reference encoder, prompt encoder, ...)."""
    m = _CORE.search(key)
    return m.group(1) if m else None


def transfer_weights(target: nn.Module, source_state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
                     ) -> dict[str, Any]:
    """Load ``source_state`` (a U-Net state dict, any wrapper) into ``target`` as described in the module doc.

    Returns a report ``{"copied", "adapted", "new", "unused"}`` (counts) with ``adapted_keys`` and a few
    ``new_keys`` / ``unused_keys`` examples. Raises ``ValueError`` when nothing could be copied."""
    by_core: dict[str, torch.Tensor] = {}
    for k, v in source_state.items():
        c = core_name(k)
        if c is not None and c not in by_core:
            by_core[c] = v
    used: set[str] = set()
    state = target.state_dict()
    copied, adapted, new = 0, [], []
    with torch.no_grad():
        for key, dst in state.items():
            c = core_name(key)
            if skip and c is not None and c.startswith(skip):
                new.append(key)
                continue
            src = by_core.get(c) if c is not None else None
            if src is not None and src.shape == dst.shape:
                dst.copy_(src.to(dst.dtype))
                copied += 1
                used.add(c)
                continue
            if src is not None and c.startswith("conv_in.") and c.endswith("weight") and src.dim() == dst.dim() \
                    and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:] and src.shape[1] < dst.shape[1]:
                dst.zero_()
                dst[:, : src.shape[1]].copy_(src.to(dst.dtype))
                adapted.append(key)
                used.add(c)
                continue
            if src is not None and c.startswith("conv_in.") and c.endswith("weight") and src.dim() == dst.dim() \
                    and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:] and src.shape[1] > dst.shape[1]:
                dst.copy_(src[:, : dst.shape[1]].to(dst.dtype))
                adapted.append(key)
                used.add(c)
                continue
            if c is not None and src is None and re.search(r"\.norm\d*\.(weight|bias)$", c):
                spade = re.sub(r"\.(weight|bias)$", r".param_free_norm.\1", c)
                if spade in by_core and by_core[spade].shape == dst.shape:
                    dst.copy_(by_core[spade].to(dst.dtype))
                    adapted.append(key)
                    used.add(spade)
                    continue
            if src is not None and c.startswith("out.") and src.dim() == dst.dim() and src.shape[0] < dst.shape[0] \
                    and src.shape[1:] == dst.shape[1:]:
                dst[: src.shape[0]].copy_(src.to(dst.dtype))
                adapted.append(key)
                used.add(c)
                continue
            m = _SPADE.match(c) if c is not None else None
            if m is not None:
                plain = f"{m.group('norm')}.{m.group('rest')}"
                if m.group("part") == "param_free_norm" and plain in by_core and by_core[plain].shape == dst.shape:
                    dst.copy_(by_core[plain].to(dst.dtype))
                    adapted.append(key)
                    used.add(plain)
                    continue
                if m.group("part") in ("mlp_gamma", "mlp_beta") and f"{m.group('norm')}.weight" in by_core:
                    dst.zero_()
                    adapted.append(key)
                    continue
            new.append(key)
    if copied == 0 and not adapted:
        raise ValueError("no tensor of the source matches the target network (different architecture)")
    target.load_state_dict(state, strict=True)
    unused = sorted(set(by_core) - used)
    return {"copied": copied, "adapted": len(adapted), "new": len(new), "unused": len(unused),
            "adapted_keys": adapted, "new_keys": new[:20], "unused_keys": unused[:20]}


__all__ = ["transfer_weights", "core_name"]
