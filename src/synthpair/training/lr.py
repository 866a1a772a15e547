"""Learning-rate schedules of the generator trainer: the factor multiplying ``TrainConfig.lr`` at each step.

``constant`` (the schedule of every run before issue 12): linear warm-up over ``warmup_steps``, then 1. Resuming a
finished run to more steps is exact, since the factor does not depend on the run's length.

``cosine`` (Loshchilov & Hutter 2017, SGDR without restarts; the decay of guided-diffusion / EDM fine-tuning recipes):
after the warm-up, ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p = (s - warmup) / (steps - warmup)``
in [0, 1], so the rate falls from ``lr`` to ``min_ratio * lr`` at the last step. The factor depends on ``steps``:
a cosine run resumes only to the same number of steps (the trainer refuses another ``steps``).
"""
from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def lr_factor(step: int, *, warmup_steps: int, steps: int, schedule: LRSchedule = "constant",
              min_ratio: float = 0.0) -> float:
    """Factor on the base LR for optimizer step ``step`` (0-based; torch's ``LambdaLR`` calls it with the number of
    steps taken so far). Warm-up: ``(step + 1) / warmup_steps`` while below 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule != "cosine":
        raise ValueError(f"unknown LR schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    span = max(steps - 1 - max(warmup_steps, 0), 1)
    p = min(max(step - max(warmup_steps, 0), 0) / span, 1.0)
    return warm * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


__all__ = ["LRSchedule", "LR_SCHEDULES", "lr_factor"]
