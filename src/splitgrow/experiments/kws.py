"""Experiment ``kws``: keyword spotting with a DS-CNN grown by splitting, in Hello Edge's pipeline (paper Section 3,
Table 1, Figure 4, Appendix B.4).

The data are Google Speech Commands v0.01 (``--data-root``, or ``--download``) or, without them, the offline
synthetic keyword set of the same 12 classes (:mod:`splitgrow.data.speech_synthetic`); every result says which.
MFCCs (49 frames x 10) of ``augmented_copies`` augmented copies of the training clips (time shift, background
noise) are computed once, before any training. One run, for one seed, is a list of *tasks*, each checkpointed at
every validation:

1. ``splitting``: DS-CNN L with ``start_width`` channels in every layer. Every stage trains with Hello Edge's
   schedule (Adam, batch 100, piecewise-constant learning rates) and ends at its best validation checkpoint (the
   weights and Adam's state at the evaluation with the highest validation accuracy); then
   :class:`~splitgrow.growth.Grower` grows it by Algorithm 1: the parameters by ``growth_ratio`` with energy-aware
   selection (``growth="parameters"``, the paper's 30%), or ``growth_ratio`` of the neurons. A neuron is a
   coupling group: a pointwise channel with the depthwise filter it feeds. Growth stops at ``max_parameters`` (the
   paper: about 280K), after ``max_stages``, or when the network is splitting-stable.
2. ``reference``: Hello Edge's DS-CNN L at ``reference_width`` (276: Table 1's "DS-CNN") with the same schedule.
3. ``reference-slim`` and ``prune-<k>`` (Figure 4's BN-prune): the same network trained with network slimming's L1
   penalty on BatchNorm scales, pruned to the size splitting reached at stage k (for ``prune_points`` stages
   smaller than it) and fine-tuned with the schedule.

Every row records the exact parameters (weights, BatchNorm scales and shifts: Hello Edge's count), the operations
per clip (2 x multiply-accumulates of the convolutions and the classifier), and the validation and test accuracy
at the best validation checkpoint. ``--resume`` continues a killed run and reaches the same numbers on a CPU.
"""

from __future__ import annotations

import copy
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
from ..classification import evaluate, train_epoch
from ..config import require, require_folder_or_none, require_step_size
from ..data import DataError, KeywordData, load_keyword_data, precompute_features, synthesize_keywords
from ..data.speech import SPLITS
from ..errors import ConfigError, SplitgrowError
from ..growth import Grower, GrowthPolicy
from ..models import DSCNNL, build_model, dscnn_cost, load_model, save_model
from ..pruning import prune_to_ratio
from ..statistics import SOLVERS
from ..surgery import parameter_count
from .common import Experiment, Reporter, derive_seed, make_generator, markdown_table, seed_checkpoint

DATASETS = ("auto", "synthetic", "speech-commands")
GROWTH = ("parameters", "channels")
#: activations with phi'' != 0 (ReLU, Hello Edge's, gives every splitting matrix zero)
ACTIVATIONS = ("softplus", "silu", "tanh", "sigmoid")
SYNTHETIC_LABEL = "synthetic keyword set (espeak-ng/flite), not comparable to Table 1"
METHOD_LABELS = {"splitting": "splitting (ours)", "dscnn": "DS-CNN L", "bn-prune": "BN-prune of DS-CNN L"}
#: Table 1 of the paper (Speech Commands, mean of 5 rounds): test accuracy %, parameters, operations per clip
PAPER_TABLE1 = {"splitting": (95.36, 282.6e3, 39.2e6), "dscnn": (94.85, 413.7e3, 56.9e6)}
#: clips per batch when evaluating (memory only: eval-mode results do not depend on it)
EVALUATION_BATCH = 500


@dataclass
class KwsConfig:
    """Settings of the ``kws`` experiment. The defaults are a reduced protocol for a CPU on the synthetic keyword
    set, minutes per seed (``configs/kws.yaml``); ``configs/kws-paper.yaml`` is the paper's protocol on Speech
    Commands (GPU work)."""

    #: auto: Speech Commands when data_root or download is given, else the synthetic keyword set; synthetic;
    #: speech-commands: v0.01 in data_root (default ~/.cache/splitgrow/speech-commands-v0.01)
    dataset: str = "auto"
    #: folder of Speech Commands v0.01 (one folder per word, _background_noise_/) or of a set in its layout
    data_root: str | None = None
    #: fetch Speech Commands v0.01 (1.4 GB, SHA-256 verified) into data_root first
    download: bool = False
    #: the data's own seed, the same for every run seed (TensorFlow's fixed RANDOM_SEED): the synthetic set's
    #: voices and takes, the unknown-word clips drawn, the noise of the validation and test silence clips
    data_seed: int = 0
    #: synthetic set: clips of each keyword (>= 5: a speaker each for validation and testing); built once, cached
    synthetic_clips_per_word: int = 200
    #: hash: TensorFlow's split by speaker (Hello Edge's); lists: the dataset's validation and testing lists
    split: str = "hash"
    #: cpu or cuda
    device: str = "cpu"
    #: augmented copies of every training clip (time shift, background noise) whose MFCCs are computed once
    augmented_copies: int = 4
    #: standardise every MFCC coefficient with the mean and std of the training features (Hello Edge does not; on
    #: the synthetic set it trains much faster)
    standardize: bool = True
    #: of every layer (needs phi'' != 0: softplus, silu, tanh, sigmoid)
    activation: str = "softplus"
    #: channels of every layer of the starting DS-CNN L (the paper: 16)
    start_width: int = 16
    #: clips per training step (Hello Edge: 100)
    batch_size: int = 100
    #: Adam's learning rate in each part of the schedule (Hello Edge: 5e-4, 1e-4, 2e-5; the reduced protocol, with
    #: 100 times fewer steps, 4 times these) ...
    learning_rates: list[float] = field(default_factory=lambda: [2e-3, 5e-4, 1e-4])
    #: ... for this many steps each (Hello Edge: 10,000 each); every network (each growth stage, the reference, each
    #: pruned one) trains with this schedule and ends at its best validation checkpoint
    steps: list[int] = field(default_factory=lambda: [200, 50, 50])
    #: validation accuracy every this many steps (Hello Edge: 400); the best evaluation's weights end a schedule
    eval_every: int = 50
    #: parameters: each stage adds at most growth_ratio x the current parameters, spending them on the splits
    #: that lower the loss most (energy-aware); channels: growth_ratio x the current neurons, most negative first
    growth: str = "parameters"
    #: the paper: 30% per stage
    growth_ratio: float = 0.3
    #: growth stops once the network has this many parameters (the paper: about 280K) ...
    max_parameters: int = 6100
    #: ... or after this many stages (null: no limit), or when no index is below threshold (splitting-stable)
    max_stages: int | None = 8
    #: split step size: offspring at theta +/- epsilon v (v a unit vector). Small enough for the second-order
    #: prediction to hold: on the reduced run's first stage, 0.01 changed the loss by -0.0036 (predicted -0.0042),
    #: 0.1 by +4.7 (predicted -0.42)
    epsilon: float = 0.01
    #: only neurons whose splitting index is below this split (lambda_*)
    threshold: float = 0.0
    #: eigensolver of the splitting matrices: dense, lobpcg (matrix-free), rayleigh or auto
    solver: str = "auto"
    #: training batches (the first ones of the first augmented copy) for the splitting statistics
    split_batches: int = 2
    #: width of every layer of the DS-CNN L baseline (Hello Edge's: 276; the reduced protocol scales it down)
    reference_width: int = 32
    #: network slimming's L1 penalty on BatchNorm scales while BN-prune's source network trains
    bn_sparsity: float = 1e-4
    #: BN-prune that network to the size of this many splitting stages (spread evenly over those smaller than it,
    #: the last included), each fine-tuned with the schedule; 0: no BN-prune
    prune_points: int = 3
    #: the largest fraction of a layer's channels pruning may remove
    max_pruning_ratio: float = 0.9

    def validate(self) -> None:
        require(self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        require_folder_or_none(self.data_root, "data_root")
        require(
            self.dataset != "synthetic" or (self.data_root is None and not self.download),
            "dataset synthetic is built in ~/.cache/splitgrow: leave out data_root and download (or use dataset "
            "auto to read a folder)",
        )
        # numpy's generators, which draw the set's voices and unknown clips, take no negative seed
        require(self.data_seed >= 0, f"data_seed must be >= 0, got {self.data_seed}")
        require(self.synthetic_clips_per_word >= 5, "synthetic_clips_per_word must be >= 5")
        require(self.split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        require(
            self.device == "cpu" or self.device.startswith("cuda"), f"device must be cpu or cuda, got {self.device!r}"
        )
        require(self.augmented_copies >= 1, "augmented_copies must be >= 1")
        require(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}")
        require(self.start_width >= 1 and self.reference_width >= 1, "start_width and reference_width must be >= 1")
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(
            len(self.learning_rates) == len(self.steps) >= 1,
            f"learning_rates and steps must list the same number (>= 1) of schedule parts, got "
            f"{len(self.learning_rates)} and {len(self.steps)}",
        )
        require(all(rate > 0 for rate in self.learning_rates), "learning_rates must be > 0")
        require(all(count >= 1 for count in self.steps), "steps must be >= 1 each")
        require(self.eval_every >= 1, "eval_every must be >= 1")
        require(self.growth in GROWTH, f"growth must be one of {', '.join(GROWTH)}, got {self.growth!r}")
        require(self.growth_ratio > 0, "growth_ratio must be > 0")
        require(self.max_parameters >= 1, "max_parameters must be >= 1")
        require(self.max_stages is None or self.max_stages >= 0, "max_stages must be >= 0 (or null: no limit)")
        require_step_size(self.epsilon)
        require(self.threshold <= 0, f"threshold (lambda_*) must be <= 0, got {self.threshold}")
        require(self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        require(self.split_batches >= 1, "split_batches must be >= 1")
        require(self.bn_sparsity >= 0, "bn_sparsity must be >= 0")
        require(self.prune_points >= 0, "prune_points must be >= 0 (0: no BN-prune)")
        require(0 < self.max_pruning_ratio < 1, "max_pruning_ratio must be in (0, 1)")

    @property
    def synthetic(self) -> bool:
        """Whether the run uses the synthetic keyword set (built in the cache)."""
        return self.dataset == "synthetic" or (self.dataset == "auto" and self.data_root is None and not self.download)

    def learning_rate(self, step: int) -> float:
        """The schedule's learning rate at ``step`` (0-based) of a network's training."""
        end = 0
        for rate, count in zip(self.learning_rates, self.steps):
            end += count
            if step < end:
                return rate
        return self.learning_rates[-1]


# ------------------------------------------------------------------------------------------ data


@dataclass
class KeywordFeatures:
    """MFCCs of the three partitions on the run's device, shaped (N, 1, 49, 10), and their labels.

    The training rows are ``augmented_copies`` copies of the training clips, copy c in rows c*N .. (c+1)*N - 1.
    """

    training: Tensor
    training_labels: Tensor
    validation: Tensor
    validation_labels: Tensor
    testing: Tensor
    testing_labels: Tensor


def load_data(config: KwsConfig, reporter: Reporter) -> KeywordData:
    """The keyword data the settings name: the synthetic set (built and cached on first use) or Speech Commands."""
    if config.synthetic:
        reporter.message(
            f"no --data-root: the {SYNTHETIC_LABEL} ({config.synthetic_clips_per_word} clips per keyword, seed "
            f"{config.data_seed}); pass --data-root DIR for Speech Commands"
        )
        root = synthesize_keywords(
            seed=config.data_seed, clips_per_word=config.synthetic_clips_per_word, progress=reporter.enabled
        )
    else:
        root = Path(config.data_root) if config.data_root is not None else None
    data = load_keyword_data(root, download=config.download, split=config.split, seed=config.data_seed)
    for partition in ("training", "validation", "testing"):
        if len(data.partition(partition)) == 0:
            raise DataError(
                f"the {partition} partition is empty: a keyword set needs speakers in every partition",
                data.root,
                "raise synthetic_clips_per_word, or check the folder",
            )
    return data


def data_label(data: KeywordData) -> str:
    """What every result says about its data."""
    if data.synthetic:
        return SYNTHETIC_LABEL
    return f"Speech Commands {data.version} ({data.root})"


def compute_features(data: KeywordData, config: KwsConfig, seed: int, device: torch.device) -> KeywordFeatures:
    """MFCCs of every partition, computed once: ``augmented_copies`` augmented copies of the training clips (their
    shifts and noise drawn from the run's ``seed``), one copy of the validation and test clips (whose silence clips
    get noise drawn from ``data_seed``: every run seed is evaluated on the same features)."""
    training, training_labels = precompute_features(
        data.training, config.augmented_copies, derive_seed(seed, "augmentation"), device=device
    )
    evaluation = {
        name: precompute_features(
            data.partition(name), 1, derive_seed(config.data_seed, "features", name), device=device
        )
        for name in ("validation", "testing")
    }
    if config.standardize:  # one mean and std per coefficient, over the training clips and frames
        mean = training.mean(dim=(0, 1, 2), keepdim=True)
        std = training.std(dim=(0, 1, 2), keepdim=True)
        training = (training - mean) / std
        evaluation = {name: ((x - mean) / std, y) for name, (x, y) in evaluation.items()}
    return KeywordFeatures(
        training.to(device),
        training_labels.to(device),
        *(tensor.to(device) for tensor in evaluation["validation"]),
        *(tensor.to(device) for tensor in evaluation["testing"]),
    )


# ------------------------------------------------------------------------------------------ training


class _Interrupted(Exception):
    """Raised by the test hook that simulates a killed run."""


@dataclass
class _Progress:
    """Where a network is in its schedule: the steps done, the best validation checkpoint so far (weights and
    Adam's state), and the validation curve."""

    position: int = 0
    best: dict[str, Any] | None = None
    curve: list[dict[str, float]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return {"position": self.position, "best": self.best, "curve": self.curve}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        return cls(state["position"], state["best"], state["curve"])


@dataclass
class _Context:
    config: KwsConfig
    seed: int
    folder: Path
    reporter: Reporter
    checkpoint: Checkpoint
    features: KeywordFeatures
    stop_after_evaluations: int | None = None
    evaluations: int = 0
    _permutation: tuple[str, int, Tensor] | None = None

    def example(self) -> Tensor:
        return self.features.training[:2]

    def _rows(self, task: str, step: int) -> Tensor:
        """The training rows of ``step``: epochs over the augmented copies, each in its own order, drawn from the
        seed, the task and the epoch alone (so that a resumed run continues with the same batches)."""
        count = self.features.training.shape[0]
        size = self.config.batch_size
        epoch, index = divmod(step, count // size)
        if self._permutation is None or self._permutation[:2] != (task, epoch):
            order = torch.randperm(count, generator=make_generator(self.seed, "batches", task, str(epoch)))
            self._permutation = (task, epoch, order.to(self.features.training.device))
        return self._permutation[2][index * size : (index + 1) * size]

    def training_batches(
        self, task: str, start: int, end: int, optimizer: torch.optim.Optimizer
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Steps ``start`` .. ``end`` - 1 of a schedule: each batch comes with its learning rate set."""
        for step in range(start, end):
            for group in optimizer.param_groups:
                group["lr"] = self.config.learning_rate(step)
            rows = self._rows(task, step)
            yield self.features.training[rows], self.features.training_labels[rows]

    def evaluation_batches(self, partition: str) -> list[tuple[Tensor, Tensor]]:
        inputs = getattr(self.features, partition)
        labels = getattr(self.features, f"{partition}_labels")
        return [
            (inputs[i : i + EVALUATION_BATCH], labels[i : i + EVALUATION_BATCH])
            for i in range(0, len(labels), EVALUATION_BATCH)
        ]

    def statistics_batches(self) -> list[tuple[Tensor, Tensor]]:
        """The splitting statistics' data: the first ``split_batches`` batches of training features."""
        size = self.config.batch_size
        count = min(self.config.split_batches * size, self.features.training.shape[0])
        return [
            (self.features.training[i : i + size], self.features.training_labels[i : i + size])
            for i in range(0, count, size)
        ]

    def save(self, task: str, model: DSCNNL, optimizer: torch.optim.Optimizer, progress: _Progress, **extra: Any):
        """Checkpoint the task in progress (atomically), then the test hook that simulates a kill."""
        self.checkpoint.progress["current"] = {"task": task}
        self.checkpoint.save(
            {
                "task": task,
                "config": model.config(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "progress": progress.state(),
                "rng": torch.get_rng_state(),
                **extra,
            }
        )
        self.evaluations += 1
        if self.stop_after_evaluations is not None and self.evaluations >= self.stop_after_evaluations:
            raise _Interrupted


def _train_schedule(
    context: _Context,
    task: str,
    model: DSCNNL,
    optimizer: torch.optim.Optimizer,
    progress: _Progress,
    save: Callable[[], None],
    *,
    sparsity: float = 0.0,
) -> dict[str, Any]:
    """Train ``model`` through the schedule from ``progress.position``, evaluating on the validation clips every
    ``eval_every`` steps and checkpointing (``save``) after each evaluation; end at the best validation checkpoint
    and measure it on the test clips."""
    config = context.config
    total = sum(config.steps)
    with context.reporter.bar(total, f"seed {context.seed} {task}") as bar:
        bar.update(progress.position)
        while progress.position < total:
            start = progress.position
            end = min(total, start - start % config.eval_every + config.eval_every)
            loss = train_epoch(
                model,
                context.training_batches(task, start, end, optimizer),
                optimizer,
                sparsity=sparsity,
                on_batch=lambda _: bar.update(),
                where=f"seed {context.seed}, {task}, steps {start + 1}-{end}",
                learning_rate="learning_rates",
            )
            accuracy, validation_loss = evaluate(model, context.evaluation_batches("validation"))
            progress.position = end
            progress.curve.append(
                {"step": end, "train_loss": loss, "validation_accuracy": accuracy, "validation_loss": validation_loss}
            )
            if progress.best is None or accuracy > progress.best["validation_accuracy"]:
                progress.best = {
                    "step": end,
                    "validation_accuracy": accuracy,
                    "validation_loss": validation_loss,
                    "model": {name: tensor.clone() for name, tensor in model.state_dict().items()},
                    "optimizer": copy.deepcopy(optimizer.state_dict()),
                }
            save()
    best = progress.best
    model.load_state_dict(best["model"])
    optimizer.load_state_dict(best["optimizer"])
    test_accuracy, test_loss = evaluate(model, context.evaluation_batches("testing"))
    return {
        "validation_accuracy": best["validation_accuracy"],
        "validation_loss": best["validation_loss"],
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "best_step": best["step"],
        "steps": total,
        "curve": progress.curve,
    }


def _adam(model: DSCNNL, config: KwsConfig) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=config.learning_rates[0])


def _row(method: str, stage: int | None, model: DSCNNL, measured: dict[str, Any]) -> dict[str, Any]:
    cost = model.cost()
    return {
        "method": method,
        "stage": stage,
        "widths": model.config()["widths"],
        "parameters": parameter_count(model),
        "operations": cost.operations,
        **measured,
    }


def _describe(row: dict[str, Any]) -> str:
    return (
        f"{row['parameters']:,} parameters, {row['operations'] / 1e6:.2f}M operations, validation "
        f"{100 * row['validation_accuracy']:.2f}%, test {100 * row['test_accuracy']:.2f}%"
    )


# ------------------------------------------------------------------------------------------ tasks


def _task_splitting(context: _Context, resume: dict[str, Any] | None, device: torch.device) -> dict[str, Any]:
    """Grow DS-CNN L from ``start_width`` with :class:`~splitgrow.growth.Grower`: one grower epoch is one stage
    (the whole schedule, ending at its best validation checkpoint), after which the grower splits."""
    config = context.config
    if resume is None:
        torch.manual_seed(derive_seed(context.seed, "init", "splitting"))
        model = DSCNNL(widths=[config.start_width] * 6, activation=config.activation).to(device)
    else:  # the grown widths, then the weights
        model = build_model("dscnn-l", **resume["config"]).to(device)
        model.load_state_dict(resume["model"])
    optimizer = _adam(model, config)
    amount = {"parameter_ratio" if config.growth == "parameters" else "fraction": config.growth_ratio}
    policy = GrowthPolicy(
        first=1,
        every=1,
        max_stages=config.max_stages,
        max_parameters=config.max_parameters,
        epsilon=config.epsilon,
        threshold=config.threshold,
        solver=config.solver,
        statistics_batches=None,
        **amount,
    )
    grower = Grower(
        model,
        context.example(),
        context.statistics_batches(),
        policy=policy,
        loss_function=F.cross_entropy,
        optimizer=optimizer,
        seed=derive_seed(context.seed, "split"),
    )
    rows: list[dict[str, Any]] = []
    progress = _Progress()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        grower.load_state_dict(resume["grower"])
        rows = resume["rows"]
        progress = _Progress.from_state(resume["progress"])
        torch.set_rng_state(resume["rng"])

    def save() -> None:
        context.save("splitting", model, optimizer, progress, grower=grower.state_dict(), rows=rows)

    while True:
        stage = len(grower.history)
        measured = _train_schedule(context, f"splitting-{stage}", model, optimizer, progress, save)
        row = _row("splitting", stage, model, measured)
        rows.append(row)
        context.reporter.message(f"seed {context.seed} splitting stage {stage}: {_describe(row)}")
        grown = grower.epoch_end({"loss": row["validation_loss"], "accuracy": row["validation_accuracy"]})
        if grown is None:
            break
        progress = _Progress()
        save()
    context.reporter.message(f"seed {context.seed} splitting stopped: {grower.stop_reason}")
    return {
        "rows": rows,
        "growth": [stage.to_dict() for stage in grower.history],
        "stop_reason": grower.stop_reason,
    }


def _task_train(
    context: _Context,
    task: str,
    resume: dict[str, Any] | None,
    make_model: Callable[[], DSCNNL],
    device: torch.device,
    *,
    sparsity: float = 0.0,
) -> tuple[DSCNNL, dict[str, Any]]:
    """Train one network (``make_model()``, or the checkpoint's) with the schedule; returns it and its measures."""
    config = context.config
    if resume is None:
        model = make_model().to(device)
    else:
        model = build_model("dscnn-l", **resume["config"]).to(device)
        model.load_state_dict(resume["model"])
    optimizer = _adam(model, config)
    progress = _Progress()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        progress = _Progress.from_state(resume["progress"])
        torch.set_rng_state(resume["rng"])
    measured = _train_schedule(
        context,
        task,
        model,
        optimizer,
        progress,
        lambda: context.save(task, model, optimizer, progress),
        sparsity=sparsity,
    )
    return model, measured


def _reference(config: KwsConfig, seed: int, task: str) -> Callable[[], DSCNNL]:
    def make() -> DSCNNL:
        torch.manual_seed(derive_seed(seed, "init", task))
        return DSCNNL(widths=[config.reference_width] * 6, activation=config.activation)

    return make


def _bn_pruned(
    context: _Context, device: torch.device, ratio: float, reference_parameters: int
) -> Callable[[], DSCNNL]:
    """BN-prune's start: the slimming-trained reference pruned to ``ratio`` of its parameters."""

    def make() -> DSCNNL:
        source, _ = load_model(context.folder / "reference-slim", map_location=device)
        model, _ = prune_to_ratio(
            source,
            context.example(),
            "bn",
            ratio,
            reference_parameters=reference_parameters,
            max_ratio=context.config.max_pruning_ratio,
        )
        return model

    return make


def pruning_targets(splitting_rows: list[dict[str, Any]], reference_parameters: int, points: int) -> list[int]:
    """The splitting stages whose sizes BN-prune targets: ``points`` of those smaller than the reference, evenly
    spread over them, the largest included."""
    candidates = [row["stage"] for row in splitting_rows if row["parameters"] < reference_parameters]
    if not candidates or points == 0:
        return []
    picks = np.unique(np.round(np.linspace(len(candidates) - 1, 0, min(points, len(candidates)))).astype(int))
    return [candidates[i] for i in picks]


def run_seed(
    config: KwsConfig,
    seed: int,
    reporter: Reporter,
    *,
    workdir: Path,
    resume: bool = False,
    stop_after_evaluations: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) every task of the comparison for one seed; returns the JSON-ready results."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SplitgrowError("torch sees no CUDA device", f"device {config.device}", "use --device cpu")
    data = load_data(config, reporter)
    label = data_label(data)
    features = compute_features(data, config, seed, device)
    if features.training.shape[0] < config.batch_size:
        raise ConfigError(
            f"batch_size {config.batch_size} exceeds the {features.training.shape[0]} training examples",
            "batch_size",
            "lower batch_size or raise augmented_copies",
        )
    checkpoint = seed_checkpoint(EXPERIMENT, config, seed, workdir, resume=resume)
    context = _Context(config, seed, workdir, reporter, checkpoint, features, stop_after_evaluations)
    completed: dict[str, Any] = checkpoint.progress["completed"]
    in_progress = checkpoint.tensors() if resume else None

    def resume_for(task: str) -> dict[str, Any] | None:
        return in_progress if in_progress is not None and in_progress.get("task") == task else None

    def finish(task: str, value: Any) -> None:
        completed[task] = value
        checkpoint.progress["current"] = None
        checkpoint.save(None)

    if "splitting" not in completed:
        finish("splitting", _task_splitting(context, resume_for("splitting"), device))
    if "reference" not in completed:
        model, measured = _task_train(
            context, "reference", resume_for("reference"), _reference(config, seed, "reference"), device
        )
        row = _row("dscnn", None, model, measured)
        reporter.message(f"seed {seed} DS-CNN L at width {config.reference_width}: {_describe(row)}")
        finish("reference", row)
    reference_parameters = dscnn_cost([config.reference_width] * 6, "L").parameters
    targets = pruning_targets(completed["splitting"]["rows"], reference_parameters, config.prune_points)
    if targets and "reference-slim" not in completed:
        model, measured = _task_train(
            context,
            "reference-slim",
            resume_for("reference-slim"),
            _reference(config, seed, "reference-slim"),
            device,
            sparsity=config.bn_sparsity,
        )
        save_model(workdir / "reference-slim", model)
        finish("reference-slim", _row("dscnn-slim", None, model, measured))
    for stage in targets:
        task = f"prune-{stage}"
        if task in completed:
            continue
        target = next(row for row in completed["splitting"]["rows"] if row["stage"] == stage)
        make = _bn_pruned(context, device, target["parameters"] / reference_parameters, reference_parameters)
        model, measured = _task_train(context, task, resume_for(task), make, device)
        row = {**_row("bn-prune", stage, model, measured), "target_parameters": target["parameters"]}
        reporter.message(f"seed {seed} BN-prune to stage {stage}'s size: {_describe(row)}")
        finish(task, row)
    rows = [*completed["splitting"]["rows"], completed["reference"]]
    rows += [completed[f"prune-{stage}"] for stage in targets]
    return {
        "dataset": data.name,
        "data": label,
        "clips": {partition: len(data.partition(partition)) for partition in ("training", "validation", "testing")},
        "training_examples": int(features.training.shape[0]),
        "reference_width": config.reference_width,
        "reference_parameters": reference_parameters,
        "rows": rows,
        "bn_prune_source": completed.get("reference-slim"),
        "growth": completed["splitting"]["growth"],
        "stop_reason": completed["splitting"]["stop_reason"],
        "wall_time_s": checkpoint.elapsed(),  # over every session of a resumed run, not only the last
    }


# ------------------------------------------------------------------------------------------ figures and summary

_STYLES = {
    "splitting": {"color": "tab:red", "marker": "o", "linestyle": "-"},
    "bn-prune": {"color": "tab:blue", "marker": "s", "linestyle": "--"},
    "dscnn": {"color": "black", "marker": "*", "markersize": 12, "linestyle": "none"},
}


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    """Figure 4 (test accuracy against parameters and against operations) and the validation curves."""
    figure = new_figure(figsize=(10.0, 4.2), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, key, axis_label in zip(
        axes, ("parameters", "operations"), ("parameters", "operations per clip (2 x multiply-accumulates)")
    ):
        for method, style in _STYLES.items():
            rows = sorted((r for r in results["rows"] if r["method"] == method), key=lambda r: r[key])
            if rows:
                label = METHOD_LABELS[method]
                if method == "dscnn":
                    label += f" (width {results['reference_width']})"
                ax.plot([r[key] for r in rows], [100 * r["test_accuracy"] for r in rows], label=label, **style)
        ax.set_xscale("log")
        ax.set_xlabel(axis_label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Figure 4, seed {results['seed']}: {results['data']}", fontsize=10)
    figure_path = directory / "accuracy_vs_size.png"
    save_figure(figure, figure_path)
    return [figure_path, _plot_curves(results, directory / "validation_curves.png")]


def _plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Validation accuracy against training steps: the splitting path stage after stage, and the reference."""
    figure = new_figure(figsize=(8.0, 4.0), layout="constrained")
    ax = figure.subplots()
    offset = 0
    for row in (r for r in results["rows"] if r["method"] == "splitting"):
        steps = [offset + point["step"] for point in row["curve"]]
        ax.plot(steps, [100 * p["validation_accuracy"] for p in row["curve"]], color="tab:red", lw=1)
        ax.plot(offset + row["best_step"], 100 * row["validation_accuracy"], "o", color="tab:red", ms=4)
        if offset:
            ax.axvline(offset, color="tab:red", lw=0.5, alpha=0.4)
        offset += row["steps"]
    ax.plot([], [], "o-", color="tab:red", ms=4, label="splitting (ours): stages; dots = best checkpoints")
    for row in (r for r in results["rows"] if r["method"] == "dscnn"):
        curve = row["curve"]
        label = f"DS-CNN L (width {results['reference_width']})"
        ax.plot([p["step"] for p in curve], [100 * p["validation_accuracy"] for p in curve], color="black", label=label)
    ax.set_xlabel("training steps (splitting: all stages in sequence)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"seed {results['seed']}: {results['data']}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(figure, path)
    return path


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    text = f"{scale * np.mean(values):.{digits}f}"
    return text + (f" ± {scale * np.std(values):.{digits}f}" if len(values) > 1 else "")


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Table 1's rows ("Ours": the last splitting stage; "DS-CNN": the reference) as mean ± std over seeds, and every
    stage and pruned network of Figure 4."""
    first = all_results[0]
    groups: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
    for results in all_results:
        for row in results["rows"]:
            groups.setdefault((row["method"], row["stage"]), []).append(row)
    order = {"splitting": 0, "bn-prune": 1, "dscnn": 2}
    stage_rows, table_rows = [], []
    for (method, stage), rows in sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1] or 0)):
        entry = {
            "method": method,
            "stage": stage,
            "seeds": len(rows),
            "parameters": float(np.mean([r["parameters"] for r in rows])),
            "operations": float(np.mean([r["operations"] for r in rows])),
            "validation_accuracy_mean": float(np.mean([r["validation_accuracy"] for r in rows])),
            "test_accuracy_mean": float(np.mean([r["test_accuracy"] for r in rows])),
            "test_accuracy_std": float(np.std([r["test_accuracy"] for r in rows])),
        }
        stage_rows.append(entry)
        table_rows.append(
            [
                METHOD_LABELS[method],
                "-" if stage is None else stage,
                len(rows),
                f"{entry['parameters']:,.0f}",
                f"{entry['operations'] / 1e6:.2f}",
                _mean_std([r["validation_accuracy"] for r in rows]),
                _mean_std([r["test_accuracy"] for r in rows]),
            ]
        )
    finals = [[r for r in results["rows"] if r["method"] == "splitting"][-1] for results in all_results]
    references = [next(r for r in results["rows"] if r["method"] == "dscnn") for results in all_results]
    table1 = {}
    table1_rows = []
    for method, rows in (("splitting", finals), ("dscnn", references)):
        accuracy = [r["test_accuracy"] for r in rows]
        table1[method] = {
            "test_accuracy_mean": float(np.mean(accuracy)),
            "test_accuracy_std": float(np.std(accuracy)),
            "parameters": float(np.mean([r["parameters"] for r in rows])),
            "operations": float(np.mean([r["operations"] for r in rows])),
            "stages": [r["stage"] for r in rows],
        }
        paper_accuracy, paper_parameters, paper_operations = PAPER_TABLE1[method]
        name = "Ours (splitting, last stage)"
        if method == "dscnn":
            name = f"DS-CNN L (width {first['reference_width']})"
        table1_rows.append(
            [
                name,
                _mean_std(accuracy),
                f"{table1[method]['parameters'] / 1e3:.1f}",
                f"{table1[method]['operations'] / 1e6:.2f}",
                f"{paper_accuracy:.2f} / {paper_parameters / 1e3:.1f} / {paper_operations / 1e6:.1f}",
            ]
        )
    # BN-prune against splitting at the same size, seed by seed
    comparisons = [
        (pruned, next(r for r in results["rows"] if r["method"] == "splitting" and r["stage"] == pruned["stage"]))
        for results in all_results
        for pruned in results["rows"]
        if pruned["method"] == "bn-prune"
    ]
    wins = sum(ours["test_accuracy"] > pruned["test_accuracy"] for pruned, ours in comparisons)
    seeds = ", ".join(str(results["seed"]) for results in all_results)
    stops = "; ".join(f"seed {results['seed']}: {results['stop_reason']}" for results in all_results)
    table = (
        f"Keyword spotting, {first['data']}; seeds {seeds}; test accuracy in % (mean ± std over seeds)\n\n"
        "Table 1 (Ours = the last splitting stage)\n\n"
        + markdown_table(
            ["method", "test accuracy %", "params (K)", "ops (M)", "paper on Speech Commands: acc / params K / ops M"],
            table1_rows,
        )
        + "\n\nFigure 4: every stage and pruned network\n\n"
        + markdown_table(
            ["method", "stage", "seeds", "parameters", "ops (M)", "validation %", "test %"],
            table_rows,
        )
        + f"\n\nSplitting more accurate than BN-prune at the same size in {wins} of {len(comparisons)} comparisons "
        "(seed by seed)." + f"\nGrowth stopped: {stops}."
    )
    summary = {
        "data": first["data"],
        "table1": table1,
        "rows": stage_rows,
        "splitting_wins": wins,
        "comparisons": len(comparisons),
    }
    return summary, table


EXPERIMENT = Experiment(
    name="kws",
    description="keyword spotting (paper Section 3, Table 1, Figure 4): DS-CNN grown by splitting vs DS-CNN L",
    config_class=KwsConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    # small tensors: a second thread gains little, and on a busy machine makes every step several times slower
    threads=1,
    checkpoints=True,
    #: data_root and download are not free: without them the run uses the synthetic set
    resume_free_keys=frozenset({"device"}),
)
