"""Duration-based batching: sort a window of inputs by length, cut it into batches whose padded
audio stays under a budget, so the model wastes little compute on padding."""
from __future__ import annotations

from collections.abc import Sequence

DEFAULT_BATCH_SECONDS = 600.0  # padded audio seconds per model call (~40 utterances of 15 s)


def plan_batches(durations: Sequence[float], max_seconds: float) -> list[list[int]]:
    """Indices of `durations` (seconds) grouped into batches, shortest first.

    Each batch's padded cost, len(batch) * longest item, is at most `max_seconds`, except that an
    item longer than the budget gets a batch of its own. Every index appears exactly once.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = durations[i]  # sorted ascending: the newcomer is the longest so far
        if current and (len(current) + 1) * longest > max_seconds:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
