"""The two theorem checks of MATH.md on whole networks, in float64, on every zoo model and on the networks people
actually train (tests/architectures.py):

1. a split with eps = 0 keeps the function; with eps = 1e-3 along v the loss changes by eps^2/2 v^T S v (within 2%),
   for several neurons of several layers at once (no cross terms);
2. S is the Hessian of the loss in the split's own perturbation: duplicate neuron j exactly, move its two offspring
   by +delta and -delta, and differentiate the loss twice in delta by autograd (1e-8).

A ReLU network with ``relu_surrogate`` takes only the first half of check 1: its S is a surrogate by design, so
neither the loss change nor the Hessian (zero almost everywhere) is expected to match it; the surrogate itself is
checked against its formula in test_network_statistics.py, and the same ResNet-18 with SiLU takes every check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from architectures import AudioNet, GatedMLP, InPlaceSiLUNet, PreLNBlock, ResNet18, inputs_for
from deep_helpers import loss_of, randomise_batch_norms, split_hessian, zoo_model
from torch import nn

from splitgrow import SplittableNetwork
from splitgrow.graph import ChannelGraph
from splitgrow.models import MODELS
from splitgrow.statistics import splitting_matrices
from splitgrow.surgery import SplitRequest, split_network

DTYPE = torch.float64
EPSILON = 1e-3


def custom_model(name: str, seed: int = 0):
    """(model, inputs, targets, graph options) of a test architecture in float64, eval mode."""
    torch.manual_seed(seed)
    options = {}
    if name == "resnet18-relu":
        model, options = ResNet18(width=2, bottleneck=True), {"relu_surrogate": 3.0}
    elif name == "resnet18-silu":
        model = ResNet18(width=2, activation=nn.SiLU, bottleneck=True)
    elif name == "transformer":
        model = PreLNBlock()
    elif name == "gated":
        model = GatedMLP()
    elif name == "audio":
        model = AudioNet()
    else:
        model = InPlaceSiLUNet()
    model = model.to(DTYPE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomise_batch_norms(model, generator)
    model.eval()
    inputs = inputs_for(model, 10, generator, DTYPE)
    targets = torch.randint(0, 3, (10,), generator=generator)
    return model, inputs, targets, options


CUSTOM = ["resnet18-relu", "resnet18-silu", "transformer", "gated", "audio", "inplace-silu"]
SMOOTH = [name for name in CUSTOM if name != "resnet18-relu"]


def model_and_data(name: str, seed: int = 0):
    if name in MODELS:
        model, inputs, targets = zoo_model(name, seed=seed)
        return model, inputs, targets, {}
    return custom_model(name, seed)


ALL = sorted(MODELS) + CUSTOM


@pytest.mark.parametrize("name", ALL)
def test_zero_epsilon_splits_keep_the_function(name):
    model, inputs, targets, options = model_and_data(name)
    graph = ChannelGraph(model, inputs, **options)
    with torch.no_grad():
        before = model(inputs)
    generator = torch.Generator().manual_seed(3)
    requests = [
        SplitRequest(site.name, site.num_neurons // 2, torch.randn(site.neuron_dim, generator=generator, dtype=DTYPE))
        for site in graph.splittable_sites()
    ]
    assert requests
    split_network(model, graph, requests, 0.0, allow_inexact=True)
    with torch.no_grad():
        after = model(inputs)
    assert float((after - before).abs().max()) <= 1e-10
    assert graph.fingerprint != ChannelGraph(model, inputs, **options).fingerprint  # it grew


@pytest.mark.parametrize("name", sorted(MODELS) + SMOOTH)
def test_several_splits_change_the_loss_by_the_second_order_prediction(name):
    model, inputs, targets, options = model_and_data(name, seed=1)
    net = SplittableNetwork(model, inputs, **options)
    halves = [(inputs[:5], targets[:5]), (inputs[5:], targets[5:])]
    results = net.splitting(halves, F.cross_entropy, keep_matrices=True)
    # exact, kink-free sites only: kinks (max pooling) add a second-order term no splitting matrix sees
    clean = {name: r for name, r in results.items() if net.sites[name].exact and not net.sites[name].kinks}
    requests = net.select(clean, max_count=6)
    assert requests, f"no exact, kink-free negative index in {name}"
    predicted = sum(0.5 * EPSILON**2 * float(results[r.site].indexes[r.channel]) for r in requests)
    quadratic = sum(
        0.5 * EPSILON**2 * float(r.direction @ results[r.site].matrices[r.channel] @ r.direction) for r in requests
    )
    assert quadratic == pytest.approx(predicted, rel=1e-9)
    before = loss_of(model, inputs, targets)
    report = net.split(requests, EPSILON)
    assert report.predicted_change == pytest.approx(predicted, rel=1e-9)
    assert loss_of(model, inputs, targets) - before == pytest.approx(predicted, rel=0.02)


def _hessian_cases():
    cases = []
    for name in sorted(MODELS):
        cases.append((name, None))  # one site per zoo model (the deepest exact one with d <= 160)
    for name in SMOOTH:
        cases.append((name, "all"))
    return cases


@pytest.mark.parametrize(("name", "which"), _hessian_cases())
def test_splitting_matrices_are_the_hessian_of_the_split(name, which):
    model, inputs, targets, options = model_and_data(name, seed=2)
    graph = ChannelGraph(model, inputs, **options)
    matrices = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)
    # an inexact site's S is the paper's per-layer matrix, not this Hessian
    sites = [s for s in graph.splittable_sites() if s.exact and s.neuron_dim <= 160]
    if which is None:
        sites = sites[-1:]
    elif len(sites) > 3:  # the first, a middle and the last: every kind of site, at a bounded cost
        sites = [sites[0], sites[len(sites) // 2], sites[-1]]
    assert sites
    for site in sites:
        channel = site.num_neurons - 1
        expected = split_hessian(model, graph, site.name, channel, inputs, targets)
        found = matrices[site.name][channel]
        scale = float(expected.abs().max())
        assert scale > 1e-14, f"{site.name}: a zero Hessian tests nothing"
        assert float((found - expected).abs().max()) <= 1e-8 * scale, site.name


def _hessian_models():
    """Sites whose S comes from other engines and layouts than the zoo's: a transposed convolution (its neurons
    are dim 1 of its weight), a ReLU6 expansion feeding a depthwise filter (S is their mixed derivative alone), a
    GLU pairing each channel with its gate, and a softmax over each channel's positions."""
    from test_user_architectures import ChannelwiseMap, GatedConvolution, InvertedResidual

    decoder = nn.Sequential(
        nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 2, 3),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    images = torch.randn(4, 3, 4, 4, dtype=DTYPE)
    return {
        "conv-transpose": (decoder, images, "0"),
        "relu6-depthwise": (InvertedResidual(), images, "expand.0"),
        "glu": (GatedConvolution(functional=False), torch.randn(4, 3, 6, dtype=DTYPE), "conv"),
        "softmax-over-positions": (ChannelwiseMap("softmax-positions"), images, "conv"),
    }


@pytest.mark.parametrize("name", ["conv-transpose", "relu6-depthwise", "glu", "softmax-over-positions"])
def test_splitting_matrices_of_other_engines_are_the_hessian_of_the_split(name):
    torch.manual_seed(3)
    model, inputs, site = _hessian_models()[name]
    model(inputs.float())  # materialise lazy layers
    model = model.double().eval()
    with torch.no_grad():
        randomise_batch_norms(model, torch.Generator().manual_seed(4))
    targets = torch.randint(0, 3, (len(inputs),))
    graph = ChannelGraph(model, inputs)
    assert graph.sites[site].exact
    matrices = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)[site]
    for channel in (0, graph.sites[site].num_neurons - 1):
        expected = split_hessian(model, graph, site, channel, inputs, targets)
        scale = float(expected.abs().max())
        assert scale > 1e-14, f"{name}: a zero Hessian tests nothing"
        assert float((matrices[channel] - expected).abs().max()) <= 1e-8 * scale, (name, channel)
