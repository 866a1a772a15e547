"""Simplex noise (AnoDDPM) and partial reverse processes (anomaly reconstruction, denoising start step)."""
from __future__ import annotations

import math

import pytest
import torch

from synthpair.diffusion.partial import PartialSchedule, denoise_observation, noise_to_signal, reconstruct, start_step
from synthpair.diffusion.sampling import respaced_timesteps
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from synthpair.diffusion.simplex import (SimplexConfig, draw_noise, permutation_table, simplex2d, simplex_noise,
                                         simplex_octaves)
from synthpair.errors import SynthpairError

pytestmark = pytest.mark.usefixtures("one_thread")


def _centroid_frequency(field: torch.Tensor) -> float:
    """Power-weighted mean radial frequency (cycles/pixel) of fields (..., H, W)."""
    f = field.reshape(-1, *field.shape[-2:]).double()
    p = (torch.fft.fft2(f - f.mean(dim=(-2, -1), keepdim=True)).abs() ** 2).mean(0)
    fy = torch.fft.fftfreq(f.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(f.shape[-1], dtype=torch.float64)[None, :]
    r = torch.sqrt(fy ** 2 + fx ** 2)
    return float((p * r).sum() / p.sum())


def test_simplex_noise_is_standardised_per_image_and_channel():
    n = simplex_noise((3, 2, 32, 32), SimplexConfig(), torch.Generator().manual_seed(0))
    assert n.shape == (3, 2, 32, 32) and n.dtype == torch.float32
    assert torch.allclose(n.mean(dim=(-2, -1)), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(n.var(dim=(-2, -1), unbiased=False), torch.ones(3, 2), atol=1e-4)
    # pooled over many draws: zero mean, unit variance, symmetric
    many = simplex_noise((64, 1, 32, 32), SimplexConfig(), torch.Generator().manual_seed(1))
    assert abs(float(many.mean())) < 1e-3 and abs(float(many.var()) - 1.0) < 1e-2
    assert abs(float((many ** 3).mean())) < 0.2


def test_simplex_raw_values_are_bounded_and_smooth():
    perm = permutation_table(0)
    assert sorted(perm[:256].tolist()) == list(range(256)) and torch.equal(perm[:256], perm[256:])
    g = torch.Generator().manual_seed(0)
    xy = torch.rand((2, 20000), generator=g, dtype=torch.float64) * 50
    v = simplex2d(xy[0], xy[1], perm)
    assert float(v.abs().max()) <= 1.0 and float(v.std()) > 0.2
    # continuity: a tiny step changes the value a little (gradient noise, no jumps)
    v2 = simplex2d(xy[0] + 1e-4, xy[1], perm)
    assert float((v2 - v).abs().max()) < 1e-2
    # the lattice corners (integer skewed points) are zeros of gradient noise
    assert abs(float(simplex2d(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64),
                               perm))) < 1e-12


def test_octave_structure_doubles_frequency_with_persistence_weights():
    cfg = SimplexConfig(octaves=4, persistence=0.5, period=0.5)
    oct_ = simplex_octaves((16, 1, 64, 64), cfg, torch.Generator().manual_seed(3))
    assert oct_.shape == (16, 1, 4, 64, 64)
    freqs = [_centroid_frequency(oct_[:, :, k]) for k in range(4)]
    for lo, hi in zip(freqs[:3], freqs[1:3]):   # octaves 0..2 are resolved at 64 px: frequency doubles
        assert 1.6 < hi / lo < 2.5
    # the noise is the standardised persistence-weighted sum of its octaves (same draw)
    n = simplex_noise((16, 1, 64, 64), cfg, torch.Generator().manual_seed(3))
    s = sum(cfg.persistence ** k * oct_[:, :, k] for k in range(4))
    s = (s - s.mean(dim=(-2, -1), keepdim=True)) / s.std(dim=(-2, -1), keepdim=True, unbiased=False)
    assert torch.allclose(n, s, atol=1e-5)
    # more octaves (persistence 0.8) → more high-frequency power than one octave
    one = simplex_noise((16, 1, 64, 64), SimplexConfig(octaves=1), torch.Generator().manual_seed(4))
    six = simplex_noise((16, 1, 64, 64), SimplexConfig(octaves=6), torch.Generator().manual_seed(4))
    gauss = torch.randn((16, 1, 64, 64), generator=torch.Generator().manual_seed(4))
    assert _centroid_frequency(one) < _centroid_frequency(six) < _centroid_frequency(gauss)


def test_simplex_draws_are_per_image_reproducible():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = simplex_noise((3, 1, 16, 16), SimplexConfig(), gens([5, 6, 7]))
    b = simplex_noise((2, 1, 16, 16), SimplexConfig(), gens([6, 9]))
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    g = draw_noise("gaussian", (2, 1, 8, 8), gens([6, 9]))
    assert torch.equal(g[0], torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(6)))
    with pytest.raises(SynthpairError, match="gaussian' or 'simplex"):
        draw_noise("perlin", (1, 1, 8, 8), None)
    with pytest.raises(SynthpairError, match="octaves"):
        SimplexConfig(octaves=0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_denoising_start_step_matches_the_noise_level(kind):
    sched = NoiseSchedule(DiffusionConfig(schedule=kind, num_timesteps=1000))
    nsr = noise_to_signal(sched)
    assert torch.all(nsr[1:] > nsr[:-1])
    for t in (0, 7, 120, 500, 999):          # a level exactly on the grid gives that timestep back
        assert start_step(sched, float(nsr[t])) == t
    for sigma in (0.05, 0.1, 0.3, 1.0):      # otherwise the nearest in log scale
        t = start_step(sched, sigma)
        assert abs(math.log(nsr[t]) - math.log(sigma)) <= min(abs(math.log(nsr[u]) - math.log(sigma))
                                                              for u in (max(t - 1, 0), min(t + 1, 999))) + 1e-12
    # x_t = sqrt(abar) y has exactly the diffusion marginal's noise std when sigma = nsr_t
    t = start_step(sched, 0.2)
    ab = float(sched.alphas_cumprod64[t])
    assert abs(ab ** 0.5 * float(nsr[t]) - (1 - ab) ** 0.5) < 1e-9
    with pytest.raises(SynthpairError, match="outside the diffusion schedule"):
        start_step(sched, float(nsr[0]) / 2, what="noise gaussian:1e-9")
    with pytest.raises(SynthpairError, match="noise gaussian:1e9"):
        start_step(sched, float(nsr[-1]) * 2, what="noise gaussian:1e9")


def test_partial_schedule_starts_the_one_loop_at_t_star():
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction="eps"))
    ps = PartialSchedule(sched, 30)
    assert ps.T == 31 and torch.equal(ps.alphas_cumprod64, sched.alphas_cumprod64[:31])
    assert respaced_timesteps(ps.T, 4)[0] == 30 and respaced_timesteps(ps.T, 4)[-1] == 0
    seen = []

    def zero_eps(x, t, cond=None):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    x0 = torch.full((2, 1, 8, 8), 0.5)
    out = reconstruct(zero_eps, sched, x0, 30, torch.zeros_like(x0), steps=4)
    assert seen == respaced_timesteps(31, 4)                  # the network sees the original timestep indices
    assert torch.allclose(out, x0, atol=1e-6)                 # eps = 0 and no noise: x0 comes back exactly
    seen.clear()
    y = torch.full((1, 1, 8, 8), 0.25)
    den, t0 = denoise_observation(zero_eps, sched, y, float(noise_to_signal(sched)[12]), steps=3)
    assert t0 == 12 and seen[0] == 12 and torch.allclose(den, y, atol=1e-5)
    with pytest.raises(SynthpairError, match="t\\*=100"):
        PartialSchedule(sched, 100)
