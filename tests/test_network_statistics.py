"""Splitting matrices of deep networks from hooks: against torch.func Hessians, and against real splits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import randomise_batch_norms, zoo_model
from torch import nn

from splitgrow.graph import ChannelGraph
from splitgrow.network import SplittableNetwork
from splitgrow.network_statistics import splitting_eigenpairs, splitting_matrices
from splitgrow.statistics import hessian_splitting_matrices

DTYPE = torch.float64


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


class _Tiny(nn.Module):
    """A Conv2d (stride 2, padding 1, bias) -> BN -> softplus, a depthwise conv -> BN -> tanh, a 1x1 conv ->
    sigmoid, then a Linear -> BN1d -> softplus and a Linear head: every kind of site, each with its own neuron.

    An Identity between the first conv and the depthwise conv keeps the first site from being recognised as
    feeding a depthwise block, so that all four matrices are the plain per-neuron ones."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.conv_norm = nn.BatchNorm2d(3)
        self.conv_act = nn.Softplus(beta=2.0)
        self.spacer = nn.Identity()
        self.depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.depthwise_norm = nn.BatchNorm2d(3)
        self.depthwise_act = nn.Tanh()
        self.pointwise = nn.Conv2d(3, 4, 1, bias=False)
        self.pointwise_act = nn.Sigmoid()
        self.fc = nn.Linear(4 * 9, 5)
        self.fc_norm = nn.BatchNorm1d(5)
        self.fc_act = nn.Softplus()
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = self.spacer(self.conv_act(self.conv_norm(self.conv(x))))
        x = self.pointwise_act(self.pointwise(self.depthwise_act(self.depthwise_norm(self.depthwise(x)))))
        return self.head(self.fc_act(self.fc_norm(self.fc(x.flatten(1)))))


def explicit_patches(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """(N * positions, C * k * k) patches by explicit slicing (independent of F.unfold)."""
    padded = F.pad(x, (padding,) * 4)
    rows = []
    out_size = (x.shape[2] + 2 * padding - kernel) // stride + 1
    for n in range(x.shape[0]):
        for i in range(out_size):
            for j in range(out_size):
                rows.append(
                    padded[n, :, i * stride : i * stride + kernel, j * stride : j * stride + kernel].reshape(-1)
                )
    return torch.stack(rows)


def test_hook_statistics_equal_torch_func_hessians_of_each_neuron():
    torch.manual_seed(0)
    model = _Tiny().to(DTYPE)
    with torch.no_grad():
        randomise_batch_norms(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(4, 2, 6, 6, dtype=DTYPE)
    y = torch.randint(0, 3, (4,))
    graph = ChannelGraph(model, x)
    assert set(graph.sites) == {"conv", "depthwise", "pointwise", "fc"}
    assert graph.sites["conv"].depthwise_chain is None
    hooks = splitting_matrices(model, graph, [(x, y)], F.cross_entropy)

    # the activations' outputs and the loss gradient with respect to them, by plain autograd
    a_conv = model.conv_act(model.conv_norm(model.conv(x)))
    a_depthwise = model.depthwise_act(model.depthwise_norm(model.depthwise(a_conv)))
    a_pointwise = model.pointwise_act(model.pointwise(a_depthwise))
    a_fc = model.fc_act(model.fc_norm(model.fc(a_pointwise.flatten(1))))
    loss = F.cross_entropy(model.head(a_fc), y)
    g_conv, g_depthwise, g_pointwise, g_fc = torch.autograd.grad(loss, [a_conv, a_depthwise, a_pointwise, a_fc])

    def rows(g):  # (N, C, H, W) -> (N * positions, C), positions in row-major order like explicit_patches
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]) if g.dim() == 4 else g

    def normalised(norm, j):
        scale = norm.weight[j] / torch.sqrt(norm.running_var[j] + norm.eps)
        return lambda z: scale * (z - norm.running_mean[j]) + norm.bias[j]

    def reference(theta, inputs, gradients, sigma_for_channel):
        return torch.stack(
            [
                hessian_splitting_matrices(sigma_for_channel(j), theta[j : j + 1], inputs(j), gradients[:, j : j + 1])[
                    0
                ]
                for j in range(theta.shape[0])
            ]
        )

    with_bias = lambda rows_: torch.cat([rows_, torch.ones_like(rows_[:, :1])], 1)  # noqa: E731
    detached = lambda t: t.detach()  # noqa: E731

    # Conv2d with stride, padding and bias, followed by BatchNorm
    patches = with_bias(explicit_patches(x, 3, 2, 1))
    theta = torch.cat([model.conv.weight.flatten(1), model.conv.bias[:, None]], 1).detach()
    expected = reference(
        theta,
        lambda j: patches,
        rows(g_conv),
        lambda j: lambda t, h: F.softplus(normalised(model.conv_norm, j)(t @ h), beta=2.0),
    )
    assert relative_error(hooks["conv"], detached(expected)) <= 1e-10

    # depthwise Conv2d: channel j sees only its own input channel
    theta = torch.cat([model.depthwise.weight.flatten(1), model.depthwise.bias[:, None]], 1).detach()
    per_channel = [with_bias(explicit_patches(a_conv[:, j : j + 1].detach(), 3, 1, 1)) for j in range(3)]
    expected = reference(
        theta,
        lambda j: per_channel[j],
        rows(g_depthwise),
        lambda j: lambda t, h: torch.tanh(normalised(model.depthwise_norm, j)(t @ h)),
    )
    assert relative_error(hooks["depthwise"], detached(expected)) <= 1e-10

    # 1x1 Conv2d without bias
    theta = model.pointwise.weight.flatten(1).detach()
    inputs = explicit_patches(a_depthwise.detach(), 1, 1, 0)
    expected = reference(theta, lambda j: inputs, rows(g_pointwise), lambda j: lambda t, h: torch.sigmoid(t @ h))
    assert relative_error(hooks["pointwise"], detached(expected)) <= 1e-10

    # Linear followed by BatchNorm1d
    theta = torch.cat([model.fc.weight, model.fc.bias[:, None]], 1).detach()
    inputs = with_bias(a_pointwise.flatten(1).detach())
    expected = reference(
        theta, lambda j: inputs, g_fc, lambda j: lambda t, h: F.softplus(normalised(model.fc_norm, j)(t @ h))
    )
    assert relative_error(hooks["fc"], detached(expected)) <= 1e-10


@pytest.mark.parametrize("architecture", ["mlp", "vgg19", "mobilenetv1", "dscnn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_split_loss_change_matches_the_splitting_matrices(architecture, seed):
    """Several neurons in several layers at once: the loss changes by the sum of eps^2/2 v^T S v."""
    model, inputs, targets = zoo_model(architecture, seed=seed)
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs[:6], targets[:6]), (inputs[6:], targets[6:])], F.cross_entropy, keep_matrices=True)
    requests = net.select(results, max_count=6, threshold=0.0)
    assert len({request.site for request in requests}) >= 2
    epsilon = 1e-3
    predicted = sum(
        0.5 * epsilon**2 * float(r.direction @ results[r.site].matrices[r.channel] @ r.direction) for r in requests
    )
    assert predicted == pytest.approx(0.5 * epsilon**2 * sum(r.index for r in requests), rel=1e-9)
    with torch.no_grad():
        before = float(F.cross_entropy(model(inputs), targets))
    report = net.split(requests, epsilon)
    with torch.no_grad():
        after = float(F.cross_entropy(model(inputs), targets))
    assert report.predicted_change == pytest.approx(predicted, rel=1e-9)
    assert after - before == pytest.approx(predicted, rel=0.02)


def test_the_depthwise_correction_is_what_makes_pointwise_splits_exact():
    model, inputs, targets = zoo_model("mobilenetv1", seed=0)
    graph = ChannelGraph(model, inputs)
    name = "blocks.11.pointwise.0"
    corrected = splitting_eigenpairs(model, graph, [(inputs, targets)], F.cross_entropy, sites=[name])[name]
    channel = int(corrected.indexes.argmin())
    direction = corrected.directions[channel]
    chain, graph.sites[name].depthwise_chain = graph.sites[name].depthwise_chain, None
    plain = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy, sites=[name])[name][channel]
    graph.sites[name].depthwise_chain = chain
    trial = copy.deepcopy(model)
    net = SplittableNetwork(trial, inputs)
    before = float(F.cross_entropy(trial(inputs), targets).detach())
    from splitgrow.surgery import SplitRequest

    net.split([SplitRequest(name, channel, direction)], 1e-3)
    measured = float(F.cross_entropy(trial(inputs), targets).detach()) - before
    assert measured == pytest.approx(0.5e-6 * float(corrected.indexes[channel]), rel=0.02)
    assert abs(measured / (0.5e-6 * float(direction @ plain @ direction)) - 1) > 0.05


def test_batches_are_weighted_by_their_size():
    model, inputs, targets = zoo_model("concat")
    graph = ChannelGraph(model, inputs)
    whole = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)
    parts = splitting_matrices(model, graph, [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])], F.cross_entropy)
    limited = splitting_matrices(
        model, graph, [(inputs, targets), (inputs[:3], targets[:3])], F.cross_entropy, batches=1
    )
    tight = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy, max_temporary_elements=64)
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(limited[name], whole[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(tight[name], whole[name], rtol=1e-10, atol=1e-14)


def test_float32_models_accumulate_in_float64_and_training_mode_is_restored():
    model64, inputs, targets = zoo_model("vgg19")
    model32 = copy.deepcopy(model64).float().train()
    graph = ChannelGraph(model32, inputs.float())
    results32 = splitting_eigenpairs(model32, graph, [(inputs.float(), targets)], F.cross_entropy)
    assert model32.training
    results64 = splitting_eigenpairs(model64, ChannelGraph(model64, inputs), [(inputs, targets)], F.cross_entropy)
    for name, result in results32.items():
        assert result.indexes.dtype == torch.float64
        torch.testing.assert_close(result.indexes, results64[name].indexes, rtol=1e-3, atol=1e-7)


def test_relu_networks_report_their_surrogate():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).to(DTYPE)
    x, y = torch.randn(20, 3, dtype=DTYPE), torch.randint(0, 2, (20,))
    net = SplittableNetwork(model, x, relu_surrogate=4.0)
    result = net.splitting([(x, y)], F.cross_entropy)["0"]
    assert result.surrogate == "phi'' of softplus(beta=4)"
    assert float(result.indexes.abs().max()) > 0


@pytest.mark.parametrize(
    ("padding", "kernel", "dilation", "stride"),
    [
        (padding, kernel, dilation, stride)
        for padding in ["same", "valid", 1, (2, 0)]
        for kernel, dilation, stride in [(3, 1, 1), (4, 1, 1), (3, 2, 1), (3, 1, 2)]
        if not (padding == "same" and stride > 1)  # PyTorch has no 'same' padding for strided convolutions
    ],
)
def test_conv_patches_reproduce_the_convolution(padding, kernel, dilation, stride):
    from splitgrow.network_statistics import conv_patches

    conv = nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation, stride=stride, bias=False).to(DTYPE)
    x = torch.randn(2, 2, 9, 8, dtype=DTYPE)
    expected = conv(x)
    patches = conv_patches(conv, x)
    torch.testing.assert_close((conv.weight.flatten(1) @ patches).view(expected.shape), expected)
