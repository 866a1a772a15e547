"""Training objectives for diffusion networks.

The simple objective of DDPM (Ho et al. 2020, eq. 14, ``L_simple``) generalised to the prediction type:
``E_{t, x0, eps} || target - model(x_t, t) ||^2`` with ``x_t = q_sample(x0, t, eps)`` and target eps,
x0 or v (see :mod:`synthpair.diffusion.schedule`). The math owns no parameters; the network is an argument.

Extension point: a hybrid loss with learned variances (Improved DDPM, ``L_hybrid = L_simple + lambda L_vlb``)
is a sibling function that reuses :func:`prediction_target` and splits the network output in two.
"""
from __future__ import annotations

from typing import Any, Callable

import math

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule


def prediction_target(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) for a batch: x_t by DDPM eq. (4), target by the schedule's prediction type."""
    return schedule.q_sample(x0, t, noise), schedule.target(x0, t, noise)


def diffusion_loss(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, x0: torch.Tensor,
                   t: torch.Tensor, noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """Mean-squared error between ``model(x_t, t, cond)`` and the prediction target (DDPM ``L_simple``),
    weighted per sample by the schedule's loss weighting (:meth:`NoiseSchedule.loss_weights`: uniform, or
    min-SNR-gamma of Hang et al. 2023: ``mean_b w(t_b) mean_pixels (out - target)^2``).

    x0, noise: float (B, C, H, W), x0 in [-1, 1]; t: int64 (B,) in [0, T-1]. Returns a float32 scalar.
    """
    x_t, target = prediction_target(schedule, x0, t, noise)
    out = model(x_t, t, cond)
    return weighted_mse(out, target, schedule.loss_weights(t))


def weighted_mse(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``mean_b w_b mean_pixels (out_b - target_b)^2`` in float32 (out, target: (B, ...); weights: (B,) or None
    for the plain mean, computed as ``F.mse_loss`` so that uniform weighting stays bit-identical)."""
    if weights is None:
        return F.mse_loss(out.float(), target.float())
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    return (weights * per_sample).mean()


# --------------------------------------------------------------------------- hybrid loss (learned variance)
def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
              ) -> torch.Tensor:
    """Elementwise KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ) in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor,
                                        bins: int = 256) -> torch.Tensor:
    """Elementwise log-likelihood (nats) of data ``x`` in [-1, 1] discretised to ``bins`` levels under
    N(means, exp(log_scales)^2): the DDPM decoder ``L_0`` (Ho et al. 2020, eq. 13; Improved DDPM).

    The bin of x has half-width ``1/(bins-1)``; the edge bins extend to -inf / +inf.
    """
    half = 1.0 / (bins - 1)
    centered = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv * (centered + half))
    cdf_min = torch.special.ndtr(inv * (centered - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def posterior(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6–7), float32, shape of x0.

    ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)``; at t = 0 (where beta~ = 0) the log-variance uses
    ``beta~_1`` (Improved DDPM's clipping).
    """
    b64, ab64 = schedule.betas64, schedule.alphas_cumprod64
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab64[:-1]])
    var = b64 * (1.0 - ab_prev) / (1.0 - ab64)
    logvar = torch.log(torch.cat([var[1:2], var[1:]])) if len(var) > 1 else torch.log(b64)
    c0 = b64 * ab_prev.sqrt() / (1.0 - ab64)
    ct = (1.0 - ab_prev) * (1.0 - b64).sqrt() / (1.0 - ab64)

    def g(v: torch.Tensor) -> torch.Tensor:
        return v.float().to(t.device)[t].reshape(-1, *([1] * (x0.ndim - 1)))

    return g(c0) * x0 + g(ct) * x_t, g(logvar).expand_as(x0)


def learned_logvar(schedule: NoiseSchedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Improved DDPM eq. (15): ``log Sigma = f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2``,
    ``v`` the network's variance output in [-1, 1] (float (B, C, H, W))."""
    b64 = schedule.betas64
    _, min_log = posterior(schedule, torch.zeros_like(v), torch.zeros_like(v), t)
    max_log = torch.log(b64).float().to(t.device)[t].reshape(-1, *([1] * (v.ndim - 1)))
    frac = (v.float() + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def vlb_terms(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              mean_out: torch.Tensor, var_out: torch.Tensor) -> torch.Tensor:
    """Per-sample ``L_t`` in bits per dimension, float32 (B,): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for
    t > 0 and the discretised decoder NLL ``-log p(x0 | x1)`` for t = 0 (DSDM eq. 16; Improved DDPM sec. 3.1).

    ``mean_out``: the mean output (eps/v/x0 by the schedule's prediction type); ``var_out`` in [-1, 1].
    """
    x0_hat, _ = schedule.to_x0_eps(mean_out, x_t, t)
    model_mean, _ = posterior(schedule, x0_hat, x_t, t)
    model_logvar = learned_logvar(schedule, var_out, t)
    true_mean, true_logvar = posterior(schedule, x0.float(), x_t.float(), t)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0.float(), model_mean, 0.5 * model_logvar)
    nll = nll.flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def hybrid_loss(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                noise: torch.Tensor, cond: Any = None, vlb_weight: float = 0.001) -> torch.Tensor:
    """``L_hybrid = L_simple + lambda L_vlb`` (DSDM eq. 14–16; Nichol & Dhariwal 2021 eq. 16).

    The network outputs 2·C channels: the mean prediction (first C, target by prediction type) and the
    variance interpolation ``v`` in [-1, 1] (last C). ``L_simple`` trains the mean; ``L_vlb`` trains only the
    variance (stop-gradient on the mean, as in Improved DDPM) and is estimated as ``T · L_t`` for the drawn t
    (``L_vlb = sum_t L_t``), in bits/dim. x0, noise: (B, C, H, W); t: int64 (B,). Returns a float32 scalar.
    ``L_simple`` takes the schedule's loss weighting (min-SNR); the ``T · L_t`` estimate of ``L_vlb`` is unbiased
    for uniform timestep sampling only (with ``lognormal`` it weights the timesteps that distribution favours).
    """
    x_t, target = prediction_target(schedule, x0, t, noise)
    out = model(x_t, t, cond).float()
    c = x0.shape[1]
    if out.shape[1] != 2 * c:
        raise ValueError(f"hybrid loss needs 2*{c} output channels (mean, variance), got {out.shape[1]}")
    mean_out, var_out = out[:, :c], out[:, c:]
    simple = weighted_mse(mean_out, target, schedule.loss_weights(t))
    vb = vlb_terms(schedule, x0, x_t.float(), t, mean_out.detach(), var_out)
    return simple + vlb_weight * schedule.T * vb.mean()
