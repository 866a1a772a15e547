"""Partial reverse processes: start the one sampling loop at an intermediate timestep t* instead of T - 1.

Two uses in the survey's tasks (Kazerouni et al. / the survey sec. 3.4 and 3.5):

* **Reconstruction-based anomaly detection** (AnoDDPM, Wyatt et al. 2022, sec. 3.1): noise a test image only
  partially, ``x_{t*} = sqrt(abar_{t*}) x0 + sqrt(1 - abar_{t*}) n`` (DDPM eq. 4 with Gaussian or simplex noise
  ``n``), then run the reverse process from t* down to 0. A model trained on normal images returns a "healed"
  image; the reconstruction error is the anomaly map. t* trades detail kept against anomaly removed.
* **Denoising an observation** (Hu et al. 2022 / Chung et al. 2022 "come-closer-diffuse-faster"): an image
  ``y = x0 + sigma z`` already IS a diffusion state up to scale, since ``x_t / sqrt(abar_t) = x0 +
  sqrt((1 - abar_t)/abar_t) eps``. So start at the timestep whose noise-to-signal ratio
  ``nsr_t = sqrt((1 - abar_t) / abar_t)`` matches sigma, with ``x_t = sqrt(abar_t) y``, and denoise from there.

The loop itself is not forked: :class:`PartialSchedule` is the schedule restricted to ``t = 0..t*`` (the same
betas and ``abar``, ``T = t* + 1``), so :func:`synthpair.diffusion.sampling.sample` respaces ``steps`` timesteps
over ``[0, t*]``, starts at exactly t* and feeds the network the original timestep indices.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..errors import fail
from .sampling import Sampler, sample
from .schedule import NoiseSchedule


class PartialSchedule(NoiseSchedule):
    """``base`` restricted to timesteps ``0..t_max`` (``T = t_max + 1``): every tensor is the base's prefix, so
    ``q_sample``/``to_x0_eps`` at t ≤ t_max are unchanged and the respaced sampling chain starts at ``t_max``."""

    def __init__(self, base: NoiseSchedule, t_max: int) -> None:  # noqa: D107  (no NoiseSchedule.__init__)
        if not 0 <= int(t_max) < base.T:
            raise fail(f"t*={t_max}: must be between 0 and {base.T - 1} (the schedule's last timestep)")
        n = int(t_max) + 1
        self.base = base
        self.cfg = base.cfg
        self.T = n
        self.prediction = base.prediction
        self.device = base.device
        self.betas64 = base.betas64[:n]
        self.alphas_cumprod64 = base.alphas_cumprod64[:n]
        self.betas = base.betas[:n]
        self.alphas_cumprod = base.alphas_cumprod[:n]
        self.sqrt_ab = base.sqrt_ab[:n]
        self.sqrt_1mab = base.sqrt_1mab[:n]

    def to(self, device: torch.device | str) -> "PartialSchedule":
        return PartialSchedule(self.base.to(device), self.T - 1)


def noise_to_signal(schedule: NoiseSchedule) -> torch.Tensor:
    """``nsr_t = sqrt((1 - abar_t) / abar_t)`` float64 (T,), increasing: the std of the noise of ``x_t /
    sqrt(abar_t) = x0 + nsr_t eps``, in the units of x0 (images in [-1, 1])."""
    ab = schedule.alphas_cumprod64
    return torch.sqrt((1.0 - ab) / ab)


def start_step(schedule: NoiseSchedule, sigma: float, *, what: str = "noise level") -> int:
    """The timestep whose ``nsr_t`` is nearest to ``sigma`` (in log scale): where a reverse process that
    denoises an observation ``y = x0 + sigma z`` (x0 in [-1, 1]) starts. A ``sigma`` below ``nsr_0`` or above
    ``nsr_{T-1}`` has no such timestep: one-line error naming ``what`` and the schedule's range."""
    nsr = noise_to_signal(schedule)
    lo, hi = float(nsr[0]), float(nsr[-1])
    s = float(sigma)
    if not math.isfinite(s) or s < lo or s > hi:
        raise fail(f"{what}: noise std {s:.4g} (images in [-1, 1]) is outside the diffusion schedule's range "
                   f"[{lo:.4g}, {hi:.4g}] (t = 0 .. {schedule.T - 1}); choose a level inside it")
    return int(torch.argmin(torch.abs(torch.log(nsr) - math.log(s))).item())


def reconstruct(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, x0: torch.Tensor, t_star: int,
                noise: torch.Tensor, *, steps: int = 10, sampler: Sampler = "ddim", eta: float = 0.0,
                cond: Any = None, generators: Sequence[torch.Generator] | None = None,
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """AnoDDPM reconstruction: ``x_{t*} = q_sample(x0, t*, noise)`` then the reverse process from t* to 0 with
    ``min(steps, t* + 1)`` respaced steps → float32 (B, C, H, W) in [-1, 1].

    x0: (B, C, H, W) in [-1, 1]; ``noise``: the same shape, unit variance (Gaussian or simplex,
    :func:`synthpair.diffusion.simplex.draw_noise`). With ``sampler="ddim", eta=0`` (default) the reverse
    process is deterministic given ``noise`` — whatever the noise family the model was trained with, DDIM uses
    only its x0 / noise predictions; stochastic samplers draw their step noise from ``generators``."""
    sched = PartialSchedule(schedule, t_star)
    t = torch.full((x0.shape[0],), int(t_star), dtype=torch.long, device=x0.device)
    x_t = sched.q_sample(x0.float(), t, noise.to(x0.device).float())
    return sample(model, sched, x_t, sampler=sampler, steps=min(int(steps), sched.T), eta=eta, cond=cond,
                  generators=generators, autocast_dtype=autocast_dtype)


def denoise_observation(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, y: torch.Tensor,
                        sigma: float, *, steps: int = 10, sampler: Sampler = "ddim", eta: float = 0.0,
                        cond: Any = None, generators: Sequence[torch.Generator] | None = None,
                        autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, int]:
    """Denoise observations ``y = x0 + sigma z`` (B, C, H, W), x0 in [-1, 1]: start at ``t = start_step(sigma)``
    with ``x_t = sqrt(abar_t) y`` and run ``min(steps, t + 1)`` reverse steps → (x0_hat float32 in [-1, 1], t)."""
    t0 = start_step(schedule, sigma)
    sched = PartialSchedule(schedule, t0)
    x_t = float(schedule.alphas_cumprod64[t0]) ** 0.5 * y.float()
    out = sample(model, sched, x_t, sampler=sampler, steps=min(int(steps), sched.T), eta=eta, cond=cond,
                 generators=generators, autocast_dtype=autocast_dtype)
    return out, t0


__all__ = ["PartialSchedule", "denoise_observation", "noise_to_signal", "reconstruct", "start_step"]
