"""One trainer for diffusion generators: EMA, AMP, gradient clipping, DDP (torchrun), previews, exact resume."""
from .trainer import TrainConfig, train_generator

__all__ = ["TrainConfig", "train_generator"]
