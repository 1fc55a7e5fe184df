"""Statistics that read a grid of a convolution's output positions (``max_positions``): an unbiased estimate of S."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model
from torch import nn

from splitgrow.config import ConfigError
from splitgrow.experiments.images import ImagesConfig
from splitgrow.experiments.transfer import TransferConfig
from splitgrow.graph import ChannelGraph
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.statistics import RidgeOperator, splitting_eigenpairs, splitting_operators
from splitgrow.statistics.recording import record_batches
from splitgrow.statistics.ridge import grid_steps, ridge_fields
from splitgrow.statistics.splitting import SolverOptions

DTYPE = torch.float64


def conv_model(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    conv = {
        "strided": nn.Conv2d(3, 5, 3, stride=2, padding=1),
        "reflect": nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"),
        "same-dilated": nn.Conv2d(3, 5, 3, dilation=2, padding="same"),
        "conv1d": nn.Conv1d(3, 5, 5, stride=2, padding=2),
    }[kind]
    norm = nn.BatchNorm1d(5) if isinstance(conv, nn.Conv1d) else nn.BatchNorm2d(5)
    model = nn.Sequential(conv, norm, nn.Tanh(), nn.Flatten(), nn.LazyLinear(4)).to(DTYPE)
    generator = torch.Generator().manual_seed(1)
    shape = (6, 3, 13) if kind == "conv1d" else (6, 3, 9, 7)  # odd sizes: grids of unequal length
    inputs = torch.randn(shape, generator=generator, dtype=DTYPE)
    model(inputs)
    model.eval()
    return model, inputs, torch.randint(0, 4, (6,), generator=generator)


def grid_mean_and_full(model, inputs, targets, max_positions, sites=None):
    """For each ridge site whose grid is subsampled: the mean over every grid offset of the subsampled S (one
    batch), and the S of every position, both dense."""
    graph = ChannelGraph(model, inputs)
    data = [(inputs, targets)]
    options = {"dtype": DTYPE, "sites": sites}
    full = splitting_operators(model, graph, data, F.cross_entropy, **options)
    sampled = splitting_operators(model, graph, data, F.cross_entropy, max_positions=max_positions, **options)
    sites = [graph.sites[name] for name in sampled]
    (record,) = record_batches(model, graph, data, sites, loss_function=F.cross_entropy)
    found = {}
    for name, operator in sampled.items():
        if not isinstance(operator, RidgeOperator) or not operator.subsamples_positions:
            continue
        fields = ridge_fields(graph, graph.sites[name], record, DTYPE)
        offsets = list(itertools.product(*(range(step) for step in operator.position_steps)))
        mean = 0
        for offset in offsets:
            operator.batches = [operator.on_grid(fields, offset)]
            mean = mean + operator.dense() / len(offsets)
        found[name] = (mean, full[name].dense())
    return found


@pytest.mark.parametrize(
    "kind, max_positions", [("strided", 1), ("strided", 5), ("reflect", 5), ("same-dilated", 5), ("conv1d", 5)]
)
def test_grid_estimates_average_to_the_statistics_of_every_position(kind, max_positions):
    """Every grid offset equally likely, weights step^k: the estimate is unbiased, whatever the stride, padding,
    dilation, grid size (odd included) or number of spatial axes."""
    model, inputs, targets = conv_model(kind)
    found = grid_mean_and_full(model, inputs, targets, max_positions)
    assert "0" in found
    for mean, full in found.values():
        torch.testing.assert_close(mean, full, rtol=1e-10, atol=1e-13)


def test_summed_producers_share_one_grid():
    """A ResNet block's two producers (a 3x3 convolution and a strided 1x1 shortcut) read the same positions."""
    model, inputs, targets = zoo_model("resnet", width=3)
    graph = ChannelGraph(model, inputs)
    summed = [name for name, site in graph.sites.items() if len(site.members) > 1]
    found = grid_mean_and_full(model, inputs, targets, 16, sites=summed)
    assert found
    for mean, full in found.values():
        torch.testing.assert_close(mean, full, rtol=1e-10, atol=1e-13)


def test_one_grid_differs_from_every_position():
    """One offset alone is an estimate, not the exact S (the mean above is not trivially equal)."""
    model, inputs, targets = conv_model("strided")
    graph = ChannelGraph(model, inputs)
    data = [(inputs, targets)]
    full = splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE)["0"].dense()
    sampled = splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE, max_positions=6)["0"].dense()
    assert float((sampled - full).norm() / full.norm()) > 1e-3


@pytest.mark.parametrize(
    "grid, max_positions, expected",
    [((32, 32), 256, 2), ((32, 32), 255, 3), ((16, 16), 256, 1), ((9, 7), 12, 3), ((98,), 40, 3), ((9, 2), 3, 3)],
)
def test_grid_steps_take_the_smallest_common_step_that_fits(grid, max_positions, expected):
    steps = grid_steps(grid, max_positions)
    assert steps == tuple(min(expected, size) for size in grid)
    assert math.prod(-(-size // step) for size, step in zip(grid, steps)) <= max_positions
    assert expected == 1 or math.prod(-(-size // (expected - 1)) for size in grid) > max_positions


def test_the_seed_fixes_the_grids():
    """Same seed, same offsets and the same indexes; another seed draws other offsets."""
    model, inputs, targets = conv_model("reflect")
    graph = ChannelGraph(model, inputs)
    data = [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])]

    def indexes(seed: int) -> torch.Tensor:
        results = splitting_eigenpairs(
            model, graph, data, F.cross_entropy, solver="lobpcg", dtype=DTYPE, operator_dtype=DTYPE, seed=seed,
            max_positions=4, tolerance=1e-6,
        )  # fmt: skip
        return results["0"].indexes

    first = indexes(0)
    assert torch.equal(first, indexes(0))
    assert not torch.allclose(first, indexes(1), rtol=1e-6, atol=0)


def test_merging_keeps_batches_of_different_grids_apart():
    """Offsets can leave grids of unequal sizes (odd maps): consolidation merges only batches of one shape, and
    the products stay the same."""
    model, inputs, targets = conv_model("reflect")
    graph = ChannelGraph(model, inputs)
    data = [(inputs[i : i + 2], targets[i : i + 2]) for i in range(0, 6, 2)]
    operator = splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE, max_positions=12, seed=3)["0"]
    assert operator.position_steps == (3, 3)
    shapes = [tuple(fields.coefficients.shape[2:]) for fields in operator.batches]
    assert len(set(shapes)) > 1
    directions = torch.randn((operator.num_neurons, operator.neuron_dim), dtype=DTYPE)
    before = operator.matvec(directions)
    operator.consolidate()
    runs = 1 + sum(a != b for a, b in zip(shapes, shapes[1:]))  # consecutive batches of one shape merge
    assert operator.num_batches == runs
    torch.testing.assert_close(operator.matvec(directions), before, rtol=1e-12, atol=1e-14)


def test_dense_statistics_and_linear_layers_read_every_position():
    model, inputs, targets = zoo_model("mlp", width=3)
    graph = ChannelGraph(model, inputs)
    data = [(inputs, targets)]
    operators = splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE, max_positions=1)
    exact = splitting_operators(model, graph, data, F.cross_entropy, dtype=DTYPE)
    for name, operator in operators.items():
        assert not operator.subsamples_positions
        torch.testing.assert_close(operator.dense(), exact[name].dense(), rtol=0, atol=0)


def test_max_positions_and_tolerances_are_validated():
    with pytest.raises(ValueError, match="max_positions"):
        SolverOptions(max_positions=0)
    with pytest.raises(ConfigError, match="max_positions"):
        ImagesConfig(max_positions=-1).validate()
    for config in (ImagesConfig(tolerance=0.0), TransferConfig(tolerance=1.0)):
        with pytest.raises(ConfigError, match="tolerance"):
            config.validate()


def test_a_growth_policy_passes_max_positions_to_its_statistics():
    """A stage splits by the indexes of the grid estimate its policy asks for (not those of every position), and
    predicts its loss change from them."""
    model, inputs, targets = conv_model("strided")
    data = [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])]
    solver = {"tolerance": 1e-9, "dtype": DTYPE, "operator_dtype": DTYPE, "start": "random"}
    policy = GrowthPolicy(count=2, epsilon=1e-3, solver="lobpcg", options={"max_positions": 3, **solver})
    grower = Grower(copy.deepcopy(model), inputs, data, policy=policy, loss_function=F.cross_entropy, seed=5)
    stage = grower.grow()
    graph = ChannelGraph(model, inputs)

    def indexes(**options) -> torch.Tensor:
        return splitting_eigenpairs(model, graph, data, F.cross_entropy, solver="lobpcg", seed=5, **solver, **options)[
            "0"
        ].indexes

    sampled, exact = indexes(max_positions=3), indexes()
    assert float((sampled - exact).abs().max()) > 1e-6 * float(exact.abs().max())
    split = [(s["channel"], s["index"]) for s in stage.splits]
    best = torch.argsort(sampled)[:2].tolist()
    assert [channel for channel, _ in split] == best
    assert [index for _, index in split] == pytest.approx(sampled[best].tolist(), rel=1e-7)
    assert stage.predicted_change == pytest.approx(0.5e-6 * sum(index for _, index in split), rel=1e-12)
