"""The learning-rate schedule every trainer uses: linear warm-up, then a half cosine that
reaches its floor exactly at the last step. (`param_groups`, re-exported here, lives in
`clipkit.training.params`.)"""
from __future__ import annotations

import math

from clipkit.training.params import param_groups  # noqa: F401 - its former home


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at step `step` (0-based) of `total`: (step + 1) /
    warmup during the warm-up, then a half cosine from 1 down to `min_ratio` at step total - 1."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = total - warmup - 1  # steps after the first decay step
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Multiplier of the peak learning rate at step s: (s + 1) / warmup during the
    warm-up, then a half cosine from 1 down to `min_ratio` at the last step.

    A plain callable object so `LambdaLR.state_dict()` saves it with the run.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        self.warmup, self.total, self.min_ratio = int(warmup), int(total), float(min_ratio)

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup, self.total, self.min_ratio)
