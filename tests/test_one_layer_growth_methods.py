"""Signed splitting and Firefly growth on one-layer problems (the RBF regression and the MMD particles): function
preservation, second- and first-order predictions against measured loss changes, optimality against random signed
splits, the ranking of Firefly's candidates, and tiny runs of both toy experiments with both methods."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DTYPE, random_regression
from test_cli import invoke, tiny_config

from splitgrow.growth import FireflyGrowth, GrowableProblem, SignedSplitting, SplittingSteepestDescent
from splitgrow.growth.firefly_growth import ascend_new_neurons
from splitgrow.growth.signed_splitting import SignedSplit, fitting_split
from splitgrow.shallow.particles import ParticleApproximation
from splitgrow.solvers import dense_eigenpairs
from splitgrow.surgery import Offspring

BOUND = 3.0


def regression(generator: torch.Generator, outputs: int | None = None) -> GrowableProblem:
    """A Gaussian-neuron regression (the RBF experiment's neuron) off any stationary point, in float64."""
    return random_regression(generator, activation="gaussian", neurons=4, samples=80, outputs=outputs)


def particles(generator: torch.Generator) -> GrowableProblem:
    """Three weighted particles in 2-d against a small sample."""
    targets = torch.randn((60, 2), generator=generator, dtype=DTYPE) + torch.tensor([1.0, -0.5], dtype=DTYPE)
    start = 1.5 * torch.randn((3, 2), generator=generator, dtype=DTYPE)
    return ParticleApproximation(start, torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE), targets)


PROBLEMS = {"regression": regression, "two outputs": lambda g: regression(g, outputs=2), "particles": particles}


def extreme_eigenpairs(problem: GrowableProblem, position: int) -> tuple[float, torch.Tensor, float, torch.Tensor]:
    matrix = problem.splitting_matrices()[position]
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.t()))
    return float(values[0]), vectors[:, 0], float(values[-1]), vectors[:, -1]


def outputs(problem: GrowableProblem) -> torch.Tensor:
    """What the problem computes: the network's predictions, or the particles' kernel mean embedding on a grid."""
    if isinstance(problem, ParticleApproximation):
        grid = torch.linspace(-3, 3, 7, dtype=DTYPE)
        points = torch.cartesian_prod(grid, grid)
        kernel = torch.exp(-0.5 * torch.cdist(points, problem.particles.detach()) ** 2)
        return kernel @ problem.weights
    return problem.network(problem.x).detach()


def split_change(problem: GrowableProblem, position: int, offspring, epsilon: float) -> float:
    trial = problem.clone()
    trial.split_offspring(torch.tensor([position]), [offspring], epsilon)
    return trial.loss() - problem.loss()


def all_schemes(problem: GrowableProblem, position: int) -> dict[int, SignedSplit]:
    """The best split that adds at most 1, 2 and 3 neurons."""
    pairs = extreme_eigenpairs(problem, position)
    return {allowance: fitting_split(*pairs, BOUND, allowance) for allowance in (1, 2, 3)}


def random_signed_split(dim: int, bound: float, generator: torch.Generator) -> tuple[Offspring, ...]:
    """An admissible split: 2 to 4 offspring, weights summing to 1 with sum |w_i| <= bound, sum w_i delta_i = 0 and
    every ||delta_i|| <= 1."""
    count = int(torch.randint(2, 5, (1,), generator=generator))
    weights = torch.randn(count, generator=generator, dtype=DTYPE)
    weights = weights / weights.sum()
    if weights.abs().sum() > bound:  # mix with the equal split (sum |w| = 1) until the bound holds
        uniform = torch.full((count,), 1.0 / count, dtype=DTYPE)
        mix = (bound - 1.0) / (float(weights.abs().sum()) - 1.0)
        weights = mix * weights + (1 - mix) * uniform
    shifts = torch.randn((count, dim), generator=generator, dtype=DTYPE)
    shifts = shifts - weights @ shifts  # sum w_i delta_i = 0, as sum w_i = 1
    shifts = shifts / shifts.norm(dim=1).max()
    assert abs(float(weights.sum()) - 1) < 1e-12 and float(weights.abs().sum()) <= bound + 1e-12
    return tuple(Offspring(float(w), s) for w, s in zip(weights, shifts))


# ----------------------------------------------------------------------------------------------- signed splitting


@pytest.mark.parametrize("kind", PROBLEMS)
def test_a_signed_split_with_zero_step_keeps_the_function(generator, kind):
    problem = PROBLEMS[kind](generator)
    before, loss = outputs(problem), problem.loss()
    for allowance, scheme in all_schemes(problem, 1).items():
        split = problem.clone()
        added = split.split_offspring(torch.tensor([1]), [scheme.offspring], 0.0)
        assert split.size == problem.size + scheme.added and added.tolist() == list(range(problem.size, split.size))
        assert scheme.added <= allowance
        torch.testing.assert_close(outputs(split), before, rtol=1e-13, atol=1e-14)
        assert split.loss() == pytest.approx(loss, rel=1e-13)


@pytest.mark.parametrize("kind", PROBLEMS)
def test_the_loss_change_of_a_small_signed_split_is_its_second_order_prediction(generator, kind):
    problem = PROBLEMS[kind](generator)
    epsilon = 1e-3
    checked = 0
    for position in range(problem.size):
        for scheme in all_schemes(problem, position).values():
            if scheme.index > -1e-6:
                continue
            measured = split_change(problem, position, scheme.offspring, epsilon)
            assert measured == pytest.approx(0.5 * epsilon**2 * scheme.index, rel=0.02)
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("kind", PROBLEMS)
def test_the_optimal_signed_split_beats_100_random_signed_splits_of_the_same_bound(generator, kind):
    problem = PROBLEMS[kind](generator)
    epsilon = 1e-3
    position = 0
    optimal = all_schemes(problem, position)[3]
    best = split_change(problem, position, optimal.offspring, epsilon)
    assert best < 0
    for _ in range(100):
        random_split = random_signed_split(problem.parameter_dim, BOUND, generator)
        assert split_change(problem, position, random_split, epsilon) > best


def test_the_two_offspring_split_is_optimal_among_two_offspring_splits(generator):
    """Brute force over shares and displacement lengths: nothing with two offspring beats
    min(lambda_min, -(c - 1)/(c + 1) lambda_max)."""
    problem = regression(generator)
    smallest, v_min, largest, v_max = extreme_eigenpairs(problem, 2)
    matrix = problem.splitting_matrices()[2]
    best = fitting_split(smallest, v_min, largest, v_max, BOUND, 1)
    assert best.added == 1 and best.index == pytest.approx(min(smallest, -0.5 * largest, 0.0))
    for _ in range(2000):
        first = float(torch.empty(1, dtype=DTYPE).uniform_(-(BOUND - 1) / 2, (BOUND + 1) / 2, generator=generator))
        second = 1.0 - first
        if abs(first) + abs(second) > BOUND or abs(second) < 1e-9:
            continue
        shift = torch.randn(matrix.shape[0], generator=generator, dtype=DTYPE)
        shift = shift / shift.norm() * min(1.0, abs(second / first))  # the other offspring moves (w1/w2) as far
        other = -(first / second) * shift
        value = first * shift @ matrix @ shift + second * other @ matrix @ other
        assert float(value) >= best.index - 1e-9


def test_signed_splitting_adds_at_most_count_neurons_and_predicts_its_loss_change(generator):
    problem = regression(generator)
    for count in (1, 2, 3, 5):
        grown = problem.clone()
        event = SignedSplitting(1e-3, BOUND).grow(grown, count, generator)
        assert 1 <= grown.size - problem.size <= count and event.size_after == grown.size
        assert event.measured_change == pytest.approx(event.predicted_change, rel=0.02)
    one = problem.clone()
    SignedSplitting(1e-3, BOUND).grow(one, 1, generator)
    three = problem.clone()
    event = SignedSplitting(1e-3, BOUND).grow(three, 3, generator)
    assert event.indexes[0] < fitting_split(*extreme_eigenpairs(problem, event.parents[0]), BOUND, 1).index


def test_signed_splitting_with_bound_one_is_plain_splitting(generator):
    problem = regression(generator)
    signed, plain = problem.clone(), problem.clone()
    signed_event = SignedSplitting(0.05, 1.0).grow(signed, 2, generator)
    plain_event = SplittingSteepestDescent(0.05).grow(plain, 2, generator)
    assert sorted(signed_event.parents) == sorted(plain_event.parents)
    assert signed.loss() == pytest.approx(plain.loss(), rel=1e-12)


# ----------------------------------------------------------------------------------------------- Firefly


@pytest.mark.parametrize("kind", PROBLEMS)
def test_a_new_neuron_with_zero_weight_keeps_the_function_and_its_score_is_the_first_order_change(generator, kind):
    problem = PROBLEMS[kind](generator)
    parameters = problem.random_parameters(5, generator)
    gradients = problem.new_neuron_gradients(parameters).detach()
    before, loss = outputs(problem), problem.loss()
    silent = problem.clone()
    silent.add(parameters, torch.zeros_like(gradients))
    torch.testing.assert_close(outputs(silent), before, rtol=1e-14, atol=1e-15)
    assert silent.loss() == pytest.approx(loss, rel=1e-14)
    step = 1e-5
    for j in range(parameters.shape[0]):
        norm = float(gradients[j].norm())
        trial = problem.clone()
        trial.add(parameters[j : j + 1], -step * gradients[j : j + 1] / norm)
        assert trial.loss() - loss == pytest.approx(-step * norm, rel=0.01)


@pytest.mark.parametrize("kind", PROBLEMS)
def test_the_ascent_raises_every_candidates_score(generator, kind):
    problem = PROBLEMS[kind](generator)
    start = problem.random_parameters(16, generator)
    before = problem.new_neuron_gradients(start).detach().reshape(16, -1).norm(dim=1)
    tuned, after = ascend_new_neurons(problem, start, steps=6, step_length=0.3)
    assert bool((after >= before).all()) and float(after.mean()) > 1.2 * float(before.mean())
    torch.testing.assert_close(after, problem.new_neuron_gradients(tuned).detach().reshape(16, -1).norm(dim=1))


def test_firefly_ranks_splits_and_new_neurons_on_their_two_scales(generator):
    problem = regression(generator)
    splits_only, news_only = problem.clone(), problem.clone()
    event = FireflyGrowth(0.05, new_step=0.0).grow(splits_only, 2, torch.Generator().manual_seed(0))
    plain = SplittingSteepestDescent(0.05).grow(problem.clone(), 2, generator)
    assert sorted(event.parents) == sorted(plain.parents) and len(event.added) == 2
    event = FireflyGrowth(0.05, new_step=10.0).grow(news_only, 2, torch.Generator().manual_seed(0))
    assert event.parents == [] and len(event.added) == 2
    torch.testing.assert_close(news_only.network.theta[: problem.size], problem.network.theta)  # old ones unmoved


@pytest.mark.parametrize("kind", PROBLEMS)
def test_firefly_predicts_its_loss_change_and_repeats_with_the_seed(generator, kind):
    problem = PROBLEMS[kind](generator)
    grown, again = problem.clone(), problem.clone()
    event = FireflyGrowth(1e-3, candidates=8, steps=3).grow(grown, 3, torch.Generator().manual_seed(5))
    repeat = FireflyGrowth(1e-3, candidates=8, steps=3).grow(again, 3, torch.Generator().manual_seed(5))
    assert grown.size == problem.size + 3 and event.measured_change < 0
    assert event.measured_change == pytest.approx(event.predicted_change, rel=0.02)
    assert repeat.loss_after == event.loss_after and repeat.added == event.added


def test_new_neurons_in_a_particle_problem_keep_the_other_weights(generator):
    problem = particles(generator)
    weights = problem.weights.clone()
    event = FireflyGrowth(0.1, new_step=1.0).grow(problem, 1, generator)
    assert event.parents == [] and problem.size == 4
    torch.testing.assert_close(problem.weights[:3], weights)
    assert abs(float(problem.weights[3])) == pytest.approx(1.0)


def test_the_largest_eigenpairs_come_from_the_same_matrices(generator):
    problem = regression(generator)
    matrices = problem.splitting_matrices()
    top = dense_eigenpairs(-matrices)
    torch.testing.assert_close(-top.indexes, torch.linalg.eigvalsh(0.5 * (matrices + matrices.mT))[:, -1])


# ----------------------------------------------------------------------------------------------- the experiments

TINY_RBF = """
num_samples: 20
max_neurons: 3
iterations_per_step: 200
threshold: 0.0
methods: [splitting, signed, firefly, new_init]
firefly_candidates: 4
firefly_steps: 2
probe_neurons: 2
probe_count: 2
probe_iterations: 10
angle_steps: 2
curve_neurons: [2, 3]
record_every: 10
"""

TINY_MMD = """
num_samples: 60
iterations_per_step: 20
max_particles: 4
methods: [splitting, signed, firefly, new_init]
firefly_candidates: 4
firefly_steps: 2
record_every: 5
"""


@pytest.mark.parametrize("experiment, settings", [("rbf", TINY_RBF), ("mmd", TINY_MMD)])
def test_tiny_runs_of_the_toy_experiments_with_both_methods(tmp_path, experiment, settings):
    out = tmp_path / "out"
    result = invoke("run", experiment, "--config", str(tiny_config(tmp_path, settings)), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "seed-0" / "results.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for name in ("signed", "firefly"):
        run = results["methods"][name]
        assert run["sizes"] == results["methods"]["splitting"]["sizes"]  # they follow splitting's sizes
        assert run["final_loss"] < run["loss_at_end_of_phase"][0]  # growing and training lowered the loss
        assert all(event["size_after"] == event["size_before"] + 1 for event in run["events"])
    if experiment == "rbf":
        best = summary["best_of_splitgrow_vs_new_init"]
        losses = results["loss_at_final_size"]
        assert best["loss_per_seed"] == [min(losses["splitting"], losses["signed"], losses["firefly"])]
    else:
        assert "splitgrow_lowest_count" in summary
    assert "signed splitting" in (out / "summary.md").read_text()
