"""Models a user brings, written the way torchvision and timm write them: what splitgrow grows in them, with exact
mathematics (float64), and what it refuses, with a message that names the module, instead of a broken model.

Each test here failed before the fix it guards: a Dropout between two token Linears, pooling or a BatchNorm1d
across a Linear's features, a one-neuron layer broadcast against a wider tensor, a layer-scale parameter and tied
weights all let a split through that broke the model or silently changed its function; a DenseNet's concatenated
channels were refused as a "residual sum"; channels-last weights came out of a split contiguous; a wrong example
input printed torch.fx's traceback; L-BFGS's flat history crashed the next step; a grower on a two-input model
failed after its first split.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import assert_exact_splits
from torch import Tensor, nn

from splitgrow import ChannelGraph, SplittableNetwork
from splitgrow.errors import ConfigError
from splitgrow.graph import GraphError
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.surgery import SplitRequest

pytestmark = pytest.mark.filterwarnings("ignore::splitgrow.errors.SplitgrowWarning")


# ---------------------------------------------------------------------------------------------- token models


class ViTBlock(nn.Module):
    """timm's pre-LN block: attention, then an MLP whose Dropout sits between GELU and the second Linear."""

    def __init__(self, dim: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.position = nn.Parameter(0.02 * torch.randn(1, 4, dim))
        self.block = ViTBlock(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.block(x)).mean(dim=1))


def test_a_dropout_between_token_linears_passes_the_hidden_units_to_their_consumer() -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    model = ViT()
    graph = ChannelGraph(model, images.float())
    assert graph.coupled_modules("block.mlp.0")["consumers"] == ["block.mlp.3"]
    assert "inside module 'block.attn' (MultiheadAttention)" in graph.skipped()["block.attn.out_proj"]
    assert_exact_splits(model, images, labels, ["block.mlp.0"])


class LinearThen(nn.Module):
    """A Linear on (N, T, D) tokens followed by a layer that does not keep its features apart."""

    def __init__(self, after: nn.Module, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(6, width)
        self.after = after
        self.act = nn.Tanh()
        self.head = nn.LazyLinear(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.after(self.fc(x))).mean(dim=1))


@pytest.mark.parametrize(
    "after",
    [nn.AvgPool1d(2), nn.MaxPool1d(2), nn.BatchNorm1d(5), nn.Upsample(scale_factor=2)],
    ids=["avgpool1d", "maxpool1d", "batchnorm1d", "upsample"],
)
def test_a_layer_that_mixes_a_linears_features_blocks_it(after: nn.Module) -> None:
    """These layers read dimension 1 as channels; on tokens they pool, normalise or resample the Linear's features,
    which a split would lengthen (the average pooling's output silently changed before)."""
    model = LinearThen(after).eval()
    tokens = torch.randn(2, 5, 6)
    model(tokens)  # materialise the lazy head
    graph = ChannelGraph(model, tokens)
    reason = graph.skipped()["fc"]
    assert "module 'after' mixes the positions of dimension 2 of its input" in reason
    with pytest.raises(GraphError, match="mixes the positions"):
        SplittableNetwork(model, tokens).split([SplitRequest("fc", 0, None)], 0.0)
    assert model.fc.out_features == 8


# ---------------------------------------------------------------------------------------------- broadcasting


class SingleNeuronGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(6, 1)
        self.act = nn.Sigmoid()
        self.values = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.gate(x)) * self.values(x))


class LayerScale(nn.Module):
    """CaiT / ConvNeXt's learned per-channel scale on hidden units: a parameter without a batch dimension."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv = conv
        self.layer = nn.Conv2d(3, 4, 3, padding=1) if conv else nn.Linear(5, 4)
        self.act = nn.SiLU()
        self.scale = nn.Parameter(torch.rand(4, 1, 1) + 0.5 if conv else torch.rand(4) + 0.5)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(self.layer(x)) * self.scale
        return self.head(hidden.mean(dim=(2, 3)) if self.conv else hidden)


@pytest.mark.parametrize(
    ("build", "inputs", "site", "message"),
    [
        (SingleNeuronGate, (2, 6), "gate", "'mul' broadcasts dimension 1 of 'act'"),
        (
            lambda: LayerScale(conv=False),
            (2, 5),
            "layer",
            "'scale' (no batch dimension) is broadcast along dimension 1",
        ),
        (lambda: LayerScale(conv=True), (2, 3, 6, 6), "layer", "'scale' (no batch dimension) is broadcast along"),
    ],
    ids=["one-neuron-gate", "layer-scale-linear", "layer-scale-conv"],
)
def test_a_broadcast_tensor_blocks_the_channels_it_meets(build, inputs: tuple, site: str, message: str) -> None:
    model = build()
    example = torch.randn(*inputs)
    graph = ChannelGraph(model, example)
    assert not graph.sites[site].splittable
    assert message in graph.sites[site].reason
    with pytest.raises(GraphError, match="cannot split"):
        SplittableNetwork(model, example).split([SplitRequest(site, 0, None)], 0.0)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(5, 5)
        self.act = nn.Tanh()
        self.decode = nn.Linear(5, 5)
        self.decode.weight = self.encode.weight
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.decode(self.act(self.encode(x)))))


def test_tied_weights_are_refused_naming_both_modules() -> None:
    model = Tied()
    graph = ChannelGraph(model, torch.randn(2, 5))
    assert graph.sites == {}
    assert "shares its tensor 'weight' with 'decode.weight' (tied weights)" in graph.skipped()["encode"]
    assert "'encode.weight'" in graph.skipped()["decode"]


# ---------------------------------------------------------------------------------------------- convolutional


class DenseLayer(nn.Module):
    """torchvision's DenseNet layer (BN -> act -> 1x1 conv -> BN -> act -> 3x3 conv) on the concatenated features."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.act1 = nn.BatchNorm2d(channels), nn.SiLU()
        self.conv1 = nn.Conv2d(channels, 2 * growth, 1, bias=False)
        self.norm2, self.act2 = nn.BatchNorm2d(2 * growth), nn.SiLU()
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.act2(self.norm2(self.conv1(self.act1(self.norm1(x))))))


class DenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.layers = nn.ModuleList([DenseLayer(4, 2), DenseLayer(6, 2), DenseLayer(8, 2)])
        self.norm, self.act = nn.BatchNorm2d(10), nn.Softplus()
        self.classifier = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        x = self.act(self.norm(torch.cat(features, 1)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomise_batch_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(0.1 * torch.randn(size, generator=generator))
    return model


def test_densenet_stem_and_growth_channels_are_exact_sites() -> None:
    """Every later layer reads the stem's and each layer's new channels through its own BN -> activation: each is
    a segment site, exact, although the other parts of those concatenations depend on earlier splits."""
    torch.manual_seed(0)
    model = _randomise_batch_norms(DenseNet())
    images, labels = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    graph = ChannelGraph(model, images.float())
    for name in ("stem", "layers.0.conv2", "layers.1.conv2"):
        assert graph.sites[name].engine == "segment", graph.skipped().get(name)
    assert_exact_splits(model, images, labels, ["stem", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"])


def test_a_channels_last_model_keeps_its_memory_format_and_function_across_a_split() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 5, 3), nn.Tanh(), nn.Flatten(1)
    )
    model = _randomise_batch_norms(model).double().eval().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(images).square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        outputs = model(images)
    SplittableNetwork(model, images).split([SplitRequest("0", 1, None)], 0.0, optimizer=optimizer)
    with torch.no_grad():
        torch.testing.assert_close(model(images), outputs, rtol=0, atol=1e-12)
    for weight in (model[0].weight, model[3].weight, optimizer.state[model[3].weight]["momentum_buffer"]):
        assert weight.shape[:2] in ((5, 3), (5, 5)) and weight.is_contiguous(memory_format=torch.channels_last)


def test_max_pooling_call_names_itself_among_the_kinks() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(F.max_pool2d(F.silu(self.conv(x)), 2).mean(dim=(2, 3)))

    graph = ChannelGraph(Functional(), torch.randn(2, 3, 6, 6))
    assert graph.sites["conv"].kinks == "'max_pool2d' (max_pool2d)"


# ---------------------------------------------------------------------------------------------- errors


def test_an_input_the_model_rejects_is_one_message_naming_the_module(capfd: pytest.CaptureFixture) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(GraphError) as error:
        ChannelGraph(model, torch.randn(2, 5, 8, 8))
    message = str(error.value)
    assert "module '0' raised RuntimeError" in message and "expected input" in message
    assert "ShapeProp" not in message and "While executing" not in message
    assert capfd.readouterr().err == ""  # torch.fx's ShapeProp printed its traceback here


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's import warns about torch.jit
@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["data-parallel", "compiled"])
def test_a_wrapped_model_is_refused_with_the_attribute_that_holds_it(wrap) -> None:
    wrapped = wrap(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    held = r"give splitgrow the model itself \(model\.module\)|give the graph the module it compiled \(model\._orig_mod"
    with pytest.raises(GraphError, match=held):
        ChannelGraph(wrapped, torch.randn(2, 3))


def test_optimiser_state_spanning_several_parameters_is_refused_before_the_split() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    inputs, targets = torch.randn(8, 5), torch.randint(0, 3, (8,))
    optimizer = torch.optim.LBFGS(model.parameters())

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    net = SplittableNetwork(model, inputs)
    before = copy.deepcopy(model.state_dict())
    # the second hidden layer: L-BFGS keeps its flat history in the first layer's weight, which does not grow
    with pytest.raises(GraphError, match=r"\(LBFGS\) has 79 entries for a parameter of 30: it spans several"):
        net.split([SplitRequest("2", 0, None)], 0.0, optimizer=optimizer)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    # a grower's optimiser always has state by its first stage: refused when it is given, with the way round
    with pytest.raises(ConfigError, match=r"cannot carry LBFGS's state .* give the grower optimizer=None and build"):
        Grower(
            model,
            inputs,
            [(inputs, targets)],
            policy=GrowthPolicy(count=1),
            loss_function=F.cross_entropy,
            optimizer=optimizer,
        )


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(4, 5)
        self.text = nn.Linear(3, 5)
        self.act = nn.Tanh()
        self.head = nn.Linear(5, 2)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        return self.head(self.act(self.image(image) + self.text(text)))


def test_a_grower_grows_a_model_with_two_inputs_and_counts_its_flops() -> None:
    torch.manual_seed(0)
    model = TwoInputs().double()
    inputs = (torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    targets = torch.randint(0, 2, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.cross_entropy(model(*inputs), targets).backward()
    optimizer.step()
    grower = Grower(
        model,
        inputs,
        [(inputs, targets)],
        policy=GrowthPolicy(first=1, count=2, max_stages=1),
        loss_function=lambda outputs, y: F.cross_entropy(outputs, y),
        optimizer=optimizer,
    )
    stage = grower.epoch_end()
    assert stage is not None and stage.widths_after == {"image": 7}
    # two Linears of 7 neurons (4 and 3 inputs) and the 7 -> 2 head, one multiply-add = 2 FLOPs
    assert stage.flops_after == 2 * (7 * 4 + 7 * 3 + 2 * 7)
    for parameter in model.parameters():
        assert optimizer.state[parameter]["exp_avg"].shape == parameter.shape
    optimizer.zero_grad()
    F.cross_entropy(model(*inputs), targets).backward()
    optimizer.step()


def test_a_model_without_parameters_has_no_sites() -> None:
    net = SplittableNetwork(nn.Tanh(), torch.randn(2, 3))
    assert net.widths() == {}


class FunctionalLayers(nn.Module):
    """A layer written as a function of raw parameters, as some research code does, and a layer-scale parameter."""

    def __init__(self, call: str) -> None:
        super().__init__()
        self.call = call
        self.kernel = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.projection = nn.Parameter(torch.randn(6, 4))
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.call == "conv2d":
            return self.head(F.silu(F.conv2d(x, self.kernel, padding=1)).mean((2, 3))[:, :4])
        pooled = F.silu(self.conv(x)).mean((2, 3))
        if self.call == "linear":  # the weight transposed first
            features = F.linear(pooled, self.projection.T)
        else:
            features = pooled @ self.projection
        return self.head(features * self.scale)


@pytest.mark.parametrize(
    ("call", "parameter"), [("conv2d", "kernel"), ("linear", "projection"), ("matmul", "projection")]
)
def test_a_parameter_used_by_a_functional_layer_is_listed_with_how_to_grow_it(call: str, parameter: str) -> None:
    from splitgrow.inspection import site_table

    example = torch.randn(2, 3, 5, 5)
    graph = ChannelGraph(FunctionalLayers(call), example)
    note = graph.skipped()[parameter]
    assert f"parameter '{parameter}' belongs to a functional {call} call" in note and "nn.Conv2d" in note
    rows, _ = site_table(graph, example)
    assert {row["site"]: row["parameters"] for row in rows}[parameter] == getattr(graph.model, parameter).numel()
    assert "scale" not in graph.skipped()  # a parameter that scales features is no layer


class OwnConv(nn.Module):
    """A convolution layer of the user's own, written with F.conv2d (fx traces through it)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, padding=1)


def test_a_layer_of_the_users_own_written_functionally_says_to_register_it() -> None:
    model = nn.Sequential(OwnConv(), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 3, 4, 4))
    note = ChannelGraph(model, torch.randn(2, 3, 4, 4)).skipped()["0.weight"]
    assert "belongs to a functional conv2d call" in note and "register a handler for OwnConv" in note


class WeightReadTwice(nn.Module):
    """A convolution called as a module and again, on flipped images, through its own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        direct = torch.tanh(self.conv(x)).mean((2, 3))
        flipped = torch.tanh(F.conv2d(x.flip(-1), self.conv.weight, self.conv.bias, padding=1)).mean((2, 3))
        return self.head(torch.tanh(self.fc(torch.cat([direct, flipped], 1))))


class ReadsItsDtype(nn.Module):
    """Reads a layer's weight for its dtype and shape alone (a cast to the layer's precision): no second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x.to(self.conv.weight.dtype))).mean((2, 3))
        return self.head(torch.tanh(self.fc(h.view(-1, self.fc.weight.shape[1]))))


def test_reading_a_layers_dtype_or_shape_is_no_second_use() -> None:
    graph = ChannelGraph(ReadsItsDtype().double(), torch.randn(2, 3, 5, 5, dtype=torch.float64))
    assert graph.sites["conv"].splittable and graph.sites["fc"].splittable
    assert not any("outside its call" in reason for reason in graph.skipped().values())


def test_a_module_whose_weight_is_also_read_outside_its_call_is_refused_and_the_rest_grows() -> None:
    torch.manual_seed(0)
    model = WeightReadTwice().double()
    inputs, targets = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    net = SplittableNetwork(model, inputs[:2])
    note = net.graph.skipped()["conv"]
    assert "its tensor 'weight' is also read outside its call (by 'conv2d')" in note
    with pytest.raises(GraphError, match="'conv' is not a splittable site"):
        net.split([SplitRequest("conv", 0)], 0.1)
    policy = GrowthPolicy(first=1, every=1, count=2)
    grower = Grower(model, inputs[:2], [(inputs, targets)], policy=policy, loss_function=F.cross_entropy)
    assert grower.epoch_end() is not None
    assert (model.conv.out_channels, model.fc.out_features) == (4, 8)
    assert model(inputs).shape == (6, 3)


class DefaultsOfEveryKind(nn.Module):
    """A default fx cannot write into its generated code (a tuple) beside plain ones."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor, dims: tuple = (1,), scale: float = 2.0, flag: bool = True) -> Tensor:
        h = torch.tanh(self.fc(x))
        return self.head(h * scale if flag else h)


class TensorDefault(DefaultsOfEveryKind):
    def forward(self, x: Tensor, scale: Tensor = torch.ones(1)) -> Tensor:  # noqa: B008 - the pattern under test
        return self.head(torch.tanh(self.fc(x)) * scale)


class OptionalLabels(nn.Module):
    """A model written the HuggingFace way: optional labels, a loss computed inside, a dict of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor, labels: Tensor | None = None, return_dict: bool = True):
        logits = self.head(torch.tanh(self.fc(x)))
        if not return_dict:
            return logits
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def test_a_forward_with_optional_labels_is_traced_as_the_example_calls_it() -> None:
    from splitgrow.statistics import StatisticsError

    torch.manual_seed(0)
    model = OptionalLabels().double()
    inputs, targets = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    data = [(inputs, targets)]
    by_logits = SplittableNetwork(model, inputs[:2]).splitting(
        data, closure=lambda m, b: F.cross_entropy(m(b[0])["logits"], b[1])
    )["fc"]
    inside = SplittableNetwork(model, (inputs[:2], targets[:2])).splitting(
        data, closure=lambda m, b: m(b[0], b[1])["loss"]
    )["fc"]
    torch.testing.assert_close(inside.indexes, by_logits.indexes, rtol=1e-10, atol=1e-14)
    with pytest.raises(StatisticsError, match=r"calls the model with an input that its example input left out"):
        SplittableNetwork(model, inputs[:2]).splitting(data, closure=lambda m, b: m(b[0], b[1])["loss"])
    # a tuple default is traced as an input (fx cannot write it as a constant), a plain one as given; a tensor
    # default fx cannot trace at all: the message says what to do
    assert ChannelGraph(DefaultsOfEveryKind(), torch.randn(2, 4)).sites["fc"].splittable
    with pytest.raises(GraphError, match=r"argument 'scale' has a tensor as its default.*: default it to None"):
        ChannelGraph(TensorDefault(), torch.randn(2, 4))


class LayersWithoutNeurons(nn.Module):
    """Layers with weights that no split grows, each of which must still say why in the report."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.gru = nn.GRU(6, 6, batch_first=True)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.bilinear = nn.Bilinear(6, 6, 4)
        self.fc = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        h, _ = self.gru(h)
        a, _ = self.attn(h, h, h)
        pooled = a.mean(1)
        return self.head(torch.tanh(self.fc(self.bilinear(pooled, pooled))))


def test_every_layer_with_weights_has_a_row_and_a_frozen_site_says_it_is() -> None:
    model = LayersWithoutNeurons()
    graph = ChannelGraph(model, torch.randint(0, 10, (2, 5)))
    skipped = graph.skipped()
    assert skipped["embed"].startswith("Embedding: embedding rows are not neurons")
    assert skipped["gru"].startswith("GRU: recurrent layers are not supported: the layers that feed it keep")
    assert skipped["attn"].startswith("MultiheadAttention: attention heads are not growable")
    assert skipped["bilinear"].startswith("module 'bilinear' (Bilinear) is not supported")
    with_weights = {name for name, module in model.named_modules() if list(module.parameters(recurse=False))}
    assert with_weights <= set(skipped) | set(graph.sites)
    assert {row["site"]: row["note"] for row in graph.describe()}["fc"] == ""
    model.fc.requires_grad_(False)
    assert {row["site"]: row["note"] for row in graph.describe()}["fc"].startswith("frozen: no parameter")
