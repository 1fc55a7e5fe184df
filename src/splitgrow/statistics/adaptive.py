"""Adaptive statistics: draw batches until the selection they lead to stops changing what it gains.

A splitting phase needs far fewer samples than an epoch: what matters is which neurons are selected, and that
stabilises long before every index is exact. :func:`adaptive_splitting` accumulates batch by batch and, after
``min_batches`` and then every time the number of batches has grown by ``growth``, solves and selects. It stops when
the previous check's selection, scored under the current (larger-sample) statistics, keeps all but ``tolerance`` of
the predicted decrease (sum of -lambda) of the current selection: more data would change the selection by little
that matters. Neurons whose indexes are nearly tied may swap places between checks without holding the pass back,
as a rule on the overlap of the two selections would (on VGG19 such a rule waited for 1,024 to 2,048 samples where
this one stops at 512 with the same quality: README, "The stopping rule"). The pass also stops at ``max_batches``.
The result records how many batches and samples it used, each check's measures and why it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import is_integer, is_number
from ..errors import ConfigError
from ..graph import ChannelGraph
from .recording import LossClosure, LossFunction, record_batches
from .splitting import SolverOptions, SplittingResults, _chosen, report_skipped, solve

#: a selection: (site, neuron, index) triples
Selected = list[tuple[str, int, float]]


@dataclass(frozen=True)
class AdaptiveStatistics:
    """When adaptive statistics stop (see the module docstring).

    Attributes:
        min_batches: batches before the first check (>= 1). The pass never stops on a settled selection before the
            second check, so it draws at least ``min_batches * growth`` batches (rounded, and at least one more)
            unless ``max_batches`` or the data end first.
        max_batches: the most batches drawn (None: the whole data); a check is always made there.
        growth: the factor by which the batch count grows between checks (> 1).
        tolerance: the share of the current selection's predicted decrease that the previous selection may miss.

    Data with fewer batches than ``max_batches`` end the pass early: the statistics are then those of every batch
    (``stop``: "the data ran out"), checked or not.

    Raises:
        ConfigError: a setting out of its range.
    """

    min_batches: int = 2
    max_batches: int | None = 32
    growth: float = 2.0
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        integers = (self.min_batches, 1 if self.max_batches is None else self.max_batches)
        if not all(is_integer(n) for n in integers):
            raise ConfigError(
                f"min_batches and max_batches must be integers, got {self.min_batches!r}, {self.max_batches!r}"
            )
        if self.min_batches < 1 or (self.max_batches is not None and self.max_batches < self.min_batches):
            raise ConfigError(
                f"adaptive statistics need 1 <= min_batches <= max_batches (or max_batches None), got "
                f"min_batches={self.min_batches}, max_batches={self.max_batches}"
            )
        if not (is_number(self.growth) and self.growth > 1):
            raise ConfigError(f"growth (of the batch count between checks) must be > 1, got {self.growth!r}")
        if not (is_number(self.tolerance) and 0 <= self.tolerance < 1):
            raise ConfigError(f"tolerance must be in [0, 1), got {self.tolerance!r}")

    def checkpoints(self) -> Iterable[int]:
        """The batch counts at which the selection is checked."""
        count = self.min_batches
        while self.max_batches is None or count < self.max_batches:
            yield count
            count = max(count + 1, int(round(count * self.growth)))
        if self.max_batches is not None:
            yield self.max_batches


def compare_selections(previous: Selected, current: Selected, results: Mapping[str, Any]) -> dict[str, float]:
    """How the previous check's selection fares against the current one, both scored under the current ``results``
    (a mapping from site to a result with ``indexes``, as the selection ranks them):
    ``kept`` is the share of the current selection's predicted decrease (sum of -lambda) that the previous one gets
    (1: nothing to gain from the change; with no decrease on offer, 1 when the previous selection was empty too, else
    0), ``overlap`` the share of the current selection's neurons it holds."""
    indexes = {name: result.indexes.tolist() for name, result in results.items()}

    def decrease(selection: Selected) -> float:
        return -sum(indexes[site][neuron] for site, neuron, _ in selection)

    on_offer = decrease(current)
    if on_offer > 0:
        kept = decrease(previous) / on_offer
    else:
        kept = 1.0 if not previous else 0.0
    shared = {(site, neuron) for site, neuron, _ in previous} & {(site, neuron) for site, neuron, _ in current}
    overlap = len(shared) / len(current) if current else float(not previous)
    return {"kept": kept, "overlap": overlap}


def adaptive_splitting(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    select: Callable[[SplittingResults], Selected],
    loss_function: LossFunction | None = None,
    *,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    adaptive: AdaptiveStatistics | None = None,
    options: SolverOptions | None = None,
    sites: Sequence[str] | None = None,
    strict: bool = False,
    progress: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
    rank: Callable[[SplittingResults], Mapping[str, Any]] | None = None,
) -> SplittingResults:
    """Splitting indexes from as many batches as the selection ``select`` needs to settle.

    ``select(results)`` returns the selection the caller will make from results, as (site, neuron, index) triples;
    the returned :class:`SplittingResults` carry ``adaptive``: a dict with the batches and samples used, why the pass
    stopped, and each check's measures (:func:`compare_selections` of its selection and the previous one). Where
    ``select`` ranks neurons by other indexes than the splitting indexes (signed splitting: ``rank`` =
    ``lambda results: signed_splitting(results, bound)``), ``rank`` gives them, and the checks score by them.
    """
    adaptive = adaptive or AdaptiveStatistics()
    options = options or SolverOptions()
    graph.check_current()
    chosen = _chosen(graph, sites)
    skipped = graph.skipped()
    report_skipped(graph, skipped, strict=strict, what="splitting statistics")
    accumulator = options.accumulator(graph, chosen)
    checkpoints = iter(adaptive.checkpoints())
    target = next(checkpoints)
    previous: Selected | None = None
    results: SplittingResults | None = None
    warm_start: dict[str, Tensor] = {}
    stop = "the data ran out"
    history = []
    for record in record_batches(
        model,
        graph,
        data,
        chosen,
        loss_function=loss_function,
        closure=closure,
        reduction=reduction,
        batches=adaptive.max_batches,
        progress=progress,
        reduce=reduce,
    ):
        accumulator.add(record)
        if accumulator.batches < target:
            continue
        results = solve(accumulator, options, skipped=skipped, warm_start=warm_start, reduce=reduce)
        warm_start = {name: _informative_directions(result) for name, result in results.items()}
        current = select(results)
        check = {"batches": accumulator.batches, "samples": results.weight, "selected": len(current)}
        history.append(check)
        if previous is not None:
            check.update(compare_selections(previous, current, results if rank is None else rank(results)))
            if check["kept"] >= 1 - adaptive.tolerance:
                stop = "the selection settled"
                break
        previous = current
        if adaptive.max_batches is not None and accumulator.batches >= adaptive.max_batches:
            stop = "max_batches reached"
            break
        target = next(checkpoints, target + 1)
    if results is None or results.batches != accumulator.batches:
        results = solve(accumulator, options, skipped=skipped, warm_start=warm_start, reduce=reduce)
    results.adaptive = {
        "batches": accumulator.batches,
        "samples": results.weight,
        "stop": stop,
        "checks": history,
    }
    return results


def _informative_directions(result) -> Tensor:
    """A site's directions as warm starts for the next check: zeros (a fresh start) for neurons whose index was not
    negative, whose direction spans the null space of a semidefinite S; with more data that null vector is often
    still an exact eigenvector, of eigenvalue 0, which LOBPCG cannot leave for a negative lambda_min."""
    return torch.where((result.indexes < 0)[:, None].to(result.directions.device), result.directions, 0.0)


def top_fraction(fraction: float) -> Callable[[SplittingResults], Selected]:
    """A selection rule for :func:`adaptive_splitting`: the ``fraction`` of all neurons with the most negative
    indexes (below 0)."""

    def select(results: SplittingResults) -> Selected:
        candidates = [
            (float(index), name, channel)
            for name, result in results.items()
            for channel, index in enumerate(result.indexes.tolist())
            if index < 0 and (result.converged is None or bool(result.converged[channel]))
        ]
        total = sum(int(result.indexes.numel()) for result in results.values())
        count = max(1, int(round(fraction * total)))
        return [(name, channel, index) for index, name, channel in sorted(candidates)[:count]]

    return select
