"""The channel graph: which layers are sites, which are coupled, and clear errors for everything else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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
    assert "classifier" in graph.not_sites  # the logits reach the output, not an activation
    for site in graph.sites.values():
        module = dict(model.named_modules())[site.name]
        assert site.num_neurons == (module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def test_vgg_sites_and_neuron_dimensions():
    model, inputs, _ = zoo_model("vgg19", width=4)
    graph = ChannelGraph(model, inputs)
    assert len(graph.sites) == 16
    first = graph.sites["features.0.0"]
    assert (first.kind, first.neuron_dim, first.batch_norm) == ("conv", 3 * 9, "features.0.1")  # no conv bias
    assert all(site.exact for site in graph.sites.values())


def test_mobilenet_sites_know_their_depthwise_blocks():
    model, inputs, _ = zoo_model("mobilenetv1", width=4)
    graph = ChannelGraph(model, inputs)
    depthwise = graph.sites["blocks.3.depthwise.0"]
    assert (depthwise.kind, depthwise.neuron_dim) == ("depthwise", 9)
    pointwise = graph.sites["blocks.2.pointwise.0"]
    assert pointwise.depthwise_chain == ("blocks.3.depthwise.0", "blocks.3.depthwise.1", "blocks.3.depthwise.2")
    assert graph.sites["blocks.12.pointwise.0"].depthwise_chain is None  # feeds pooling, not a depthwise block
    roles = graph.coupled_modules("blocks.3.depthwise.0")
    # the depthwise channel is also the upstream pointwise channel: that producer is copied exactly
    assert "blocks.2.pointwise.0" in roles["producers"] and "blocks.3.pointwise.0" in roles["consumers"]


def test_concatenation_and_flatten_couple_the_right_columns():
    model, inputs, _ = zoo_model("concat", width=4)
    graph = ChannelGraph(model, inputs)
    left = graph.closure("left.0", 2)
    right = graph.closure("right.0", 1)
    concatenated = next(name for name in left if name.startswith("cat"))
    assert left[concatenated] == [2] and right[concatenated] == [4 + 1]  # offset of the right branch
    assert graph.coupled_modules("left.0")["consumers"] == ["mixed.0"]
    # one channel of 'mixed' is a block of H*W = 4*4 inputs of 'hidden'
    flattened = graph.closure("mixed.0", 3)
    assert flattened[next(name for name in flattened if name.startswith("flatten"))] == list(range(48, 64))


def test_residual_coupling_is_reported():
    model, inputs, _ = zoo_model("resnet", width=4)
    graph = ChannelGraph(model, inputs)
    assert graph.sites["blocks.0.conv1"].exact
    assert "add" in graph.not_sites["blocks.0.conv2"]
    stem = graph.sites["stem.0"]
    assert not stem.exact and "separately through the nonlinearity" in stem.inexact_reason
    with pytest.raises(GraphError, match="inexact site"):
        split_network(model, graph, [SplitRequest("stem.0", 0, torch.zeros(27))], 0.1)


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
    with pytest.raises(GraphError, match=r"'classifier' is not a splittable site \(its output is the model's output"):
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


class _WithTranspose(nn.Module):
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


class _FunctionalActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(F.softplus(self.fc(x)))


@pytest.mark.parametrize(
    ("model", "inputs", "site", "message"),
    [
        (_WithLayerNorm(), torch.randn(2, 3, 8, 8), "conv", r"module 'norm' \(LayerNorm\) is not supported"),
        (_WithTranspose(), torch.randn(3, 5), "fc", r"operation 'transpose' \(transpose\) is not supported"),
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


def test_functional_activations_are_not_sites_and_say_why():
    graph = ChannelGraph(_FunctionalActivation(), torch.randn(2, 5))
    assert "fc" not in graph.sites
    assert "use an activation module" in graph.not_sites["fc"]


def test_relu_needs_an_explicit_surrogate():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    assert "relu_surrogate" in ChannelGraph(model, torch.randn(2, 3)).not_sites["0"]
    site = ChannelGraph(model, torch.randn(2, 3), relu_surrogate=2.0).sites["0"]
    assert site.activation.surrogate is not None and "softplus(beta=2)" in site.activation.name
