"""The learning-rate schedule every trainer shares (`hope train`, the synthetic suites of `hope bench`).

A pure function of the step: linear warmup from 0 over `warmup_steps`, then a cosine from the peak down
to `min_lr_ratio` of it at `steps`. Kept below both trainers so neither imports the other.
"""

from __future__ import annotations

import math


def lr_at(step: int, cfg) -> float:
    """Learning-rate multiplier at `step` (0-based).

    Args:
        step: optimizer steps taken so far.
        cfg: anything with `steps`, `warmup_steps` and `min_lr_ratio` (a `TrainConfig`).
    Returns:
        a factor in [min_lr_ratio, 1] for the peak learning rate.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
