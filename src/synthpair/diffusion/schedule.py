"""Noise schedules and the forward process of DDPM (Ho et al. 2020), written by hand.

Notation (Ho et al. 2020, "DDPM"): ``beta_t`` the variance added at step t, ``alpha_t = 1 - beta_t``,
``alphabar_t = prod_{s<=t} alpha_s`` (``alphas_cumprod``). Timesteps are 0-based integers ``t in [0, T-1]``.

- linear schedule: ``beta_t`` evenly spaced in ``[beta_start, beta_end]`` (DDPM sec. 4);
- cosine schedule: ``alphabar(t) = f(t)/f(0)``, ``f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)``, ``s = 0.008``,
  ``beta_t = min(1 - alphabar(t+1)/alphabar(t), 0.999)`` (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17).

Training-time options (they change the objective, never the sampler):

- loss weighting ``min_snr`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
  eq. 7 and sec. 3.4): with ``SNR(t) = abar_t / (1 - abar_t)`` every prediction type is weighted so that the
  implied x0-space loss gets ``min(SNR, gamma)``: ``w = min(SNR, gamma) / SNR`` (eps), ``min(SNR, gamma) /
  (SNR + 1)`` (v), ``min(SNR, gamma)`` (x0); ``uniform`` is DDPM's ``L_simple`` (w = 1);
- timestep sampling ``lognormal`` (Karras et al. 2022, "EDM", Table 1: ``ln sigma ~ N(P_mean, P_std^2)`` with
  P_mean = -1.2, P_std = 1.2), mapped onto this discrete schedule as the timestep whose
  ``sigma_t = sqrt((1 - abar_t) / abar_t)`` is nearest in log; ``uniform`` draws ``t ~ U{0..T-1}`` (DDPM).

Schedules are computed in float64 (numerically exact enough for T=1000) and stored as float32 tensors.
Prediction types (what the network outputs): ``eps`` (DDPM), ``x0`` (the clean sample), ``v``
(Salimans & Ho 2022, "Progressive distillation", sec. 4: ``v = sqrt(abar) eps - sqrt(1 - abar) x0``) and ``edm``,
the output preconditioning of Karras et al. 2022 ("EDM", eq. 7 and Table 1) written on this VP schedule. With
``a = sqrt(abar_t)``, ``s = sqrt(1 - abar_t)``, EDM's ``sigma = s / a`` and ``x = x_t / a`` give
``c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)`` and ``c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)``; with
``r = sqrt(s^2 + a^2 sigma_d^2)``::

    x0_hat = c_skip x + c_out F = (a sigma_d^2 / r^2) x_t + (s sigma_d / r) F
    target F = (s / (r sigma_d)) x0 - (a sigma_d / r) eps        (unit variance for data of std sigma_d)

and EDM's loss weight ``lambda = 1 / c_out^2`` on the x0 error is the plain mean squared error on F, i.e. the
``uniform`` weighting here. ``sigma_d = 1`` gives ``F = -v`` exactly (v-prediction is EDM's preconditioning for
unit-variance data); EDM's ``sigma_d = 0.5`` (the default ``diffusion.sigma_data``) suits images in [-1, 1]. Not
taken over: EDM's input scaling ``c_in`` (the network sees ``x_t``, of variance between ``sigma_d^2`` and 1, as
for every other prediction type — the one sampling loop and every method call the network on ``x_t``) and its
``c_noise = ln(sigma) / 4`` (the network embeds the integer timestep). ``diffusion.timestep_sampling=lognormal``
adds EDM's noise-level distribution.

``sigma_d`` may differ per channel (``diffusion.channel_sigma_data``, one value per channel of the diffused tensor,
broadcast as (1, C, 1, 1)): a joint image+mask state has image channels of std ≈ 0.5 and one-hot mask channels in
{−1, +1} of RMS 1, whose matching preconditioning is ``sigma_d = 1`` (= v). The trainer fills it for methods whose
state holds masks from ``sigma_data`` and ``mask_sigma_data`` (:func:`joint_channel_sigma_data`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import fail

Prediction = Literal["eps", "v", "x0", "edm"]


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process: schedule kind, number of training steps T and what the network predicts."""

    schedule: Literal["linear", "cosine"] = "cosine"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: Prediction = "edm"  # issue 12: EDM's preconditioning beat v on BUSI 64 (bench/results/convergence_*)
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"   # min_snr: Hang et al. 2023 (module docstring)
    min_snr_gamma: float = 5.0
    timestep_sampling: Literal["uniform", "lognormal"] = "uniform"  # lognormal: EDM's p(sigma) on this schedule
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2
    sigma_data: float = 0.5  # EDM's sigma_d (prediction="edm" only; module docstring)
    mask_sigma_data: float | None = 1.0  # sigma_d of mask channels of a joint state (None: sigma_data for all)
    channel_sigma_data: tuple[float, ...] = ()  # explicit per-channel sigma_d (filled by the trainer; () = scalar)

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v", "x0", "edm"):
            raise fail(f"diffusion.prediction={self.prediction!r}: choose eps, v, x0 or edm")
        if not self.sigma_data > 0:
            raise fail(f"diffusion.sigma_data={self.sigma_data}: must be > 0 (EDM uses 0.5 for images in [-1, 1])")
        if self.mask_sigma_data is not None and not self.mask_sigma_data > 0:
            raise fail(f"diffusion.mask_sigma_data={self.mask_sigma_data}: must be > 0 (1 suits masks in {{-1, 1}}) "
                       f"or null")
        object.__setattr__(self, "channel_sigma_data", tuple(float(v) for v in self.channel_sigma_data))
        if any(not v > 0 for v in self.channel_sigma_data):
            raise fail(f"diffusion.channel_sigma_data={list(self.channel_sigma_data)}: every value must be > 0")
        if self.channel_sigma_data and self.loss_weighting == "min_snr":
            raise fail("diffusion.loss_weighting=min_snr with per-channel sigma_data (a joint edm run) is not "
                       "supported; use loss_weighting=uniform or mask_sigma_data=null")
        if self.num_timesteps < 1:
            raise fail(f"diffusion.num_timesteps={self.num_timesteps}: must be >= 1")
        if not self.min_snr_gamma > 0:
            raise fail(f"diffusion.min_snr_gamma={self.min_snr_gamma}: must be > 0 (the paper uses 5)")
        if not self.lognormal_std > 0:
            raise fail(f"diffusion.lognormal_std={self.lognormal_std}: must be > 0 (EDM uses 1.2)")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise fail(f"diffusion.beta_start/beta_end={self.beta_start}/{self.beta_end}: "
                       "need 0 < beta_start <= beta_end < 1")


def diffusion_differences(saved: dict, cfg: DiffusionConfig) -> list[str]:
    """The keys in which a run's saved ``diffusion`` section (a dict from its config.json) differs from ``cfg``; keys
    the file predates take their default (every key added since — loss weighting, timestep sampling, sigma_data —
    defaults to the behaviour before it existed). Used where one run builds on another (ControlNet base, PIG)."""
    from ..config import from_dict, to_dict

    old, new = to_dict(from_dict(DiffusionConfig, dict(saved), where="diffusion")), to_dict(cfg)
    return sorted(k for k in new if old.get(k) != new[k])


def joint_channel_sigma_data(cfg: DiffusionConfig, image_channels: int, mask_channels: int) -> DiffusionConfig:
    """``cfg`` with ``channel_sigma_data`` filled for a joint state of ``image_channels`` image and ``mask_channels``
    mask channels: ``sigma_data`` for the images, ``mask_sigma_data`` for the masks. Unchanged when the prediction
    is not edm, ``mask_sigma_data`` is None, the values are already set, or the loss is min-SNR weighted (its
    per-timestep weight assumes one sigma_d)."""
    import dataclasses

    if (cfg.prediction != "edm" or cfg.mask_sigma_data is None or cfg.channel_sigma_data or mask_channels < 1
            or cfg.loss_weighting != "uniform"):
        return cfg
    return dataclasses.replace(cfg, channel_sigma_data=(cfg.sigma_data,) * image_channels
                               + (cfg.mask_sigma_data,) * mask_channels)


def linear_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``beta_t`` evenly spaced in ``[beta_start, beta_end]``, float64 (T,) (DDPM sec. 4)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Improved DDPM (eq. 17), betas clipped to ``max_beta``; float64 (T,)."""
    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=torch.float64)


class NoiseSchedule:
    """Precomputed schedule quantities (all float32 tensors of shape (T,) on ``device``).

    ``betas``, ``alphas_cumprod`` (alphabar_t), ``sqrt_ab`` (sqrt alphabar_t), ``sqrt_1mab``
    (sqrt(1 - alphabar_t)). The float64 versions are kept as ``alphas_cumprod64`` for samplers that
    derive respaced schedules.
    """

    def __init__(self, cfg: DiffusionConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.T = cfg.num_timesteps
        self.prediction = cfg.prediction
        if cfg.schedule == "linear":
            betas = linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        elif cfg.schedule == "cosine":
            betas = cosine_betas(cfg.num_timesteps)
        else:
            raise fail(f"diffusion.schedule={cfg.schedule!r}: choose 'linear' or 'cosine'")
        ab64 = torch.cumprod(1.0 - betas, dim=0)
        self.betas64 = betas
        self.alphas_cumprod64 = ab64
        self.device = torch.device(device)
        self.betas = betas.float().to(self.device)
        self.alphas_cumprod = ab64.float().to(self.device)
        self.sqrt_ab = ab64.sqrt().float().to(self.device)
        self.sqrt_1mab = (1.0 - ab64).sqrt().float().to(self.device)

    def snr64(self) -> torch.Tensor:
        """``SNR(t) = abar_t / (1 - abar_t)``, float64 (T,)."""
        return self.alphas_cumprod64 / (1.0 - self.alphas_cumprod64)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights float32 (B,) of the configured loss weighting at timesteps ``t`` (int64 (B,)), on
        ``t``'s device; None for ``uniform`` (the plain mean, bit-identical to DDPM's ``L_simple``).

        min-SNR-gamma (Hang et al. 2023): ``min(SNR, gamma) / SNR`` (eps), ``/ (SNR + 1)`` (v), ``/ 1`` (x0),
        ``* c_out^2 = * s^2 sigma_d^2 / r^2`` (edm: its x0 error is ``c_out^2`` times the error of F)."""
        if self.cfg.loss_weighting == "uniform":
            return None
        snr = self.snr64()
        clipped = torch.clamp(snr, max=self.cfg.min_snr_gamma)
        if self.prediction == "edm":
            ab, sd2 = self.alphas_cumprod64, self.cfg.sigma_data ** 2
            w = clipped * (1.0 - ab) * sd2 / ((1.0 - ab) + ab * sd2)
        else:
            w = clipped / {"eps": snr, "v": snr + 1.0, "x0": torch.ones_like(snr)}[self.prediction]
        return w.float().to(t.device)[t]

    def sample_timesteps(self, b: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps int64 (b,) drawn from ``generator`` (CPU): ``uniform`` is ``torch.randint(0, T)``
        (the draw every run before these options made, so old runs resume bit-exactly); ``lognormal`` draws
        ``ln sigma ~ N(P_mean, P_std^2)`` (EDM) and takes the timestep whose ``ln sigma_t`` is nearest."""
        if self.cfg.timestep_sampling == "uniform":
            return torch.randint(0, self.T, (b,), generator=generator)
        log_sigma = self.cfg.lognormal_mean + self.cfg.lognormal_std * torch.randn(b, generator=generator,
                                                                                    dtype=torch.float64)
        log_sigma_t = 0.5 * torch.log((1.0 - self.alphas_cumprod64) / self.alphas_cumprod64)  # increasing in t
        idx = torch.searchsorted(log_sigma_t, log_sigma).clamp(1, self.T - 1)
        nearer_left = (log_sigma - log_sigma_t[idx - 1]) < (log_sigma_t[idx] - log_sigma)
        return torch.where(nearer_left, idx - 1, idx).to(torch.int64)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """This schedule with its tensors on ``device`` (a new object; self unchanged)."""
        return NoiseSchedule(self.cfg, device)

    def _coef(self, values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Gather ``values[t]`` and reshape to (B, 1, 1, ...) to broadcast over a batch of ``ndim`` dims."""
        return values.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising, DDPM eq. (4): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.

        x0, noise: (B, C, H, W); t: int64 (B,) in [0, T-1]. Returns x_t with x0's shape and dtype.
        """
        return self._coef(self.sqrt_ab, t, x0.ndim) * x0 + self._coef(self.sqrt_1mab, t, x0.ndim) * noise

    def _sd(self, x: torch.Tensor) -> float | torch.Tensor:
        """``sigma_d``: the scalar, or the per-channel values as a (1, C, 1, ...) tensor on ``x``'s device."""
        per = self.cfg.channel_sigma_data
        if not per:
            return self.cfg.sigma_data
        if x.ndim < 2 or x.shape[1] != len(per):
            raise fail(f"diffusion.channel_sigma_data has {len(per)} values but the tensor has "
                       f"{x.shape[1] if x.ndim > 1 else 0} channels")
        return torch.tensor(per, dtype=torch.float32, device=x.device).reshape(1, -1, *([1] * (x.ndim - 2)))

    def _edm_r(self, a: torch.Tensor, s: torch.Tensor, sd: float | torch.Tensor | None = None) -> torch.Tensor:
        """``r = sqrt(s^2 + a^2 sigma_d^2)`` of the edm prediction (module docstring), broadcast like ``a`` (and
        ``sd``; default: the scalar ``sigma_data``)."""
        sd = self.cfg.sigma_data if sd is None else sd
        return torch.sqrt(s * s + a * a * sd * sd)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target of the configured prediction type: eps, x0, ``v`` (Salimans & Ho, sec. 4) or the
        EDM-preconditioned ``F = (s x0 - a sigma_d^2 eps) / (r sigma_d)`` (module docstring)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a, s = self._coef(self.sqrt_ab, t, x0.ndim), self._coef(self.sqrt_1mab, t, x0.ndim)
        if self.prediction == "edm":
            sd = self._sd(x0)
            return (s * x0 - a * sd * sd * noise) / (self._edm_r(a, s, sd) * sd)
        return a * noise - s * x0

    def to_x0_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output → (x0_hat, eps_hat) for the configured prediction type (float32).

        eps:  x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)                 (inverse of DDPM eq. 4)
        x0:   eps = (x_t - sqrt(abar) x0) / sqrt(1-abar)
        v:    x0 = sqrt(abar) x_t - sqrt(1-abar) v;  eps = sqrt(1-abar) x_t + sqrt(abar) v  (Salimans & Ho)
        edm:  x0 = (a sigma_d^2 / r^2) x_t + (s sigma_d / r) F;  eps = (s / r^2) x_t - (a sigma_d / r) F
        ``t`` is int64 (B,) on the schedule's timestep grid.
        """
        out = out.float()
        a = self._coef(self.sqrt_ab, t, x_t.ndim)
        s = self._coef(self.sqrt_1mab, t, x_t.ndim)
        if self.prediction == "eps":
            return (x_t - s * out) / a, out
        if self.prediction == "x0":
            return out, (x_t - a * out) / s
        if self.prediction == "edm":
            sd = self._sd(x_t)
            r = self._edm_r(a, s, sd)
            return (a * sd * sd / (r * r)) * x_t + (s * sd / r) * out, (s / (r * r)) * x_t - (a * sd / r) * out
        return a * x_t - s * out, s * x_t + a * out

    def output_for_eps(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output (of the configured prediction type) whose ``to_x0_eps`` at ``x_t`` gives ``eps``, float32
        — how a change made in eps space (classifier guidance) is handed back to the sampling loop:

        eps: eps;  x0: (x_t - s eps) / a;  v: (eps - s x_t) / a;  edm: ((s / r^2) x_t - eps) r / (a sigma_d)."""
        eps = eps.float()
        a = self._coef(self.sqrt_ab, t, x_t.ndim)
        s = self._coef(self.sqrt_1mab, t, x_t.ndim)
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return (x_t - s * eps) / a
        if self.prediction == "edm":
            sd = self._sd(x_t)
            r = self._edm_r(a, s, sd)
            return ((s / (r * r)) * x_t - eps) * r / (a * sd)
        return (eps - s * x_t) / a
