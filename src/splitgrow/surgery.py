"""Function-preserving network surgery: split channels of any model, and carry the optimiser's state along.

Splitting channel j of a site inserts a copy of every coupled slice right after the original:

* the site's producer: row j becomes theta + eps v and the inserted row theta - eps v (theta = weight row, then
  bias; v is a unit vector of the same layout);
* other producers coupled to the channel (through an elementwise sum, or upstream of a depthwise conv) and
  per-channel layers (BatchNorm weights, biases and running statistics; depthwise filters): exact copies;
* consumers (Linear / Conv2d inputs; a flattened channel is a block of H*W columns): the block is duplicated and
  both copies are halved.

Inserting next to the original (rather than appending at the end) keeps every index map of the graph valid at
once: concatenation offsets, flatten blocks and elementwise sums all commute with "insert a copy after position j".
With eps = 0 the network computes the same function.

Parameters are changed in place (``parameter.data = ...``), so an optimiser keeps working on the same objects.
Its state follows the same channel map, with a rule that keeps it consistent with the new parameterisation:
at a split, the gradient of each offspring's parameters (producer rows and per-channel entries) is half the
parent's, while a consumer column's gradient is unchanged. Hence, for duplicated producer and per-channel
entries, first-moment state (SGD ``momentum_buffer``, Adam ``exp_avg``, ...) is halved and second-moment state
(Adam ``exp_avg_sq``, Adagrad ``sum``, RMSprop ``square_avg``, ...) is quartered, so that Adam's update
m / sqrt(v) is unchanged; consumer columns keep their state; step counts are unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .graph import ChannelGraph, GraphError

#: optimiser state entries that scale like the gradient
FIRST_MOMENT_STATES = frozenset({"momentum_buffer", "exp_avg", "grad_avg", "exp_inf"})
#: optimiser state entries that scale like the squared gradient
SECOND_MOMENT_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta"})


@dataclass(frozen=True)
class SplitRequest:
    """Split output channel ``channel`` of site ``site`` along ``direction`` (unit, (d,)), or duplicate it
    exactly when ``direction`` is None. ``index`` is its splitting index, when known."""

    site: str
    channel: int
    direction: Tensor | None = None
    index: float | None = None


@dataclass
class _Unit:
    """One duplicated block of positions along one dimension of one module."""

    positions: tuple[int, ...]
    role: str  # "site", "copy" (producer or per-channel entry duplicated exactly) or "consumer"
    request: SplitRequest


@dataclass
class SplitReport:
    """What :func:`split_network` did."""

    requests: list[SplitRequest]
    epsilon: float
    modules: dict[str, list[str]] = field(default_factory=dict)
    parameters_before: int = 0
    parameters_after: int = 0

    @property
    def predicted_change(self) -> float | None:
        """eps^2 / 2 * sum of the splitting indexes, when every request carries one."""
        if any(request.index is None for request in self.requests):
            return None
        return 0.5 * self.epsilon**2 * sum(request.index for request in self.requests)


def parameter_count(module: nn.Module, *, recurse: bool = True) -> int:
    """Number of parameters of ``module`` (with ``recurse=False``: its own, not its submodules')."""
    return sum(parameter.numel() for parameter in module.parameters(recurse=recurse))


def plan_split(
    graph: ChannelGraph, requests: Sequence[SplitRequest], *, allow_inexact: bool = False
) -> dict[tuple[str, int], list[_Unit]]:
    """Every (module, dimension) a set of splits changes, with its duplicated blocks; checks everything first.

    Raises:
        GraphError: an unknown site or channel, a split that touches something splitgrow cannot grow, an
            inexact site (unless ``allow_inexact``), or two requests coupled to the same channel.
    """
    plan: dict[tuple[str, int], list[_Unit]] = defaultdict(list)
    for request in requests:
        if request.site not in graph.sites:
            known = ", ".join(graph.sites) or "none"
            note = f" ({graph.not_sites[request.site]})" if request.site in graph.not_sites else ""
            raise GraphError(f"'{request.site}' is not a splittable site{note}; sites: {known}")
        site = graph.sites[request.site]
        if not 0 <= request.channel < site.num_neurons:
            raise GraphError(f"site '{site.name}' has {site.num_neurons} channels, not channel {request.channel}")
        if not site.splittable:
            raise GraphError(f"cannot split '{site.name}': {site.reason}")
        if not site.exact and not allow_inexact:
            raise GraphError(
                f"'{site.name}' is an inexact site ({site.inexact_reason}); pass allow_inexact=True to split it"
            )
        if request.direction is not None and request.direction.numel() != site.neuron_dim:
            raise GraphError(
                f"the direction for '{site.name}' has {request.direction.numel()} entries; its neurons have "
                f"{site.neuron_dim} parameters"
            )
        closure = graph.closure(site.name, request.channel)
        for space_name, positions in closure.items():
            space = graph.spaces[space_name]
            for module in dict.fromkeys(space.producers + space.per_channel):
                role = "site" if module == site.name and space_name == site.space else "copy"
                _add_unit(plan, (module, 0), _Unit(tuple(positions), role, request))
            for module in space.consumers:
                _add_unit(plan, (module, 1), _Unit(tuple(positions), "consumer", request))
    return dict(plan)


def _add_unit(plan: dict, key: tuple[str, int], unit: _Unit) -> None:
    units = plan[key]
    for other in units:
        if other.request is unit.request:
            if other.positions == unit.positions:
                if unit.role == "site":
                    other.role = "site"
                return
        elif set(other.positions) & set(unit.positions):
            raise GraphError(
                f"channel {unit.request.channel} of '{unit.request.site}' and channel {other.request.channel} of "
                f"'{other.request.site}' are coupled (both reach '{key[0]}'); split them in separate steps"
            )
    if len(unit.positions) > 1 and list(unit.positions) != list(range(unit.positions[0], unit.positions[-1] + 1)):
        raise GraphError(f"channel {unit.request.channel} of '{unit.request.site}' is not contiguous in '{key[0]}'")
    units.append(unit)


def _new_order(size: int, units: list[_Unit]) -> tuple[Tensor, dict[int, _Unit], dict[int, _Unit]]:
    """The gather index of the grown dimension, and for each new position the unit it belongs to (original and
    inserted copy separately)."""
    last = {unit.positions[-1]: unit for unit in units}
    members = {p: unit for unit in units for p in unit.positions}
    order: list[int] = []
    originals: dict[int, _Unit] = {}
    copies: dict[int, _Unit] = {}
    for position in range(size):
        if position in members:
            originals[len(order)] = members[position]
        order.append(position)
        if position in last:
            unit = last[position]
            for source in unit.positions:
                copies[len(order)] = unit
                order.append(source)
    return torch.tensor(order, dtype=torch.long), originals, copies


def parameters_along(module: nn.Module, dim: int) -> list[tuple[str, Tensor, int]]:
    """(name, tensor, dimension) of every parameter or buffer of ``module`` indexed by its dim 0 (outputs) or
    dim 1 (inputs)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        names = ["weight", "bias", "running_mean", "running_var"]
        return [(n, getattr(module, n), 0) for n in names if getattr(module, n) is not None]
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        if dim == 0:
            found = [("weight", module.weight, 0)]
            if module.bias is not None:
                found.append(("bias", module.bias, 0))
            return found
        return [("weight", module.weight, 1)]
    raise GraphError(f"splitgrow cannot resize {type(module).__name__}")


def _resize_attributes(module: nn.Module, dim: int, size: int) -> None:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.num_features = size
    elif isinstance(module, nn.Linear):
        if dim == 0:
            module.out_features = size
        else:
            module.in_features = size
    elif isinstance(module, nn.Conv2d):
        if module.groups > 1:  # depthwise: channels in = out = groups
            module.in_channels = module.out_channels = module.groups = size
        elif dim == 0:
            module.out_channels = size
        else:
            module.in_channels = size


def _state_scale(key: str, role: str) -> float:
    if role == "consumer":
        return 1.0
    if key in FIRST_MOMENT_STATES:
        return 0.5
    if key in SECOND_MOMENT_STATES:
        return 0.25
    raise GraphError(
        f"splitgrow does not know how to carry the optimiser state {key!r} across a split; known: "
        f"{', '.join(sorted(FIRST_MOMENT_STATES | SECOND_MOMENT_STATES))}"
    )


@torch.no_grad()
def _grow_tensor(
    tensor: Tensor, dim: int, order: Tensor, scaled: dict[int, float], perturb: dict[int, Tensor] | None = None
) -> Tensor:
    grown = tensor.index_select(dim, order.to(tensor.device)).clone()
    moved = grown.movedim(dim, 0)
    for position, factor in scaled.items():
        moved[position] *= factor
    if perturb:
        for position, delta in perturb.items():
            moved[position] += delta.view_as(moved[position]).to(moved)
    return grown


def split_network(
    model: nn.Module,
    graph: ChannelGraph,
    requests: Sequence[SplitRequest],
    epsilon: float,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    allow_inexact: bool = False,
) -> SplitReport:
    """Split channels of ``model`` in place (see the module docstring for the rule); the graph becomes stale.

    Args:
        model: the network ``graph`` was built from.
        graph: its :class:`ChannelGraph`.
        requests: the channels to split, at most one request per coupled channel.
        epsilon: step size (>= 0); each direction is normalised to unit length.
        optimizer: if given, its state is carried along the same channel map.
        allow_inexact: also split sites whose second-order prediction is not exact.

    Returns:
        A :class:`SplitReport`. Nothing is changed if any check fails.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    plan = plan_split(graph, requests, allow_inexact=allow_inexact)
    if optimizer is not None:
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and value.dim() > 0:
                    _state_scale(key, "copy")
    modules = dict(model.named_modules())
    report = SplitReport(list(requests), epsilon, parameters_before=parameter_count(model))
    # Inputs first: a site whose inputs grow in the same step gets its direction mapped like its weight row.
    column_maps: dict[str, tuple[Tensor, set[int]]] = {}
    for (module_name, dim), units in sorted(plan.items(), key=lambda item: -item[0][1]):
        module = modules[module_name]
        tensors = parameters_along(module, dim)
        size = tensors[0][1].shape[tensors[0][2]]
        order, originals, copies = _new_order(size, units)
        roles = {position: unit.role for position, unit in {**originals, **copies}.items()}
        if dim == 1:
            column_maps[module_name] = (order, set(roles))
        for name, tensor, tensor_dim in tensors:
            perturb = None
            scaled: dict[int, float] = {}
            if dim == 1:
                scaled = {position: 0.5 for position in roles}
            elif isinstance(tensor, nn.Parameter):
                perturb = _site_perturbations(module, name, originals, copies, epsilon, column_maps.get(module_name))
            new_value = _grow_tensor(tensor.data, tensor_dim, order, scaled, perturb)
            if optimizer is not None and isinstance(tensor, nn.Parameter) and tensor in optimizer.state:
                _grow_state(optimizer.state[tensor], tensor, tensor_dim, order, roles)
            tensor.data = new_value
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None
        _resize_attributes(module, dim, len(order))
        report.modules.setdefault(module_name, []).append("inputs" if dim == 1 else "outputs")
    report.parameters_after = parameter_count(model)
    return report


def _site_perturbations(
    module: nn.Module,
    name: str,
    originals: dict[int, _Unit],
    copies: dict[int, _Unit],
    epsilon: float,
    column_map: tuple[Tensor, set[int]] | None,
) -> dict[int, Tensor] | None:
    """+eps v on the original row and -eps v on the inserted copy, for the site's own producer.

    ``column_map`` (new input order, duplicated positions) is given when the module's inputs grew in the same
    step: the direction's weight part then follows the weight row (duplicated columns halved), so that the
    perturbation of the pre-activation is the one the splitting matrix was computed for.
    """
    perturb: dict[int, Tensor] = {}
    for sign, positions in ((1.0, originals), (-1.0, copies)):
        for position, unit in positions.items():
            if unit.role != "site" or unit.request.direction is None or epsilon == 0:
                continue
            direction = unit.request.direction.reshape(-1).to(module.weight)
            direction = direction / direction.norm()
            entries = direction.numel() - (module.bias is not None)
            if name == "bias":
                perturb[position] = sign * epsilon * direction[entries:]
                continue
            part = direction[:entries]
            if column_map is not None:
                order, halved = column_map
                row_shape = (-1, *module.weight.shape[2:])
                part = part.view(row_shape).index_select(0, order.to(part.device)).clone()
                for column in halved:
                    part[column] *= 0.5
            perturb[position] = sign * epsilon * part.reshape(-1)
    return perturb or None


def _grow_state(state: dict, parameter: Tensor, dim: int, order: Tensor, roles: dict[int, str]) -> None:
    for key, value in list(state.items()):
        if not isinstance(value, Tensor) or value.shape != parameter.shape:
            continue
        scaled = {position: _state_scale(key, role) for position, role in roles.items()}
        scaled = {position: factor for position, factor in scaled.items() if factor != 1.0}
        state[key] = _grow_tensor(value, dim, order, scaled)


def select_splits(
    results: dict,
    max_count: int,
    threshold: float = 0.0,
    *,
    graph: ChannelGraph | None = None,
    allow_inexact: bool = False,
) -> list[SplitRequest]:
    """The at most ``max_count`` channels with the most negative splitting indexes, all below ``threshold``,
    across every site, as split requests along their splitting gradients.

    With ``graph``, channels that are not splittable (or inexact, unless allowed) are skipped, and so is a channel
    coupled to one already chosen (they would have to be split in separate steps). Channels whose iterative solve
    did not converge are never chosen.
    """
    from .selection import validate_selection

    validate_selection(max_count, threshold)
    candidates = []
    for name, result in results.items():
        if graph is not None:
            site = graph.sites[name]
            if not site.splittable or (not site.exact and not allow_inexact):
                continue
        converged = result.converged.tolist() if getattr(result, "converged", None) is not None else None
        for channel, index in enumerate(result.indexes.tolist()):
            if index < threshold and (converged is None or converged[channel]):
                candidates.append((index, name, channel))
    candidates.sort()
    chosen: list[SplitRequest] = []
    for index, name, channel in candidates:
        if len(chosen) == max_count:
            break
        request = SplitRequest(name, channel, results[name].directions[channel], index)
        if graph is not None:
            try:
                plan_split(graph, [*chosen, request], allow_inexact=allow_inexact)
            except GraphError:
                continue
        chosen.append(request)
    return chosen
