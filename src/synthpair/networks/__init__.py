"""Network builders over MONAI generative networks, and the export format (config.json + model.safetensors)."""
from typing import Any

from .unet import DiffusionUNet, UNetConfig, build_unet


def unwrap(model: Any) -> Any:
    """The network inside a DDP wrapper (``DistributedDataParallel.module``), or the model itself. The one
    place synthpair unwraps DDP (methods, LoRA injection and the trainer use it)."""
    return getattr(model, "module", model)


__all__ = ["UNetConfig", "DiffusionUNet", "build_unet", "unwrap"]
