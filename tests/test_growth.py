"""Algorithm 1 and every baseline do what their definitions say."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPE, random_regression

from splitgrow.errors import DivergenceError
from splitgrow.growth import (
    GradientBoosting,
    GrowableProblem,
    Net2Net,
    NewInitialization,
    RandomSplit,
    SplittingSteepestDescent,
    run_growth,
    train_from_scratch,
)
from splitgrow.shallow.particles import ParticleApproximation
from splitgrow.solvers import dense_eigenpairs


def snapshot(problem):
    return problem.network.theta.detach().clone(), problem.network.output_weights.detach().clone()


def test_problems_implement_the_protocol(generator):
    assert isinstance(random_regression(generator), GrowableProblem)
    particles = ParticleApproximation(torch.zeros((1, 1)), torch.ones(1), torch.randn((5, 1)))
    assert isinstance(particles, GrowableProblem)


def test_splitting_splits_the_most_negative_indexes_along_their_eigenvectors(generator):
    problem = random_regression(generator, activation="tanh", neurons=6, samples=100)
    eigenpairs = dense_eigenpairs(problem.splitting_matrices())
    expected = torch.argsort(eigenpairs.indexes)[:2]
    assert bool((eigenpairs.indexes[expected] < 0).all())
    theta, weights = snapshot(problem)
    event = SplittingSteepestDescent(epsilon=0.05, threshold=0.0).grow(problem, 2, generator)
    assert event.parents == expected.tolist()
    assert event.added == [6, 7]
    assert event.indexes == pytest.approx(eigenpairs.indexes[expected].tolist())
    new_theta, new_weights = snapshot(problem)
    for parent, child in zip(event.parents, event.added):
        v = eigenpairs.directions[parent]
        torch.testing.assert_close(new_theta[parent], theta[parent] + 0.05 * v)
        torch.testing.assert_close(new_theta[child], theta[parent] - 0.05 * v)
        torch.testing.assert_close(new_weights[parent], weights[parent] / 2)
        torch.testing.assert_close(new_weights[child], weights[parent] / 2)
    untouched = [j for j in range(6) if j not in event.parents]
    torch.testing.assert_close(new_theta[untouched], theta[untouched])
    assert event.predicted_change == pytest.approx(0.5 * 0.05**2 * sum(event.indexes))
    assert event.measured_change == pytest.approx(event.predicted_change, rel=0.05)


def test_splitting_declines_when_no_index_is_below_the_threshold(generator):
    problem = random_regression(generator, neurons=3)
    lowest = float(dense_eigenpairs(problem.splitting_matrices()).indexes.min())
    assert SplittingSteepestDescent(0.1, threshold=lowest).grow(problem, 3, generator) is None
    assert problem.size == 3


def test_random_split_moves_offspring_along_a_random_unit_vector(generator):
    problem = random_regression(generator, neurons=4)
    theta, weights = snapshot(problem)
    event = RandomSplit(epsilon=0.01).grow(problem, 1, generator)
    (parent,), (child,) = event.parents, event.added
    new_theta, new_weights = snapshot(problem)
    offset = (new_theta[parent] - theta[parent]) / 0.01
    assert float(offset.norm()) == pytest.approx(1.0)
    torch.testing.assert_close(new_theta[child], theta[parent] - 0.01 * offset)
    torch.testing.assert_close(new_weights[[parent, child]], weights[[parent, parent]] / 2)
    # the prediction it records is eps^2/2 v^T S v for that random v
    assert event.predicted_change == pytest.approx(event.measured_change, rel=0.02)


def test_random_split_chooses_every_neuron_and_direction_at_random(generator):
    parents, directions = set(), []
    for seed in range(60):
        problem = random_regression(torch.Generator().manual_seed(0), neurons=4)
        theta, _ = snapshot(problem)
        event = RandomSplit(epsilon=1.0, predict=False).grow(problem, 1, torch.Generator().manual_seed(seed))
        parents.add(event.parents[0])
        directions.append(problem.network.theta.detach()[event.parents[0]] - theta[event.parents[0]])
    assert parents == {0, 1, 2, 3}
    mean_direction = torch.stack(directions).mean(0)
    assert float(mean_direction.norm()) < 0.4  # unit vectors pointing every way average out


def test_net2net_duplicates_exactly_and_copies_never_separate_under_gradient_descent(generator):
    problem = random_regression(generator, neurons=3)
    before = problem.predict(problem.x)
    event = Net2Net().grow(problem, 1, generator)
    (parent,), (child,) = event.parents, event.added
    assert float((problem.predict(problem.x) - before).abs().max()) <= 1e-12
    assert event.measured_change == pytest.approx(0.0, abs=1e-12)
    problem.train(200)
    theta = problem.network.theta.detach()
    torch.testing.assert_close(theta[parent], theta[child], rtol=0, atol=1e-12)


def test_new_initialisation_adds_a_random_neuron_and_trains_everything(generator):
    problem = random_regression(generator, neurons=3)
    theta, weights = snapshot(problem)
    method = NewInitialization()
    event = method.grow(problem, 2, torch.Generator().manual_seed(1))
    assert event.added == [3, 4] and event.parents == []
    new_theta, _ = snapshot(problem)
    torch.testing.assert_close(new_theta[:3], theta)
    other = random_regression(torch.Generator().manual_seed(1234), neurons=3)
    NewInitialization().grow(other, 2, torch.Generator().manual_seed(2))
    assert not torch.allclose(other.network.theta.detach()[3:], new_theta[3:])
    assert method.trainable_after(event) is None


def test_gradient_boosting_fits_the_new_neuron_with_the_old_ones_frozen(generator):
    problem = random_regression(generator, activation="tanh", neurons=3, samples=100)
    theta, weights = snapshot(problem)
    method = GradientBoosting(candidates=5)
    event = method.grow(problem, 1, torch.Generator().manual_seed(3))
    assert event.added == [3]
    after_add = problem.loss()
    added_theta, _ = snapshot(problem)
    problem.train(300, trainable=method.trainable_after(event))
    new_theta, new_weights = snapshot(problem)
    assert torch.equal(new_theta[:3], theta) and torch.equal(new_weights[:3], weights)
    assert float((new_theta[3] - added_theta[3]).norm()) > 1e-3
    assert problem.loss() < after_add


def test_gradient_boosting_keeps_the_best_candidate(generator):
    problem = random_regression(generator, neurons=2)
    candidates = []
    draw = torch.Generator().manual_seed(5)
    for _ in range(8):
        trial = problem.clone()
        trial.add_random(1, draw)
        candidates.append(trial.loss())
    event = GradientBoosting(candidates=8).grow(problem, 1, torch.Generator().manual_seed(5))
    assert event.loss_after == pytest.approx(min(candidates))


def test_particle_growth_reweights_as_the_paper_says(generator):
    targets = torch.randn((50, 1), generator=generator, dtype=DTYPE)
    problem = ParticleApproximation(
        torch.tensor([[0.0], [1.0]], dtype=DTYPE), torch.tensor([0.25, 0.75], dtype=DTYPE), targets
    )
    problem.split(torch.tensor([1]), torch.ones((1, 1), dtype=DTYPE), 0.1)
    torch.testing.assert_close(problem.weights, torch.tensor([0.25, 0.375, 0.375], dtype=DTYPE))
    torch.testing.assert_close(problem.particles.detach()[:, 0], torch.tensor([0.0, 1.1, 0.9], dtype=DTYPE))
    problem.add_random(1, generator)
    torch.testing.assert_close(problem.weights, torch.full((4,), 0.25, dtype=DTYPE))
    assert -5 <= float(problem.particles.detach()[3]) <= 5


def test_run_growth_alternates_training_and_growth_and_stops_at_the_budget(generator):
    problem = random_regression(generator, activation="tanh", neurons=1, samples=60)
    phases_seen = []
    run = run_growth(
        problem,
        SplittingSteepestDescent(0.1, threshold=0.0),
        iterations_per_step=30,
        generator=generator,
        max_size=5,
        max_per_step=2,
        record_every=10,
        on_phase_end=lambda step, p: phases_seen.append(p.size),
    )
    assert run.sizes == phases_seen
    assert run.sizes[0] == 1 and run.final_size <= 5
    assert all(b - a <= 2 for a, b in zip(run.sizes, run.sizes[1:]))
    iterations, losses = run.history()
    assert iterations == sorted(iterations) and iterations[-1] == 30 * len(run.sizes)
    for event in run.events:
        assert event.size_after - event.size_before <= 2
        assert event.indexes is not None and max(event.indexes) < 0
    if run.final_size == 5:
        assert run.stop_reason == "reached 5 neurons"


def test_run_growth_follows_a_schedule(generator):
    problem = random_regression(generator, neurons=2)
    run = run_growth(problem, NewInitialization(), iterations_per_step=5, generator=generator, schedule=[2, 3, 5])
    assert run.sizes == [2, 3, 5]
    with pytest.raises(ValueError, match="schedule"):
        run_growth(problem, NewInitialization(), iterations_per_step=5, generator=generator, schedule=[1, 2])


def test_run_growth_stops_when_splitting_declines(generator):
    problem = random_regression(generator, neurons=2)
    run = run_growth(
        problem,
        SplittingSteepestDescent(0.1, threshold=-1e9),
        iterations_per_step=5,
        generator=generator,
        max_size=10,
    )
    assert (
        run.sizes == [2]
        and run.stop_reason == "splitting-stable: no splitting index below the threshold lambda_* = -1e+09"
    )


def test_divergence_is_reported_with_its_context(generator):
    problem = random_regression(generator, neurons=2)
    problem.optimizer_factory = lambda params: torch.optim.SGD(params, lr=1e6)
    with pytest.raises(DivergenceError, match="new_init, training phase 0 at 2 neurons.*learning rate"):
        run_growth(problem, NewInitialization(), iterations_per_step=200, generator=generator, max_size=3)


def test_scratch_is_one_phase_at_the_final_size(generator):
    problem = random_regression(generator, neurons=4)
    before = problem.loss()
    run = train_from_scratch(problem, 50, record_every=10)
    assert run.sizes == [4] and run.events == []
    assert run.final_loss < before
