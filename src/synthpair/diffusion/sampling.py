"""The one sampling loop (DDPM ancestral, DDIM, DPM-Solver++(2M)) on respaced timesteps, written by hand.

The loop takes the network as an argument: ``model(x_t, t, cond) -> output`` (output interpreted by the
schedule's prediction type). It never branches on the sampler inside the loop: each sampler is a table
of per-step coefficients ``(c_x0, c_x0_prev, c_xt, sigma)`` (:class:`StepCoef`) computed once, and every step is

    x0_hat = clip(predict(x_t, t), -1, 1)
    x_prev = c_x0 * x0_hat + c_x0_prev * x0_hat_prev + c_xt * x_t + sigma * z,   z ~ N(0, I) from the pair's
                                                                                  own generator

where ``x0_hat_prev`` is the previous step's x0_hat (``c_x0_prev = 0`` for DDPM and DDIM, and for the first
step of every sampler).

- DDPM (Ho et al. 2020, eq. 6–7): the posterior q(x_prev | x_t, x0) of the respaced chain,
  ``c_x0 = sqrt(abar_prev) beta_t / (1 - abar_t)``, ``c_xt = sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t)``,
  ``sigma^2 = beta_t (1 - abar_prev) / (1 - abar_t)`` with ``alpha_t = abar_t / abar_prev``, ``beta_t = 1 - alpha_t``.
- DDIM (Song et al. 2021, eq. 12 and 16): ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z``,
  ``sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)``; with ``eps = (x_t - sqrt(abar_t) x0)/sqrt(1 - abar_t)``
  this is the same affine form. ``eta = 0`` is deterministic.
- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
  Models", arXiv:2211.01095, sec. 4 and Algorithm 2), a deterministic second-order multistep solver of the
  diffusion ODE in data-prediction (x0) form. With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` and
  the half log-SNR ``lambda_t = log(alpha_t / sigma_t)``, the exact solution from s to t < s is (eq. 8)
  ``x_t = (sigma_t/sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0(x_lambda, lambda) dlambda``.
  With x0 held constant over the step it is DPM-Solver++1 (eq. 10), which is DDIM with eta = 0:
  ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) x0_hat_s``, ``h = lambda_t - lambda_s``.
  Algorithm 2 (2M) replaces x0_hat_s by a linear extrapolation through the previous prediction: for step i
  (from ``t_{i-1}`` to ``t_i``) ``h_i = lambda_{t_i} - lambda_{t_{i-1}}``, ``r_i = h_{i-1} / h_i`` and
  ``D_i = (1 + 1/(2 r_i)) x0_hat_{i-1} - 1/(2 r_i) x0_hat_{i-2}``,
  ``x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i``, so
  ``c_xt = sigma_{t_i}/sigma_{t_{i-1}}``, ``c_x0 = alpha_{t_i} (1 - e^{-h_i}) (1 + 1/(2 r_i))`` and
  ``c_x0_prev = -alpha_{t_i} (1 - e^{-h_i}) / (2 r_i)``, ``sigma = 0``. Three steps are first order
  (``c_x0 = alpha_{t_i} (1 - e^{-h_i})``, ``c_x0_prev = 0``):
  * the first one: no previous prediction yet (Algorithm 2, line 3);
  * the last one, from the last respaced timestep (t = 0) to ``abar = 1`` (``sigma = 0``, ``lambda = +inf``):
    ``r = 0`` makes the second-order term undefined, and first order gives ``x_0 = x0_hat`` as DDIM's last step
    does (the loop's contract: it returns the last clipped x0_hat);
  * the one into t = 0 ("lower order final"): ``lambda_0`` is 4.6 (linear) / 5.1 (cosine) while the timestep
    before it sits at lambda 1.0-3.1 (10-50 steps), so ``r_i`` is 0.2-0.3 and the extrapolation weight
    ``1/(2 r_i)`` 1.7-2.5. On Gaussian data, where the exact ODE solution is known, a second-order step there
    overshoots and leaves the sampler less accurate than DDIM at 10-25 steps in most settings; with a
    first-order one it is more accurate than DDIM at every step count tried (tests/test_sampler_dpmpp.py). The
    reference code lowers the final order for few steps; we do it at every step count, as diffusers'
    ``euler_at_final=True`` does.
  So ``steps <= 3`` is DDIM with eta = 0. ``eta`` is ignored (an ODE solver draws no noise). diffusers'
  ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="sigma_min",
  euler_at_final=True)`` on our timesteps without t = 0, followed by one x0 prediction at t = 0, is the same
  sampler (checked to float32 rounding in the tests).

Respacing (Nichol & Dhariwal 2021, sec. 4): the respaced chain uses ``abar`` of the kept timesteps only. Which
``steps`` timesteps are kept is the ``spacing`` (:func:`timestep_grid`); every grid starts at ``T-1`` (x_T is
pure noise) and ends at 0:

- ``uniform``: evenly spaced over ``[0, T-1]`` (rounded; DDIM's "linear" skip, Nichol & Dhariwal's respacing);
- ``logsnr``: evenly spaced in ``log sigma_t = -lambda_t`` (``sigma_t = sqrt((1 - abar_t)/abar_t)``), the
  "logSNR" time steps DPM-Solver recommends for low-resolution pixel models (Lu et al. 2022, "DPM-Solver",
  sec. 3.3 / Appendix D.1; diffusers' ``use_lu_lambdas``), between ``sigma_max = min(sigma_{T-1}, 80)``
  (EDM's sigma_max, Karras et al. 2022: the cosine schedule's last timesteps reach sigma ~ 1e4 and would take the
  steps) and ``sigma_0``;
- ``karras``: EDM's (eq. 5) ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
  ``rho = 7``, same ``sigma_max``/``sigma_min = sigma_0``.

Non-uniform targets are mapped to the timestep nearest in ``log sigma``; the first is replaced by ``T-1``, and
collisions are pushed apart so that the grid has exactly ``steps`` distinct timesteps.

Extension points (so guidance, RePaint and paired generation do not fork the loop):
- ``model`` can be any callable with the network signature — classifier-free guidance is a wrapper that
  calls the network twice and combines the outputs;
- ``hook(x_prev, i, t_prev)`` is called after every step and returns the state to continue with (RePaint
  replaces the known region with a noised copy there; paired generation can overwrite channels). The
  multistep history (``x0_hat_prev``) is the network's prediction, untouched by the hook.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Literal, NamedTuple, Sequence, get_args

import torch

from ..errors import fail
from .schedule import NoiseSchedule

Sampler = Literal["ddpm", "ddim", "dpm++2m"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)   # for CLI choices and error messages
Spacing = Literal["uniform", "logsnr", "karras"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
SIGMA_MAX = 80.0      # EDM's sigma_max: the top of the logsnr / karras grids
KARRAS_RHO = 7.0
Model = Callable[..., torch.Tensor]
Hook = Callable[[torch.Tensor, int, int], torch.Tensor]


def respaced_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps evenly spaced over ``[0, T-1]``, descending (first = T-1, last = 0)."""
    if not 1 <= steps <= T:
        raise fail(f"steps={steps}: must be between 1 and the {T} training timesteps")
    if steps == 1:
        return [T - 1]
    ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(ts), reverse=True)


def timestep_grid(schedule: NoiseSchedule, steps: int, spacing: Spacing = "uniform") -> list[int]:
    """The ``steps`` distinct timesteps of a sampling run, descending from ``T-1`` to 0, for ``spacing`` (module
    docstring: ``uniform`` = :func:`respaced_timesteps`, ``logsnr``, ``karras``)."""
    T = schedule.T
    if spacing not in SPACINGS:
        raise fail(f"spacing={spacing!r}: choose one of {', '.join(SPACINGS)}")
    if spacing == "uniform" or steps == 1:
        return respaced_timesteps(T, steps)
    if not 1 <= steps <= T:
        raise fail(f"steps={steps}: must be between 1 and the {T} training timesteps")
    ab = schedule.alphas_cumprod64
    log_sigma = 0.5 * torch.log((1.0 - ab) / ab)          # increasing in t
    lo, hi = float(log_sigma[0]), min(float(log_sigma[-1]), math.log(SIGMA_MAX))
    if spacing == "logsnr":
        targets = torch.linspace(hi, lo, steps, dtype=torch.float64)
    else:
        r = 1.0 / KARRAS_RHO
        i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
        targets = KARRAS_RHO * torch.log(math.exp(hi * r) + i * (math.exp(lo * r) - math.exp(hi * r)))
    idx = (log_sigma[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    idx[0], idx[-1] = T - 1, 0
    for k in range(1, steps):                  # strictly decreasing ...
        idx[k] = min(idx[k], idx[k - 1] - 1)
    idx[-1] = 0
    for k in range(steps - 2, -1, -1):         # ... and ending at 0
        idx[k] = max(idx[k], idx[k + 1] + 1)
    return [int(v) for v in idx]


class StepCoef(NamedTuple):
    """One row of a sampler's coefficient table:
    ``x_prev = c_x0 x0_hat + c_x0_prev x0_hat_prev + c_xt x_t + sigma z``."""

    c_x0: float
    c_x0_prev: float
    c_xt: float
    sigma: float


def step_coefficients(schedule: NoiseSchedule, timesteps: Sequence[int], sampler: Sampler, eta: float
                      ) -> list[StepCoef]:
    """Per-step :class:`StepCoef` for the descending ``timesteps`` (see module docstring); float64 math.

    ``eta`` is DDIM's; DDPM and DPM-Solver++(2M) ignore it. The last row is always ``(1, 0, 0, 0)``: the loop
    returns the last x0_hat."""
    if sampler not in SAMPLERS:
        raise fail(f"sampler={sampler!r}: choose one of {', '.join(SAMPLERS)}")
    ab = schedule.alphas_cumprod64
    n = len(timesteps)

    def lam(a: float) -> float:  # half log-SNR lambda = log(alpha / sigma) from abar
        return 0.5 * (math.log(a) - math.log1p(-a))

    coefs = []
    for i, t in enumerate(timesteps):
        a_t = float(ab[t])
        a_prev = float(ab[timesteps[i + 1]]) if i + 1 < n else 1.0
        alpha = a_t / a_prev
        beta = 1.0 - alpha
        c_x0_prev = 0.0
        if sampler == "ddpm":
            c_x0 = a_prev ** 0.5 * beta / (1.0 - a_t)
            c_xt = alpha ** 0.5 * (1.0 - a_prev) / (1.0 - a_t)
            sigma = (beta * (1.0 - a_prev) / (1.0 - a_t)) ** 0.5
        elif sampler == "ddim":
            sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)) ** 0.5
            d = max(1.0 - a_prev - sigma ** 2, 0.0) ** 0.5
            s_t = (1.0 - a_t) ** 0.5
            c_x0 = a_prev ** 0.5 - d * a_t ** 0.5 / s_t
            c_xt = d / s_t
        elif i + 1 == n:  # dpm++2m, last step to abar = 1: first order, x_0 = x0_hat
            c_x0, c_xt, sigma = 1.0, 0.0, 0.0
        else:             # dpm++2m (Algorithm 2): second order except the first step and the one into t_{n-1}
            h = lam(a_prev) - lam(a_t)
            base = a_prev ** 0.5 * -math.expm1(-h)              # -alpha_{t_i} (e^{-h_i} - 1)
            c_xt = ((1.0 - a_prev) / (1.0 - a_t)) ** 0.5        # sigma_{t_i} / sigma_{t_{i-1}}
            sigma = 0.0
            if i == 0 or i + 2 == n:
                c_x0 = base
            else:
                r = (lam(a_t) - lam(float(ab[timesteps[i - 1]]))) / h   # r_i = h_{i-1} / h_i
                c_x0 = base * (1.0 + 0.5 / r)
                c_x0_prev = -base * 0.5 / r
        coefs.append(StepCoef(c_x0, c_x0_prev, c_xt, sigma))
    return coefs


def make_predictor(model: Model, schedule: NoiseSchedule, cond: Any = None,
                   autocast_dtype: torch.dtype | None = None, clip: bool = True,
                   variance_channels: int | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``predict(x_t, t) -> x0_hat`` float32 (B, C, H, W), clipped to [-1, 1]; the network runs under autocast.

    With ``variance_channels = C`` the network outputs 2·C channels (mean, learned variance ``v`` in [-1, 1],
    Improved DDPM); ``predict`` then returns x0_hat and stores ``v`` as ``predict.last_variance``.
    """
    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = (torch.autocast(x_t.device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            out = model(x_t, t, cond)
        if variance_channels is not None:
            predict.last_variance = out[:, variance_channels:].float()  # type: ignore[attr-defined]
            out = out[:, :variance_channels]
        x0, _ = schedule.to_x0_eps(out, x_t, t)
        return x0.clamp(-1.0, 1.0) if clip else x0

    predict.last_variance = None  # type: ignore[attr-defined]
    return predict


def variance_bounds(schedule: NoiseSchedule, timesteps: Sequence[int]) -> list[tuple[float, float]]:
    """Per respaced step ``(log beta_t, log beta~_t)`` of the respaced chain (``beta~`` clipped to > 0): the
    range a learned variance interpolates in (Improved DDPM eq. 15, sec. 4 for respacing)."""
    ab = schedule.alphas_cumprod64
    out = []
    for i, t in enumerate(timesteps):
        a_t = float(ab[t])
        a_prev = float(ab[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        beta = 1.0 - a_t / a_prev
        tilde = beta * (1.0 - a_prev) / (1.0 - a_t)
        out.append((math.log(max(beta, 1e-20)), math.log(max(tilde, 1e-20))))
    return out


def _noise(generators: Sequence[torch.Generator] | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Standard normal (B, ...) where row i comes from ``generators[i]`` (CPU) — per-pair reproducibility."""
    if generators is None:
        return torch.randn(shape, device=device)
    z = torch.stack([torch.randn(shape[1:], generator=g) for g in generators])
    return z.to(device, non_blocking=True)


@torch.inference_mode()
def sample(model: Model, schedule: NoiseSchedule, x_T: torch.Tensor, *, sampler: Sampler = "ddim",
           steps: int = 50, eta: float = 0.0, spacing: Spacing = "uniform", cond: Any = None,
           generators: list[torch.Generator] | None = None, progress: bool = False,
           autocast_dtype: torch.dtype | None = None, hook: Hook | None = None,
           variance_channels: int | None = None, clip: bool = True) -> torch.Tensor:
    """Run the reverse process from ``x_T`` to ``x0``.

    ``sampler``: "ddpm", "ddim" (``eta``) or "dpm++2m" (DPM-Solver++(2M), deterministic; one network
    evaluation per step like the others, good samples at 10-25 steps); ``spacing``: which ``steps`` timesteps
    (:func:`timestep_grid`). ``cond`` is passed to every network
    call (a :class:`~synthpair.diffusion.cond.Cond`, or None); ``model`` may be a guidance combiner
    (:mod:`.guidance`). ``variance_channels = C`` for networks with a learned variance (2·C outputs): DDPM then
    draws its noise with the learned per-pixel ``sigma = exp(0.5 (f log beta_t + (1 - f) log beta~_t))``,
    ``f = (v + 1)/2`` (Improved DDPM eq. 15); DDIM and DPM-Solver++ ignore the variance.

    x_T: float32 (B, C, H, W) standard normal on the model's device. ``generators``: one CPU
    ``torch.Generator`` per sample for the stochastic noise (sample i depends only on generators[i]);
    None draws from the global RNG. Returns float32 (B, C, H, W) in [-1, 1] (the final clipped x0_hat).
    ``clip=False`` leaves every x0_hat (and so the result) unclipped: only for comparisons with reference
    implementations that do not clip (tests).
    """
    if generators is not None and len(generators) != x_T.shape[0]:
        raise fail(f"generators: got {len(generators)} for a batch of {x_T.shape[0]}; pass one per sample")
    timesteps = timestep_grid(schedule, steps, spacing)
    coefs = step_coefficients(schedule, timesteps, sampler, eta)
    predict = make_predictor(model, schedule, cond, autocast_dtype, clip=clip, variance_channels=variance_channels)
    learned = variance_channels is not None and sampler == "ddpm"
    bounds = variance_bounds(schedule, timesteps) if learned else None
    B, device = x_T.shape[0], x_T.device
    t_batches = [torch.full((B,), t, dtype=torch.long, device=device) for t in timesteps]
    it = range(len(timesteps))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"{sampler}-{len(timesteps)}", leave=False)
    x = x_T.float()
    x0_prev = x  # never read at step 0 (c_x0_prev = 0 there)
    for i in it:
        c_x0, c_x0_prev, c_xt, sigma = coefs[i]
        x0 = predict(x, t_batches[i])
        x = c_x0 * x0 + c_xt * x
        if c_x0_prev != 0.0:  # multistep: the previous step's x0_hat (0 for DDPM/DDIM and every first step)
            x = x + c_x0_prev * x0_prev
        x0_prev = x0
        if sigma > 0.0:
            if bounds is not None:  # learned variance: per-pixel sigma instead of the fixed posterior one
                f = (predict.last_variance.clamp(-1.0, 1.0) + 1.0) / 2.0  # type: ignore[attr-defined]
                sigma = torch.exp(0.5 * (f * bounds[i][0] + (1.0 - f) * bounds[i][1]))
            x = x + sigma * _noise(generators, x.shape, device)
        if hook is not None:
            x = hook(x, i, timesteps[i + 1] if i + 1 < len(timesteps) else -1)
    return x
