"""Splitting statistics of whole networks: the closed forms against explicit per-neuron Hessians, the engines
against each other, the data contract of real training stacks, in-place models, and what is reported."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from architectures import InPlaceSiLUNet, ResNet18
from deep_helpers import randomise_batch_norms, zoo_model
from torch import nn

from splitgrow import SplitgrowWarning
from splitgrow.graph import ChannelGraph, GraphError
from splitgrow.network import SplittableNetwork
from splitgrow.statistics import StatisticsError, hessian_splitting_matrices, splitting_eigenpairs, splitting_matrices
from splitgrow.statistics.splitting import one_pass

DTYPE = torch.float64


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


class _Tiny(nn.Module):
    """A Conv2d (stride 2, padding 1, bias) -> BN -> softplus, a 1x1 conv -> sigmoid, then a Linear -> BN1d ->
    softplus and a Linear head: every kind of ridge site, each with its own neuron."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.conv_norm = nn.BatchNorm2d(3)
        self.conv_act = nn.Softplus(beta=2.0)
        self.pointwise = nn.Conv2d(3, 4, 1, bias=False)
        self.pointwise_act = nn.Sigmoid()
        self.fc = nn.Linear(4 * 9, 5)
        self.fc_norm = nn.BatchNorm1d(5)
        self.fc_act = nn.Softplus()
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = self.conv_act(self.conv_norm(self.conv(x)))
        x = self.pointwise_act(self.pointwise(x))
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


def test_closed_form_statistics_equal_torch_func_hessians_of_each_neuron():
    torch.manual_seed(0)
    model = _Tiny().to(DTYPE)
    with torch.no_grad():
        randomise_batch_norms(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(4, 2, 6, 6, dtype=DTYPE)
    y = torch.randint(0, 3, (4,))
    graph = ChannelGraph(model, x)
    assert {name: site.engine for name, site in graph.sites.items()} == {
        "conv": "ridge",
        "pointwise": "ridge",
        "fc": "ridge",
    }
    found = splitting_matrices(model, graph, [(x, y)], F.cross_entropy)

    a_conv = model.conv_act(model.conv_norm(model.conv(x)))
    a_pointwise = model.pointwise_act(model.pointwise(a_conv))
    a_fc = model.fc_act(model.fc_norm(model.fc(a_pointwise.flatten(1))))
    loss = F.cross_entropy(model.head(a_fc), y)
    g_conv, g_pointwise, g_fc = torch.autograd.grad(loss, [a_conv, a_pointwise, a_fc])

    def rows(g):  # (N, C, H, W) -> (N * positions, C), positions in row-major order like explicit_patches
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]) if g.dim() == 4 else g

    def normalised(norm, j):
        scale = norm.weight[j] / torch.sqrt(norm.running_var[j] + norm.eps)
        return lambda z: scale * (z - norm.running_mean[j]) + norm.bias[j]

    def reference(theta, inputs, gradients, sigma_for_channel):
        return torch.stack(
            [
                hessian_splitting_matrices(sigma_for_channel(j), theta[j : j + 1], inputs, gradients[:, j : j + 1])[0]
                for j in range(theta.shape[0])
            ]
        ).detach()

    with_bias = lambda rows_: torch.cat([rows_, torch.ones_like(rows_[:, :1])], 1)  # noqa: E731
    patches = with_bias(explicit_patches(x, 3, 2, 1))
    theta = torch.cat([model.conv.weight.flatten(1), model.conv.bias[:, None]], 1).detach()
    expected = reference(
        theta, patches, rows(g_conv), lambda j: lambda t, h: F.softplus(normalised(model.conv_norm, j)(t @ h), beta=2.0)
    )
    assert relative_error(found["conv"], expected) <= 1e-10
    theta = model.pointwise.weight.flatten(1).detach()
    inputs = explicit_patches(a_conv.detach(), 1, 1, 0)
    expected = reference(theta, inputs, rows(g_pointwise), lambda j: lambda t, h: torch.sigmoid(t @ h))
    assert relative_error(found["pointwise"], expected) <= 1e-10
    theta = torch.cat([model.fc.weight, model.fc.bias[:, None]], 1).detach()
    inputs = with_bias(a_pointwise.flatten(1).detach())
    expected = reference(theta, inputs, g_fc, lambda j: lambda t, h: F.softplus(normalised(model.fc_norm, j)(t @ h)))
    assert relative_error(found["fc"], expected) <= 1e-10


@pytest.mark.parametrize(
    ("architecture", "site"),
    [("vgg19", "features.6.0"), ("mobilenetv1", "blocks.8.pointwise.0"), ("resnet", "blocks.1.conv2")],
)
@pytest.mark.parametrize("reference", ["segment", "loss"])
def test_the_closed_forms_equal_automatic_differentiation(architecture, site, reference):
    """The same site through the segment engine (Hessian-vector products of its segment) and the loss engine
    (Hessian of the whole loss in the split): dense matrices and products agree to rounding."""
    model, inputs, targets = zoo_model(architecture, seed=1)
    graph = ChannelGraph(model, inputs)
    closed = graph.sites[site]
    assert closed.engine in ("ridge", "chain")
    batches = [(inputs[:6], targets[:6]), (inputs[6:], targets[6:])]
    autodiff = dataclasses.replace(closed, engine=reference)
    common = {"loss_function": F.cross_entropy, "operator_dtype": DTYPE}
    found = one_pass(model, graph, batches, dense_sites=[closed], operator_sites=[closed], **common)
    expected = one_pass(model, graph, batches, dense_sites=[autodiff], operator_sites=[autodiff], **common)
    assert relative_error(found.dense[site], expected.dense[site]) <= 1e-10
    directions = torch.randn(closed.num_neurons, closed.neuron_dim, dtype=DTYPE)
    products = found.operators[site].matvec(directions)
    assert relative_error(products, expected.operators[site].matvec(directions)) <= 1e-10
    assert relative_error(products, torch.einsum("nde,ne->nd", found.dense[site], directions)) <= 1e-10
    if reference == "segment":  # an operator without data refuses, rather than dividing by a total weight of 0
        from splitgrow.statistics import SegmentOperator

        with pytest.raises(ValueError, match="no data"):
            SegmentOperator.for_site(graph, autodiff, DTYPE).matvec(directions)


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


def _surrogate_by_hand(model, inputs, targets, beta):
    """S of ResNet-18's first inner convolution with ReLU's surrogate curvature, from its formula: the gradient at
    the ReLU's output by plain autograd on an out-of-place copy, sum g * phi''_surrogate(u) * s^2 * h h^T."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    block = reference.layers[0][0]
    captured = {}
    original = block.forward

    def forward(x):  # the block's own forward, keeping the inner convolution's input, u and the ReLU's output
        captured["h"] = x.detach()
        u = block.bn1(block.conv1(x))
        captured["u"] = u.detach()
        out = block.relu(u)
        out.retain_grad()
        captured["a"] = out
        out = block.bn2(block.conv2(out))
        return block.relu(out + x)

    block.forward = forward
    loss = F.cross_entropy(reference(inputs), targets)
    loss.backward()
    block.forward = original
    g, u, h = captured["a"].grad, captured["u"], captured["h"]
    s = block.bn1.weight / torch.sqrt(block.bn1.running_var + block.bn1.eps)
    sig = torch.sigmoid(beta * u)
    c = g * beta * sig * (1 - sig) * (s * s).view(1, -1, 1, 1)
    patches = explicit_patches(h, 3, 1, 1)
    c_rows = c.permute(0, 2, 3, 1).reshape(-1, c.shape[1])
    return torch.einsum("pd,pn,pe->nde", patches, c_rows, patches).detach()


def test_in_place_relu_with_surrogate_equals_its_formula_and_the_out_of_place_model():
    torch.manual_seed(0)
    model = ResNet18(width=2).to(DTYPE)
    with torch.no_grad():
        randomise_batch_norms(model, torch.Generator().manual_seed(2))
    model.eval()
    inputs, targets = torch.randn(6, 3, 8, 8, dtype=DTYPE), torch.randint(0, 10, (6,))
    found = splitting_matrices(
        model, ChannelGraph(model, inputs, relu_surrogate=3.0), [(inputs, targets)], F.cross_entropy
    )
    by_hand = _surrogate_by_hand(model, inputs, targets, 3.0)
    assert relative_error(found["layers.0.0.conv1"], by_hand) <= 1e-10
    assert float(by_hand.abs().max()) > 0


def test_in_place_silu_gives_the_statistics_of_the_out_of_place_model():
    torch.manual_seed(0)
    model = InPlaceSiLUNet().to(DTYPE).eval()
    inputs, targets = torch.randn(5, 3, 8, 8, dtype=DTYPE), torch.randint(0, 3, (5,))
    out_of_place = copy.deepcopy(model)
    out_of_place.act1.inplace = out_of_place.act2.inplace = False
    in_place = splitting_matrices(model, ChannelGraph(model, inputs), [(inputs, targets)], F.cross_entropy)
    reference = splitting_matrices(
        out_of_place, ChannelGraph(out_of_place, inputs), [(inputs, targets)], F.cross_entropy
    )
    assert set(in_place) == {"conv1", "conv2"}
    for name in in_place:
        assert relative_error(in_place[name], reference[name]) <= 1e-12


# ------------------------------------------------------------------------------------------ the data contract


class _Tokens(nn.Module):
    """Token ids -> embedding -> Linear -> GELU -> Linear, a dict batch with a mask."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 5)
        self.act = nn.GELU()
        self.out = nn.Linear(5, 7)

    def forward(self, ids):
        return self.out(self.act(self.fc(self.embed(ids))))


def _token_batches(count=3):
    generator = torch.Generator().manual_seed(0)
    return [{"ids": torch.randint(0, 7, (2, 5), generator=generator)} for _ in range(count)]


def _token_closure(reduction):
    def closure(model, batch):
        logits = model(batch["ids"][:, :-1])
        targets = batch["ids"][:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction=reduction)
        return loss, targets.numel()

    return closure


def test_a_closure_over_dict_batches_of_token_ids_with_mean_or_sum_reduction():
    torch.manual_seed(0)
    model = _Tokens().double()
    net = SplittableNetwork(model, torch.zeros(2, 4, dtype=torch.long))
    mean = net.splitting(_token_batches(), closure=_token_closure("mean"), keep_matrices=True)
    summed = net.splitting(_token_batches(), closure=_token_closure("sum"), reduction="sum", keep_matrices=True)
    torch.testing.assert_close(summed["fc"].matrices, mean["fc"].matrices, rtol=1e-10, atol=1e-14)
    assert mean.weight == 3 * 2 * 4  # tokens
    # one big batch with a mean over all its tokens gives the same S
    whole = [{"ids": torch.cat([b["ids"] for b in _token_batches()])}]
    once = net.splitting(whole, closure=_token_closure("mean"), keep_matrices=True)
    torch.testing.assert_close(once["fc"].matrices, mean["fc"].matrices, rtol=1e-10, atol=1e-14)


def test_a_torch_loss_module_with_sum_reduction_is_weighted_as_a_sum():
    model, inputs, targets = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    halves = [(inputs[:5], targets[:5]), (inputs[5:], targets[5:])]
    mean = splitting_matrices(model, graph, halves, F.cross_entropy)
    summed = splitting_matrices(model, graph, halves, nn.CrossEntropyLoss(reduction="sum"))
    for name in mean:
        torch.testing.assert_close(summed[name], mean[name], rtol=1e-10, atol=1e-14)
    with pytest.raises(StatisticsError, match="reduction='none'"):
        splitting_matrices(model, graph, halves, nn.CrossEntropyLoss(reduction="none"))


def test_statistics_work_under_no_grad_and_with_frozen_parameters_but_not_in_inference_mode():
    model, inputs, targets = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    reference = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():  # e.g. inside a Lightning validation hook
        frozen = splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)
    for name in reference:
        torch.testing.assert_close(frozen[name], reference[name])
    with torch.inference_mode():
        batch = [(inputs.clone(), targets.clone())]
    found = splitting_matrices(model, graph, batch, F.cross_entropy)  # inference tensors made outside are fine
    torch.testing.assert_close(found["hidden.1"], reference["hidden.1"])
    with torch.inference_mode(), pytest.raises(StatisticsError, match="inference_mode"):
        splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)


def test_a_non_finite_loss_names_the_diverged_tensor_or_blames_the_batch():
    model, inputs, targets = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    with pytest.raises(StatisticsError, match="weights are finite: check the batch"):
        splitting_matrices(model, graph, [(inputs * float("inf"), targets)], F.cross_entropy)
    name, parameter = next(iter(model.named_parameters()))
    with torch.no_grad():
        parameter[0].fill_(float("nan"))  # what a diverged step leaves
    with pytest.raises(StatisticsError, match=f"'{name}' is not finite: training diverged; lower the learning rate"):
        splitting_matrices(model, graph, [(inputs, targets)], F.cross_entropy)


def test_bad_batches_and_losses_get_clear_errors():
    model, inputs, targets = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    with pytest.raises(StatisticsError, match="pass closure="):
        splitting_matrices(model, graph, [{"x": inputs}], F.cross_entropy)
    with pytest.raises(StatisticsError, match="is nan.*weights are finite: check the batch"):
        splitting_matrices(model, graph, [(inputs, targets)], lambda out, y: out.sum() * float("nan"))
    with pytest.raises(StatisticsError, match="no batches"):
        splitting_matrices(model, graph, [], F.cross_entropy)
    with pytest.raises(StatisticsError, match="not a scalar"):
        splitting_matrices(model, graph, [(inputs, targets)], lambda out, y: out)


# ------------------------------------------------------------------------------------------ reports


class _Normalised(nn.Module):
    """A Linear followed by LayerNorm: its channels cannot grow, and nothing else can."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = nn.Tanh()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.act(self.fc(x))))


def test_layers_that_will_not_grow_are_reported_warned_about_or_refused():
    model = _Normalised().double()
    x, y = torch.randn(8, 3, dtype=DTYPE), torch.randint(0, 2, (8,))
    net = SplittableNetwork(model, x)
    with pytest.warns(SplitgrowWarning, match="'fc': .*LayerNorm"):
        results = net.splitting([(x, y)], F.cross_entropy)
    assert dict(results) == {} and "LayerNorm" in results.skipped["fc"]
    with pytest.raises(GraphError, match="1 layer\\(s\\) cannot grow: 'fc'"):
        net.splitting([(x, y)], F.cross_entropy, strict=True)
    vgg, inputs, targets = zoo_model("vgg19")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: only the output layer is left out
        SplittableNetwork(vgg, inputs).splitting([(inputs, targets)], F.cross_entropy)


def test_indexes_within_numerical_noise_of_zero_are_reported_as_zero():
    model = nn.Sequential(nn.Linear(2, 3), nn.Softplus(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.0, 0.3, -60.0]))  # the third unit is saturated: phi'' ~ 1e-26
    x, y = torch.randn(30, 2, dtype=DTYPE), torch.randint(0, 2, (30,))
    result = SplittableNetwork(model, x).splitting([(x, y)], F.cross_entropy, keep_matrices=True)["0"]
    assert 0 < float(result.matrices[2].abs().max()) < 1e-20
    assert float(result.indexes[2]) == 0.0 and float(result.indexes[:2].abs().min()) > 0
    assert result.noise_floor > 0


def test_relu_networks_report_their_surrogate():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).to(DTYPE)
    x, y = torch.randn(20, 3, dtype=DTYPE), torch.randint(0, 2, (20,))
    net = SplittableNetwork(model, x, relu_surrogate=4.0)
    result = net.splitting([(x, y)], F.cross_entropy)["0"]
    assert result.surrogate == "phi'' of softplus(beta=4)"
    assert float(result.indexes.abs().max()) > 0


def test_an_empty_batch_adds_nothing_to_the_statistics():
    """A process's shard of a small batch can be empty: its mean loss is NaN, but it holds no sample to count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    net = SplittableNetwork(model, x)
    alone = net.splitting([(x, y)], F.cross_entropy)
    with_empty = net.splitting([(x[:0], y[:0]), (x, y), (x[:0], y[:0])], F.cross_entropy)
    for name, result in alone.items():
        torch.testing.assert_close(with_empty[name].indexes, result.indexes, rtol=0, atol=0)
    with pytest.raises(StatisticsError, match="only empty ones"):
        net.splitting([(x[:0], y[:0])], F.cross_entropy)
