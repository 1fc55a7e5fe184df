"""Surgery: function preservation, consistent modules, and the optimiser state rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from splitgrow.graph import ChannelGraph, GraphError
from splitgrow.models import MODELS, build_model
from splitgrow.network import SplittableNetwork
from splitgrow.surgery import SplitRequest, split_network


def random_requests(graph: ChannelGraph, generator: torch.Generator, count: int) -> list[SplitRequest]:
    """Several channels in several layers, none coupled to another (skipped when they would be)."""
    sites = [site for site in graph.sites.values() if site.splittable]
    requests: list[SplitRequest] = []
    for _ in range(4 * count):
        if len(requests) == count:
            break
        site = sites[int(torch.randint(len(sites), (1,), generator=generator))]
        channel = int(torch.randint(site.num_neurons, (1,), generator=generator))
        request = SplitRequest(site.name, channel, torch.randn(site.neuron_dim, generator=generator))
        try:
            from splitgrow.surgery import plan_split

            plan_split(graph, [*requests, request], allow_inexact=True)
        except GraphError:
            continue
        requests.append(request)
    return requests


def assert_consistent(model: nn.Module) -> None:
    """Every layer's attributes match its tensors, and the model rebuilds from its config."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[0] == module.out_channels
            assert module.weight.shape[1] * module.groups == module.in_channels
        elif isinstance(module, nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features)
        elif isinstance(module, nn.BatchNorm2d):
            assert module.running_mean.shape == module.weight.shape == (module.num_features,)
    rebuilt = build_model(model.architecture, **model.config()).to(next(model.parameters()).dtype)
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("architecture", sorted(MODELS))
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_zero_epsilon_splits_preserve_the_function(architecture, dtype, tolerance):
    model, inputs, _ = zoo_model(architecture, dtype=dtype)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        before = model(inputs)
    for _ in range(3):  # repeated splits, each of several channels in several layers
        graph = ChannelGraph(model, inputs)
        requests = random_requests(graph, generator, count=4)
        assert len({request.site for request in requests}) >= 2
        split_network(model, graph, requests, 0.0, allow_inexact=True)
    with torch.no_grad():
        after = model(inputs)
    assert float((after - before).abs().max()) <= tolerance
    assert_consistent(model)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), architecture=st.sampled_from(["mobilenetv1", "concat", "resnet", "dscnn"]))
def test_zero_epsilon_property(seed, architecture):
    model, inputs, _ = zoo_model(architecture, width=3, seed=seed % 1000)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = model(inputs)
    graph = ChannelGraph(model, inputs)
    split_network(model, graph, random_requests(graph, generator, count=5), 0.0, allow_inexact=True)
    with torch.no_grad():
        assert float((model(inputs) - before).abs().max()) <= 1e-10


def test_the_split_moves_the_offspring_and_halves_the_consumers():
    model, inputs, _ = zoo_model("mlp")
    old = copy.deepcopy(model)
    graph = ChannelGraph(model, inputs)
    direction = torch.randn(5, dtype=torch.float64)
    split_network(model, graph, [SplitRequest("hidden.3", 2, direction)], 0.5)
    v = direction / direction.norm()
    theta = torch.cat([old.hidden[3].weight[2], old.hidden[3].bias[2:3]])
    new_layer = model.hidden[3]
    torch.testing.assert_close(torch.cat([new_layer.weight[2], new_layer.bias[2:3]]), theta + 0.5 * v)
    torch.testing.assert_close(torch.cat([new_layer.weight[3], new_layer.bias[3:4]]), theta - 0.5 * v)
    torch.testing.assert_close(new_layer.weight[[0, 1, 4]], old.hidden[3].weight[[0, 1, 3]])
    column = old.classifier.weight[:, 2]
    torch.testing.assert_close(model.classifier.weight[:, 2], column / 2)
    torch.testing.assert_close(model.classifier.weight[:, 3], column / 2)
    torch.testing.assert_close(model.classifier.weight[:, 4], old.classifier.weight[:, 3])
    assert (new_layer.out_features, model.classifier.in_features) == (5, 5)


def test_a_depthwise_separable_neuron_splits_both_filters_and_copies_the_batch_norms():
    model, inputs, _ = zoo_model("mobilenetv1")
    old = copy.deepcopy(model)
    graph = ChannelGraph(model, inputs)
    site = graph.sites["blocks.4.pointwise.0"]
    assert [m.module for m in site.members] == ["blocks.4.pointwise.0", "blocks.5.depthwise.0"]
    direction = torch.randn(site.neuron_dim, dtype=torch.float64)
    v = 0.1 * direction / direction.norm()
    report = split_network(model, graph, [SplitRequest(site.name, 1, direction)], 0.1)
    assert report.offspring == [[("blocks.4.pointwise.0", 1, 2), ("blocks.5.depthwise.0", 1, 2)]]
    pointwise_old, pointwise = old.blocks[4].pointwise[0], model.blocks[4].pointwise[0]
    depthwise_old, depthwise = old.blocks[5].depthwise[0], model.blocks[5].depthwise[0]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 5
    torch.testing.assert_close(pointwise.weight[1].flatten(), pointwise_old.weight[1].flatten() + v[:4])
    torch.testing.assert_close(pointwise.weight[2].flatten(), pointwise_old.weight[1].flatten() - v[:4])
    torch.testing.assert_close(depthwise.weight[1].flatten(), depthwise_old.weight[1].flatten() + v[4:])
    torch.testing.assert_close(depthwise.weight[2].flatten(), depthwise_old.weight[1].flatten() - v[4:])
    for name in ("weight", "bias", "running_mean", "running_var"):
        for norm_old, norm in (
            (old.blocks[4].pointwise[1], model.blocks[4].pointwise[1]),
            (old.blocks[5].depthwise[1], model.blocks[5].depthwise[1]),
        ):
            values, old_values = getattr(norm, name), getattr(norm_old, name)
            assert values[2] == old_values[1] and values[1] == old_values[1]
    assert model.blocks[5].pointwise[0].in_channels == 5
    column = old.blocks[5].pointwise[0].weight[:, 1]
    torch.testing.assert_close(model.blocks[5].pointwise[0].weight[:, 1], column / 2)
    torch.testing.assert_close(model.blocks[5].pointwise[0].weight[:, 2], column / 2)


def test_a_neuron_requested_twice_is_refused_and_a_member_is_not_a_site():
    model, inputs, _ = zoo_model("mobilenetv1")
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="requested twice"):
        split_network(
            model, graph, [SplitRequest("blocks.4.pointwise.0", 1), SplitRequest("blocks.4.pointwise.0", 1)], 0.0
        )
    with pytest.raises(GraphError, match="'blocks.5.depthwise.0' is not a splittable site"):
        split_network(model, graph, [SplitRequest("blocks.5.depthwise.0", 1)], 0.0)
    assert model.blocks[4].pointwise[0].out_channels == 4  # nothing changed


@pytest.mark.parametrize("epsilon", [float("nan"), float("inf"), -1.0, True])
def test_bad_epsilon_is_refused_before_any_change(epsilon):
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="epsilon must be a finite number >= 0"):
        split_network(model, graph, [SplitRequest("hidden.3", 0, torch.ones(5))], epsilon)
    assert model.hidden[3].out_features == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_direction_with_nan_or_inf_is_refused(bad):
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    direction = torch.ones(5)
    direction[2] = bad
    with pytest.raises(GraphError, match="is not finite"):
        split_network(model, graph, [SplitRequest("hidden.3", 0, direction)], 0.1)
    assert model.hidden[3].out_features == 4


def test_a_stale_graph_or_request_is_refused():
    """A graph traced before a split describes other channels: splitting through it would split another neuron."""
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    request = SplitRequest("hidden.3", 0, torch.ones(5), fingerprint=graph.fingerprint)
    split_network(model, graph, [SplitRequest("hidden.1", 1)], 0.0)
    with pytest.raises(GraphError, match="the model changed since this graph was traced"):
        split_network(model, graph, [SplitRequest("hidden.3", 0)], 0.0)
    fresh = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="was made for the model before a later change"):
        split_network(model, fresh, [request], 0.0)
    assert model.hidden[3].out_features == 4


def test_direction_of_the_wrong_size_is_refused():
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="has 3 entries; its neurons have 5 parameters"):
        split_network(model, graph, [SplitRequest("hidden.3", 0, torch.zeros(3))], 0.1)


def _train_steps(model, optimizer, scheduler, inputs, targets, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return float(loss.detach())


@pytest.mark.parametrize(
    ("make_optimizer", "first", "second"),
    [
        (
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
            "momentum_buffer",
            None,
        ),
        (lambda p: torch.optim.Adam(p, lr=1e-3), "exp_avg", "exp_avg_sq"),
        (lambda p: torch.optim.AdamW(p, lr=1e-3, amsgrad=True), "exp_avg", "max_exp_avg_sq"),
        (lambda p: torch.optim.Adagrad(p, lr=0.01), None, "sum"),
        (lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True), "grad_avg", "square_avg"),
    ],
)
def test_optimizer_state_follows_the_documented_rule(make_optimizer, first, second):
    model, inputs, targets = zoo_model("vgg19")
    model.train()
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[4], gamma=0.1)
    _train_steps(model, optimizer, scheduler, inputs, targets, 3)
    producer, consumer = model.features[3][0].weight, model.features[4][0].weight
    norm = model.features[3][1].weight
    old = {
        id(p): {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
        for p in (producer, consumer, norm)
    }
    steps = {k: v.clone() for k, v in optimizer.state[producer].items() if torch.is_tensor(v) and v.dim() == 0}
    net = SplittableNetwork(model, inputs[:2])
    net.split([SplitRequest("features.3.0", 2, torch.randn(36, dtype=torch.float64))], 0.0, optimizer=optimizer)
    state, consumer_state, norm_state = optimizer.state[producer], optimizer.state[consumer], optimizer.state[norm]
    assert producer.shape[0] == 5 and consumer.shape[1] == 5
    for value in state.values():
        if torch.is_tensor(value) and value.dim() > 0:
            assert value.shape == producer.shape
    for key, factor in ((first, 0.5), (second, 0.25)):
        if key is None:
            continue
        parent = old[id(producer)][key][2]
        torch.testing.assert_close(state[key][2], factor * parent)  # offspring rows: gradient halves
        torch.testing.assert_close(state[key][3], factor * parent)
        torch.testing.assert_close(state[key][[0, 1, 4]], old[id(producer)][key][[0, 1, 3]])
        torch.testing.assert_close(norm_state[key][3], factor * old[id(norm)][key][2])
        parent_column = old[id(consumer)][key][:, 2]
        torch.testing.assert_close(consumer_state[key][:, 2], parent_column)  # consumer columns: unchanged
        torch.testing.assert_close(consumer_state[key][:, 3], parent_column)
    for key, value in steps.items():
        assert torch.equal(state[key], value)
    before = float(F.cross_entropy(model(inputs), targets).detach())
    after = _train_steps(model, optimizer, scheduler, inputs, targets, 4)
    assert after < before  # training continues with the carried state
    assert optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.defaults["lr"] * 0.1)


_SCALE_FREE = {  # optimisers whose step does not change when the gradient is multiplied by a positive number (up
    # to their eps, set tiny here so that the test sees the rule alone)
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-30),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True, eps=1e-30, weight_decay=0.0),
    "adamax": lambda p: torch.optim.Adamax(p, lr=0.01, eps=1e-30),
    "nadam": lambda p: torch.optim.NAdam(p, lr=0.01, eps=1e-30),
    "radam": lambda p: torch.optim.RAdam(p, lr=0.01, eps=1e-30),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-30),
    "rmsprop-centered-momentum": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True, eps=1e-30),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0, eps=1e-30),
    "rprop": lambda p: torch.optim.Rprop(p, lr=0.01),
}


@pytest.mark.parametrize("name", sorted(_SCALE_FREE))
@pytest.mark.parametrize("shares", [(0.5, 0.5), (1.0, 1.0, -1.0)], ids=["split", "signed"])
def test_after_a_split_each_offspring_steps_as_its_parent_would(name, shares):
    """The state rule's purpose: at eps = 0 an offspring of share w gets w times its parent's gradient, and with its
    state carried it takes its parent's next step (times the sign of w: its output is negated). A rule with the
    wrong units (RMSprop's momentum of g / sqrt(v) or Adadelta's squared updates halved like gradient moments, or
    Adamax's running max of abs(g) negated) makes the offspring step short, or the wrong way."""
    from splitgrow.surgery import Offspring

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    inputs, targets = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    optimizer = _SCALE_FREE[name](model.parameters())
    _train_steps(model, optimizer, None, inputs, targets, 8)  # RAdam takes unscaled momentum steps up to step 5
    twin = copy.deepcopy(model)
    twin_optimizer = _SCALE_FREE[name](twin.parameters())
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # its step counts are tensors
    request = SplitRequest("0", 1, offspring=tuple(Offspring(share) for share in shares))
    SplittableNetwork(model, inputs[:2]).split([request], 0.0, optimizer=optimizer)
    rows = list(range(1, 1 + len(shares)))  # the first offspring in its parent's place, the others right after it
    before, parent_before = model[0].weight[rows].detach().clone(), twin[0].weight[1].detach().clone()
    _train_steps(model, optimizer, None, inputs, targets, 1)
    _train_steps(twin, twin_optimizer, None, inputs, targets, 1)
    parent_step = twin[0].weight[1].detach() - parent_before
    for row, share in enumerate(shares):
        step = model[0].weight[rows[row]].detach() - before[row]
        torch.testing.assert_close(step, math.copysign(1.0, share) * parent_step, rtol=1e-7, atol=1e-12)


def test_rprop_step_sizes_are_copied_and_its_last_gradient_halved():
    """Rprop keeps the last gradient (a first moment: halved for each offspring) and per-entry step sizes in the
    parameters' units (copied, a new neuron's included: a zero step size would never grow again)."""
    from splitgrow.surgery import NewNeuron

    model, inputs, targets = zoo_model("mlp")
    model.train()
    optimizer = torch.optim.Rprop(model.parameters(), lr=0.01)
    for _ in range(3):  # step sizes move away from lr, differently per entry
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    weight = model.hidden[3].weight
    old = {key: optimizer.state[weight][key].clone() for key in ("prev", "step_size")}
    assert old["step_size"].unique().numel() > 1
    graph = ChannelGraph(model, inputs)
    direction = torch.randn(graph.sites["hidden.3"].neuron_dim, dtype=torch.float64)
    requests = [SplitRequest("hidden.3", 1, direction), NewNeuron("hidden.3", direction)]
    split_network(model, graph, requests, 0.0, optimizer=optimizer)
    state = optimizer.state[weight]
    assert weight.shape[0] == 6 and state["step_size"].shape == weight.shape
    torch.testing.assert_close(state["prev"][[1, 2]], 0.5 * old["prev"][[1, 1]])
    torch.testing.assert_close(state["step_size"][[1, 2]], old["step_size"][[1, 1]])
    assert bool((state["prev"][-1] == 0).all()) and bool((state["step_size"][-1] > 0).all())
    before = float(F.cross_entropy(model(inputs), targets).detach())
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    assert float(F.cross_entropy(model(inputs), targets).detach()) < before


@pytest.mark.parametrize("make_optimizer", [torch.optim.ASGD, torch.optim.Adafactor])
def test_state_splitgrow_cannot_carry_is_refused_naming_it(make_optimizer):
    model, inputs, targets = zoo_model("mlp")
    model.train()
    optimizer = make_optimizer(model.parameters(), lr=0.01)
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="rebuild the optimiser after the split"):
        split_network(model, graph, [SplitRequest("hidden.3", 0)], 0.0, optimizer=optimizer)
    assert model.hidden[3].out_features == 4


def test_unknown_optimizer_state_is_refused_before_any_change():
    model, inputs, targets = zoo_model("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.state[model.hidden[3].weight]["mystery"] = torch.zeros_like(model.hidden[3].weight)
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match="optimiser state 'mystery'"):
        split_network(model, graph, [SplitRequest("hidden.3", 0)], 0.0, optimizer=optimizer)
    assert model.hidden[3].out_features == 4


def test_optimizer_state_of_another_shape_is_refused_not_skipped():
    model, inputs, _ = zoo_model("mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    optimizer.state[model.hidden[3].weight]["exp_avg_sq"] = torch.zeros(4)  # a factored second moment
    graph = ChannelGraph(model, inputs)
    with pytest.raises(GraphError, match=r"optimiser state 'exp_avg_sq' has shape \(4,\)"):
        split_network(model, graph, [SplitRequest("hidden.3", 0)], 0.0, optimizer=optimizer)
    assert model.hidden[3].out_features == 4


@pytest.mark.parametrize("architecture", ["mlp", "vgg19", "mobilenetv1", "resnet", "concat"])
def test_new_neurons_keep_the_function(architecture):
    from splitgrow.surgery import NewNeuron

    model, inputs, _ = zoo_model(architecture)
    graph = ChannelGraph(model, inputs)
    generator = torch.Generator().manual_seed(4)
    additions = [
        NewNeuron(site.name, torch.randn(site.neuron_dim, generator=generator, dtype=torch.float64))
        for site in graph.splittable_sites()
    ]
    with torch.no_grad():
        before = model(inputs)
    report = split_network(model, graph, additions, 0.0, allow_inexact=True)
    with torch.no_grad():
        assert float((model(inputs) - before).abs().max()) <= 1e-12
    assert report.parameters_after > report.parameters_before
    assert_consistent(model)


def test_a_new_neuron_has_its_parameters_zero_output_weights_and_fresh_optimizer_state():
    from splitgrow.surgery import NewNeuron

    model, inputs, targets = zoo_model("mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    model.eval()
    old = copy.deepcopy(model)
    old_state = {k: v.clone() for k, v in optimizer.state[model.hidden[3].weight].items()}
    theta = torch.randn(5, dtype=torch.float64)
    report = split_network(
        model, ChannelGraph(model, inputs), [NewNeuron("hidden.3", theta, after=1)], 0.0, optimizer=optimizer
    )
    assert report.offspring == [[("hidden.3", 1, 2)]]
    layer = model.hidden[3]
    torch.testing.assert_close(torch.cat([layer.weight[2], layer.bias[2:3]]), theta)
    torch.testing.assert_close(layer.weight[[0, 1, 3, 4]], old.hidden[3].weight)  # neighbours untouched
    torch.testing.assert_close(model.classifier.weight[:, [0, 1, 3, 4]], old.classifier.weight)  # not halved
    assert float(model.classifier.weight[:, 2].abs().max()) == 0.0
    state = optimizer.state[layer.weight]
    assert float(state["exp_avg"][2].abs().max()) == 0.0 and float(state["exp_avg_sq"][2].abs().max()) == 0.0
    torch.testing.assert_close(state["exp_avg"][[0, 1, 3, 4]], old_state["exp_avg"])
