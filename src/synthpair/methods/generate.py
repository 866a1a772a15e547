"""``synthesize_batch``: pairs from an exported generator and a list of seeds (called by the generate stage)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..errors import fail
from .base import DataInfo, get_method

Amp = Literal["auto", "bf16", "off"]


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX-BF16), so bf16 autocast is ~2x faster."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
        if "AMX" in cap.upper():
            return True
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, AttributeError):
        return False
    return False


def resolve_autocast(amp: str, device: torch.device | str) -> torch.dtype | None:
    """``amp`` ("auto"|"bf16"|"off") → autocast dtype (torch.bfloat16) or None (fp32).

    auto: bf16 on CUDA when supported and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.
    """
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise fail(f"amp={amp!r}: choose 'auto', 'bf16' or 'off'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None


def synthesize_batch(generator: Path | str | tuple[nn.Module, dict[str, Any]], seeds: Sequence[int], *,
                     sampler: str = "ddim", steps: int = 25, eta: float = 0.0, device: torch.device | str = "cpu",
                     amp: Amp = "auto", progress: bool = False, cond: Any = None, guidance: float | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one pair per seed with an exported generator.

    ``generator``: an export folder (RUN/export) or the ``(model, export_config)`` pair of
    :func:`synthpair.networks.export.load_export` (pass that when calling repeatedly). Returns
    (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W) in 0..K) on CPU. Calling again with the
    same ``seeds`` list (and settings) gives identical tensors.

    Mask-conditioned methods (``method.conditional``) take ``cond`` (a :class:`~synthpair.diffusion.cond.Cond`
    with ``mask`` int64 (B, H, W) and, for DSDM with a reference encoder, ``reference`` (B, C, H, W)) and the
    classifier-free ``guidance`` scale; they return the given masks with the generated images. Passing
    ``cond``/``guidance`` to an unconditional method is an error.
    """
    from ..diffusion.schedule import DiffusionConfig, NoiseSchedule
    from ..config import from_dict
    from ..networks.export import load_export

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
    if getattr(method, "conditional", False):
        extra = {"cond": cond, "guidance": guidance}
    elif cond is not None or guidance is not None:
        raise fail(f"method {cfg['method']!r} generates its own masks; --masks/--reference/--guidance only apply to "
                   f"mask-conditioned generators (mask2image, dsdm)")
    return method.sample(model, schedule, list(seeds), data=DataInfo.from_dict(cfg["data"]), sampler=sampler,
                         steps=steps, eta=eta, device=device, autocast_dtype=resolve_autocast(amp, device),
                         progress=progress, **extra)
