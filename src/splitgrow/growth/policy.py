"""A growth policy: when to grow, by how much, how, and when to stop.

When: after ``first`` epochs, then every ``every`` epochs; or when a monitored metric (a validation loss) has not
improved by ``plateau_delta`` for ``plateau_patience`` epochs; or whenever ``trigger(state)`` says so. How much,
exactly one of: ``count`` neurons, a ``fraction`` of the current neurons, or a budget of added parameters or FLOPs
as a fraction of the current ones (``parameter_ratio``, ``flops_ratio``: the paper grows DS-CNN by 30% a stage),
spent by energy-aware selection. A neuron is a coupling group of channels (a pointwise channel and the depthwise
filter it feeds), so counts and fractions count groups. When to stop: after ``max_stages`` stages, once the model
has ``max_parameters`` parameters or ``max_flops`` FLOPs, or (``stop_when_stable``) when no index is below the
threshold: the network is splitting-stable.

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
from typing import Any

from ..errors import ConfigError
from ..firefly import FireflyOptions
from ..statistics import SOLVERS
from ..statistics.adaptive import AdaptiveStatistics

#: how a stage grows: the paper's splits, signed splits, or Firefly (splits and new neurons)
METHODS = ("splitting", "signed", "firefly")


@dataclass
class GrowthState:
    """What a trigger sees: the epoch just ended, the stages so far and the metrics of every epoch."""

    epoch: int
    stages: int
    #: epochs since the last stage (since the start before the first)
    epochs_since_growth: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    parameters: int = 0


@dataclass
class GrowthPolicy:
    """The schedule of a :class:`~splitgrow.growth.grower.Grower` (see the module docstring)."""

    first: int = 1
    every: int | None = 1
    plateau_patience: int | None = None
    plateau_delta: float = 0.0
    monitor: str = "loss"
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
        if self.count is not None and (isinstance(self.count, bool) or self.count < 1):
            raise ConfigError(f"count must be an integer >= 1, got {self.count!r}")
        for name in ("fraction", "parameter_ratio", "flops_ratio"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.first < 0 or (self.every is not None and self.every < 1):
            raise ConfigError("first must be >= 0 and every >= 1 (or None)")
        if self.every is None and self.plateau_patience is None and self.trigger is None:
            raise ConfigError("give every, plateau_patience or trigger: when to grow")
        if self.plateau_patience is not None and self.plateau_patience < 1:
            raise ConfigError(f"plateau_patience must be >= 1, got {self.plateau_patience}")
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ConfigError(f"epsilon (the split step size) must be a finite number >= 0, got {self.epsilon!r}")
        if not (math.isfinite(self.threshold) and self.threshold <= 0):
            raise ConfigError(f"threshold (lambda_*) must be <= 0, got {self.threshold!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not (math.isfinite(self.weight_bound) and self.weight_bound >= 1):
            raise ConfigError(
                f"weight_bound (c, signed splitting) must be a finite number >= 1, got {self.weight_bound!r}"
            )
        if self.method == "signed" and self.solver == "rayleigh":
            raise ConfigError("signed splitting needs lambda_max too: use the dense, lobpcg or auto solver")
        if self.statistics_batches is not None and self.statistics_batches < 1:
            raise ConfigError(f"statistics_batches must be >= 1 (or None: all), got {self.statistics_batches}")

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
        """Epochs of phase ``stage`` (0: before the first growth) when the schedule fixes it."""
        if stage == 0:
            return self.first
        return self.every
