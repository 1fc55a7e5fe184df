"""torch's own transformer modules (``nn.TransformerEncoderLayer`` and its relatives) grow their feed-forward units.

Their forward tests for a fused fast path in ways ``torch.fx`` cannot trace, so they used to be one opaque call
and nothing inside them could grow. The tracer now follows their training arithmetic (layers/transformer.py):
these tests check that the splits it finds are exact in every form of the layer (post- and pre-LN, batch first or
not, activation as a string, a module or a function, padding and causal masks, decoder layers), that the grown model
still runs on torch's fused path with the same outputs, that its FLOPs count the new units, and that a subclass with
its own forward is refused by name rather than traced as something it is not.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import assert_exact_splits
from torch import Tensor, nn

from splitgrow import ChannelGraph, SplittableNetwork
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.inspection import model_flops

pytestmark = [
    pytest.mark.filterwarnings("ignore::splitgrow.errors.SplitgrowWarning"),
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning"),
]

D_MODEL, HIDDEN, TOKENS = 8, 6, 5


class EncoderClassifier(nn.Module):
    """Linear embedding -> torch's TransformerEncoder (2 layers, final LayerNorm) -> mean over tokens -> head."""

    def __init__(self, *, norm_first: bool = False, activation: object = "gelu", batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(4, D_MODEL)
        layer = nn.TransformerEncoderLayer(
            D_MODEL,
            2,
            HIDDEN,
            dropout=0.1,
            activation=activation,
            batch_first=batch_first,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D_MODEL), enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 3)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        x = self.embed(tokens)
        x = self.encoder(x if self.batch_first else x.transpose(0, 1), src_key_padding_mask=padding)
        return self.head((x if self.batch_first else x.transpose(0, 1)).mean(dim=1))


def _tokens(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(6, TOKENS, 4, generator=generator, dtype=dtype)
    padding = torch.zeros(6, TOKENS, dtype=torch.bool)
    padding[:, -1] = True  # the last token of every sequence is padding, and one more of the first
    padding[0, -2] = True
    return tokens, padding, torch.randint(0, 3, (6,), generator=generator)


@pytest.mark.parametrize(
    ("norm_first", "activation", "batch_first"),
    [(False, "gelu", True), (True, nn.SiLU(), False), (False, torch.tanh, False)],
    ids=["post-LN-gelu", "pre-LN-SiLU-module-sequence-first", "tanh-function"],
)
def test_encoder_layers_feed_forward_units_split_exactly(norm_first, activation, batch_first) -> None:
    torch.manual_seed(0)
    model = EncoderClassifier(norm_first=norm_first, activation=activation, batch_first=batch_first).double()
    tokens, padding, labels = _tokens()
    graph = ChannelGraph(model, (tokens, padding))
    assert [name for name, site in graph.sites.items() if site.splittable] == [
        "encoder.layers.0.linear1",
        "encoder.layers.1.linear1",
    ]
    # attention stays one call: the residual stream it reads does not grow, and says why (sequence first, the
    # transpose that moves the batch dimension is met first)
    reason = "MultiheadAttention: attention heads" if batch_first else "'transpose' moves the batch dimension"
    assert reason in graph.skipped()["embed"]
    assert_exact_splits(model, (tokens, padding), labels, ["encoder.layers.0.linear1", "encoder.layers.1.linear1"])


class Seq2Seq(nn.Module):
    """torch's nn.Transformer with a causal target mask: encoder and decoder feed-forward units are sites."""

    def __init__(self) -> None:
        super().__init__()
        self.source, self.target = nn.Linear(4, D_MODEL), nn.Linear(4, D_MODEL)
        self.transformer = nn.Transformer(
            D_MODEL, 2, 1, 1, HIDDEN, dropout=0.0, activation=F.gelu, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(D_MODEL, 3)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(TOKENS))

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        out = self.transformer(self.source(source), self.target(target), tgt_mask=self.causal)
        return self.head(out).flatten(0, 1)


def test_transformer_encoder_and_decoder_layers_split_exactly_with_a_causal_mask() -> None:
    torch.manual_seed(0)
    model = Seq2Seq().double()
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(3, TOKENS, 4, generator=generator, dtype=torch.float64)
    target = torch.randn(3, TOKENS, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (3 * TOKENS,), generator=generator)
    sites = ["transformer.encoder.layers.0.linear1", "transformer.decoder.layers.0.linear1"]
    graph = ChannelGraph(model, (source, target))
    assert sorted(name for name, site in graph.sites.items() if site.splittable) == sorted(sites)
    assert_exact_splits(model, (source, target), labels, sites)


def test_default_relu_feed_forward_needs_the_surrogate() -> None:
    model = EncoderClassifier(activation="relu").double()
    tokens, padding, _ = _tokens()
    assert not any(site.splittable for site in ChannelGraph(model, (tokens, padding)).sites.values())
    with_surrogate = ChannelGraph(model, (tokens, padding), relu_surrogate=4.0)
    assert with_surrogate.sites["encoder.layers.0.linear1"].splittable


def test_a_grown_encoder_runs_on_torchs_fused_path_counts_its_flops_and_trains_on() -> None:
    torch.manual_seed(0)
    model = EncoderClassifier()
    tokens, padding, labels = _tokens(torch.float32)
    batches = [((tokens, padding), labels)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    F.cross_entropy(model(tokens, padding), labels).backward()
    optimizer.step()
    optimizer.zero_grad()
    flops_before = model_flops(model, (tokens, padding))
    grower = Grower(
        model,
        (tokens, padding),
        batches,
        policy=GrowthPolicy(first=1, every=1, count=3, max_stages=1, threshold=-1e-12),
        loss_function=F.cross_entropy,
        optimizer=optimizer,
    )
    stage = grower.epoch_end()
    assert stage is not None and sum(stage.widths_after.values()) == 2 * HIDDEN + 3
    assert [model.encoder.layers[i].linear1.out_features for i in (0, 1)] == [
        stage.widths_after["encoder.layers.0.linear1"],
        stage.widths_after["encoder.layers.1.linear1"],
    ]
    # every new hidden unit adds a row of linear1 and a column of linear2 (d_model multiply-adds each, 2 FLOPs
    # apiece; torch's counter leaves out bias additions) per token
    assert stage.flops_after - flops_before == 3 * 2 * (2 * D_MODEL) * TOKENS
    # eval mode without gradients takes torch's fused kernel, which reads the grown weights directly
    model.eval()
    with torch.no_grad():
        fused = model(tokens, padding)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            unfused = model(tokens, padding)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    model.train()
    loss = F.cross_entropy(model(tokens, padding), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


class CustomLayer(nn.TransformerEncoderLayer):
    """A subclass with its own forward: splitgrow cannot know what it computes."""

    def forward(self, src: Tensor, *args: object, **kwargs: object) -> Tensor:
        return super().forward(src * 2.0, *args, **kwargs)


class GatedFeedForward(nn.TransformerEncoderLayer):
    """A subclass that keeps torch's forward but replaces the feed-forward block it calls."""

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(F.silu(self.linear1(x)) * x.mean(-1, keepdim=True)))


class RenamedLayer(nn.TransformerEncoderLayer):
    """A subclass that keeps torch's forward is traced through like torch's class."""


@pytest.mark.parametrize("layer_type", [CustomLayer, GatedFeedForward, RenamedLayer])
def test_a_subclass_is_traced_through_only_with_torchs_forward(layer_type) -> None:
    model = nn.Sequential(
        nn.Linear(4, D_MODEL),
        layer_type(D_MODEL, 2, HIDDEN, dropout=0.0, activation="gelu", batch_first=True),
        nn.Flatten(),
        nn.Linear(D_MODEL * TOKENS, 3),
    ).double()
    tokens, _, _ = _tokens()
    graph = ChannelGraph(model, tokens)
    if layer_type is RenamedLayer:
        assert graph.sites["1.linear1"].splittable and graph.sites["1.linear1"].exact
        return
    name = layer_type.__name__
    assert "1.linear1" not in graph.sites
    assert (
        f"'1': {name}: a subclass of torch's transformer module with its own forward (or blocks)"
        in graph.skipped()["0"]
    )
    assert f"inside module '1' ({name})" in graph.skipped()["1.linear1"]


def test_the_traced_form_computes_what_torchs_forward_computes_in_training() -> None:
    """The form is what the statistics run: the traced model equals the model itself (dropout off), for encoder and
    decoder stacks, with every mask."""
    torch.manual_seed(0)
    model = Seq2Seq().double().eval()
    source, target = torch.randn(2, TOKENS, 4, dtype=torch.float64), torch.randn(2, TOKENS, 4, dtype=torch.float64)
    graph = ChannelGraph(copy.deepcopy(model), (source, target))
    with torch.no_grad():
        torch.testing.assert_close(graph.module(source, target), model(source, target), rtol=0, atol=1e-12)
    padded = EncoderClassifier(norm_first=True).double().eval()
    tokens, padding, _ = _tokens()
    graph = ChannelGraph(padded, (tokens, padding))
    with torch.enable_grad():  # torch's own slow path, as in training
        expected = padded(tokens, padding)
    torch.testing.assert_close(graph.module(tokens, padding), expected, rtol=0, atol=1e-12)
    assert SplittableNetwork(padded, (tokens, padding)).widths()["encoder.layers.1.linear1"] == HIDDEN


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(D_MODEL, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def test_model_flops_count_attention_itself_not_only_its_projections() -> None:
    """On the CPU, scaled_dot_product_attention's fused kernel counted as 0 FLOPs: Q K^T and the weighted sum of V,
    which grow with the square of the sequence, were missing from a transformer's count."""
    tokens = 10
    flops = model_flops(SelfAttention().eval(), torch.randn(3, tokens, D_MODEL))
    projections = tokens * (3 * D_MODEL * D_MODEL + D_MODEL * D_MODEL)  # in_proj (q, k, v) and out_proj
    attention = 2 * tokens * tokens * D_MODEL  # Q K^T and A V, summed over the heads
    assert flops == 2 * (projections + attention)  # a multiply-add counts 2


class RegisteredLayer(nn.TransformerEncoderLayer):
    """A subclass the user registered a handler for: the registration decides, not the traced form."""


def test_a_registered_handler_for_a_transformer_subclass_is_used_as_registered() -> None:
    from splitgrow.layers import ChannelMap, LayerHandler, register_layer

    class OwnReason(LayerHandler):
        types = (RegisteredLayer,)

        def channel_map(self, module, input_shape, output_shape):
            return ChannelMap.refuse("RegisteredLayer: the user's own handler")

    register_layer(OwnReason())
    model = nn.Sequential(
        nn.Linear(4, D_MODEL),
        RegisteredLayer(D_MODEL, 2, HIDDEN, dropout=0.0, activation="gelu", batch_first=True),
        nn.Flatten(),
        nn.Linear(D_MODEL * TOKENS, 3),
    )
    graph = ChannelGraph(model, torch.randn(2, TOKENS, 4))
    assert "1.linear1" not in graph.sites
    assert "RegisteredLayer: the user's own handler" in graph.skipped()["0"]


def test_a_transformer_module_as_the_whole_model_is_refused_with_what_to_do() -> None:
    from splitgrow.graph import GraphError

    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(D_MODEL, 2, HIDDEN, batch_first=True), 1)
    with pytest.raises(GraphError, match="TransformerEncoder is the whole model: .* wrap it in a module of your own"):
        ChannelGraph(encoder, torch.randn(2, TOKENS, D_MODEL))
