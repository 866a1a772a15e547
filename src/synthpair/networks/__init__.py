"""Network builders over MONAI generative networks, and the export format (config.json + model.safetensors)."""
from .unet import DiffusionUNet, UNetConfig, build_unet

__all__ = ["UNetConfig", "DiffusionUNet", "build_unet"]
