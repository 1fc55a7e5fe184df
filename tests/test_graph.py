"""The channel graph: which layers are sites, which channels are coupled, and clear reasons for everything else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from architectures import AudioNet, GatedMLP, PreLNBlock, ResNet18
from deep_helpers import zoo_model
from torch import nn

from splitgrow.graph import ChannelGraph, GraphError
from splitgrow.models import MODELS
from splitgrow.surgery import SplitRequest, split_network


@pytest.mark.parametrize("architecture", sorted(MODELS))
def test_every_zoo_model_has_splittable_sites(architecture):
    model, inputs, _ = zoo_model(architecture)
    graph = ChannelGraph(model, inputs)
    assert graph.splittable_sites()
    assert "reaches the model output" in graph.not_sites["classifier"]
    modules = dict(model.named_modules())
    for site in graph.sites.values():
        first = modules[site.members[0].module]
        assert site.num_neurons == first.weight.shape[0] // sum(m.module == site.name for m in site.members)
        assert site.neuron_dim == sum(m.neuron_dim for m in site.members)


def test_vgg_sites_neuron_dimensions_and_the_kinks_of_max_pooling():
    model, inputs, _ = zoo_model("vgg19", width=4)
    graph = ChannelGraph(model, inputs)
    assert len(graph.sites) == 16 and all(site.engine == "ridge" and site.exact for site in graph.sites.values())
    first = graph.sites["features.0.0"]
    assert (first.kind, first.neuron_dim, first.batch_norm) == ("conv2d", 3 * 9, "features.0.1")  # no conv bias
    # the last layer of each stage feeds max pooling, whose kinks the prediction leaves out
    kinked = {name for name, site in graph.sites.items() if site.kinks}
    assert kinked == {"features.1.0", "features.4.0", "features.9.0", "features.14.0", "features.19.0"}
    assert "MaxPool2d" in graph.sites["features.1.0"].kinks


def test_a_mobilenet_channel_is_one_neuron_of_its_pointwise_and_depthwise_filters():
    model, inputs, _ = zoo_model("mobilenetv1", width=4)
    graph = ChannelGraph(model, inputs)
    assert len(graph.sites) == 14  # the stem and 13 pointwise layers; the depthwise filters are their members
    site = graph.sites["blocks.2.pointwise.0"]
    assert [m.module for m in site.members] == ["blocks.2.pointwise.0", "blocks.3.depthwise.0"]
    assert (site.engine, site.neuron_dim, site.kind) == ("chain", 4 + 9, "conv2d+depthwise")
    assert graph.sites["blocks.12.pointwise.0"].engine == "ridge"  # feeds pooling, not a depthwise block
    roles = graph.coupled_modules("blocks.2.pointwise.0")
    assert roles["consumers"] == ["blocks.3.pointwise.0"]
    assert "blocks.3.depthwise.1" in roles["per_channel"]


def test_concatenation_and_flatten_couple_the_right_columns():
    model, inputs, _ = zoo_model("concat", width=4)
    graph = ChannelGraph(model, inputs)
    left = graph.closure("left.0", 2)
    right = graph.closure("right.0", 1)
    concatenated = next(key for key in left if key[0].startswith("cat"))
    assert left[concatenated] == [2] and right[concatenated] == [4 + 1]  # offset of the right branch
    assert graph.coupled_modules("left.0")["consumers"] == ["mixed.0"]
    # one channel of 'mixed' is a block of H*W = 4*4 inputs of 'hidden', and only that block
    flattened = graph.closure("mixed.0", 3)
    assert flattened[next(key for key in flattened if key[0].startswith("flatten"))] == list(range(48, 64))
    assert sorted(graph.closure("mixed.0", 3)[graph.sites["mixed.0"].space]) == [3]


def test_residual_streams():
    model, inputs, _ = zoo_model("resnet", width=4)
    graph = ChannelGraph(model, inputs)
    assert graph.sites["blocks.0.conv1"].exact
    stem = graph.sites["stem.0"]  # the stage-1 stream: the stem and block 0's conv2 summed, then read by block 1
    assert not stem.exact and "residual sum" in stem.inexact_reason
    assert "('blocks.0.act2')" in stem.inexact_reason  # named as the model names it, not as the traced node
    assert "copied exactly when site 'stem.0' is split" in graph.not_sites["blocks.0.conv2"]
    with pytest.raises(GraphError, match="inexact site"):
        split_network(model, graph, [SplitRequest("stem.0", 0, torch.ones(27))], 0.1)
    # a block whose shortcut is a convolution closes its stream: conv2 and the shortcut are one exact neuron
    joint = graph.sites["blocks.1.conv2"]
    assert [m.module for m in joint.members] == ["blocks.1.conv2", "blocks.1.shortcut.0"]
    assert (joint.engine, joint.exact, len(joint.branches)) == ("ridge", True, 2)


def test_torchvision_resnet_with_one_shared_in_place_relu():
    model = ResNet18(width=2, bottleneck=True)
    inputs = torch.randn(2, 3, 16, 16)
    plain = ChannelGraph(model, inputs)
    assert "relu_surrogate" in plain.not_sites["layers.0.0.conv1"]
    graph = ChannelGraph(model, inputs, relu_surrogate=2.0)
    inner = [f"layers.{stage}.{block}.conv1" for stage in range(4) for block in range(2)]
    inner += ["layers.4.0.conv1", "layers.4.0.conv2"]
    for name in inner:
        site = graph.sites[name]
        assert site.splittable and site.exact and not site.kinks, name
        assert site.surrogate == "phi'' of softplus(beta=2)"
    assert graph.has_in_place


def test_exclusion():
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs, exclude=["hidden.1"])
    assert not graph.sites["hidden.1"].splittable and graph.sites["hidden.1"].reason == "excluded by the user"
    with pytest.raises(GraphError, match="cannot split 'hidden.1': excluded by the user"):
        split_network(model, graph, [SplitRequest("hidden.1", 0)], 0.0)


def test_unknown_site_and_channel_name_the_module():
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="'nope' is not a splittable site; sites: hidden.1, hidden.3"):
        split_network(model, graph, [SplitRequest("nope", 0)], 0.0)
    with pytest.raises(GraphError, match=r"'classifier' is not a splittable site \('classifier' reaches the model"):
        split_network(model, graph, [SplitRequest("classifier", 0)], 0.0)
    with pytest.raises(GraphError, match="site 'hidden.3' has 4 channels, not channel 9"):
        split_network(model, graph, [SplitRequest("hidden.3", 9)], 0.0)


class _WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Softplus()
        self.norm = nn.LayerNorm([4, 6, 6])
        self.head = nn.Linear(4 * 36, 2)

    def forward(self, x):
        return self.head(self.norm(self.act(self.conv(x))).flatten(1))


class _BatchMover(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.act(self.fc(x)).transpose(0, 1).transpose(0, 1))


class _Branching(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize(
    ("model", "inputs", "site", "message"),
    [
        (_WithLayerNorm(), torch.randn(2, 3, 8, 8), "conv", r"'norm': LayerNorm: normalises across channels"),
        (_BatchMover(), torch.randn(3, 5), "fc", r"'transpose' moves the batch dimension"),
    ],
)
def test_unsupported_coupled_operations_name_the_module(model, inputs, site, message):
    graph = ChannelGraph(model, inputs)
    assert not graph.sites[site].splittable
    with pytest.raises(GraphError, match=message):
        split_network(model, graph, [SplitRequest(site, 0)], 0.0)


def test_untraceable_models_get_a_clear_error():
    with pytest.raises(GraphError, match="cannot trace _Branching with torch.fx"):
        ChannelGraph(_Branching(), torch.randn(2, 3))


class _Functional(nn.Module):
    """Activations called as functions, and one stateless module called twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(F.softplus(self.fc(x), beta=2.0))
        return self.head(self.act(self.fc2(x)))


def test_functional_activations_and_a_shared_stateless_module_make_sites():
    graph = ChannelGraph(_Functional(), torch.randn(2, 5))
    assert graph.sites["fc"].engine == "segment"  # softplus then tanh, both seen by the offspring separately
    assert graph.sites["fc2"].engine == "ridge" and graph.sites["fc2"].activation.name == "tanh"


def test_shared_weights_are_refused_with_the_reason():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.Tanh()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.act(self.fc(self.act(self.fc(x)))))

    graph = ChannelGraph(Shared(), torch.randn(2, 4))
    assert "is called 2 times (its weights are shared)" in graph.skipped()["fc"]


def test_relu_needs_an_explicit_surrogate():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    assert "relu_surrogate" in ChannelGraph(model, torch.randn(2, 3)).not_sites["0"]
    site = ChannelGraph(model, torch.randn(2, 3), relu_surrogate=2.0).sites["0"]
    assert site.activation.surrogate is not None and "softplus(beta=2)" in site.activation.name


def test_transformer_mlp_hidden_units_are_sites_on_the_last_dimension():
    graph = ChannelGraph(PreLNBlock(), torch.randn(2, 4, 3))
    site = graph.sites["fc1"]
    assert (site.engine, site.exact, site.splittable, site.space) == ("ridge", True, True, ("fc1", 2))
    assert site.activation.name == "gelu(tanh)"
    skipped = graph.skipped()
    assert "LayerNorm" in skipped["fc2"] and "'attn'" in skipped["fc2"]  # the residual stream cannot grow


def test_gated_units_are_one_neuron_of_both_halves():
    graph = ChannelGraph(GatedMLP(), torch.randn(2, 5, 4))
    site = graph.sites["fc1"]
    assert [(m.module, m.offset) for m in site.members] == [("fc1", 0), ("fc1", 3)]
    assert (site.engine, site.num_neurons, site.neuron_dim) == ("segment", 3, 10)


def test_conv1d_sites_and_their_description():
    graph = ChannelGraph(AudioNet(), torch.randn(2, 1, 40))
    assert graph.sites["conv1"].engine == "ridge" and graph.sites["conv1"].kind == "conv1d"
    conv2 = graph.sites["conv2"]
    assert [m.module for m in conv2.members] == ["conv2", "depthwise"] and conv2.engine == "chain"
    rows = {row["site"]: row for row in graph.describe()}
    assert rows["conv1"]["kind"] == "conv1d" and rows["conv2"]["members"] == ["conv2", "depthwise"]


class _Transposed(nn.Module):
    """Conv1d features (N, C, L) turned into tokens (N, L, C) for a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3, padding=1)
        self.act = nn.Softplus()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).transpose(1, 2)).mean(dim=1)


def test_channels_follow_a_transpose_into_a_linear():
    graph = ChannelGraph(_Transposed(), torch.randn(2, 2, 7))
    assert graph.sites["conv"].splittable and graph.coupled_modules("conv")["consumers"] == ["fc"]


def test_a_softplus_with_a_low_threshold_records_its_kink():
    model = nn.Sequential(nn.Linear(3, 4), nn.Softplus(threshold=1.0), nn.Linear(4, 1))
    site = ChannelGraph(model, torch.randn(2, 3)).sites["0"]
    assert "jumps by" in site.kinks and site.exact
    default = ChannelGraph(nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 1)), torch.randn(2, 3))
    assert default.sites["0"].kinks == ""


def test_parametrized_layers_are_refused_instead_of_resized_behind_their_back():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    parametrizations.weight_norm(model[0])
    graph = ChannelGraph(model, torch.randn(2, 3))
    assert "parametrizations" in graph.skipped()["0"]


def test_an_exclude_entry_that_names_no_module_is_an_error_with_the_closest_names():
    """A typo in exclude let the layer it meant grow, silently."""
    from splitgrow import SplittableNetwork

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    inputs = torch.randn(2, 4)
    with pytest.raises(
        GraphError, match=r"exclude names '00', which is no module of Sequential \(did you mean '0'\?\)"
    ):
        SplittableNetwork(model, inputs, exclude=["00"])
    with pytest.raises(GraphError, match=r"exclude must be a list of module names, got the string '0'"):
        ChannelGraph(model, inputs, exclude="0")
    assert not ChannelGraph(model, inputs, exclude=["0"]).sites["0"].splittable


def test_a_relu_site_says_how_to_give_it_curvature_in_python_and_on_the_command_line():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    reason = ChannelGraph(model, torch.randn(2, 4)).skipped()["0"]
    assert "every splitting index is 0; pass relu_surrogate=beta (splitgrow inspect: --relu-surrogate BETA)" in reason
