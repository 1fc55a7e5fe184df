"""Matrix-free operators, iterative solvers and budgeted selection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model
from torch import nn

from splitgrow import SplitgrowWarning, SplittableNetwork
from splitgrow.graph import ChannelGraph
from splitgrow.inspection import split_costs
from splitgrow.selection import choose_within_budget, select_splits, select_within_budget
from splitgrow.solvers import dense_eigenpairs, lobpcg_smallest, rayleigh_quotient_descent
from splitgrow.statistics import RidgeOperator, splitting_eigenpairs, splitting_matrices, splitting_operators

DTYPE = torch.float64


def dense_and_operators(architecture: str) -> tuple[dict, dict]:
    """Dense matrices and float64 operators of every site of a tiny zoo model, over two batches."""
    model, inputs, targets = zoo_model(architecture, width=3)
    graph = ChannelGraph(model, inputs)
    data = [(inputs[:5], targets[:5]), (inputs[5:], targets[5:])]
    dense = splitting_matrices(model, graph, data, F.cross_entropy)
    return dense, splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE)


@pytest.mark.parametrize("architecture", ["mlp", "vgg19", "mobilenetv1", "concat", "resnet", "dscnn-l"])
def test_matrix_free_operator_equals_the_dense_matrices(architecture):
    """No unfolding, no d x d matrix: convolutions and their weight gradients give the same S, depthwise-separable
    chains and summed producers included."""
    dense, operators = dense_and_operators(architecture)
    for name, operator in operators.items():
        assert operator.memory_bytes() > 0
        torch.testing.assert_close(operator.dense(), dense[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("architecture", ["vgg19", "mobilenetv1", "concat"])
def test_merged_batches_give_the_same_products(architecture):
    """Consolidating cached batches (one large product instead of several small ones) changes no product: batches
    of equal scale merge up to the sample cap, batches of another scale (a mean loss over a smaller batch) do not."""
    model, inputs, targets = zoo_model(architecture, width=3)
    graph = ChannelGraph(model, inputs)
    data = [(inputs[i : i + size], targets[i : i + size]) for i, size in ((0, 3), (3, 3), (6, 2), (8, 2))]
    generator = torch.Generator().manual_seed(0)
    for cap, expected in ((6, 2), (4, 3), (1, 4)):
        operators = splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE)
        for operator in operators.values():
            directions = torch.randn((operator.num_neurons, operator.neuron_dim), generator=generator, dtype=DTYPE)
            basis = torch.linalg.qr(torch.randn((operator.neuron_dim, 2), generator=generator, dtype=DTYPE))[0]
            ridge = isinstance(operator, RidgeOperator)
            before = operator.matvec(directions)
            compressed = operator.compress(basis) if ridge else None
            operator.consolidate(max_samples=cap)
            assert operator.num_batches == (expected if operator.merges else 4)
            torch.testing.assert_close(operator.matvec(directions), before, rtol=1e-12, atol=1e-14)
            if operator.merges:  # every sample is kept, in order of the batches
                assert [operator._samples(cached) for cached in operator.batches] == {
                    6: [6, 4],
                    4: [3, 3, 4],
                    1: [3, 3, 2, 2],
                }[cap]
            if ridge:  # the Ritz start's compression weighs the merged batches as the separate ones
                torch.testing.assert_close(operator.compress(basis), compressed, rtol=1e-12, atol=1e-14)
        assert any(operator.merges for operator in operators.values())


@pytest.mark.parametrize("kind", ["reflect", "same", "dilated", "conv1d-strided", "conv1d-circular", "depthwise"])
def test_operator_on_unusual_convolutions(kind):
    conv = {
        "reflect": nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        "same": nn.Conv2d(4, 6, 4, padding="same"),
        "dilated": nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2),
        "conv1d-strided": nn.Conv1d(4, 6, 5, stride=2, padding=2),
        "conv1d-circular": nn.Conv1d(4, 6, 3, dilation=2, padding="same", padding_mode="circular"),
        "depthwise": nn.Conv2d(4, 4, 3, padding=1, groups=4, stride=2),
    }[kind]
    norm = nn.BatchNorm1d(conv.out_channels) if isinstance(conv, nn.Conv1d) else nn.BatchNorm2d(conv.out_channels)
    # a depthwise layer reading the model input cannot grow; one reading a Linear's output can
    prefix = [nn.Conv2d(4, 4, 1), nn.Softplus()] if kind == "depthwise" else []
    model = nn.Sequential(*prefix, conv, norm, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)).to(DTYPE)
    x = torch.randn(3, 4, 7, 7, dtype=DTYPE) if isinstance(conv, nn.Conv2d) else torch.randn(3, 4, 9, dtype=DTYPE)
    model(x)
    model.eval()
    y = torch.randint(0, 3, (3,))
    graph = ChannelGraph(model, x)
    name = "0"
    dense = splitting_matrices(model, graph, [(x, y)], F.cross_entropy)[name]
    operator = splitting_operators(model, graph, [(x, y)], F.cross_entropy, dtype=DTYPE)[name]
    torch.testing.assert_close(operator.dense(), dense, rtol=1e-9, atol=1e-12)
    assert float(dense.abs().max()) > 0


def random_spectrum_matrices(n: int, d: int, spectrum: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn((n, d, d), generator=generator, dtype=DTYPE))[0]
    k = torch.arange(d, dtype=DTYPE)
    if spectrum == "decaying":  # -1, -0.8, -0.64, ... : a clear gap below the rest
        values = -(0.8**k).repeat(n, 1) * (0.5 + torch.rand((n, 1), generator=generator, dtype=DTYPE))
    else:  # flat: evenly spread over [-1, 1], the smallest gap is 2 / (d - 1)
        values = torch.linspace(-1, 1, d, dtype=DTYPE).repeat(n, 1)
    return basis @ torch.diag_embed(values) @ basis.transpose(1, 2)


@pytest.mark.parametrize("spectrum", ["decaying", "flat"])
def test_lobpcg_agrees_with_dense(spectrum):
    matrices = random_spectrum_matrices(12, 60, spectrum, seed=1)
    exact = dense_eigenpairs(matrices)
    found = lobpcg_smallest(
        lambda v: (matrices @ v.unsqueeze(2)).squeeze(2),
        torch.randn((12, 60), generator=torch.Generator().manual_seed(2), dtype=DTYPE),
        tolerance=1e-6,
        max_iterations=2000,
    )
    assert bool(found.converged.all())
    torch.testing.assert_close(found.indexes, exact.indexes, rtol=1e-8, atol=1e-12)
    overlaps = (found.directions * exact.directions).sum(1).abs()
    assert float(overlaps.min()) > 1 - 1e-6
    assert found.products < 2 * found.iterations + 2  # one product per iteration, plus refreshes


def test_lobpcg_reports_neurons_that_did_not_converge():
    matrices = random_spectrum_matrices(6, 80, "flat", seed=3)
    found = lobpcg_smallest(
        lambda v: (matrices @ v.unsqueeze(2)).squeeze(2),
        torch.randn((6, 80), generator=torch.Generator().manual_seed(4), dtype=DTYPE),
        tolerance=1e-8,
        max_iterations=5,
    )
    assert not bool(found.converged.any())
    assert found.iterations == 5 and bool((found.residuals > 1e-8).all())


def test_rayleigh_quotient_descent_finds_the_smallest_direction():
    matrices = random_spectrum_matrices(5, 20, "decaying", seed=5)
    halves = [0.9 * matrices, 1.1 * matrices]  # two "batches" averaging to S

    def batch(b, v):
        return (halves[b] @ v.unsqueeze(2)).squeeze(2)

    found = rayleigh_quotient_descent(
        batch,
        2,
        lambda v: (matrices @ v.unsqueeze(2)).squeeze(2),
        torch.randn((5, 20), generator=torch.Generator().manual_seed(6), dtype=DTYPE),
        epochs=300,
        learning_rate=0.01,
        tolerance=1e-2,
    )
    exact = dense_eigenpairs(matrices)
    assert bool(found.converged.all())
    torch.testing.assert_close(found.indexes, exact.indexes, rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    ("solver", "start", "subspace_dim"), [("lobpcg", "subspace", 3), ("lobpcg", "random", 0), ("auto", "subspace", 32)]
)
def test_iterative_solvers_on_a_network_select_the_dense_selection(solver, start, subspace_dim):
    model, inputs, targets = zoo_model("mobilenetv1", width=4, seed=2)
    graph = ChannelGraph(model, inputs)
    data = [(inputs, targets)]
    dense = splitting_eigenpairs(model, graph, data, F.cross_entropy)
    fast = splitting_eigenpairs(
        model,
        graph,
        data,
        F.cross_entropy,
        solver=solver,
        operator_dtype=DTYPE,
        tolerance=1e-6,
        max_iterations=1000,
        dense_bytes=2000,
        start=start,
        subspace_dim=subspace_dim,
    )
    solvers = {result.solver for result in fast.values()}
    assert solvers == ({"lobpcg"} if solver == "lobpcg" else {"dense", "lobpcg"})
    for name, result in fast.items():
        assert bool(result.converged.all())
        torch.testing.assert_close(result.indexes, dense[name].indexes, rtol=1e-6, atol=1e-9)
    chosen = {(r.site, r.channel) for r in select_splits(fast, 10, graph=graph)}
    assert chosen == {(r.site, r.channel) for r in select_splits(dense, 10, graph=graph)}


@pytest.mark.parametrize("architecture", ["mlp", "vgg19", "mobilenetv1"])
def test_shared_subspace_compression_equals_the_projected_matrices(architecture):
    """Q^T S_j Q from the k features HQ (plain sites) or from k products (depthwise blocks), and the Ritz start:
    an upper bound on lambda_min, exact when the subspace is everything."""
    dense, operators = dense_and_operators(architecture)
    for name, operator in operators.items():
        if not isinstance(operator, RidgeOperator):  # a chain has no cheap compression: LOBPCG starts at random
            assert operator.ritz_start(2, torch.Generator()) is None
            continue
        exact = dense_eigenpairs(dense[name]).indexes
        for dim in (2, operator.neuron_dim):
            basis = operator.input_subspace(dim, torch.Generator().manual_seed(dim))
            if basis is None:  # neurons that do not share their inputs, with d > dim
                assert operator.neuron_dim > dim
                continue
            k = min(dim, operator.neuron_dim)
            assert basis.shape == (operator.neuron_dim, k)
            torch.testing.assert_close(basis.t() @ basis, torch.eye(k, dtype=DTYPE), rtol=0, atol=1e-12)
            projected = basis.t() @ dense[name] @ basis
            torch.testing.assert_close(operator.compress(basis), projected, rtol=1e-9, atol=1e-12)
            directions = operator.ritz_start(dim, torch.Generator().manual_seed(dim))  # in the same subspace
            torch.testing.assert_close(directions.norm(dim=1), torch.ones(operator.num_neurons, dtype=DTYPE))
            values = (directions * (dense[name] @ directions.unsqueeze(2)).squeeze(2)).sum(1)
            assert bool((values >= exact - 1e-12).all())  # Rayleigh quotients bound lambda_min from above
            ritz_values = torch.linalg.eigvalsh(projected)[:, 0]
            torch.testing.assert_close(values, ritz_values, rtol=1e-9, atol=1e-12)
            if k == operator.neuron_dim:
                torch.testing.assert_close(values, exact, rtol=1e-9, atol=1e-12)


def test_input_subspace_finds_the_dominant_input_direction():
    generator = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(20, generator=generator, dtype=DTYPE), dim=0)
    inputs = 10 * torch.randn((200, 1), generator=generator, dtype=DTYPE) * direction  # one strong direction
    inputs = inputs + 0.1 * torch.randn((200, 20), generator=generator, dtype=DTYPE)
    model = nn.Sequential(nn.Linear(20, 4), nn.Tanh(), nn.Linear(4, 2)).to(DTYPE)
    graph = ChannelGraph(model, inputs)
    targets = torch.randint(0, 2, (200,), generator=generator)
    operator = splitting_operators(model, graph, [(inputs, targets)], F.cross_entropy, dtype=DTYPE)["0"]
    basis = operator.input_subspace(1, generator)
    assert abs(float(basis[:20, 0] @ direction)) > 0.999  # the bias coordinate (energy 1) is not it


def test_unknown_start_is_refused():
    model, inputs, targets = zoo_model("mlp", width=3)
    with pytest.raises(ValueError, match="start must be one of subspace, random"):
        splitting_eigenpairs(model, ChannelGraph(model, inputs), [(inputs, targets)], F.cross_entropy, start="zero")


def test_unconverged_neurons_are_never_selected():
    model, inputs, targets = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    results = splitting_eigenpairs(model, graph, [(inputs, targets)], F.cross_entropy)
    best = min(results.values(), key=lambda r: float(r.indexes.min()))
    channel = int(best.indexes.argmin())
    best.converged = torch.ones_like(best.indexes, dtype=torch.bool)
    best.converged[channel] = False
    assert (best.site, channel) not in {(r.site, r.channel) for r in select_splits(results, 50, graph=graph)}


class _Result:
    def __init__(self, indexes):
        self.indexes = torch.tensor(indexes, dtype=DTYPE)
        self.directions = torch.eye(len(indexes), dtype=DTYPE)
        self.converged = None


def brute_force(candidates, budget):
    """The largest total decrease of any subset within the budget, by enumeration."""
    best = 0.0
    for size in range(len(candidates) + 1):
        for subset in itertools.combinations(candidates, size):
            if sum(cost for _, _, cost in subset) <= budget:
                best = max(best, -sum(index for _, index, _ in subset))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_budgeted_selection_is_optimal_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    results = {f"site{k}": _Result(list(rng.uniform(-1, 0.2, size=3))) for k in range(3)}
    costs = {f"site{k}": float(rng.integers(1, 10)) for k in range(3)}
    budget = float(rng.integers(5, 25))
    chosen = select_within_budget(results, costs, budget)
    assert sum(costs[r.site] for r in chosen) <= budget
    candidates = [
        (name, index, costs[name]) for name, r in results.items() for index in r.indexes.tolist() if index < 0
    ]
    assert -sum(r.index for r in chosen) == pytest.approx(brute_force(candidates, budget))
    assert [r.index for r in chosen] == sorted(r.index for r in chosen)


@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_takes_at_most_one_alternative_per_group(seed):
    """Alternatives (a neuron's optimal signed split and its smaller ones) exclude each other: the MILP's choice
    equals the best feasible subset by brute force."""
    rng = np.random.default_rng(seed)
    groups = [0, 0, 0, 1, 1, 2, 3, 3]
    scores, costs = rng.uniform(-1, 0, size=8), rng.integers(1, 6, size=8).astype(float)
    budget, cap = float(rng.integers(3, 12)), 3
    chosen = choose_within_budget(list(scores), list(costs), budget, max_count=cap, groups=groups)
    best = 0.0
    for size in range(cap + 1):
        for subset in itertools.combinations(range(8), size):
            feasible = costs[list(subset)].sum() <= budget and len({groups[i] for i in subset}) == size
            if feasible:
                best = min(best, scores[list(subset)].sum())
    assert len({groups[i] for i in chosen}) == len(chosen) <= cap and costs[chosen].sum() <= budget
    assert scores[chosen].sum() == pytest.approx(best)


def test_budgeted_selection_with_equal_costs_is_plain_ranking():
    model, inputs, targets = zoo_model("vgg19")
    graph = ChannelGraph(model, inputs)
    results = splitting_eigenpairs(model, graph, [(inputs, targets)], F.cross_entropy)
    equal = {name: 1.0 for name in results}
    budgeted = select_within_budget(results, equal, budget=7, graph=graph)
    ranked = select_splits(results, 7, graph=graph)
    assert [(r.site, r.channel) for r in budgeted] == [(r.site, r.channel) for r in ranked]


def test_budgeted_selection_uses_graph_costs_and_counts_each_group_once():
    model, inputs, targets = zoo_model("mobilenetv1", seed=1)
    graph = ChannelGraph(model, inputs)
    results = splitting_eigenpairs(model, graph, [(inputs, targets)], F.cross_entropy)
    costs = split_costs(graph, "parameters")
    flops = split_costs(graph, "flops")
    # a pointwise channel's cost includes the depthwise filter and BatchNorms it carries along
    width = model.blocks[3].pointwise[0].in_channels
    assert costs["blocks.3.pointwise.0"] == width + 2 + 9 + 2 + model.blocks[4].pointwise[0].out_channels
    assert flops["blocks.3.pointwise.0"] > costs["blocks.3.pointwise.0"]
    budget = 0.25 * sum(costs[name] * site.num_neurons for name, site in graph.sites.items())
    chosen = select_within_budget(results, costs, budget, graph=graph)
    assert chosen and sum(costs[r.site] for r in chosen) <= budget
    keys = [(r.site, r.channel) for r in chosen]
    assert len(keys) == len(set(keys)) and "blocks.4.depthwise.0" not in costs
    with pytest.raises(ValueError, match="cost kind"):
        split_costs(graph, "watts")


def test_compression_on_the_first_rows_reads_only_those():
    """The starting vectors' estimate: with max_rows = the first batch's rows it is that batch's compression."""
    model, inputs, targets = zoo_model("vgg19", width=3)
    graph = ChannelGraph(model, inputs)
    both = splitting_operators(model, graph, [(inputs[:5], targets[:5]), (inputs[5:], targets[5:])], F.cross_entropy,
                               dtype=DTYPE)  # fmt: skip
    first = splitting_operators(model, graph, [(inputs[:5], targets[:5])], F.cross_entropy, dtype=DTYPE)
    for name in ("features.1.0", "features.19.0"):
        operator = both[name]
        basis = operator.input_subspace(2, torch.Generator().manual_seed(0))
        rows = operator.batches[0].coefficients[:, 0].numel()  # samples x positions of the first batch
        estimate = operator.compress(basis, max_rows=rows)
        torch.testing.assert_close(estimate, first[name].compress(basis), rtol=1e-9, atol=1e-12)
        assert not torch.allclose(estimate, operator.compress(basis), rtol=1e-3, atol=0)  # all rows: both batches


def test_float32_lobpcg_does_not_overflow_on_large_matrices():
    matrices = (1e12 * random_spectrum_matrices(4, 30, "decaying", seed=8)).float()
    found = lobpcg_smallest(
        lambda v: (matrices @ v.unsqueeze(2)).squeeze(2),
        torch.randn((4, 30), generator=torch.Generator().manual_seed(9)),
        tolerance=1e-3,
        max_iterations=300,
    )
    assert bool(torch.isfinite(found.indexes).all()) and bool(found.converged.all())
    exact = dense_eigenpairs(matrices.double()).indexes
    torch.testing.assert_close(found.indexes.double(), exact, rtol=2e-3, atol=0)


def test_selection_lists_the_sites_it_leaves_out():
    model, inputs, targets = zoo_model("resnet")
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs, targets)], F.cross_entropy)
    with pytest.warns(SplitgrowWarning, match="'stem.0': inexact"):
        chosen = net.select(results, max_count=100)
    assert "stem.0" in chosen.skipped and all(r.site != "stem.0" for r in chosen)
    assert all(r.fingerprint == net.graph.fingerprint for r in chosen)
    everything = net.select(results, max_count=100, allow_inexact=True)
    assert any(r.site == "stem.0" for r in everything) or float(results["stem.0"].indexes.min()) >= 0


def test_auto_takes_the_dense_solver_only_where_it_is_the_cheaper():
    """Dense for small neurons (closed-form sites up to AUTO_DENSE_DIM parameters, others up to
    AUTO_DENSE_DIM_OTHER) whose matrices fit in dense_bytes; LOBPCG everywhere else."""
    from splitgrow.statistics.splitting import AUTO_DENSE_DIM, AUTO_DENSE_DIM_OTHER, SolverOptions

    auto = SolverOptions(solver="auto")
    for architecture, width in [("vgg19", 4), ("vgg19", 8), ("mobilenetv1", 4), ("dscnn", 4), ("mlp", 4)]:
        model, inputs, _ = zoo_model(architecture, width=width, seed=0)
        graph = ChannelGraph(model, inputs)
        for site in graph.sites.values():
            largest = AUTO_DENSE_DIM if site.engine == "ridge" else AUTO_DENSE_DIM_OTHER
            expected = "dense" if site.neuron_dim <= largest else "lobpcg"
            assert auto.method(graph, site) == expected, (architecture, site.name, site.engine, site.neuron_dim)
            assert SolverOptions(solver="auto", dense_bytes=0).method(graph, site) == "lobpcg"
    # what the zoo gives: VGG19's 3x3 layers are dense at width 4 (d = 36) and matrix-free at width 8 (d = 72)
    model, inputs, _ = zoo_model("vgg19", width=8, seed=0)
    graph = ChannelGraph(model, inputs)
    assert {auto.method(graph, s) for s in graph.sites.values() if s.neuron_dim == 72} == {"lobpcg"}


@pytest.mark.parametrize("architecture", ["vgg19", "mobilenetv1", "dscnn", "concat", "resnet"])
def test_the_cost_of_several_splits_is_what_they_add_together(architecture):
    """Splits of coupled layers in one stage add more than their costs one by one: the second layer's new rows are
    as wide as the first's grown output. added_cost counts that, exactly, for parameters and layer FLOPs."""
    from splitgrow.inspection import added_cost, layer_flops
    from splitgrow.surgery import Offspring, SplitRequest, parameter_count

    model, inputs, _ = zoo_model(architecture, width=4)
    net = SplittableNetwork(model, inputs)
    sites = [name for name, site in net.graph.sites.items() if site.splittable]
    requests = [SplitRequest(name, channel) for name in sites for channel in (0, 2)]
    three = (Offspring(0.5), Offspring(0.25), Offspring(0.25))  # a split with three offspring adds two neurons
    requests[-1] = SplitRequest(requests[-1].site, requests[-1].channel, offspring=three)
    parameters, flops = parameter_count(model), sum(layer_flops(net.graph).values())
    alone = {name: cost for name, cost in split_costs(net.graph).items()}
    predicted = added_cost(net.graph, requests), added_cost(net.graph, requests, "flops")
    net.split(requests, 0.0, allow_inexact=True)
    assert predicted[0] == parameter_count(model) - parameters
    assert predicted[1] == pytest.approx(sum(layer_flops(ChannelGraph(model, inputs)).values()) - flops, rel=1e-12)
    one_by_one = sum(alone[r.site] * (len(r.offspring) - 1 if r.offspring else 1) for r in requests)
    if architecture in ("vgg19", "mobilenetv1", "dscnn"):  # chains of sites, each feeding the next
        assert predicted[0] > one_by_one


def test_a_budget_holds_for_the_splits_together_not_only_one_by_one():
    from splitgrow.inspection import added_cost
    from splitgrow.surgery import parameter_count

    model, inputs, targets = zoo_model("vgg19", width=4, seed=3)
    graph = ChannelGraph(model, inputs)
    results = splitting_eigenpairs(model, graph, [(inputs, targets)], F.cross_entropy)
    budget = 0.3 * parameter_count(model)
    costs = split_costs(graph, "parameters")
    linear = select_within_budget(results, costs, budget, graph=graph, threshold=1.0)
    assert added_cost(graph, linear) > budget  # the costs one by one overshoot
    exact = select_within_budget(
        results, costs, budget, graph=graph, threshold=1.0, exact_cost=lambda rs: added_cost(graph, rs)
    )
    assert budget * 0.9 < added_cost(graph, exact) <= budget


def test_a_firefly_stage_keeps_to_its_parameter_budget():
    from splitgrow.growth import Grower, GrowthPolicy
    from splitgrow.surgery import parameter_count

    model, inputs, targets = zoo_model("vgg19", width=4, seed=3)
    policy = GrowthPolicy(parameter_ratio=0.3, method="firefly", solver="dense")
    grower = Grower(model, inputs, [(inputs, targets)], policy=policy, loss_function=F.cross_entropy)
    before = parameter_count(model)
    stage = grower.grow()
    assert any(split.get("new") for split in stage.splits) and any(not split.get("new") for split in stage.splits)
    assert 0.25 * before < parameter_count(model) - before <= 0.3 * before
