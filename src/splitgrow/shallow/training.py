"""A small full-batch training loop for models whose parameters are rows, one row per neuron.

The toy experiments (and baselines such as gradient boosting, which trains new neurons with the old ones
frozen) need exactly this: a loss closure, an optimiser, and a mask of the neurons that may move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import DivergenceError

OptimizerFactory = Callable[[Sequence[Tensor]], torch.optim.Optimizer]


@dataclass
class TrainingTrace:
    """Losses recorded during a call to :func:`train_rows`, at iterations counted from its start."""

    iterations: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def record(self, iteration: int, loss: float) -> None:
        self.iterations.append(iteration)
        self.losses.append(loss)


def train_rows(
    parameters: Sequence[Tensor],
    loss_closure: Callable[[], Tensor],
    optimizer_factory: OptimizerFactory,
    iterations: int,
    *,
    trainable: Tensor | None = None,
    record_every: int = 1,
    on_progress: Callable[[int], None] | None = None,
    on_record: Callable[[int, float], None] | None = None,
) -> TrainingTrace:
    """Minimise ``loss_closure()`` over ``parameters`` for a number of full-batch iterations.

    Args:
        parameters: leaf tensors whose first dimension indexes neurons (row j of each belongs to neuron j).
        loss_closure: computes the loss from the current parameters.
        optimizer_factory: builds a fresh optimiser over ``parameters``.
        iterations: optimiser steps to take.
        trainable: positions of the neurons allowed to move; None trains all of them. The gradient rows of
            the others are zeroed before each step, which leaves them unchanged for SGD and Adagrad.
        record_every: record the loss every this many iterations; the losses before the first step and after
            the last are always recorded.
        on_progress: called with the number of iterations done since its previous call.
        on_record: called with (iteration, loss) at every recorded iteration, before that iteration's step.

    Raises:
        DivergenceError: the loss became NaN or infinite.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    parameters = list(parameters)
    frozen_mask: Tensor | None = None
    if trainable is not None:
        num_rows = parameters[0].shape[0]
        frozen_mask = torch.ones(num_rows, dtype=torch.bool, device=parameters[0].device)
        frozen_mask[trainable] = False
    optimizer = optimizer_factory(parameters)
    trace = TrainingTrace()
    progress_step = max(1, min(1000, iterations // 100 or 1))
    pending = 0
    for iteration in range(iterations):
        optimizer.zero_grad(set_to_none=False)
        loss = loss_closure()
        if iteration % record_every == 0:
            _record_checked(trace, iteration, loss, on_record)
        loss.backward()
        if frozen_mask is not None:
            for parameter in parameters:
                parameter.grad[frozen_mask] = 0.0
        optimizer.step()
        pending += 1
        if on_progress is not None and pending == progress_step:
            on_progress(pending)
            pending = 0
    with torch.no_grad():
        _record_checked(trace, iterations, loss_closure(), on_record)
    if on_progress is not None and pending:
        on_progress(pending)
    return trace


def _record_checked(
    trace: TrainingTrace, iteration: int, loss: Tensor | float, on_record: Callable[[int, float], None] | None
) -> None:
    value = float(loss.detach() if isinstance(loss, Tensor) else loss)
    if not math.isfinite(value) and iteration == 0:
        raise DivergenceError(
            f"the training loss was {value} at iteration 0, before any step",
            "the starting parameters: the initialisation, or the growth step before this phase",
            "check init_std, init_weight_std and the data",
        )
    if not math.isfinite(value):
        raise DivergenceError(f"the training loss became {value}", f"iteration {iteration}", "lower the learning rate")
    trace.record(iteration, value)
    if on_record is not None:
        on_record(iteration, value)
