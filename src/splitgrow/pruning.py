"""The pruning baselines of the paper, with torch-pruning: network slimming and L1-norm filter pruning.

* ``"bn"`` -- network slimming (Liu et al. 2017): train with an L1 penalty on BatchNorm scales, then remove the
  channels with the smallest scales, one threshold over all layers (global pruning);
* ``"l1"`` -- L1-norm filter pruning (Li et al. 2017): in every layer the same fraction of filters, those with the
  smallest L1 norms.

torch-pruning's ``DependencyGraph`` removes coupled channels together (BatchNorm, depthwise convolutions, the next
layer's inputs). To compare with splitting at equal size, :func:`prune_to_ratio` searches the channel-pruning ratio
whose result has the requested fraction of the full network's parameters.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from .errors import SplitgrowError
from .surgery import parameter_count

PRUNING_METHODS = ("bn", "l1")
LABELS = {"bn": "BN-prune (network slimming)", "l1": "L1-prune (filter norms)"}


def _prune(model: nn.Module, example_input: torch.Tensor, method: str, ratio: float, max_ratio: float) -> nn.Module:
    pruned = copy.deepcopy(model)
    if method == "bn":
        importance, global_pruning = tp.importance.BNScaleImportance(), True
    elif method == "l1":
        importance, global_pruning = tp.importance.MagnitudeImportance(p=1), False
    else:
        raise SplitgrowError(f"unknown pruning method {method!r}; choose one of: {', '.join(PRUNING_METHODS)}")
    classifier = getattr(pruned, "classifier", None)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example_input,
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        max_pruning_ratio=max_ratio,
        ignored_layers=[classifier] if classifier is not None else [],
    )
    pruner.step()
    return pruned


def prune_to_ratio(
    model: nn.Module,
    example_input: torch.Tensor,
    method: str,
    target_ratio: float,
    *,
    reference_parameters: int | None = None,
    max_ratio: float = 0.9,
    steps: int = 20,
) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` with about ``target_ratio`` of ``reference_parameters`` (default: the model's
    own count), found by bisection on the channel-pruning ratio; returns (pruned model, achieved ratio)."""
    if not 0 < target_ratio <= 1:
        raise ValueError(f"target_ratio must be in (0, 1], got {target_ratio}")
    reference = reference_parameters or parameter_count(model)
    was_training = model.training
    model.eval()
    try:
        low, high = 0.0, max_ratio
        best = copy.deepcopy(model)
        best_ratio = parameter_count(best) / reference
        if best_ratio <= target_ratio:
            return best, best_ratio
        for _ in range(steps):
            middle = 0.5 * (low + high)
            candidate = _prune(model, example_input, method, middle, max_ratio)
            ratio = parameter_count(candidate) / reference
            if abs(ratio - target_ratio) < abs(best_ratio - target_ratio):
                best, best_ratio = candidate, ratio
            if ratio > target_ratio:
                low = middle
            else:
                high = middle
            if abs(ratio - target_ratio) < 0.005 * target_ratio:
                break
    finally:
        model.train(was_training)
    best.train(was_training)
    return best, best_ratio
