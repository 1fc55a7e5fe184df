"""Layer handlers: rows, products and adjoints agree for every built-in layer; FLOPs agree with torch's counter;
and a user's own layer, registered with one handler, grows with exact mathematics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import loss_of, split_hessian, zoo_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from splitgrow import SplittableNetwork
from splitgrow.graph import ChannelGraph
from splitgrow.inspection import layer_flops
from splitgrow.layers import PRODUCE, ChannelMap, NeuronHandler, handler_for, register_layer
from splitgrow.models import MODELS
from splitgrow.statistics import splitting_matrices

DTYPE = torch.float64

LAYERS = {
    "linear-tokens": (nn.Linear(5, 4), (3, 7, 5)),
    "conv2d": (nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 7)),
    "conv2d-same-reflect": (nn.Conv2d(3, 4, 4, padding="same", padding_mode="reflect", bias=False), (2, 3, 6, 5)),
    "conv2d-dilated": (nn.Conv2d(3, 4, 3, dilation=2, padding=(2, 1)), (2, 3, 8, 8)),
    "depthwise": (nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (2, 4, 7, 6)),  # grouped convolutions
    "depthwise-dilated": (nn.Conv2d(4, 4, 3, dilation=2, padding=2, groups=4), (2, 4, 8, 7)),  # tap loops
    "pointwise": (nn.Conv2d(3, 4, 1, padding=1), (2, 3, 5, 4)),  # a matrix product
    "pointwise-strided": (nn.Conv2d(3, 4, 1, stride=2, bias=False), (2, 3, 5, 4)),
    "conv1d": (nn.Conv1d(3, 4, 5, stride=2, padding=2), (2, 3, 11)),
    "conv1d-pointwise": (nn.Conv1d(3, 4, 1), (2, 3, 6)),
    "conv1d-circular": (nn.Conv1d(3, 4, 3, dilation=3, padding="same", padding_mode="circular"), (2, 3, 10)),
    "depthwise1d": (nn.Conv1d(4, 4, 3, padding=1, groups=4, bias=False), (2, 4, 9)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_rows_products_and_adjoints_agree(name):
    """H V^T from the rows equals the handler's product (and the layer itself with V = its weights); the adjoint is
    its transpose; for depthwise layers the input adjoint too."""
    layer, shape = LAYERS[name]
    layer = layer.to(DTYPE)
    handler = handler_for(layer)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=DTYPE)
    prepared = handler.prepare_inputs(layer, x)
    theta = handler.theta(layer)
    output = layer(x)
    torch.testing.assert_close(handler.apply(layer, prepared, theta), output)
    rows = handler.rows(layer, x)  # (P, G, d)
    coefficient_rows = handler.coefficient_rows(layer, output)
    groups = rows.shape[1]
    per_group = theta.shape[0] // groups
    by_rows = torch.stack(
        [rows[:, j // per_group] @ theta[j] for j in range(theta.shape[0])], dim=1
    )  # every neuron's outputs from its rows
    torch.testing.assert_close(by_rows, coefficient_rows)
    field = torch.randn(output.shape, generator=generator, dtype=DTYPE)
    directions = torch.randn(theta.shape, generator=generator, dtype=DTYPE)
    inner = (handler.apply(layer, prepared, directions) * field).sum()
    torch.testing.assert_close((handler.adjoint(layer, prepared, field) * directions).sum(), inner)
    if getattr(layer, "groups", 1) > 1:
        gradient = handler.input_adjoint(layer, field, directions, prepared.shape)
        bias = 0.0 if layer.bias is None else (field.sum(dim=(0, *range(2, field.dim()))) * directions[:, -1]).sum()
        torch.testing.assert_close((gradient * prepared).sum() + bias, inner)


@pytest.mark.parametrize("architecture", sorted(MODELS))
def test_layer_flops_agree_with_torch_flop_counter(architecture):
    model, inputs, _ = zoo_model(architecture)
    graph = ChannelGraph(model, inputs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs[:1])
    counted = {}
    for name, counts in counter.get_flop_counts().items():
        key = name.removeprefix(type(model).__name__ + ".")
        if key in graph.modules and isinstance(graph.modules[key], (nn.Conv2d, nn.Conv1d, nn.Linear)):
            counted[key] = int(sum(counts.values()))
    found = {name: flops for name, flops in layer_flops(graph).items() if name in counted}
    assert found == counted and found


# ------------------------------------------------------------------------------------------ your own layer


class RadialBasis(nn.Module):
    """Units exp(-|x - c_j|^2 / 2) with learned centres c_j: a neuron that is not a linear map of theta."""

    def __init__(self, features: int, units: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(units, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((x.unsqueeze(-2) - self.centers) ** 2).sum(-1))


class RadialBasisHandler(NeuronHandler):
    types = (RadialBasis,)
    output_channel_dim = -1
    nonlinear_in_theta = True  # its own curvature counts; statistics by automatic differentiation

    def channel_map(self, module, input_shape, output_shape):
        # a distance is not linear in its input: duplicated input channels cannot be halved back
        return ChannelMap(
            PRODUCE, input_dim=len(input_shape) - 1, output_dim=len(output_shape) - 1, input_growable=False
        )

    def num_neurons(self, module):
        return module.centers.shape[0]

    def neuron_dim(self, module):
        return module.centers.shape[1]

    def theta(self, module):
        return module.centers.detach()

    def parameters_from_theta(self, module, theta):
        return {"centers": theta}

    def output_tensors(self, module):
        return [("centers", 0)]

    def input_tensors(self, module):
        return []


class RadialNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = nn.Tanh()
        self.rbf = RadialBasis(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rbf(self.act(self.fc(x))))


@pytest.fixture(scope="module", autouse=True)
def radial_handler():
    register_layer(RadialBasisHandler())


def test_a_registered_layer_grows_with_exact_mathematics():
    torch.manual_seed(0)
    model = RadialNet().to(DTYPE).eval()
    inputs, targets = torch.randn(20, 3, dtype=DTYPE), torch.randint(0, 3, (20,))
    graph = ChannelGraph(model, inputs)
    site = graph.sites["rbf"]
    assert (site.engine, site.exact, site.neuron_dim) == ("segment", True, 4)
    assert "cannot take a duplicated input channel" in graph.skipped()["fc"]
    matrices = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)
    expected = split_hessian(model, graph, "rbf", 2, inputs, targets)
    torch.testing.assert_close(matrices["rbf"][2], expected, rtol=1e-8, atol=1e-12)
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs, targets)], F.cross_entropy)
    requests = net.select(results, max_count=2)
    before = loss_of(model, inputs, targets)
    report = net.split(requests, 1e-3)
    assert model.rbf.centers.shape == (7, 4) and model.head.in_features == 7
    assert loss_of(model, inputs, targets) - before == pytest.approx(report.predicted_change, rel=0.02)
    with torch.no_grad():
        outputs = model(inputs)
    net.split([type(requests[0])("rbf", 0, None)], 0.0)  # an exact copy keeps the function
    with torch.no_grad():
        assert float((model(inputs) - outputs).abs().max()) <= 1e-12
