"""Architectures users bring, written the way torchvision, timm and torchaudio write them (tiny, float64): what
splitgrow grows in them exactly, and what it refuses with a message naming the module.

The fixes these tests guard (each failed before it): an attention mask of shape (T, T) was cut to its first row
when the model was traced, so a masked transformer block could not be traced at all; ``squeeze``/``unsqueeze``
(an audio net's ``pool(x).squeeze(-1)``) blocked the channels they pass; a GRU or an LSTM was refused as a module
that "returns several tensors" instead of with its own reason; PReLU, Hardswish and Hardsigmoid were unknown
modules and instance normalisation a refused one, each blocking every channel through it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import assert_exact_splits, classification_loss, randomise_batch_norms, run_model, split_copy
from torch import Tensor, nn

from splitgrow import ChannelGraph, SplittableNetwork
from splitgrow.activations import hardsigmoid, hardswish
from splitgrow.graph import GraphError
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.inspection import model_flops, site_table
from splitgrow.surgery import SplitRequest

pytestmark = pytest.mark.filterwarnings("ignore::splitgrow.errors.SplitgrowWarning")

Inputs = Tensor | tuple[Tensor, ...]


def assert_optimisers_continue(model: nn.Module, inputs: Inputs, targets: Tensor, site: str) -> None:
    """After a step of SGD with momentum and of Adam, a split of ``site`` carries their state to the grown shapes
    and the next step runs and keeps the loss finite."""
    for make in (lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), lambda p: torch.optim.Adam(p, lr=1e-3)):
        twin = copy.deepcopy(model)
        optimizer = make(twin.parameters())
        _train_step(twin, optimizer, inputs, targets)
        net = SplittableNetwork(twin, inputs)
        before = net.widths()[site]
        net.split([SplitRequest(site, 0, None)], 1e-2, optimizer=optimizer)
        assert net.widths()[site] == before + 1
        for parameter in twin.parameters():
            for value in optimizer.state[parameter].values():
                if isinstance(value, Tensor) and value.dim() > 0:
                    assert value.shape == parameter.shape
        assert torch.isfinite(torch.tensor(_train_step(twin, optimizer, inputs, targets)))


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Inputs, targets: Tensor) -> float:
    optimizer.zero_grad()
    loss = F.cross_entropy(run_model(model, inputs), targets)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _prepare(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        randomise_batch_norms(model, torch.Generator().manual_seed(1))
    return model.double().eval()


def _images(batch: int = 4, size: int = 8) -> tuple[Tensor, Tensor]:
    return torch.randn(batch, 3, size, size, dtype=torch.float64), torch.randint(0, 3, (batch,))


# ---------------------------------------------------------------------------------------------- transformers


class MaskedBlock(nn.Module):
    """A pre-LN transformer classifier called as ``model(tokens, mask)``: a causal (T, T) attention mask or a
    (B, T) key-padding mask, neither of which is cut to a batch of one."""

    def __init__(self, dim: int = 8, hidden: int = 12, padding_mask: bool = False) -> None:
        super().__init__()
        self.padding_mask = padding_mask
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.norm1(x)
        masks = {"key_padding_mask": mask} if self.padding_mask else {"attn_mask": mask}
        x = x + self.attn(y, y, y, need_weights=False, **masks)[0]
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return self.head(x.mean(dim=1))


@pytest.mark.parametrize("padding_mask", [False, True], ids=["causal-mask-TxT", "key-padding-mask-BxT"])
def test_a_mask_without_a_batch_dimension_traces_and_the_mlp_splits_exactly(padding_mask: bool) -> None:
    torch.manual_seed(0)
    tokens, targets = torch.randn(4, 5, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    if padding_mask:
        mask = torch.zeros(4, 5, dtype=torch.bool)
        mask[1, 3:] = mask[2, 4:] = True
    else:
        mask = torch.triu(torch.full((5, 5), float("-inf"), dtype=torch.float64), 1)
    model = MaskedBlock(padding_mask=padding_mask).double().eval()
    graph = ChannelGraph(model, (tokens, mask))
    assert list(graph.sites) == ["fc1"]
    assert "'attn': MultiheadAttention: attention heads are not growable" in graph.skipped()["fc2"]
    assert_exact_splits(model, (tokens, mask), targets, ["fc1"])
    assert_optimisers_continue(model, (tokens, mask), targets, "fc1")


def test_a_grower_grows_a_masked_block_and_counts_its_flops_per_sample() -> None:
    torch.manual_seed(0)
    tokens, targets = torch.randn(6, 5, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    mask = torch.triu(torch.full((5, 5), float("-inf"), dtype=torch.float64), 1)
    model = MaskedBlock().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    grower = Grower(
        model,
        (tokens[:2], mask),
        [((tokens, mask), targets)],
        policy=GrowthPolicy(first=1, count=2, max_stages=1),
        loss_function=F.cross_entropy,
        optimizer=optimizer,
    )
    stage = grower.epoch_end()
    assert stage is not None and stage.widths_after == {"fc1": 14}
    # per sample: the count on one sample, of which the layers (per token the attention's in and out projections,
    # 4 * 8 * 8 multiply-adds, and fc1 and fc2, 2 * 8 * 14; the head, 8 * 3) are part; a multiply-add is 2 FLOPs
    assert stage.flops_after == model_flops(model, (tokens[:1], mask))
    assert stage.flops_after >= 2 * (5 * (4 * 8 * 8 + 2 * 8 * 14) + 8 * 3)
    optimizer.zero_grad()
    F.cross_entropy(model(tokens, mask), targets).backward()
    optimizer.step()


class TorchEncoderClassifier(nn.Module):
    """torch's own TransformerEncoderLayer (fused fast path in eval mode; tests/test_torch_transformers.py has more)
    between an embedding and an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.act = nn.Linear(4, 8), nn.Tanh()
        self.encoder = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
        self.fc1, self.act2, self.fc2 = nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act2(self.fc1(self.encoder(self.act(self.embed(x))).mean(dim=1))))


def test_torch_transformer_encoder_layer_grows_its_feed_forward_units_and_the_head_splits_exactly() -> None:
    torch.manual_seed(0)
    model = TorchEncoderClassifier().double().eval()
    tokens, targets = torch.randn(4, 5, 4, dtype=torch.float64), torch.randint(0, 3, (4,))
    graph = ChannelGraph(model, tokens)
    assert not graph.sites["embed"].splittable
    assert "'encoder.self_attn': MultiheadAttention: attention heads" in graph.sites["embed"].reason
    assert "inside module 'encoder.self_attn' (MultiheadAttention)" in graph.skipped()["encoder.self_attn.out_proj"]
    with pytest.raises(GraphError, match="cannot split"):
        SplittableNetwork(model, tokens).split([SplitRequest("embed", 0, None)], 0.0)
    # torch's default ReLU in the layer's feed-forward block: its units are a site with the surrogate only
    assert "encoder.linear1" not in [name for name, site in graph.sites.items() if site.splittable]
    assert_exact_splits(model, tokens, targets, ["fc1"])


class TokensOnAGrid(nn.Module):
    """A hybrid: conv stem -> tokens (N, HW, C) -> token MLP -> back onto the 4 x 4 grid by an unflatten of the
    token dimension (one of four spellings) -> conv -> head."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc1, self.fc2, self.grid = nn.Linear(4, 6), nn.Linear(6, 5), nn.Unflatten(2, (4, 4))
        self.conv2, self.head = nn.Conv2d(5, 3, 3, padding=1), nn.Linear(3, 3)

    def forward(self, images: Tensor) -> Tensor:
        tokens = F.silu(self.bn(self.conv1(images))).flatten(2).transpose(1, 2)
        features = self.fc2(F.gelu(self.fc1(tokens))).transpose(1, 2)  # (N, 5, 16)
        grid = {
            "method": lambda: features.unflatten(2, (4, 4)),
            "module": lambda: self.grid(features),
            "function": lambda: torch.unflatten(features, 2, (4, 4)),
            "reshape": lambda: features.reshape(features.shape[0], features.shape[1], 4, 4),
        }[self.spelling]()
        return self.head(torch.tanh(self.conv2(torch.tanh(grid))).mean((2, 3)))


@pytest.mark.parametrize("spelling", ["method", "module", "function", "reshape"])
def test_tokens_put_back_onto_a_grid_keep_their_channels_and_split_exactly(spelling: str) -> None:
    """An unflatten of the token dimension was refused as a reshape, and with it every channel through it."""
    torch.manual_seed(0)
    model = TokensOnAGrid(spelling).double().eval()
    randomise_batch_norms(model, torch.Generator().manual_seed(1))
    images, labels = _images(size=4)
    graph = ChannelGraph(model, images)
    assert {name: site.engine for name, site in graph.sites.items() if site.splittable} == {
        "conv1": "ridge",
        "fc1": "ridge",
        "fc2": "segment",  # its activation comes after the unflatten
        "conv2": "ridge",
    }
    assert_exact_splits(model, images, labels, ["conv1", "fc1", "fc2", "conv2"])
    assert_optimisers_continue(model, images, labels, "fc2")


class ChannelsFlattenedAndBack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3), nn.Linear(3, 3)

    def forward(self, images: Tensor) -> Tensor:
        flat = torch.tanh(self.conv1(images)).flatten(1)
        return self.head(torch.tanh(self.conv2(flat.view(flat.shape[0], 4, 4, 4))).mean((2, 3)))


def test_an_unflatten_of_channels_is_refused_even_after_a_flatten() -> None:
    """Channels flattened into the features and unflattened back cannot follow a split (their block would move)."""
    graph = ChannelGraph(ChannelsFlattenedAndBack(), torch.randn(2, 3, 4, 4))
    assert graph.skipped()["conv1"] == "'view' reshapes (2, 64) to (2, 4, 4, 4), splitting channels"
    assert graph.sites["conv2"].splittable


class TokensToFeatures(nn.Module):
    """Tokens (N, 16, 5) -> Linear -> tanh -> onto a 4 x 4 grid -> flattened into one feature vector -> head: the
    channels pass an unflatten (of the token dimension) and then a flatten."""

    def __init__(self, split_channels: bool = False) -> None:
        super().__init__()
        self.split_channels = split_channels
        self.lin, self.head = nn.Linear(5, 12), nn.Linear(16 * 12, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden = torch.tanh(self.lin(tokens)).unflatten(1, (4, 4))  # (N, 4, 4, 12)
        if self.split_channels:  # the 12 channels split into (4, 3): a split would move the boundaries
            hidden = hidden.unflatten(3, (4, 3))
        return self.head(hidden.flatten(1))


def test_channels_through_an_unflatten_then_a_flatten_reach_their_consumer_and_split_exactly() -> None:
    """The flatten was decided before the unflatten's links existed: the channels seemed to end there, the split
    missed the head's columns, and the next forward failed (112 features for a head of 96)."""
    torch.manual_seed(0)
    model = TokensToFeatures().double()
    tokens, labels = torch.randn(6, 16, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    graph = ChannelGraph(model, tokens)
    assert graph.coupled_modules("lin") == {"producers": ["lin"], "per_channel": [], "consumers": ["head"]}
    assert_exact_splits(model, tokens, labels, ["lin"])
    refused = ChannelGraph(TokensToFeatures(split_channels=True), tokens.float())
    assert not refused.sites["lin"].splittable
    assert refused.skipped()["lin"] == "'unflatten_1' reshapes (6, 4, 4, 12) to (6, 4, 4, 4, 3), splitting channels"


# ---------------------------------------------------------------------------------------------- convolutional


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7 -> channels last -> LayerNorm -> Linear(4x) -> GELU -> Linear -> channels first."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + self.pwconv2(self.act(self.pwconv1(y))).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, dim, 2, 2), ConvNeXtBlock(dim)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.block(self.stem(x)).mean(dim=(-2, -1))))


def test_convnext_hidden_units_are_an_exact_site_and_the_stream_is_refused_at_its_layer_norm() -> None:
    torch.manual_seed(0)
    model = ConvNeXt().double().eval()
    images, labels = _images()
    graph = ChannelGraph(model, images)
    assert list(graph.sites) == ["block.pwconv1"] and graph.sites["block.pwconv1"].engine == "ridge"
    assert "'block.norm': LayerNorm: normalises across channels" in graph.skipped()["stem"]
    assert_exact_splits(model, images, labels, ["block.pwconv1"])
    assert_optimisers_continue(model, images, labels, "block.pwconv1")


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.activation = nn.Conv2d(channels, squeeze, 1), nn.SiLU()
        self.fc2, self.scale_activation = nn.Conv2d(squeeze, channels, 1), nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class ViewedGate(nn.Module):
    """A squeeze-and-excitation gate of Linear layers, its (N, C) output put back as (N, C, 1, 1) by ``view`` (the
    canonical spelling: its sizes come from ``x.shape``) or by ``unsqueeze``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8)
        self.conv2, self.head = nn.Conv2d(8, 5, 1), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.softplus(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.softplus(self.fc1(y.mean((2, 3))))))
        if self.spelling == "view":
            gate = gate.view(gate.shape[0], gate.shape[1], 1, 1)
        else:
            gate = gate.unsqueeze(-1).unsqueeze(-1)
        return self.head(F.softplus(self.conv2(y * gate)).mean((2, 3)))


@pytest.mark.parametrize("spelling", ["view", "unsqueeze"])
def test_a_gate_put_back_by_view_is_a_gate_as_by_unsqueeze(spelling: str) -> None:
    """``gate.view(b, c, 1, 1)`` read the shape of the gate (a second user of it), so the gate was not recognised
    and the gated site was inexact; and the view itself was taken for a split of the channels."""
    torch.manual_seed(0)
    model = ViewedGate(spelling).double().eval()
    images, labels = _images()
    site = ChannelGraph(model, images).sites["conv"]
    assert site.gates == ["fc2"] and site.exact
    assert_exact_splits(model, images, labels, ["conv"])


class MBConv(nn.Module):
    """EfficientNet: expand 1x1 -> BN -> SiLU -> depthwise 3x3 -> BN -> SiLU -> SE -> project 1x1 -> BN."""

    def __init__(self, inputs: int, expand: int, outputs: int, stride: int) -> None:
        super().__init__()
        hidden = inputs * expand
        self.residual = stride == 1 and inputs == outputs
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(inputs, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()),
            nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()
            ),
            SqueezeExcitation(hidden, 4),
            nn.Sequential(nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + x if self.residual else self.block(x)


class EfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(4, 4, 4, 1), MBConv(4, 2, 6, 2))
        self.head = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1))


def test_mbconv_expansion_gated_by_squeeze_excitation_is_an_exact_chain_site() -> None:
    """The expanded channels are scaled by their squeeze-excitation gate, which reads them all. The gate's rows
    are copied exactly (both offspring share one gate), so the product is linear in each offspring and what follows
    the depthwise activation sees only the offspring's mean: the chain's S, with the gradient through both the gate
    and the projection, is exact. (It was labelled inexact, with the per-layer S, before.)"""
    torch.manual_seed(0)
    model = _prepare(EfficientNet())
    images, labels = _images()
    graph = ChannelGraph(model, images)
    for block in ("blocks.0", "blocks.1"):
        expansion = graph.sites[f"{block}.block.0.0"]
        assert expansion.engine == "chain" and expansion.exact and expansion.splittable
        assert [m.module for m in expansion.members] == [f"{block}.block.0.0", f"{block}.block.1.0"]
        assert expansion.gates == [f"{block}.block.2.fc2"]
        assert f"copied exactly when site '{block}.block.0.0'" in graph.skipped()[f"{block}.block.2.fc2"]
    assert "no activation with curvature" in graph.skipped()["blocks.1.block.3.0"]  # the linear projection
    (row,) = [row for row in site_table(graph, images)[0] if row["site"] == "blocks.1.block.0.0"]
    assert row["note"] == "with blocks.1.block.1.0; gated by blocks.1.block.2.fc2 (copied)"
    assert_exact_splits(model, images, labels, ["blocks.0.block.0.0", "blocks.1.block.0.0", "blocks.1.block.2.fc1"])
    assert_exact_splits(model, images, labels, ["head.0"])
    assert_optimisers_continue(model, images, labels, "blocks.1.block.0.0")
    assert_optimisers_continue(model, images, labels, "blocks.1.block.2.fc1")


class LinearGate(nn.Module):
    """A gate computed by Linear layers on the pooled channels (timm's and many research codes' form), reshaped to
    (N, C, 1, 1) and applied as a product, or as a division by (1 + gate)."""

    def __init__(self, channels: int, squeeze: int, divide: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.divide = nn.Linear(channels, squeeze), nn.Linear(squeeze, channels), divide

    def forward(self, x: Tensor) -> Tensor:
        gate = F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3)))))).unsqueeze(-1).unsqueeze(-1)
        return x / (1.0 + gate) if self.divide else x * gate


class GatedConvNet(nn.Module):
    """conv -> BN -> SiLU -> gate -> conv: a ridge site whose activation's output is gated (MobileNetV3's
    Hardsigmoid, ReLU inside the gate)."""

    def __init__(self, divide: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU()
        self.gate = LinearGate(6, 3, divide)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.gate(self.act(self.bn1(self.conv1(x)))))
        return self.fc(F.softplus(x).mean((2, 3)))


@pytest.mark.parametrize("divide", [False, True], ids=["product", "division"])
def test_a_gated_ridge_site_is_exact_and_the_gate_kink_is_not_its_own(divide: bool) -> None:
    """The gate's Hardsigmoid has kinks, but both offspring see the same gate value, so it is no kink of the
    site; a division by the gate is linear in the channels too."""
    torch.manual_seed(0)
    model = _prepare(GatedConvNet(divide))
    images, labels = _images()
    site = ChannelGraph(model, images).sites["conv1"]
    assert site.engine == "ridge" and site.exact and site.gates == ["gate.fc2"] and site.kinks == ""
    assert_exact_splits(model, images, labels, ["conv1", "conv2"])


class GateInsideTheSegment(nn.Module):
    """conv -> SiLU -> x * gate(pool(x)) -> Tanh -> conv: the gate reads the channels after the first activation and
    before the last one, so each offspring's SiLU curvature reaches the loss through the gate too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.gate, self.conv2 = nn.Conv2d(3, 5, 3, padding=1), LinearGate(5, 3, False), nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.tanh(self.gate(F.silu(self.conv1(x))))
        return self.fc(F.softplus(self.conv2(hidden)).mean((2, 3)))


def test_a_gate_read_inside_the_segment_leaves_the_site_inexact_and_it_is() -> None:
    """The gate's rows are still copied, but the per-layer S misses the second-order change its input sees: the
    site is labelled inexact, and a real split's loss change indeed differs from eps^2/2 * lambda."""
    torch.manual_seed(0)
    model = GateInsideTheSegment().double().eval()
    images, labels = _images()
    net = SplittableNetwork(model, images)
    site = net.sites["conv1"]
    assert site.splittable and not site.exact and "'tanh'" in site.inexact_reason
    results = net.splitting([(images, labels)], classification_loss)
    channel = int(results["conv1"].indexes.argmin())
    index = float(results["conv1"].indexes[channel])
    request = SplitRequest("conv1", channel, results["conv1"].directions[channel], index)
    loss = float(F.cross_entropy(run_model(model, images), labels))
    ratios = []
    for epsilon in (1e-3, 1e-4):
        twin = copy.deepcopy(model)
        SplittableNetwork(twin, images).split([request], epsilon, allow_inexact=True)
        measured = float(F.cross_entropy(run_model(twin, images), labels))
        ratios.append((measured - loss) / (0.5 * epsilon**2 * index))
    assert ratios[0] == pytest.approx(ratios[1], rel=1e-2)  # a second-order change, consistently
    assert abs(ratios[0] - 1.0) > 0.02  # but not the one the per-layer S predicts


class GatedLinearUnit(nn.Module):
    """GLU: a(x) * sigmoid(b(x)), both from the same input: each factor depends on the split, neither is a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.a(x) * torch.sigmoid(self.b(x)))


def test_a_gated_linear_unit_splits_both_factors_as_one_neuron() -> None:
    torch.manual_seed(0)
    model = GatedLinearUnit().double().eval()
    inputs, labels = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    site = ChannelGraph(model, inputs).sites["a"]
    assert site.engine == "segment" and site.gates == [] and [m.module for m in site.members] == ["a", "b"]
    assert_exact_splits(model, inputs, labels, ["a"])


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), one shared in-place activation."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, act=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = act if act is not None else nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class BottleneckNet(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), act()
        downsample = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        self.layer1 = nn.Sequential(Bottleneck(4, 2, 2, downsample, act()), Bottleneck(8, 2, act=act()))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_resnet_bottleneck_with_a_strided_downsample_grows_inside_its_blocks() -> None:
    torch.manual_seed(0)
    images, labels = _images()
    relu_graph = ChannelGraph(_prepare(BottleneckNet()), images)
    assert relu_graph.sites == {}
    assert "phi'' = 0" in relu_graph.skipped()["layer1.0.conv2"]
    surrogate = ChannelGraph(_prepare(BottleneckNet()), images, relu_surrogate=2.0)
    assert set(surrogate.sites) == {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"}
    model = _prepare(BottleneckNet(nn.SiLU))
    graph = ChannelGraph(model, images)
    for name in ("layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3"):
        assert "its channels pass a residual sum before any activation" in graph.skipped()[name]
    assert_exact_splits(model, images, labels, ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv2"])
    assert_optimisers_continue(model, images, labels, "layer1.0.conv2")


class ConvPair(nn.Module):
    def __init__(self, groups: int = 1, dilation: int = 1, padding_mode: str = "zeros") -> None:
        super().__init__()
        options = {"padding_mode": padding_mode, "bias": False}
        self.conv1 = nn.Conv2d(3, 8, 3, padding=dilation, dilation=dilation, **options)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=groups, **options)
        self.act1, self.act2, self.fc = nn.Tanh(), nn.Tanh(), nn.Linear(8, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "options", [{"dilation": 2}, {"padding_mode": "reflect"}, {"padding_mode": "circular"}], ids=str
)
def test_dilated_and_reflect_or_circular_padded_convolutions_without_bias_split_exactly(options: dict) -> None:
    torch.manual_seed(0)
    model = ConvPair(**options).double().eval()
    images, labels = _images(size=6)
    assert_exact_splits(model, images, labels, ["conv1", "conv2"])


@pytest.mark.parametrize("groups", [2, 4])
def test_a_grouped_convolution_is_refused_with_its_groups_and_the_next_site_still_splits(groups: int) -> None:
    torch.manual_seed(0)
    model = ConvPair(groups=groups).double().eval()
    images, labels = _images(size=6)
    graph = ChannelGraph(model, images)
    assert f"'conv2': Conv2d with groups={groups}" in graph.sites["conv1"].reason
    assert f"groups={groups}" in graph.skipped()["conv2"]
    with pytest.raises(GraphError, match="cannot split"):
        SplittableNetwork(model, images).split([SplitRequest("conv1", 0, None)], 0.0)
    assert model.conv1.out_channels == 8


class NormAfterConv(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv1, self.norm, self.act = nn.Conv2d(3, 8, 3, padding=1), norm, nn.SiLU()
        self.conv2, self.act2, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.SiLU(), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act2(self.conv2(self.act(self.norm(self.conv1(x))))).mean(dim=(2, 3)))


@pytest.mark.parametrize("groups", [2, 8], ids=["two-groups", "one-channel-per-group"])
def test_group_norm_refuses_the_conv_before_it_and_the_next_conv_splits(groups: int) -> None:
    """GroupNorm mixes the channels of a group (and its group count fixes the channel count): refused."""
    torch.manual_seed(0)
    model = NormAfterConv(nn.GroupNorm(groups, 8)).double().eval()
    images, labels = _images(size=6)
    graph = ChannelGraph(model, images)
    assert list(graph.sites) == ["conv2"]
    assert graph.skipped()["conv1"].startswith("'norm': GroupNorm: normalises across channels")
    assert_exact_splits(model, images, labels, ["conv2"])


@pytest.mark.parametrize(
    "norm",
    [
        nn.InstanceNorm2d(8),
        nn.InstanceNorm2d(8, affine=True),
        nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
    ],
    ids=["plain", "affine", "running-statistics"],
)
def test_instance_norm_passes_each_channel_to_itself_and_the_conv_before_it_splits_exactly(norm: nn.Module) -> None:
    """Each channel is normalised over its own positions: the offspring of a split pass it separately, so the
    segment (conv -> instance norm -> SiLU) is differentiated through it, and its affine parameters and running
    statistics are copied."""
    torch.manual_seed(0)
    if norm.affine:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_(0.0, 0.1)
    if norm.track_running_stats:
        norm.running_mean.normal_(0.0, 0.1)
        norm.running_var.uniform_(0.5, 1.5)
    model = NormAfterConv(norm).double().eval()
    images, labels = _images(size=6)
    graph = ChannelGraph(model, images)
    assert graph.sites["conv1"].engine == "segment" and graph.coupled_modules("conv1")["per_channel"] == ["norm"]
    assert_exact_splits(model, images, labels, ["conv1", "conv2"])
    grown = copy.deepcopy(model)
    SplittableNetwork(grown, images).split([SplitRequest("conv1", 3, None)], 0.0)
    assert grown.norm.num_features == 9
    assert_optimisers_continue(model, images, labels, "conv1")


@pytest.mark.filterwarnings("ignore:input's size at dim=0 does not match num_features")
def test_instance_norm_on_an_unbatched_looking_input_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.InstanceNorm1d(4), nn.Linear(4, 2))
    graph = ChannelGraph(model, torch.randn(2, 3))
    assert "'2': InstanceNorm1d on an input of shape (2, 4) reads it as one unbatched sample" in graph.skipped()["0"]


# ---------------------------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "activation", [nn.ELU(), nn.Mish(), nn.Tanh(), nn.Sigmoid()], ids=lambda a: type(a).__name__.lower()
)
def test_smooth_activations_between_two_linears_split_exactly(activation: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), activation, nn.Linear(6, 3)).double().eval()
    inputs, targets = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    assert_exact_splits(model, inputs, targets, ["0"])


@pytest.mark.parametrize("activation", [nn.LeakyReLU(), nn.PReLU(6), nn.Hardsigmoid()], ids=["leaky", "prelu", "hsig"])
def test_piecewise_linear_activations_leave_no_site(activation: nn.Module) -> None:
    graph = ChannelGraph(nn.Sequential(nn.Linear(5, 6), activation, nn.Linear(6, 3)), torch.randn(2, 5))
    assert graph.sites == {}
    assert "phi'' = 0, so every splitting index is 0" in graph.skipped()["0"]


def test_per_channel_prelu_slopes_are_copied_to_both_offspring() -> None:
    """Linear -> PReLU(C) -> Tanh: a segment site whose channels pass PReLU's kink; a split copies the channel's
    slope (the function stays the same at eps = 0) and the optimisers' state of the slopes follows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.PReLU(6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    model[1].weight.data.copy_(torch.linspace(-0.5, 0.5, 6))
    inputs, targets = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    site = ChannelGraph(model, inputs).sites["0"]
    assert (site.splittable, site.engine, site.kinks) == (True, "segment", "'1' (PReLU)")
    twin = copy.deepcopy(model)
    SplittableNetwork(twin, inputs).split([SplitRequest("0", 2, None)], 0.0)
    assert twin[1].num_parameters == 7
    torch.testing.assert_close(twin[1].weight[[2, 3]], model[1].weight[[2, 2]], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(twin(inputs), model(inputs), rtol=0, atol=1e-12)
    assert_optimisers_continue(model, inputs, targets, "0")


def test_hardswish_has_the_curvature_of_its_quadratic_piece_and_lists_its_kinks() -> None:
    z = torch.linspace(-5, 5, 401, dtype=torch.float64)
    z = z[(z.abs() - 3).abs() > 1e-6].requires_grad_()
    for activation in (hardswish(), hardsigmoid()):
        first = torch.autograd.grad(activation.phi(z).sum(), z, create_graph=activation.name == "hardswish")[0]
        torch.testing.assert_close(activation.dphi(z.detach()), first.detach())
        if activation.name == "hardswish":
            torch.testing.assert_close(activation.d2phi(z.detach()), torch.autograd.grad(first.sum(), z)[0])
        for at, jump in activation.kinks:
            sides = activation.dphi(torch.tensor([at - 1e-9, at + 1e-9], dtype=torch.float64))
            assert float(sides[1] - sides[0]) == pytest.approx(jump, abs=1e-8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Hardswish(), nn.Linear(6, 3)).double().eval()
    inputs, targets = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    net = SplittableNetwork(model, inputs)
    assert net.sites["0"].splittable and net.sites["0"].kinks == "'1' (phi' of hardswish jumps by -0.5 at z = -3)"
    # a step this small crosses no kink: the loss changes by eps^2/2 * index with phi'' = 1/3 inside (-3, 3)
    results = net.splitting([(inputs, targets)], classification_loss)
    channel = int(results["0"].indexes.argmin())
    index = float(results["0"].indexes[channel])
    request = SplitRequest("0", channel, results["0"].directions[channel], index)
    with torch.no_grad():
        measured = float(
            classification_loss(split_copy(model, inputs, request, 1e-4)(inputs), targets)
            - classification_loss(model(inputs), targets)
        )
    assert index < 0 and measured / (0.5 * 1e-8 * index) == pytest.approx(1.0, abs=1e-2)


# ---------------------------------------------------------------------------------------------- audio and text


class KeywordSpotter(nn.Module):
    """A raw-waveform keyword spotter: strided Conv1d -> BN -> softplus twice, global pooling, squeeze, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv1d(1, 6, 20, stride=8), nn.BatchNorm1d(6), nn.Softplus()
        self.conv2, self.bn2, self.act2 = nn.Conv1d(6, 8, 5, stride=2, padding=2), nn.BatchNorm1d(8), nn.Softplus()
        self.pool, self.fc = nn.AdaptiveAvgPool1d(1), nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.fc(self.pool(x).squeeze(-1))


def test_an_audio_net_squeezing_its_pooled_channels_splits_both_convolutions_exactly() -> None:
    torch.manual_seed(0)
    model = _prepare(KeywordSpotter())
    waveforms, labels = torch.randn(4, 1, 400, dtype=torch.float64), torch.randint(0, 4, (4,))
    assert_exact_splits(model, waveforms, labels, ["conv1", "conv2"])
    assert_optimisers_continue(model, waveforms, labels, "conv2")


class SqueezeAfter(nn.Module):
    """A one-neuron gate whose output is squeezed and unsqueezed again, or a hidden layer squeezed as a whole."""

    def __init__(self, squeeze_all: bool) -> None:
        super().__init__()
        self.squeeze_all = squeeze_all
        self.fc1, self.act, self.gate, self.act2 = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Tanh()
        self.head = nn.Linear(4 if squeeze_all else 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(self.fc1(x))
        if self.squeeze_all:  # (N, 4) with N = 1 loses its batch dimension
            return self.head(hidden.squeeze())
        return self.head(self.act2(self.gate(hidden)).squeeze(1).unsqueeze(1))


@pytest.mark.parametrize(
    ("squeeze_all", "site", "message"),
    [(False, "gate", "'squeeze' removes dimension 1 (of size 1)"), (True, "fc1", "'squeeze' squeezes the batch")],
    ids=["squeeze-a-channel", "squeeze-the-batch"],
)
def test_squeezing_a_channel_or_the_batch_dimension_blocks_the_channels(squeeze_all: bool, site: str, message) -> None:
    graph = ChannelGraph(SqueezeAfter(squeeze_all), torch.randn(1, 3))
    assert message in graph.sites[site].reason


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv1d(3, 6, 3, padding=1), nn.Tanh()
        self.rnn = cell(6, 5, batch_first=True)
        self.fc1, self.act2, self.fc2 = nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.act(self.conv(x)).transpose(1, 2))
        return self.fc2(self.act2(self.fc1(out[:, -1])))


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM], ids=["gru", "lstm"])
def test_a_recurrent_layer_is_refused_by_name_and_the_sites_after_it_split_exactly(cell) -> None:
    torch.manual_seed(0)
    model = Recurrent(cell).double().eval()
    sequences, labels = torch.randn(4, 3, 7, dtype=torch.float64), torch.randint(0, 3, (4,))
    graph = ChannelGraph(model, sequences)
    assert graph.sites["conv"].reason.startswith(f"'rnn': {cell.__name__}: recurrent layers are not supported")
    assert_exact_splits(model, sequences, labels, ["fc1"])


class BagOfEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.fc1, self.act, self.fc2 = nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.embed(tokens).mean(dim=1))))


def test_a_linear_after_mean_pooled_embeddings_of_integer_tokens_splits_exactly() -> None:
    torch.manual_seed(0)
    model = BagOfEmbeddings().double().eval()
    tokens, labels = torch.randint(0, 20, (4, 5)), torch.randint(0, 3, (4,))
    assert_exact_splits(model, tokens, labels, ["fc1"])
    assert_optimisers_continue(model, tokens, labels, "fc1")


# ---------------------------------------------------------------------------------------------- structure


class DictOutput(nn.Module):
    """HF style: ``{"logits": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.fc2(self.act(self.fc1(x)))}


class TupleOutput(DictOutput):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        logits = self.fc2(self.act(self.fc1(x)))
        return logits, logits.softmax(dim=-1)


class Containers(nn.Module):
    """Layers in an nn.ModuleList and activations and head in nn.ModuleDicts, iterated in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(5, 6), nn.Linear(6, 7)])
        self.acts = nn.ModuleDict({"first": nn.Tanh(), "second": nn.SiLU()})
        self.heads = nn.ModuleDict({"classes": nn.Linear(7, 3)})

    def forward(self, x: Tensor) -> Tensor:
        for layer, activation in zip(self.layers, self.acts.values()):
            x = activation(layer(x))
        return self.heads["classes"](x)


@pytest.mark.parametrize(
    ("build", "sites"),
    [(DictOutput, ["fc1"]), (TupleOutput, ["fc1"]), (Containers, ["layers.0", "layers.1"])],
    ids=["dict-output", "tuple-output", "module-list-and-dict"],
)
def test_dict_and_tuple_outputs_and_module_containers_split_exactly(build, sites: list[str]) -> None:
    torch.manual_seed(0)
    model = build().double().eval()
    inputs, labels = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    assert_exact_splits(model, inputs, labels, sites)
    assert_optimisers_continue(model, inputs, labels, sites[-1])


class InvertedResidual(nn.Module):
    """MobileNetV2's block as torchvision writes it: expand -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> project."""

    def __init__(self, channels: int = 4, hidden: int = 6, activation: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), activation())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), activation()
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.head = nn.Linear(channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = h + self.project(self.depthwise(self.expand(h)))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("activation", [nn.ReLU6, nn.ReLU])
def test_a_relu_expansion_and_the_depthwise_filter_it_feeds_split_exactly_without_a_surrogate(activation) -> None:
    """phi'' = 0 at both activations, yet the neuron's output is a product of its pointwise row and its depthwise
    filter: S is their mixed second derivative (zero diagonal blocks), whose negative eigenvalues are real."""
    torch.manual_seed(0)
    model = _prepare(InvertedResidual(activation=activation))
    images, labels = _images(6)
    graph = ChannelGraph(model, images)
    site = graph.sites["expand.0"]
    assert (site.engine, site.exact, [m.module for m in site.members]) == ("segment", True, ["expand.0", "depthwise.0"])
    assert site.kinks.startswith("'expand.2' (phi' of") and "'depthwise.2' (phi' of" in site.kinks  # both listed
    assert_exact_splits(model, images, labels, ["expand.0"], allow_kinks=True, index_below=-1e-6)
    matrices = SplittableNetwork(model, images).splitting([(images, labels)], F.cross_entropy, keep_matrices=True)
    pointwise = graph.modules["expand.0"].weight[0].numel()
    blocks = matrices["expand.0"].matrices
    assert float(blocks[:, :pointwise, :pointwise].abs().max()) < 1e-12 * float(blocks.abs().max())


class GatedConvolution(nn.Module):
    """A gated convolution (Dauphin et al.; Conformer's convolution module): conv -> GLU over channels."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.glu = nn.GLU(dim=1)
        self.mix = nn.Conv1d(4, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.glu(self.conv(x), dim=1) if self.functional else self.glu(self.conv(x))
        return self.head(torch.tanh(self.mix(h)).mean(2))


@pytest.mark.parametrize("functional", [False, True], ids=["nn.GLU", "F.glu"])
def test_a_glu_pairs_each_channel_with_its_gate_and_splits_both_exactly(functional: bool) -> None:
    torch.manual_seed(0)
    model = GatedConvolution(functional).double().eval()
    signals, labels = torch.randn(5, 3, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    site = ChannelGraph(model, signals).sites["conv"]
    assert (site.engine, site.exact, site.num_neurons) == ("segment", True, 4)  # (a_j, b_j): 4 neurons of 8 rows
    assert_exact_splits(model, signals, labels, ["conv"], index_below=1e9)
    optimizer = torch.optim.Adam(model.parameters())
    grower = Grower(
        model,
        signals,
        [(signals, labels)],
        policy=GrowthPolicy(count=2, every=1),
        loss_function=F.cross_entropy,
        optimizer=optimizer,
    )
    assert grower.epoch_end().widths_after["conv"] == 6
    assert model.conv.out_channels == 12 and model.mix.in_channels == 6 and model(signals).shape == (5, 3)


class TemporalMaxPool(nn.Module):
    """Global max pooling over time written with torch.max's (values, indices) pair, as audio and text CNNs do."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv = nn.Conv1d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x))
        if self.spelling == "index":
            return self.head(h.max(dim=2)[0])
        if self.spelling == "values":
            return self.head(torch.max(h, dim=-1, keepdim=True).values.squeeze(-1))
        return self.head(torch.max(h, dim=1).values.unsqueeze(1).expand(-1, 4, -1).mean(-1))  # over channels


@pytest.mark.parametrize("spelling", ["index", "values", "channels"])
def test_a_max_over_time_with_its_indices_is_followed_and_over_channels_refused(spelling: str) -> None:
    torch.manual_seed(0)
    model = TemporalMaxPool(spelling).double()
    signals, labels = torch.randn(4, 3, 7, dtype=torch.float64), torch.randint(0, 2, (4,))
    graph = ChannelGraph(model, signals)
    if spelling == "channels":
        assert "reduces over dimension 1" in graph.skipped()["conv"]
        return
    assert graph.sites["conv"].kinks  # a maximum: a kink, as max pooling
    assert_exact_splits(model, signals, labels, ["conv"], allow_kinks=True, index_below=1e9)


class NormalisedOverTime(nn.Module):
    """A LayerNorm over the time axis of (N, C, T) (each channel on its own, as an InstanceNorm) or over channels."""

    def __init__(self, over: str) -> None:
        super().__init__()
        self.over = over
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm(6 if over == "time" else 4)
        self.mix = nn.Conv1d(4, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.over == "time":
            h = self.norm(h)
        elif self.over == "functional":
            h = F.layer_norm(h, (6,))
        else:
            h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        return self.head(torch.tanh(self.mix(torch.tanh(h))).mean(2))


@pytest.mark.parametrize("over", ["time", "functional", "channels"])
def test_a_layer_norm_over_time_acts_on_each_channel_alone_and_over_channels_is_refused(over: str) -> None:
    torch.manual_seed(0)
    model = NormalisedOverTime(over).double().eval()
    signals, labels = torch.randn(5, 3, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    graph = ChannelGraph(model, signals)
    if over == "channels":
        assert "'norm': LayerNorm: normalises across channels" in graph.skipped()["conv"]
        return
    site = graph.sites["conv"]
    assert (site.engine, site.exact, site.splittable) == ("segment", True, True)
    assert_exact_splits(model, signals, labels, ["conv"], index_below=1e9)
    net = SplittableNetwork(model, signals)
    net.split([SplitRequest("conv", 1)], 0.0)
    assert model.conv.out_channels == 5 and model(signals).shape == (5, 3)


class BroadcastResidual(nn.Module):
    """BC-ResNet's pattern: a 1 x 1 convolution over a block's channels added back onto the same channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.depthwise = nn.Conv1d(4, 4, 3, padding=1, groups=4)
        self.pointwise = nn.Conv1d(4, 4, 1)
        self.head = nn.Conv1d(4, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = F.silu(self.conv(x))
        return self.head(torch.tanh(a + self.pointwise(torch.tanh(self.depthwise(a))))).mean(-1)


@pytest.mark.parametrize("solver", ["dense", "lobpcg"])
def test_a_layer_that_reads_the_channels_it_writes_back_splits_exactly_by_the_whole_loss(solver: str) -> None:
    """Its rows are members of the site (it writes the site's channels), but each row also reads every other
    neuron's channel: a split moves those outputs too, which no per-neuron closed form sees (the segment engine's
    predictions were 0.3 to 1.0 of the measured change). The Hessian of the whole loss in the split does."""
    torch.manual_seed(0)
    model = BroadcastResidual().double().eval()
    signals, labels = torch.randn(6, 3, 7, dtype=torch.float64), torch.randint(0, 3, (6,))
    site = ChannelGraph(model, signals).sites["conv"]
    assert (site.engine, site.exact) == ("loss", True)
    assert [m.module for m in site.members] == ["conv", "depthwise", "pointwise"]
    assert_exact_splits(model, signals, labels, ["conv"], index_below=1e9)
    net = SplittableNetwork(model, signals)
    dense = net.splitting([(signals, labels)], F.cross_entropy)["conv"].indexes
    found = net.splitting(
        [(signals, labels)], F.cross_entropy, solver=solver, tolerance=1e-8, operator_dtype=torch.float64
    )["conv"].indexes
    torch.testing.assert_close(found, dense, rtol=1e-5, atol=1e-9)


class SqueezeExcitation1d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv1d(channels, channels // 2, 1), nn.Conv1d(channels // 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean(-1, keepdim=True)))))


class SEResidualBlock(nn.Module):
    """SE-ResNet's block with a 1 x 1 shortcut: the gate reads the block's output before (or after) its activation."""

    def __init__(self, gate_after_activation: bool) -> None:
        super().__init__()
        self.after = gate_after_activation
        self.conv1, self.bn1 = nn.Conv1d(4, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6)
        self.conv2, self.bn2 = nn.Conv1d(6, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8)
        self.se = SqueezeExcitation1d(8)
        self.short = nn.Conv1d(4, 8, 1, bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.silu(self.bn1(self.conv1(x)))))
        y = self.se(F.silu(y) if self.after else y)
        return self.head(F.silu(y + self.short(x)).mean(-1))


@pytest.mark.parametrize("after", [False, True], ids=["gate-on-linear-part", "gate-after-activation"])
def test_a_squeeze_excitation_inside_a_residual_block_is_a_constant_of_the_split_where_it_reads_linear_values(
    after: bool,
) -> None:
    """Read where the block is still linear in theta, the gate's consumer sees the offspring's exact mean: both see
    its old value and the block's S is exact; read after an activation, the mean moves at second order, and the
    site is the paper's per-layer one, said to be inexact."""
    torch.manual_seed(0)
    model = _prepare(SEResidualBlock(after))
    signals, labels = torch.randn(6, 4, 10, dtype=torch.float64), torch.randint(0, 3, (6,))
    site = ChannelGraph(model, signals).sites["conv2"]
    assert site.gates == ["se.fc2"] and site.exact is not after
    if not after:
        assert site.engine == "segment" and [m.module for m in site.members] == ["conv2", "short"]
        assert_exact_splits(model, signals, labels, ["conv2"], index_below=1e9)


class PreActivationBlock(nn.Module):
    """A pre-activation residual block with ReLU (WideResNet's): the stream is summed before any activation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = h + self.conv2(F.relu(self.conv1(F.relu(h))))
        return self.head(F.relu(h).mean((2, 3)))


@pytest.mark.parametrize("surrogate", [None, 4.0])
def test_a_relu_residual_stream_is_refused_as_a_stream_not_for_its_curvature(surrogate) -> None:
    """The curvature message would promise that a surrogate helps; for a stream it does not."""
    skipped = ChannelGraph(PreActivationBlock(), _images()[0].float(), relu_surrogate=surrogate).skipped()
    for layer in ("stem", "conv2"):
        assert skipped[layer].startswith("its channels pass a residual sum before any activation"), layer


class ResidualTail(nn.Module):
    """A stem's activated channels summed with a residual block's output, then only linear maps (or a ReLU)."""

    def __init__(self, after_sum: str) -> None:
        super().__init__()
        self.after_sum = after_sum
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.softplus(self.stem(x))
        h = h + self.conv2(torch.tanh(self.conv1(h)))
        h = F.relu(h) if self.after_sum == "relu" else torch.tanh(h) if self.after_sum == "tanh" else h
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("after_sum", ["linear", "relu", "tanh"])
def test_a_stem_summed_with_a_block_is_exact_when_no_curvature_follows_the_sum(after_sum: str) -> None:
    """The block's output is a copy for both offspring (its conv reads their mean through a consumer), so with only
    linear maps (or kinks) after the sum every consumer averages the offspring; a curvature after it they see
    separately, which the per-layer S does not."""
    torch.manual_seed(0)
    model = ResidualTail(after_sum).double().eval()
    images, labels = _images(6, 8)
    site = ChannelGraph(model, images).sites["stem"]
    assert site.engine == "ridge" and site.exact is (after_sum != "tanh")
    if after_sum == "tanh":
        assert "then a nonlinearity that the offspring see separately ('tanh" in site.inexact_reason
        return
    assert bool(site.kinks) is (after_sum == "relu")
    assert_exact_splits(model, images, labels, ["stem"], allow_kinks=True, index_below=1e9)


#: what hand-written code does to each channel's own positions (smooth maps of the channel, exact sites), and two
#: normalisations across the channels, with the refusal each gets
CHANNEL_MAPS = {
    "softmax-positions": lambda h: torch.softmax(h.flatten(2), dim=-1).view_as(h),  # spatial attention maps
    "log-softmax-last": lambda h: h.log_softmax(-1),
    "std": lambda h: h / h.std(dim=(2, 3), keepdim=True),
    "var": lambda h: h * torch.var(h, dim=(2, 3), keepdim=True),
    "logsumexp": lambda h: h - torch.logsumexp(h, dim=(2, 3), keepdim=True),
    "normalize": lambda h: F.normalize(h.flatten(2), dim=2).view_as(h),
    "instance_norm": F.instance_norm,
    "softmax-channels": lambda h: F.softmax(h, dim=1),
    "normalize-channels": lambda h: F.normalize(h, dim=1),
}
ACROSS_CHANNELS = {
    "softmax-channels": "'softmax' (softmax) normalises across dimension 1",
    "normalize-channels": "'normalize' (normalize) normalises across dimension 1",
}


class ChannelwiseMap(nn.Module):
    """conv -> one of CHANNEL_MAPS -> tanh -> 1 x 1 conv -> tanh -> pooled head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.transform = CHANNEL_MAPS[kind]
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.transform(self.conv(x))
        return self.head(torch.tanh(self.mix(torch.tanh(h))).mean((2, 3)))


@pytest.mark.parametrize("kind", list(CHANNEL_MAPS))
def test_a_map_of_each_channels_own_positions_is_smooth_and_one_across_channels_is_refused(kind: str) -> None:
    torch.manual_seed(0)
    model = ChannelwiseMap(kind).double().eval()
    images, labels = _images(5, 4)
    graph = ChannelGraph(model, images)
    if kind in ACROSS_CHANNELS:
        assert ACROSS_CHANNELS[kind] in graph.skipped()["conv"]
        return
    site = graph.sites["conv"]
    assert (site.engine, site.exact, site.splittable) == ("segment", True, True)
    assert_exact_splits(model, images, labels, ["conv"], index_below=1e9)


class ReLUBeforeTheGate(SEResidualBlock):
    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn2(self.conv2(F.silu(self.bn1(self.conv1(x))))))
        return self.head(F.silu(self.se(y) + self.short(x)).mean(-1))


def test_a_gate_read_after_a_relu_is_named_as_the_reason_not_a_residual_stream() -> None:
    graph = ChannelGraph(_prepare(ReLUBeforeTheGate(False)), torch.randn(2, 4, 10, dtype=torch.float64))
    assert graph.skipped()["conv2"].startswith("the gate 'se.fc2' reads these channels after a nonlinearity")
