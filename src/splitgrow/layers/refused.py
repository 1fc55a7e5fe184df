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
    (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer): (
        "torch's fused transformer layers hide their MLP; write the block with Linear layers to grow its MLP"
    ),
    (nn.Embedding, nn.EmbeddingBag): "embedding rows are not neurons (no activation follows them)",
    (nn.RNNBase,): "recurrent layers are not supported",
    (nn.ConvTranspose3d,): "is not supported yet (Conv1d/2d/3d and ConvTranspose1d/2d are)",
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
