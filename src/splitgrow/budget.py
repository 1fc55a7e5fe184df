"""Energy-aware selection: the splits that lower the loss most within a budget of parameters or FLOPs.

Splitting channel j of site s lowers the loss by about -eps^2/2 * lambda_sj and adds cost_s (parameters or FLOPs:
the producer's row, the per-channel entries and the consumers' columns, read off the coupling graph). Choosing
the set that maximises the total decrease sum of -lambda under sum of cost <= budget is a 0/1 knapsack, with at most
one split per coupled channel (a depthwise channel and the pointwise channel feeding it are one channel). It is
solved exactly as an integer program by HiGHS (``scipy.optimize.milp``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from .errors import SplitgrowError
from .graph import ChannelGraph
from .inspection import module_flops, split_cost
from .surgery import SplitRequest

COST_KINDS = ("parameters", "flops")


def split_costs(graph: ChannelGraph, example_input: torch.Tensor, kind: str = "parameters") -> dict[str, float]:
    """The cost of splitting one channel of each splittable site: added parameters, or added FLOPs per sample."""
    if kind not in COST_KINDS:
        raise ValueError(f"cost kind must be one of {', '.join(COST_KINDS)}, got {kind!r}")
    flops = module_flops(graph.model, example_input)
    costs = {}
    for name, site in graph.sites.items():
        if site.splittable:
            cost = split_cost(graph, name, flops)
            costs[name] = float(cost.parameters if kind == "parameters" else cost.flops)
    return costs


def select_within_budget(
    results: Mapping,
    costs: Mapping[str, float],
    budget: float,
    *,
    threshold: float = 0.0,
    graph: ChannelGraph | None = None,
    max_count: int | None = None,
    allow_inexact: bool = False,
) -> list[SplitRequest]:
    """The splits maximising the total predicted loss decrease with total cost at most ``budget``.

    Args:
        results: splitting results per site (``indexes``, ``directions`` and optionally ``converged``).
        costs: the cost of one split per site (see :func:`split_costs`); sites without a cost are skipped.
        budget: the largest total cost.
        threshold: lambda_*; only channels with index below it are candidates.
        graph: with it, unsplittable (and, unless allowed, inexact) sites are skipped and coupled channels are
            split at most once.
        max_count: also at most this many splits (m_*).

    Returns:
        Split requests sorted by increasing index; empty when nothing fits.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    candidates = []
    for name, result in results.items():
        if name not in costs:
            continue
        if graph is not None:
            site = graph.sites[name]
            if not site.splittable or (not site.exact and not allow_inexact):
                continue
        converged = getattr(result, "converged", None)
        for channel, index in enumerate(result.indexes.tolist()):
            if index < threshold and (converged is None or bool(converged[channel])):
                candidates.append((name, channel, index, float(costs[name])))
    if not candidates:
        return []
    count = len(candidates)
    objective = np.array([index for _, _, index, _ in candidates])  # minimise sum of lambda = maximise decrease
    rows, upper = [np.array([cost for *_, cost in candidates])], [budget]
    if max_count is not None:
        rows.append(np.ones(count))
        upper.append(max_count)
    if graph is not None:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for position, (name, channel, _, _) in enumerate(candidates):
            groups[graph.coupling_key(name, channel)].append(position)
        for members in groups.values():
            if len(members) > 1:
                row = np.zeros(count)
                row[members] = 1.0
                rows.append(row)
                upper.append(1.0)
    solution = milp(
        objective,
        constraints=LinearConstraint(np.vstack(rows), -np.inf, np.array(upper, dtype=float)),
        integrality=np.ones(count),
        bounds=Bounds(0, 1),
    )
    if not solution.success:
        raise SplitgrowError(f"the budgeted selection could not be solved: {solution.message}")
    chosen = [candidates[i] for i in np.flatnonzero(solution.x > 0.5)]
    chosen.sort(key=lambda item: item[2])
    return [SplitRequest(name, channel, results[name].directions[channel], index) for name, channel, index, _ in chosen]
