"""Warm starts of the matrix-free solver cannot trap it: a start on an exact eigenvector of another eigenvalue still
ends at lambda_min, and adaptive statistics end with the indexes of a cold solve on the same data (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model

from splitgrow.network import SplittableNetwork
from splitgrow.statistics.adaptive import AdaptiveStatistics, adaptive_splitting, top_fraction

LOBPCG = {"solver": "lobpcg", "tolerance": 1e-7, "operator_dtype": torch.float64, "max_iterations": 2000}


@pytest.fixture(scope="module")
def vgg():
    model, inputs, targets = zoo_model("vgg19", width=4, seed=1)
    batches = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, inputs.shape[0], 4)]
    net = SplittableNetwork(model, inputs[:2])
    dense = net.splitting(batches, F.cross_entropy, solver="dense", keep_matrices=True)
    return model, net, batches, dense


def _assert_indexes(found, dense) -> None:
    for name, result in dense.items():
        scale = float(result.indexes.abs().max())
        torch.testing.assert_close(found[name].indexes, result.indexes, rtol=0, atol=1e-5 * scale + 1e-300)


def test_a_warm_start_on_the_largest_eigenvector_still_ends_at_lambda_min(vgg):
    """Started exactly on the eigenvector of lambda_max (a stationary point with zero residual), LOBPCG alone would
    stop there at once; the fresh component of the start moves it to lambda_min."""
    _, net, batches, dense = vgg
    warm = {name: torch.linalg.eigh(result.matrices)[1][:, :, -1] for name, result in dense.items()}
    found = net.splitting(batches, F.cross_entropy, warm_start=warm, **LOBPCG)
    _assert_indexes(found, dense)


def test_rows_of_zeros_start_as_without_a_warm_start(vgg):
    _, net, batches, dense = vgg
    cold = net.splitting(batches, F.cross_entropy, **LOBPCG)
    zeros = {name: torch.zeros_like(result.directions) for name, result in dense.items()}
    found = net.splitting(batches, F.cross_entropy, warm_start=zeros, **LOBPCG)
    for name, result in cold.items():
        assert torch.equal(found[name].indexes, result.indexes), name


def test_adaptive_statistics_end_with_the_indexes_of_a_cold_solve(vgg):
    """Every check warm-starts from the last; with all the data drawn, the indexes are those of the dense solve
    (this failed when neurons with index 0 passed on a null vector of S, which stayed an exact eigenvector)."""
    model, net, batches, dense = vgg
    from splitgrow.statistics.splitting import SolverOptions

    options = SolverOptions(solver="lobpcg", tolerance=1e-7, operator_dtype=torch.float64, max_iterations=2000)
    checks = itertools.count(1)

    def growing(results):  # more neurons at every check: the previous selection never keeps all the decrease
        return top_fraction(0.05 * next(checks))(results)

    every_batch = AdaptiveStatistics(min_batches=1, max_batches=len(batches), growth=1.5, tolerance=0.0)
    found = adaptive_splitting(
        model, net.graph, batches, growing, F.cross_entropy, adaptive=every_batch, options=options
    )
    assert found.adaptive["batches"] == len(batches) and len(found.adaptive["checks"]) >= 3
    _assert_indexes(found, dense)


def test_adaptive_statistics_leave_a_shared_null_space():
    """The case that trapped them: inputs with a coordinate that is always 0 give every S the same null vector
    e_4; on the first batches (targets below the outputs) S is semidefinite, lambda_min = 0 with direction e_4;
    the later batches make lambda_min negative, but e_4 stays an exact eigenvector of eigenvalue 0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softplus(), torch.nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[2].weight.abs_()  # positive output weights: the first batch's gradients all have one sign
    generator = torch.Generator().manual_seed(0)
    batches = []
    for index in range(6):
        x = torch.randn(16, 4, generator=generator, dtype=torch.float64)
        x[:, 3] = 0.0
        y = (
            torch.full((16, 1), -2.0, dtype=torch.float64)
            if index == 0
            else 10 * torch.randn(16, 1, generator=generator, dtype=torch.float64)
        )
        batches.append((x, y))
    net = SplittableNetwork(model, batches[0][0][:2])
    first = net.splitting(batches[:2], F.mse_loss, solver="dense")
    dense = net.splitting(batches, F.mse_loss, solver="dense")
    assert bool((first["0"].indexes == 0).all()) and bool((dense["0"].indexes < 0).any())
    from splitgrow.statistics.splitting import SolverOptions

    options = SolverOptions(solver="lobpcg", tolerance=1e-7, operator_dtype=torch.float64, max_iterations=2000)
    # checks at 2 batches (nothing negative yet), 4 (warm-started from the null vectors) and 6
    never_settles = AdaptiveStatistics(min_batches=2, max_batches=len(batches), growth=2.0, tolerance=0.0)
    found = adaptive_splitting(
        model, net.graph, batches, top_fraction(0.5), F.mse_loss, adaptive=never_settles, options=options
    )
    assert [check["batches"] for check in found.adaptive["checks"]] == [2, 4, 6]
    _assert_indexes(found, dense)
