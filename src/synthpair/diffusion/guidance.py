"""Classifier-free guidance as a small combiner around a network (no fork of the sampling loop).

DSDM eq. (17) (Ho & Salimans 2022): ``eps_hat = eps(x_t | y) + w (eps(x_t | y) - eps(x_t | null))``.
We parameterise it with the guidance *scale* ``s = 1 + w``:

    out = out_null + s * (out_cond - out_null)

so ``s = 1`` is exactly the conditional prediction (no guidance), ``s = 0`` the unconditional one and
``s = 3`` (the default of ``synthpair generate --guidance``) is the paper's ``w = 2``. The combination is
linear, so it applies equally to eps-, v- or x0-predictions. With a learned variance (2·C output channels,
Improved DDPM) only the first C (mean) channels are combined; the variance channels are the conditional ones.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .cond import Cond


def classifier_free(model: Callable[..., torch.Tensor], scale: float, mean_channels: int | None = None
                    ) -> Callable[..., torch.Tensor]:
    """Wrap ``model(x_t, t, cond)`` into its guided version with scale ``s`` (see module docstring).

    ``mean_channels``: number of leading output channels that carry the mean prediction (None: all). The
    conditional and null predictions are computed in one doubled batch (2B rows).
    """
    scale = float(scale)

    def guided(x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if scale == 1.0:
            return model(x_t, t, cond)
        if not isinstance(cond, Cond):
            raise TypeError("classifier-free guidance needs a Cond with the conditions to drop")
        b = x_t.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x_t.device)
        fields = {f: None if getattr(cond, f) is None else torch.cat([getattr(cond, f)] * 2)
                  for f in Cond.FIELDS if f != "drop"}  # every condition (mask, tokens, control, ...) doubled
        both = Cond(**fields, drop=drop)
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        out_c, out_u = out[:b], out[b:]
        c = out.shape[1] if mean_channels is None else mean_channels
        mean = out_u[:, :c] + scale * (out_c[:, :c] - out_u[:, :c])
        return torch.cat([mean, out_c[:, c:]], dim=1) if c < out.shape[1] else mean

    return guided
