"""The growth loop for any model: Algorithm 1 inside your training.

    grower = Grower(model, example_inputs, statistics_loader, policy=GrowthPolicy(every=5, fraction=0.2),
                    loss_function=F.cross_entropy, optimizer=optimizer)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)        # your loop, unchanged
        grower.epoch_end(metrics={"loss": validation_loss})   # grows when the policy says so

or let it drive: ``grower.fit(train_epoch, epochs, checkpoint="run.pt")``, which also checkpoints after every epoch
so that a killed run resumes exactly (``resume=True``).

A stage computes the splitting statistics on ``statistics_data`` (its first ``policy.statistics_batches`` batches,
or adaptively), selects by the policy's amount, splits with the optimiser's state carried along, and records what
it did (:class:`GrowthStage`): the widths before and after, the splits with their indexes, the predicted loss change
eps^2/2 * sum of the indexes and the measured one, parameters, FLOPs, and the time of the phase against training.
In a ``torch.distributed`` run every process computes the statistics of its own data, they are summed, and rank 0's
selection is applied everywhere; the ``on_grow`` hook is the place to rebuild a DDP wrapper.

Every object that holds per-parameter state must follow a split: give the grower every optimiser of the model's
parameters (``optimizer=[...]``) and every averaged copy of it (``averaged_models=[ema]``, e.g. a
``torch.optim.swa_utils.AveragedModel``), which is split the same way; any other (a second optimiser or an EMA the
grower does not know) keeps the old shapes and fails at its next step. A stage runs in the model's own dtype, outside
any autocast region. Gradients left on the parameters are carried across the split like momentum (exactly the grown
network's gradients when eps = 0), so a gradient accumulation may span a stage. A model compiled with ``torch.compile``
may be given as it is: the grower grows the module it compiled, and the compiled model recompiles for the new shapes.
"""

from __future__ import annotations

import dataclasses
import io
import math
import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..artifacts import atomic_write_bytes
from ..checks import is_count
from ..errors import CheckpointError, ConfigError, DivergenceError, SplitgrowError, SplitgrowWarning
from ..firefly import new_neuron_candidates, select_growth
from ..graph import GraphError, is_within, model_fingerprint
from ..inspection import added_cost, finite, model_flops, non_finite_tensor, split_costs
from ..modes import evaluating
from ..network import SplittableNetwork, TrackedData, check_data, diagnosed
from ..selection import FROZEN, Selection, eligible_neurons, is_frozen, select_splits, select_within_budget
from ..signed import signed_splitting
from ..statistics import LossClosure, LossFunction, SplittingResults, StatisticsError
from ..statistics import distributed as dist
from ..statistics.adaptive import adaptive_splitting
from ..statistics.recording import batch_to_device, batch_units, check_loss_contract, closure_from_loss
from ..statistics.splitting import SolverOptions, solve
from ..surgery import (
    NewNeuron,
    SplitRequest,
    check_optimizers_hold,
    optimizer_list,
    parameter_count,
    resize_like,
)
from .policy import GrowthPolicy, GrowthState


@dataclass
class GrowthStage:
    """What one growth stage did (plain values, for JSON and checkpoints).

    Attributes:
        stage, epoch: the stage's number (from 1) and the epochs done when it ran.
        widths_before, widths_after: neurons (coupling groups) of each site before and after.
        splits: each split (site, channel, index; a signed split's offspring ``weights``) or new neuron.
        predicted_change: the loss change the splits predict (eps^2/2 * the sum of their indexes for two-way
            splits), from the split's report.
        loss_before, loss_after: the mean loss on the statistics batches the stage used, in eval mode, before and
            after the split (``loss_after`` None unless the policy measures, or when the statistics data gave no
            batch a second time).
        parameters_before, parameters_after: the model's parameters.
        flops_after: FLOPs per sample of the grown model (:func:`splitgrow.inspection.model_flops` on the example).
        seconds: the stage's own time (statistics, selection, split, measurement); training_seconds: the
            training time of the phase before it (between ``epoch_end`` calls).
        samples, batches: what the statistics used (adaptive statistics: as many as the selection needed).
        skipped: sites the statistics or the selection left out, and why.
        metrics: the metrics of the epoch that triggered the stage.
        shortfall: why a ``count`` or ``fraction`` stage added fewer neurons than asked for ("" when it did not).
    """

    stage: int
    epoch: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    splits: list[dict[str, Any]]
    predicted_change: float | None
    loss_before: float
    loss_after: float | None
    parameters_before: int
    parameters_after: int
    flops_after: int
    seconds: float
    training_seconds: float
    samples: float
    batches: int
    skipped: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    shortfall: str = ""

    @property
    def measured_change(self) -> float | None:
        """loss_after - loss_before on the statistics data (None when not measured)."""
        return None if self.loss_after is None else self.loss_after - self.loss_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measured_change": self.measured_change}


def averaged_copy(averaged: nn.Module) -> nn.Module:
    """The copy of the model that an averaged model holds: ``AveragedModel`` keeps it in ``.module`` (its counter
    beside it); an EMA module of the model's own architecture is the copy itself; the average of a compiled model
    holds a compiled copy, whose own module is the copy."""
    copy = averaged.module if isinstance(averaged, torch.optim.swa_utils.AveragedModel) else averaged
    compiled = getattr(copy, "_orig_mod", None)
    return compiled if isinstance(compiled, nn.Module) else copy


#: optimisers whose state no split can carry, with the reason (their state is refused at a split; a grower's
#: optimiser always has state by its first stage)
_UNCARRIED_OPTIMIZERS: dict[type, str] = {
    torch.optim.LBFGS: "its history of flat vectors spans all parameters",
    torch.optim.ASGD: "its running average of the parameters has no offspring rule",
}
if hasattr(torch.optim, "Adafactor"):
    _UNCARRIED_OPTIMIZERS[torch.optim.Adafactor] = "its second moments are factored into rows and columns"


def uncarried_reason(optimizer: torch.optim.Optimizer) -> str | None:
    """Why no split can carry ``optimizer``'s state (None: it can)."""
    return next((why for kind, why in _UNCARRIED_OPTIMIZERS.items() if isinstance(optimizer, kind)), None)


#: the most bytes of statistics batches a stage keeps, to measure the loss after its split on the same samples
MEASURED_BATCH_BYTES = 512 * 2**20


def _shuffles(data: Iterable) -> bool:
    """Whether ``data`` is a DataLoader that draws its samples in a new random order at every pass."""
    sampler = getattr(data, "sampler", None)
    return isinstance(data, torch.utils.data.DataLoader) and (
        isinstance(sampler, torch.utils.data.RandomSampler) or bool(getattr(sampler, "shuffle", False))
    )


class Grower:
    """Grow ``model`` by splitting steepest descent on a schedule (see the module docstring).

    Args:
        model: any traceable ``nn.Module`` (the inner module of a DDP wrapper; a ``torch.compile`` model as it is);
            grown in place.
        example_inputs: an input batch of the right shape, to trace the model.
        statistics_data: an iterable of batches for the splitting statistics (iterated afresh at every stage).
        policy: when, how much and how to grow.
        loss_function: ``loss_function(outputs, targets)`` for ``(inputs, targets)`` batches; or
        closure: ``closure(model, batch) -> (loss, weight)`` for any batch (see :mod:`splitgrow.statistics`).
        reduction: whether the loss is a ``"mean"`` or a ``"sum"`` over its units (``"auto"``: a torch loss
            module's own setting, else mean).
        optimizer: its state is carried across every split; several optimisers (one per part of the model): a
            sequence of them.
        averaged_models: averaged copies of the model (``torch.optim.swa_utils.AveragedModel``, an EMA module of the
            same architecture), or of one of its modules (a LightningModule's ``AveragedModel(self.net)``), to split
            the same way at every stage, so that they keep averaging the grown model.
        exclude, relu_surrogate: as for :class:`~splitgrow.network.SplittableNetwork`.
        seed: seed of the solvers' random starts.
        on_grow: called with the stage after every split (rebuild a DDP wrapper, log, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | Sequence[Tensor],
        statistics_data: Iterable,
        *,
        policy: GrowthPolicy,
        loss_function: LossFunction | None = None,
        closure: LossClosure | None = None,
        reduction: str = "auto",
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        averaged_models: Sequence[nn.Module] = (),
        exclude: Sequence[str] = (),
        relu_surrogate: float | None = None,
        seed: int = 0,
        on_grow: Callable[[GrowthStage], None] | None = None,
    ) -> None:
        # every setting is checked here, before the first stage could change anything
        check_loss_contract(loss_function, closure)
        check_policy(policy)
        if not is_count(seed, 0):
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        if on_grow is not None and not callable(on_grow):
            raise ConfigError(f"on_grow must be callable (it is called with each stage), got {type(on_grow).__name__}")
        self.net = SplittableNetwork(model, example_inputs, exclude=exclude, relu_surrogate=relu_surrogate)
        self.model = self.net.model  # a compiled model's own module
        if next(self.model.parameters(), None) is None:
            raise ConfigError(f"{type(self.model).__name__} has no parameters: there is nothing to grow")
        self._check_something_grows()  # now, not at the first stage after epochs of training
        self.statistics_data = statistics_data
        self.policy = policy
        self.loss_function, self.closure, self.reduction = loss_function, closure, reduction
        self.optimizer = optimizer
        self.averaged_models = averaged_models
        self.seed = seed
        self.on_grow = on_grow
        self.history: list[GrowthStage] = []
        self.metrics: list[dict[str, float]] = []
        self.epoch = 0
        self.epochs_since_growth = 0
        self.stopped = False
        self.stop_reason = ""
        self._stopped_by_limit = False  # by max_stages/max_parameters/max_flops, which a resumed policy may raise
        self._best: float | None = None
        self._stale = 0
        self._training_started = time.perf_counter()
        self._training_seconds = 0.0
        self._statistics_batches: list | None = None  # the batches of the last statistics, kept to measure on
        #: where epoch_end's metrics come from and how to add one, for the plateau rule's message (the Lightning
        #: callback says its own)
        self._metrics_source = (
            "the metrics given to epoch_end",
            "pass it to epoch_end(metrics={{{monitor}: ...}}) (with fit: return it from evaluate or train_epoch)",
        )
        self._phase_epochs_made: int | None = None  # what fit's scheduler factory got for the current phase

    # ---------------------------------------------------------------------------------------- the schedule

    @property
    def statistics_data(self) -> Iterable:
        """The batches of the splitting statistics, iterated afresh at every stage."""
        return self._statistics_data

    @statistics_data.setter
    def statistics_data(self, data: Iterable) -> None:
        check_data(data, "statistics_data")
        if isinstance(data, Iterator):  # a generator: the first stage would use it up and the next find nothing
            raise ConfigError(
                f"statistics_data is an iterator ({type(data).__name__}), which one stage would use up: give "
                "batches that can be iterated again at every stage (a list, a DataLoader)"
            )
        self._statistics_data = data

    @property
    def optimizer(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer] | None:
        """The optimiser(s) whose state every split carries; each must hold parameters of the model."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None) -> None:
        check_optimizers_hold(optimizer_list(optimizer), self.model)
        for each in optimizer_list(optimizer):
            reason = uncarried_reason(each)
            if reason is not None:  # refused now, not at the first stage after epochs of training
                raise ConfigError(
                    f"the grower cannot carry {type(each).__name__}'s state across a split ({reason})",
                    fix="give the grower optimizer=None and build a new optimiser over model.parameters() after each "
                    "stage (in on_grow)",
                )
        self._optimizer = (
            optimizer if optimizer is None or isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
        )

    @property
    def averaged_models(self) -> list[nn.Module]:
        """The averaged copies split with the model at every stage."""
        return self._averaged_models

    @averaged_models.setter
    def averaged_models(self, models: Sequence[nn.Module]) -> None:
        self._averaged_models = averaged_model_list(models)

    def epoch_end(self, metrics: dict[str, float] | None = None) -> GrowthStage | None:
        """Record that an epoch ended (with its metrics, e.g. the validation loss the plateau rule monitors) and
        grow if the policy says a stage is due. Returns the stage, or None. Once the grower has stopped (see
        ``stopped``, ``stop_reason``), a call only records the epoch and its metrics.

        Raises:
            ConfigError: the policy has a plateau rule and ``metrics`` lack its ``monitor``.
        """
        stage = self.grow(metrics) if self._end_epoch(metrics) else None
        self._training_started = time.perf_counter()
        return stage

    def _end_epoch(self, metrics: dict[str, float] | None, may_grow: bool = True) -> bool:
        """Record the epoch just ended and whether a stage is due (never with ``may_grow`` False: the last epoch of
        ``fit``, which no training would follow). The schedule (its trigger included) is consulted once."""
        self._training_seconds += time.perf_counter() - self._training_started
        metrics = _plain_metrics(metrics)
        self.epoch += 1
        self.epochs_since_growth += 1
        self.metrics.append(metrics)
        if self.stopped:
            return False
        reason = self._limit_reached()
        if reason is not None:
            self._stop(reason, by_limit=True)
            return False
        plateaued = self._plateaued(metrics)
        if not may_grow:
            return False
        state = GrowthState(
            self.epoch, len(self.history), self.epochs_since_growth, self.metrics, parameter_count(self.model)
        )
        return self.policy.due(state, plateaued)

    def _plateaued(self, metrics: dict[str, float]) -> bool:
        """Update the plateau rule with this epoch's metrics: whether the monitored one has now stalled for
        ``plateau_patience`` epochs."""
        policy = self.policy
        if policy.plateau_patience is None:
            return False
        if policy.monitor not in metrics:
            source, fix = self._metrics_source
            raise ConfigError(
                f"the plateau rule monitors {policy.monitor!r}, which {source} do not have at the end of epoch "
                f"{self.epoch} (they have: {', '.join(metrics) or 'none'})",
                fix=fix.format(monitor=repr(policy.monitor)) + ", or set GrowthPolicy(monitor=...)",
            )
        value = float(metrics[policy.monitor])
        if policy.improved(value, self._best):
            self._best, self._stale = value, 0
            return False
        self._stale += 1
        return self._stale >= policy.plateau_patience

    def _limit_reached(self) -> str | None:
        policy = self.policy
        if policy.max_stages is not None and len(self.history) >= policy.max_stages:
            return f"reached max_stages = {policy.max_stages}"
        if policy.max_parameters is not None and parameter_count(self.model) >= policy.max_parameters:
            return f"reached max_parameters = {policy.max_parameters:,}"
        if policy.max_flops is not None and self._flops() >= policy.max_flops:
            return f"reached max_flops = {policy.max_flops:,}"
        return None

    def _stop(self, reason: str, by_limit: bool = False) -> None:
        self.stopped, self.stop_reason, self._stopped_by_limit = True, reason, by_limit

    def _flops(self) -> int:
        """FLOPs of the model for one sample, on the traced example (every positional input)."""
        return model_flops(self.model, self.net.graph.example_inputs)

    # ---------------------------------------------------------------------------------------- one stage

    def _data(self, data: Iterable | None = None) -> Iterable:
        data = self.statistics_data if data is None else data
        batches = self.policy.statistics_batches
        if batches is None or self.policy.adaptive is not None:
            return data
        return (batch for _, batch in zip(range(batches), data))

    def _options(self) -> SolverOptions:
        return SolverOptions(
            solver=self.policy.solver,
            seed=self.seed + len(self.history),
            largest=self.policy.method == "signed",
            **self.policy.options,
        )

    def statistics(self) -> SplittingResults:
        """The splitting indexes of the current model on the statistics data (summed over processes).

        Raises:
            StatisticsError: a batch the model or the loss cannot take (its error named), a loss that is not a
                finite scalar, or no batches (data that a stage used up, too).
        """
        graph = self.net.graph
        tracked = TrackedData(self.statistics_data, keep_bytes=MEASURED_BATCH_BYTES if self.policy.measure else 0)
        try:
            with diagnosed(self.model, tracked, self.loss_function, self.closure):
                results = self._statistics(graph, tracked)
        except StatisticsError as error:
            if tracked.given == 0 and self.history:
                raise StatisticsError(
                    f"statistics_data gave no batches at stage {len(self.history) + 1}, although it gave them "
                    f"before: it can be iterated only once",
                    fix="give batches that can be iterated again at every stage (a list, a DataLoader)",
                ) from error
            raise
        results.fingerprint = graph.fingerprint
        self._statistics_batches = tracked.kept
        return results

    def _statistics(self, graph, data: Iterable) -> SplittingResults:
        contract = {"loss_function": self.loss_function, "closure": self.closure, "reduction": self.reduction}
        reduce = dist.reducer()
        if self.policy.adaptive is not None:
            return adaptive_splitting(
                self.model,
                graph,
                data,
                lambda results: [(r.site, r.channel, r.index) for r in self._select_splits(results)],
                adaptive=self.policy.adaptive,
                options=self._options(),
                reduce=reduce,
                rank=self._ranked,  # the checks score selections by the indexes they were ranked by
                sites=self._growable_sites(),
                **contract,
            )
        from ..statistics.recording import record_batches
        from ..statistics.splitting import _chosen, report_skipped

        idle = self._idle_sites()
        chosen = [site for site in _chosen(graph, None) if site.name not in idle]
        skipped = {**graph.skipped(), **idle}
        report_skipped(graph, skipped, strict=False, what="splitting statistics")
        options = self._options()
        accumulator = options.accumulator(graph, chosen)
        if chosen:
            for record in record_batches(self.model, graph, self._data(data), chosen, reduce=reduce, **contract):
                accumulator.add(record)
        return solve(accumulator, options, skipped=skipped, reduce=reduce)

    def _ranked(self, results: SplittingResults) -> SplittingResults:
        """The results as the method ranks them (signed indexes for signed splitting)."""
        return signed_splitting(results, self.policy.weight_bound) if self.policy.method == "signed" else results

    def _select(self, results: SplittingResults) -> Selection:
        if self.policy.method == "firefly":
            return self._select_firefly(results)
        return self._select_splits(results)

    def _select_splits(self, results: SplittingResults) -> Selection:
        """The splits of a stage (the selection adaptive statistics watch settle)."""
        policy = self.policy
        graph = self.net.graph
        results = self._ranked(results)
        common = {"graph": graph, "allow_inexact": policy.allow_inexact}
        if policy.parameter_ratio is not None or policy.flops_ratio is not None:
            kind = "parameters" if policy.parameter_ratio is not None else "flops"
            current = parameter_count(self.model) if kind == "parameters" else self._flops()
            ratio = policy.parameter_ratio if kind == "parameters" else policy.flops_ratio
            return select_within_budget(
                results,
                split_costs(graph, kind),
                ratio * current,
                threshold=policy.threshold,
                exact_cost=lambda requests: added_cost(graph, requests, kind),
                **common,
            )
        count = self._asked()
        return select_splits(results, count, policy.threshold, max_added=count, **common)

    def _asked(self) -> int | None:
        """The neurons a stage of a ``count`` or ``fraction`` policy adds (None for a budget): the fraction of the
        current coupling groups, rounded up, at least one."""
        policy = self.policy
        if policy.count is not None:
            return policy.count
        if policy.fraction is not None:
            sites = self.net.graph.sites
            growable = sum(sites[name].num_neurons for name in self._growable_sites())
            return max(1, math.ceil(policy.fraction * growable))
        return None

    def _check_something_grows(self) -> None:
        """Refuse a model none of whose layers can grow (not splitting-stable: nothing could ever split)."""
        graph = self.net.graph
        if not graph.splittable_sites():
            reasons = "; ".join(f"'{name}': {reason}" for name, reason in graph.skipped().items())
            raise GraphError(
                f"no layer of {type(self.model).__name__} can grow ({reasons or 'it has no layer splitgrow splits'}); "
                "Grower.net.graph.describe() lists every layer and why"
            )

    def _growable_sites(self) -> list[str]:
        """The splittable sites whose offspring would train."""
        idle = self._idle_sites()
        return [site.name for site in self.net.graph.splittable_sites() if site.name not in idle]

    def _idle_sites(self) -> dict[str, str]:
        """The splittable sites whose offspring would never train, with the reason: frozen ones, and, when the
        grower has optimisers, ones none of them trains (head-only fine-tuning). They are not computed, not split
        and not counted by ``fraction``, like excluded ones."""
        graph = self.net.graph
        trained = {id(p) for each in optimizer_list(self.optimizer) for g in each.param_groups for p in g["params"]}
        idle = {}
        for site in graph.splittable_sites():
            own = [p for m in site.members for p in graph.modules[m.module].parameters(recurse=False)]
            if is_frozen(graph, site):
                idle[site.name] = FROZEN
            elif trained and own and not any(id(p) in trained for p in own):
                idle[site.name] = (
                    "no optimiser of the grower trains its parameters (its offspring would never train); add them "
                    "to the optimiser, or exclude the layer, to grow it"
                )
        return idle

    def _eligible(self, results: SplittingResults) -> list[tuple[float, str, int]]:
        """(index, site, neuron) of every neuron a stage may split: below the threshold, by the indexes the method
        ranks by, converged, on a site it may split."""
        policy = self.policy
        eligible, _ = eligible_neurons(self._ranked(results), policy.threshold, self.net.graph, policy.allow_inexact)
        return eligible

    def _select_firefly(self, results: SplittingResults) -> Selection:
        """Splits and new neurons ranked together (:mod:`splitgrow.firefly`), by the policy's amount."""
        policy = self.policy
        graph = self.net.graph
        candidates = new_neuron_candidates(
            self.model,
            graph,
            self._data(),
            self.loss_function,
            closure=self.closure,
            reduction=self.reduction,
            sites=self._growable_sites(),
            options=policy.firefly,
            allow_inexact=policy.allow_inexact,
            seed=self.seed + len(self.history),
        )
        common = {
            "epsilon": policy.epsilon,
            "threshold": policy.threshold,
            "graph": graph,
            "allow_inexact": policy.allow_inexact,
            "options": policy.firefly,
        }
        if policy.parameter_ratio is not None or policy.flops_ratio is not None:
            kind = "parameters" if policy.parameter_ratio is not None else "flops"
            current = parameter_count(self.model) if kind == "parameters" else self._flops()
            ratio = policy.parameter_ratio if kind == "parameters" else policy.flops_ratio
            return select_growth(
                results,
                candidates,
                costs=split_costs(graph, kind),
                budget=ratio * current,
                exact_cost=lambda requests: added_cost(graph, requests, kind),
                **common,
            )
        return select_growth(results, candidates, max_count=self._asked(), **common)

    def grow(self, metrics: dict[str, float] | None = None) -> GrowthStage | None:
        """One growth stage now, whatever the schedule. None when it split nothing: the grower then stops when no
        neuron has an index below the threshold (with ``policy.stop_when_stable``; "splitting-stable") and when
        neurons do but no split of them fits what a stage may add (a budget too small, whatever the setting)."""
        device = next(self.model.parameters()).device  # the constructor refused a model without parameters
        # statistics in the model's dtype whatever region the caller is in (autocast would round them to bf16)
        try:
            with torch.autocast(device.type, enabled=False):
                return self._grow(metrics)
        finally:
            self._statistics_batches = None  # kept to measure the loss after the split: not through training

    def _grow(self, metrics: dict[str, float] | None) -> GrowthStage | None:
        started = time.perf_counter()
        self._check_something_grows()
        widths_before = self.net.widths()
        parameters_before = parameter_count(self.model)
        asked = self._asked()
        results = self.statistics()
        selection = self._select(results)
        # rank 0's selection everywhere, so that ties broken by rounding cannot make the processes disagree
        requests: list[SplitRequest | NewNeuron] = list(dist.broadcast_object(list(selection)))
        eligible = self._eligible(results)
        if not requests:
            idle = self._idle_sites()
            if eligible:  # neurons could lower the loss but none fits: no later stage would fit either
                self._stop(self._nothing_fits(eligible))
            elif idle and all(site.name in idle for site in self.net.graph.splittable_sites()):
                self._stop("no site can grow: " + "; ".join(f"'{name}': {reason}" for name, reason in idle.items()))
            elif self.policy.stop_when_stable:
                # every index exactly 0 is no converged network but one whose activations are saturated or dead
                dead = bool(results) and all(bool((r.indexes == 0).all()) for r in results.values())
                self._stop(
                    f"splitting-stable: no neuron of the splittable sites has an index below the threshold "
                    f"{self.policy.threshold:g}"
                    + (
                        "; every index is exactly 0: the activations are saturated or dead (a diverged training "
                        "step? check the loss and the learning rate)"
                        if dead
                        else ""
                    )
                )
            return None
        followers = [(net, _within(prefix, requests, self.net.graph)) for net, prefix in self._averaged_networks()]
        report = self.net.split(
            requests, self.policy.epsilon, optimizer=self.optimizer, allow_inexact=self.policy.allow_inexact
        )
        done = [report]
        try:
            for follower, mapped in followers:  # the same requests (made for the same shapes), so the same map
                done.append(follower.split(mapped, self.policy.epsilon, allow_inexact=self.policy.allow_inexact))
        except BaseException:
            for each in reversed(done):  # a stage's splits are one change: the model keeps its averaged copies' shape
                each.undo()
            raise
        loss_after = self._loss(results.batches) if self.policy.measure else None
        widths_after = self.net.widths()
        added = sum(widths_after.values()) - sum(widths_before.values())
        shortfall = ""
        if asked is not None and added < asked:
            shortfall = (
                f"added {added} of the {asked} neurons asked for: {len(eligible)} neurons of the splittable sites "
                f"have an index below the threshold {self.policy.threshold:g}"
            )
        stage = GrowthStage(
            stage=len(self.history) + 1,
            epoch=self.epoch,
            widths_before=widths_before,
            widths_after=widths_after,
            splits=[_describe(r) for r in requests],
            predicted_change=report.predicted_change,
            loss_before=results.loss,
            loss_after=loss_after,
            parameters_before=parameters_before,
            parameters_after=report.parameters_after,
            flops_after=self._flops(),
            seconds=time.perf_counter() - started,
            training_seconds=self._training_seconds,
            samples=results.weight,
            batches=results.batches,
            skipped={**results.skipped, **getattr(selection, "skipped", {})},  # by the statistics and the selection
            metrics=_plain_metrics(metrics),
            shortfall=shortfall,
        )
        self.history.append(stage)
        self.epochs_since_growth = 0
        self._training_seconds = 0.0
        self._best, self._stale = None, 0
        reason = self._limit_reached()
        if reason is not None:
            self._stop(reason, by_limit=True)
        if self.on_grow is not None:
            self.on_grow(stage)
        return stage

    def _nothing_fits(self, eligible: list[tuple[float, str, int]]) -> str:
        """Why a stage with neurons below the threshold selected none (the stop reason)."""
        policy = self.policy
        if policy.parameter_ratio is None and policy.flops_ratio is None:
            return f"no split of the {len(eligible)} neurons below the threshold fits what a stage may add"
        kind, name, ratio = (
            ("parameters", "parameter_ratio", policy.parameter_ratio)
            if policy.parameter_ratio is not None
            else ("flops", "flops_ratio", policy.flops_ratio)
        )
        current = parameter_count(self.model) if kind == "parameters" else self._flops()
        costs = split_costs(self.net.graph, kind)
        cheapest = min(costs[site] for _, site, _ in eligible if site in costs)
        return (
            f"no split fits a stage's budget: {name} = {ratio:g} of {current:,} {kind} allows {ratio * current:,.1f}, "
            f"the cheapest split of a neuron below the threshold adds {cheapest:,.0f}; raise {name}"
        )

    def _averaged_networks(self) -> list[tuple[SplittableNetwork, str]]:
        """The averaged copies, traced, each with the name of the module of the model it copies ('' for the whole
        model; a LightningModule that keeps an EMA of its inner network, ``AveragedModel(self.net)``, names it),
        each checked to have that module's parameters and buffers (before anything is split)."""
        networks = []
        for position, averaged in enumerate(self.averaged_models):
            copy = averaged_copy(averaged)
            prefix = self._copied_module(copy)
            if prefix is None:
                raise SplitgrowError(
                    f"averaged_models[{position}] ({type(averaged).__name__}) does not have the parameters and buffers "
                    "(names and shapes) of the model or of one of its modules: give an averaged copy of this model "
                    "(or of a module of it), made before any split or grown by this grower"
                )
            device = next(copy.parameters()).device  # an average may be kept on another device
            inputs = self._inputs_of(prefix)
            inputs = tuple(value.to(device) if isinstance(value, Tensor) else value for value in inputs)
            options = {
                "exclude": _excluded_within(self.net.exclude, prefix, copy),
                "relu_surrogate": self.net.relu_surrogate,
            }
            networks.append((SplittableNetwork(copy, inputs, **options), prefix))
        return networks

    def _copied_module(self, copy: nn.Module) -> str | None:
        """The name of the model's module that ``copy`` has the parameters of: '' for the whole model, else the one
        module of the same parameters and buffers whose layers the model's forward calls (None: no such module)."""
        wanted = model_fingerprint(copy)
        if model_fingerprint(self.model) == wanted:
            return ""
        called = {m.module for site in self.net.graph.sites.values() for m in site.members}
        for name, module in self.model.named_modules():
            if name and module is not copy and model_fingerprint(module) == wanted:
                if any(is_within(site, name) for site in called):
                    return name
        return None

    @torch.no_grad()
    def _inputs_of(self, prefix: str) -> tuple:
        """The inputs the model's module ``prefix`` receives when the model runs on its example inputs (eval
        mode, so that no running statistic moves); the example inputs themselves for the whole model."""
        example = tuple(self.net.graph.example_inputs)
        if not prefix:
            return example
        captured: list[tuple] = []
        handle = self.model.get_submodule(prefix).register_forward_pre_hook(lambda _, args: captured.append(args))
        try:
            with evaluating(self.model):
                self.model(*example)
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def _loss(self, batches: int) -> float | None:
        """The mean loss on the statistics batches a stage used (the first ``batches``) as the split model computes
        it (eval mode); None, with a warning, when the data gives no batch a second time (the split is made: a stage
        must not fail after it)."""
        closure = self.closure or closure_from_loss(self.loss_function)
        device = next(self.model.parameters()).device
        total, weight, used = 0.0, 0.0, 0
        kept, self._statistics_batches = self._statistics_batches, None
        if kept is None and _shuffles(self.statistics_data):
            warnings.warn(
                "the statistics batches were too large to keep, and statistics_data shuffles: the loss after the split "
                "is measured on other samples than the loss before it, so measured_change mixes the split's effect "
                "with the difference between samples; give statistics data in a fixed order (shuffle=False) or set "
                "GrowthPolicy(measure=False)",
                SplitgrowWarning,
                stacklevel=4,
            )
        with evaluating(self.model):
            for batch in self.statistics_data if kept is None else kept:
                if used == batches:
                    break
                batch = batch_to_device(batch, device)
                returned = closure(self.model, batch)
                loss, units = returned if isinstance(returned, tuple) else (returned, batch_units(batch))
                if float(units) == 0:  # an empty batch (a process's empty shard), which the statistics skip too
                    continue
                used += 1
                scale = float(units) if self._mean() else 1.0
                total += scale * float(loss)
                weight += float(units)
        if dist.active():
            total = float(dist.all_reduce_sum(torch.tensor(total, dtype=torch.float64)))
            weight = float(dist.all_reduce_sum(torch.tensor(weight, dtype=torch.float64)))
        if weight == 0:
            warnings.warn(
                "statistics_data gave no batches when iterated again to measure the loss after the split (loss_after "
                "is None): it can be iterated only once, and the next stage will find no batches; give batches that "
                "can be iterated again at every stage (a list, a DataLoader)",
                SplitgrowWarning,
                stacklevel=4,
            )
            return None
        return total / weight

    def _mean(self) -> bool:
        from ..statistics.recording import resolve_reduction

        return resolve_reduction(self.reduction, self.closure or self.loss_function) == "mean"

    # ---------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The grower's own state (its schedule's counters and history), as plain values."""
        return {
            "epoch": self.epoch,
            "epochs_since_growth": self.epochs_since_growth,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "stopped_by_limit": self._stopped_by_limit,
            "best": self._best,
            "stale": self._stale,
            "training_seconds": self._training_seconds,
            "metrics": [dict(metrics) for metrics in self.metrics],  # copies: a saved state must not follow the run
            "history": [stage.to_dict() for stage in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (all of it, or nothing: a state that does not parse leaves the
        grower as it was).

        Raises:
            CheckpointError: not a grower's state.
        """
        try:
            epoch = int(state["epoch"])
            epochs_since_growth = int(state["epochs_since_growth"])
            stopped, stop_reason = bool(state["stopped"]), str(state["stop_reason"])
            # absent from earlier checkpoints, whose limit reasons all began so
            by_limit = bool(state.get("stopped_by_limit", stop_reason.startswith("reached ")))
            best, stale = state["best"], int(state["stale"])
            training_seconds = float(state.get("training_seconds", 0.0))  # absent from earlier checkpoints
            metrics = [dict(m) for m in state["metrics"]]
            fields = set(GrowthStage.__dataclass_fields__)
            history = [GrowthStage(**{k: v for k, v in stage.items() if k in fields}) for stage in state["history"]]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(
                f"not the state of a Grower ({type(error).__name__}: {error})",
                fix="pass what Grower.state_dict() returned",
            ) from None
        self.epoch, self.epochs_since_growth = epoch, epochs_since_growth
        self.stopped, self.stop_reason, self._stopped_by_limit = stopped, stop_reason, by_limit
        self._best, self._stale = best, stale
        self._training_seconds = training_seconds
        self.metrics, self.history = metrics, history

    # ---------------------------------------------------------------------------------------- the driver

    def fit(
        self,
        train_epoch: Callable[[int], float | dict[str, float] | None],
        epochs: int,
        *,
        evaluate: Callable[[], dict[str, float]] | None = None,
        scheduler_factory: Callable[[torch.optim.Optimizer, int], Any] | None = None,
        on_phase_end: Callable[[int], dict[str, float] | None] | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        extra_state: tuple[Callable[[], Any], Callable[[Any], None]] | None = None,
    ) -> list[GrowthStage]:
        """Train ``epochs`` epochs with ``train_epoch(epoch)``, growing on the policy's schedule.

        Args:
            train_epoch: one epoch of your training (returns its loss or metrics, or None).
            epochs: epochs in all, growth phases included.
            evaluate: metrics after every epoch (the plateau rule monitors ``policy.monitor`` in them).
            scheduler_factory: ``factory(optimizer, phase_epochs)`` makes a learning-rate scheduler for each phase
                (stepped once per epoch, after ``evaluate``; a ``ReduceLROnPlateau`` is given ``policy.monitor``),
                e.g. the paper's restart at every stage. ``phase_epochs`` is the phase's length: the policy's
                ``first``/``every``, or every epoch left when no stage follows (the last phase, a plateau schedule).
            on_phase_end: called with the phase's number (0 before the first growth) just before each growth and
                after the last epoch; the metrics it returns are kept in ``phase_metrics``.
            on_epoch_end: called with the epoch after its checkpoint (e.g. to stop the run in a test).
            checkpoint: a file written atomically after every epoch (model, optimisers, averaged models,
                scheduler, grower, RNG and ``extra_state``); with ``resume``, training continues from it exactly.
            extra_state: (get, set) of any further state to checkpoint (a data order generator, ...).
        """
        if scheduler_factory is not None and not isinstance(self.optimizer, torch.optim.Optimizer):
            raise SplitgrowError(
                "a scheduler_factory needs the grower's optimizer, a single one; with several optimisers, make and "
                "step their schedulers in train_epoch"
            )
        path = _check_fit(train_epoch, epochs, evaluate, scheduler_factory, on_phase_end, on_epoch_end, checkpoint)
        if extra_state is not None and not (
            isinstance(extra_state, tuple) and len(extra_state) == 2 and all(callable(f) for f in extra_state)
        ):
            raise ConfigError("extra_state must be a tuple (get, set) of two callables")
        self.phase_metrics: list[dict[str, float]] = []
        scheduler = None
        if resume and path is not None and path.is_file():
            scheduler = self._restore(path, scheduler_factory, extra_state)
            if self.epoch > epochs:  # the model is that of the checkpoint's later epoch, not of epoch `epochs`
                warnings.warn(
                    f"the checkpoint {path} is of epoch {self.epoch}, past the {epochs} asked for: the model stays "
                    "as it was then (nothing is trained)",
                    SplitgrowWarning,
                    stacklevel=2,
                )
        elif scheduler_factory is not None:
            scheduler = self._make_scheduler(scheduler_factory, epochs)
        self._training_started = time.perf_counter()
        # buffers infinite by design (a causal mask of -inf) are no sign of divergence: only those finite now are
        finite_buffers = {name for name, buffer in self.model.named_buffers() if finite(buffer)}
        while self.epoch < epochs:
            epoch = self.epoch
            returned = train_epoch(epoch)
            broken = non_finite_tensor(self.model, finite_buffers)
            if broken is not None:  # before the checkpoint: the last one written stays that of finite weights
                raise DivergenceError(
                    f"training diverged in epoch {epoch}: the model's '{broken}' is not finite (NaN or infinite)",
                    fix="lower the learning rate (or clip the gradients) and resume from the last checkpoint",
                )
            evaluated = evaluate() if evaluate is not None else {}
            if not isinstance(evaluated, Mapping):
                raise ConfigError(f"evaluate must return a dict of metrics, got {type(evaluated).__name__}")
            metrics = dict(evaluated)
            if isinstance(returned, Mapping):
                metrics = {**returned, **metrics}
            elif returned is not None:
                if not (isinstance(returned, (numbers.Real, Tensor)) and not isinstance(returned, bool)):
                    raise ConfigError(
                        f"train_epoch must return its loss (a number), a dict of metrics or None, got "
                        f"{type(returned).__name__}"
                    )
                metrics.setdefault("train_loss", returned)  # checked (a single number) with the other metrics
            if scheduler is not None:
                self._step_scheduler(scheduler, metrics)
            stage = None
            if self._end_epoch(metrics, may_grow=self.epoch + 1 < epochs):
                if on_phase_end is not None:
                    self.phase_metrics.append(dict(on_phase_end(len(self.history)) or {}))
                stage = self.grow(metrics)
                if stage is None and on_phase_end is not None:
                    self.phase_metrics.pop()  # nothing grew: the phase goes on, and ends later
            self._training_started = time.perf_counter()
            if stage is not None and scheduler_factory is not None:
                scheduler = self._make_scheduler(scheduler_factory, epochs)
            if path is not None:
                self._save(path, scheduler, extra_state)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        if on_phase_end is not None and len(self.phase_metrics) <= len(self.history):
            self.phase_metrics.append(dict(on_phase_end(len(self.history)) or {}))
            if path is not None:
                self._save(path, scheduler, extra_state)
        return self.history

    def _make_scheduler(self, scheduler_factory: Callable[[torch.optim.Optimizer, int], Any], epochs: int) -> Any:
        """The next phase's scheduler; its length is checkpointed, so that a resumed run makes the same one."""
        self._phase_epochs_made = self._phase_epochs(epochs)
        return _checked_scheduler(scheduler_factory(self.optimizer, self._phase_epochs_made))

    def _step_scheduler(self, scheduler: Any, metrics: dict[str, float]) -> None:
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
            return
        monitor = self.policy.monitor
        if monitor not in metrics:
            raise SplitgrowError(
                f"the ReduceLROnPlateau of scheduler_factory steps on policy.monitor = {monitor!r}, which this "
                f"epoch's metrics do not have (they have: {', '.join(metrics) or 'none'}); return it from evaluate or "
                "train_epoch, or set GrowthPolicy(monitor=...)"
            )
        scheduler.step(float(metrics[monitor]))

    def _phase_epochs(self, epochs: int) -> int:
        length = self.policy.phase_length(len(self.history))
        left = epochs - self.epoch
        if length is None or self.stopped or self._limit_reached() is not None:
            return max(1, left)  # no stage ends this phase: it lasts to the end
        return max(1, min(length, left))

    def _save(self, path: Path, scheduler: Any, extra_state) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": [optimizer.state_dict() for optimizer in optimizer_list(self.optimizer)],
            "averaged_models": [averaged.state_dict() for averaged in self.averaged_models],
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "phase_epochs": self._phase_epochs_made,
            "policy": _policy_settings(self.policy),
            "grower": self.state_dict(),
            "phase_metrics": self.phase_metrics,
            "rng": torch.get_rng_state(),
            "extra": None if extra_state is None else extra_state[0](),
        }
        if dist.rank() != 0:
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def _restore(self, path: Path, scheduler_factory, extra_state) -> Any:
        """Continue from the checkpoint at ``path``: everything, or nothing (a checkpoint of another model,
        optimiser or averaged models raises before, or is rolled back).

        Raises:
            CheckpointError: a damaged file, or a checkpoint that does not fit this run.
        """
        from ..checkpoints import load_tensors

        state = load_tensors(path)
        self._check_checkpoint(path, state)
        saved_policy, policy = state.get("policy"), _policy_settings(self.policy)
        if isinstance(saved_policy, dict):  # absent from earlier checkpoints
            changed = [
                f"{name} {saved_policy[name]!r} -> {value!r}"
                for name, value in policy.items()
                if name in saved_policy and saved_policy[name] != value
            ]
            if changed:  # may be meant (more stages); said, since the schedule so far followed the other policy
                warnings.warn(
                    f"resuming {path} under another growth policy ({'; '.join(changed)}): the stages so far followed "
                    "the checkpoint's",
                    SplitgrowWarning,
                    stacklevel=3,
                )
        restarts = isinstance(saved_policy, dict) and saved_policy != policy
        backup = (
            _on_cpu(self.model.state_dict()),  # a copy on the CPU: a resume must not double the GPU's memory
            [_on_cpu(optimizer.state_dict()) for optimizer in optimizer_list(self.optimizer)],
            [_on_cpu(averaged.state_dict()) for averaged in self.averaged_models],
            self.state_dict(),
            torch.get_rng_state(),
        )
        try:
            scheduler = self._apply_checkpoint(state, scheduler_factory, extra_state)
        except Exception as error:
            model_state, optimizer_states, averaged_states, grower_state, rng = backup
            resize_like(self.model, model_state)
            self.model.load_state_dict(model_state)
            for optimizer, saved in zip(optimizer_list(self.optimizer), optimizer_states):
                optimizer.load_state_dict(saved)
            for averaged, saved in zip(self.averaged_models, averaged_states):
                resize_like(averaged, saved)
                averaged.load_state_dict(saved)
            self.load_state_dict(grower_state)
            torch.set_rng_state(rng)
            if isinstance(error, SplitgrowError):
                raise
            raise CheckpointError(
                f"the checkpoint does not fit this run ({type(error).__name__}: {error})",
                path,
                "resume with the model, optimisers, scheduler and averaged models it was written with, or delete it "
                "to start again",
            ) from error
        # a run stopped by a limit the new policy raised goes on growing (a limit it still meets stops it again)
        if restarts and self.stopped and self._stopped_by_limit and self._limit_reached() is None:
            self.stopped, self.stop_reason, self._stopped_by_limit = False, "", False
        return scheduler

    def _check_checkpoint(self, path: Path, state: Any) -> None:
        """Refuse, before anything changes, a file that is not a checkpoint of :meth:`fit` or one written with other
        tensors, optimisers or averaged models than this run has."""
        keys = ("model", "optimizer", "grower", "rng")

        def refuse(problem: str) -> CheckpointError:
            return CheckpointError(
                problem,
                path,
                "resume with the model, optimisers and averaged models it was written with, or delete it to start "
                "again",
            )

        if not isinstance(state, dict) or any(key not in state for key in keys):
            raise CheckpointError(
                "not a checkpoint of Grower.fit (it lacks the model, optimiser or grower state)",
                path,
                "give fit a checkpoint path of its own (it writes the file), or delete this one to start again",
            )
        saved_model = state["model"]
        if not isinstance(saved_model, Mapping) or set(saved_model) != set(self.model.state_dict()):
            names = set(saved_model) if isinstance(saved_model, Mapping) else set()
            missing = sorted(set(self.model.state_dict()) - names)[:3]
            extra = sorted(names - set(self.model.state_dict()))[:3]
            raise refuse(
                f"the checkpoint holds the state of another model (missing: {', '.join(missing) or 'none'}; not in "
                f"this model: {', '.join(extra) or 'none'})"
            )
        saved_optimizers = state["optimizer"]
        if isinstance(saved_optimizers, dict):  # a checkpoint of one optimiser, written before several were allowed
            saved_optimizers = [saved_optimizers]
        optimizers = optimizer_list(self.optimizer)
        if len(saved_optimizers or []) != len(optimizers):
            raise refuse(
                f"the checkpoint holds the state of {len(saved_optimizers or [])} optimiser(s), this run has "
                f"{len(optimizers)}"
            )
        for position, (optimizer, saved) in enumerate(zip(optimizers, saved_optimizers)):
            groups = saved.get("param_groups") if isinstance(saved, dict) else None
            own = optimizer.state_dict()["param_groups"]
            if not isinstance(groups, list) or len(groups) != len(own):
                raise refuse(f"optimiser {position} of the checkpoint has other parameter groups than this run's")
            for saved_group, group in zip(groups, own):
                # a scheduler adds settings of its own (initial_lr): only the optimiser's own must all be there
                missing = sorted(set(optimizer.defaults) - set(saved_group))
                if missing or len(saved_group.get("params", ())) != len(group["params"]):
                    raise refuse(
                        f"optimiser {position} of the checkpoint is not this run's {type(optimizer).__name__} of the "
                        f"same parameters (its settings lack {', '.join(missing) or 'none'}; parameters: "
                        f"{len(saved_group.get('params', ()))} saved, {len(group['params'])} here)"
                    )
        saved_averaged = state.get("averaged_models") or []
        if len(saved_averaged) != len(self.averaged_models):
            raise refuse(
                f"the checkpoint holds {len(saved_averaged)} averaged model(s), this run has "
                f"{len(self.averaged_models)}"
            )

    def _apply_checkpoint(self, state: dict[str, Any], scheduler_factory, extra_state) -> Any:
        resize_like(self.model, state["model"])
        self.model.load_state_dict(state["model"])
        self.load_state_dict(state["grower"])
        for averaged, saved in zip(self.averaged_models, state.get("averaged_models", [])):
            resize_like(averaged, saved)
            averaged.load_state_dict(saved)
        # a new scheduler sets the learning rate: make it first, then restore the optimiser's and its own state
        scheduler = None
        if scheduler_factory is not None:
            self._phase_epochs_made = state.get("phase_epochs") or self._phase_epochs_at_restore()
            scheduler = _checked_scheduler(scheduler_factory(self.optimizer, self._phase_epochs_made))
        saved_optimizers = state["optimizer"]
        if isinstance(saved_optimizers, dict):  # a checkpoint of one optimiser, written before several were allowed
            saved_optimizers = [saved_optimizers]
        for optimizer, saved in zip(optimizer_list(self.optimizer), saved_optimizers or []):
            optimizer.load_state_dict(saved)
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        self.phase_metrics = list(state["phase_metrics"])
        torch.set_rng_state(state["rng"])
        if extra_state is not None:
            extra_state[1](state["extra"])
        return scheduler

    def _phase_epochs_at_restore(self) -> int:
        """The phase length of a checkpoint that did not record it (written by an earlier version)."""
        length = self.policy.phase_length(len(self.history))
        return 1 if length is None else length


def _check_fit(
    train_epoch: Any,
    epochs: Any,
    evaluate: Any,
    scheduler_factory: Any,
    on_phase_end: Any,
    on_epoch_end: Any,
    checkpoint: Any,
) -> Path | None:
    """Refuse :meth:`Grower.fit` arguments of the wrong type or value before any epoch runs; the checkpoint's
    path.

    Raises:
        ConfigError: naming the argument.
    """
    if not callable(train_epoch):
        raise ConfigError(f"train_epoch must be callable (train_epoch(epoch) trains one epoch), got {train_epoch!r}")
    if not is_count(epochs, 0):
        raise ConfigError(f"epochs must be an integer >= 0 (the epochs in all), got {epochs!r}")
    for name, value in (
        ("evaluate", evaluate),
        ("scheduler_factory", scheduler_factory),
        ("on_phase_end", on_phase_end),
        ("on_epoch_end", on_epoch_end),
    ):
        if value is not None and not callable(value):
            raise ConfigError(f"{name} must be callable (or None), got {type(value).__name__}")
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ConfigError(f"checkpoint must be a file path, got {checkpoint!r}")
    path = Path(checkpoint)
    if path.is_dir():
        raise ConfigError(
            f"the checkpoint {path} is a folder", fix="give the path of a file in it, e.g. checkpoint='run/grow.pt'"
        )
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"the checkpoint's folder {blocking} is a file", fix="give a path in a folder")
    # a folder that cannot be written would fail at the first checkpoint, after an epoch of training: try it now
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as error:
        raise ConfigError(
            f"the checkpoint {path} cannot be written ({error.strerror or error})",
            fix="give a path in a folder you can write to",
        ) from None
    return path


def _checked_scheduler(scheduler: Any) -> Any:
    """What a ``scheduler_factory`` made, refused unless it can be stepped and checkpointed."""
    if not all(callable(getattr(scheduler, name, None)) for name in ("step", "state_dict", "load_state_dict")):
        raise ConfigError(
            f"scheduler_factory must return a learning-rate scheduler (with step and state_dict), got "
            f"{type(scheduler).__name__}",
            fix="return the scheduler it makes, e.g. lambda optimizer, epochs: CosineAnnealingLR(optimizer, epochs)",
        )
    return scheduler


def _within(prefix: str, requests: Sequence[SplitRequest | NewNeuron], graph) -> list[SplitRequest | NewNeuron]:
    """``requests`` for an averaged copy of the model's module ``prefix`` (unchanged for a copy of the whole model):
    site and consumer names relative to the module.

    Raises:
        SplitgrowError: a split would change a layer outside the module, which the copy cannot follow.
    """
    if not prefix:
        return list(requests)
    start = prefix + "."
    mapped = []
    for request in requests:
        changed = [m for modules in graph.coupled_modules(request.site).values() for m in modules]
        outside = [m for m in changed if not m.startswith(start)]
        if outside:
            raise SplitgrowError(
                f"a split of '{request.site}' changes {', '.join(repr(m) for m in outside)}, outside '{prefix}', of "
                "which an averaged copy is kept: average the whole model, or exclude the site"
            )
        relative = {"site": request.site[len(start) :], "fingerprint": None}
        if isinstance(request, NewNeuron) and request.output is not None:
            relative["output"] = {name[len(start) :]: value for name, value in request.output.items()}
        mapped.append(replace(request, **relative))
    return mapped


def _plain_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The metrics as Python floats (a NumPy scalar or a one-element tensor as well), so that the history and the
    checkpoints hold plain values, which the weights-only loader of :meth:`Grower.fit` reads back.

    Raises:
        ConfigError: a metric that is not a single number.
    """
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ConfigError(
            f"metrics must be a dict of numbers (e.g. {{'loss': validation_loss}}), got {type(metrics).__name__}"
        )
    plain = {}
    for name, value in (metrics or {}).items():
        try:
            plain[str(name)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                f"metric {name!r} is not a single number ({type(value).__name__}); give epoch_end (with fit: evaluate "
                "or train_epoch) numbers only"
            ) from None
    return plain


def _describe(request: SplitRequest | NewNeuron) -> dict[str, Any]:
    """A split or new neuron as plain values, for the stage's record."""
    if isinstance(request, NewNeuron):
        return {"site": request.site, "new": True, "after": request.after}
    found = {"site": request.site, "channel": request.channel, "index": request.index}
    if request.offspring is not None:
        found["weights"] = [child.weight for child in request.offspring]
    return found


def _excluded_within(exclude: tuple[str, ...], prefix: str, copy: nn.Module) -> tuple[str, ...]:
    """The model's ``exclude`` entries as names in the averaged ``copy`` of its module ``prefix`` ('' for the whole
    model): those inside it, without the prefix; one naming the module itself excludes all of the copy."""
    if not prefix:
        return exclude
    if any(is_within(prefix, name) for name in exclude):
        return tuple(name for name, _ in copy.named_children())
    return tuple(name[len(prefix) + 1 :] for name in exclude if name.startswith(prefix + "."))


def _policy_settings(policy: GrowthPolicy) -> dict[str, Any]:
    """A policy's settings as plain values, to compare a resumed run's with its checkpoint's (a trigger, a
    callable, is left out: two equal ones need not compare equal)."""
    settings: dict[str, Any] = {}
    for setting in dataclasses.fields(policy):
        value = getattr(policy, setting.name)
        if value is None or isinstance(value, (bool, int, float, str)):
            settings[setting.name] = value
        elif dataclasses.is_dataclass(value) or isinstance(value, dict):
            settings[setting.name] = repr(value)
    return settings


def _on_cpu(state: Any) -> Any:
    """A deep copy of a (nested) state with every tensor on the CPU; ``load_state_dict`` moves them back."""
    if isinstance(state, Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, Mapping):
        return {key: _on_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(value) for value in state)
    return deepcopy(state)


def check_policy(policy: Any) -> None:
    """Refuse (ConfigError) a ``policy`` that is not a :class:`GrowthPolicy`."""
    if not isinstance(policy, GrowthPolicy):
        raise ConfigError(
            f"policy must be a GrowthPolicy, got {type(policy).__name__}",
            fix="e.g. policy=GrowthPolicy(every=2, count=4)",
        )


def averaged_model_list(models: Any, *, or_callable: bool = False) -> list[nn.Module]:
    """Averaged copies of the model as a list of modules, or a ConfigError naming what is wrong (``or_callable``:
    the Lightning callback also takes a callable (pl_module) -> list, which its message says)."""
    if isinstance(models, nn.Module) or isinstance(models, (str, bytes)) or not isinstance(models, Iterable):
        what = "a list of modules" + (" or a callable (pl_module) -> list of modules" if or_callable else "")
        fix = None
        if isinstance(models, nn.Module):
            fix = "write averaged_models=lambda module: [module.ema]" if or_callable else "write averaged_models=[ema]"
        raise ConfigError(f"averaged_models must be {what}, got {type(models).__name__}", fix=fix)
    models = list(models)
    for position, averaged in enumerate(models):
        if not isinstance(averaged, nn.Module):
            raise ConfigError(
                f"averaged_models[{position}] is a {type(averaged).__name__}, not a module: give averaged copies "
                "of the model (torch.optim.swa_utils.AveragedModel, an EMA module)"
            )
    return models
