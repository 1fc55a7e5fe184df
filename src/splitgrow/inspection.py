"""Sizes and costs of a network's sites: parameters, FLOPs, and what splitting one neuron adds.

FLOPs are counted by ``torch.utils.flop_counter`` on one sample (a multiply-add counts 2). The cost of a split
is read off the same coupling the surgery uses: the producer's row, the per-channel entries and the consumers'
columns (H*W of them per channel after a flatten).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph import ChannelGraph
from .surgery import SplitRequest, parameter_count, parameters_along, plan_split


def module_flops(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """FLOPs of every module for a single sample, keyed by qualified module name ('' for the whole model)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input[:1])
    finally:
        model.train(was_training)
    prefix = type(model).__name__
    flops = {}
    for name, counts in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == prefix else name.removeprefix(prefix + ".")
        flops[key] = int(sum(counts.values()))
    return flops


@dataclass(frozen=True)
class SplitCost:
    """What splitting one neuron of a site adds to the network."""

    parameters: int
    flops: int


def split_cost(graph: ChannelGraph, site: str, flops: dict[str, int]) -> SplitCost:
    """Parameters and per-sample FLOPs added by splitting one channel of ``site`` (channel 0 stands for all:
    every channel of a site couples the same modules with blocks of the same size)."""
    plan = plan_split(graph, [SplitRequest(site, 0)], allow_inexact=True)
    modules = dict(graph.model.named_modules())
    parameters = 0
    added_flops = 0
    for (name, dim), units in plan.items():
        block = sum(len(unit.positions) for unit in units)
        tensors = parameters_along(modules[name], dim)
        size = tensors[0][1].shape[tensors[0][2]]
        for _, tensor, tensor_dim in tensors:
            if isinstance(tensor, nn.Parameter):
                parameters += block * (tensor.numel() // tensor.shape[tensor_dim])
        added_flops += flops.get(name, 0) * block // size
    return SplitCost(parameters, added_flops)


def site_table(
    graph: ChannelGraph, example_input: torch.Tensor, results: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per site (and per layer that is not a site), plus the model's totals."""
    flops = module_flops(graph.model, example_input)
    modules = dict(graph.model.named_modules())
    rows = []
    for name, site in graph.sites.items():
        cost = split_cost(graph, name, flops) if site.splittable else None
        row = {
            "site": name,
            "kind": site.kind,
            "neurons": site.num_neurons,
            "neuron_dim": site.neuron_dim,
            "parameters": parameter_count(modules[name], recurse=False),
            "flops": flops.get(name, 0),
            "split_parameters": None if cost is None else cost.parameters,
            "split_flops": None if cost is None else cost.flops,
            "exact": site.exact,
            "note": site.reason or site.inexact_reason or ("with depthwise correction" if site.depthwise_chain else ""),
        }
        if results is not None and name in results:
            result = results[name]
            indexes = result.indexes
            row["min_index"] = float(indexes.min())
            row["negative"] = int((indexes < 0).sum())
            row["solver"] = getattr(result, "solver", "dense")
            converged = getattr(result, "converged", None)
            row["converged"] = 1.0 if converged is None else float(converged.float().mean())
        rows.append(row)
    for name, reason in graph.not_sites.items():
        rows.append(
            {
                "site": name,
                "kind": "-",
                "neurons": None,
                "parameters": parameter_count(modules[name], recurse=False),
                "flops": flops.get(name, 0),
                "note": f"not a site: {reason}",
            }
        )
    totals = {"parameters": parameter_count(graph.model), "flops": flops.get("", 0)}
    return rows, totals
