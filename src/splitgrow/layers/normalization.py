"""``nn.BatchNorm1d/2d/3d`` (and ``nn.SyncBatchNorm``, which DDP training uses; in eval mode it is the same map) in
eval mode: a per-channel affine map u = s z + b, s = gamma / sqrt(var + eps).

Splitting statistics are taken with the model in eval mode, where BatchNorm uses its running statistics; its
scale s then enters a neuron's splitting matrix as s^2 (MATH.md). A split copies the channel's gamma, beta and
running statistics exactly. Without running statistics BatchNorm normalises by each batch's statistics, which
mixes samples and is not a per-channel map of one sample: refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PER_CHANNEL, ChannelMap, LayerHandler


class BatchNormHandler(LayerHandler):
    types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        if not module.track_running_stats:
            return ChannelMap.refuse(
                f"{type(module).__name__} without running statistics normalises by the batch, not per sample"
            )
        return ChannelMap(PER_CHANNEL, input_dim=1, output_dim=1)

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        names = ["weight", "bias"] if module.affine else []
        return [(name, 0) for name in [*names, "running_mean", "running_var"]]

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        module.num_features = outputs if outputs is not None else inputs

    def new_channel_value(self, module: nn.Module, name: str) -> float:
        return 1.0 if name in ("weight", "running_var") else 0.0

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        return 0  # folded into the convolution at inference; negligible against it


def batch_norm_scale(module: nn.Module) -> Tensor:
    """s = gamma / sqrt(running_var + eps), per channel (gamma = 1 without affine parameters)."""
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.affine:
        scale = module.weight * scale
    return scale.detach()
