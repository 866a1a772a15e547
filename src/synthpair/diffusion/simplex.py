"""Multi-scale simplex noise for the forward process (AnoDDPM, Wyatt et al. 2022), vectorised in torch.

AnoDDPM ("Anomaly detection with denoising diffusion probabilistic models using simplex noise", CVPRW 2022,
sec. 3.2) replaces the Gaussian noise of DDPM by *simplex noise*, a smooth gradient noise (Perlin 2001) summed
over octaves: ``n(x) = sum_{k<K} p^k S(2^k x / P)`` with K octaves, persistence ``p`` (amplitude ratio between
octaves, 0.8 in the paper), and a coarsest lattice period ``P`` (the paper: 64 px on 256 px images, i.e. a
quarter of the side, halved each octave; K = 6). Its low frequencies corrupt whole regions, so a model trained
and sampled with it must reconstruct large structures — which is what removes large anomalies.

2-D simplex noise ``S`` is Gustavson's formulation ("Simplex noise demystified", 2005) of Perlin's simplex
noise: skew the plane onto the triangular lattice (``F2 = (sqrt 3 - 1)/2``, ``G2 = (3 - sqrt 3)/6``), find the
three corners of the containing simplex, and sum ``max(0, 0.5 - |d|^2)^4 <g, d>`` over them, where ``g`` is a
pseudo-random gradient chosen by a permutation table (12 gradients, the edge midpoints of a cube, xy part) and
``d`` the offset to the corner; the sum is scaled by 70 to roughly [-1, 1]. Everything is elementwise, so a
whole batch × channels × octaves is one tensor expression (no Python loop over pixels).

Draws. Each (image, channel, octave) gets its own random translation of the lattice, uniform in [0, 256)² —
the permutation table repeats every 256 lattice cells, so translations give distinct realisations (AnoDDPM
slices a 3-D noise at random depths to the same end). The translations come from a CPU ``torch.Generator``
(one per image when a list is given), so a draw is reproducible per image like the Gaussian noise of the
sampling loop. After summing the octaves each (image, channel) field is standardised to zero mean and unit
variance — the forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` needs unit-variance noise.

Speed (bench/simplex_speed.py; one draw of 16 × 1 × 64 × 64 px with 6 octaves, 1 thread on the loaded
2-core CPU, best of repeats): this torch implementation 0.045 s wall (0.024 s CPU); ``opensimplex`` 0.4.5.1
(``noise2array`` per image × channel × octave) 5.0 s without numba (its per-pixel Python loop: 105× slower) and
0.011 s with numba 0.68 after a 2.1 s JIT compilation on first use. numba + llvmlite are ~200 MB and a compiler
in the loop, and 0.045 s is a few percent of one training step of the small U-Net, so the torch version is kept
(it also runs on the GPU with the batch); opensimplex is not a dependency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import fail

F2 = 0.5 * (math.sqrt(3.0) - 1.0)
G2 = (3.0 - math.sqrt(3.0)) / 6.0
# Gustavson's 12 gradients (cube edge midpoints); 2-D noise uses their x, y components.
_GRAD3 = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (0, 1), (0, -1))


@dataclass(frozen=True)
class SimplexConfig:
    """Multi-scale simplex noise (AnoDDPM): ``octaves`` K, ``persistence`` p (amplitude of octave k = p^k),
    ``period`` = the coarsest octave's lattice period as a fraction of the image side (AnoDDPM: 64 px of 256 =
    0.25); octave k has period ``period / 2^k``. ``seed`` fixes the permutation table (the gradients)."""

    octaves: int = 6
    persistence: float = 0.8
    period: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.octaves <= 12:
            raise fail(f"simplex.octaves={self.octaves}: must be between 1 and 12")
        if not 0.0 < self.persistence <= 1.0:
            raise fail(f"simplex.persistence={self.persistence}: must be in (0, 1]")
        if not 0.0 < self.period <= 4.0:
            raise fail(f"simplex.period={self.period}: the coarsest period as a fraction of the image side, in (0, 4]")


def permutation_table(seed: int = 0) -> torch.Tensor:
    """The doubled permutation table ``perm`` int64 (512,) of simplex noise: a seeded permutation of 0..255
    repeated twice (so ``perm[i + perm[j]]`` never needs a modulo)."""
    g = torch.Generator().manual_seed(int(seed))
    p = torch.randperm(256, generator=g)
    return torch.cat([p, p])


def simplex2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """2-D simplex noise at points ``(x, y)`` (float tensors of one shape, lattice units) → the same shape,
    values in about [-1, 1] (Gustavson 2005; see module docstring). ``perm``: :func:`permutation_table`."""
    dt = x.dtype
    perm = perm.to(x.device)
    grads = torch.tensor(_GRAD3, dtype=dt, device=x.device)
    s = (x + y) * F2
    i = torch.floor(x + s)
    j = torch.floor(y + s)
    t = (i + j) * G2
    x0 = x - (i - t)
    y0 = y - (j - t)
    i1 = (x0 > y0).to(dt)        # lower triangle (x0 > y0): next corner (1, 0), else (0, 1)
    j1 = 1.0 - i1
    x1, y1 = x0 - i1 + G2, y0 - j1 + G2
    x2, y2 = x0 - 1.0 + 2.0 * G2, y0 - 1.0 + 2.0 * G2
    ii = i.long() & 255
    jj = j.long() & 255
    i1l, j1l = i1.long(), j1.long()
    g0 = perm[ii + perm[jj]] % 12
    g1 = perm[ii + i1l + perm[jj + j1l]] % 12
    g2 = perm[ii + 1 + perm[jj + 1]] % 12

    def corner(g: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        w = torch.clamp(0.5 - dx * dx - dy * dy, min=0.0)
        w = w * w
        return w * w * (grads[g, 0] * dx + grads[g, 1] * dy)

    return 70.0 * (corner(g0, x0, y0) + corner(g1, x1, y1) + corner(g2, x2, y2))


def _offsets(b: int, c: int, k: int, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Lattice translations float64 (B, C, K, 2) in [0, 256): one per image (row), channel and octave."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand((b, c, k, 2), generator=generator, dtype=torch.float64) * 256.0
    gens = list(generator)
    if len(gens) != b:
        raise fail(f"simplex noise: got {len(gens)} generators for a batch of {b}; pass one per image")
    return torch.stack([torch.rand((c, k, 2), generator=g, dtype=torch.float64) for g in gens]) * 256.0


def simplex_octaves(shape: Sequence[int], cfg: SimplexConfig = SimplexConfig(),
                    generator: torch.Generator | Sequence[torch.Generator] | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The raw octaves of a draw: float32 (B, C, K, H, W); octave k is ``S`` on a lattice of period
    ``cfg.period · max(H, W) / 2^k`` pixels, translated by its own random offset (not yet weighted or
    normalised; :func:`simplex_noise` = the standardised ``sum_k p^k octave_k``)."""
    if len(shape) != 4:
        raise fail(f"simplex noise: shape {tuple(shape)} must be (B, C, H, W)")
    b, c, h, w = (int(v) for v in shape)
    k = cfg.octaves
    off = _offsets(b, c, k, generator).to(device)
    side = float(max(h, w))
    scale = torch.tensor([2.0 ** o / (cfg.period * side) for o in range(k)], dtype=torch.float64, device=device)
    ys = torch.arange(h, dtype=torch.float64, device=device)
    xs = torch.arange(w, dtype=torch.float64, device=device)
    # (B, C, K, H, W) lattice coordinates in float64 (offsets up to 256 + fine octaves need the precision)
    X = xs.view(1, 1, 1, 1, w) * scale.view(1, 1, k, 1, 1) + off[..., 0].view(b, c, k, 1, 1)
    Y = ys.view(1, 1, 1, h, 1) * scale.view(1, 1, k, 1, 1) + off[..., 1].view(b, c, k, 1, 1)
    X, Y = torch.broadcast_tensors(X, Y)
    return simplex2d(X, Y, permutation_table(cfg.seed)).float()


def simplex_noise(shape: Sequence[int], cfg: SimplexConfig = SimplexConfig(),
                  generator: torch.Generator | Sequence[torch.Generator] | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Multi-scale simplex noise float32 (B, C, H, W): ``sum_k p^k octave_k`` (:func:`simplex_octaves`), each
    (image, channel) field standardised to mean 0 and variance 1 (population variance over its H·W pixels).

    ``generator``: one CPU generator for the batch, or one per image (row i then depends only on its own), or
    None (the global RNG). Drop-in for ``torch.randn`` in ``q_sample`` (AnoDDPM's forward process)."""
    oct_ = simplex_octaves(shape, cfg, generator, device)
    amp = torch.tensor([cfg.persistence ** o for o in range(cfg.octaves)], dtype=oct_.dtype, device=oct_.device)
    n = (oct_ * amp.view(1, 1, -1, 1, 1)).sum(dim=2)
    mean = n.mean(dim=(-2, -1), keepdim=True)
    std = n.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (n - mean) / std.clamp_min(1e-8)


def draw_noise(kind: str, shape: Sequence[int], generator: torch.Generator | Sequence[torch.Generator] | None,
               cfg: SimplexConfig = SimplexConfig(), device: torch.device | str = "cpu") -> torch.Tensor:
    """Forward-process noise of ``kind`` "gaussian" (``torch.randn``; a list of generators draws row by row) or
    "simplex" (:func:`simplex_noise`) → float32 (B, C, H, W) on ``device``."""
    if kind == "gaussian":
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn(tuple(shape), generator=generator).to(device)
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator]).to(device)
    if kind == "simplex":
        return simplex_noise(shape, cfg, generator, device)
    raise fail(f"noise {kind!r}: choose 'gaussian' or 'simplex'")


__all__ = ["SimplexConfig", "draw_noise", "permutation_table", "simplex2d", "simplex_noise", "simplex_octaves"]
