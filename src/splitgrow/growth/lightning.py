"""A PyTorch Lightning callback that grows the LightningModule inside ``Trainer.fit`` (``pip install
splitgrow[lightning]``).

    trainer = Trainer(callbacks=[GrowthCallback(example, policy=GrowthPolicy(every=3, fraction=0.25),
                                                loss_function=F.cross_entropy)])
    trainer.fit(module, datamodule)

At the end of every training epoch the grower's schedule decides; a growth stage reads the first
``policy.statistics_batches`` batches of ``statistics_data`` (by default the trainer's training loader), splits the
module in place and carries the state of every optimiser across (its parameters keep their identity, so the
optimisers and any learning-rate schedulers simply continue: nothing needs rebuilding). The monitored metric of a
plateau rule is read from ``trainer.callback_metrics``: log it at every epoch (a validation metric with
``check_val_every_n_epoch > 1`` is missing on the other epochs, which is a ConfigError, as for Lightning's own
``ReduceLROnPlateau``). Lightning checkpoints hold the grown weights; on resume
(``ckpt_path``) the callback resizes the module to the checkpoint's shapes before Lightning creates the optimisers
and loads the weights, and restores the grower's history through its own state. The averaged copy of Lightning's
weight-averaging callbacks (``EMAWeightAveraging``, ``StochasticWeightAveraging``, any ``WeightAveraging``) is split
the same way as the module, so that it keeps averaging the grown weights.

Under Lightning's DDP strategy (``strategy="ddp"``, or a ``torchrun`` launch) every process computes the statistics
on its shard of the loader, the sums are all-reduced so that every process makes the same splits, and the module is
wrapped in DDP again after each split. Strategies that start their processes from the script's process
(``ddp_spawn``, ``ddp_fork``) are refused: Lightning would load the grown weights into the launching process's
module of the old widths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - the extra is not installed
    raise ImportError("the Lightning callback needs the lightning extra: pip install 'splitgrow[lightning]'") from error

from ..errors import ConfigError, SplitgrowError
from ..statistics import LossClosure, LossFunction
from ..surgery import resize_like
from .grower import Grower, GrowthStage, averaged_copy, averaged_model_list, check_policy, uncarried_reason
from .policy import GrowthPolicy


class GrowthCallback(Callback):
    """Grow the LightningModule on a :class:`~splitgrow.growth.policy.GrowthPolicy` (see the module docstring).

    Args:
        example_inputs: an input batch of the module's forward, to trace it.
        policy: when, how much and how to grow.
        loss_function, closure, reduction: how the loss of a batch is computed (see :class:`Grower`); the closure
            receives the traced forward, not the LightningModule.
        statistics_data: batches for the statistics, or a callable ``(trainer) -> batches``; default: the trainer's
            training loader.
        exclude, relu_surrogate, seed: as for :class:`Grower`.
        averaged_models: averaged copies of the module that the module keeps itself (an EMA or SWA
            ``AveragedModel`` made in its ``__init__`` or ``setup``), or a callable ``(pl_module) -> copies`` for
            copies made later; split with the module, like the copy of Lightning's weight-averaging callbacks
            (which is found without being named). A copy that is a submodule of the module is resized on resume
            with it; one kept elsewhere is the caller's to restore.
    """

    def __init__(
        self,
        example_inputs: Tensor | Sequence[Tensor],
        *,
        policy: GrowthPolicy,
        loss_function: LossFunction | None = None,
        closure: LossClosure | None = None,
        reduction: str = "auto",
        statistics_data: Iterable | Callable[[Any], Iterable] | None = None,
        exclude: Sequence[str] = (),
        relu_surrogate: float | None = None,
        seed: int = 0,
        averaged_models: Sequence[torch.nn.Module] | Callable[[Any], Sequence[torch.nn.Module]] = (),
    ) -> None:
        super().__init__()
        # the settings a Grower would refuse at set-up, refused here where the user wrote them
        check_policy(policy)
        if not callable(averaged_models):
            averaged_model_list(averaged_models, or_callable=True)
        if statistics_data is not None and not callable(statistics_data) and not isinstance(statistics_data, Iterable):
            raise ConfigError(
                f"statistics_data must be batches, a callable (trainer) -> batches, or None (the training loader), got "
                f"{type(statistics_data).__name__}"
            )
        self.example_inputs = example_inputs
        self.averaged_models = averaged_models
        self.policy = policy
        self.options = {
            "loss_function": loss_function,
            "closure": closure,
            "reduction": reduction,
            "exclude": exclude,
            "relu_surrogate": relu_surrogate,
            "seed": seed,
        }
        self.statistics_data = statistics_data
        self.grower: Grower | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def history(self) -> list[GrowthStage]:
        return [] if self.grower is None else self.grower.history

    def setup(self, trainer: Any, pl_module: torch.nn.Module, stage: str) -> None:
        start_method = getattr(trainer.strategy, "_start_method", "popen")
        if start_method != "popen":
            # the processes grow their copies; at the end Lightning loads the weights of process 0 into the
            # unchanged module of the launching process, which no longer fits them
            raise SplitgrowError(
                f"GrowthCallback cannot follow a DDP strategy that starts its processes by {start_method} "
                "(ddp_spawn, ddp_fork, ddp_notebook): the launching process keeps the module's old widths; use "
                "strategy='ddp' (or launch with torchrun)"
            )
        if self.grower is not None and self.grower.model is not pl_module:
            raise ConfigError(
                f"this GrowthCallback grows another module ({type(self.grower.model).__name__}) and keeps its "
                "grower and history",
                fix="make a new GrowthCallback for each module you fit",
            )
        _resize_before_loading(pl_module)
        if self.grower is None:
            self.grower = Grower(pl_module, self.example_inputs, (), policy=self.policy, **self.options)
            self.grower._metrics_source = (
                "Lightning's callback_metrics",
                "log it at every epoch (self.log({monitor}, ...); validation at every epoch: "
                "check_val_every_n_epoch=1)",
            )
            if self._pending_state is not None:
                self.grower.load_state_dict(self._pending_state)

    def on_train_start(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        for optimizer in trainer.optimizers:  # refused before training, not at the first stage
            reason = uncarried_reason(optimizer)
            if reason is not None:
                raise ConfigError(
                    f"GrowthCallback cannot carry {type(optimizer).__name__}'s state across a split ({reason})",
                    fix="return an optimiser whose state splits carry (SGD, Adam, AdamW, RMSprop, ...) from "
                    "configure_optimizers",
                )

    def _statistics(self, trainer: Any) -> Iterable:
        if self.statistics_data is None:
            return trainer.train_dataloader
        if callable(self.statistics_data) and not hasattr(self.statistics_data, "__iter__"):
            return self.statistics_data(trainer)
        return self.statistics_data

    def on_train_epoch_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        grower = self.grower
        grower.statistics_data = self._statistics(trainer)
        grower.optimizer = list(trainer.optimizers)  # every one of them holds state of parameters a split grows
        own = self.averaged_models(pl_module) if callable(self.averaged_models) else self.averaged_models
        grower.averaged_models = [*_averaged_models(trainer), *averaged_model_list(own, or_callable=True)]
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if _scalar(value)}
        if grower.epoch_end(metrics) is not None:
            _rebuild_data_parallel(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.grower is None else self.grower.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.grower is None:
            self._pending_state = state_dict
        else:
            self.grower.load_state_dict(state_dict)


def _resize_before_loading(pl_module: torch.nn.Module) -> None:
    """Make the module take the widths of any checkpoint Lightning loads into it: Lightning calls the module's
    ``on_load_checkpoint`` hook just before it loads the weights (and, with the default strategies, before it makes
    the optimisers), which is where the resizing must happen; it calls the callbacks' hooks (a weight-averaging
    callback loads its averaged copy there) after it, so the copies are resized here too."""
    original = pl_module.on_load_checkpoint
    if getattr(original, "splitgrow_resizes", False):
        return

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        resize_like(pl_module, checkpoint["state_dict"])
        for averaged in _averaged_models(pl_module.trainer):
            # to the module's shapes (a checkpoint may hold the average)
            resize_like(averaged_copy(averaged), checkpoint["state_dict"])
        original(checkpoint)

    on_load_checkpoint.splitgrow_resizes = True
    pl_module.on_load_checkpoint = on_load_checkpoint


def _rebuild_data_parallel(trainer: Any) -> None:
    """Wrap the grown module in DDP again, as Lightning's DDP strategies did at set-up: the old wrapper's gradient
    buckets hold the parameters' sizes before the split (its next backward fails on every process)."""
    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel) and hasattr(strategy, "configure_ddp"):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


def _averaged_models(trainer: Any) -> list[torch.nn.Module]:
    """The averaged copies that Lightning's weight-averaging callbacks keep of the module (once they made them):
    they hold it as ``_average_model``, which has no public accessor."""
    found = (getattr(callback, "_average_model", None) for callback in trainer.callbacks)
    return [model for model in found if isinstance(model, torch.nn.Module)]


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1)
