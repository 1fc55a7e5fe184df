"""Algorithm 1 (splitting steepest descent) and the paper's baselines, behind one growth interface.

A *growable problem* is a model bound to its loss (see :class:`GrowableProblem`). A *growth method* adds neurons
to it; :func:`run_growth` alternates training phases with growth steps and records everything:

    train -> grow -> train -> grow -> ... -> train

Methods:

* :class:`SplittingSteepestDescent`: split the (at most m_*) neurons with the most negative splitting indexes,
  all below lambda_*, into theta +/- eps v_min (the paper's Algorithm 1).
* :class:`RandomSplit`: split randomly chosen neurons along random unit directions.
* :class:`Net2Net`: duplicate randomly chosen neurons exactly (eps = 0), halving their output weights.
* :class:`NewInitialization`: add randomly initialised neurons, trained together with the old ones.
* :class:`GradientBoosting`: add a neuron fitted to what the current ones leave unexplained, with the old
  neurons frozen (Frank-Wolfe; kernel herding when the problem is a particle approximation).

Beyond the paper, in modules of their own: :class:`~.signed_splitting.SignedSplitting` (offspring weights of either
sign) and :class:`~.firefly_growth.FireflyGrowth` (splits and brand-new neurons ranked together).

The network trained from scratch at the final size is :func:`train_from_scratch`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import DivergenceError
from ..selection import select_neurons, validate_selection
from ..shallow.training import TrainingTrace
from ..solvers import dense_eigenpairs
from ..surgery import Offspring


@runtime_checkable
class GrowableProblem(Protocol):
    """A model bound to the loss it is trained on, as the growth methods see it."""

    @property
    def size(self) -> int:
        """The number of neurons that can be split."""

    @property
    def parameter_dim(self) -> int:
        """d, the number of parameters of one neuron (the side of its splitting matrix)."""

    def loss(self) -> float:
        """The current training loss."""

    def splitting_matrices(self) -> Tensor:
        """(size, d, d) splitting matrices of all neurons at the current parameters."""

    def split(self, positions: Tensor, directions: Tensor, epsilon: float) -> Tensor:
        """Split neurons into theta +/- epsilon * direction with halved output weights; returns new positions."""

    def add_random(self, count: int, generator: torch.Generator) -> Tensor:
        """Add randomly initialised neurons; returns their positions."""

    def split_offspring(self, positions: Tensor, offspring: Sequence[Sequence[Offspring]], epsilon: float) -> Tensor:
        """General splits (signed splitting): neuron ``positions[i]`` becomes the offspring ``offspring[i]``,
        theta + epsilon * shift with the share ``weight`` of the output weight, the first in its place and the others
        appended; returns the appended positions."""

    def random_parameters(self, count: int, generator: torch.Generator) -> Tensor:
        """(count, d) hidden parameters drawn as the problem initialises new neurons."""

    def add(self, parameters: Tensor, output_weights: Tensor) -> Tensor:
        """Append neurons with exactly these hidden parameters and output weights; returns their positions."""

    def new_neuron_gradients(self, parameters: Tensor) -> Tensor:
        """dL/dw_j at w_j = 0 of new neurons with hidden parameters ``parameters`` (k, d), one row per neuron;
        differentiable with respect to ``parameters`` (Firefly's first-order score and its ascent)."""

    def train(
        self,
        iterations: int,
        *,
        trainable: Tensor | None = None,
        record_every: int = 1,
        on_progress: Callable[[int], None] | None = None,
        on_record: Callable[[int, float], None] | None = None,
    ) -> TrainingTrace:
        """Train for a number of iterations, only the neurons in ``trainable`` (all when None); see
        :func:`splitgrow.shallow.training.train_rows` for the callbacks."""

    def clone(self) -> GrowableProblem:
        """An independent copy."""


@dataclass(frozen=True)
class GrowthEvent:
    """One growth step.

    Attributes:
        step: the growth step (0 for the first growth, after the first training phase).
        method: the method's name.
        size_before, size_after: numbers of neurons.
        parents: positions of the neurons that were split or duplicated (empty for added neurons).
        added: positions of the neurons that are new after the step.
        indexes: the parents' splitting indexes, where the method computed them.
        predicted_change: eps^2/2 * sum of v^T S v over the parents, the second-order prediction of the loss
            change, where the method can make one.
        loss_before, loss_after: the loss just before and just after the step (no training in between).
    """

    step: int
    method: str
    size_before: int
    size_after: int
    parents: list[int]
    added: list[int]
    indexes: list[float] | None
    predicted_change: float | None
    loss_before: float
    loss_after: float

    @property
    def measured_change(self) -> float:
        """loss_after - loss_before."""
        return self.loss_after - self.loss_before

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["measured_change"] = self.measured_change
        return data


class GrowthMethod(ABC):
    """A way of adding neurons to a :class:`GrowableProblem`."""

    #: The method's name in results and on the command line.
    name: str = "growth"

    @abstractmethod
    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        """Add at most ``count`` neurons; return None when the method declines to grow (e.g. no neuron is
        splitting-unstable). The event's ``step`` is filled in by :func:`run_growth`."""

    def trainable_after(self, event: GrowthEvent) -> Tensor | None:
        """The neurons the next training phase may move (None: all)."""
        return None


def _split_quadratic_forms(matrices: Tensor, directions: Tensor) -> Tensor:
    return torch.einsum("ni,nij,nj->n", directions, matrices, directions)


def _random_unit_vectors(count: int, dim: int, generator: torch.Generator) -> Tensor:
    """Uniform on the unit sphere (float64; the problem casts to its own dtype)."""
    vectors = torch.randn((count, dim), generator=generator, dtype=torch.float64)
    return vectors / vectors.norm(dim=1, keepdim=True)


def _random_positions(size: int, count: int, generator: torch.Generator) -> Tensor:
    return torch.randperm(size, generator=generator)[: min(count, size)]


def _split_event(
    problem: GrowableProblem,
    method: str,
    positions: Tensor,
    directions: Tensor,
    epsilon: float,
    indexes: Tensor | None,
    matrices: Tensor | None,
) -> GrowthEvent:
    size_before = problem.size
    loss_before = problem.loss()
    predicted = None
    if matrices is not None:
        predicted = float(0.5 * epsilon**2 * _split_quadratic_forms(matrices[positions], directions).sum())
    added = problem.split(positions, directions, epsilon)
    return GrowthEvent(
        step=-1,
        method=method,
        size_before=size_before,
        size_after=problem.size,
        parents=[int(p) for p in positions],
        added=[int(a) for a in added],
        indexes=None if indexes is None else [float(v) for v in indexes[positions]],
        predicted_change=predicted,
        loss_before=loss_before,
        loss_after=problem.loss(),
    )


class SplittingSteepestDescent(GrowthMethod):
    """Algorithm 1: split the neurons with the most negative splitting indexes along their splitting gradients.

    Args:
        epsilon: the split step size (offspring at theta +/- epsilon v_min), >= 0.
        threshold: lambda_* <= 0; only neurons with index below it are split.
    """

    name = "splitting"

    def __init__(self, epsilon: float, threshold: float = 0.0) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        validate_selection(1, threshold)
        self.epsilon = epsilon
        self.threshold = threshold

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        matrices = problem.splitting_matrices()
        eigenpairs = dense_eigenpairs(matrices)
        chosen = select_neurons(eigenpairs.indexes, count, self.threshold)
        if chosen.numel() == 0:
            return None
        return _split_event(
            problem, self.name, chosen, eigenpairs.directions[chosen], self.epsilon, eigenpairs.indexes, matrices
        )


class RandomSplit(GrowthMethod):
    """Split randomly chosen neurons (without replacement) along random unit directions.

    Args:
        epsilon: the split step size, >= 0.
        predict: also compute the splitting matrices, to record the second-order prediction of each split.
    """

    name = "random_split"

    def __init__(self, epsilon: float, *, predict: bool = True) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon
        self.predict = predict

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        matrices = problem.splitting_matrices() if self.predict else None
        indexes = dense_eigenpairs(matrices).indexes if matrices is not None else None
        positions = _random_positions(problem.size, count, generator)
        directions = _random_unit_vectors(positions.numel(), problem.parameter_dim, generator)
        return _split_event(problem, self.name, positions, directions, self.epsilon, indexes, matrices)


class Net2Net(GrowthMethod):
    """Duplicate randomly chosen neurons exactly (a split with eps = 0): the function does not change, and under
    deterministic full-batch training the two copies never separate."""

    name = "net2net"

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        positions = _random_positions(problem.size, count, generator)
        directions = torch.zeros((positions.numel(), problem.parameter_dim), dtype=torch.float64)
        return _split_event(problem, self.name, positions, directions, 0.0, None, None)


class NewInitialization(GrowthMethod):
    """Add randomly initialised neurons (the problem's own initialisation), trained together with the old ones."""

    name = "new_init"

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        size_before = problem.size
        loss_before = problem.loss()
        added = problem.add_random(count, generator)
        return GrowthEvent(
            step=-1,
            method=self.name,
            size_before=size_before,
            size_after=problem.size,
            parents=[],
            added=[int(a) for a in added],
            indexes=None,
            predicted_change=None,
            loss_before=loss_before,
            loss_after=problem.loss(),
        )


class GradientBoosting(GrowthMethod):
    """Gradient boosting / Frank-Wolfe: add a new neuron and fit it with every old neuron frozen.

    The new neuron starts from the best (lowest loss once added) of ``candidates`` random draws of the
    problem's initialisation; the training phase that follows moves only the new neurons.
    """

    name = "gradient_boosting"

    def __init__(self, candidates: int = 1) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.candidates = candidates

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        size_before = problem.size
        loss_before = problem.loss()
        added: list[int] = []
        for _ in range(count):
            best_state: torch.ByteTensor | None = None
            best_loss = float("inf")
            for _ in range(self.candidates):
                state = generator.get_state()
                trial = problem.clone()
                trial.add_random(1, generator)
                trial_loss = trial.loss()
                if trial_loss < best_loss:
                    best_loss, best_state = trial_loss, state
            after = generator.get_state()
            generator.set_state(best_state)
            added.extend(int(a) for a in problem.add_random(1, generator))
            generator.set_state(after)
        return GrowthEvent(
            step=-1,
            method=self.name,
            size_before=size_before,
            size_after=problem.size,
            parents=[],
            added=added,
            indexes=None,
            predicted_change=None,
            loss_before=loss_before,
            loss_after=problem.loss(),
        )

    def trainable_after(self, event: GrowthEvent) -> Tensor | None:
        return torch.tensor(event.added, dtype=torch.long)


@dataclass
class Phase:
    """A training phase at a fixed size. ``iterations`` count from the start of the whole run."""

    size: int
    iterations: list[int]
    losses: list[float]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


@dataclass
class GrowthRun:
    """Everything :func:`run_growth` did: the training phases, the growth events and why it stopped."""

    method: str
    phases: list[Phase] = field(default_factory=list)
    events: list[GrowthEvent] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def final_size(self) -> int:
        return self.phases[-1].size

    @property
    def final_loss(self) -> float:
        return self.phases[-1].final_loss

    @property
    def sizes(self) -> list[int]:
        """The size of each phase."""
        return [phase.size for phase in self.phases]

    def loss_at_size(self, size: int) -> float | None:
        """The loss at the end of the (last) phase with this many neurons, or None."""
        for phase in reversed(self.phases):
            if phase.size == size:
                return phase.final_loss
        return None

    def history(self) -> tuple[list[int], list[float]]:
        """All recorded (iteration, loss) pairs, in order; a growth step shows as two points at one iteration."""
        iterations: list[int] = []
        losses: list[float] = []
        for phase in self.phases:
            iterations.extend(phase.iterations)
            losses.extend(phase.losses)
        return iterations, losses

    def to_dict(self) -> dict:
        iterations, losses = self.history()
        return {
            "method": self.method,
            "stop_reason": self.stop_reason,
            "sizes": self.sizes,
            "final_size": self.final_size,
            "final_loss": self.final_loss,
            "loss_at_end_of_phase": [phase.final_loss for phase in self.phases],
            "events": [event.to_dict() for event in self.events],
            "history": {"iteration": iterations, "loss": losses},
        }


def run_growth(
    problem: GrowableProblem,
    method: GrowthMethod,
    *,
    iterations_per_step: int,
    generator: torch.Generator,
    max_size: int | None = None,
    max_per_step: int = 1,
    schedule: Sequence[int] | None = None,
    record_every: int = 1,
    on_phase_end: Callable[[int, GrowableProblem], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_record: Callable[[int, float, GrowableProblem], None] | None = None,
) -> GrowthRun:
    """Alternate training phases and growth steps until a stopping rule holds.

    Args:
        problem: the model and loss; grown in place.
        method: how neurons are added.
        iterations_per_step: training iterations of every phase (including the first and the last).
        generator: the source of the method's random choices.
        max_size: stop once the problem has this many neurons (after training at that size).
        max_per_step: m_*, the most neurons added per growth step.
        schedule: instead of ``max_size``/``max_per_step``, the size of every phase, e.g. ``[1, 2, 4, 8]``
            (used to make baselines follow the sizes reached by splitting).
        record_every: loss recording interval.
        on_phase_end: called after each training phase with the phase number and the problem.
        on_progress: called with the number of training iterations done, for progress bars.
        on_record: called at every recorded iteration with (iteration counted from the start of the run, loss,
            problem), e.g. to take snapshots of the parameters.

    Returns:
        A :class:`GrowthRun`. It stops when the size reaches ``max_size`` (or the schedule ends) or the method
        declines to grow (no splitting index below lambda_*).
    """
    if schedule is not None:
        schedule = list(schedule)
        if not schedule or schedule[0] != problem.size or any(b < a for a, b in zip(schedule, schedule[1:])):
            raise ValueError(f"schedule must start at the current size {problem.size} and not decrease: {schedule}")
        max_size = schedule[-1]
    else:
        validate_selection(max_per_step, 0.0)
    if max_size is None:
        raise ValueError("give max_size or schedule")
    run = GrowthRun(method=method.name)
    trainable: Tensor | None = None
    offset = 0
    step = 0
    while True:
        record = None
        if on_record is not None:

            def record(iteration: int, loss: float, offset: int = offset) -> None:
                on_record(offset + iteration, loss, problem)

        try:
            trace = problem.train(
                iterations_per_step,
                trainable=trainable,
                record_every=record_every,
                on_progress=on_progress,
                on_record=record,
            )
        except DivergenceError as error:
            raise DivergenceError(f"{method.name}, training phase {step} at {problem.size} neurons: {error}") from None
        run.phases.append(Phase(problem.size, [offset + i for i in trace.iterations], trace.losses))
        offset += iterations_per_step
        if on_phase_end is not None:
            on_phase_end(step, problem)
        if problem.size >= max_size:
            run.stop_reason = f"reached {max_size} neurons"
            break
        if schedule is not None:
            count = schedule[step + 1] - schedule[step]
        else:
            count = min(max_per_step, max_size - problem.size)
        event = method.grow(problem, count, generator) if count > 0 else None
        if event is None and count > 0:
            threshold = getattr(method, "threshold", None)
            shown = "" if threshold is None else f" = {threshold:g}"
            run.stop_reason = f"splitting-stable: no splitting index below the threshold lambda_*{shown}"
            break
        if event is not None:
            run.events.append(dataclasses.replace(event, step=step))
            trainable = method.trainable_after(event)
        step += 1
    return run


def train_from_scratch(
    problem: GrowableProblem,
    iterations: int,
    *,
    record_every: int = 1,
    on_progress: Callable[[int], None] | None = None,
    on_record: Callable[[int, float, GrowableProblem], None] | None = None,
) -> GrowthRun:
    """Train a problem at its final size from its random start, as the 'scratch' baseline: one long phase."""
    run = GrowthRun(method="scratch")
    record = None if on_record is None else (lambda iteration, loss: on_record(iteration, loss, problem))
    try:
        trace = problem.train(iterations, record_every=record_every, on_progress=on_progress, on_record=record)
    except DivergenceError as error:
        raise DivergenceError(f"scratch at {problem.size} neurons: {error}") from None
    run.phases.append(Phase(problem.size, trace.iterations, trace.losses))
    run.stop_reason = "trained once at the final size"
    return run
