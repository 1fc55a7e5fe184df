"""Sizes and costs of a network's sites: parameters, FLOPs, and what splitting one neuron adds.

FLOPs of each layer come from its handler (a multiply-add counts 2) on the shapes recorded when the graph was
traced; the whole model's FLOPs from ``torch.utils.flop_counter`` on one sample, which also counts functional
operations (attention, matmuls) that are no layer, with attention on its unfused path (the fused kernels count
as nothing). The cost of a split is read off the same plan the surgery uses:
the members' and copied rows, the per-channel entries and the consumers' columns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .checks import check_model_type
from .errors import ConfigError
from .graph import ChannelGraph, GraphError, handler_of
from .layers import handler_for
from .modes import evaluating
from .surgery import INPUTS, OUTPUTS, NewNeuron, SplitRequest, parameter_count, plan_split


def model_flops(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """FLOPs of the whole model for one sample, as ``torch.utils.flop_counter`` counts them (``example_input``: a
    batch, or a tuple of the model's positional inputs): the count on the whole example divided by the first
    input's batch size. The inputs are not cut to one row, since a second input may have no batch dimension (an
    attention mask of shape (T, T))."""
    check_model_type(model)
    # a list is several positional inputs, as SplittableNetwork's example inputs
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        raise ConfigError(
            f"the example input must be a batch (a tensor, or a tuple of the model's positional inputs), got "
            f"{type(example_input).__name__}"
        )
    first = inputs[0]
    batch = first.shape[0] if first.dim() > 0 and first.shape[0] > 0 else 1
    try:
        with evaluating(model), torch.no_grad(), _unfused_attention(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    except Exception as error:  # the user's model refusing the user's input: name it, whatever torch raised
        raise GraphError(
            f"the example input does not run through the model ({type(error).__name__}: {error})",
            fix="pass an input batch (a tuple for several inputs) that the model accepts, on its device and in its "
            "dtype",
        ) from error
    return int(counter.get_total_flops()) // batch


@contextlib.contextmanager
def _unfused_attention() -> Iterator[None]:
    """torch's attention and transformer layers, run so that the counter sees every multiply: in eval mode without
    gradients they take a fused kernel it does not see (a transformer layer's MLP would count as nothing), and
    ``scaled_dot_product_attention``'s flash and memory-efficient kernels count as 0 on the CPU (Q K^T and the
    weighted sum of V grow with the square of the sequence): its math backend is counted."""
    backend = getattr(torch.backends, "mha", None)
    with contextlib.ExitStack() as stack:
        if backend is not None:
            enabled = backend.get_fastpath_enabled()
            backend.set_fastpath_enabled(False)
            stack.callback(backend.set_fastpath_enabled, enabled)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # torch < 2.3: its attention runs unfused already
            pass
        else:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


def non_finite_tensor(model: nn.Module, buffers: Container[str] | None = None) -> str | None:
    """The name of the first parameter or buffer of ``model`` with a NaN or infinite entry (what a diverged
    training step leaves, in the weights or the BatchNorm statistics), or None when all are finite. ``buffers``:
    the buffers to look at (None: all; a model may hold infinite ones by design, such as a causal mask)."""
    chosen = [(n, b) for n, b in model.named_buffers() if buffers is None or n in buffers]
    for name, tensor in [*model.named_parameters(), *chosen]:
        if not finite(tensor):
            return name
    return None


def finite(tensor: torch.Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite (integer tensors always are)."""
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor.detach()).all())


def _check_graph(graph: object) -> None:
    if not isinstance(graph, ChannelGraph):
        raise ConfigError(f"graph must be a ChannelGraph (SplittableNetwork.graph), got {type(graph).__name__}")


def layer_flops(graph: ChannelGraph) -> dict[str, int]:
    """FLOPs per sample of every layer with a handler (all its calls), from the traced shapes."""
    _check_graph(graph)
    flops: dict[str, int] = {}
    for node in graph.module.graph.nodes:
        if node.op != "call_module":
            continue
        module = graph.modules[node.target]
        handler = handler_for(module)
        shape = node.meta.get("tensor_meta")
        sources = [arg for arg in node.all_input_nodes if getattr(arg.meta.get("tensor_meta"), "shape", None)]
        if handler is None or shape is None or not hasattr(shape, "shape") or not sources:
            continue
        in_shape = (1, *tuple(sources[0].meta["tensor_meta"].shape)[1:])
        out_shape = (1, *tuple(shape.shape)[1:])
        flops[node.target] = flops.get(node.target, 0) + handler.flops(module, in_shape, out_shape)
    return flops


@dataclass(frozen=True)
class SplitCost:
    """What splitting one neuron of a site adds to the network."""

    parameters: int
    flops: int


def split_cost(graph: ChannelGraph, site: str, flops: dict[str, int] | None = None) -> SplitCost:
    """Parameters and per-sample FLOPs added by splitting one neuron of ``site`` (neuron 0 stands for all: every
    neuron of a site couples the same modules with runs of the same size)."""
    flops = layer_flops(graph) if flops is None else flops
    plan = plan_split(graph, [SplitRequest(site, 0)], allow_inexact=True)
    parameters = 0
    added_flops = 0
    for (name, role), units in plan.items():
        module = graph.modules[name]
        handler = handler_of(graph, name)
        tensors = handler.output_tensors(module) if role == OUTPUTS else handler.input_tensors(module)
        if not tensors:
            continue
        block = sum(len(unit.positions()) for unit in units)
        size = getattr(module, tensors[0][0]).shape[tensors[0][1]]
        for attribute, dim in tensors:
            tensor = getattr(module, attribute)
            if isinstance(tensor, nn.Parameter):
                parameters += block * (tensor.numel() // tensor.shape[dim])
        added_flops += flops.get(name, 0) * block // size
    return SplitCost(parameters, added_flops)


def added_cost(
    graph: ChannelGraph,
    requests: Sequence[SplitRequest | NewNeuron],
    kind: str = "parameters",
    flops: dict[str, int] | None = None,
) -> float:
    """Parameters (or FLOPs per sample) that making all of ``requests`` (splits and new neurons) at once adds: the
    sum of their split costs, plus what no single split's cost has, the entries where rows one split adds meet
    columns another adds (two coupled layers grown in one stage: the second's new rows are as wide as the first's
    grown output).

    Raises:
        GraphError: as :func:`~splitgrow.surgery.plan_split` (inexact sites are allowed here).
    """
    if kind not in ("parameters", "flops"):
        raise ConfigError(f"cost kind must be one of parameters, flops, got {kind!r}")
    flops = layer_flops(graph) if flops is None and kind == "flops" else flops
    requests = [r.as_request(graph) if isinstance(r, NewNeuron) else r for r in requests]
    plan = plan_split(graph, requests, allow_inexact=True)
    grown: dict[str, dict[str, int]] = {}
    for (name, role), units in plan.items():
        # a two-way split adds one copy of each position, a split with k offspring k - 1
        added = sum(len(unit.positions()) * _added_copies(unit.request) for unit in units)
        grown.setdefault(name, {OUTPUTS: 0, INPUTS: 0})[role] += added
    total = 0.0
    for name, added in grown.items():
        module = graph.modules[name]
        handler = handler_of(graph, name)
        dims: dict[str, dict[str, int]] = {}  # tensor -> role -> dimension
        for role, tensors in ((OUTPUTS, handler.output_tensors(module)), (INPUTS, handler.input_tensors(module))):
            for attribute, dim in tensors:
                dims.setdefault(attribute, {})[role] = dim
        if not dims:
            continue
        for position, (attribute, roles) in enumerate(dims.items()):
            tensor = getattr(module, attribute)
            shape = list(tensor.shape)
            for role, dim in roles.items():
                shape[dim] += added[role]
            ratio = math.prod(shape) / max(1, tensor.numel())
            if kind == "parameters" and isinstance(tensor, nn.Parameter):
                total += math.prod(shape) - tensor.numel()
            elif kind == "flops" and position == 0:  # a layer's work grows as its first tensor (the weight)
                total += flops.get(name, 0) * (ratio - 1.0)
    return total


def _added_copies(request: SplitRequest) -> int:
    return 1 if request.offspring is None else len(request.offspring) - 1


def split_costs(graph: ChannelGraph, kind: str = "parameters") -> dict[str, float]:
    """The cost of splitting one neuron of each splittable site: added parameters, or added FLOPs per sample."""
    from .selection import COST_KINDS

    _check_graph(graph)
    if kind not in COST_KINDS:
        raise ConfigError(f"cost kind must be one of {', '.join(COST_KINDS)}, got {kind!r}")
    flops = layer_flops(graph)
    costs = {}
    for name, site in graph.sites.items():
        if site.splittable:
            cost = split_cost(graph, name, flops)
            costs[name] = float(cost.parameters if kind == "parameters" else cost.flops)
    return costs


def site_table(
    graph: ChannelGraph, example_input: torch.Tensor, results: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per site (and per layer that is not a site), plus the model's totals.

    Raises:
        ConfigError: ``results`` that are not splitting results; GraphError: results of the model before a split,
            or an example input the model does not take.
    """
    from .selection import check_results

    _check_graph(graph)
    if results is not None:
        check_results(results, graph)
    flops = layer_flops(graph)
    modules = graph.modules
    rows = []
    for name, site in graph.sites.items():
        cost = split_cost(graph, name, flops) if site.splittable else None
        members = [m.module for m in site.members]
        row = {
            "site": name,
            "kind": site.kind,
            "members": members,
            "neurons": site.num_neurons,
            "neuron_dim": site.neuron_dim,
            "engine": site.engine,
            "activation": None if site.activation is None else site.activation.name,
            "parameters": sum(parameter_count(modules[m], recurse=False) for m in dict.fromkeys(members)),
            "flops": sum(flops.get(m, 0) for m in dict.fromkeys(members)),
            "split_parameters": None if cost is None else cost.parameters,
            "split_flops": None if cost is None else cost.flops,
            "exact": site.exact,
            "kinks": site.kinks,
            "note": site.reason
            or site.inexact_reason
            or "; ".join(
                part
                for part in (
                    # a module listed twice holds two rows per neuron (a GLU's or chunk's value and gate)
                    f"with {', '.join(m for m in dict.fromkeys(members) if m != name)}"
                    if len(set(members)) > 1
                    else "",
                    "two rows per neuron (gated)" if len(members) > len(set(members)) else "",
                    f"exact up to the kinks of {site.kinks}" if site.kinks else "",
                    f"gated by {', '.join(site.gates)} (copied)" if site.gates else "",
                )
                if part
            ),
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
                # a functional layer's row is named after its parameter, not a module
                "parameters": (
                    parameter_count(modules[name], recurse=False)
                    if name in modules
                    else graph.model.get_parameter(name).numel()
                ),
                "flops": flops.get(name, 0),
                "note": f"not a site: {reason}",
            }
        )
    totals = {"parameters": parameter_count(graph.model), "flops": model_flops(graph.model, example_input)}
    return rows, totals
