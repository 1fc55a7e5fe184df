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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..artifacts import save_figure
from ..config import require
from ..growth import (
    GradientBoosting,
    GrowthMethod,
    GrowthRun,
    Net2Net,
    NewInitialization,
    RandomSplit,
    SplittingSteepestDescent,
    run_growth,
    train_from_scratch,
)
from ..shallow.network import ShallowNetwork, ShallowRegression
from ..shallow.neurons import RidgeNeuron
from ..solvers import dense_eigenpairs
from .common import Experiment, Reporter, format_number, make_generator, markdown_table

GROWTH_METHODS = ("splitting", "random_split", "net2net", "new_init", "gradient_boosting")
METHODS = (*GROWTH_METHODS, "scratch")
LABELS = {
    "splitting": "splitting (ours)",
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

    target_neurons: int = 15
    #: variance of the target's weights and parameters ("N(0, 3)" in the paper)
    target_variance: float = 3.0
    num_samples: int = 1000
    x_min: float = -5.0
    x_max: float = 5.0
    start_neurons: int = 1
    max_neurons: int = 8
    iterations_per_step: int = 10_000
    learning_rate: float = 0.1
    #: split step size: offspring at theta +/- epsilon v
    epsilon: float = 0.1
    #: m_*, the most neurons split (or added) per growth step
    max_splits_per_step: int = 1
    #: lambda_*: split only neurons whose index is below it; splitting stops when none is
    threshold: float = -1e-3
    #: the student's neurons (and new neurons) start at theta ~ N(0, init_std^2), w ~ N(0, init_weight_std^2)
    init_std: float = 1.0
    init_weight_std: float = 1.0
    #: gradient boosting starts each new neuron from the best of this many random draws
    boosting_candidates: int = 10
    methods: list[str] = field(
        default_factory=lambda: ["splitting", "random_split", "new_init", "gradient_boosting", "scratch"]
    )
    #: size at which figures 1b and 1c are measured, and how many indexes figure 1b shows
    probe_neurons: int = 7
    probe_count: int = 5
    #: eps of the immediate (second-order) measurements of figures 1b and 1c
    probe_epsilon: float = 0.01
    #: training iterations after each probe split (0 skips the after-training measurement)
    probe_iterations: int = 5000
    #: angles 0, 90/angle_steps, ..., 90 degrees in figure 1c
    angle_steps: int = 9
    curve_neurons: list[int] = field(default_factory=lambda: [3, 8])
    record_every: int = 100

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
        require(self.epsilon >= 0, f"epsilon (the split step size) must be >= 0, got {self.epsilon}")
        require(
            self.max_splits_per_step >= 1,
            f"max_splits_per_step (m_*) must be >= 1, got {self.max_splits_per_step}",
        )
        require(self.threshold <= 0, f"threshold (lambda_*) must be <= 0, got {self.threshold}")
        require(self.init_std > 0 and self.init_weight_std >= 0, "init_std must be > 0 and init_weight_std >= 0")
        require(self.boosting_candidates >= 1, "boosting_candidates must be >= 1")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {unknown} in methods; known: {', '.join(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), "methods must not repeat")
        require(bool(self.methods), "methods must name at least one method")
        require(self.probe_count >= 1, "probe_count must be >= 1")
        require(self.probe_epsilon > 0, "probe_epsilon must be > 0")
        require(self.probe_iterations >= 0, "probe_iterations must be >= 0")
        require(self.angle_steps >= 1, "angle_steps must be >= 1")
        require(self.record_every >= 1, "record_every must be >= 1")


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
    network = ShallowNetwork(RidgeNeuron("gaussian"), theta, weights)
    return ShallowRegression(
        network,
        x,
        y,
        learning_rate=config.learning_rate,
        init_std=config.init_std,
        init_weight_std=config.init_weight_std,
    )


def make_method(name: str, config: RBFConfig) -> GrowthMethod:
    if name == "splitting":
        return SplittingSteepestDescent(config.epsilon, config.threshold)
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


def _decrease_after_training(problem: ShallowRegression, iterations: int, control_loss: float) -> float:
    problem.train(iterations, record_every=max(1, iterations))
    return control_loss - problem.loss()


def probe_indexes(problem: ShallowRegression, config: RBFConfig) -> dict[str, Any]:
    """Figure 1b: the smallest indexes against the loss decrease from splitting each neuron.

    Immediate decrease: split with ``probe_epsilon`` and measure at once; its second-order prediction is
    -probe_epsilon^2 / 2 * lambda. After training: split with ``epsilon``, train ``probe_iterations`` and compare
    with the unsplit network trained as long (so that the decrease is due to the split, not to more training).
    """
    matrices = problem.splitting_matrices()
    eigenpairs = dense_eigenpairs(matrices)
    order = torch.argsort(eigenpairs.indexes)[: config.probe_count]
    loss = problem.loss()
    control_loss = float("nan")
    if config.probe_iterations > 0:
        control = problem.clone()
        control.train(config.probe_iterations, record_every=config.probe_iterations)
        control_loss = control.loss()
    indexes, immediate, trained = [], [], []
    for position in order.tolist():
        direction = eigenpairs.directions[position : position + 1]
        indexes.append(float(eigenpairs.indexes[position]))
        split = problem.clone()
        split.split(torch.tensor([position]), direction, config.probe_epsilon)
        immediate.append(loss - split.loss())
        if config.probe_iterations > 0:
            split = problem.clone()
            split.split(torch.tensor([position]), direction, config.epsilon)
            trained.append(_decrease_after_training(split, config.probe_iterations, control_loss))
    negative_indexes = [-value for value in indexes]
    return {
        "neurons": problem.size,
        "positions": order.tolist(),
        "indexes": indexes,
        "predicted_immediate_decrease": [0.5 * config.probe_epsilon**2 * value for value in negative_indexes],
        "immediate_decrease": immediate,
        "trained_decrease": trained,
        "loss": loss,
        "control_loss_after_training": control_loss,
        "correlation_immediate": _pearson(negative_indexes, immediate),
        "correlation_trained": _pearson(negative_indexes, trained),
    }


def probe_angles(problem: ShallowRegression, config: RBFConfig) -> dict[str, Any]:
    """Figure 1c: split the neuron with the smallest index along v(alpha) = cos(alpha) v_1 + sin(alpha) v_2,
    v_1 its splitting gradient and v_2 the eigenvector of its second-smallest eigenvalue."""
    matrices = problem.splitting_matrices()
    indexes = dense_eigenpairs(matrices).indexes
    position = int(torch.argmin(indexes))
    matrix = 0.5 * (matrices[position] + matrices[position].t())
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    first, second = eigenvectors[:, 0], eigenvectors[:, 1]
    loss = problem.loss()
    control_loss = float("nan")
    if config.probe_iterations > 0:
        control = problem.clone()
        control.train(config.probe_iterations, record_every=config.probe_iterations)
        control_loss = control.loss()
    degrees = [90.0 * k / config.angle_steps for k in range(config.angle_steps + 1)]
    predicted, immediate, trained = [], [], []
    for angle in degrees:
        radians = math.radians(angle)
        direction = (math.cos(radians) * first + math.sin(radians) * second).unsqueeze(0)
        predicted.append(float(-0.5 * config.probe_epsilon**2 * (direction[0] @ matrix @ direction[0])))
        split = problem.clone()
        split.split(torch.tensor([position]), direction, config.probe_epsilon)
        immediate.append(loss - split.loss())
        if config.probe_iterations > 0:
            split = problem.clone()
            split.split(torch.tensor([position]), direction, config.epsilon)
            trained.append(_decrease_after_training(split, config.probe_iterations, control_loss))
    return {
        "neurons": problem.size,
        "position": position,
        "eigenvalues": eigenvalues.tolist(),
        "degrees": degrees,
        "predicted_immediate_decrease": predicted,
        "immediate_decrease": immediate,
        "trained_decrease": trained,
        "argmax_degrees_immediate": degrees[int(np.argmax(immediate))],
        "argmax_degrees_trained": degrees[int(np.argmax(trained))] if trained else None,
    }


def _default_schedule(config: RBFConfig) -> list[int]:
    sizes = [config.start_neurons]
    while sizes[-1] < config.max_neurons:
        sizes.append(min(config.max_neurons, sizes[-1] + config.max_splits_per_step))
    return sizes


def run_seed(config: RBFConfig, seed: int, reporter: Reporter) -> dict[str, Any]:
    """Run every configured method on one seed's target; returns the JSON-ready results."""
    target_theta, target_weights = make_target(config, seed)
    data_generator = make_generator(seed, "data")
    x = config.x_min + (config.x_max - config.x_min) * torch.rand(
        config.num_samples, generator=data_generator, dtype=DTYPE
    )
    y = target_function(target_theta, target_weights, x)
    grid = torch.linspace(config.x_min, config.x_max, 401, dtype=DTYPE)
    initial = make_problem(config, config.start_neurons, make_generator(seed, "student"), x, y)

    growth_methods = [m for m in GROWTH_METHODS if m in config.methods]
    schedule: list[int] | None = None
    runs: dict[str, dict[str, Any]] = {}
    probes: dict[str, Any] = {}

    for name in growth_methods:
        problem = initial.clone()
        curves: dict[str, list[float]] = {}

        def on_phase_end(step: int, grown: ShallowRegression, name: str = name, curves: dict = curves) -> None:
            if grown.size in config.curve_neurons:
                curves[str(grown.size)] = grown.predict(grid).tolist()
            if name == "splitting" and grown.size == config.probe_neurons and not probes:
                reporter.message(f"seed {seed}: probing splits at {grown.size} neurons (figures 1b, 1c)")
                probes["indexes"] = probe_indexes(grown, config)
                probes["angles"] = probe_angles(grown, config)

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
        if name == "splitting":
            schedule = run.sizes
        runs[name] = {**run.to_dict(), "curves": curves}
        reporter.message(_run_line(seed, run))

    sizes = schedule or _default_schedule(config)
    if "scratch" in config.methods:
        problem = make_problem(config, sizes[-1], make_generator(seed, "scratch"), x, y)
        total = len(sizes) * config.iterations_per_step
        with reporter.bar(total, f"seed {seed} scratch") as bar:
            run = train_from_scratch(problem, total, record_every=config.record_every, on_progress=bar.update)
        runs["scratch"] = {**run.to_dict(), "curves": {str(sizes[-1]): problem.predict(grid).tolist()}}
        reporter.message(_run_line(seed, run))

    final_size = sizes[-1]
    return {
        "target": {"theta": target_theta.tolist(), "weights": target_weights.tolist()},
        "grid": grid.tolist(),
        "target_curve": target_function(target_theta, target_weights, grid).tolist(),
        "final_size": final_size,
        "loss_at_final_size": {name: _loss_at(run, final_size) for name, run in runs.items()},
        "methods": runs,
        "probes": probes or None,
    }


def _loss_at(run: dict[str, Any], size: int) -> float | None:
    for phase_size, loss in zip(reversed(run["sizes"]), reversed(run["loss_at_end_of_phase"])):
        if phase_size == size:
            return loss
    return None


def _run_line(seed: int, run: GrowthRun) -> str:
    return f"seed {seed} {run.method}: {run.final_size} neurons, training loss {run.final_loss:.3e} ({run.stop_reason})"


# ----------------------------------------------------------------------------------------------- figures


def _color(name: str) -> str:
    palette = {
        "splitting": "tab:red",
        "random_split": "tab:blue",
        "net2net": "tab:purple",
        "new_init": "tab:green",
        "gradient_boosting": "tab:orange",
        "scratch": "tab:gray",
    }
    return palette.get(name, "black")


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
    figure = Figure(figsize=(5.0 * max(1, len(sizes)), 3.6), layout="constrained")
    axes = figure.subplots(1, max(1, len(sizes)), squeeze=False)[0]
    for ax in axes:
        ax.plot(results["grid"], results["target_curve"], color="black", lw=2.5, label="true function")
        ax.set_xlabel("x")
    if not sizes:
        axes[0].set_title("no network reached a size listed in curve_neurons")
    for ax, size in zip(axes, sizes):
        for name, run in results["methods"].items():
            if str(size) in run["curves"]:
                ax.plot(results["grid"], run["curves"][str(size)], color=_color(name), lw=1.3, label=LABELS[name])
        ax.set_title(f"{size} neurons")
    axes[0].set_ylabel("f(x)")
    axes[0].legend(fontsize=7)
    save_figure(figure, path)
    return path


def _plot_losses(results: dict[str, Any], path: Path) -> Path:
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.subplots()
    for name, run in results["methods"].items():
        ax.semilogy(run["history"]["iteration"], run["history"]["loss"], color=_color(name), lw=1.2, label=LABELS[name])
    ax.set_xlabel("gradient-descent iteration")
    ax.set_ylabel("training loss (mean squared error)")
    ax.set_title("training loss; growth steps are the cliffs")
    ax.legend(fontsize=8)
    save_figure(figure, path)
    return path


def _plot_indexes(probe: dict[str, Any], path: Path) -> Path:
    negative = -np.asarray(probe["indexes"])
    figure = Figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(negative, probe["immediate_decrease"], "o", color="tab:red", label="measured")
    left.plot(negative, probe["predicted_immediate_decrease"], "-", color="black", lw=1, label="eps^2/2 * (-lambda)")
    left.set_xlabel("-lambda_min (splitting index)")
    left.set_ylabel("loss decrease right after the split")
    left.set_title(f"{probe['neurons']} neurons: immediate (r = {probe['correlation_immediate']:.3f})")
    left.legend(fontsize=8)
    if probe["trained_decrease"]:
        right.plot(negative, probe["trained_decrease"], "o", color="tab:red")
        if len(negative) >= 2 and np.std(negative) > 0:
            slope, intercept = np.polyfit(negative, probe["trained_decrease"], 1)
            xs = np.linspace(negative.min(), negative.max(), 10)
            right.plot(xs, slope * xs + intercept, "--", color="gray", lw=1)
        right.set_title(f"after training (r = {probe['correlation_trained']:.3f})")
    right.set_xlabel("-lambda_min (splitting index)")
    right.set_ylabel("loss decrease vs. unsplit network")
    save_figure(figure, path)
    return path


def _plot_angles(probe: dict[str, Any], path: Path) -> Path:
    figure = Figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(probe["degrees"], probe["immediate_decrease"], "o", color="tab:red", label="measured")
    left.plot(probe["degrees"], probe["predicted_immediate_decrease"], "-", color="black", lw=1, label="second order")
    left.set_xlabel("angle to the splitting gradient (degrees)")
    left.set_ylabel("loss decrease right after the split")
    left.legend(fontsize=8)
    if probe["trained_decrease"]:
        right.plot(probe["degrees"], probe["trained_decrease"], "o-", color="tab:red")
    right.set_xlabel("angle to the splitting gradient (degrees)")
    right.set_ylabel("loss decrease after training")
    save_figure(figure, path)
    return path


# ----------------------------------------------------------------------------------------------- summary


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Per seed: each method's training loss at the final size, the correlation between -lambda and the loss
    decrease (immediately and after training) and the angle of largest decrease (immediately and after training);
    plus how often splitting had the lowest loss, and beat random splitting."""
    methods = [m for m in METHODS if m in all_results[0]["methods"]]
    rows, per_seed = [], []
    wins = beats_random = 0
    for results in all_results:
        losses = results["loss_at_final_size"]
        probes = results.get("probes") or {}
        correlation = probes.get("indexes", {}).get("correlation_trained")
        immediate = probes.get("indexes", {}).get("correlation_immediate")
        angle = probes.get("angles", {}).get("argmax_degrees_trained")
        angle_now = probes.get("angles", {}).get("argmax_degrees_immediate")
        others = [losses[m] for m in methods if m != "splitting" and losses.get(m) is not None]
        split_wins = "splitting" in losses and all(losses["splitting"] < other for other in others)
        wins += int(split_wins)
        if "splitting" in losses and "random_split" in losses:
            beats_random += int(losses["splitting"] < losses["random_split"])
        per_seed.append(
            {
                "seed": results["seed"],
                "final_size": results["final_size"],
                "loss_at_final_size": losses,
                "splitting_lowest": split_wins,
                "correlation_trained": correlation,
                "correlation_immediate": immediate,
                "argmax_degrees_immediate": angle_now,
                "argmax_degrees_trained": angle,
            }
        )
        rows.append(
            [results["seed"], results["final_size"]]
            + [format_number(losses.get(m)) for m in methods]
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
        + ["r, immediate", "r, after training", "best angle, immediate", "best angle, after training"]
    )
    geometric = {
        m: float(np.exp(np.mean(np.log([r["loss_at_final_size"][m] for r in all_results]))))
        for m in methods
        if all(r["loss_at_final_size"].get(m) for r in all_results)
    }
    rows.append(["geo. mean", ""] + [format_number(geometric.get(m)) for m in methods] + ["", "", "", ""])
    table = markdown_table(headers, rows)
    if "splitting" in methods and len(methods) > 1:
        table += f"\n\nSplitting had the lowest training loss at the final size in {wins} of {len(all_results)} seed(s)"
        if "random_split" in methods:
            table += f"; it beat random splitting in {beats_random}"
        table += "."
    summary = {
        "per_seed": per_seed,
        "geometric_mean_loss": geometric,
        "splitting_lowest_count": wins,
        "splitting_beats_random_split_count": beats_random,
    }
    return summary, table


EXPERIMENT = Experiment(
    name="rbf",
    description="toy RBF network (paper Appendix B.1, Figure 1): splitting vs. baselines",
    config_class=RBFConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    threads=1,
)
