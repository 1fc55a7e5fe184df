"""One pass over the data that records what the splitting matrices need, whatever the training stack.

The pass runs the model's traced graph (the same modules and parameters) with two kinds of extra nodes:

* *records* right after each tensor the statistics read (a producer's input, a pre-activation, a segment's
  inputs): they keep it, as a copy when some operation of the model works in place (an ``nn.ReLU(inplace=True)``
  overwrites its input; a hook on the module would read the overwritten values);
* *probes* after each node whose output gradient g = dL/da is needed: the output becomes a + p with p a zero
  tensor that requires grad, so one ``torch.autograd.grad(loss, probes)`` gives every g at once, exact whatever
  the model does in place afterwards, and without touching (or needing) the parameters' gradients.

**The data contract.** ``data`` is any iterable of batches. With ``loss_function(outputs, targets)`` each batch is
``(inputs, targets)`` (inputs may be a tuple of the forward's positional arguments). Anything else (dict batches,
token ids, several outputs) takes a ``closure(model, batch)`` that returns ``(loss, weight)``: the scalar loss as
trained and the number of units it averages over (samples, or tokens for a per-token mean). With
``reduction="mean"`` batch b contributes weight_b * S_b, with ``"sum"`` (a summed loss) S_b itself; the total is
divided by the sum of the weights, so S is always that of the mean loss over all units. The pass works under
``torch.no_grad()`` (it turns gradients on for itself); under ``torch.inference_mode()`` autograd cannot run and
it says so.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..checks import is_count, is_number
from ..errors import ConfigError, SplitgrowError, SplitgrowWarning
from ..graph import ChannelGraph, Site
from ..inspection import non_finite_tensor
from ..modes import evaluating
from .distributed import rank

LossFunction = Callable[[Any, Any], Tensor]
LossClosure = Callable[[nn.Module, Any], "Tensor | tuple[Tensor, float]"]
REDUCTIONS = ("mean", "sum", "auto")


class StatisticsError(SplitgrowError):
    """The data, the loss or the calling context cannot give splitting statistics."""


@dataclass
class BatchRecord:
    """What one batch contributes.

    Attributes:
        weight: the number of units (samples, tokens) the batch's loss averages over.
        scale: the factor of this batch's matrices in the weighted sum (``weight`` for a mean loss, 1 for a sum).
        values: recorded tensors by the name of the traced node that made them.
        gradients: dL/d(output) by the name of the probed node.
        loss: the batch's loss as the closure returned it.
        batch: the batch itself, and closure: how its loss is computed (for sites whose statistics differentiate
            the whole loss).
    """

    weight: float
    scale: float
    values: dict[str, Tensor]
    gradients: dict[str, Tensor]
    loss: float = float("nan")
    batch: Any = None
    closure: LossClosure | None = None


class _Keep(nn.Module):
    """A recording node: keeps its input (a copy when the model works in place) and returns it unchanged."""

    def __init__(self, copy_values: bool) -> None:
        super().__init__()
        self.copy_values = copy_values
        self.values: dict[str, Tensor] = {}

    def forward(self, key: str, value: Tensor) -> Tensor:
        kept = value.detach()
        self.values[key] = kept.clone() if self.copy_values else kept
        return value


class _Probe(nn.Module):
    """A probe: returns value + p with p a zero tensor requiring grad, so dL/dp = dL/d(value).

    A node's own probe (key ``name``) is new at every call, so a closure that runs the model twice reads the last
    run, as it always did. A site's probe on the outside users of a fed-back node (key ``name@site``) is met once
    per such user: those calls share one p, so dL/dp sums the gradients through them; the node's own probe, which
    runs first, starts them afresh for each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.probes: dict[str, Tensor] = {}

    def forward(self, key: str, value: Tensor) -> Tensor:
        if "@" not in key:
            for stale in [k for k in self.probes if k.startswith(key + "@")]:
                del self.probes[stale]
            probe = self.probes[key] = torch.zeros_like(value, requires_grad=True)
            return value + probe
        probe = self.probes.get(key)
        if probe is None:
            probe = self.probes[key] = torch.zeros_like(value, requires_grad=True)
        return value + probe


def recorded_inputs(graph: ChannelGraph, site: Site) -> list[str]:
    """The traced nodes whose values a site's statistics read."""
    if site.engine == "loss":
        return []
    if site.engine == "ridge":
        found = [graph.nodes[producer].all_input_nodes[0].name for producer, _ in site.branches]
        return found + [graph.nodes[site.activation_node].all_input_nodes[0].name]
    if site.engine == "chain":
        producer = graph.nodes[site.producer_node]
        activation = graph.nodes[site.activation_node]
        found = [producer.all_input_nodes[0].name, activation.all_input_nodes[0].name]
        if site.engine == "chain":
            second = graph.nodes[site.chain.second_activation_node]
            found += [site.activation_node, second.all_input_nodes[0].name]
        return found
    inside = set(site.segment)
    needed = {arg.name for name in site.segment for arg in graph.nodes[name].all_input_nodes} - inside
    return sorted(needed, key=graph.order.__getitem__)


class Instrumented:
    """The model's traced graph with records and probes for a set of sites: a probe after every frontier node
    (its gradient through all users), and for a site's fed-back frontier node one more on each edge to a user
    outside the site's segment (its gradient through those alone, under the site's :meth:`Site.gradient_key`)."""

    def __init__(self, graph: ChannelGraph, sites: Iterable[Site]) -> None:
        sites = list(sites)
        self.graph = graph
        module = fx.GraphModule(graph.module, copy.deepcopy(graph.module.graph))
        self.keep = _Keep(copy_values=graph.has_in_place)
        self.probe = _Probe()
        module.add_submodule("splitgrow_keep", self.keep)
        module.add_submodule("splitgrow_probe", self.probe)
        nodes = {node.name: node for node in module.graph.nodes}
        recorded = {name for site in sites for name in recorded_inputs(graph, site)}
        probed = {name for site in sites for name in site.frontier}
        for name in sorted(recorded, key=graph.order.__getitem__):
            node = nodes[name]
            with module.graph.inserting_after(node):
                module.graph.call_module("splitgrow_keep", (name, node))
        for name in probed:
            node = nodes[name]
            with module.graph.inserting_after(node):
                probe = module.graph.call_module("splitgrow_probe", (name, node))
            node.replace_all_uses_with(probe, delete_user_cb=lambda user, probe=probe: user is not probe)
        outside_keys = set()
        for site in sites:
            inside = set(site.segment)
            for name in site.fed_back:
                key = site.gradient_key(name)
                outside_keys.add(key)
                for user in _model_users(nodes[name]):
                    if user.name in inside:
                        continue
                    for source in {arg for arg in user.all_input_nodes if _carries(arg, name)}:
                        with module.graph.inserting_before(user):
                            probe = module.graph.call_module("splitgrow_probe", (key, source))
                        user.replace_input_with(source, probe)
        module.recompile()
        self.module = module
        self.probed = sorted(probed | outside_keys)

    def take(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The values recorded and the probes of the last forward pass (and forget them)."""
        values, probes = dict(self.keep.values), dict(self.probe.probes)
        self.keep.values.clear()
        self.probe.probes.clear()
        return values, probes


def _is_ours(node: fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith("splitgrow_")


def _carries(node: fx.Node, name: str) -> bool:
    """Whether ``node`` is the traced node ``name`` or a probe chain on it (the value a user reads of it)."""
    while _is_ours(node):
        node = node.args[1]
    return node.name == name


def _model_users(node: fx.Node) -> list[fx.Node]:
    """The model's own nodes that read ``node``'s value, looking through the probes on the way."""
    found = []
    for user in node.users:
        if user.op == "call_module" and user.target == "splitgrow_keep":
            continue
        found.extend(_model_users(user) if _is_ours(user) else [user])
    return found


def check_loss_contract(loss_function: Any, closure: Any) -> None:
    """Exactly one of ``loss_function`` and ``closure``, and it callable."""
    if (loss_function is None) == (closure is None):
        raise ConfigError("give exactly one of loss_function and closure (how the loss is computed)")
    name, given = ("loss_function", loss_function) if closure is None else ("closure", closure)
    if not callable(given):
        expected = "(outputs, targets) -> loss" if closure is None else "(model, batch) -> loss or (loss, weight)"
        raise ConfigError(f"{name} must be callable ({expected}), got {type(given).__name__}")


def closure_from_loss(loss_function: LossFunction) -> LossClosure:
    """The closure of the data contract for ``loss_function(outputs, targets)`` on ``(inputs, targets)`` batches."""

    def closure(model: nn.Module, batch: Any) -> tuple[Tensor, float]:
        if isinstance(batch, Mapping) or not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise StatisticsError(
                f"a batch is a {type(batch).__name__}, not (inputs, targets); for other batches (dicts, token ids, "
                "several inputs) pass closure=lambda model, batch: (loss, batch_size)"
            )
        inputs, targets = batch
        arguments = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return loss_function(model(*arguments), targets), float(arguments[0].shape[0])

    return closure


def batch_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``; copy inference-mode tensors, which autograd refuses."""
    if isinstance(batch, Tensor):
        moved = batch.to(device)
        return moved.clone() if moved.is_inference() else moved
    if isinstance(batch, Mapping):
        return type(batch)({key: batch_to_device(value, device) for key, value in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(batch_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to_device(value, device) for value in batch)
    return batch


def batch_units(batch: Any) -> float:
    """The units a batch's mean loss averages over when its closure does not say: the first dimension of its first
    tensor (0 for an empty batch)."""
    if isinstance(batch, Tensor):
        return float(batch.shape[0]) if batch.dim() else 1.0
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    for value in values:
        size = batch_units(value)
        if size:
            return size
    return 0.0


def resolve_reduction(reduction: str, loss_function: Any) -> str:
    """'mean' or 'sum': ``reduction``, or with 'auto' the ``reduction`` attribute of a torch loss module."""
    if reduction not in REDUCTIONS:
        raise StatisticsError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if reduction == "auto":
        reduction = getattr(loss_function, "reduction", "mean")
        if reduction not in ("mean", "sum"):
            raise StatisticsError(
                f"the loss has reduction={reduction!r}; splitting needs a scalar loss (reduction 'mean' or 'sum')"
            )
    return reduction


def record_batches(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    sites: Iterable[Site],
    *,
    loss_function: LossFunction | None = None,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    batches: int | None = None,
    progress: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[BatchRecord]:
    """One pass over (the first ``batches`` of) ``data`` in eval mode: a :class:`BatchRecord` per batch.

    With ``reduce`` (a sum over the processes of a distributed run), the processes step through their shards in
    lockstep and every one stops at the first batch that one of them lacks: a shard shorter than the others (or
    empty) then ends the pass everywhere, with a warning, instead of leaving the other processes waiting forever in
    the statistics' next reduction.

    The model is restored to its mode after the pass, even when the consumer stops early. Raises
    StatisticsError for a non-scalar or non-finite loss, an unusable batch, inference mode, or no batch at all
    (on every process at once, under ``reduce``).
    """
    check_loss_contract(loss_function, closure)
    if batches is not None and not is_count(batches, 1):
        raise StatisticsError(f"batches must be an integer >= 1 (or None: every batch), got {batches!r}")
    if torch.is_inference_mode_enabled():
        raise StatisticsError(
            "splitting statistics need autograd, which torch.inference_mode() turns off; call it outside that block"
        )
    graph.check_current()
    reduction = resolve_reduction(reduction, loss_function if closure is None else closure)
    run = closure if closure is not None else closure_from_loss(loss_function)
    instrumented = Instrumented(graph, sites)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    iterator: Iterable = data
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(data, total=batches, desc="splitting statistics", unit="batch", leave=False)
    count = 0
    lockstep = _Lockstep(reduce) if reduce is not None else None
    try:
        with evaluating(model), torch.enable_grad():
            for batch in _until_exhausted(iterator, lockstep):
                if batches is not None and count >= batches:
                    break
                batch = batch_to_device(batch, device)
                returned = run(instrumented.module, batch)
                loss, weight = _loss_and_weight(returned, batch, count)
                if weight == 0:  # an empty batch (a process's empty shard): nothing to add, its mean is NaN
                    instrumented.take()
                    continue
                _check_loss(loss, count, model)
                values, probes = instrumented.take()
                missing = [name for name in instrumented.probed if name not in probes]
                if missing:
                    raise StatisticsError(f"the closure did not run the model through '{missing[0]}'")
                names = list(probes)
                # sites on the loss engine alone need no probe gradients (their statistics come later)
                found = torch.autograd.grad(loss, [probes[n] for n in names], allow_unused=True) if names else ()
                gradients = {
                    name: (torch.zeros_like(probes[name]) if g is None else g.detach()) for name, g in zip(names, found)
                }
                weight = float(weight)
                count += 1
                scale = weight if reduction == "mean" else 1.0
                yield BatchRecord(weight, scale, values, gradients, float(loss.detach()), batch, run)
    finally:
        instrumented.take()
    if count == 0:
        raise StatisticsError("the data gave no batches (or only empty ones)")


class _Lockstep:
    """Whether every process still has a batch, asked once per batch (one all-reduce of a scalar)."""

    def __init__(self, reduce: Callable[[Tensor], Tensor]) -> None:
        self.reduce = reduce
        self.processes = float(reduce(torch.ones((), dtype=torch.float64)))
        self.steps = 0

    def all_have(self, has_batch: bool) -> bool:
        holding = float(self.reduce(torch.tensor(float(has_batch), dtype=torch.float64)))
        if 0 < holding < self.processes and rank() == 0:
            warnings.warn(
                f"splitting statistics: {self.processes - holding:g} of {self.processes:g} processes ran out of "
                f"batches after {self.steps}; every process stops there (shard the statistics data equally, as "
                "DistributedSampler does)",
                SplitgrowWarning,
                stacklevel=4,
            )
        self.steps += 1
        return holding == self.processes


def _until_exhausted(iterator: Iterable, lockstep: _Lockstep | None) -> Iterator[Any]:
    """The batches of ``iterator``; with ``lockstep``, only while every process has one."""
    if lockstep is None:
        yield from iterator
        return
    batches = iter(iterator)
    while True:
        batch = next(batches, _END)
        if not lockstep.all_have(batch is not _END):
            return
        yield batch


_END = object()


def _loss_and_weight(returned: Any, batch: Any, index: int) -> tuple[Any, float]:
    """A closure's ``loss`` or ``(loss, weight)``, the weight a finite number >= 0 (the units the loss averages
    over: a negative one would flip the sign of the batch's matrices, a NaN would reach the solver)."""
    if not isinstance(returned, tuple):
        return returned, batch_units(batch)
    if len(returned) != 2:
        raise StatisticsError(
            f"the closure returned a tuple of {len(returned)} for batch {index}",
            fix="return the loss, or (loss, weight) with weight the number of samples or tokens it averages over",
        )
    loss, weight = returned
    if isinstance(weight, torch.Tensor):
        value = float(weight) if weight.numel() == 1 and not weight.dtype == torch.bool else None
    else:
        value = float(weight) if is_number(weight) else None
    if value is None or not math.isfinite(value) or value < 0:
        raise StatisticsError(
            f"the closure's weight for batch {index} is {weight!r}",
            fix="return (loss, weight) with weight a finite number >= 0: the samples or tokens the loss averages over",
        )
    return loss, value


def _check_loss(loss: Any, index: int, model: nn.Module) -> None:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise StatisticsError(f"the loss of batch {index} is {shape}, not a scalar tensor (reduce it by mean or sum)")
    if not loss.requires_grad:
        raise StatisticsError(f"the loss of batch {index} does not depend on the model's outputs through autograd")
    value = float(loss.detach())
    if not math.isfinite(value):
        # say which of the two usual causes it is: a diverged model, or a batch with non-finite values
        broken = non_finite_tensor(model)
        cause = (
            f"the model's '{broken}' is not finite: training diverged; lower the learning rate and start again from "
            "a model trained without divergence"
            if broken is not None
            else "the model's weights are finite: check the batch's inputs and targets for NaN or infinite values"
        )
        raise StatisticsError(f"the loss of batch {index} is {value} (splitting statistics): {cause}")
