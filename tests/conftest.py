"""Shared fixtures: mathematics is checked in float64, and every random draw comes from a seeded generator."""

from __future__ import annotations

import os

# The tests use tiny tensors, where a second intra-op thread costs more than it gives (the suite ran about twice as
# fast with one thread on the 2-core CI machine); the variable carries the choice to the subprocesses tests start.
# It is set before torch (and numpy's BLAS, which reads it once, when loaded) is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from splitgrow.shallow.network import ShallowNetwork, ShallowRegression  # noqa: E402
from splitgrow.shallow.neurons import RidgeNeuron  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

DTYPE = torch.float64

#: Every activation with a genuine second derivative (the ones splitting can use).
SMOOTH_ACTIVATIONS = ["softplus", "sigmoid", "tanh", "gaussian", "cosine", "silu", "gelu"]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def random_regression(
    generator: torch.Generator,
    *,
    activation: str = "tanh",
    neurons: int = 5,
    input_dim: int = 2,
    outputs: int | None = None,
    samples: int = 64,
) -> ShallowRegression:
    """A random one-hidden-layer regression problem in float64 (not at a stationary point)."""
    theta = torch.randn((neurons, input_dim + 1), generator=generator, dtype=DTYPE)
    weight_shape = (neurons,) if outputs is None else (neurons, outputs)
    weights = torch.randn(weight_shape, generator=generator, dtype=DTYPE)
    network = ShallowNetwork(RidgeNeuron(activation), theta, weights)
    x = torch.randn((samples, input_dim), generator=generator, dtype=DTYPE)
    target_shape = (samples,) if outputs is None else (samples, outputs)
    y = torch.randn(target_shape, generator=generator, dtype=DTYPE)
    return ShallowRegression(network, x, y)


def random_unit_vector(dim: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(dim, generator=generator, dtype=DTYPE)
    return v / v.norm()
