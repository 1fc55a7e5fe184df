"""Experiment ``images``: grow VGG19 or MobileNetV1 by splitting and compare with pruning at equal size
(paper Section 3, Figure 3, Appendix B.3).

One run, for one dataset and one model, is a list of *tasks*, each checkpointed after every epoch:

1. ``splitting``: train the small network, then ``stages`` times: compute every splitting index, split the
   neurons with the most negative ones (``growth_ratio`` of the current coupling groups: a MobileNet channel is
   its pointwise and its depthwise filter together), fine-tune. The public growth loop
   (:class:`~splitgrow.growth.Grower`) does it. The accuracy and size after each stage are the "fine-tuned"
   splitting curve (Figure 3a-b). ``growth_methods`` adds ``signed`` (signed splitting) and ``firefly`` (splits
   and new neurons), grown the same way; the pruning targets are the sizes the first growth method reached.
2. ``full`` and ``full-slim``: the full-size network trained from scratch, without and with network slimming's
   sparsity (L1 on BatchNorm scales), for as many epochs as the splitting path takes in all.
3. ``prune-<method>-<k>``: the trained full network pruned to the parameter ratio splitting reached at stage k, then
   fine-tuned (L1-norm filter pruning from ``full``; BatchNorm-scale pruning from ``full-slim``).
4. ``retrain-<method>-<k>``: every architecture found above trained again from a random start, for as many epochs
   as the full-size networks (Figure 3c-d).

Parameter ratios are relative to the full-size network. Everything a task needs to continue (widths, state_dict,
optimiser and scheduler state, data order and RNG state, results so far) is written atomically after every
epoch; ``--resume`` continues a killed run and reaches the same numbers as an uninterrupted one on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import parallel
from ..artifacts import new_figure, save_figure
from ..checkpoints import Checkpoint
from ..classification import (
    evaluate,
    make_optimizer,
    make_scheduler,
    restart_learning_rate,
    train_epoch,
)
from ..config import require, require_folder_or_none, require_step_size
from ..data import DATASETS, Batches, ImageDataset, load_splits
from ..errors import ConfigError, DivergenceError, SplitgrowError
from ..firefly import FireflyOptions
from ..growth import Grower, GrowthPolicy
from ..inspection import model_flops, non_finite_tensor
from ..models import build_model, load_model, save_model
from ..pruning import LABELS as PRUNING_LABELS
from ..pruning import PRUNING_METHODS, prune_to_ratio
from ..statistics import SOLVERS
from ..statistics.distributed import reducer
from ..statistics.splitting import ITERATIVE_TOLERANCE
from ..surgery import parameter_count
from .common import Experiment, Reporter, derive_seed, markdown_table, seed_checkpoint

MODELS = ("vgg19", "mobilenetv1")
#: the ways the small network grows (the policy's method)
GROWTH_METHODS = ("splitting", "signed", "firefly")
METHOD_LABELS = {
    "splitting": "splitting (ours)",
    "signed": "signed splitting",
    "firefly": "Firefly (splits + new neurons)",
    **PRUNING_LABELS,
}
METHOD_COLORS = {
    "splitting": "tab:red",
    "signed": "tab:purple",
    "firefly": "tab:orange",
    "bn": "tab:blue",
    "l1": "tab:green",
}


@dataclass
class ImagesConfig:
    """Settings of the ``images`` experiment. The defaults are the reduced CPU protocol on Fashion-MNIST
    (``configs/images-cpu.yaml``); ``configs/images-paper.yaml`` is the paper's CIFAR-10 protocol."""

    #: fashion-mnist, mnist or cifar10
    dataset: str = "fashion-mnist"
    #: the network: vgg19 or mobilenetv1
    model: str = "vgg19"
    #: folder of the dataset files (default: the Debian package for Fashion-MNIST, else ~/.cache/splitgrow)
    data_root: str | None = None
    #: fetch the dataset's official files into data_root when they are missing (MD5-checked)
    download: bool = False
    #: cpu, cuda or cuda:N
    device: str = "cpu"
    #: use only the first this many training / test images (0: all)
    train_samples: int = 8000
    #: use only the first this many test images (0: all)
    test_samples: int = 2000
    #: images are zero-padded to this size (VGG19 needs 32: five 2x2 poolings)
    image_size: int = 32
    #: starting width of every layer (MobileNetV1: of the pointwise layers; its first conv gets twice as many)
    start_width: int = 8
    #: width of the full-size network the pruning baselines start from (parameter ratio 1)
    full_width: int = 32
    #: or its widths layer by layer (e.g. the standard VGG19 64 ... 512), instead of full_width
    full_widths: list[int] | None = None
    #: images per training batch
    batch_size: int = 64
    #: SGD's learning rate at the start of every phase
    learning_rate: float = 0.1
    #: SGD's (Nesterov) momentum
    momentum: float = 0.9
    #: SGD's weight decay
    weight_decay: float = 1e-4
    #: epochs of the splitting path's first training (learning rate / 10 at 50% and 75% of every phase)
    epochs: int = 6
    #: epochs of fine-tuning after each split or pruning
    finetune_epochs: int = 4
    #: epochs of the full-size networks the pruning baselines start from (0: as many as the splitting path in
    #: all, epochs + stages * finetune_epochs, so that neither side gets more training)
    full_epochs: int = 0
    #: epochs of every retraining from scratch (0: as many as the full-size networks)
    retrain_epochs: int = 0
    #: growth stages (each followed by finetune_epochs of training)
    stages: int = 3
    #: neurons added per stage, as a fraction of the current number of neurons (m_*)
    growth_ratio: float = 0.5
    #: instead of growth_ratio: a budget of added parameters per stage, as a fraction of the current count,
    #: spent by energy-aware selection (0: off)
    parameter_budget: float = 0.0
    #: the split step size: offspring at theta +/- epsilon v
    epsilon: float = 0.1
    #: lambda_*: only neurons with a splitting index below it are split (<= 0)
    threshold: float = 0.0
    #: eigensolver: auto (dense for small neurons, else matrix-free LOBPCG), dense, lobpcg or rayleigh
    solver: str = "auto"
    #: training batches used for the splitting statistics (no augmentation)
    split_batches: int = 16
    #: LOBPCG's relative residual (README's MobileNetV1 growth-method runs: 0.001, the default when they were made)
    tolerance: float = ITERATIVE_TOLERANCE
    #: the matrix-free statistics of a convolution read at most about this many output positions per image, on a
    #: grid with a random offset per batch (an unbiased estimate; 0: every position)
    max_positions: int = 0
    #: network slimming's L1 penalty on BatchNorm scales
    bn_sparsity: float = 1e-4
    #: the pruning baselines: bn (network slimming) and l1 (L1-norm filter pruning)
    pruning_methods: list[str] = field(default_factory=lambda: ["bn", "l1"])
    #: how the small network grows: splitting (the paper), signed (signed splitting), firefly (new neurons too)
    growth_methods: list[str] = field(default_factory=lambda: ["splitting"])
    #: signed splitting's bound c on the sum of |offspring weights|
    weight_bound: float = 3.0
    #: Firefly: new-neuron candidates per layer
    firefly_candidates: int = 4
    #: Firefly: gradient-ascent steps on the new-neuron candidates' incoming weights
    firefly_steps: int = 4
    #: the largest fraction of channels a pruning baseline may remove
    max_pruning_ratio: float = 0.9
    #: also train every architecture found from a random start
    retrain: bool = True

    def validate(self) -> None:
        require(self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        require_folder_or_none(self.data_root, "data_root")
        require(self.model in MODELS, f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        require(
            self.device == "cpu" or self.device.startswith("cuda"), f"device must be cpu or cuda, got {self.device!r}"
        )
        require(self.train_samples >= 0 and self.test_samples >= 0, "train_samples and test_samples must be >= 0")
        require(self.image_size >= 32 or self.model != "vgg19", "VGG19 needs image_size >= 32 (five 2x2 poolings)")
        layers = 16 if self.model == "vgg19" else 14
        require(
            self.full_widths is None or (len(self.full_widths) == layers and min(self.full_widths) >= 1),
            f"full_widths must list {layers} positive widths for {self.model}",
        )
        if self.full_widths is None:
            require(1 <= self.start_width <= self.full_width, "need 1 <= start_width <= full_width")
        else:  # full_widths replaces full_width
            require(
                1 <= self.start_width <= min(self.full_widths), "need 1 <= start_width <= every entry of full_widths"
            )
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(
            self.epochs >= 1 and self.finetune_epochs >= 1,
            "epochs and finetune_epochs must be >= 1 (a growth stage happens between two phases of training)",
        )
        require(self.full_epochs >= 0, "full_epochs must be >= 0 (0: epochs + stages * finetune_epochs)")
        require(self.retrain_epochs >= 0, "retrain_epochs must be >= 0 (0: as many as full_epochs)")
        require(self.stages >= 0, "stages must be >= 0")
        require(self.growth_ratio > 0, "growth_ratio must be > 0")
        require(self.parameter_budget >= 0, "parameter_budget must be >= 0")
        require_step_size(self.epsilon)
        require(self.threshold <= 0, f"threshold (lambda_*) must be <= 0, got {self.threshold}")
        require(self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        require(self.split_batches >= 1, "split_batches must be >= 1")
        require(0 < self.tolerance < 1, f"tolerance (LOBPCG's residual) must be in (0, 1), got {self.tolerance}")
        require(self.max_positions >= 0, f"max_positions must be >= 0 (0: every position), got {self.max_positions}")
        unknown = [m for m in self.pruning_methods if m not in PRUNING_METHODS]
        require(not unknown, f"unknown pruning method(s) {unknown}; known: {', '.join(PRUNING_METHODS)}")
        require(self.bn_sparsity >= 0, f"bn_sparsity (an L1 penalty) must be >= 0, got {self.bn_sparsity}")
        require(0 < self.max_pruning_ratio < 1, "max_pruning_ratio must be in (0, 1)")
        unknown = [m for m in self.growth_methods if m not in GROWTH_METHODS]
        require(
            bool(self.growth_methods) and not unknown,
            f"growth_methods must list some of {', '.join(GROWTH_METHODS)}, got {self.growth_methods}",
        )
        require(self.weight_bound >= 1, f"weight_bound (c) must be >= 1, got {self.weight_bound}")
        require(self.firefly_candidates >= 1 and self.firefly_steps >= 0, "need firefly_candidates >= 1, steps >= 0")


def full_epochs(config: ImagesConfig) -> int:
    """Epochs of the full-size networks: as many as the splitting path in all, unless set."""
    return config.full_epochs or config.epochs + config.stages * config.finetune_epochs


def model_config(
    config: ImagesConfig, width: int, channels: int, classes: int, widths: list[int] | None = None
) -> dict[str, Any]:
    if widths is not None:
        widths = list(widths)
    elif config.model == "vgg19":
        widths = [width] * 16
    else:
        widths = [2 * width] + [width] * 13
    return {
        "widths": widths,
        "num_classes": classes,
        "in_channels": channels,
        "activation": "softplus",
        "image_size": config.image_size,
    }


# ------------------------------------------------------------------------------------------ checkpoints


class _Interrupted(Exception):
    """Raised by the test hook that simulates a killed run."""


@dataclass
class _Context:
    config: ImagesConfig
    seed: int
    folder: Path
    reporter: Reporter
    checkpoint: Checkpoint
    train: ImageDataset
    test: ImageDataset
    device: torch.device
    stop_after_epochs: int | None = None
    epochs_run: int = 0

    def batches(
        self,
        dataset: ImageDataset,
        *,
        training: bool,
        generator: torch.Generator | None = None,
        shard: bool = True,
    ) -> Batches:
        """Batches of ``dataset``; in a data-parallel run (``torchrun``), this process's rows of each (``shard``)."""
        processes = parallel.world()[1]
        return Batches(
            dataset,
            self.config.batch_size,
            shuffle=training,
            augmentation=training,
            size=self.config.image_size,
            generator=generator,
            device=self.device,
            rows=parallel.shard_rows(self.config.batch_size) if shard and processes > 1 else None,
        )

    def example(self) -> torch.Tensor:
        images, _ = next(iter(self.batches(self.test.subset(2), training=False, shard=False)))
        return images

    def tick(self) -> None:
        """Count an epoch; the test hook stops the run here (after the checkpoint), like a kill would."""
        self.epochs_run += 1
        if self.stop_after_epochs is not None and self.epochs_run >= self.stop_after_epochs:
            raise _Interrupted


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Trainer:
    """Trains one model through phases of epochs, with a checkpoint after every epoch.

    With ``resume`` (a checkpoint of this task) the optimiser, data order and RNG states are restored, and
    :meth:`phase` continues a phase from the epoch the checkpoint reached.
    """

    def __init__(self, context: _Context, task: str, model, *, sparsity: float = 0.0, resume=None) -> None:
        self.context = context
        self.task = task
        self.model = model.to(context.device)
        self.trained = parallel.wrap(self.model)  # under DDP in a data-parallel run
        self.sparsity = sparsity
        config = context.config
        self.optimizer = make_optimizer(
            self.model, config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.generator = torch.Generator().manual_seed(derive_seed(context.seed, "data", task))
        self.history: list[dict[str, Any]] = []
        self.resume = resume
        if resume is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
            self.generator.set_state(resume["generator"])
            _set_rng_state(resume["rng"])
            self.history = resume["history"]

    def save(self, phase: int, epoch: int, done: bool, scheduler, extra: dict[str, Any]) -> None:
        context = self.context
        context.checkpoint.progress["current"] = {"task": self.task, "phase": phase, "epoch": epoch, "done": done}
        context.checkpoint.save(
            {
                "task": self.task,
                "architecture": self.model.architecture,
                "config": self.model.config(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "rng": _rng_state(),
                "phase": phase,
                "epoch": epoch,
                "done": done,
                "history": self.history,
                "extra": extra,
            }
        )

    def phase(self, phase: int, epochs: int, extra: dict[str, Any]) -> dict[str, float]:
        """Train ``epochs`` epochs as phase ``phase`` (continuing it if the checkpoint is inside it) and return
        the test accuracy and loss after it. The caller marks the phase done once it has recorded the result."""
        context = self.context
        restart_learning_rate(self.optimizer, context.config.learning_rate)
        scheduler = make_scheduler(self.optimizer, epochs)
        start = 0
        resume = self.resume
        if resume is not None and resume["phase"] == phase and not resume["done"]:
            # continue the phase (after its last epoch, only the evaluation is left)
            self.optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            start = resume["epoch"]
        self.resume = None
        train_batches = context.batches(context.train, training=True, generator=self.generator)
        for epoch in range(start, epochs):
            description = f"seed {context.seed} {self.task} phase {phase} epoch {epoch + 1}/{epochs}"
            with context.reporter.bar(len(train_batches), description) as bar:
                loss = train_epoch(
                    self.trained,
                    train_batches,
                    self.optimizer,
                    sparsity=self.sparsity,
                    on_batch=lambda _: bar.update(),
                    where=f"seed {context.seed}, {self.task}, phase {phase}, epoch {epoch + 1}",
                    learning_rate="learning_rate",
                )
            parallel.broadcast_buffers(self.model)
            _check_finite_state(self.model, f"seed {context.seed}, {self.task}, epoch {epoch + 1}")
            loss = parallel.mean(loss)
            scheduler.step()
            self.history.append({"phase": phase, "epoch": epoch + 1, "train_loss": loss})
            self.save(phase, epoch + 1, False, scheduler, extra)
            context.tick()
        return evaluate_only(context, self.model)


def _check_finite_state(model: torch.nn.Module, where: str) -> None:
    """Refuse to go on from NaN or infinite weights or BatchNorm statistics: training checks each batch's loss before
    its step, so the epoch's last step can diverge unseen (the splitting statistics or the next epoch would meet it,
    and blame the data)."""
    broken = non_finite_tensor(model)
    if broken is not None:
        raise DivergenceError(
            f"training diverged: '{broken}' (weights or BatchNorm statistics) became NaN or infinite",
            where,
            "lower learning_rate",
        )


def _restore(resume: dict[str, Any]):
    model = build_model(resume["architecture"], **resume["config"])
    model.load_state_dict(resume["model"])
    return model


def _row(method: str, variant: str, stage: int, model, full_parameters: int, flops: int, measured: dict) -> dict:
    parameters = parameter_count(model)
    return {
        "method": method,
        "variant": variant,
        "stage": stage,
        "parameters": parameters,
        "ratio": parameters / full_parameters,
        "flops": flops,
        "widths": model.config()["widths"],
        **measured,
    }


def _flops(model, example: torch.Tensor) -> int:
    return model_flops(model, example)


# ------------------------------------------------------------------------------------------ tasks


def _progress_saved(context: _Context) -> None:
    """After an epoch of the splitting task (whose tensors the grower checkpoints itself): the run's progress and
    time, then the test hook that simulates a kill."""
    context.checkpoint.save(None)
    context.tick()


def _task_splitting(context: _Context, resume: bool, method: str = "splitting") -> dict[str, Any]:
    """Grow the small network with :class:`~splitgrow.growth.Grower` and growth method ``method``: train, then at
    the end of every phase evaluate, grow (``growth_ratio`` of the coupling groups, or a parameter budget) and
    fine-tune with the learning rate restarted; the grower checkpoints after every epoch (``<method>.pt``)."""
    config = context.config
    example = context.example()
    full_parameters = context.checkpoint.progress["full_parameters"]
    torch.manual_seed(derive_seed(context.seed, "init", "splitting"))  # every growth method: the same start
    model = build_model(config.model, **context.checkpoint.progress["start_config"]).to(context.device)
    optimizer = make_optimizer(model, config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(derive_seed(context.seed, "data", "splitting"))  # same data order
    statistics = [
        batch for _, batch in zip(range(config.split_batches), context.batches(context.train, training=False))
    ]
    amount = (
        {"parameter_ratio": config.parameter_budget}
        if config.parameter_budget > 0
        else {"fraction": config.growth_ratio}
    )
    policy = GrowthPolicy(
        first=config.epochs,
        every=config.finetune_epochs,
        max_stages=config.stages,
        epsilon=config.epsilon,
        threshold=config.threshold,
        solver=config.solver,
        statistics_batches=None,
        method=method,
        weight_bound=config.weight_bound,
        firefly=FireflyOptions(candidates_per_site=config.firefly_candidates, steps=config.firefly_steps),
        options={"tolerance": config.tolerance, "max_positions": config.max_positions or None},
        **amount,
    )
    trained: list[torch.nn.Module] = []  # the DDP wrapper of a data-parallel run, made again after every split

    def grown(stage) -> None:
        parallel.check_in_step(model, f"seed {context.seed} {method} growth stage {stage.stage}")
        trained.clear()

    grower = Grower(
        model,
        example,
        statistics,
        policy=policy,
        loss_function=F.cross_entropy,
        optimizer=optimizer,
        seed=derive_seed(context.seed, "split"),
        on_grow=grown,
    )
    train_batches = context.batches(context.train, training=True, generator=generator)
    total = config.epochs + config.stages * config.finetune_epochs

    def train(epoch: int) -> float:
        stage = len(grower.history)
        description = f"seed {context.seed} {method} stage {stage} epoch {epoch + 1}/{total}"
        if not trained:  # made here, not earlier: resuming resizes the model first
            trained.append(parallel.wrap(model))
        with context.reporter.bar(len(train_batches), description) as bar:
            loss = train_epoch(
                trained[0],
                train_batches,
                optimizer,
                on_batch=lambda _: bar.update(),
                where=f"seed {context.seed}, {method}, epoch {epoch + 1}",
                learning_rate="learning_rate",
            )
        parallel.broadcast_buffers(model)  # first: every process then checks the same state, and stops alike
        _check_finite_state(model, f"seed {context.seed}, {method}, epoch {epoch + 1}")
        return parallel.mean(loss)

    def phase_end(stage: int) -> dict[str, Any]:
        row = _row(
            method,
            "fine-tuned",
            stage,
            model,
            full_parameters,
            _flops(model, example),
            evaluate_only(context, model),
        )
        context.reporter.message(
            f"seed {context.seed} {method} stage {stage}: {row['parameters']:,} parameters "
            f"(ratio {row['ratio']:.3f}), test accuracy {row['accuracy']:.4f}"
        )
        return row

    def schedule(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.MultiStepLR:
        restart_learning_rate(optimizer, config.learning_rate)
        return make_scheduler(optimizer, epochs)

    history = grower.fit(
        train,
        total,
        scheduler_factory=schedule,
        on_phase_end=phase_end,
        on_epoch_end=lambda epoch: _progress_saved(context),
        checkpoint=context.folder / f"{method}.pt",
        resume=resume,
        extra_state=(generator.get_state, generator.set_state),
    )
    return {"rows": list(grower.phase_metrics), "growth": [stage.to_dict() for stage in history]}


def _task_train_full(context: _Context, resume: dict[str, Any] | None, task: str, sparsity: float) -> dict[str, Any]:
    config = context.config
    if resume is not None:
        model = _restore(resume)
    else:
        torch.manual_seed(derive_seed(context.seed, "init", task))
        model = build_model(config.model, **context.checkpoint.progress["full_config"])
    trainer = _Trainer(context, task, model, sparsity=sparsity, resume=resume)
    measured = trainer.phase(0, full_epochs(config), {})
    if parallel.is_main():
        save_model(context.folder / task, trainer.model, trainer.history)
    parallel.barrier()  # the pruning tasks of every process read it
    example = context.example()
    full_parameters = context.checkpoint.progress["full_parameters"]
    row = _row(task, "trained", 0, trainer.model, full_parameters, _flops(trainer.model, example), measured)
    context.reporter.message(f"seed {context.seed} {task}: test accuracy {measured['accuracy']:.4f}")
    return row


def _task_prune(context: _Context, resume: dict[str, Any] | None, method: str, stage: int, target: float) -> dict:
    config = context.config
    example = context.example()
    full_parameters = context.checkpoint.progress["full_parameters"]
    task = f"prune-{method}-{stage}"
    if resume is not None:
        model = _restore(resume)
    else:
        source, _ = load_model(context.folder / ("full-slim" if method == "bn" else "full"))
        model, _ = prune_to_ratio(
            source.to(context.device),
            example,
            method,
            target,
            reference_parameters=full_parameters,
            max_ratio=config.max_pruning_ratio,
        )
        parallel.check_in_step(model, f"seed {context.seed} {task}")
    trainer = _Trainer(context, task, model, resume=resume)
    if config.finetune_epochs:
        measured = trainer.phase(0, config.finetune_epochs, {})
    else:
        measured = evaluate_only(context, trainer.model)
    return _row(method, "fine-tuned", stage, trainer.model, full_parameters, _flops(trainer.model, example), measured)


def evaluate_only(context: _Context, model) -> dict[str, float]:
    """Test accuracy and loss (each process of a data-parallel run evaluates its shard; the counts are summed)."""
    accuracy, loss = evaluate(model, context.batches(context.test, training=False), reduce=reducer())
    return {"accuracy": accuracy, "test_loss": loss}


def _task_retrain(context: _Context, resume: dict[str, Any] | None, source: dict[str, Any]) -> dict[str, Any]:
    """Train the architecture of a finished row again from a random start."""
    config = context.config
    task = f"retrain-{source['method']}-{source['stage']}"
    if resume is not None:
        model = _restore(resume)
    else:
        torch.manual_seed(derive_seed(context.seed, "init", task))
        architecture = {**context.checkpoint.progress["start_config"], "widths": source["widths"]}
        model = build_model(config.model, **architecture)
    trainer = _Trainer(context, task, model, resume=resume)
    measured = trainer.phase(0, config.retrain_epochs or full_epochs(config), {})
    example = context.example()
    full_parameters = context.checkpoint.progress["full_parameters"]
    return _row(
        source["method"],
        "retrained",
        source["stage"],
        trainer.model,
        full_parameters,
        _flops(trainer.model, example),
        measured,
    )


def run_seed(
    config: ImagesConfig,
    seed: int,
    reporter: Reporter,
    *,
    workdir: Path,
    resume: bool = False,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) every task of the comparison for one seed; returns the JSON-ready results.

    Launched by ``torchrun`` (inside :func:`splitgrow.parallel.process_group`), every process trains, evaluates and
    computes splitting statistics on its rows of each batch, and rank 0 writes the files."""
    device = parallel.local_device(config.device, parallel.launched())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SplitgrowError("torch sees no CUDA device", f"device {config.device}", "use --device cpu")
    processes = parallel.world()[1]
    if config.batch_size < processes:
        raise ConfigError(
            f"batch_size {config.batch_size} gives some of the {processes} processes no images",
            "batch_size",
            f"set batch_size to at least {processes} (it is the batch of all processes together)",
        )
    root = Path(config.data_root) if config.data_root else None
    with parallel.main_first(config.download):  # one process downloads, the others read its files
        train, test = load_splits(config.dataset, root, download=config.download)
    largest = max(*train.images.shape[-2:], *test.images.shape[-2:])
    if largest > config.image_size:  # images are zero-padded to image_size, never cropped
        raise ConfigError(
            f"{config.dataset} images of up to {largest} pixels a side exceed image_size {config.image_size}",
            "image_size",
            f"set image_size to {largest} or more",
        )
    if config.train_samples:
        train = train.subset(config.train_samples)
    if config.test_samples:
        test = test.subset(config.test_samples)
    checkpoint = seed_checkpoint(EXPERIMENT, config, seed, workdir, resume=resume)
    context = _Context(config, seed, workdir, reporter, checkpoint, train, test, device, stop_after_epochs)
    channels = train.images.shape[1]
    progress = checkpoint.progress
    if "start_config" not in progress:
        progress["start_config"] = model_config(config, config.start_width, channels, train.num_classes)
        progress["full_config"] = model_config(
            config, config.full_width, channels, train.num_classes, config.full_widths
        )
        progress["full_parameters"] = parameter_count(build_model(config.model, **progress["full_config"]))
    completed: dict[str, Any] = progress["completed"]
    in_progress = checkpoint.tensors() if resume else None

    def resume_for(task: str) -> dict[str, Any] | None:
        if in_progress is not None and in_progress.get("task") == task:
            return in_progress
        return None

    def finish(task: str, value: Any) -> None:
        completed[task] = value
        progress["current"] = None
        checkpoint.save(None)

    for method in config.growth_methods:
        if method not in completed:
            finish(method, _task_splitting(context, resume, method))
    splitting_rows = completed[config.growth_methods[0]]["rows"]
    if "l1" in config.pruning_methods and "full" not in completed:
        finish("full", _task_train_full(context, resume_for("full"), "full", 0.0))
    if "bn" in config.pruning_methods and "full-slim" not in completed:
        finish("full-slim", _task_train_full(context, resume_for("full-slim"), "full-slim", config.bn_sparsity))
    targets = [(row["stage"], row["ratio"]) for row in splitting_rows if row["stage"] > 0 and row["ratio"] < 1]
    for method in config.pruning_methods:
        for stage, ratio in targets:
            task = f"prune-{method}-{stage}"
            if task not in completed:
                finish(task, _task_prune(context, resume_for(task), method, stage, ratio))
    if config.retrain:
        sources = [row for m in config.growth_methods for row in completed[m]["rows"] if row["stage"] > 0]
        sources += [completed[f"prune-{m}-{s}"] for m in config.pruning_methods for s, _ in targets]
        for source in sources:
            task = f"retrain-{source['method']}-{source['stage']}"
            if task not in completed:
                finish(task, _task_retrain(context, resume_for(task), source))
    rows = [row for m in config.growth_methods for row in completed[m]["rows"]]
    rows += [value for key, value in completed.items() if key.startswith(("prune-", "retrain-"))]
    references = {key: completed[key] for key in ("full", "full-slim") if key in completed}
    return {
        "dataset": config.dataset,
        "model": config.model,
        "processes": processes,  # data-parallel processes (BatchNorm normalises each one's rows)
        "full_parameters": progress["full_parameters"],
        "rows": rows,
        "growth": {m: completed[m]["growth"] for m in config.growth_methods},
        "full_networks": references,
        "wall_time_s": checkpoint.elapsed(),  # over every session of a resumed run, not only the last
    }


# ------------------------------------------------------------------------------------------ figures and summary


def _minor_ratio_label(value: float, _position: int) -> str:
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    """Accuracy against parameter ratio: fine-tuned (left) and, where the run retrained, retrained (right)."""
    from matplotlib import ticker

    variants = [v for v in ("fine-tuned", "retrained") if any(r["variant"] == v for r in results["rows"])]
    figure = new_figure(figsize=(5.0 * len(variants), 4.0), layout="constrained")
    axes = figure.subplots(1, len(variants), sharey=True, squeeze=False)[0]
    for ax, variant in zip(axes, variants):
        for method, color in METHOD_COLORS.items():
            rows = sorted(
                (r for r in results["rows"] if r["method"] == method and r["variant"] == variant),
                key=lambda r: r["ratio"],
            )
            if rows:
                ax.plot(
                    [r["ratio"] for r in rows],
                    [r["accuracy"] for r in rows],
                    "o-",
                    color=color,
                    label=METHOD_LABELS[method],
                )
        for key, reference in results.get("full_networks", {}).items():
            label = "full size" if key == "full" else "full size, L1 on BN scales"
            ax.axhline(reference["accuracy"], color="gray", lw=0.8, ls="--" if key == "full" else ":", label=label)
        ax.set_xscale("log")
        # plain decimals: the default 3x10^-1-style minor labels collide on a one-decade axis
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_minor_ratio_label))
        ax.set_xlabel("parameters / full-size network")
        ax.set_title(f"{results['model']} on {results['dataset']}: {variant}")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    path = directory / "accuracy_vs_ratio.png"
    save_figure(figure, path)
    return [path, _plot_widths(results, directory / "widths.png")]


def uniformity(widths: list[int], start: list[int]) -> float:
    """How far a network's widths are from a uniform scaling of ``start``: the geometric standard deviation of
    the layers' growth factors (1 for uniform scaling; 2 when a typical layer grew twice or half as much as the
    geometric mean of all)."""
    factors = np.log(np.asarray(widths, dtype=float) / np.asarray(start, dtype=float))
    return float(np.exp(factors.std()))


def _plot_widths(results: dict[str, Any], path: Path) -> Path:
    """The architecture each method found: per-layer widths at every stage (fine-tuned rows)."""
    from matplotlib import ticker

    methods = [m for m in METHOD_COLORS if any(r["method"] == m for r in results["rows"])]
    figure = new_figure(figsize=(4.0 * len(methods), 3.6), layout="constrained")
    axes = figure.subplots(1, len(methods), sharey=True, squeeze=False)[0]
    colors = {0: "tab:gray", 1: "tab:blue", 2: "tab:orange", 3: "tab:red", 4: "tab:purple", 5: "tab:brown"}
    for ax, method in zip(axes, methods):
        rows = sorted(
            (r for r in results["rows"] if r["method"] == method and r["variant"] == "fine-tuned"),
            key=lambda r: r["stage"],
        )
        for row in rows:
            layers = range(1, len(row["widths"]) + 1)
            label = f"stage {row['stage']} (ratio {row['ratio']:.2f})"
            ax.plot(layers, row["widths"], "o-", ms=3, color=colors.get(row["stage"], "black"), label=label)
        ax.set_yscale("log", base=2)
        # plain channel counts (powers of two) on the log axis, whole layer numbers
        ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(METHOD_LABELS[method])
        ax.legend(fontsize=7)
    axes[0].set_ylabel("channels")
    save_figure(figure, path)
    return path


def summarize(all_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Accuracy of every method at every size, averaged over seeds, and whether splitting wins at equal size."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for results in all_results:
        for row in results["rows"]:
            groups.setdefault((row["method"], row["variant"], row["stage"]), []).append(row)
    table_rows, summary_rows = [], []
    for (method, variant, stage), rows in sorted(groups.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])):
        accuracy = [r["accuracy"] for r in rows]
        summary_rows.append(
            {
                "method": method,
                "variant": variant,
                "stage": stage,
                "ratio": float(np.mean([r["ratio"] for r in rows])),
                "parameters": float(np.mean([r["parameters"] for r in rows])),
                "accuracy_mean": float(np.mean(accuracy)),
                "accuracy_std": float(np.std(accuracy)),
                "seeds": len(rows),
            }
        )
        table_rows.append(
            [
                variant,
                stage,
                METHOD_LABELS[method],
                f"{np.mean([r['parameters'] for r in rows]):,.0f}",
                f"{np.mean([r['ratio'] for r in rows]):.3f}",
                f"{100 * np.mean(accuracy):.2f}" + (f" ± {100 * np.std(accuracy):.2f}" if len(rows) > 1 else ""),
            ]
        )
    growth = [m for m in GROWTH_METHODS if any(entry["method"] == m for entry in summary_rows)]
    pruning = [entry for entry in summary_rows if entry["method"] not in GROWTH_METHODS]
    wins: dict[str, list[int]] = {}
    for method in growth:
        won = compared = 0
        for entry in summary_rows:
            if entry["method"] != method or entry["stage"] == 0:
                continue
            for other in pruning:
                if other["variant"] == entry["variant"] and other["stage"] == entry["stage"]:
                    compared += 1
                    won += int(entry["accuracy_mean"] > other["accuracy_mean"])
        wins[method] = [won, compared]
    best_lines = []
    for variant in ("fine-tuned", "retrained"):
        for stage in sorted({e["stage"] for e in summary_rows if e["stage"] > 0 and e["variant"] == variant}):
            entries = [e for e in summary_rows if e["variant"] == variant and e["stage"] == stage]
            best = max(entries, key=lambda e: e["accuracy_mean"])
            others = ", ".join(
                f"{METHOD_LABELS[e['method']]} {100 * e['accuracy_mean']:.2f}% at ratio {e['ratio']:.3f}"
                for e in sorted(entries, key=lambda e: -e["accuracy_mean"])
            )
            best_lines.append(f"- {variant}, stage {stage}: best {METHOD_LABELS[best['method']]} ({others})")
    first = all_results[0]
    references = ", ".join(
        f"{key} {100 * value['accuracy']:.2f}%" for key, value in first.get("full_networks", {}).items()
    )
    table = markdown_table(["variant", "stage", "method", "parameters", "ratio", "test accuracy %"], table_rows)
    architectures, widths_table = _widths_summary(all_results)
    table = (
        f"{first['model']} on {first['dataset']} (full-size network: {first['full_parameters']:,} parameters; "
        f"{references})\n\n{table}\n\n"
        + "".join(
            f"{METHOD_LABELS[m]} more accurate than a pruning baseline at the same stage in {won} of {compared} "
            "comparisons.\n"
            for m, (won, compared) in wins.items()
        )
        + "\nWhich wins at each size (the pruning baselines are cut to the first growth method's sizes; other growth "
        "methods reach their own):\n\n"
        + "\n".join(best_lines)
        + f"\n\nThe architectures found (per-layer widths, seed {first['seed']}; "
        f"uniformity 1.00 = a uniform scaling of the starting network):\n\n{widths_table}"
    )
    first_growth = growth[0] if growth else "splitting"
    summary = {
        "rows": summary_rows,
        "wins": wins,
        "splitting_wins": wins.get(first_growth, [0, 0])[0],
        "comparisons": wins.get(first_growth, [0, 0])[1],
        "architectures": architectures,
    }
    return summary, table


def _widths_summary(all_results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Per-layer widths of every method at every stage (every seed), with their distance from uniform scaling."""
    architectures, rows = [], []
    for results in all_results:
        start = next(r["widths"] for r in results["rows"] if r["method"] in GROWTH_METHODS and r["stage"] == 0)
        for row in sorted(results["rows"], key=lambda r: (r["variant"], r["method"], r["stage"])):
            if row["variant"] != "fine-tuned":
                continue
            spread = uniformity(row["widths"], start)
            architectures.append(
                {
                    "seed": results["seed"],
                    "method": row["method"],
                    "stage": row["stage"],
                    "widths": row["widths"],
                    "uniformity": spread,
                }
            )
            if results is all_results[0]:
                rows.append(
                    [
                        METHOD_LABELS[row["method"]],
                        row["stage"],
                        f"{row['ratio']:.3f}",
                        f"{spread:.2f}",
                        " ".join(str(w) for w in row["widths"]),
                    ]
                )
    return architectures, markdown_table(["method", "stage", "ratio", "uniformity", "widths"], rows)


EXPERIMENT = Experiment(
    name="images",
    description="image classification (paper Section 3, Figure 3): splitting vs pruning at equal size",
    config_class=ImagesConfig,
    run_seed=run_seed,
    plot=plot,
    summarize=summarize,
    checkpoints=True,
    distributed=True,
    resume_free_keys=frozenset({"device", "data_root", "download"}),
)
