"""torch's transformer modules, traced through: their feed-forward hidden units become sites.

``nn.TransformerEncoderLayer`` and its relatives check, at the top of ``forward``, whether a fused fast path applies
(tensor shapes, dtypes, ``torch.is_grad_enabled()``): Python decisions on tensor properties that ``torch.fx`` cannot
trace, and that would hide ``linear1``/``linear2`` inside one opaque call if it could. The tracer uses instead the
layer's own arithmetic as it runs in training (the path torch takes whenever gradients are on, as the statistics
run; the fast path gives the same outputs, but at padded positions of an encoder that packs its input into nested
tensors, which it leaves at zero): attention blocks stay single calls to ``nn.MultiheadAttention`` (not growable, so the
residual stream does not grow either, like every stream under a LayerNorm), and the feed-forward block
``linear2(dropout(activation(linear1(x))))`` is an ordinary site: its hidden units split as any MLP's do.

Masks go to ``nn.MultiheadAttention`` as given, which brings them to one form itself; ``is_causal`` is passed on as
the hint it is (``None`` as ``False``: a causal mask given explicitly is applied either way). A subclass that
overrides ``forward`` or one of the blocks it calls keeps its own forward: it is traced as one call and refused,
since only the arithmetic of torch's own classes is known here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

#: a traced form: called as ``form(module, *args, **kwargs)`` in place of ``module(*args, **kwargs)``
TracedForm = Callable[..., Any]


def _self_attention(layer: nn.Module, x: Tensor, mask: Any, padding_mask: Any, is_causal: Any) -> Tensor:
    out = layer.self_attn(
        x, x, x, attn_mask=mask, key_padding_mask=padding_mask, need_weights=False, is_causal=bool(is_causal)
    )[0]
    return layer.dropout1(out)


def _feed_forward(layer: nn.Module, x: Tensor, dropout_out: nn.Module) -> Tensor:
    return dropout_out(layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))


def _sublayers(layer: nn.Module, x: Tensor, blocks: list[tuple[nn.Module, Callable[[Tensor], Tensor]]]) -> Tensor:
    """Each (norm, block) as a residual sublayer: ``x + block(norm(x))`` with ``norm_first`` (pre-LN), else
    ``norm(x + block(x))`` (post-LN), in turn."""
    for norm, block in blocks:
        x = x + block(norm(x)) if layer.norm_first else norm(x + block(x))
    return x


def _stacked(stack: nn.Module, x: Tensor, call: Callable[[nn.Module, Tensor], Tensor]) -> Tensor:
    """A stack's layers in turn (each call traced again, through its own form), then its norm if it has one."""
    for layer in stack.layers:
        x = call(layer, x)
    return x if stack.norm is None else stack.norm(x)


def encoder_layer(
    layer: nn.TransformerEncoderLayer,
    src: Tensor,
    src_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """``nn.TransformerEncoderLayer.forward`` as it runs with gradients on."""
    return _sublayers(
        layer,
        src,
        [
            (layer.norm1, lambda x: _self_attention(layer, x, src_mask, src_key_padding_mask, is_causal)),
            (layer.norm2, lambda x: _feed_forward(layer, x, layer.dropout2)),
        ],
    )


def decoder_layer(
    layer: nn.TransformerDecoderLayer,
    tgt: Tensor,
    memory: Tensor,
    tgt_mask: Tensor | None = None,
    memory_mask: Tensor | None = None,
    tgt_key_padding_mask: Tensor | None = None,
    memory_key_padding_mask: Tensor | None = None,
    tgt_is_causal: bool = False,
    memory_is_causal: bool = False,
) -> Tensor:
    """``nn.TransformerDecoderLayer.forward`` (self-attention, attention over ``memory``, feed-forward)."""

    def cross_attention(x: Tensor) -> Tensor:
        out = layer.multihead_attn(
            x,
            memory,
            memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
            is_causal=bool(memory_is_causal),
            need_weights=False,
        )[0]
        return layer.dropout2(out)

    return _sublayers(
        layer,
        tgt,
        [
            (layer.norm1, lambda x: _self_attention(layer, x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)),
            (layer.norm2, cross_attention),
            (layer.norm3, lambda x: _feed_forward(layer, x, layer.dropout3)),
        ],
    )


def encoder(
    stack: nn.TransformerEncoder,
    src: Tensor,
    mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool | None = None,
) -> Tensor:
    """``nn.TransformerEncoder.forward``: its layers in turn, then its norm."""
    return _stacked(
        stack,
        src,
        lambda layer, x: layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal)),
    )


def decoder(
    stack: nn.TransformerDecoder,
    tgt: Tensor,
    memory: Tensor,
    tgt_mask: Tensor | None = None,
    memory_mask: Tensor | None = None,
    tgt_key_padding_mask: Tensor | None = None,
    memory_key_padding_mask: Tensor | None = None,
    tgt_is_causal: bool | None = None,
    memory_is_causal: bool = False,
) -> Tensor:
    """``nn.TransformerDecoder.forward``."""
    options = {
        "tgt_mask": tgt_mask,
        "memory_mask": memory_mask,
        "tgt_key_padding_mask": tgt_key_padding_mask,
        "memory_key_padding_mask": memory_key_padding_mask,
        "tgt_is_causal": bool(tgt_is_causal),
        "memory_is_causal": memory_is_causal,
    }
    return _stacked(stack, tgt, lambda layer, x: layer(x, memory, **options))


def transformer(
    model: nn.Transformer,
    src: Tensor,
    tgt: Tensor,
    src_mask: Tensor | None = None,
    tgt_mask: Tensor | None = None,
    memory_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    tgt_key_padding_mask: Tensor | None = None,
    memory_key_padding_mask: Tensor | None = None,
    src_is_causal: bool | None = None,
    tgt_is_causal: bool | None = None,
    memory_is_causal: bool = False,
) -> Tensor:
    """``nn.Transformer.forward`` (without its shape checks, which the untraced model still makes)."""
    memory = model.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return model.decoder(
        tgt,
        memory,
        tgt_mask=tgt_mask,
        memory_mask=memory_mask,
        tgt_key_padding_mask=tgt_key_padding_mask,
        memory_key_padding_mask=memory_key_padding_mask,
        tgt_is_causal=tgt_is_causal,
        memory_is_causal=memory_is_causal,
    )


#: the methods a form copies: a subclass that overrides one of them computes something else (a SwiGLU
#: ``_ff_block``), so it keeps its own forward and is refused as one call
FORM_METHODS = ("forward", "_sa_block", "_mha_block", "_ff_block")

#: torch's classes and their traced forms
TRACED_FORMS: dict[type[nn.Module], TracedForm] = {
    nn.TransformerEncoderLayer: encoder_layer,
    nn.TransformerDecoderLayer: decoder_layer,
    nn.TransformerEncoder: encoder,
    nn.TransformerDecoder: decoder,
    nn.Transformer: transformer,
}
