"""``synthesize_batch``: pairs from an exported generator and a list of seeds (called by the generate stage)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..env import resolve_autocast
from ..errors import fail
from .base import DataInfo, get_method

Amp = Literal["auto", "bf16", "off"]


def synthesize_batch(generator: Path | str | tuple[nn.Module, dict[str, Any]], seeds: Sequence[int], *,
                     sampler: str = "ddim", steps: int = 25, eta: float = 0.0, spacing: str = "uniform",
                     device: torch.device | str = "cpu", amp: Amp = "auto", progress: bool = False,
                     cond: Any = None, guidance: float | None = None, labels: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one pair per seed with an exported generator.

    ``generator``: an export folder (RUN/export) or the ``(model, export_config)`` pair of
    :func:`synthpair.methods.export.load_export` (pass that when calling repeatedly). Returns
    (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W) in 0..K) on CPU. Calling again with the
    same ``seeds`` list (and settings) gives identical tensors.

    Mask-conditioned methods (``method.conditional``) take ``cond`` (a :class:`~synthpair.diffusion.cond.Cond`
    with ``mask`` int64 (B, H, W) and, for DSDM with a reference encoder, ``reference`` (B, C, H, W)) and the
    classifier-free ``guidance`` scale; they return the given masks with the generated images. Passing
    ``cond``/``guidance`` to an unconditional method is an error. ``labels`` (one int per seed) are the
    class/cluster labels of a label-conditioned method (``joint_cluster``); without them it draws its own.
    """
    from ..diffusion.schedule import DiffusionConfig, NoiseSchedule
    from ..config import from_dict
    from .export import load_export

    if not seeds:
        raise fail("seeds: empty list; pass at least one seed")
    if isinstance(generator, (str, Path)):
        model, cfg = load_export(generator, device=device)
    else:
        model, cfg = generator
        model = model.to(device).eval()
    method = get_method(cfg["method"])
    schedule = NoiseSchedule(from_dict(DiffusionConfig, cfg["diffusion"], where="export config.json:diffusion"),
                             device=device)
    extra: dict[str, Any] = {}
    if method.conditional:
        extra = {"cond": cond, "guidance": guidance}
    elif cond is not None or guidance is not None:
        raise fail(f"method {cfg['method']!r} generates its own masks; --masks/--reference/--guidance only apply to "
                   f"mask-conditioned generators (mask2image, dsdm)")
    if labels is not None:
        if not method.accepts_labels:
            raise fail(f"method {cfg['method']!r} takes no class labels; labels apply to label-conditioned "
                       f"generators (joint_cluster)")
        extra["labels"] = [int(v) for v in labels]
    return method.sample(model, schedule, list(seeds), data=DataInfo.from_dict(cfg["data"]), sampler=sampler,
                         steps=steps, eta=eta, spacing=spacing, device=device,
                         autocast_dtype=resolve_autocast(amp, device), progress=progress, **extra)
