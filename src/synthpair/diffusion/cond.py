"""``Cond``: the typed conditioning container every network receives as ``forward(x_t, t, cond)``.

Fields (all optional; each network says which it needs in ``network.needs``):

- ``mask``: int64 (B, H, W) label map with values in ``0..K`` (K = num_classes - 1), the semantic mask;
- ``reference``: float (B, C, H, W) in [-1, 1], the reference image (DSDM, sec. III-B) — or, once encoded,
  ``reference_embedding`` float (B, D);
- ``drop``: bool (B,) — rows whose conditions are replaced by the null condition (classifier-free guidance,
  Ho & Salimans 2022; DSDM sec. III-C). ``None`` means no row is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Cond:
    """Conditions of one batch (see module docstring for shapes and ranges)."""

    mask: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    reference_embedding: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    def with_drop(self, drop: torch.Tensor | None) -> "Cond":
        """The same conditions with another ``drop`` flag vector (bool (B,)) — used by the guidance combiner."""
        return replace(self, drop=drop)

    def rows(self, idx: slice | torch.Tensor) -> "Cond":
        """The conditions of the selected rows (a DDP shard or a sub-batch)."""
        def pick(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[idx]

        return Cond(pick(self.mask), pick(self.reference), pick(self.reference_embedding), pick(self.drop))

    def batch_size(self) -> int | None:
        for v in (self.mask, self.reference, self.reference_embedding, self.drop):
            if v is not None:
                return int(v.shape[0])
        return None


def null_cond_flags(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free-guidance dropout: bool (B,) where each row is True (null condition) with probability ``p``.

    Drawn from ``generator`` (CPU) for the whole global batch, so every DDP rank draws the same flags.
    """
    u = torch.rand((batch,), generator=generator)
    return u < p
