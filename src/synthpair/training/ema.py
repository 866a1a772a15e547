"""Exponential moving average of network weights (the weights that get exported and sampled from).

Update (Polyak averaging): ``ema <- d * ema + (1 - d) * theta``. For short runs the decay is warmed up as
``d_step = min(decay, (1 + step) / (10 + step))`` (the schedule of TensorFlow's ExponentialMovingAverage with
``num_updates``), so the average is not dominated by the random initialisation after a few hundred steps.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """Decay used for the update after optimizer step ``step`` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode."""
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema_p <- decay * ema_p + (1 - decay) * p`` for all parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach().to(e.dtype), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
