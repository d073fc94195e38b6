"""The learning-rate schedule both stages train with, so that they warm up and decay by the same tested rule."""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine", warmup_start: float = 0.001,
              milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``step``.

    Linear warmup from ``warmup_start`` over ``warmup`` steps, then either a
    half cosine to 0 at ``total`` (``cosine``), or a step decay by ``gamma``
    at each milestone (``step``), or constant (``constant``).
    """
    if warmup > 0 and step < warmup:
        alpha = step / warmup
        warm = warmup_start * (1 - alpha) + alpha
    else:
        warm = 1.0
    if schedule == "cosine":
        progress = min(max(step, 0) / max(total, 1), 1.0)
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return warm * gamma ** sum(step >= m for m in milestones)
    if schedule == "constant":
        return warm
    raise ValueError(f"unknown schedule {schedule!r}: expected cosine, step or constant")
