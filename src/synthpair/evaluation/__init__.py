"""Evaluation commands as library functions (``synthpair evaluate images``)."""
from .images import EvalConfig, evaluate_arrays, evaluate_images, generation_table

__all__ = ["EvalConfig", "evaluate_arrays", "evaluate_images", "generation_table"]
