"""Experiment ``rbf``: the paper's toy RBF network (Appendix B.1, Figure 1).

A target f(x) = sum_{i=1}^{15} w_i exp(-(theta_i^T [x, 1])^2 / 2) is learned from 1000 noise-free points
x ~ U[-5, 5] with the mean squared loss, starting from one neuron and adding one neuron per growth step after a
phase of full-batch gradient descent. The paper draws w_i and theta_i from "N(0, 3)"; splitgrow reads the
second argument as a variance (the usual N(mean, variance) notation), i.e. a standard deviation of sqrt(3),
and exposes it as ``target_variance``.

Figures (each with the numbers behind it in ``results.json``):

* ``curves.png`` (1a): the true function and each method's learned function at 3 and 8 neurons;
* ``indexes.png`` (1b): at 7 neurons, the five smallest splitting indexes against the loss decrease measured
  after splitting each neuron, both immediately (small eps, the second-order regime) and after a training phase
  (relative to the unsplit network trained as long);
* ``angles.png`` (1c): the loss decrease when the neuron with the smallest index is split along directions at
  angles 0..90 degrees from its splitting gradient, towards its second eigenvector;
* ``training_loss.png`` (1d): training loss against iteration for every method.

Where the splitting run ends sets the sizes of every other run, so it runs first; the probes, the baselines and the
network trained from scratch are independent of each other and run beside it in ``workers`` worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from ..artifacts import new_figure, save_figure
from ..config import require, require_step_size
from ..growth import (
    FireflyGrowth,
    GradientBoosting,
    GrowthMethod,
    Net2Net,
    NewInitialization,
    RandomSplit,
    SignedSplitting,
    SplittingSteepestDescent,
    run_growth,
    train_from_scratch,
)
from ..shallow.gradient_descent import descend
from ..shallow.network import ShallowNetwork, ShallowRegression
from ..shallow.neurons import RidgeNeuron
from ..solvers import dense_eigenpairs
from .common import (
    TIE_TOLERANCE,
    Experiment,
    Reporter,
    coinciding,
    format_number,
    make_generator,
    markdown_table,
    note_coinciding,
    outcome,
    plot_method,
)
from .workers import WorkerPool

GROWTH_METHODS = ("splitting", "signed", "firefly", "random_split", "net2net", "new_init", "gradient_boosting")
METHODS = (*GROWTH_METHODS, "scratch")
#: splitgrow's own growth methods: the paper's splitting and the two beyond it
SPLITGROW_METHODS = ("splitting", "signed", "firefly")
LABELS = {
    "splitting": "splitting (ours)",
    "signed": "signed splitting",
    "firefly": "Firefly",
    "random_split": "random split",
    "net2net": "Net2Net (exact copy)",
    "new_init": "new initialisation",
    "gradient_boosting": "gradient boosting",
    "scratch": "scratch (final size)",
}
DTYPE = torch.float64


@dataclass
class RBFConfig:
    """Settings of the ``rbf`` experiment. The defaults are the documented light run; ``configs/rbf-paper.yaml``
    holds the paper's settings (50,000 iterations per growth step)."""

    #: neurons of the target function
    target_neurons: int = 15
    #: variance of the target's weights and parameters ("N(0, 3)" in the paper)
    target_variance: float = 3.0
    #: training samples: x ~ U[x_min, x_max], y = f(x) without noise
    num_samples: int = 1000
    #: lower end of the inputs' interval
    x_min: float = -5.0
    #: upper end of the inputs' interval
    x_max: float = 5.0
    #: neurons of every network at the start
    start_neurons: int = 1
    #: growth stops at this many neurons
    max_neurons: int = 8
    #: full-batch gradient-descent iterations of every training phase
    iterations_per_step: int = 10_000
    #: step size of gradient descent
    learning_rate: float = 0.1
    #: split step size: offspring at theta +/- epsilon v
    epsilon: float = 0.1
    #: m_*, the most neurons split (or added) per growth step
    max_splits_per_step: int = 1
    #: lambda_*: split only neurons whose index is below it; splitting stops when none is
    threshold: float = -1e-3
    #: new neurons (and the first ones) start at theta ~ N(0, init_std^2)
    init_std: float = 1.0
    #: new neurons (and the first ones) start at w ~ N(0, init_weight_std^2)
    init_weight_std: float = 1.0
    #: gradient boosting starts each new neuron from the best of this many random draws
    boosting_candidates: int = 10
    #: signed splitting: c, the bound on the sum of the offspring's |output-weight shares| (1: the plain split)
    weight_bound: float = 3.0
    #: Firefly: new neurons drawn (from the initialisation above) and tuned at every growth step
    firefly_candidates: int = 32
    #: Firefly: gradient-ascent steps on each candidate's first-order score
    firefly_steps: int = 8
    #: the methods compared: splitting, signed, firefly, random_split, net2net, new_init, gradient_boosting, scratch
    methods: list[str] = field(
        default_factory=lambda: ["splitting", "random_split", "new_init", "gradient_boosting", "scratch"]
    )
    #: size at which figures 1b and 1c split the splitting path's network
    probe_neurons: int = 7
    #: how many of the smallest indexes figure 1b shows
    probe_count: int = 5
    #: eps of the immediate (second-order) measurements of figures 1b and 1c
    probe_epsilon: float = 0.01
    #: training iterations after each probe split (0 skips the after-training measurement)
    probe_iterations: int = 5000
    #: angles 0, 90/angle_steps, ..., 90 degrees in figure 1c
    angle_steps: int = 9
    #: sizes at which figure 1a draws every method's learned function
    curve_neurons: list[int] = field(default_factory=lambda: [3, 8])
    #: the training loss is recorded every this many iterations (figure 1d)
    record_every: int = 100
    #: worker processes that run the scratch network, the probes and the baselines beside the splitting run (0:
    #: everything in one process); the numbers do not depend on it. A seed of fewer than 200,000 training
    #: iterations, or one that --jobs runs in a process of its own, uses none
    workers: int = 2

    def validate(self) -> None:
        require(self.target_neurons >= 1, "target_neurons must be >= 1")
        require(self.target_variance > 0, "target_variance must be > 0")
        require(self.num_samples >= 1, "num_samples must be >= 1")
        require(self.x_min < self.x_max, f"x_min ({self.x_min}) must be below x_max ({self.x_max})")
        require(self.start_neurons >= 1, "start_neurons must be >= 1")
        require(
            self.max_neurons >= self.start_neurons,
            f"max_neurons ({self.max_neurons}) must be >= start_neurons ({self.start_neurons})",
        )
        require(self.iterations_per_step >= 1, "iterations_per_step must be >= 1")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require_step_size(self.epsilon)
        require(
            self.max_splits_per_step >= 1,
            f"max_splits_per_step (m_*) must be >= 1, got {self.max_splits_per_step}",
        )
        require(self.threshold <= 0, f"threshold (lambda_*) must be <= 0, got {self.threshold}")
        require(self.init_std > 0 and self.init_weight_std >= 0, "init_std must be > 0 and init_weight_std >= 0")
        require(self.boosting_candidates >= 1, "boosting_candidates must be >= 1")
        require(
            math.isfinite(self.weight_bound) and self.weight_bound >= 1,
            f"weight_bound (c) must be a finite number >= 1, got {self.weight_bound}",
        )
        require(self.firefly_candidates >= 1, "firefly_candidates must be >= 1")
        require(self.firefly_steps >= 0, "firefly_steps must be >= 0")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {unknown} in methods; known: {', '.join(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), "methods must not repeat")
        require(bool(self.methods), "methods must name at least one method")
        require(self.probe_count >= 1, "probe_count must be >= 1")
        require(self.probe_epsilon > 0, "probe_epsilon must be > 0")
        require_step_size(self.probe_epsilon, "probe_epsilon")
        require(self.probe_iterations >= 0, "probe_iterations must be >= 0")
        require(self.angle_steps >= 1, "angle_steps must be >= 1")
        unreachable = [size for size in self.curve_neurons if not self.start_neurons <= size <= self.max_neurons]
        require(
            not unreachable,
            f"curve_neurons {unreachable} lie outside start_neurons ({self.start_neurons}) to max_neurons "
            f"({self.max_neurons}): no network has that size, so figure 1a would not draw it",
        )
        require(self.record_every >= 1, "record_every must be >= 1")
        require(self.workers >= 0, f"workers must be >= 0, got {self.workers}")


def target_function(theta: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    """sum_i w_i exp(-(theta_i^T [x, 1])^2 / 2)."""
    features = torch.stack([x, torch.ones_like(x)], dim=1)
    return torch.exp(-0.5 * (features @ theta.t()) ** 2) @ weights


def make_target(config: RBFConfig, seed: int) -> tuple[Tensor, Tensor]:
    generator = make_generator(seed, "target")
    std = math.sqrt(config.target_variance)
    theta = std * torch.randn((config.target_neurons, 2), generator=generator, dtype=DTYPE)
    weights = std * torch.randn(config.target_neurons, generator=generator, dtype=DTYPE)
    return theta, weights


def make_problem(config: RBFConfig, size: int, generator: torch.Generator, x: Tensor, y: Tensor) -> ShallowRegression:
    """A student network of ``size`` Gaussian neurons at a random start, bound to the data."""
    theta = config.init_std * torch.randn((size, 2), generator=generator, dtype=DTYPE)
    weights = config.init_weight_std * torch.randn(size, generator=generator, dtype=DTYPE)
    return _student(config, theta, weights, x, y)


def _student(config: RBFConfig, theta: Tensor, weights: Tensor, x: Tensor, y: Tensor) -> ShallowRegression:
    """The student network with these parameters, bound to the data."""
    return ShallowRegression(
        ShallowNetwork(RidgeNeuron("gaussian"), theta, weights),
        x,
        y,
        learning_rate=config.learning_rate,
        init_std=config.init_std,
        init_weight_std=config.init_weight_std,
    )


def make_method(name: str, config: RBFConfig) -> GrowthMethod:
    if name == "splitting":
        return SplittingSteepestDescent(config.epsilon, config.threshold)
    if name == "signed":
        return SignedSplitting(config.epsilon, config.weight_bound)
    if name == "firefly":
        return FireflyGrowth(config.epsilon, candidates=config.firefly_candidates, steps=config.firefly_steps)
    if name == "random_split":
        return RandomSplit(config.epsilon)
    if name == "net2net":
        return Net2Net()
    if name == "new_init":
        return NewInitialization()
    if name == "gradient_boosting":
        return GradientBoosting(config.boosting_candidates)
    raise ValueError(f"unknown growth method {name!r}")


def _pearson(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def probe_splits(problem: ShallowRegression, config: RBFConfig) -> dict[str, Any]:
    """Figures 1b and 1c: split ``problem``'s neurons one at a time and measure the loss decrease.

    * ``indexes`` (1b): the ``probe_count`` smallest indexes against the decrease from splitting each of their
      neurons along its splitting gradient. Immediate decrease: split with ``probe_epsilon`` and measure at once;
      its second-order prediction is -probe_epsilon^2 / 2 * lambda.
    * ``angles`` (1c): split the neuron with the smallest index along v(alpha) = cos(alpha) v_1 + sin(alpha) v_2,
      v_1 its splitting gradient and v_2 the eigenvector of its second-smallest eigenvalue.

    After training: split with ``epsilon``, train ``probe_iterations`` and compare with the unsplit network trained
    as long (so that the decrease is due to the split, not to more training). All split networks train together,
    as one batched program, and the unsplit one once for both figures.
    """
    matrices = problem.splitting_matrices()
    eigenpairs = dense_eigenpairs(matrices)
    order = torch.argsort(eigenpairs.indexes)[: config.probe_count].tolist()
    position = int(torch.argmin(eigenpairs.indexes))
    matrix = 0.5 * (matrices[position] + matrices[position].t())
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    first, second = eigenvectors[:, 0], eigenvectors[:, 1]
    degrees = [90.0 * k / config.angle_steps for k in range(config.angle_steps + 1)]
    angle_directions = [
        math.cos(math.radians(angle)) * first + math.sin(math.radians(angle)) * second for angle in degrees
    ]
    # (neuron, direction) of every probe split: the index probes first, then the angle probes
    splits = [(p, eigenpairs.directions[p]) for p in order] + [(position, v) for v in angle_directions]

    loss = problem.loss()
    immediate = []
    for neuron, direction in splits:
        split = problem.clone()
        split.split(torch.tensor([neuron]), direction.unsqueeze(0), config.probe_epsilon)
        immediate.append(loss - split.loss())
    trained: list[float] = []
    control_loss = float("nan")
    if config.probe_iterations > 0:
        control = problem.clone()
        control.train(config.probe_iterations, record_every=config.probe_iterations)
        control_loss = control.loss()
        trainees = []
        for neuron, direction in splits:
            split = problem.clone()
            split.split(torch.tensor([neuron]), direction.unsqueeze(0), config.epsilon)
            trainees.append(split)
        descend(trainees, config.probe_iterations, record_every=config.probe_iterations)
        trained = [control_loss - split.loss() for split in trainees]

    count = len(order)
    indexes = [float(eigenpairs.indexes[p]) for p in order]
    negative_indexes = [-value for value in indexes]
    index_probe = {
        "neurons": problem.size,
        "positions": order,
        "indexes": indexes,
        "predicted_immediate_decrease": [0.5 * config.probe_epsilon**2 * value for value in negative_indexes],
        "immediate_decrease": immediate[:count],
        "trained_decrease": trained[:count],
        "loss": loss,
        "control_loss_after_training": control_loss,
        "correlation_immediate": _pearson(negative_indexes, immediate[:count]),
        "correlation_trained": _pearson(negative_indexes, trained[:count]),
    }
    angle_immediate, angle_trained = immediate[count:], trained[count:]
    angle_probe = {
        "neurons": problem.size,
        "position": position,
        "eigenvalues": eigenvalues.tolist(),
        "degrees": degrees,
        "predicted_immediate_decrease": [
            float(-0.5 * config.probe_epsilon**2 * (direction @ matrix @ direction)) for direction in angle_directions
        ],
        "immediate_decrease": angle_immediate,
        "trained_decrease": angle_trained,
        "argmax_degrees_immediate": degrees[int(np.argmax(angle_immediate))],
        "argmax_degrees_trained": degrees[int(np.argmax(angle_trained))] if angle_trained else None,
    }
    return {"indexes": index_probe, "angles": angle_probe}


def _default_schedule(config: RBFConfig) -> list[int]:
    sizes = [config.start_neurons]
    while sizes[-1] < config.max_neurons:
        sizes.append(min(config.max_neurons, sizes[-1] + config.max_splits_per_step))
    return sizes


# ----------------------------------------------------------------------------------------------- one seed
#
# A seed's work is a few independent runs: splitting, which sets the sizes the baselines follow and whose network
# at probe_neurons the probes split; then each baseline, the scratch network and the probes. The functions below
# are module-level so that worker processes can run them; each rebuilds its problem from the seed, so a result does
# not depend on where or in which order it was computed.


@dataclass(frozen=True)
class _Data:
    """One seed's target function, its training data and the grid the learned functions are drawn on."""

    target_theta: Tensor
    target_weights: Tensor
    x: Tensor
    y: Tensor
    grid: Tensor

    @classmethod
    def make(cls, config: RBFConfig, seed: int) -> _Data:
        target_theta, target_weights = make_target(config, seed)
        generator = make_generator(seed, "data")
        x = config.x_min + (config.x_max - config.x_min) * torch.rand(
            config.num_samples, generator=generator, dtype=DTYPE
        )
        y = target_function(target_theta, target_weights, x)
        return cls(target_theta, target_weights, x, y, torch.linspace(config.x_min, config.x_max, 401, dtype=DTYPE))


def _grow(
    config: RBFConfig,
    seed: int,
    name: str,
    data: _Data,
    schedule: list[int] | None,
    reporter: Reporter,
    at_probe_size: Callable[[ShallowRegression], None] | None = None,
) -> dict[str, Any]:
    """One growth method's run from the seed's initial network; ``at_probe_size`` sees the network once, after its
    training phase at ``probe_neurons``."""
    problem = make_problem(config, config.start_neurons, make_generator(seed, "student"), data.x, data.y)
    curves: dict[str, list[float]] = {}
    probed = False

    def on_phase_end(step: int, grown: ShallowRegression) -> None:
        nonlocal probed
        if grown.size in config.curve_neurons:
            curves[str(grown.size)] = grown.predict(data.grid).tolist()
        if at_probe_size is not None and grown.size == config.probe_neurons and not probed:
            probed = True
            at_probe_size(grown)

    planned = schedule or _default_schedule(config)
    with reporter.bar(len(planned) * config.iterations_per_step, f"seed {seed} {name}") as bar:
        run = run_growth(
            problem,
            make_method(name, config),
            iterations_per_step=config.iterations_per_step,
            generator=make_generator(seed, "method", name),
            max_size=config.max_neurons,
            max_per_step=config.max_splits_per_step,
            schedule=schedule,
            record_every=config.record_every,
            on_phase_end=on_phase_end,
            on_progress=bar.update,
        )
    result = {**run.to_dict(), "curves": curves}
    reporter.message(_run_line(seed, result))
    return result


def _scratch(config: RBFConfig, seed: int, data: _Data, sizes: list[int], reporter: Reporter) -> dict[str, Any]:
    """The network of the final size trained from a random start for as many iterations as the growth runs, whose
    phases had ``sizes`` (only the last size and the number of phases matter)."""
    problem = make_problem(config, sizes[-1], make_generator(seed, "scratch"), data.x, data.y)
    total = len(sizes) * config.iterations_per_step
    with reporter.bar(total, f"seed {seed} scratch") as bar:
        run = train_from_scratch(problem, total, record_every=config.record_every, on_progress=bar.update)
    result = {**run.to_dict(), "curves": {str(sizes[-1]): problem.predict(data.grid).tolist()}}
    reporter.message(_run_line(seed, result))
    return result


def _probe(config: RBFConfig, data: _Data, theta: Tensor, weights: Tensor) -> dict[str, Any]:
    """:func:`probe_splits` of the student network with these parameters."""
    return probe_splits(_student(config, theta, weights, data.x, data.y), config)


#: a seed's runs go to worker processes only when it trains at least this many iterations in all: starting a
#: process (importing torch) costs a few seconds, which short runs would not win back
MIN_ITERATIONS_FOR_WORKERS = 200_000


def _probe_iterations(config: RBFConfig) -> int:
    """Training iterations of the probes: every probe split's, and the unsplit network's."""
    return (config.probe_count + config.angle_steps + 2) * config.probe_iterations


def _planned_iterations(config: RBFConfig) -> int:
    """Training iterations of one seed, if splitting grows to ``max_neurons``."""
    phases = len(_default_schedule(config)) * config.iterations_per_step
    runs = sum(name in config.methods for name in METHODS)
    return runs * phases + (_probe_iterations(config) if "splitting" in config.methods else 0)


def _call_pickled(payload: bytes) -> Any:
    function, args = pickle.loads(payload)
    return function(*args)


class _Runner:
    """Runs a seed's tasks in a pool of worker processes, or, without workers, at once in this process.

    Workers use this process's torch thread count, so every number is the same wherever it was computed.
    """

    def __init__(self, workers: int) -> None:
        self.pool = WorkerPool(workers, threads=torch.get_num_threads()) if workers > 0 else None

    @property
    def parallel(self) -> bool:
        return self.pool is not None

    def submit(self, function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Start ``function(*args)``; returns what waits for its result."""
        if self.pool is None:
            result = function(*args)
            return lambda: result
        # Pickled here and now by the standard pickler, which copies tensors: the pool's pickler (torch's) would
        # move their storage into shared memory from its feeder thread, while this process goes on computing with
        # them, and a kernel running then reads freed memory.
        payload = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        return self.pool.submit(_call_pickled, payload).result

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *details: object) -> None:
        if self.pool is not None:  # on an error or Ctrl-C, the pool stops its workers at once
            self.pool.__exit__(error_type, *details)


def _worker_count(config: RBFConfig) -> int:
    """``config.workers``, except for short seeds and for a seed already running in a worker process (``--jobs``),
    where the cores are taken."""
    if multiprocessing.parent_process() is not None or _planned_iterations(config) < MIN_ITERATIONS_FOR_WORKERS:
        return 0
    return config.workers


def run_seed(config: RBFConfig, seed: int, reporter: Reporter) -> dict[str, Any]:
    """Run every configured method on one seed's target; returns the JSON-ready results.

    Splitting runs first (in this process), as the baselines follow its sizes; the probes start as soon as it
    reaches ``probe_neurons``, the baselines as soon as it ends, and the scratch network as soon as its size is known
    (or guessed), in ``workers`` worker processes. The results do not depend on the number of processes.
    """
    data = _Data.make(config, seed)
    growth_methods = [m for m in GROWTH_METHODS if m in config.methods]
    with _Runner(_worker_count(config)) as runner:
        # worker processes draw no progress bars; this one shows a bar for all of their work
        task_reporter = Reporter(False) if runner.parallel else reporter
        pending: dict[str, tuple[Callable[[], dict[str, Any]], int]] = {}  # name -> (its result, its iterations)

        def probe(grown: ShallowRegression) -> None:
            reporter.message(f"seed {seed}: probing splits at {grown.size} neurons (figures 1b, 1c)")
            theta, weights = grown.network.theta.detach().clone(), grown.network.output_weights.detach().clone()
            pending["probes"] = (runner.submit(_probe, config, data, theta, weights), _probe_iterations(config))

        # The scratch network has the size splitting ends at, and trains as long as all its phases; most often that
        # is max_neurons. With worker processes it starts at once on that guess, beside splitting, and starts again
        # in the rare seed where splitting stops earlier.
        guess = _default_schedule(config)
        scratch_guessed = runner.parallel and "scratch" in config.methods
        if scratch_guessed:
            scratch = runner.submit(_scratch, config, seed, data, guess, task_reporter)
            pending["scratch"] = (scratch, len(guess) * config.iterations_per_step)
        runs: dict[str, dict[str, Any]] = {}
        schedule: list[int] | None = None
        if "splitting" in growth_methods:
            runs["splitting"] = _grow(config, seed, "splitting", data, None, reporter, at_probe_size=probe)
            schedule = runs["splitting"]["sizes"]
        sizes = schedule or guess
        iterations = len(sizes) * config.iterations_per_step
        guessed_right = scratch_guessed and (sizes[-1], len(sizes)) == (guess[-1], len(guess))
        if "scratch" in config.methods and not guessed_right:
            pending["scratch"] = (runner.submit(_scratch, config, seed, data, sizes, task_reporter), iterations)
        for name in (m for m in growth_methods if m != "splitting"):
            pending[name] = (runner.submit(_grow, config, seed, name, data, schedule, task_reporter), iterations)
        if runner.parallel:
            results = _collect(pending, seed, reporter)
        else:
            results = {name: result() for name, (result, _) in pending.items()}
    runs.update((name, results[name]) for name in growth_methods if name in results)
    if "scratch" in results:
        runs["scratch"] = results["scratch"]

    final_size = sizes[-1]
    return {
        "target": {"theta": data.target_theta.tolist(), "weights": data.target_weights.tolist()},
        "grid": data.grid.tolist(),
        "target_curve": target_function(data.target_theta, data.target_weights, data.grid).tolist(),
        "final_size": final_size,
        "loss_at_final_size": {name: _loss_at(run, final_size) for name, run in runs.items()},
        "methods": runs,
        "probes": results.get("probes"),
    }


def _collect(pending: dict[str, tuple[Callable[[], dict[str, Any]], int]], seed: int, reporter: Reporter) -> dict:
    """Wait for the results of the worker processes, with one progress bar for all of them."""
    results = {}
    with reporter.bar(
        sum(iterations for _, iterations in pending.values()), f"seed {seed} {', '.join(pending)}"
    ) as bar:
        for name, (result, iterations) in pending.items():
            results[name] = result()
            bar.update(iterations)
            if name != "probes":
                reporter.message(_run_line(seed, results[name]))
    return results


def _loss_at(run: dict[str, Any], size: int) -> float | None:
    for phase_size, loss in zip(reversed(run["sizes"]), reversed(run["loss_at_end_of_phase"])):
        if phase_size == size:
            return loss
    return None


def _run_line(seed: int, run: dict[str, Any]) -> str:
    return (
        f"seed {seed} {run['method']}: {run['final_size']} neurons, training loss {run['final_loss']:.3e}"
        f" ({run['stop_reason']})"
    )


# ----------------------------------------------------------------------------------------------- figures

#: how each method is drawn: distinct colours, dashes and markers, the widest line lowest, so that methods whose
#: curves coincide (splitting and random splitting often end in the same minimum) all stay visible
STYLES: dict[str, dict[str, Any]] = {
    "splitting": {"color": "tab:red", "linestyle": "-", "linewidth": 3.2, "alpha": 0.55, "marker": "o"},
    "signed": {"color": "tab:brown", "linestyle": (0, (4, 1, 1, 1)), "linewidth": 1.6, "marker": "P"},
    "firefly": {"color": "tab:olive", "linestyle": (0, (8, 2)), "linewidth": 1.6, "marker": "*"},
    "random_split": {"color": "tab:blue", "linestyle": (0, (5, 2)), "linewidth": 1.5, "marker": "s"},
    "net2net": {"color": "tab:purple", "linestyle": (0, (1, 1.5)), "linewidth": 1.8, "marker": "^"},
    "new_init": {"color": "tab:green", "linestyle": (0, (6, 2, 1, 2)), "linewidth": 1.4, "marker": "D"},
    "gradient_boosting": {"color": "tab:orange", "linestyle": (0, (3, 1, 1, 1, 1, 1)), "linewidth": 1.4, "marker": "v"},
    "scratch": {"color": "tab:gray", "linestyle": (0, (2, 2)), "linewidth": 1.6, "marker": "x"},
}


def _draw_method(ax: Axes, name: str, xs: Sequence[float], ys: Sequence[float], markers: int = 8) -> None:
    position = METHODS.index(name)
    plot_method(
        ax, xs, ys, label=LABELS[name], style=STYLES[name], position=position, count=len(METHODS), markers=markers
    )


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    """Write figures 1a-1d of one seed's results into ``directory``."""
    written = [
        _plot_curves(results, directory / "curves.png"),
        _plot_losses(results, directory / "training_loss.png"),
    ]
    if results.get("probes"):
        written.append(_plot_indexes(results["probes"]["indexes"], directory / "indexes.png"))
        written.append(_plot_angles(results["probes"]["angles"], directory / "angles.png"))
    return written


def _plot_curves(results: dict[str, Any], path: Path) -> Path:
    sizes = sorted({int(s) for run in results["methods"].values() for s in run["curves"]})
    figure = new_figure(figsize=(5.0 * max(1, len(sizes)) + 1.8, 3.6), layout="constrained")
    axes = figure.subplots(1, max(1, len(sizes)), squeeze=False)[0]
    for ax in axes:
        ax.plot(results["grid"], results["target_curve"], color="black", lw=2.5, label="true function", zorder=1)
        ax.set_xlabel("x")
    if not sizes:
        axes[0].set_title("no network reached a size listed in curve_neurons")
    for ax, size in zip(axes, sizes):
        curves = {
            name: run["curves"][str(size)] for name, run in results["methods"].items() if str(size) in run["curves"]
        }
        for name, curve in curves.items():
            _draw_method(ax, name, results["grid"], curve)
        note_coinciding(ax, coinciding(curves, scale=max(abs(v) for v in results["target_curve"])), LABELS)
        ax.set_title(f"{size} neurons")
    axes[0].set_ylabel("f(x)")
    _figure_legend(figure, axes)
    save_figure(figure, path)
    return path


def _figure_legend(figure: Figure, axes: Sequence[Axes]) -> None:
    """One legend beside the panels with every line drawn in any of them, each label once."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    figure.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=7)


def _plot_losses(results: dict[str, Any], path: Path) -> Path:
    figure = new_figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.subplots()
    histories = {}
    for name, run in results["methods"].items():
        _draw_method(ax, name, run["history"]["iteration"], run["history"]["loss"], markers=12)
        histories[name] = run["history"]
    ax.set_yscale("log")
    groups = coinciding(
        {name: history["loss"] for name, history in histories.items()},
        xs={name: history["iteration"] for name, history in histories.items()},
    )
    note_coinciding(ax, groups, LABELS)
    ax.set_xlabel("gradient-descent iteration")
    ax.set_ylabel("training loss (mean squared error)")
    ax.set_title("training loss; growth steps are the cliffs")
    ax.legend(fontsize=8)
    save_figure(figure, path)
    return path


def _plot_indexes(probe: dict[str, Any], path: Path) -> Path:
    negative = -np.asarray(probe["indexes"])
    figure = new_figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(negative, probe["immediate_decrease"], "o", color="tab:red", label="measured")
    left.plot(negative, probe["predicted_immediate_decrease"], "-", color="black", lw=1, label="eps^2/2 * (-lambda)")
    left.set_xlabel("-lambda_min (splitting index)")
    left.set_ylabel("loss decrease right after the split")
    left.set_title(f"{probe['neurons']} neurons: immediate (r = {probe['correlation_immediate']:.3f})")
    left.legend(fontsize=8)
    if probe["trained_decrease"]:
        right.plot(negative, probe["trained_decrease"], "o", color="tab:red", label="measured")
        if len(negative) >= 2 and np.std(negative) > 0:
            slope, intercept = np.polyfit(negative, probe["trained_decrease"], 1)
            xs = np.linspace(negative.min(), negative.max(), 10)
            right.plot(xs, slope * xs + intercept, "--", color="gray", lw=1, label="least-squares line")
        right.set_title(f"after training (r = {probe['correlation_trained']:.3f})")
        right.legend(fontsize=8)
    right.set_xlabel("-lambda_min (splitting index)")
    right.set_ylabel("loss decrease vs. unsplit network")
    save_figure(figure, path)
    return path


def _plot_angles(probe: dict[str, Any], path: Path) -> Path:
    figure = new_figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(probe["degrees"], probe["immediate_decrease"], "o", color="tab:red", label="measured")
    left.plot(probe["degrees"], probe["predicted_immediate_decrease"], "-", color="black", lw=1, label="second order")
    left.set_xlabel("angle to the splitting gradient (degrees)")
    left.set_ylabel("loss decrease right after the split")
    left.set_title("immediate")
    left.legend(fontsize=8)
    if probe["trained_decrease"]:
        right.plot(probe["degrees"], probe["trained_decrease"], "o-", color="tab:red", label="measured")
        right.legend(fontsize=8)
    right.set_xlabel("angle to the splitting gradient (degrees)")
    right.set_ylabel("loss decrease after training")
    right.set_title("after training")
    save_figure(figure, path)
    return path


# ----------------------------------------------------------------------------------------------- summary


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Per seed: each method's training loss at the final size, which method is lowest, how splitting compares
    with random splitting, the correlation between -lambda and the loss decrease (immediately and after training)
    and the angle of largest decrease (immediately and after training). Losses within a relative ``TIE_TOLERANCE``
    of each other are a tie, not a win."""
    methods = [m for m in METHODS if m in all_results[0]["methods"]]
    against_random = "splitting" in methods and "random_split" in methods
    rows, per_seed = [], []
    lowest_count = tied_lowest_count = 0
    outcomes = {"win": 0, "tie": 0, "loss": 0}
    for results in all_results:
        losses = results["loss_at_final_size"]
        probes = results.get("probes") or {}
        correlation = probes.get("indexes", {}).get("correlation_trained")
        immediate = probes.get("indexes", {}).get("correlation_immediate")
        angle = probes.get("angles", {}).get("argmax_degrees_trained")
        angle_now = probes.get("angles", {}).get("argmax_degrees_immediate")
        lowest = _lowest({m: losses[m] for m in methods if losses.get(m) is not None})
        splitting_lowest = lowest == ["splitting"]
        lowest_count += int(splitting_lowest)
        tied_lowest_count += int("splitting" in lowest and len(lowest) > 1)
        versus_random = outcome(losses["splitting"], losses["random_split"]) if against_random else None
        if versus_random is not None:
            outcomes[versus_random] += 1
        per_seed.append(
            {
                "seed": results["seed"],
                "final_size": results["final_size"],
                "loss_at_final_size": losses,
                "lowest": lowest,
                "splitting_lowest": splitting_lowest,
                "splitting_vs_random_split": versus_random,
                "correlation_trained": correlation,
                "correlation_immediate": immediate,
                "argmax_degrees_immediate": angle_now,
                "argmax_degrees_trained": angle,
            }
        )
        rows.append(
            [results["seed"], results["final_size"]]
            + [format_number(losses.get(m)) for m in methods]
            + [_lowest_cell(lowest)]
            + ([versus_random] if against_random else [])
            + [
                "-" if immediate is None else f"{immediate:.4f}",
                "-" if correlation is None else f"{correlation:.3f}",
                "-" if angle_now is None else f"{angle_now:g}",
                "-" if angle is None else f"{angle:g}",
            ]
        )
    headers = (
        ["seed", "neurons"]
        + [LABELS[m] for m in methods]
        + ["lowest"]
        + (["splitting vs. random split"] if against_random else [])
        + ["r, immediate", "r, after training", "best angle, immediate", "best angle, after training"]
    )
    geometric = {
        m: float(np.exp(np.mean(np.log([r["loss_at_final_size"][m] for r in all_results]))))
        for m in methods
        if all(r["loss_at_final_size"].get(m) for r in all_results)
    }
    rows.append(
        ["geo. mean", ""]
        + [format_number(geometric.get(m)) for m in methods]
        + [""] * (1 + against_random)
        + ["", "", "", ""]
    )
    table = markdown_table(headers, rows)
    seeds = len(all_results)
    if "splitting" in methods and len(methods) > 1:
        table += (
            f"\n\nSplitting had the lowest training loss at the final size in {lowest_count} of {seeds} seed(s)"
            f" and tied for the lowest in {tied_lowest_count}"
        )
        if against_random:
            table += (
                f"; against random splitting it won in {outcomes['win']}, tied in {outcomes['tie']} and lost in"
                f" {outcomes['loss']}"
            )
        table += f" (losses within a relative {TIE_TOLERANCE:g} of each other are a tie)."
    best_of_ours = _best_of_ours_against_new_init(all_results, methods, geometric)
    if best_of_ours is not None:
        table += (
            f"\n\nThe best of splitgrow's methods ({', '.join(LABELS[m] for m in best_of_ours['methods'])}) per seed"
            f" against new initialisation: lower in {best_of_ours['wins']} of {seeds} seed(s), tied in"
            f" {best_of_ours['ties']}; geometric mean {format_number(best_of_ours['geometric_mean_loss'])} against"
            f" {format_number(geometric.get('new_init'))}."
        )
    summary = {
        "per_seed": per_seed,
        "geometric_mean_loss": geometric,
        "tie_tolerance": TIE_TOLERANCE,
        "splitting_lowest_count": lowest_count,
        "splitting_tied_lowest_count": tied_lowest_count,
        "splitting_vs_random_split": outcomes if against_random else None,
        "splitting_beats_random_split_count": outcomes["win"],
        "best_of_splitgrow_vs_new_init": best_of_ours,
    }
    return summary, table


def _best_of_ours_against_new_init(
    all_results: list[dict[str, Any]], methods: list[str], geometric: dict[str, float]
) -> dict[str, Any] | None:
    """Per seed the lowest final loss of splitgrow's own methods (splitting, signed, Firefly) that ran, against new
    initialisation's: wins and ties, and its geometric mean over seeds; None without new initialisation or without
    two of splitgrow's methods."""
    ours = [m for m in SPLITGROW_METHODS if m in methods]
    if "new_init" not in methods or len(ours) < 2 or "new_init" not in geometric:
        return None
    best = [
        min(r["loss_at_final_size"][m] for m in ours if r["loss_at_final_size"].get(m) is not None) for r in all_results
    ]
    verdicts = [outcome(loss, r["loss_at_final_size"]["new_init"]) for loss, r in zip(best, all_results)]
    return {
        "methods": ours,
        "loss_per_seed": best,
        "wins": verdicts.count("win"),
        "ties": verdicts.count("tie"),
        "geometric_mean_loss": float(np.exp(np.mean(np.log(best)))),
    }


def _lowest(losses: dict[str, float]) -> list[str]:
    """The method with the lowest loss, and every method that ties with it."""
    if not losses:
        return []
    best = min(losses.values())
    return [name for name, loss in losses.items() if outcome(loss, best) == "tie"]


def _lowest_cell(lowest: list[str]) -> str:
    if not lowest:
        return "-"
    names = ", ".join(LABELS[name] for name in lowest)
    return names if len(lowest) == 1 else f"tie: {names}"


EXPERIMENT = Experiment(
    name="rbf",
    description="toy RBF network (paper Appendix B.1, Figure 1): splitting vs. baselines",
    config_class=RBFConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    threads=1,
    resume_free_keys=frozenset({"workers"}),
)
