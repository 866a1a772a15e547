"""RePaint inpainting (Lugmayr et al. 2022) and its fast variant, on the respaced chain of :mod:`.sampling`.

Notation. ``steps`` respaced timesteps ``tau_0 < tau_1 < ... < tau_{n-1}`` (:func:`~.sampling.respaced_timesteps`,
ascending here); the *state index* ``k`` means ``x`` at timestep ``tau_k`` and ``k = -1`` is the clean image
(``abar_{-1} = 1``). The respaced chain has ``abar_k = abar(tau_k)`` and ``beta_k = 1 - abar_k / abar_{k-1}``.

Down step ``k -> k-1`` (one network evaluation), RePaint eq. (8)/(9) = seed paper 002 eq. (3) (appendix A.2):

    x_known   ~ q(x_{k-1} | x0 = known) = N(sqrt(abar_{k-1}) known, (1 - abar_{k-1}) I)     (DDPM eq. 4)
    x_unknown ~ p(x_{k-1} | x_k)    (DDPM ancestral step, or DDIM with ``eta`` for the fast variant)
    x_{k-1}   = m * x_known + (1 - m) * x_unknown,        m = known_mask (1 = known)

At ``k-1 = -1`` the known part is ``known`` itself, so an all-known mask returns the input exactly.

Jump up ``k -> k+1`` (no network evaluation), RePaint eq. (10) on the respaced chain:
``x_{k+1} = sqrt(1 - beta_{k+1}) x_k + sqrt(beta_{k+1}) z``. Jumps let the unknown region re-harmonise with the
known one (RePaint sec. 4.2, "resampling").

Schedule (:func:`jump_schedule`, the semantics of RePaint's ``get_schedule_jump``): starting at ``n - 1`` the
walk goes down one state at a time; every time it arrives at a state ``j`` in ``{0, L, 2L, ...} ∩ [0, n - L)``
(``L = jump_length``) it jumps back up ``L`` states and walks down again, ``resample - 1`` times per ``j``; it
ends at ``-1``. Network evaluations = number of down steps = ``n + |{j}| (resample - 1) L``
(:func:`schedule_nfe`); reference RePaint (n = 250, L = 10, r = 10) costs 2410.

Reference RePaint = ``sampler="ddpm"`` on 250 respaced steps with L = r = 10 (the reference defaults). Fast
RePaint = the same harmonisation idea with ``sampler="ddim"`` (``eta`` configurable; eta = 1 gives DDPM-like
noise, eta = 0 deterministic down steps) on few steps (e.g. 50 steps, L = 5, r = 3: 140 evaluations).
``sampler="dpm++2m"`` (DPM-Solver++(2M), :mod:`.sampling`) makes the down steps deterministic multistep
steps: a down step from state k uses the x0_hat of the down step from k + 1 as its previous prediction. A jump
breaks that history (the state it returns to was not reached by the step that produced the last x0_hat), so
the first down step after a jump, like the first step of the chain, is first order: it reuses its own x0_hat
as the previous one, and since ``c_x0 + c_x0_prev = alpha_prev (1 - e^{-h})`` that is exactly DPM-Solver++1
(= DDIM with eta = 0) on that step. The known region is noised as for the other samplers.

Partial chains (``strength < 1``, SDEdit-style, used by harmonisation): only the respaced timesteps
``< strength * T`` are kept and the walk starts from ``q(x_t | x0 = init)`` at the highest kept timestep;
``strength = 0`` runs no step and returns ``m * known + (1 - m) * init``.

Randomness: every draw (initial noise, ancestral noise, known-region noise, jump noise) comes row by row from
the pair's own CPU ``torch.Generator`` (``generators[i]``), so pair i depends only on its generator.
Written by hand because neither MONAI nor torch ships RePaint; it reuses the sampler's coefficient table
(:func:`~.sampling.step_coefficients`) and predictor (:func:`~.sampling.make_predictor`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch

from ..errors import fail
from .sampling import Model, Sampler, _noise, make_predictor, respaced_timesteps, step_coefficients
from .schedule import NoiseSchedule


def jump_schedule(num_steps: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """The visiting order of state indices (see module docstring), from ``num_steps - 1`` down to ``-1``.

    Example: ``jump_schedule(5, 2, 2) == [4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]`` (jumps at 2 and 0).
    ``resample = 1`` (or ``jump_length >= num_steps``) is the plain chain ``[n-1, ..., 0, -1]``.
    """
    if num_steps < 1 or jump_length < 1 or resample < 1:
        raise fail(f"jump schedule (steps={num_steps}, jump_length={jump_length}, resample={resample}): "
                   "all must be >= 1")
    jumps = {j: resample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t = num_steps
    out: list[int] = []
    while t >= 1:
        t -= 1
        out.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                out.append(t)
    out.append(-1)
    return out


def schedule_nfe(num_steps: int, jump_length: int = 10, resample: int = 10) -> int:
    """Network evaluations of one RePaint run = down steps of :func:`jump_schedule` (closed form)."""
    n_jump_points = len(range(0, num_steps - jump_length, jump_length))
    return num_steps + n_jump_points * (resample - 1) * jump_length if resample > 1 else num_steps


def truncated_timesteps(T: int, steps: int, strength: float) -> list[int]:
    """Descending respaced timesteps kept for a partial chain: those ``< strength * T`` (all for strength 1)."""
    if not 0.0 <= strength <= 1.0:
        raise fail(f"strength={strength}: must be in [0, 1] (fraction of the diffusion chain to re-noise)")
    ts = respaced_timesteps(T, steps)
    return ts if strength >= 1.0 else [t for t in ts if t < strength * T]


class Repainted(NamedTuple):
    """Result of :func:`repaint`: ``x0`` float32 (B, C, H, W) in [-1, 1] and ``nfe`` network evaluations
    (per sample: one batched network call counts once)."""

    x0: torch.Tensor
    nfe: int


@torch.inference_mode()
def repaint(model: Model, schedule: NoiseSchedule, known: torch.Tensor, known_mask: torch.Tensor, *,
            steps: int = 250, jump_length: int = 10, resample: int = 10, sampler: Sampler = "ddpm",
            eta: float = 1.0, cond: Any = None, generators: Sequence[torch.Generator] | None = None,
            autocast_dtype: torch.dtype | None = None, progress: bool = False, strength: float = 1.0,
            init: torch.Tensor | None = None) -> Repainted:
    """Inpaint the unknown region of ``known`` (RePaint; see the module docstring for the maths).

    known: float (B, C, H, W) in [-1, 1] (for joint models the packed image+mask tensor); known_mask: bool
    (B, 1 or C, H, W), True = known (kept), broadcast over channels when it has one channel. ``sampler``
    "ddpm" (reference: ancestral posterior steps), "ddim" (fast; ``eta`` sets its noise) or "dpm++2m"
    (deterministic multistep down steps, restarted at first order after every jump; ``eta`` ignored). ``cond`` is passed
    to every network call. ``generators``: one CPU generator per row (required: RePaint is stochastic and
    every pair must be reproducible on its own). ``strength`` < 1 runs a partial chain from
    ``q(x_t | init)`` (``init`` defaults to ``known``). Returns :class:`Repainted` (x0 on ``known``'s device).
    """
    if known.ndim != 4:
        raise fail(f"known: expected (B, C, H, W), got shape {tuple(known.shape)}")
    B, C, H, W = known.shape
    if known_mask.ndim != 4 or known_mask.shape[0] != B or known_mask.shape[1] not in (1, C) \
            or known_mask.shape[2:] != known.shape[2:]:
        raise fail(f"known_mask: expected (B, 1 or {C}, {H}, {W}) for known {tuple(known.shape)}, "
                   f"got {tuple(known_mask.shape)}")
    if generators is None or len(generators) != B:
        raise fail(f"generators: need one CPU generator per sample ({B}), got "
                   f"{None if generators is None else len(generators)}")
    device = known.device
    known = known.float()
    m = known_mask.to(device=device, dtype=torch.bool).expand(B, C, H, W)
    init = known if init is None else init.to(device).float()
    ts = truncated_timesteps(schedule.T, steps, strength)  # descending
    n = len(ts)
    if n == 0:
        return Repainted(torch.where(m, known, init), 0)
    asc = ts[::-1]                                           # state k ↔ timestep asc[k]
    ab = schedule.alphas_cumprod64

    def abar(k: int) -> float:
        return 1.0 if k < 0 else float(ab[asc[k]])

    coefs = step_coefficients(schedule, ts, sampler, eta)   # descending index i = n - 1 - k
    predict = make_predictor(model, schedule, cond, autocast_dtype)
    t_batch = {k: torch.full((B,), asc[k], dtype=torch.long, device=device) for k in range(n)}

    def noise() -> torch.Tensor:
        return _noise(generators, known.shape, device)

    def known_at(k: int) -> torch.Tensor:
        if k < 0:
            return known
        a = abar(k)
        return a ** 0.5 * known + (1.0 - a) ** 0.5 * noise()

    a_top = abar(n - 1)
    x = a_top ** 0.5 * init + (1.0 - a_top) ** 0.5 * noise()  # strength 1: ~ N(0, I) up to sqrt(abar_T)
    x = torch.where(m, known_at(n - 1), x)
    order = jump_schedule(n, jump_length, resample)
    pairs: Any = list(zip(order[:-1], order[1:]))
    if progress:
        from tqdm.auto import tqdm
        pairs = tqdm(pairs, desc=f"repaint-{sampler}-{n}", leave=False)
    nfe = 0
    x0_prev: torch.Tensor | None = None  # x0_hat of the down step that led to the current state (multistep)
    for k, k_next in pairs:
        if k_next < k:  # down: p(x_{k-1} | x_k) in the unknown region, q(x_{k-1} | known) in the known one
            c_x0, c_x0_prev, c_xt, sigma = coefs[n - 1 - k]
            x0_hat = predict(x, t_batch[k])
            nfe += 1
            x_unknown = c_x0 * x0_hat + c_xt * x
            if c_x0_prev != 0.0:  # dpm++2m; no history (after a jump) → its own x0_hat: a first-order step
                x_unknown = x_unknown + c_x0_prev * (x0_hat if x0_prev is None else x0_prev)
            x0_prev = x0_hat
            if sigma > 0.0:  # (the last step has c_x0 = 1, c_xt = sigma = 0: x_unknown = clipped x0_hat)
                x_unknown = x_unknown + sigma * noise()
            x = torch.where(m, known_at(k_next), x_unknown)
        else:           # up: q(x_{k+1} | x_k) = N(sqrt(1 - beta) x_k, beta I) on the respaced chain
            beta = 1.0 - abar(k_next) / abar(k)
            x = (1.0 - beta) ** 0.5 * x + beta ** 0.5 * noise()
            x0_prev = None
    return Repainted(x, nfe)


def counting(model: Model) -> Callable[..., torch.Tensor]:
    """Wrap ``model`` so that ``wrapped.calls`` counts its (batched) calls — used by tests and benchmarks."""
    def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
        wrapped.calls += 1  # type: ignore[attr-defined]
        return model(*args, **kwargs)

    wrapped.calls = 0  # type: ignore[attr-defined]
    return wrapped
