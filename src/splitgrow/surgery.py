"""Function-preserving network surgery: split channels of any model, and carry the optimiser's state along.

Splitting neuron j of a site inserts a copy of every position its coupling group reaches, right after the
original (the layer handlers say which tensors each module indexes by its output and input channels):

* the site's members (the producers whose rows make theta): row j becomes theta + eps v and the inserted copy
  theta - eps v, each member taking its part of the unit direction v;
* other producers in the group (layers summed into a residual stream of an inexact site) and per-channel tensors
  (BatchNorm weights, biases and running statistics): exact copies;
* consumers (Linear or convolution inputs; a flattened channel is several runs of columns): the runs are
  duplicated and both copies are halved.

Inserting next to the original (rather than appending at the end) keeps every index map valid at once:
concatenation offsets, equal chunks, flatten blocks and elementwise sums all commute with "insert a copy right
after each run". With eps = 0 the network computes the same function.

Parameters are changed in place (``parameter.data = ...``), so an optimiser keeps working on the same objects. Its
state follows the same map, with a rule that keeps it consistent with the new parameterisation: at a split, the
gradient of each offspring's parameters (member and copied rows) is half the parent's, while a consumer column's
gradient is unchanged. Hence, for duplicated rows, first-moment state (SGD ``momentum_buffer``, Adam ``exp_avg``,
...) is halved and second-moment state (Adam ``exp_avg_sq``, Adagrad ``sum``, RMSprop ``square_avg``, ...) is
quartered, so that Adam's update m / sqrt(v) is unchanged; state in the parameters' own units (Rprop's step sizes)
is copied; consumer columns keep their state; step counts are unchanged. State splitgrow does not know how to carry
(ASGD's parameter average, Adafactor's factored moments) is refused before anything changes. A gradient left on a
parameter (``.grad``, e.g. in the middle of a gradient accumulation) follows the first-moment rule: with eps = 0 it is
then exactly the gradient of the grown network on the same batches, so accumulation may continue across a split.

A split may also have more than two offspring, with weights of either sign (:class:`Offspring`: signed
splitting): offspring i is theta + eps delta_i and its consumers' columns take the share w_i of the parent's
(sum w_i = 1, so eps = 0 keeps the function). The rule above is the case w = (1/2, 1/2), delta = (v, -v); in
general offspring i's rows carry w_i times the parent's first moment and w_i^2 times its second. A new neuron
(:class:`NewNeuron`) is the same surgery with offspring (parent unchanged, weight 1) and (new parameters,
weight 0): zero output columns and fresh optimiser state.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .checks import MAX_STEP_SIZE, check_model_type, is_integer, is_number, is_step_size
from .errors import ConfigError, SplitgrowError
from .graph import ChannelGraph, GraphError, Member, handler_of, inputs_like
from .modes import evaluating

#: optimiser state entries that scale like the gradient (Rprop's ``prev`` is the last gradient)
FIRST_MOMENT_STATES = frozenset({"momentum_buffer", "exp_avg", "grad_avg", "prev"})
#: optimiser state entries that scale like the squared gradient
SECOND_MOMENT_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg"})
#: optimiser state entries that scale like the gradient's magnitude (Adamax's running max of abs(g))
MAGNITUDE_STATES = frozenset({"exp_inf"})
#: optimiser state entries in the parameters' own units, whatever the gradient's scale (Rprop's per-entry step
#: sizes, Adadelta's running mean of squared updates): each offspring keeps its parent's, as it keeps its
#: parent's parameters
COPIED_STATES = frozenset({"step_size", "acc_delta"})
#: entries whose meaning depends on the optimiser: RMSprop's ``momentum_buffer`` accumulates g / sqrt(v), a step
#: direction in the parameters' units that keeps the gradient's sign, where SGD's accumulates g itself
_SIGN_STATES = {torch.optim.RMSprop: frozenset({"momentum_buffer"})}

OUTPUTS, INPUTS = "outputs", "inputs"


@dataclass(frozen=True)
class Offspring:
    """One offspring of a split: its share ``weight`` of the parent's output weights and its displacement
    ``shift`` (the site's d entries, multiplied by eps; None: the parent's parameters exactly)."""

    weight: float
    shift: Tensor | None = None


@dataclass(frozen=True)
class SplitRequest:
    """Split neuron ``channel`` of site ``site`` along ``direction`` (a unit vector of the site's d parameters),
    or duplicate it exactly when ``direction`` is None.

    ``offspring`` replaces the two-way split by any other (signed splitting: see :mod:`splitgrow.signed`): the
    first offspring takes the neuron's place, the others are inserted right after it; the weights must sum to 1.
    ``index`` is its splitting index (sum of w_i delta_i^T S delta_i for general offspring), when known;
    ``fingerprint`` identifies the model the request was made for (:func:`splitgrow.graph.model_fingerprint`), so
    that a request made before another split is refused instead of splitting a different neuron.
    """

    site: str
    channel: int
    direction: Tensor | None = None
    index: float | None = None
    fingerprint: tuple | None = field(default=None, compare=False, repr=False)
    offspring: tuple[Offspring, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # a channel picked out of numpy or torch (np.int64, a 0-d integer tensor) is the plain int it stands for,
        # so that requests compare, hash and go into JSON histories alike; anything else is checked at the split
        channel = self.channel
        if isinstance(channel, Tensor) and channel.numel() == 1 and not channel.is_floating_point():
            channel = channel.item()
        if is_integer(channel):
            object.__setattr__(self, "channel", int(channel))

    def children(self) -> tuple[Offspring, ...]:
        """The offspring this request makes (the two-way split unless ``offspring`` is given)."""
        if self.offspring is not None:
            return tuple(self.offspring)
        if self.direction is None:
            return (Offspring(0.5), Offspring(0.5))
        direction = torch.as_tensor(self.direction).reshape(-1).to(torch.float64)
        direction = direction / direction.norm()
        return (Offspring(0.5, direction), Offspring(0.5, -direction))


@dataclass(frozen=True)
class NewNeuron:
    """Add a brand-new neuron to site ``site``, right after neuron ``after`` (default: the last one), with
    parameters ``parameters`` (the site's d entries) and zero output weights, so that the function does not change
    until training moves them (the new-initialisation baseline), or the given ``output`` weights (Firefly's new
    neurons enter with a small step along their best output direction)."""

    site: str
    parameters: Tensor
    after: int | None = None
    fingerprint: tuple | None = field(default=None, compare=False, repr=False)
    #: output weights to enter with instead of zeros: for a consumer tensor (by qualified name, e.g.
    #: ``"classifier.weight"``), the new neuron's columns, stacked along dim 0 (one per column of its channel)
    output: dict[str, Tensor] | None = field(default=None, compare=False, repr=False)

    def as_request(self, graph: ChannelGraph) -> SplitRequest:
        """The split request whose plan inserts the new neuron where a copy of neuron ``after`` would go: the
        neighbour keeps its place and weight, the new neuron enters with weight 0."""
        site = graph.sites.get(self.site)
        after = self.after if self.after is not None else (site.num_neurons - 1 if site is not None else 0)
        return SplitRequest(self.site, after, None, 0.0, self.fingerprint, offspring=(Offspring(1.0), Offspring(0.0)))


@dataclass
class _Unit:
    """Positions of one module's dimension duplicated for one request: each run (start, length) gets a copy
    inserted right after it."""

    runs: tuple[tuple[int, int], ...]
    role: str  # "member" (theta + eps delta_i), "copy" (duplicated exactly) or "consumer" (columns times w_i)
    request: SplitRequest
    member: Member | None = None
    columns: slice | None = None  # the member's part of the direction

    def positions(self) -> set[int]:
        return {start + k for start, length in self.runs for k in range(length)}


@dataclass
class SplitReport:
    """What :func:`split_network` did.

    Attributes:
        requests: the splits, in order.
        epsilon: the step size.
        modules: every module that changed, with ``"outputs"`` and/or ``"inputs"``.
        parameters_before, parameters_after: the model's parameter counts.
        offspring: for each request, (member module, row of offspring 0, row of offspring 1, ...) for each member
            of its site, in the site's order: where the offspring are in the grown model (for a two-way split,
            the theta + eps v and theta - eps v offspring; for a new neuron, its neighbour and itself).
        columns: for each request, the input positions of its inserted offspring in every consumer module (for a
            new neuron: its output columns).
        inserted: every inserted position, by module and ``"outputs"``/``"inputs"``: the other positions are the
            model's old channels, in their old order.

    The report holds the tensors the split replaced until :meth:`undo` (or the report is dropped).
    """

    requests: list[SplitRequest]
    epsilon: float
    modules: dict[str, list[str]] = field(default_factory=dict)
    parameters_before: int = 0
    parameters_after: int = 0
    offspring: list[list[tuple]] = field(default_factory=list)
    columns: list[dict[str, list[int]]] = field(default_factory=list)
    inserted: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: for every module whose inputs grew: the old input index of each new one, and the share of the columns that
    #: offspring carry (a grown module's rows are mapped so, as the split maps a site's direction)
    column_maps: dict[str, tuple[Tensor, dict[int, float]]] = field(default_factory=dict, repr=False)
    _backup: _Backup | None = field(default=None, repr=False, compare=False)

    def undo(self) -> None:
        """Put the model and the optimiser state back as they were before this split (when a split that must go
        with it, such as an averaged copy's, fails); the model's graph is stale afterwards, as after the split."""
        if self._backup is None:
            raise GraphError("this split report has nothing to undo (it was undone already)")
        self._backup.restore()
        self._backup = None

    @property
    def predicted_change(self) -> float | None:
        """eps^2 / 2 * sum of the splitting indexes, when every request carries one (new neurons: 0)."""
        if any(request.index is None for request in self.requests):
            return None
        return 0.5 * self.epsilon**2 * sum(request.index for request in self.requests)


def parameter_count(module: nn.Module, *, recurse: bool = True) -> int:
    """Number of parameters of ``module`` (with ``recurse=False``: its own, not its submodules')."""
    return sum(parameter.numel() for parameter in module.parameters(recurse=recurse))


def _runs(positions: Sequence[int]) -> tuple[tuple[int, int], ...]:
    runs: list[list[int]] = []
    for position in sorted(positions):
        if runs and position == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([position, 1])
    return tuple((start, length) for start, length in runs)


def _check_request(graph: ChannelGraph, request: SplitRequest, allow_inexact: bool) -> None:
    if request.site not in graph.sites:
        known = ", ".join(graph.sites) or "none"
        note = f" ({graph.not_sites[request.site]})" if request.site in graph.not_sites else ""
        raise GraphError(f"'{request.site}' is not a splittable site{note}; sites: {known}")
    site = graph.sites[request.site]
    if request.fingerprint is not None and request.fingerprint != graph.fingerprint:
        raise GraphError(
            f"the request for '{site.name}' channel {request.channel} was made for the model before a later change; "
            "compute the splitting statistics and select again"
        )
    if isinstance(request.channel, bool) or not isinstance(request.channel, int):
        raise GraphError(f"the channel of a split request must be an integer, got {request.channel!r}")
    if not 0 <= request.channel < site.num_neurons:
        raise GraphError(f"site '{site.name}' has {site.num_neurons} channels, not channel {request.channel}")
    if not site.splittable:
        raise GraphError(f"cannot split '{site.name}': {site.reason}")
    if not site.exact and not allow_inexact:
        raise GraphError(
            f"'{site.name}' is an inexact site ({site.inexact_reason}); pass allow_inexact=True to split it"
        )
    index = request.index
    if isinstance(index, Tensor) and index.numel() == 1 and index.is_floating_point():
        index = index.item()  # an entry of a result's indexes, as given
    if index is not None and not is_number(index):
        raise GraphError(
            f"the index of the split request for '{site.name}' channel {request.channel} must be a finite number "
            f"(or None), got {index!r}"
        )
    if request.direction is not None:
        direction = _numeric(request.direction, f"the direction for '{site.name}' channel {request.channel}")
        if direction.numel() != site.neuron_dim:
            raise GraphError(
                f"the direction for '{site.name}' has {direction.numel()} entries; its neurons have "
                f"{site.neuron_dim} parameters"
            )
        if not bool(torch.isfinite(direction).all()):
            raise GraphError(f"the direction for '{site.name}' channel {request.channel} is not finite (NaN or inf)")
        if float(direction.norm()) == 0.0:
            raise GraphError(f"the direction for '{site.name}' channel {request.channel} is zero; pass None to copy")
    if request.offspring is not None:
        _check_offspring(site, request)


def _numeric(value: object, what: str) -> Tensor:
    """``value`` (a tensor, an array, a list of numbers) as a floating-point tensor; GraphError naming ``what``
    otherwise."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise GraphError(f"{what} must be a tensor of numbers, got {type(value).__name__}") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise GraphError(f"{what} must be a tensor of real numbers, got one of {tensor.dtype}")
    return tensor if tensor.is_floating_point() else tensor.to(torch.float64)


def _check_offspring(site, request: SplitRequest) -> None:
    where = f"the split of '{site.name}' channel {request.channel}"
    if request.direction is not None:
        raise GraphError(f"{where} has both a direction and offspring; give the offspring's shifts only")
    children = tuple(request.offspring)
    if len(children) < 2:
        raise GraphError(f"{where} has {len(children)} offspring; a split needs at least 2")
    weights = [float(child.weight) for child in children]
    if not all(math.isfinite(w) for w in weights):
        raise GraphError(f"{where} has offspring weights that are not finite: {weights}")
    if abs(sum(weights) - 1.0) > 1e-9 * max(1.0, sum(abs(w) for w in weights)):
        total = sum(weights)
        raise GraphError(f"the offspring weights of {where} sum to {total:.12g}, not 1 (the function would change)")
    for child in children:
        if child.shift is None:
            continue
        shift = torch.as_tensor(child.shift)
        if shift.numel() != site.neuron_dim or not bool(torch.isfinite(shift).all()):
            raise GraphError(f"an offspring shift of {where} must have {site.neuron_dim} finite entries")


def plan_split(
    graph: ChannelGraph, requests: Sequence[SplitRequest], *, allow_inexact: bool = False
) -> dict[tuple[str, str], list[_Unit]]:
    """Every (module, ``"outputs"``/``"inputs"``) a set of splits changes, with its duplicated runs; checks
    everything first.

    Raises:
        GraphError: a stale graph or request, an unknown site or channel, a non-finite direction, a split that
            touches something splitgrow cannot grow, an inexact site (unless ``allow_inexact``), or two requests
            for one neuron.
    """
    graph.check_current()
    plan: dict[tuple[str, str], list[_Unit]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for request in requests:
        _check_request(graph, request, allow_inexact)
        key = (request.site, request.channel)
        if key in seen:
            raise GraphError(f"channel {request.channel} of '{request.site}' is requested twice")
        seen.add(key)
        site = graph.sites[request.site]
        members = {(m.module, m.offset + request.channel): (m, columns) for m, columns in site.member_slices()}
        for space_key, positions in graph.closure(site.name, request.channel).items():
            space = graph.spaces[space_key]
            for module in dict.fromkeys(space.producers + space.per_channel):
                for position in positions:
                    member, columns = members.get((module, position), (None, None))
                    role = "member" if member is not None and module in space.producers else "copy"
                    unit = _Unit(((position, 1),), role, request, member, columns)
                    _add_unit(plan, (module, OUTPUTS), unit)
            for module in space.consumers:
                _add_unit(plan, (module, INPUTS), _Unit(_runs(positions), "consumer", request))
    return dict(plan)


def _add_unit(plan: dict, key: tuple[str, str], unit: _Unit) -> None:
    units = plan[key]
    new = unit.positions()
    for other in units:
        if other.request is unit.request and other.positions() == new:
            if unit.role == "member":
                other.role, other.member, other.columns = "member", unit.member, unit.columns
            return
        if other.positions() & new:
            raise GraphError(
                f"channel {unit.request.channel} of '{unit.request.site}' and channel {other.request.channel} of "
                f"'{other.request.site}' are coupled (both reach '{key[0]}'); split them in separate steps"
            )
    units.append(unit)


def _new_order(
    size: int, units: list[_Unit], children: dict[int, tuple]
) -> tuple[Tensor, dict[int, tuple[_Unit, int]]]:
    """The gather index of the grown dimension, and for each position of a unit the unit and its offspring number
    (0: the original position; k >= 1: the k-th inserted copy of its run)."""
    ends: dict[int, list[tuple[int, int, _Unit]]] = defaultdict(list)
    members: dict[int, _Unit] = {}
    for unit in units:
        for start, length in unit.runs:
            ends[start + length - 1].append((start, length, unit))
            for k in range(length):
                members[start + k] = unit
    order: list[int] = []
    slots: dict[int, tuple[_Unit, int]] = {}
    for position in range(size):
        if position in members:
            slots[len(order)] = (members[position], 0)
        order.append(position)
        for start, length, unit in ends.get(position, []):
            for copy in range(1, len(children[id(unit.request)])):
                for source in range(start, start + length):
                    slots[len(order)] = (unit, copy)
                    order.append(source)
    return torch.tensor(order, dtype=torch.long), slots


def _state_scale(key: str, weight: float, optimizer: torch.optim.Optimizer | None = None) -> float:
    """How an optimiser state entry of a parent's row scales for an offspring of output weight share ``weight``
    (its gradient is ``weight`` times the parent's; a signed split's share may be negative)."""
    if any(isinstance(optimizer, kind) and key in keys for kind, keys in _SIGN_STATES.items()):
        return math.copysign(1.0, weight) if weight != 0 else 0.0
    if key in FIRST_MOMENT_STATES:
        return weight
    if key in SECOND_MOMENT_STATES:
        return weight * weight
    if key in MAGNITUDE_STATES:
        return abs(weight)
    if key in COPIED_STATES:
        return 1.0
    known = FIRST_MOMENT_STATES | SECOND_MOMENT_STATES | MAGNITUDE_STATES | COPIED_STATES
    raise GraphError(
        f"splitgrow does not know how to carry the optimiser state {key!r} across a split (known: "
        f"{', '.join(sorted(known))}); rebuild the optimiser after the split instead"
    )


def _check_optimizer(optimizer: torch.optim.Optimizer, parameters: list[Tensor]) -> None:
    """Refuse, before anything changes, optimiser state that cannot follow: state of the parameters that will grow
    that splitgrow does not know, and state that spans several parameters (L-BFGS keeps its flat history of every
    parameter in the first one's state), which any split makes the wrong size."""
    for owner, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.numel() > owner.numel():
                raise GraphError(
                    f"optimiser state {key!r} ({type(optimizer).__name__}) has {value.numel()} entries for a "
                    f"parameter of {owner.numel()}: it spans several parameters and cannot follow a split; rebuild "
                    "the optimiser after the split instead"
                )
    for parameter in parameters:
        state = optimizer.state.get(parameter, {})
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.dim() == 0:
                continue
            if value.shape != parameter.shape:
                raise GraphError(
                    f"optimiser state {key!r} has shape {tuple(value.shape)}, its parameter "
                    f"{tuple(parameter.shape)}: splitgrow cannot carry it across a split (factored or sharded "
                    "state); rebuild the optimiser after the split instead"
                )
            _state_scale(key, 0.5, optimizer)


def _same_layout(grown: Tensor, reference: Tensor) -> Tensor:
    """``grown`` (a new tensor) laid out in memory like ``reference``: a channels-last convolution weight (and its
    optimiser state) stays channels-last, as the model it belongs to expects."""
    for memory_format, rank in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if (
            reference.dim() == rank
            and not reference.is_contiguous()
            and reference.is_contiguous(memory_format=memory_format)
        ):
            return grown.contiguous(memory_format=memory_format)
    return grown


@torch.no_grad()
def _grow_tensor(
    tensor: Tensor,
    dim: int,
    order: Tensor,
    scaled: dict[int, float],
    perturb: dict[int, Tensor] | None = None,
    replace: dict[int, Tensor | float] | None = None,
) -> Tensor:
    grown = _same_layout(tensor.index_select(dim, order.to(tensor.device)), tensor)
    moved = grown.movedim(dim, 0)
    for position, factor in scaled.items():
        moved[position] *= factor
    if perturb:
        for position, delta in perturb.items():
            moved[position] += delta.reshape(moved[position].shape).to(moved)
    for position, value in (replace or {}).items():
        value = torch.as_tensor(value)
        moved[position] = value.reshape(moved[position].shape).to(moved) if value.numel() > 1 else value.to(moved)
    return grown


def split_network(
    model: nn.Module,
    graph: ChannelGraph,
    requests: Sequence[SplitRequest | NewNeuron],
    epsilon: float,
    *,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    allow_inexact: bool = False,
) -> SplitReport:
    """Split neurons of ``model`` in place (see the module docstring for the rule); the graph becomes stale.

    Args:
        model: the network ``graph`` was traced from.
        graph: its :class:`ChannelGraph` (GraphError if the model changed since).
        requests: the neurons to split, at most one request per neuron, and new neurons to add
            (:class:`NewNeuron`: inserted with zero output weights, so the function does not change).
        epsilon: step size (finite, >= 0); each direction is normalised to unit length (general offspring
            shifts are used as given, times epsilon).
        optimizer: if given, its state is carried along the same map; give every optimiser that holds state of the
            model's parameters (a sequence: several optimisers, e.g. one per part of the model).
        allow_inexact: also split sites whose second-order prediction is not exact.

    Returns:
        A :class:`SplitReport`. Nothing is changed if any check fails.
    """
    if not is_step_size(epsilon):
        raise GraphError(f"epsilon must be a finite number >= 0 (at most {MAX_STEP_SIZE:g}), got {epsilon!r}")
    requests = check_requests(requests)
    optimizers = optimizer_list(optimizer)
    check_optimizers_hold(optimizers, model)
    additions: dict[int, NewNeuron] = {}
    proxies = []
    for request in requests:
        if isinstance(request, NewNeuron):
            proxy = request.as_request(graph)
            additions[id(proxy)] = request
            proxies.append(proxy)
        else:
            proxies.append(request)
    plan = plan_split(graph, proxies, allow_inexact=allow_inexact)
    for proxy in proxies:
        if id(proxy) in additions:
            _check_new(graph, additions[id(proxy)], proxy, plan, dict(model.named_modules()))
    children = {id(proxy): proxy.children() for proxy in proxies}
    modules = dict(model.named_modules())
    changes = []
    for (module_name, role), units in plan.items():
        module = modules[module_name]
        handler = handler_of(graph, module_name)
        tensors = handler.output_tensors(module) if role == OUTPUTS else handler.input_tensors(module)
        changes.append((module_name, role, module, handler, tensors, units))
    grown = [getattr(m, name) for _, _, m, _, tensors, _ in changes for name, _ in tensors]
    for each in optimizers:
        _check_optimizer(each, [p for p in grown if isinstance(p, nn.Parameter)])
    report = SplitReport(list(proxies), epsilon, parameters_before=parameter_count(model))

    def is_fresh(unit: _Unit, copy: int) -> bool:
        return id(unit.request) in additions and copy > 0

    # every inserted or displaced row, computed in the layout of the weights before anything grows
    new_rows: dict[tuple[int, int], dict[str, Tensor | float]] = {}
    for _, role, module, handler, _, units in changes:
        if role != OUTPUTS:
            continue
        for unit in units:
            for copy, child in enumerate(children[id(unit.request)]):
                if is_fresh(unit, copy):
                    new_rows[id(unit), copy] = _new_rows(module, handler, unit, additions[id(unit.request)])
                elif unit.role == "member" and child.shift is not None and epsilon > 0:
                    new_rows[id(unit), copy] = _member_rows(module, handler, unit, child.shift, epsilon)

    backup = _Backup(changes, optimizers, graph)
    try:
        # inputs first: a member whose inputs grow in the same step gets its rows mapped like its weight row
        column_maps: dict[str, tuple[Tensor, dict[int, float]]] = {}
        rows: dict[int, list[tuple]] = defaultdict(list)
        columns: dict[int, dict[str, list[int]]] = defaultdict(dict)
        for module_name, role, module, handler, tensors, units in sorted(changes, key=lambda c: c[1] != INPUTS):
            if not tensors:
                # only a size attribute (a plain instance norm)
                if role == OUTPUTS and handler.follows_channels(module):
                    order, _ = _new_order(graph.channel_count(module_name), units, children)
                    handler.resize(module, outputs=len(order))
                continue
            first = getattr(module, tensors[0][0])
            order, slots = _new_order(first.shape[tensors[0][1]], units, children)
            weights = {
                position: float(children[id(unit.request)][copy].weight) for position, (unit, copy) in slots.items()
            }
            fresh = {position for position, (unit, copy) in slots.items() if is_fresh(unit, copy)}
            zeros: dict[int, Tensor | float] = dict.fromkeys(fresh, 0.0)  # a new neuron's gradient and state start at 0
            input_dims = dict(handler.input_tensors(module))
            replace: dict[str, dict[int, Tensor | float]] = defaultdict(dict)
            perturb: dict[str, dict[int, Tensor]] = defaultdict(dict)
            if role == INPUTS:
                # consumers: the columns of offspring i carry its share w_i of the parent's
                scaled = {position: weight for position, weight in weights.items() if weight != 1.0}
                column_maps[module_name] = (order, scaled)
                state_scale: dict[int, float] = {}  # a consumer column's gradient is the parent's
                inserted: dict[int, list[int]] = defaultdict(list)
                for position, (unit, copy) in slots.items():
                    if copy > 0:
                        inserted[id(unit.request)].append(position)
                for request_id, positions in inserted.items():
                    columns[request_id][module_name] = positions
                    addition = additions.get(request_id)
                    for name, _ in tensors if addition is not None and addition.output else ():
                        given = addition.output.get(f"{module_name}.{name}" if module_name else name)
                        if given is not None:
                            given = torch.as_tensor(given)
                            replace[name].update({position: given[k] for k, position in enumerate(positions)})
            else:
                scaled = {}
                state_scale = {position: weight for position, weight in weights.items() if weight != 1.0}
                placed: dict[int, dict[int, int]] = defaultdict(dict)
                for position, (unit, copy) in slots.items():
                    if unit.role == "member":
                        placed[id(unit)][copy] = position
                    target = replace if is_fresh(unit, copy) else perturb
                    for name, value in new_rows.get((id(unit), copy), {}).items():
                        target[name][position] = _follow(value, input_dims.get(name), column_maps.get(module_name))
                for unit_id, copies in placed.items():
                    unit = next(u for u in units if id(u) == unit_id)
                    rows[id(unit.request)].append(
                        (unit.columns.start, module_name, *(copies[k] for k in sorted(copies)))
                    )
            for name, dim in tensors:
                tensor = getattr(module, name)
                new_value = _grow_tensor(tensor.data, dim, order, scaled, perturb.get(name), replace.get(name))
                for each in optimizers:
                    if isinstance(tensor, nn.Parameter) and tensor in each.state:
                        _grow_state(each, tensor, dim, order, state_scale, fresh)
                if isinstance(tensor, nn.Parameter):
                    # a gradient scales like the first moment: at eps = 0, the grown network's gradient exactly
                    grad = (
                        None if tensor.grad is None else _grow_tensor(tensor.grad, dim, order, state_scale, None, zeros)
                    )
                    _replace_data(tensor, new_value, grad)
                else:
                    setattr(module, name, new_value)
            size = len(order)
            handler.resize(module, **({"outputs": size} if role == OUTPUTS else {"inputs": size}))
            report.modules.setdefault(module_name, []).append(role)
            report.inserted.setdefault(module_name, {})[role] = sorted(p for p, (_, copy) in slots.items() if copy > 0)
        _check_still_runs(model, graph)
    except BaseException as error:
        backup.restore()  # all or nothing: a split that fails part-way, or breaks the model, leaves it as it was
        if isinstance(error, Exception) and not isinstance(error, SplitgrowError):
            raise GraphError(
                f"the split left a model that does not run ({type(error).__name__}: {error}); the model and its "
                "optimiser state are as they were before it",
                fix="exclude the sites it touched (exclude=[...]) and report the model to splitgrow: its graph "
                "misread a pattern of this model",
            ) from error
        raise
    report._backup = backup
    report.column_maps = column_maps
    report.parameters_after = parameter_count(model)
    report.offspring = [[entry[1:] for entry in sorted(rows[id(request)])] for request in proxies]
    report.columns = [dict(columns[id(request)]) for request in proxies]
    return report


def _follow(row: Tensor | float, input_dim: int | None, column_map: tuple[Tensor, dict[int, float]] | None):
    """A row of a weight (laid out before the step) in the layout of the grown weight when the module's inputs grew
    in the same step: columns gathered like the weight's and scaled by their offspring's share (0 for a new
    neuron's)."""
    if column_map is None or input_dim is None or not isinstance(row, Tensor) or row.dim() == 0:
        return row
    return spread_columns(row, input_dim - 1, *column_map)  # a row has no output dimension


def spread_columns(values: Tensor, dim: int, order: Tensor, shares: dict[int, float]) -> Tensor:
    """``values`` over a module's inputs before a split (along ``dim``) laid out over its grown inputs (a
    :attr:`SplitReport.column_maps` entry): gathered by ``order``, each offspring's column scaled by its share."""
    spread = values.index_select(dim, order.to(values.device))
    scale = torch.ones(spread.shape[dim], dtype=spread.dtype, device=spread.device)
    for position, share in shares.items():
        scale[position] = share
    view = [1] * spread.dim()
    view[dim] = -1
    return spread * scale.view(view)


def _check_new(graph: ChannelGraph, addition: NewNeuron, proxy: SplitRequest, plan: dict, modules: dict) -> None:
    site = graph.sites[addition.site]
    parameters = torch.as_tensor(addition.parameters)
    if parameters.numel() != site.neuron_dim or not bool(torch.isfinite(parameters).all()):
        raise GraphError(
            f"a new neuron of '{site.name}' needs {site.neuron_dim} finite parameters, got {parameters.numel()}"
        )
    if not addition.output:
        return
    expected = {}
    for (module_name, role), units in plan.items():
        for unit in units:
            if role == INPUTS and unit.request is proxy:
                module = modules[module_name]
                for name, dim in handler_of(graph, module_name).input_tensors(module):
                    shape = list(getattr(module, name).shape)
                    shape[dim] = sum(length for _, length in unit.runs)
                    shape.insert(0, shape.pop(dim))
                    expected[f"{module_name}.{name}" if module_name else name] = tuple(shape)
    for key, value in addition.output.items():
        if key not in expected:
            known = ", ".join(expected) or "none"
            raise GraphError(f"the new neuron of '{site.name}' has output weights for '{key}'; its consumers: {known}")
        value = torch.as_tensor(value)
        if tuple(value.shape) != expected[key] or not bool(torch.isfinite(value).all()):
            raise GraphError(
                f"the new neuron's output weights for '{key}' must be finite with shape {expected[key]} (its columns "
                f"along dim 0), got {tuple(value.shape)}"
            )


def _new_rows(module: nn.Module, handler, unit: _Unit, addition: NewNeuron) -> dict[str, Tensor | float]:
    """The inserted rows of a new neuron in one module, by tensor name."""
    if unit.role == "member":
        part = torch.as_tensor(addition.parameters).reshape(-1).to(torch.float64)[unit.columns]
        return _rows_of(module, handler, part)
    return {name: handler.new_channel_value(module, name) for name, _ in handler.output_tensors(module)}


def _rows_of(module: nn.Module, handler, theta: Tensor) -> dict[str, Tensor]:
    """One neuron's parameters ``theta`` as rows of the module's tensors (by name): each tensor's slice at one
    output channel, whichever of its dimensions holds the output channels."""
    dims = dict(handler.output_tensors(module))
    parameters = handler.parameters_from_theta(module, theta.unsqueeze(0))
    return {name: value.select(dims.get(name, 0), 0) for name, value in parameters.items()}


def _member_rows(module: nn.Module, handler, unit: _Unit, shift: Tensor, epsilon: float) -> dict[str, Tensor]:
    """eps times the member's part of an offspring's shift, as rows of the module's tensors (by name)."""
    part = (epsilon * torch.as_tensor(shift).reshape(-1).to(torch.float64))[unit.columns]
    return _rows_of(module, handler, part)


def check_requests(requests: object) -> list[SplitRequest | NewNeuron]:
    """``requests`` as a list, each a :class:`SplitRequest` or :class:`NewNeuron`.

    Raises:
        GraphError: a single request not in a list, or anything that is not a request.
    """
    if isinstance(requests, (SplitRequest, NewNeuron)):
        raise GraphError("requests must be a list of split requests, got a single one: pass [request]")
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Iterable):
        raise GraphError(
            f"requests must be a list of SplitRequest (or NewNeuron), as SplittableNetwork.select returns, got "
            f"{type(requests).__name__}"
        )
    listed = list(requests)
    for position, request in enumerate(listed):
        if not isinstance(request, (SplitRequest, NewNeuron)):
            raise GraphError(
                f"requests[{position}] is a {type(request).__name__}, not a SplitRequest or NewNeuron: write "
                "SplitRequest(site, channel, direction) (or use the requests SplittableNetwork.select returns)"
            )
    return listed


def optimizer_list(
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None,
) -> list[torch.optim.Optimizer]:
    """The optimisers whose state a split carries (none, one, or several).

    Raises:
        ConfigError: something that is not a ``torch.optim.Optimizer`` (or a list of them).
    """
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    if isinstance(optimizer, (str, bytes, Mapping)) or not isinstance(optimizer, Iterable):
        raise ConfigError(
            f"optimizer must be a torch.optim.Optimizer or a list of them, got {type(optimizer).__name__}",
            fix="give the optimiser(s) whose state the split must carry, or None",
        )
    optimizers = list(optimizer)
    for position, each in enumerate(optimizers):
        if not isinstance(each, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer[{position}] is a {type(each).__name__}, not a torch.optim.Optimizer",
                fix="list only the optimisers of the model's parameters",
            )
    return optimizers


def check_optimizers_hold(optimizers: Sequence[torch.optim.Optimizer], model: nn.Module) -> None:
    """Refuse an optimiser that holds none of ``model``'s parameters (one of another model, or made before the model
    was rebuilt): the split would leave it with its old state while the model it is meant for grows.

    Raises:
        ConfigError: naming the optimiser.
    """
    own = {id(parameter) for parameter in model.parameters()}
    for position, each in enumerate(optimizers):
        if not any(id(parameter) in own for group in each.param_groups for parameter in group["params"]):
            where = "the optimizer" if len(optimizers) == 1 else f"optimizer[{position}]"
            raise ConfigError(
                f"{where} ({type(each).__name__}) holds none of the model's parameters",
                fix="give the optimiser made from this model's parameters (e.g. model.parameters()), whose state a "
                "split must carry",
            )


class _Backup:
    """What a split changes, kept so that a failed split can be undone: every grown tensor (a parameter's data and
    gradient, a buffer), each module's channel count, and the optimiser state of the grown parameters."""

    def __init__(self, changes: list, optimizers: list[torch.optim.Optimizer], graph: ChannelGraph) -> None:
        self.tensors = []
        self.sizes = []
        for module_name, role, module, handler, tensors, _ in changes:
            for name, _ in tensors:
                tensor = getattr(module, name)
                grad = tensor.grad if isinstance(tensor, nn.Parameter) else None
                self.tensors.append((module, name, tensor, tensor.data, grad))
            size = getattr(module, tensors[0][0]).shape[tensors[0][1]] if tensors else None
            if size is None and role == OUTPUTS:
                size = graph.channel_count(module_name)
            if size is not None:
                self.sizes.append((module, handler, role, size))
        grown = {id(tensor) for _, _, tensor, _, _ in self.tensors}
        self.states = [
            (each.state, parameter, dict(state))
            for each in optimizers
            for parameter, state in list(each.state.items())
            if id(parameter) in grown
        ]

    def restore(self) -> None:
        for module, name, tensor, data, grad in self.tensors:
            if isinstance(tensor, nn.Parameter):
                _replace_data(tensor, data, grad)
            else:
                setattr(module, name, tensor)
        for module, handler, role, size in self.sizes:
            handler.resize(module, **({"outputs": size} if role == OUTPUTS else {"inputs": size}))
        for states, parameter, saved in self.states:
            states[parameter] = saved


def _check_still_runs(model: nn.Module, graph: ChannelGraph) -> None:
    """Run the grown model on the example it was traced with: a pattern the graph misread shows here as a shape
    error, before the model is handed back broken."""
    # cast or moved to the model (which may have changed since the trace); copies, which a forward may overwrite
    inputs = tuple(t.clone() if isinstance(t, Tensor) else t for t in inputs_like(model, graph.example_inputs))
    with evaluating(model), torch.no_grad():
        model(*inputs)


def _replace_data(parameter: nn.Parameter, value: Tensor, grad: Tensor | None = None) -> None:
    """Give ``parameter`` its grown ``value`` and ``grad`` (None: no gradient) in place, with a fresh gradient
    accumulator.

    Autograd keeps one accumulator node per leaf, with the leaf's shape, for as long as any graph holds it (a
    training loop's last ``loss`` does); ``.data =`` reuses it unless the dtype or device changes, and the next
    backward then fails on the old shape. Passing through another dtype drops the stale node (float32 or float16,
    which every device has).
    """
    other = torch.float32 if value.dtype != torch.float32 else torch.float16
    parameter.data = torch.empty(0, dtype=other, device=value.device)
    parameter.data = value
    parameter.grad = grad


def _grow_state(
    optimizer: torch.optim.Optimizer,
    parameter: Tensor,
    dim: int,
    order: Tensor,
    scaled: dict[int, float],
    fresh: set[int],
) -> None:
    """Carry one parameter's optimiser state: rows scaled by their offspring's share (first moments), its square
    (second moments) or its magnitude, or copied (state in the parameters' units); new neurons' rows and columns
    zero (step sizes: their parent's, since a zero step size would never grow again)."""
    state = optimizer.state[parameter]
    for key, value in list(state.items()):
        if not isinstance(value, Tensor) or value.dim() == 0:
            continue
        factors = {position: _state_scale(key, weight, optimizer) for position, weight in scaled.items()}
        zeros = {} if key in COPIED_STATES else {position: 0.0 for position in fresh}
        state[key] = _grow_tensor(value, dim, order, factors, replace=zeros)


def resize_like(model: nn.Module, state_dict: dict[str, Tensor]) -> list[str]:
    """Resize every layer of ``model`` to the shapes of ``state_dict`` (that of a grown copy of the same
    architecture), so that ``model.load_state_dict(state_dict)`` then loads exactly. Returns the resized modules.

    This is how a grown custom model is rebuilt: construct it as before growth, resize it to the saved state, load
    the state. Only layers with a handler can be resized; the tensors get the saved shapes (their values come with
    the state_dict).

    Raises:
        GraphError: a tensor of another shape in a module splitgrow cannot resize, a missing tensor, tensors of one
            module that disagree on its channels; checked before any layer is resized.
    """
    from .layers import handler_for

    check_model_type(model)
    if not isinstance(state_dict, Mapping):
        raise GraphError(
            f"the saved state must be a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    # every check first, so that a state of another architecture leaves the model as it was
    plans = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        changed = {}
        for name, tensor in own:
            saved = state_dict.get(prefix + name)
            if saved is None:
                raise GraphError(f"the saved state has no '{prefix + name}': it is not a state of this architecture")
            if not isinstance(saved, Tensor):
                raise GraphError(f"the saved state's '{prefix + name}' is a {type(saved).__name__}, not a tensor")
            if tuple(saved.shape) != tuple(tensor.shape):
                if saved.dim() != tensor.dim():
                    raise GraphError(
                        f"the saved state's '{prefix + name}' has shape {tuple(saved.shape)}, the model's "
                        f"{tuple(tensor.shape)}: it is not a state of this architecture"
                    )
                changed[name] = tuple(saved.shape)
        if not changed:
            continue
        handler = handler_for(module)
        if handler is None:
            raise GraphError(
                f"'{module_name}' ({type(module).__name__}) has tensors of other shapes in the saved state and "
                "splitgrow cannot resize it"
            )
        sizes, resized_roles = {}, set()
        for role, tensors in ((OUTPUTS, handler.output_tensors(module)), (INPUTS, handler.input_tensors(module))):
            for name, dim in tensors:
                size = changed.get(name, tuple(getattr(module, name).shape))[dim]
                resized_roles.update([role] if name in changed else [])
                if sizes.setdefault(role, size) != size:
                    raise GraphError(
                        f"the saved state of '{module_name}' gives its {role} {sizes[role]} and {size} channels in "
                        "different tensors: it is not a state splitgrow grew from this model"
                    )
        plans.append((module_name, module, handler, changed, {r: n for r, n in sizes.items() if r in resized_roles}))
    for _, module, handler, changed, sizes in plans:
        for name, shape in changed.items():
            tensor = getattr(module, name)
            new = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                _replace_data(tensor, new)  # the same Parameter object: an optimiser built on the model keeps working
            else:
                setattr(module, name, new)
        handler.resize(module, **sizes)
    return [module_name for module_name, *_ in plans]
