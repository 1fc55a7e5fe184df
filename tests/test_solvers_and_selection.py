"""Dense batched eigenpairs and the selection rule of Algorithm 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DTYPE
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from splitgrow import solvers
from splitgrow.errors import ConfigError
from splitgrow.selection import select_neurons
from splitgrow.solvers import canonical_sign, dense_eigenpairs


@pytest.mark.parametrize("path", ["batched eigh", "smallest pair only"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(DTYPE, 1e-10), (torch.float32, 1e-4)])
def test_dense_eigenpairs_match_numpy(generator, monkeypatch, path, dtype, tolerance):
    # both solver paths, chosen by size: small matrices stand in for large ones by lowering the switch-over
    monkeypatch.setattr(solvers, "SUBSET_SOLVER_MIN_DIM", 10**9 if path == "batched eigh" else 2)
    a = torch.randn((9, 6, 6), generator=generator, dtype=DTYPE)
    matrices = a + a.transpose(1, 2)
    eigenpairs = dense_eigenpairs(matrices.to(dtype))
    assert eigenpairs.indexes.dtype == dtype and eigenpairs.directions.dtype == dtype
    for j in range(9):
        values, vectors = np.linalg.eigh(matrices[j].numpy())
        assert eigenpairs.indexes[j].item() == pytest.approx(values[0], rel=tolerance, abs=tolerance)
        # the same line, unit length, S v = lambda v, and the sign convention
        direction = eigenpairs.directions[j].double()
        assert abs(float(direction @ torch.from_numpy(vectors[:, 0]))) == pytest.approx(1.0, abs=tolerance)
        residual = matrices[j] @ direction - values[0] * direction
        assert float(residual.norm()) <= tolerance * 10
        assert direction[direction.abs().argmax()] > 0


def test_eigenpairs_symmetrise_their_input(generator):
    a = torch.randn((3, 4, 4), generator=generator, dtype=DTYPE)
    symmetric = a + a.transpose(1, 2)
    skew = a - a.transpose(1, 2)
    torch.testing.assert_close(dense_eigenpairs(symmetric + 1e-3 * skew).indexes, dense_eigenpairs(symmetric).indexes)


def test_canonical_sign_makes_the_largest_entry_positive():
    vectors = torch.tensor([[0.1, -0.9, 0.3], [-0.5, 0.2, 0.1], [0.0, 0.0, 0.0]], dtype=DTYPE)
    signed = canonical_sign(vectors)
    torch.testing.assert_close(signed[0], -vectors[0])
    torch.testing.assert_close(signed[1], -vectors[1])
    torch.testing.assert_close(signed[2], vectors[2])


def test_eigenpairs_of_an_empty_batch():
    eigenpairs = dense_eigenpairs(torch.zeros((0, 3, 3), dtype=DTYPE))
    assert len(eigenpairs) == 0 and eigenpairs.directions.shape == (0, 3)


def test_eigenpairs_reject_non_square_input():
    with pytest.raises(ValueError, match="square"):
        dense_eigenpairs(torch.zeros((2, 3, 4)))


@settings(max_examples=200, deadline=None)
@given(
    indexes=arrays(np.float64, st.integers(0, 30), elements=st.floats(-5, 5, allow_nan=False)),
    max_count=st.integers(1, 10),
    threshold=st.floats(-3, 0),
)
def test_selection_respects_m_star_threshold_and_order(indexes, max_count, threshold):
    values = torch.from_numpy(indexes)
    chosen = select_neurons(values, max_count, threshold)
    assert chosen.numel() <= max_count
    assert len(set(chosen.tolist())) == chosen.numel()
    assert bool((values[chosen] < threshold).all())
    assert bool((values[chosen][1:] >= values[chosen][:-1]).all())  # most negative first
    eligible = int((values < threshold).sum())
    assert chosen.numel() == min(max_count, eligible)
    if chosen.numel():
        # nothing left out is both eligible and better than the last one chosen
        left_out = torch.ones(values.numel(), dtype=torch.bool)
        left_out[chosen] = False
        assert not bool(((values < values[chosen[-1]]) & left_out).any())


def test_selection_skips_nan_and_breaks_ties_by_position():
    values = torch.tensor([-1.0, float("nan"), -1.0, -2.0, 0.5], dtype=DTYPE)
    assert select_neurons(values, 10, 0.0).tolist() == [3, 0, 2]
    assert select_neurons(values, 10, -1.0).tolist() == [3]


@pytest.mark.parametrize(
    ("max_count", "threshold", "message"),
    [(0, 0.0, "m_"), (-2, 0.0, "m_"), (1.5, 0.0, "m_"), (1, 0.1, "lambda_"), (1, float("nan"), "lambda_")],
)
def test_selection_rejects_bad_parameters(max_count, threshold, message):
    # a user's setting: the error the command line reports in one line (a ConfigError is also a ValueError)
    with pytest.raises(ConfigError, match=message):
        select_neurons(torch.zeros(3), max_count, threshold)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"solver": "eig"}, "solver must be one of dense, lobpcg, rayleigh, auto, got 'eig'"),
        ({"tolerance": "1e-3"}, "tolerance must be a finite number > 0, got '1e-3'"),
        ({"tolerance": 0.0}, "tolerance must be a finite number > 0"),
        ({"max_iterations": None}, "max_iterations must be an integer >= 1, got None"),
        ({"subspace_dim": 2.5}, "subspace_dim must be an integer >= 0"),
        ({"dtype": "float64"}, "dtype must be a floating-point torch.dtype"),
        ({"operator_dtype": torch.int64}, "operator_dtype must be a floating-point torch.dtype"),
        ({"max_positions": 0}, "max_positions must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_solver_options_of_the_wrong_type_or_range_are_config_errors(options, message):
    """Settings given in code (or through GrowthPolicy(options=...)) are checked when the options are made, not met
    as a TypeError inside LOBPCG."""
    from splitgrow.statistics.splitting import SolverOptions

    with pytest.raises(ConfigError, match=message):
        SolverOptions(**options)


def test_the_statistics_refuse_a_batch_count_that_is_not_a_positive_integer():
    import torch.nn.functional as F
    from torch import nn

    from splitgrow import SplittableNetwork
    from splitgrow.statistics.recording import StatisticsError

    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    inputs, targets = torch.randn(8, 4), torch.randint(0, 3, (8,))
    net = SplittableNetwork(model, inputs[:2])
    for batches in (0, "2", 1.5):
        with pytest.raises(StatisticsError, match=r"batches must be an integer >= 1 \(or None: every batch\)"):
            net.splitting([(inputs, targets)], F.cross_entropy, batches=batches)
    assert net.splitting([(inputs, targets)], F.cross_entropy, batches=1)["0"].indexes.shape == (6,)
