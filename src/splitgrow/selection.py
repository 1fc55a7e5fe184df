"""Which neurons to split: at most m_* of them, with the smallest indexes, all below the threshold lambda_*."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def validate_selection(max_count: int, threshold: float) -> None:
    """Raise ValueError unless m_* >= 1 and lambda_* <= 0 (the two rules of Algorithm 1)."""
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise ValueError(f"m_* (the most neurons split per step) must be an integer >= 1, got {max_count!r}")
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold > 0:
        raise ValueError(
            f"lambda_* (the splitting-index threshold) must be <= 0, got {threshold!r}: a neuron with a "
            "non-negative index cannot lower the loss by splitting"
        )


def select_neurons(indexes: Tensor, max_count: int, threshold: float = 0.0) -> Tensor:
    """Positions of the neurons to split, most negative index first.

    Args:
        indexes: (n,) splitting indexes; NaN entries are never selected.
        max_count: m_*, the most neurons to return (>= 1).
        threshold: lambda_* <= 0; only neurons with index strictly below it are returned.

    Returns:
        A 1-D long tensor of at most ``max_count`` positions into ``indexes``, sorted by increasing index
        (ties broken by position, so the result is deterministic).
    """
    validate_selection(max_count, threshold)
    if indexes.dim() != 1:
        raise ValueError(f"indexes must be 1-D, got shape {tuple(indexes.shape)}")
    order = torch.argsort(indexes, stable=True)
    eligible = order[indexes[order] < threshold]
    return eligible[:max_count].clone()
