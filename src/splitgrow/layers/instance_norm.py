"""``nn.InstanceNorm1d/2d/3d``: each channel of each sample normalised over its own positions.

Channel j in is channel j out, and no other channel enters it, so the split channels' offspring pass it separately,
as they pass an activation. Without running statistics (torch's default) it is a smooth function of the channel's
values at every position (it mixes positions, not channels): a segment site differentiates through it, exactly. With
``track_running_stats`` it normalises by the running statistics in eval mode, an affine map per channel like an eval
BatchNorm. A split copies the channel's affine weight and bias and running statistics. A 2-D input is refused: torch
reads (C, L) as one unbatched sample, whose first dimension is then no batch dimension.
"""

from __future__ import annotations

from torch import nn

from .base import LINEAR, PER_CHANNEL, SMOOTH, ChannelMap, LayerHandler

#: the rank of a batched input
_BATCHED_RANK = {nn.InstanceNorm1d: 3, nn.InstanceNorm2d: 4, nn.InstanceNorm3d: 5}


class InstanceNormHandler(LayerHandler):
    types = tuple(_BATCHED_RANK)

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        rank = next(rank for cls, rank in _BATCHED_RANK.items() if isinstance(module, cls))
        if len(input_shape) != rank:
            return ChannelMap.refuse(
                f"{type(module).__name__} on an input of shape {input_shape} reads it as one unbatched sample"
            )
        nonlinearity = LINEAR if module.track_running_stats else SMOOTH
        return ChannelMap(PER_CHANNEL, input_dim=1, output_dim=1, nonlinearity=nonlinearity)

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        names = ["weight", "bias"] if module.affine else []
        if module.track_running_stats:
            names += ["running_mean", "running_var"]
        return [(name, 0) for name in names]

    def follows_channels(self, module: nn.Module) -> bool:
        return True  # torch warns when num_features differs from the input's channels, even without parameters

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        module.num_features = outputs if outputs is not None else inputs

    def new_channel_value(self, module: nn.Module, name: str) -> float:
        return 1.0 if name in ("weight", "running_var") else 0.0
