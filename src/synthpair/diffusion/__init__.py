"""Diffusion math: noise schedules, forward noising, losses and the one sampling loop.

Everything here is hand-written and parameter-free: each function takes the network as an argument
(``model(x_t, t, cond) -> prediction``), as in guided-diffusion's ``training_losses(model, ...)``.
"""
from .losses import diffusion_loss, prediction_target
from .sampling import make_predictor, respaced_timesteps, sample
from .schedule import DiffusionConfig, NoiseSchedule

__all__ = ["DiffusionConfig", "NoiseSchedule", "diffusion_loss", "prediction_target", "sample",
           "respaced_timesteps", "make_predictor"]
