"""``Cond``: the typed conditioning container every network receives as ``forward(x_t, t, cond)``.

Fields (all optional; each network says which it needs in ``network.needs``):

- ``mask``: int64 (B, H, W) label map with values in ``0..K`` (K = num_classes - 1), the semantic mask;
- ``reference``: float (B, C, H, W) in [-1, 1], the reference image (DSDM, sec. III-B) — or, once encoded,
  ``reference_embedding`` float (B, D);
- ``drop``: bool (B,) — rows whose conditions are replaced by the null condition (classifier-free guidance,
  Ho & Salimans 2022; DSDM sec. III-C). ``None`` means no row is dropped;
- ``mask_channels``: float (B, K, H, W) in [-1, 1], a *continuous* foreground one-hot (the joint/packed
  representation); networks that read ``mask`` use it instead when given (PIG feeds the guider's x0_hat here);
- ``label``: int64 (B,) a class index per row (cluster-conditioned joint models of seed 002);
- ``tokens``: int64 (B, L) prompt token ids, 0 = padding (prompt-conditioned models of EMIT-Diff);
- ``control``: float (B, E, H, W) a spatial control map, e.g. an edge map in [0, 1] (ControlNet branch).
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
    mask_channels: torch.Tensor | None = None
    label: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    control: torch.Tensor | None = None

    FIELDS = ("mask", "reference", "reference_embedding", "drop", "mask_channels", "label", "tokens", "control")

    def with_drop(self, drop: torch.Tensor | None) -> "Cond":
        """The same conditions with another ``drop`` flag vector (bool (B,)) — used by the guidance combiner."""
        return replace(self, drop=drop)

    def rows(self, idx: slice | torch.Tensor) -> "Cond":
        """The conditions of the selected rows (a DDP shard or a sub-batch)."""
        def pick(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[idx]

        return Cond(**{f: pick(getattr(self, f)) for f in self.FIELDS})

    def to(self, device: torch.device | str) -> "Cond":
        """The same conditions with every tensor moved to ``device``."""
        return Cond(**{f: None if getattr(self, f) is None else getattr(self, f).to(device) for f in self.FIELDS})

    def batch_size(self) -> int | None:
        for v in (getattr(self, f) for f in self.FIELDS):
            if v is not None:
                return int(v.shape[0])
        return None


def null_cond_flags(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free-guidance dropout: bool (B,) where each row is True (null condition) with probability ``p``.

    Drawn from ``generator`` (CPU) for the whole global batch, so every DDP rank draws the same flags.
    """
    u = torch.rand((batch,), generator=generator)
    return u < p
