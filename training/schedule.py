"""Learning-rate schedule: linear warmup, then cosine / linear decay to a floor, or constant."""

from __future__ import annotations

import math
from functools import partial


def lr_multiplier(
    step: int, warmup_steps: int, max_steps: int, decay: str = "cosine", min_lr_ratio: float = 0.1
) -> float:
    """Factor on the peak learning rate for optimizer update number `step` (0-based).

    Warmup ramps linearly so update `warmup_steps - 1` is the first at full rate (update 0 already
    moves, at 1/warmup of it). Decay then runs from 1 to `min_lr_ratio` at update `max_steps - 1`
    and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    decay_updates = max_steps - 1 - warmup_steps
    progress = 1.0 if decay_updates <= 0 else min(1.0, (step - warmup_steps) / decay_updates)
    if decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif decay == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown lr decay {decay!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def lr_lambda(warmup_steps: int, max_steps: int, decay: str, min_lr_ratio: float):
    """`lr_multiplier` with the schedule fixed, for torch.optim.lr_scheduler.LambdaLR."""
    return partial(
        lr_multiplier, warmup_steps=warmup_steps, max_steps=max_steps, decay=decay, min_lr_ratio=min_lr_ratio
    )
