"""Layers splitgrow refuses to grow through, each with the reason a user needs to restructure or exclude them."""

from __future__ import annotations

from torch import nn

from .base import ChannelMap, LayerHandler

_REASONS: dict[tuple[type[nn.Module], ...], str] = {
    (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm): (
        "normalises across channels: a split would change the other channels' outputs"
    ),
    (nn.MultiheadAttention,): (
        "attention heads are not growable by splitting (a head is not a neuron with one output channel); "
        "grow the MLP blocks and keep attention as it is"
    ),
    # torch's own classes are traced through (layers/transformer.py); a subclass with its own forward is not
    (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder): (
        "a subclass of torch's transformer module with its own forward (or blocks), traced as one call: keep torch's "
        "forward or write the block with Linear layers to grow its MLP"
    ),
    (nn.Transformer,): (
        "a subclass of nn.Transformer with its own forward, traced as one call: keep torch's forward or write the "
        "blocks with Linear layers to grow their MLPs"
    ),
    (nn.Embedding, nn.EmbeddingBag): "embedding rows are not neurons (no activation follows them)",
    (nn.RNNBase,): (
        "recurrent layers are not supported: the layers that feed it keep their width, the layers after it grow"
    ),
}
if hasattr(nn, "RMSNorm"):
    _REASONS[(nn.RMSNorm,)] = _REASONS[(nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)]


class RefusedHandler(LayerHandler):
    types = tuple(cls for classes in _REASONS for cls in classes)

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        for classes, reason in _REASONS.items():
            if isinstance(module, classes):
                return ChannelMap.refuse(f"{type(module).__name__}: {reason}")
        raise AssertionError(type(module))
