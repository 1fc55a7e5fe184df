"""Signed splitting: the optimal scheme against brute force, and its surgery on whole networks (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import loss_of, zoo_model
from test_network_mathematics import ALL, SMOOTH, model_and_data

from splitgrow import SplittableNetwork
from splitgrow.graph import ChannelGraph, GraphError
from splitgrow.models import MODELS
from splitgrow.selection import select_splits, select_within_budget
from splitgrow.signed import fitting_split, signed_indexes, signed_offspring, signed_splitting
from splitgrow.surgery import Offspring, SplitRequest, split_network

DTYPE = torch.float64
EPSILON = 1e-3


def _quadratic(children, matrix: torch.Tensor) -> float:
    """sum_i w_i delta_i^T S delta_i, the second-order change of a split per eps^2/2."""
    total = 0.0
    for child in children:
        if child.shift is not None:
            total += child.weight * float(child.shift @ matrix @ child.shift)
    return total


def _random_signed_split(dim: int, bound: float, generator: torch.Generator) -> tuple[Offspring, ...]:
    """A random admissible signed split: a positive pair and a negative pair along random unit vectors, with
    random total weights P - N = 1, P + N <= bound."""
    positive = 1 + float(torch.rand((), generator=generator, dtype=DTYPE)) * 0.5 * (bound - 1)
    negative = positive - 1
    u, w = torch.randn(2, dim, generator=generator, dtype=DTYPE)
    u, w = u / u.norm(), w / w.norm()
    return (
        Offspring(positive / 2, u),
        Offspring(positive / 2, -u),
        Offspring(-negative / 2, w),
        Offspring(-negative / 2, -w),
    )


@pytest.mark.parametrize("bound", [1.0, 2.0, 3.0, 7.0])
@pytest.mark.parametrize("spectrum", ["mixed", "positive", "negative"])
def test_the_signed_split_attains_the_bound_that_no_admissible_split_beats(bound, spectrum):
    generator = torch.Generator().manual_seed(int(bound * 10) + len(spectrum))
    dim = 5
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=DTYPE))
    values = torch.linspace(-2.0, 3.0, dim, dtype=DTYPE)
    values = {"mixed": values, "positive": values.abs() + 0.1, "negative": -values.abs() - 0.1}[spectrum]
    matrix = basis @ torch.diag(values) @ basis.T
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    children = signed_offspring(eigenvalues[0], eigenvectors[:, 0], eigenvalues[-1], eigenvectors[:, -1], bound)
    weights = torch.tensor([child.weight for child in children], dtype=DTYPE)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-15)
    assert float(weights.abs().sum()) <= bound + 1e-12
    shifts = [child.shift if child.shift is not None else torch.zeros(dim, dtype=DTYPE) for child in children]
    assert float(sum(w * s for w, s in zip(weights, shifts)).abs().max()) <= 1e-15  # no first-order change
    index = float(signed_indexes(eigenvalues[:1], eigenvalues[-1:], bound)[0])
    assert _quadratic(children, matrix) == pytest.approx(index, rel=1e-12, abs=1e-14)
    expected = 0.5 * (bound + 1) * min(float(values.min()), 0) - 0.5 * (bound - 1) * max(float(values.max()), 0)
    assert index == pytest.approx(expected, rel=1e-12, abs=1e-14)
    for _ in range(300):
        assert _quadratic(_random_signed_split(dim, bound, generator), matrix) >= index - 1e-12


def test_a_positive_definite_splitting_matrix_is_stable_for_the_plain_split_only():
    """The point of signed splitting: where lambda_min > 0 nothing improves a plain split, a negative pair does."""
    smallest, largest = torch.tensor([0.5], dtype=DTYPE), torch.tensor([2.0], dtype=DTYPE)
    assert float(signed_indexes(smallest, largest, 1.0)[0]) == 0.0
    assert float(signed_indexes(smallest, largest, 3.0)[0]) == pytest.approx(-2.0)


@pytest.mark.parametrize("name", ALL)
def test_zero_epsilon_signed_splits_keep_the_function(name):
    model, inputs, _, options = model_and_data(name)
    graph = ChannelGraph(model, inputs, **options)
    with torch.no_grad():
        before = model(inputs)
    generator = torch.Generator().manual_seed(5)
    requests = []
    for site in graph.splittable_sites():
        offspring = _random_signed_split(site.neuron_dim, 3.0, generator)
        requests.append(SplitRequest(site.name, site.num_neurons - 1, offspring=offspring))
    report = split_network(model, graph, requests, 0.0, allow_inexact=True)
    with torch.no_grad():
        after = model(inputs)
    assert float((after - before).abs().max()) <= 1e-10
    assert all(len(placed) == 1 + 4 for entry in report.offspring for placed in entry)


@pytest.mark.parametrize("name", sorted(MODELS) + SMOOTH[:2])
def test_signed_splits_change_the_loss_by_their_second_order_prediction(name):
    model, inputs, targets, options = model_and_data(name, seed=1)
    net = SplittableNetwork(model, inputs, **options)
    small = [site.name for site in net.graph.splittable_sites() if site.neuron_dim <= 600]  # eigh of d^2: cheap
    results = net.splitting([(inputs, targets)], F.cross_entropy, sites=small, largest=True, keep_matrices=True)
    clean = {n: r for n, r in results.items() if net.sites[n].exact and not net.sites[n].kinks}
    signed = signed_splitting(clean, bound=3.0)
    requests = net.select(signed, max_count=4)
    assert requests and all(r.offspring is not None and len(r.offspring) >= 3 for r in requests)
    for request in requests:  # the request's index is the signed split's own second-order change
        assert _quadratic(request.offspring, results[request.site].matrices[request.channel]) == pytest.approx(
            request.index, rel=1e-9
        )
    before = loss_of(model, inputs, targets)
    report = net.split(requests, EPSILON)
    assert report.predicted_change < 0
    assert loss_of(model, inputs, targets) - before == pytest.approx(report.predicted_change, rel=0.02)


def test_the_optimal_signed_split_beats_100_random_signed_splits_of_the_same_bound():
    model, inputs, targets = zoo_model("mlp", seed=3)
    net = SplittableNetwork(model, inputs)
    site = "hidden.3"
    results = net.splitting([(inputs, targets)], F.cross_entropy, sites=[site], largest=True)
    results = signed_splitting(results, bound=3.0)
    channel = int(results[site].indexes.argmin())
    best = SplitRequest(site, channel, offspring=results[site].scheme.offspring(results[site], channel))
    before = loss_of(model, inputs, targets)

    def change(request: SplitRequest) -> float:
        trial = copy.deepcopy(model)
        split_network(trial, ChannelGraph(trial, inputs), [request], 0.05)
        return loss_of(trial, inputs, targets) - before

    optimal = change(best)
    assert optimal < 0
    generator = torch.Generator().manual_seed(11)
    dim = net.sites[site].neuron_dim
    random_changes = [
        change(SplitRequest(site, channel, offspring=_random_signed_split(dim, 3.0, generator))) for _ in range(100)
    ]
    assert optimal < min(random_changes)


def test_offspring_state_carries_its_signed_share():
    model, inputs, targets = zoo_model("mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    state = {k: v.clone() for k, v in optimizer.state[model.hidden[3].weight].items()}
    column_state = {k: v.clone() for k, v in optimizer.state[model.classifier.weight].items()}
    column = model.classifier.weight[:, 1].detach().clone()
    offspring = (Offspring(1.0), Offspring(0.5), Offspring(-0.5))
    split_network(
        model, ChannelGraph(model, inputs), [SplitRequest("hidden.3", 1, offspring=offspring)], 0.0, optimizer=optimizer
    )
    grown = optimizer.state[model.hidden[3].weight]
    for position, weight in ((1, 1.0), (2, 0.5), (3, -0.5)):
        torch.testing.assert_close(grown["exp_avg"][position], weight * state["exp_avg"][1])
        torch.testing.assert_close(grown["exp_avg_sq"][position], weight**2 * state["exp_avg_sq"][1])
        torch.testing.assert_close(model.classifier.weight[:, position], weight * column)
        torch.testing.assert_close(
            optimizer.state[model.classifier.weight]["exp_avg"][:, position], column_state["exp_avg"][:, 1]
        )


def test_malformed_offspring_are_refused_before_anything_changes():
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    shift = torch.ones(graph.sites["hidden.3"].neuron_dim, dtype=DTYPE)
    with pytest.raises(GraphError, match="sum to 1.5, not 1"):
        split_network(model, graph, [SplitRequest("hidden.3", 0, offspring=(Offspring(1.0), Offspring(0.5)))], 0.1)
    with pytest.raises(GraphError, match="both a direction and offspring"):
        request = SplitRequest("hidden.3", 0, shift, offspring=(Offspring(0.5, shift), Offspring(0.5, -shift)))
        split_network(model, graph, [request], 0.1)
    with pytest.raises(GraphError, match="finite entries"):
        bad = (Offspring(0.5, shift * float("nan")), Offspring(0.5))
        split_network(model, graph, [SplitRequest("hidden.3", 0, offspring=bad)], 0.1)
    assert model.hidden[3].out_features == 4


def test_signed_results_need_the_largest_eigenpairs_and_budgets_count_every_added_neuron():
    model, inputs, targets = zoo_model("mlp", seed=3)
    net = SplittableNetwork(model, inputs)
    small = ["hidden.3"]
    with pytest.raises(ValueError, match="largest=True"):
        signed_splitting(net.splitting([(inputs, targets)], F.cross_entropy, sites=small), bound=3.0)
    results = net.splitting([(inputs, targets)], F.cross_entropy, sites=small, largest=True)
    with pytest.raises(ValueError, match=">= 1"):
        signed_splitting(results, bound=0.5)
    signed = signed_splitting(results, bound=3.0)
    costs = {name: 1.0 for name in signed}
    chosen = select_within_budget(signed, costs, budget=6.0, graph=net.graph)
    added = sum(len(request.offspring) - 1 for request in chosen)
    assert 0 < added <= 6
    plain = select_within_budget(results, costs, budget=6.0, graph=net.graph)
    assert len(plain) == min(6, sum(int((r.indexes < 0).sum()) for r in results.values()))


def test_a_count_of_added_neurons_takes_smaller_signed_splits_where_the_optimal_ones_do_not_fit():
    """``max_added`` counts neurons, not splits: the stage adds exactly that many, and where one or two are left the
    best split with fewer offspring over all neurons (brute force) is taken; a budget of one neuron's cost takes the
    same split. Each request's index is its split's own second-order change."""
    model, inputs, targets = zoo_model("mlp", seed=3)
    net = SplittableNetwork(model, inputs)
    site = "hidden.3"
    results = net.splitting([(inputs, targets)], F.cross_entropy, sites=[site], largest=True, keep_matrices=True)
    signed = signed_splitting(results, bound=3.0)
    copies = [signed[site].scheme.copies(signed[site], j) for j in range(len(signed[site].indexes))]
    assert min(copies) > 1  # so every stage below must fall back to smaller splits somewhere
    for allowance in (1, 2, 4, 5):
        chosen = select_splits(signed, 100, max_added=allowance, graph=net.graph)
        assert sum(len(request.offspring) - 1 for request in chosen) == allowance
        for request in chosen:
            matrix = results[site].matrices[request.channel]
            assert _quadratic(request.offspring, matrix) == pytest.approx(request.index, rel=1e-9)
    result = signed[site]
    pairs = [
        (
            result.smallest_indexes[j],
            result.smallest_directions[j],
            result.largest_indexes[j],
            result.largest_directions[j],
        )
        for j in range(len(result.indexes))
    ]
    best_of_one = min(range(len(pairs)), key=lambda j: fitting_split(*map(_float, pairs[j]), 3.0, 1).index)
    (one,) = select_splits(signed, 100, max_added=1, graph=net.graph)
    assert (one.channel, len(one.offspring)) == (best_of_one, 2)
    (budgeted,) = select_within_budget(signed, {site: 1.0}, budget=1.0, graph=net.graph)
    assert (budgeted.channel, budgeted.index) == (one.channel, pytest.approx(one.index, rel=1e-12))
    with pytest.raises(ValueError, match="max_added"):
        select_splits(signed, 100, max_added=0)
    through_the_network = net.select(signed, 100, max_added=4)
    assert sum(len(request.offspring) - 1 for request in through_the_network) == 4


def _float(value):
    return float(value) if value.dim() == 0 else value
