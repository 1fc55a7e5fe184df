"""The two tests that matter most (shared/design/MATH.md), in float64.

1. The closed form S = sum c h h^T equals the torch.func Hessian form sum g Hess sigma.
2. Splitting neuron j along any unit v with a small eps changes the loss by eps^2/2 v^T S_j v (no first-order
   term, at any point, and no cross terms between neurons); with eps = 0 the function does not change.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DTYPE, SMOOTH_ACTIVATIONS, random_regression, random_unit_vector
from hypothesis import given, settings
from hypothesis import strategies as st

from splitgrow.shallow.neurons import FunctionalNeuron
from splitgrow.shallow.particles import ParticleApproximation, gaussian_kernel_hessian
from splitgrow.solvers import dense_eigenpairs
from splitgrow.statistics import hessian_splitting_matrices, ridge_splitting_matrices

EPSILON = 1e-3


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------- S: closed form


@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
def test_closed_form_equals_torch_func_hessian(activation, generator):
    problem = random_regression(generator, activation=activation, neurons=6, input_dim=3, samples=50)
    theta = problem.network.theta.detach()
    gradients = problem.output_gradients()
    closed = problem.splitting_matrices()
    by_autodiff = problem.network.neuron.hessian_splitting_matrices(theta, problem._features, gradients)
    assert closed.shape == (6, 4, 4)
    assert relative_error(closed, by_autodiff) <= 1e-10


def test_closed_form_equals_explicit_sum_over_samples(generator):
    inputs = torch.randn((30, 4), generator=generator, dtype=DTYPE)
    coefficients = torch.randn((30, 5), generator=generator, dtype=DTYPE)
    expected = torch.stack(
        [sum(coefficients[p, j] * torch.outer(inputs[p], inputs[p]) for p in range(30)) for j in range(5)]
    )
    assert relative_error(ridge_splitting_matrices(inputs, coefficients), expected) <= 1e-12


def test_chunking_does_not_change_the_result(generator):
    inputs = torch.randn((40, 3), generator=generator, dtype=DTYPE)
    coefficients = torch.randn((40, 7), generator=generator, dtype=DTYPE)
    whole = ridge_splitting_matrices(inputs, coefficients)
    chunked = ridge_splitting_matrices(inputs, coefficients, max_temporary_elements=1)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-13)

    def sigma(theta, h):
        return torch.tanh(theta @ h) ** 2

    theta = torch.randn((7, 3), generator=generator, dtype=DTYPE)
    whole = hessian_splitting_matrices(sigma, theta, inputs, coefficients)
    chunked = hessian_splitting_matrices(sigma, theta, inputs, coefficients, max_temporary_elements=1)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-13)


def test_functional_neuron_matches_ridge_neuron(generator):
    problem = random_regression(generator, activation="gaussian", neurons=4)
    functional = FunctionalNeuron(lambda theta, h: torch.exp(-0.5 * (theta @ h) ** 2), name="rbf")
    theta = problem.network.theta.detach()
    outputs = functional(theta, problem._features)
    torch.testing.assert_close(outputs, problem.network.hidden(problem._features).detach(), rtol=1e-14, atol=1e-14)
    by_functional = functional.splitting_matrices(theta, problem._features, problem.output_gradients())
    assert relative_error(by_functional, problem.splitting_matrices()) <= 1e-10


def test_exact_kernel_form_matches_closed_form_kernel_hessian(generator):
    particles = torch.randn((4, 2), generator=generator, dtype=DTYPE)
    targets = torch.randn((60, 2), generator=generator, dtype=DTYPE)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DTYPE)
    problem = ParticleApproximation(particles, weights, targets, bandwidth=0.8)
    expected = torch.stack(
        [
            2
            * weights[i]
            * (
                sum(weights[j] * gaussian_kernel_hessian(particles[i], particles[j], 0.8) for j in range(4))
                - sum(gaussian_kernel_hessian(particles[i], t, 0.8) for t in targets) / len(targets)
            )
            for i in range(4)
        ]
    )
    assert relative_error(problem.splitting_matrices(), expected) <= 1e-10


def test_random_feature_form_converges_to_the_exact_form(generator):
    particles = torch.tensor([[-1.0], [0.5], [2.0]], dtype=DTYPE)
    targets = torch.randn((200, 1), generator=generator, dtype=DTYPE)
    weights = torch.full((3,), 1 / 3, dtype=DTYPE)
    exact = ParticleApproximation(particles, weights, targets).splitting_matrices()
    errors = []
    for features in (500, 50_000):
        approximate = ParticleApproximation(
            particles,
            weights,
            targets,
            splitting_form="random_features",
            num_features=features,
            feature_generator=torch.Generator().manual_seed(7),
        ).splitting_matrices()
        errors.append(relative_error(approximate, exact))
    # Monte Carlo error shrinks like 1/sqrt(M): 100x the features, about a tenth of the error.
    assert errors[1] < 0.05
    assert errors[1] < errors[0]


# ---------------------------------------------------------------------------------------- the split


def loss_change_of_split(problem, positions, directions, epsilon):
    trial = problem.clone()
    before = trial.loss()
    trial.split(torch.as_tensor(positions), directions, epsilon)
    return trial.loss() - before


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    activation=st.sampled_from(SMOOTH_ACTIVATIONS),
    neurons=st.integers(1, 6),
    input_dim=st.integers(1, 4),
    outputs=st.sampled_from([None, 3]),
)
def test_split_changes_the_loss_by_the_second_order_prediction(seed, activation, neurons, input_dim, outputs):
    generator = torch.Generator().manual_seed(seed)
    problem = random_regression(generator, activation=activation, neurons=neurons, input_dim=input_dim, outputs=outputs)
    matrices = problem.splitting_matrices()
    position = int(torch.randint(neurons, (1,), generator=generator))
    direction = random_unit_vector(input_dim + 1, generator)
    quadratic = float(direction @ matrices[position] @ direction)
    # The relative test needs a quadratic form well away from zero against the matrix' scale.
    scale = float(torch.linalg.matrix_norm(matrices[position], ord=2))
    if abs(quadratic) < 1e-3 * scale or scale < 1e-8:
        direction = dense_eigenpairs(matrices[position : position + 1]).directions[0]
        quadratic = float(direction @ matrices[position] @ direction)
        if abs(quadratic) < 1e-8:
            return
    predicted = 0.5 * EPSILON**2 * quadratic
    measured = loss_change_of_split(problem, [position], direction.unsqueeze(0), EPSILON)
    assert measured == pytest.approx(predicted, rel=1e-2)


def test_simultaneous_splits_add_up_without_cross_terms(generator):
    problem = random_regression(generator, activation="softplus", neurons=6, input_dim=3, samples=80)
    matrices = problem.splitting_matrices()
    positions = [0, 2, 5]
    directions = dense_eigenpairs(matrices).directions[positions]
    predicted = (
        0.5 * EPSILON**2 * sum(float(directions[i] @ matrices[p] @ directions[i]) for i, p in enumerate(positions))
    )
    measured = loss_change_of_split(problem, positions, directions, EPSILON)
    assert measured == pytest.approx(predicted, rel=1e-2)


@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
def test_zero_epsilon_split_does_not_change_the_function(activation, generator):
    problem = random_regression(generator, activation=activation, neurons=5, outputs=2)
    before = problem.predict(problem.x)
    problem.split(torch.tensor([1, 3]), torch.randn((2, 3), generator=generator, dtype=DTYPE), 0.0)
    problem.split(torch.tensor([0, 6]), torch.randn((2, 3), generator=generator, dtype=DTYPE), 0.0)
    after = problem.predict(problem.x)
    assert problem.size == 9
    assert float((after - before).abs().max()) <= 1e-12


def test_splitting_gradient_beats_random_directions(generator):
    problem = random_regression(generator, activation="tanh", neurons=4, input_dim=3, samples=100)
    matrices = problem.splitting_matrices()
    eigenpairs = dense_eigenpairs(matrices)
    position = int(torch.argmin(eigenpairs.indexes))
    assert eigenpairs.indexes[position] < 0
    best = loss_change_of_split(problem, [position], eigenpairs.directions[position : position + 1], EPSILON)
    assert best == pytest.approx(0.5 * EPSILON**2 * float(eigenpairs.indexes[position]), rel=1e-2)
    for _ in range(100):
        direction = random_unit_vector(4, generator).unsqueeze(0)
        assert best < loss_change_of_split(problem, [position], direction, EPSILON)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 3), form=st.sampled_from(["exact", "random_features"]))
def test_particle_split_matches_prediction(seed, dim, form):
    generator = torch.Generator().manual_seed(seed)
    particles = 2 * torch.randn((3, dim), generator=generator, dtype=DTYPE)
    targets = torch.randn((100, dim), generator=generator, dtype=DTYPE)
    weights = torch.softmax(torch.randn(3, generator=generator, dtype=DTYPE), 0)
    kwargs = {"num_features": 400, "feature_generator": generator} if form == "random_features" else {}
    problem = ParticleApproximation(particles, weights, targets, splitting_form=form, **kwargs)
    # Only the exact form is the Hessian of the loss that is minimised; check the split against it.
    exact = ParticleApproximation(particles, weights, targets).splitting_matrices()
    eigenpairs = dense_eigenpairs(exact)
    for position in range(3):
        if abs(float(eigenpairs.indexes[position])) < 1e-6:
            continue
        direction = eigenpairs.directions[position : position + 1]
        predicted = 0.5 * EPSILON**2 * float(eigenpairs.indexes[position])
        assert loss_change_of_split(problem, [position], direction, EPSILON) == pytest.approx(predicted, rel=1e-2)
    assert math.isfinite(float(problem.splitting_matrices().sum()))
