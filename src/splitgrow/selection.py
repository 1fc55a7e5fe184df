"""Which neurons to split: Algorithm 1's rule (at most m_* neurons with the smallest indexes, all below the threshold
lambda_*) and energy-aware selection within a budget of parameters or FLOPs.

In a network the unit of selection is a neuron of a site, which is one *coupling group* of channels (a pointwise
channel and the depthwise filter it feeds are one neuron): counts, ratios and budgets count groups, and a group
is never requested twice. Splitting neuron j lowers the loss by about -eps^2/2 * lambda_j (Theorem 2.4: the
decreases of several neurons add up) and adds its site's cost; under a budget, choosing the set that lowers the
loss most is a 0/1 knapsack, solved exactly as an integer program by HiGHS (``scipy.optimize.milp``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checks import is_count, is_number
from .errors import ConfigError, SplitgrowError
from .graph import ChannelGraph, GraphError, Site
from .surgery import SplitRequest

COST_KINDS = ("parameters", "flops")
#: how many times a budgeted selection is solved again within a smaller allowance before splits are dropped
BUDGET_REFITS = 8


def validate_selection(max_count: int, threshold: float) -> None:
    """Raise :class:`~splitgrow.errors.ConfigError` (a ValueError) unless m_* >= 1 and lambda_* <= 0 (the two rules
    of Algorithm 1): both are the user's settings."""
    if not is_count(max_count, 1):
        raise ConfigError(f"m_* (the most neurons split per step) must be an integer >= 1, got {max_count!r}")
    if not is_number(threshold) or threshold > 0:
        raise ConfigError(
            f"lambda_* (the splitting-index threshold) must be <= 0, got {threshold!r}: a neuron with a "
            "non-negative index cannot lower the loss by splitting"
        )


def select_neurons(indexes: Tensor, max_count: int, threshold: float = 0.0) -> Tensor:
    """Positions of the neurons to split, most negative index first.

    Args:
        indexes: (n,) splitting indexes; NaN entries are never selected.
        max_count: m_*, the most neurons to return (>= 1).
        threshold: lambda_* <= 0; only neurons with index strictly below it are returned.

    Returns:
        A 1-D long tensor of at most ``max_count`` positions into ``indexes``, sorted by increasing index
        (ties broken by position, so the result is deterministic).
    """
    validate_selection(max_count, threshold)
    if indexes.dim() != 1:
        raise ValueError(f"indexes must be 1-D, got shape {tuple(indexes.shape)}")
    order = torch.argsort(indexes, stable=True)
    eligible = order[indexes[order] < threshold]
    return eligible[:max_count].clone()


class Selection(list):
    """The chosen :class:`~splitgrow.surgery.SplitRequest` objects, most negative index first, with ``skipped``:
    the sites that could not take part, and why."""

    def __init__(self, requests=(), skipped: dict[str, str] | None = None) -> None:
        super().__init__(requests)
        self.skipped = dict(skipped or {})


#: why a frozen site does not grow
FROZEN = "frozen: no parameter of its neurons requires grad (its offspring would never train); unfreeze it to grow it"


def is_frozen(graph: ChannelGraph, site: Site) -> bool:
    """Whether every parameter of the site's neurons (its members' own) has ``requires_grad=False``: a layer the user
    froze, whose offspring would never train."""
    parameters = [p for m in site.members for p in graph.modules[m.module].parameters(recurse=False)]
    return bool(parameters) and not any(p.requires_grad for p in parameters)


def check_results(results: object, graph: ChannelGraph | None) -> None:
    """Refuse what is not splitting results (a mapping of site names to results with ``indexes``), and results of
    the model before a split (they would name neurons that have moved).

    Raises:
        ConfigError: not splitting results.
        GraphError: results computed for another shape of the model.
    """
    if not isinstance(results, Mapping):
        raise ConfigError(
            f"results must be the splitting results (SplittableNetwork.splitting returns them), got "
            f"{type(results).__name__}"
        )
    for name, result in results.items():
        indexes = getattr(result, "indexes", None)
        if not isinstance(indexes, Tensor) or indexes.dim() != 1:
            raise ConfigError(
                f"results['{name}'] is a {type(result).__name__}, not a site's splitting result (with 1-D indexes): "
                "pass what SplittableNetwork.splitting returns"
            )
    if graph is None:
        return
    if not isinstance(graph, ChannelGraph):
        raise ConfigError(f"graph must be a ChannelGraph (SplittableNetwork.graph), got {type(graph).__name__}")
    stale = GraphError(
        "the splitting results were computed for the model before a later change (a split): their neurons have "
        "moved; compute the splitting statistics again and select from them"
    )
    fingerprint = getattr(results, "fingerprint", None)
    if fingerprint is not None and fingerprint != graph.fingerprint:
        raise stale
    for name, result in results.items():
        site = graph.sites.get(name)
        if site is None:
            continue
        directions = getattr(result, "directions", None)
        wrong_directions = isinstance(directions, Tensor) and tuple(directions.shape[-1:]) != (site.neuron_dim,)
        if len(result.indexes) != site.num_neurons or wrong_directions:
            raise stale


def eligible_neurons(
    results: Mapping, threshold: float, graph: ChannelGraph | None, allow_inexact: bool
) -> tuple[list[tuple[float, str, int]], dict[str, str]]:
    """(index, site, channel) of every eligible neuron, and the sites left out with the reason."""
    check_results(results, graph)
    candidates, skipped = [], {}
    for name, result in results.items():
        if graph is not None:
            site = graph.sites.get(name)
            if site is None:
                skipped[name] = "not a site of this graph"
                continue
            if not site.splittable:
                skipped[name] = site.reason
                continue
            if not site.exact and not allow_inexact:
                skipped[name] = f"inexact ({site.inexact_reason}); pass allow_inexact=True to split it"
                continue
            if is_frozen(graph, site):
                skipped[name] = FROZEN
                continue
        converged = getattr(result, "converged", None)
        converged = None if converged is None else converged.tolist()
        unconverged = 0
        for channel, index in enumerate(result.indexes.tolist()):
            if not index < threshold:
                continue
            if converged is not None and not converged[channel]:
                unconverged += 1
                continue
            candidates.append((index, name, channel))
        if unconverged:
            skipped[f"{name} ({unconverged} neurons)"] = "their iterative solve did not converge"
    return candidates, skipped


def _request(results: Mapping, name: str, channel: int, index: float, graph: ChannelGraph | None) -> SplitRequest:
    """The split of one neuron: along its splitting gradient, or as its site's scheme says (signed splitting)."""
    result = results[name]
    fingerprint = None if graph is None else graph.fingerprint
    scheme = getattr(result, "scheme", None)
    if scheme is not None:
        return SplitRequest(name, channel, None, index, fingerprint, offspring=scheme.offspring(result, channel))
    return SplitRequest(name, channel, result.directions[channel], index, fingerprint)


def _copies(results: Mapping, name: str, channel: int) -> int:
    """How many neurons splitting one neuron adds (1 for the plain split)."""
    scheme = getattr(results[name], "scheme", None)
    return 1 if scheme is None else scheme.copies(results[name], channel)


def select_splits(
    results: Mapping,
    max_count: int,
    threshold: float = 0.0,
    *,
    graph: ChannelGraph | None = None,
    allow_inexact: bool = False,
    max_added: int | None = None,
) -> Selection:
    """The at most ``max_count`` neurons with the most negative splitting indexes, all below ``threshold``, across
    every site, as split requests along their splitting gradients (Algorithm 1, step 3).

    ``max_added`` bounds the neurons the splits add instead of the splits themselves, which differs where a split
    adds more than one (signed splitting: up to three): neurons are taken in order of index while their splits
    fit, so a stage of signed splits grows a network as much as a stage of plain ones.

    With ``graph``, sites that are not splittable (or inexact, unless allowed) are skipped and listed in the
    result's ``skipped``, and each request carries the graph's fingerprint. Neurons whose iterative solve did not
    converge are never chosen. Linear in the number of candidates: a site's neurons are distinct coupling groups,
    so no two candidates conflict.
    """
    validate_selection(max_count, threshold)
    if max_added is not None and not is_count(max_added, 1):
        raise ConfigError(f"max_added (the most neurons the splits add) must be an integer >= 1, got {max_added!r}")
    check_results(results, graph)
    if graph is not None:
        graph.check_current()
    candidates, skipped = eligible_neurons(results, threshold, graph, allow_inexact)
    candidates.sort()
    if max_added is not None:
        return Selection(_adding_at_most(results, candidates[:max_count], max_added, threshold, graph), skipped)
    chosen = [_request(results, name, channel, index, graph) for index, name, channel in candidates[:max_count]]
    return Selection(chosen, skipped)


def _adding_at_most(
    results: Mapping, ranked: list[tuple[float, str, int]], max_added: int, threshold: float, graph: ChannelGraph | None
) -> list[SplitRequest]:
    """Splits of the ``ranked`` candidates adding at most ``max_added`` neurons: each neuron's own split in order of
    index while it fits; once one does not, greedily the best of the splits that fit what is left (a signed split
    with fewer offspring, :func:`splitgrow.signed.fitting_split`), as the one-layer signed splitting does."""
    requests, remaining = [], max_added
    for index, name, channel in ranked:
        copies = _copies(results, name, channel)
        if copies > remaining:
            break
        requests.append(_request(results, name, channel, index, graph))
        remaining -= copies
    fingerprint = None if graph is None else graph.fingerprint
    left = [(name, channel) for _, name, channel in ranked[len(requests) :]]
    while remaining > 0 and left:
        fits = []
        for order, (name, channel) in enumerate(left):
            split = results[name].scheme.fitting(results[name], channel, remaining)
            if split is not None and split.index < threshold:
                fits.append((split.index, order, split))
        if not fits:
            break
        index, order, split = min(fits, key=lambda item: item[:2])
        name, channel = left.pop(order)
        requests.append(SplitRequest(name, channel, None, index, fingerprint, offspring=split.offspring))
        remaining -= split.added
    return requests


def choose_within_budget(
    scores: Sequence[float],
    costs: Sequence[float],
    budget: float,
    max_count: int | None = None,
    groups: Sequence[int] | None = None,
) -> list[int]:
    """The subset of items minimising the total score (the predicted loss change) with total cost at most
    ``budget``, at most ``max_count`` items and at most one item of each of ``groups`` (alternative splits of one
    neuron): a 0-1 knapsack, solved exactly by scipy's MILP solver."""
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    if not scores:
        return []
    count = len(scores)
    rows, upper = [sparse.csr_matrix(np.asarray(costs, dtype=float)[None, :])], [budget]
    if max_count is not None:
        rows.append(sparse.csr_matrix(np.ones((1, count))))
        upper.append(max_count)
    if groups is not None:  # one row per group of alternatives, sparse: thousands of neurons may have them
        _, label, size = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
        shared = np.flatnonzero(size[label] > 1)
        if shared.size:
            _, row = np.unique(label[shared], return_inverse=True)
            incidence = (np.ones(shared.size), (row, shared))
            rows.append(sparse.csr_matrix(incidence, shape=(int(row.max()) + 1, count)))
            upper.extend([1.0] * (int(row.max()) + 1))
    solution = milp(
        np.asarray(scores, dtype=float),
        constraints=LinearConstraint(sparse.vstack(rows).tocsr(), -np.inf, np.array(upper, dtype=float)),
        integrality=np.ones(count),
        bounds=Bounds(0, 1),
    )
    if not solution.success:
        raise SplitgrowError(f"the budgeted selection could not be solved: {solution.message}")
    return [int(i) for i in np.flatnonzero(solution.x > 0.5)]


def select_within_budget(
    results: Mapping,
    costs: Mapping[str, float],
    budget: float,
    *,
    threshold: float = 0.0,
    graph: ChannelGraph | None = None,
    max_count: int | None = None,
    allow_inexact: bool = False,
    exact_cost: Callable[[Sequence[SplitRequest]], float] | None = None,
) -> Selection:
    """The splits maximising the total predicted loss decrease with total cost at most ``budget``.

    Args:
        results: splitting results per site (``indexes``, ``directions`` and optionally ``converged``).
        costs: the cost of one added neuron per site (see :func:`splitgrow.inspection.split_costs`; a split that
            adds several, as signed splits do, costs that many times more, and may give way to the neuron's best
            split with fewer offspring where that fits the budget better); sites without a cost are skipped.
        budget: the largest total cost.
        threshold: lambda_*; only neurons with index below it are candidates.
        graph: with it, unsplittable (and, unless allowed, inexact) sites are skipped.
        max_count: also at most this many splits (m_*).
        exact_cost: the true cost of a set of splits (see :func:`splitgrow.inspection.added_cost`), where it is
            more than the sum of ``costs``: coupled layers split in one stage add the entries where one's new rows
            meet the other's new columns. The selection is then solved again within a smaller allowance until its
            true cost fits the budget (the sum alone lets a stage overshoot its budget).

    Returns:
        Split requests sorted by increasing index; empty when nothing fits.
    """
    validate_budget(budget, costs, threshold, max_count)
    check_results(results, graph)
    if graph is not None:
        graph.check_current()
    candidates, skipped = eligible_neurons(results, threshold, graph, allow_inexact)
    for name in {name for _, name, _ in candidates} - set(costs):
        skipped[name] = "no cost given for it"
    candidates = [c for c in candidates if c[1] in costs]
    if not candidates:
        return Selection([], skipped)
    # a split that adds k neurons costs k copies (signed splits add up to three); a neuron whose split adds several
    # may instead take a smaller split (fewer offspring), one of the two at most
    items = []
    for group, (index, name, channel) in enumerate(candidates):
        copies = _copies(results, name, channel)
        items.append((index, name, channel, copies, group, None))
        scheme = getattr(results[name], "scheme", None)
        for allowance in range(1, copies):
            split = scheme.fitting(results[name], channel, allowance)
            if split is not None and split.added == allowance and split.index < threshold:
                items.append((split.index, name, channel, allowance, group, split))
    spend = [float(costs[name]) * copies for _, name, _, copies, _, _ in items]
    scores = [index for index, *_ in items]
    groups = [item[4] for item in items]
    fingerprint = None if graph is None else graph.fingerprint

    def requests_of(picked: list[int]) -> list[SplitRequest]:
        requests = []
        for index, name, channel, _, _, split in sorted((items[i] for i in picked), key=lambda item: item[:3]):
            if split is None:
                requests.append(_request(results, name, channel, index, graph))
            else:
                requests.append(SplitRequest(name, channel, None, index, fingerprint, offspring=split.offspring))
        return requests

    return fit_within_budget(
        lambda allowance: choose_within_budget(scores, spend, allowance, max_count, groups),
        lambda picked: Selection(requests_of(picked), skipped),
        budget,
        exact_cost,
        least_valuable=lambda picked: max(picked, key=lambda i: items[i][0]),
    )


def validate_budget(budget: object, costs: object, threshold: object, max_count: object) -> None:
    """Raise :class:`~splitgrow.errors.ConfigError` unless the budget is a number >= 0 (inf: no limit), every cost a
    finite number >= 0, lambda_* a finite number and m_* None or an integer >= 1."""
    number = isinstance(budget, numbers.Real) and not isinstance(budget, bool)
    if not (number and budget >= 0):  # NaN fails the comparison too
        raise ConfigError(f"the budget must be a number >= 0 (inf: no limit), got {budget!r}")
    if not isinstance(costs, Mapping):
        raise ConfigError(
            f"costs must map each site to the cost of one added neuron (splitgrow.inspection.split_costs), got "
            f"{type(costs).__name__}"
        )
    for name, cost in costs.items():
        if not (is_number(cost) and cost >= 0):
            raise ConfigError(f"the cost of a neuron of '{name}' must be a finite number >= 0, got {cost!r}")
    if not is_number(threshold):  # a positive one only adds candidates the knapsack never takes: allowed
        raise ConfigError(f"lambda_* (the splitting-index threshold) must be a finite number, got {threshold!r}")
    if max_count is not None and not is_count(max_count, 1):
        raise ConfigError(f"max_count (the most splits) must be an integer >= 1 (or None), got {max_count!r}")


def fit_within_budget(
    choose: Callable[[float], list],
    build: Callable[[list], Selection],
    budget: float,
    exact_cost: Callable[[Selection], float] | None,
    *,
    least_valuable: Callable[[list], Any],
) -> Selection:
    """``build(choose(budget))``, the selection of a knapsack whose costs are per item, kept within ``budget`` by its
    ``exact_cost`` where that is more than the items' sum: solved again within an allowance shrunk by the
    overshoot's ratio (the sum falls short by about the same share at a smaller allowance), and after
    :data:`BUDGET_REFITS` tries the ``least_valuable`` of the picked items dropped until the selection fits."""
    allowance = budget
    for _ in range(BUDGET_REFITS):
        picked = choose(allowance)
        selection = build(picked)
        spent = 0.0 if exact_cost is None or not selection else exact_cost(selection)
        if spent <= budget:
            return selection
        allowance *= budget / spent
    while picked and exact_cost(selection) > budget:
        picked.remove(least_valuable(picked))
        selection = build(picked)
    return selection
