"""Experiment ``mmd``: compress a sample into a few particles by minimising the MMD (paper Appendix C.1,
Figures 8 and 9).

1000 points from the mixture 0.2 N(-2, 0.5) + 0.3 N(1, 0.5) + 0.5 N(3, 0.5) (second argument read as the
variance, as in experiment ``rbf``) are approximated by weighted particles under a Gaussian kernel of bandwidth
h. Every method starts from one particle drawn from U[-5, -3] and adds one particle every 1000 Adagrad
iterations (learning rate 0.01), up to ``max_particles``. Weights are never trained:

* splitting and random split halve the parent's weight between the two offspring;
* new initialisation and gradient boosting (here: kernel herding, the new particle fitted with the old ones
  frozen) reset every weight to 1/n, which causes the paper's "kicks" in the loss.

Figures: ``trajectories.png`` (Figure 8: particle positions against iteration, dot area proportional to weight)
and ``log_mmd.png`` (Figure 9: log10 of the squared MMD against iteration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..artifacts import new_figure, save_figure
from ..config import require, require_step_size
from ..growth import (
    FireflyGrowth,
    GradientBoosting,
    GrowableProblem,
    GrowthMethod,
    NewInitialization,
    RandomSplit,
    SignedSplitting,
    SplittingSteepestDescent,
    run_growth,
)
from ..shallow.particles import SPLITTING_FORMS, ParticleApproximation
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

METHODS = ("splitting", "signed", "firefly", "random_split", "new_init", "gradient_boosting")
#: the methods of the paper's figure, compared by default
PAPER_METHODS = ("splitting", "random_split", "new_init", "gradient_boosting")
#: splitgrow's own growth methods: the paper's splitting and the two beyond it
SPLITGROW_METHODS = ("splitting", "signed", "firefly")
LABELS = {
    "splitting": "splitting (ours)",
    "signed": "signed splitting",
    "firefly": "Firefly",
    "random_split": "random split",
    "new_init": "new initialisation",
    "gradient_boosting": "gradient boosting (herding)",
}
COLORS = {
    "splitting": "tab:red",
    "signed": "tab:brown",
    "firefly": "tab:olive",
    "random_split": "tab:blue",
    "new_init": "tab:green",
    "gradient_boosting": "tab:orange",
}
#: how each method's loss is drawn: every run starts from the same particle, so the lines coincide up to the first
#: growth step (and sometimes after it); dashes, markers and the widest line lowest keep each one visible
STYLES: dict[str, dict[str, Any]] = {
    "splitting": {"color": COLORS["splitting"], "linestyle": "-", "linewidth": 3.2, "alpha": 0.55, "marker": "o"},
    "signed": {"color": COLORS["signed"], "linestyle": (0, (4, 1, 1, 1)), "linewidth": 1.6, "marker": "P"},
    "firefly": {"color": COLORS["firefly"], "linestyle": (0, (8, 2)), "linewidth": 1.6, "marker": "*"},
    "random_split": {"color": COLORS["random_split"], "linestyle": (0, (5, 2)), "linewidth": 1.5, "marker": "s"},
    "new_init": {"color": COLORS["new_init"], "linestyle": (0, (6, 2, 1, 2)), "linewidth": 1.4, "marker": "D"},
    "gradient_boosting": {
        "color": COLORS["gradient_boosting"],
        "linestyle": (0, (1, 1.5)),
        "linewidth": 1.8,
        "marker": "v",
    },
}
DTYPE = torch.float64


@dataclass
class MMDConfig:
    """Settings of the ``mmd`` experiment; the defaults are the paper's (a few seconds on a CPU)."""

    #: weights of the target mixture's Gaussian components
    mixture_weights: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.5])
    #: means of the components
    mixture_means: list[float] = field(default_factory=lambda: [-2.0, 1.0, 3.0])
    #: variances of the components
    mixture_variances: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    #: points drawn from the mixture, the sample the particles compress
    num_samples: int = 1000
    #: h of the Gaussian kernel exp(-|a - b|^2 / (2 h^2)) (the paper does not give it)
    bandwidth: float = 1.0
    #: the first particle is drawn from U[init_min, init_max]
    init_min: float = -5.0
    #: upper end of the first particle's interval
    init_max: float = -3.0
    #: new particles (new initialisation, herding candidates) are drawn from U[new_min, new_max]
    new_min: float = -5.0
    #: upper end of the new particles' interval
    new_max: float = 5.0
    #: Adagrad iterations of every training phase (only positions train)
    iterations_per_step: int = 1000
    #: Adagrad's learning rate
    learning_rate: float = 0.01
    #: growth stops at this many particles
    max_particles: int = 10
    #: m_*, the most particles split (or added) per growth step
    max_splits_per_step: int = 1
    #: split step size: offspring at theta +/- epsilon v
    epsilon: float = 0.1
    #: lambda_*: split only particles whose index is below it
    threshold: float = 0.0
    #: "exact" (kernel form of S) or "random_features"
    splitting_form: str = "exact"
    #: random features of the "random_features" form
    num_features: int = 2000
    #: herding starts each new particle from the best of this many random candidates
    boosting_candidates: int = 100
    #: signed splitting: c, the bound on the sum of the offspring's |weight shares| (1: the plain split)
    weight_bound: float = 3.0
    #: Firefly: new particles drawn (like new initialisation's) and tuned at every growth step
    firefly_candidates: int = 32
    #: Firefly: gradient-ascent steps on each candidate's first-order score
    firefly_steps: int = 8
    #: the methods compared: splitting, signed, firefly, random_split, new_init, gradient_boosting
    methods: list[str] = field(default_factory=lambda: list(PAPER_METHODS))
    #: the loss and the particles are recorded every this many iterations (figures 8 and 9)
    record_every: int = 10

    def validate(self) -> None:
        k = len(self.mixture_weights)
        require(k >= 1, "mixture_weights must not be empty")
        require(
            len(self.mixture_means) == k and len(self.mixture_variances) == k,
            "mixture_weights, mixture_means and mixture_variances must have the same length",
        )
        require(all(w > 0 for w in self.mixture_weights), "mixture_weights must be > 0")
        require(all(v > 0 for v in self.mixture_variances), "mixture_variances must be > 0")
        require(self.num_samples >= 1, "num_samples must be >= 1")
        require(self.bandwidth > 0, "bandwidth must be > 0")
        require(self.init_min <= self.init_max, "init_min must be <= init_max")
        require(self.new_min <= self.new_max, "new_min must be <= new_max")
        require(self.iterations_per_step >= 1, "iterations_per_step must be >= 1")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.max_particles >= 1, "max_particles must be >= 1")
        require(
            self.max_splits_per_step >= 1,
            f"max_splits_per_step (m_*) must be >= 1, got {self.max_splits_per_step}",
        )
        require_step_size(self.epsilon)
        require(self.threshold <= 0, f"threshold (lambda_*) must be <= 0, got {self.threshold}")
        require(
            self.splitting_form in SPLITTING_FORMS,
            f"splitting_form must be one of {', '.join(SPLITTING_FORMS)}, got {self.splitting_form!r}",
        )
        require(self.num_features >= 1, "num_features must be >= 1")
        require(self.boosting_candidates >= 1, "boosting_candidates must be >= 1")
        require(
            math.isfinite(self.weight_bound) and self.weight_bound >= 1,
            f"weight_bound (c) must be a finite number >= 1, got {self.weight_bound}",
        )
        require(self.firefly_candidates >= 1, "firefly_candidates must be >= 1")
        require(self.firefly_steps >= 0, "firefly_steps must be >= 0")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {unknown} in methods; known: {', '.join(METHODS)}")
        require(bool(self.methods) and len(set(self.methods)) == len(self.methods), "methods must be distinct, >= 1")
        require(self.record_every >= 1, "record_every must be >= 1")


def sample_mixture(config: MMDConfig, generator: torch.Generator) -> Tensor:
    """``num_samples`` points of the one-dimensional Gaussian mixture, shape (N, 1)."""
    weights = torch.tensor(config.mixture_weights, dtype=DTYPE)
    components = torch.multinomial(weights / weights.sum(), config.num_samples, replacement=True, generator=generator)
    means = torch.tensor(config.mixture_means, dtype=DTYPE)[components]
    stds = torch.tensor(config.mixture_variances, dtype=DTYPE).sqrt()[components]
    return (means + stds * torch.randn(config.num_samples, generator=generator, dtype=DTYPE)).unsqueeze(1)


def make_problem(config: MMDConfig, targets: Tensor, seed: int) -> ParticleApproximation:
    generator = make_generator(seed, "initial-particle")
    first = config.init_min + (config.init_max - config.init_min) * torch.rand((1, 1), generator=generator, dtype=DTYPE)
    return ParticleApproximation(
        first,
        torch.ones(1, dtype=DTYPE),
        targets,
        bandwidth=config.bandwidth,
        learning_rate=config.learning_rate,
        new_particle_range=(config.new_min, config.new_max),
        splitting_form=config.splitting_form,
        num_features=config.num_features,
        feature_generator=make_generator(seed, "random-features"),
    )


def make_method(name: str, config: MMDConfig) -> GrowthMethod:
    if name == "splitting":
        return SplittingSteepestDescent(config.epsilon, config.threshold)
    if name == "signed":
        return SignedSplitting(config.epsilon, config.weight_bound)
    if name == "firefly":
        return FireflyGrowth(config.epsilon, candidates=config.firefly_candidates, steps=config.firefly_steps)
    if name == "random_split":
        return RandomSplit(config.epsilon)
    if name == "new_init":
        return NewInitialization()
    if name == "gradient_boosting":
        return GradientBoosting(config.boosting_candidates)
    raise ValueError(f"unknown method {name!r}")


def run_seed(config: MMDConfig, seed: int, reporter: Reporter) -> dict[str, Any]:
    """Run every configured method on one seed's sample; returns the JSON-ready results."""
    targets = sample_mixture(config, make_generator(seed, "data"))
    runs: dict[str, Any] = {}
    schedule: list[int] | None = None
    ordered = [m for m in METHODS if m in config.methods]
    for name in ordered:
        problem = make_problem(config, targets, seed)
        snapshots: dict[str, list] = {"iteration": [], "positions": [], "weights": []}

        def snapshot(iteration: int, loss: float, grown: GrowableProblem, snapshots: dict = snapshots) -> None:
            snapshots["iteration"].append(iteration)
            snapshots["positions"].append(grown.particles.detach()[:, 0].tolist())
            snapshots["weights"].append(grown.weights.tolist())

        with reporter.bar(config.max_particles * config.iterations_per_step, f"seed {seed} {name}") as bar:
            run = run_growth(
                problem,
                make_method(name, config),
                iterations_per_step=config.iterations_per_step,
                generator=make_generator(seed, "method", name),
                max_size=config.max_particles,
                max_per_step=config.max_splits_per_step,
                schedule=schedule,
                record_every=config.record_every,
                on_progress=bar.update,
                on_record=snapshot,
            )
        if name == "splitting":
            schedule = run.sizes
        runs[name] = {
            **run.to_dict(),
            "final_log10_mmd2": math.log10(max(run.final_loss, 1e-300)),
            "final_particles": problem.particles.detach()[:, 0].tolist(),
            "final_weights": problem.weights.tolist(),
            "trajectory": snapshots,
        }
        reporter.message(
            f"seed {seed} {name}: {run.final_size} particles, log10 MMD^2 {runs[name]['final_log10_mmd2']:.3f}"
            f" ({run.stop_reason})"
        )
    return {"targets": targets[:, 0].tolist(), "methods": runs}


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    """Write figures 8 (trajectories) and 9 (log MMD) of one seed's results into ``directory``."""
    methods = list(results["methods"])
    figure = new_figure(figsize=(4.2 * len(methods), 3.8), layout="constrained")
    axes = figure.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, name in zip(axes, methods):
        trajectory = results["methods"][name]["trajectory"]
        xs, ys, sizes = [], [], []
        for iteration, positions, weights in zip(
            trajectory["iteration"], trajectory["positions"], trajectory["weights"]
        ):
            xs.extend([iteration] * len(positions))
            ys.extend(positions)
            sizes.extend(weights)
        xs, ys, sizes = np.asarray(xs), np.asarray(ys), np.asarray(sizes)
        positive = sizes >= 0
        ax.scatter(
            xs[positive],
            ys[positive],
            s=40.0 * sizes[positive],
            color=COLORS[name],
            alpha=0.5,
            linewidths=0,
            label="particle (area: weight)",
        )
        if not positive.all():  # signed splitting's negative shares: hollow, area |weight|
            ax.scatter(
                xs[~positive],
                ys[~positive],
                s=-40.0 * sizes[~positive],
                facecolors="none",
                edgecolors=COLORS[name],
                alpha=0.7,
                linewidths=0.8,
                label="negative weight (hollow)",
            )
        ax.set_title(LABELS[name])
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("particle position")
    trajectories = directory / "trajectories.png"
    save_figure(figure, trajectories)

    figure = new_figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.subplots()
    for name in methods:
        history = results["methods"][name]["history"]
        values = np.log10(np.maximum(np.asarray(history["loss"]), 1e-300))
        position = METHODS.index(name)
        plot_method(
            ax,
            history["iteration"],
            values,
            label=LABELS[name],
            style=STYLES[name],
            position=position,
            count=len(METHODS),
        )
    histories = {name: results["methods"][name]["history"] for name in methods}
    groups = coinciding(
        {name: history["loss"] for name, history in histories.items()},
        xs={name: history["iteration"] for name, history in histories.items()},
    )
    note_coinciding(ax, groups, LABELS)
    ax.set_xlabel("iteration")
    ax.set_ylabel("log10 MMD^2")
    ax.legend(fontsize=8)
    log_mmd = directory / "log_mmd.png"
    save_figure(figure, log_mmd)
    return [trajectories, log_mmd]


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Final log10 MMD^2 of each method, per seed and averaged over seeds, and which method is lowest; final MMD^2
    within a relative ``TIE_TOLERANCE`` of each other are a tie, not a win."""
    methods = [m for m in METHODS if m in all_results[0]["methods"]]
    values = {m: [r["methods"][m]["final_log10_mmd2"] for r in all_results] for m in methods}
    rows, lowest_per_seed = [], []
    for index, results in enumerate(all_results):
        lowest = _lowest({m: values[m][index] for m in methods})
        lowest_per_seed.append(lowest)
        rows.append(
            [results["seed"], results["methods"][methods[0]]["final_size"]]
            + [f"{values[m][index]:.3f}" for m in methods]
            + [_lowest_cell(lowest)]
        )
    means = {m: float(np.mean(v)) for m, v in values.items()}
    stds = {m: float(np.std(v)) for m, v in values.items()}
    lowest_mean = _lowest(means)
    rows.append(["mean", ""] + [f"{means[m]:.3f} ± {stds[m]:.3f}" for m in methods] + [_lowest_cell(lowest_mean)])
    table = markdown_table(["seed", "particles"] + [LABELS[m] for m in methods] + ["lowest"], rows)
    table = "Final log10 MMD^2 (lower is better)\n\n" + table
    alone = {m: sum(lowest == [m] for lowest in lowest_per_seed) for m in methods}
    ties = sum(len(lowest) > 1 for lowest in lowest_per_seed)
    counts = ", ".join(f"{LABELS[m]} {count}" for m, count in alone.items() if count)
    table += f"\n\nLowest final MMD^2, seeds: {counts or 'none alone'}" + (f"; ties {ties}" if ties else "")
    best = lowest_mean[0]
    mean_text = " and ".join(LABELS[m] for m in lowest_mean)
    table += (
        f". Lowest mean: {'a tie of ' if len(lowest_mean) > 1 else ''}{mean_text}"
        f" ({format_number(10 ** means[best])} in MMD^2; MMD^2 within a relative {TIE_TOLERANCE:g} is a tie)."
    )
    summary = {
        "final_log10_mmd2": values,
        "mean": means,
        "std": stds,
        "tie_tolerance": TIE_TOLERANCE,
        "lowest_per_seed": lowest_per_seed,
        "lowest_mean": lowest_mean,
    }
    own = {m for m in SPLITGROW_METHODS if m in methods}
    if own and len(own) < len(methods):
        alone_ours = sum(bool(lowest) and set(lowest) <= own for lowest in lowest_per_seed)
        tied_ours = sum(bool(set(lowest) & own) and not set(lowest) <= own for lowest in lowest_per_seed)
        names = ", ".join(LABELS[m] for m in METHODS if m in own)
        table += (
            f"\n\nThe best of splitgrow's methods ({names}) had the lowest final MMD^2 in {alone_ours} of"
            f" {len(all_results)} seed(s) and tied for it with a baseline in {tied_ours}."
        )
        summary["splitgrow_lowest_count"] = alone_ours
        summary["splitgrow_tied_lowest_count"] = tied_ours
    return summary, table


def _lowest(log10_mmd2: dict[str, float]) -> list[str]:
    """The method with the lowest MMD^2 and every method whose MMD^2 ties with it."""
    best = min(log10_mmd2.values())
    return [m for m, value in log10_mmd2.items() if outcome(10.0**value, 10.0**best) == "tie"]


def _lowest_cell(lowest: list[str]) -> str:
    names = ", ".join(LABELS[m] for m in lowest)
    return names if len(lowest) == 1 else f"tie: {names}"


EXPERIMENT = Experiment(
    name="mmd",
    description="MMD particle compression (paper Appendix C.1, Figures 8-9): splitting vs. baselines",
    config_class=MMDConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    threads=1,
)
