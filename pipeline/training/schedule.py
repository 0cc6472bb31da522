"""Learning-rate schedule: linear warmup then cosine decay to a floor (NeMo's CosineAnnealing shape)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.05) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): 0 -> 1 over `warmup`, then cosine to `floor`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
