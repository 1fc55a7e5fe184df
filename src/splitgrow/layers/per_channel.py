"""Stateless layers that keep every channel to itself: activations, pooling, dropout, identity, upsampling.

None of them has a tensor indexed by channels, so a split passes through them unchanged; the graph only needs
to know whether they are linear (average pooling, dropout in eval mode), piecewise-linear (ReLU, max pooling) or
smooth (Tanh): a smooth one after a split sees each offspring separately, which the statistics must account for.
Dropout and identity act elementwise (in eval mode), so their channels may be in any dimension (the last one of a
Linear's (N, T, D) tokens); pooling and upsampling read channels in dimension 1 and mix positions in the others.
"""

from __future__ import annotations

from torch import nn

from .activations import activation_of_module
from .base import LINEAR, PER_CHANNEL, PIECEWISE_LINEAR, SMOOTH, ChannelMap, LayerHandler

#: identity in eval mode, elementwise in every dimension
_ELEMENTWISE = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_LINEAR = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Upsample,
)
_PIECEWISE_LINEAR = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


class PerChannelHandler(LayerHandler):
    """Dropout and identity: elementwise; pooling and upsampling: channel dim 1 in and out (the last for a 2-D
    tensor)."""

    types = _ELEMENTWISE + _LINEAR + _PIECEWISE_LINEAR

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        if isinstance(module, _ELEMENTWISE):
            return ChannelMap(PER_CHANNEL, input_dim=None, output_dim=None, nonlinearity=LINEAR)
        kind = PIECEWISE_LINEAR if isinstance(module, _PIECEWISE_LINEAR) else LINEAR
        return ChannelMap(PER_CHANNEL, input_dim=1, output_dim=1, nonlinearity=kind)


class ActivationHandler(LayerHandler):
    """Elementwise activation modules of the activation table (:mod:`splitgrow.layers.activations`): they keep
    every dimension, so any channel dimension passes through."""

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        activation = activation_of_module(module)
        kind = LINEAR if activation.name == "identity" else PIECEWISE_LINEAR if activation.curvature_free else SMOOTH
        return ChannelMap(PER_CHANNEL, input_dim=None, output_dim=None, nonlinearity=kind)
