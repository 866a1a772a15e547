"""Training objectives for diffusion networks.

The simple objective of DDPM (Ho et al. 2020, eq. 14, ``L_simple``) generalised to the prediction type:
``E_{t, x0, eps} || target - model(x_t, t) ||^2`` with ``x_t = q_sample(x0, t, eps)`` and target eps,
x0 or v (see :mod:`synthpair.diffusion.schedule`). The math owns no parameters; the network is an argument.

Extension point: a hybrid loss with learned variances (Improved DDPM, ``L_hybrid = L_simple + lambda L_vlb``)
is a sibling function that reuses :func:`prediction_target` and splits the network output in two.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule


def prediction_target(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) for a batch: x_t by DDPM eq. (4), target by the schedule's prediction type."""
    return schedule.q_sample(x0, t, noise), schedule.target(x0, t, noise)


def diffusion_loss(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, x0: torch.Tensor,
                   t: torch.Tensor, noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """Mean-squared error between ``model(x_t, t, cond)`` and the prediction target (DDPM ``L_simple``).

    x0, noise: float (B, C, H, W), x0 in [-1, 1]; t: int64 (B,) in [0, T-1]. Returns a float32 scalar.
    """
    x_t, target = prediction_target(schedule, x0, t, noise)
    out = model(x_t, t, cond)
    return F.mse_loss(out.float(), target.float())
