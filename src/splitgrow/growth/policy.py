"""A growth policy: when to grow, by how much, how, and when to stop.

When: after ``first`` epochs, then every ``every`` epochs; or when a monitored metric (a validation loss) has not
improved by ``plateau_delta`` for ``plateau_patience`` epochs; or whenever ``trigger(state)`` says so. How much,
exactly one of: ``count`` neurons, a ``fraction`` of the current neurons, or a budget of added parameters or FLOPs
as a fraction of the current ones (``parameter_ratio``, ``flops_ratio``: the paper grows DS-CNN by 30% a stage),
spent by energy-aware selection. A neuron is a coupling group of channels (a pointwise channel and the depthwise
filter it feeds), so counts and fractions count groups. When to stop: after ``max_stages`` stages, once a stage has
brought the model to ``max_parameters`` parameters or ``max_flops`` FLOPs, or (``stop_when_stable``) when no index
is below the threshold: the network is splitting-stable. :class:`GrowthPolicy` says each rule exactly.

How: ``method`` is ``"splitting"`` (the paper: theta +/- eps v_min, halved output weights), ``"signed"`` (signed
splitting with offspring weights bounded by ``weight_bound``: :mod:`splitgrow.signed`) or ``"firefly"`` (splits and
brand-new neurons ranked together: :mod:`splitgrow.firefly`, tuned by ``firefly``). With ``count`` or ``fraction``
a stage adds that many neurons, whatever the method (a signed split adds up to three, so a signed stage makes fewer
splits); the budgets, too, count every added neuron.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..checks import MAX_STEP_SIZE, is_count, is_number, is_step_size
from ..errors import ConfigError
from ..firefly import FireflyOptions
from ..statistics import SOLVERS
from ..statistics.adaptive import AdaptiveStatistics

#: how a stage grows: the paper's splits, signed splits, or Firefly (splits and new neurons)
METHODS = ("splitting", "signed", "firefly")
#: how a monitored metric improves: ``"min"`` (a loss) or ``"max"`` (an accuracy)
MODES = ("min", "max")


@dataclass
class GrowthState:
    """What a trigger sees: the epoch just ended, the stages so far and the metrics of every epoch."""

    epoch: int
    stages: int
    #: epochs since the last stage (since the start before the first)
    epochs_since_growth: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    #: the model's parameters now
    parameters: int = 0


@dataclass
class GrowthPolicy:
    """The schedule of a :class:`~splitgrow.growth.grower.Grower` (see the module docstring).

    Epochs are counted by :meth:`~splitgrow.growth.grower.Grower.epoch_end` calls: the call after the k-th epoch
    sees epoch k. No rule grows before epoch ``first``; from then on a stage is due when any of ``every``,
    ``plateau_patience`` and ``trigger`` says so and no stopping rule has stopped the grower.

    Attributes:
        first: the epochs before growth may start (0 and 1 both let the first ``epoch_end`` grow).
        every: with no stage yet, grow once ``first`` epochs have passed; after a stage (however it was triggered),
            once ``every`` epochs have passed since it. None: no fixed schedule. The default, ``"auto"``, is 1 when
            neither ``plateau_patience`` nor ``trigger`` is given and None when one is, so that
            ``GrowthPolicy(plateau_patience=3, ...)`` grows on plateaus only (resolved when the policy is made:
            ``dataclasses.replace`` keeps the resolved value).
        plateau_patience: grow when ``metrics[monitor]`` has not improved for this many consecutive epochs. An
            improvement is a value below the best so far by more than ``plateau_delta`` (above it, with
            ``mode="max"``); the first value after the start or after a stage is the new best. A NaN value never
            improves (it counts towards the patience and never becomes the best). Epochs before ``first`` count
            too: a plateau that began earlier makes a stage due at epoch ``first``. Every ``epoch_end`` then needs
            the metric while the grower has not stopped: without it, :class:`~splitgrow.errors.ConfigError`.
        plateau_delta: the absolute margin (>= 0) an improvement must beat.
        monitor: the metric the plateau rule watches (and a ``ReduceLROnPlateau`` of ``Grower.fit`` steps on).
        mode: ``"min"`` (the metric is a loss) or ``"max"`` (an accuracy).
        trigger: ``trigger(state)`` (a :class:`GrowthState`) returning True makes a stage due; called once per
            epoch from epoch ``first`` on while the grower has not stopped (not after the last epoch of
            ``Grower.fit``, which no training would follow).
        count: the neurons a stage adds (exactly one of ``count``, ``fraction``, ``parameter_ratio`` and
            ``flops_ratio``).
        fraction: the neurons a stage adds as a share of the current neurons (coupling groups), rounded up: at
            least one.
        parameter_ratio, flops_ratio: the parameters (FLOPs per sample) a stage may add, as a share of the current
            ones; the whole stage's true cost stays within it (coupled layers grown together included).
        max_stages: no stage after this many.
        max_parameters, max_flops: no stage once the model has at least this many parameters (FLOPs per sample,
            :func:`splitgrow.inspection.model_flops`). A stage is not cut short to stay below the limit: growth stops
            after the first stage that reaches it, which may exceed it by up to one stage's growth.
        stop_when_stable: stop when a stage finds no eligible neuron with an index below ``threshold`` (splitting-
            stable); otherwise such a stage adds nothing and growth goes on. Fewer eligible neurons than a stage
            asks for make a smaller stage, whose ``shortfall`` says so. A budget too small for any split stops the
            grower either way (it would be as small at every later stage).
        epsilon: the split step size; a two-way split changes the loss by about epsilon^2/2 * its index.
        threshold: lambda_* (<= 0): only neurons with an index strictly below it are split.
        allow_inexact: also split sites whose split is not function-preserving (see ``SplittableNetwork``).
        solver: the eigensolver of the splitting matrices (``splitgrow.statistics.SOLVERS``).
        statistics_batches: the batches of the statistics data a stage uses (its first ones; None: all of them).
            Ignored with ``adaptive``, whose ``max_batches`` bounds them instead.
        adaptive: draw statistics batches only until the selection settles
            (:class:`~splitgrow.statistics.adaptive.AdaptiveStatistics`).
        measure: measure the loss after each split on the batches the statistics used (``GrowthStage.loss_after``).
        options: further :class:`~splitgrow.statistics.splitting.SolverOptions` settings.
        method, weight_bound, firefly: how a stage grows (see the module docstring).
    """

    first: int = 1
    every: int | Literal["auto"] | None = "auto"
    plateau_patience: int | None = None
    plateau_delta: float = 0.0
    monitor: str = "loss"
    mode: str = "min"
    trigger: Callable[[GrowthState], bool] | None = None
    count: int | None = None
    fraction: float | None = None
    parameter_ratio: float | None = None
    flops_ratio: float | None = None
    max_stages: int | None = None
    max_parameters: int | None = None
    max_flops: int | None = None
    stop_when_stable: bool = True
    epsilon: float = 0.01
    threshold: float = 0.0
    allow_inexact: bool = False
    solver: str = "auto"
    statistics_batches: int | None = 16
    adaptive: AdaptiveStatistics | None = None
    measure: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    method: str = "splitting"
    weight_bound: float = 3.0
    firefly: FireflyOptions = field(default_factory=FireflyOptions)

    def __post_init__(self) -> None:
        amounts = [self.count, self.fraction, self.parameter_ratio, self.flops_ratio]
        if sum(a is not None for a in amounts) != 1:
            raise ConfigError(
                "give exactly one of count, fraction, parameter_ratio and flops_ratio (how much a stage grows)"
            )
        if self.count is not None and not is_count(self.count, 1):
            raise ConfigError(f"count must be an integer >= 1, got {self.count!r}")
        for name in ("fraction", "parameter_ratio", "flops_ratio"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.every == "auto":
            self.every = 1 if self.plateau_patience is None and self.trigger is None else None
        if not is_count(self.first, 0) or not (self.every is None or is_count(self.every, 1)):
            raise ConfigError(
                f"first must be an integer >= 0 and every an integer >= 1 (or None), got {self.first!r}, {self.every!r}"
            )
        if self.every is None and self.plateau_patience is None and self.trigger is None:
            raise ConfigError("give every, plateau_patience or trigger: when to grow")
        if self.plateau_patience is not None and not is_count(self.plateau_patience, 1):
            raise ConfigError(f"plateau_patience must be an integer >= 1, got {self.plateau_patience!r}")
        if not (is_number(self.plateau_delta) and self.plateau_delta >= 0):
            raise ConfigError(f"plateau_delta must be a finite number >= 0, got {self.plateau_delta!r}")
        if self.mode not in MODES:
            raise ConfigError(
                f"mode must be one of {', '.join(MODES)} (how {self.monitor!r} improves), got {self.mode!r}"
            )
        for name in ("max_stages", "max_parameters", "max_flops"):
            value = getattr(self, name)
            if value is not None and not is_count(value, 0):
                raise ConfigError(f"{name} must be an integer >= 0 (or None), got {value!r}")
        if not is_step_size(self.epsilon):
            raise ConfigError(
                f"epsilon (the split step size) must be a number in [0, {MAX_STEP_SIZE:g}], got {self.epsilon!r}"
            )
        if not (is_number(self.threshold) and self.threshold <= 0):
            raise ConfigError(f"threshold (lambda_*) must be a number <= 0, got {self.threshold!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not (is_number(self.weight_bound) and self.weight_bound >= 1):
            raise ConfigError(
                f"weight_bound (c, signed splitting) must be a finite number >= 1, got {self.weight_bound!r}"
            )
        if self.method == "signed" and self.solver == "rayleigh":
            raise ConfigError("signed splitting needs lambda_max too: use the dense, lobpcg or auto solver")
        if self.trigger is not None and not callable(self.trigger):
            raise ConfigError(
                f"trigger must be a function of the growth state returning True when a stage is due (or None), got "
                f"{self.trigger!r}; to grow every k epochs, set every=k"
            )
        self._check_options()
        if self.statistics_batches is not None and not is_count(self.statistics_batches, 1):
            raise ConfigError(
                f"statistics_batches must be an integer >= 1 (or None: all), got {self.statistics_batches!r}"
            )

    def _check_options(self) -> None:
        """Refuse, when the policy is made (not at its first stage, after an epoch), solver options that are not
        SolverOptions fields or that the policy sets itself; build them once, so that a bad value is named too."""
        from ..statistics.splitting import SolverOptions

        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be a dict of SolverOptions settings, got {type(self.options).__name__}")
        own = {"solver": "solver", "seed": "the grower's seed", "largest": "method='signed'"}
        for name in self.options:
            if name in own:
                raise ConfigError(f"options must not set {name!r}: the policy sets it (use {own[name]})")
        unknown = sorted(set(self.options) - set(SolverOptions.__dataclass_fields__))
        if unknown:
            known = ", ".join(sorted(set(SolverOptions.__dataclass_fields__) - set(own)))
            raise ConfigError(f"unknown solver option(s) in options: {', '.join(map(repr, unknown))}; known: {known}")
        SolverOptions(solver=self.solver, **self.options)

    def improved(self, value: float, best: float | None) -> bool:
        """Whether a monitored ``value`` improves on the ``best`` so far (None: no best yet) by the plateau rule."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best - self.plateau_delta if self.mode == "min" else value > best + self.plateau_delta

    def due(self, state: GrowthState, plateaued: bool) -> bool:
        """Whether a stage is due after the epoch just ended (``state.epoch`` epochs done)."""
        if state.epoch < self.first:
            return False
        if self.trigger is not None and self.trigger(state):
            return True
        if plateaued:
            return True
        if self.every is not None:
            return state.epochs_since_growth >= (self.first if state.stages == 0 else self.every)
        return False

    def phase_length(self, stage: int) -> int | None:
        """Epochs of phase ``stage`` (0: before the first growth) when the schedule fixes it: None without ``every``
        (a plateau or trigger schedule, whose stages come when they come)."""
        if self.every is None:
            return None
        return self.first if stage == 0 else self.every
