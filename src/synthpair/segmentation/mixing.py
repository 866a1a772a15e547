"""Mixing strategies: how each training batch is drawn from real and synthetic pairs.

A strategy answers ``batch(step, generator) -> (images float32 (B, C, H, W) in [-1, 1], masks int64 (B, H, W))``
and is the only thing that differs between the settings compared, so every setting runs the same number
of optimizer steps with the same batch size (compute-matched comparisons). New strategies (patch-mixing,
per-real-image replacement probability, pretrain-then-finetune) plug in by implementing
:class:`MixingStrategy` and registering in :func:`make_mixing`.

Sampling within a pool is epoch-style: indices come from successive seeded permutations of the pool, so
every pair of a pool is seen equally often (± 1) whatever the batch size.
"""
from __future__ import annotations

from typing import Protocol

import torch


class MixingStrategy(Protocol):
    name: str

    def batch(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch number ``step`` (0-based) drawn with ``generator`` (CPU)."""
        ...

    def describe(self) -> dict:
        """JSON-able description for results.json (strategy, pool sizes, parameters)."""
        ...


class PoolStream:
    """Endless stream of indices into a pool of ``n`` items: concatenated seeded permutations."""

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise ValueError("cannot draw from an empty pool")
        self.n = n
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def take(self, k: int, generator: torch.Generator) -> torch.Tensor:
        out = []
        while k > 0:
            if self._pos >= len(self._order):
                self._order, self._pos = torch.randperm(self.n, generator=generator), 0
            got = self._order[self._pos:self._pos + k]
            self._pos += len(got)
            k -= len(got)
            out.append(got)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class RatioMixing:
    """Real + synthetic at ratio ``R`` = synthetic : real.

    Each of the ``batch_size`` slots of a batch is synthetic with probability ``R / (1 + R)`` (independent
    Bernoulli draws), else real; so in expectation a batch — and any run of batches — holds real and
    synthetic pairs in proportion ``1 : R`` (R = 0.5 → one third synthetic, R = 1 → half), which is the same
    mix as an epoch of ``n_real`` real plus ``R · n_real`` synthetic pairs. ``R = 0`` (or no synthetic pool)
    is real-only. The batch size and the number of steps do not depend on ``R``.
    """

    name = "ratio"

    def __init__(self, real_images: torch.Tensor, real_masks: torch.Tensor, batch_size: int, ratio: float = 0.0,
                 syn_images: torch.Tensor | None = None, syn_masks: torch.Tensor | None = None) -> None:
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        if ratio > 0 and (syn_images is None or len(syn_images) == 0):
            raise ValueError("ratio > 0 needs a non-empty synthetic pool")
        self.real = (real_images, real_masks)
        self.syn = (syn_images, syn_masks) if ratio > 0 else None
        self.batch_size, self.ratio = int(batch_size), float(ratio)
        self.p_synthetic = self.ratio / (1.0 + self.ratio)
        self._real_stream = PoolStream(len(real_images))
        self._syn_stream = PoolStream(len(syn_images)) if self.syn is not None else None

    def batch(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n_syn = 0
        if self.syn is not None:
            n_syn = int((torch.rand(self.batch_size, generator=generator) < self.p_synthetic).sum())
        ri = self._real_stream.take(self.batch_size - n_syn, generator)
        images, masks = [self.real[0][ri]], [self.real[1][ri]]
        if n_syn:
            si = self._syn_stream.take(n_syn, generator)  # type: ignore[union-attr]
            images.append(self.syn[0][si])  # type: ignore[index]
            masks.append(self.syn[1][si])  # type: ignore[index]
        return torch.cat(images), torch.cat(masks)

    def describe(self) -> dict:
        return {"strategy": self.name, "ratio": self.ratio, "p_synthetic_per_slot": self.p_synthetic,
                "n_real": len(self.real[0]), "n_synthetic": 0 if self.syn is None else len(self.syn[0])}


class SyntheticOnly:
    """Every batch from the synthetic pool only (the "train on synthetic, test on real" setting)."""

    name = "synthetic_only"

    def __init__(self, syn_images: torch.Tensor, syn_masks: torch.Tensor, batch_size: int) -> None:
        self.syn = (syn_images, syn_masks)
        self.batch_size = int(batch_size)
        self._stream = PoolStream(len(syn_images))

    def batch(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._stream.take(self.batch_size, generator)
        return self.syn[0][idx], self.syn[1][idx]

    def describe(self) -> dict:
        return {"strategy": self.name, "n_real": 0, "n_synthetic": len(self.syn[0])}


MIXINGS = ("ratio", "synthetic_only")


def make_mixing(name: str, *, real_images: torch.Tensor, real_masks: torch.Tensor, batch_size: int,
                ratio: float = 0.0, syn_images: torch.Tensor | None = None,
                syn_masks: torch.Tensor | None = None) -> MixingStrategy:
    """Build mixing strategy ``name`` (one of :data:`MIXINGS`) over the given pools."""
    if name == "ratio":
        return RatioMixing(real_images, real_masks, batch_size, ratio, syn_images, syn_masks)
    if name == "synthetic_only":
        if syn_images is None:
            raise ValueError("synthetic_only needs a synthetic pool")
        return SyntheticOnly(syn_images, syn_masks, batch_size)  # type: ignore[arg-type]
    raise ValueError(f"unknown mixing {name!r}; choose one of {', '.join(MIXINGS)}")
