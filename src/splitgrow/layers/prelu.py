"""``nn.PReLU``: max(0, z) + a min(0, z) with a learned slope a, one for all channels or one per channel.

It keeps every channel to itself and is piecewise linear (a kink at 0, listed in ``Site.kinks``; its phi'' is 0, so
it adds no curvature of its own). With ``num_parameters = C`` the slope is indexed by the channels of dimension 1,
as torch applies it: a split copies the channel's slope to both offspring, which keeps the function; a brand-new
channel (a new neuron) gets the mean slope of the others. A single shared slope acts elementwise, so channels in any
dimension (a Linear's features on (N, T, D) tokens) pass it.
"""

from __future__ import annotations

from torch import nn

from .base import PER_CHANNEL, PIECEWISE_LINEAR, ChannelMap, LayerHandler


class PReLUHandler(LayerHandler):
    types = (nn.PReLU,)

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        if module.num_parameters == 1:
            return ChannelMap(PER_CHANNEL, input_dim=None, output_dim=None, nonlinearity=PIECEWISE_LINEAR)
        return ChannelMap(PER_CHANNEL, input_dim=1, output_dim=1, nonlinearity=PIECEWISE_LINEAR)

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("weight", 0)] if module.num_parameters > 1 else []

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        if module.num_parameters > 1:
            module.num_parameters = outputs if outputs is not None else inputs

    def new_channel_value(self, module: nn.Module, name: str) -> float:
        return float(module.weight.detach().mean())
