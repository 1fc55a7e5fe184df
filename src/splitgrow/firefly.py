"""Firefly growth (Wu, Liu, Stone & Liu, NeurIPS 2020) on any model: brand-new neurons compete with splits.

A new neuron j of a site enters with incoming parameters theta_j and output columns t u_j (||u_j|| = 1, every
column its channel has in every consumer). Its columns are zero before it enters, so the loss changes by

    t <g_j, u_j> + O(t^2),    g_j = dL/d(columns of j) at zero,

which is linear in the neuron's output h_j(theta_j); the best u_j is -g_j / ||g_j|| and the first-order decrease
t ||g_j||. The incoming parameters are chosen by a few steps of projected gradient ascent on ||g_j(theta_j)|| over
the statistics batches, with ||theta_j|| held at the site's median neuron norm (for a homogeneous activation the
ascent would otherwise only grow the norm). All candidates are scored in one copy of the model, where they are
added with zero output columns: they do not see each other, and the model's function is that of the original.

Splits and new neurons compete in one ranking by their predicted loss change. A split along v_min changes the loss
by eps^2/2 lambda_min; a new neuron enters with output step t = eps^2/2 (``new_step``), so that both are of the
same order in eps and the ranking compares lambda_min with -||g_j||.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .checks import is_count, is_number
from .errors import ConfigError
from .graph import ChannelGraph, GraphError, Site
from .selection import (
    Selection,
    _request,
    choose_within_budget,
    eligible_neurons,
    fit_within_budget,
    is_frozen,
    validate_selection,
)
from .statistics.loss_hessian import _Functional
from .statistics.recording import (
    LossClosure,
    LossFunction,
    StatisticsError,
    _check_loss,
    batch_to_device,
    batch_units,
    check_loss_contract,
    closure_from_loss,
    resolve_reduction,
)
from .surgery import INPUTS, OUTPUTS, NewNeuron, SplitRequest, split_network


@dataclass(frozen=True)
class FireflyOptions:
    """How new-neuron candidates are drawn and tuned.

    Attributes:
        candidates_per_site: new neurons tried per site (at most the site's width).
        steps: projected gradient-ascent steps on the candidates' incoming parameters (one batch each).
        step_size: the angle (radians) of a full step on the sphere of the site's neuron norm.
        score_batches: statistics batches the final scores g_j are averaged over (None: all of them).
        new_step: the output step t of a new neuron; None: eps^2/2 (see the module docstring).
    """

    candidates_per_site: int = 4
    steps: int = 4
    step_size: float = 0.3
    score_batches: int | None = 4
    new_step: float | None = None

    def __post_init__(self) -> None:
        if not (is_count(self.candidates_per_site, 1) and is_count(self.steps, 0)):
            raise ConfigError(
                f"candidates_per_site must be an integer >= 1 and steps an integer >= 0, got "
                f"{self.candidates_per_site!r}, {self.steps!r}"
            )
        if not (is_number(self.step_size) and self.step_size > 0):
            raise ConfigError(f"step_size must be a finite number > 0, got {self.step_size!r}")
        if self.score_batches is not None and not is_count(self.score_batches, 1):
            raise ConfigError(f"score_batches must be an integer >= 1 (or None: all), got {self.score_batches!r}")
        if self.new_step is not None and not (is_number(self.new_step) and self.new_step >= 0):
            raise ConfigError(f"new_step must be a finite number >= 0, got {self.new_step!r}")

    def output_step(self, epsilon: float) -> float:
        return 0.5 * epsilon**2 if self.new_step is None else self.new_step


@dataclass
class NewNeuronCandidate:
    """A tuned new neuron: its incoming ``parameters`` (the site's d entries), its unit output direction ``output``
    (-g / ||g||, by consumer tensor, columns along dim 0) and ``gradient_norm`` ||g||: entering with output step t
    changes the loss by -t ||g|| to first order."""

    site: str
    parameters: Tensor
    output: dict[str, Tensor]
    gradient_norm: float

    def new_neuron(self, step: float, *, after: int | None = None, fingerprint: tuple | None = None) -> NewNeuron:
        """The :class:`NewNeuron` that adds this candidate with output step ``step``."""
        output = {name: step * value for name, value in self.output.items()}
        return NewNeuron(self.site, self.parameters, after=after, fingerprint=fingerprint, output=output)


def _site_theta(graph: ChannelGraph, site: Site) -> Tensor:
    """(n, d) the parameters of every neuron of a site, members in order."""
    parts = []
    for member in site.members:
        module = graph.modules[member.module]
        parts.append(member.handler.theta(module)[member.offset : member.offset + site.num_neurons].double())
    return torch.cat(parts, dim=1)


@dataclass
class _Layout:
    """Where the candidates sit in the copy of the model: their rows in the members, their columns in the
    consumers, and the old channels of every grown module."""

    rows: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))  # module: (cand, row)
    columns: dict[str, list[tuple[int, list[int]]]] = field(default_factory=lambda: defaultdict(list))
    kept: dict[tuple[str, str], Tensor] = field(default_factory=dict)  # (module, role): old positions
    count: int = 0


def new_neuron_candidates(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    loss_function: LossFunction | None = None,
    *,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    options: FireflyOptions = FireflyOptions(),
    allow_inexact: bool = False,
    seed: int = 0,
) -> list[NewNeuronCandidate]:
    """Draw, tune and score new neurons for every splittable site (see the module docstring).

    Args:
        model, graph: the model and its current graph.
        data, loss_function, closure, reduction, batches: the statistics data and loss, as for
            :func:`splitgrow.statistics.splitting_eigenpairs`.
        sites: the sites to grow (default: every splittable one; inexact ones only with ``allow_inexact``).
        options: how many candidates, how many ascent steps, how large.
        seed: of the random starting directions.

    Returns:
        The candidates, in site order.
    """
    graph.check_current()
    check_loss_contract(loss_function, closure)
    reduction = resolve_reduction(reduction, loss_function if closure is None else closure)
    run = closure if closure is not None else closure_from_loss(loss_function)
    chosen = [
        site
        for site in graph.splittable_sites()
        if (sites is None or site.name in sites) and (site.exact or allow_inexact) and not is_frozen(graph, site)
    ]
    parameter = next(model.parameters())
    records = []
    for count, batch in enumerate(data):
        if batches is not None and count >= batches:
            break
        if batch_units(batch):  # an empty batch (a process's empty shard) holds nothing to score; its mean is NaN
            records.append(batch_to_device(batch, parameter.device))
    if not records:
        raise StatisticsError("the data gave no batches (or only empty ones)")
    if not chosen:
        return []

    generator = torch.Generator().manual_seed(seed)
    additions, radii, owners = [], [], []
    for site in chosen:
        theta = _site_theta(graph, site)
        radius = float(theta.norm(dim=1).median()) or 1.0
        for k in range(min(options.candidates_per_site, site.num_neurons)):
            direction = torch.randn(site.neuron_dim, generator=generator, dtype=torch.float64)
            additions.append(NewNeuron(site.name, radius * direction / direction.norm(), after=k))
            radii.append(radius)
            owners.append(site)
    twin = copy.deepcopy(model).eval()
    report = split_network(twin, graph.for_copy(twin), additions, 0.0, allow_inexact=True)
    layout = _layout(twin, report)
    thetas = [addition.parameters.clone() for addition in additions]
    for step in range(options.steps):
        thetas = _ascend(twin, graph, layout, owners, thetas, radii, records[step % len(records)], run, options)
    scored = records if options.score_batches is None else records[: options.score_batches]
    gradients = _output_gradients(twin, graph, layout, owners, thetas, scored, run, reduction)
    candidates = []
    for index, (site, theta) in enumerate(zip(owners, thetas)):
        found = gradients[index]
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in found.values()))
        output = {name: (-g / norm if norm > 0 else torch.zeros_like(g)) for name, g in found.items()}
        candidates.append(NewNeuronCandidate(site.name, theta.detach().clone(), output, norm))
    return candidates


def _layout(twin: nn.Module, report) -> _Layout:
    layout = _Layout(count=len(report.offspring))
    for index, placed in enumerate(report.offspring):
        for module_name, _, row in placed:
            layout.rows[module_name].append((index, row))
    for index, consumers in enumerate(report.columns):
        for module_name, positions in consumers.items():
            layout.columns[module_name].append((index, positions))
    modules = dict(twin.named_modules())
    for module_name, roles in report.inserted.items():
        for role, positions in roles.items():
            handler_tensors = _tensors(twin, module_name, role)
            if not handler_tensors:
                continue
            name, dim = handler_tensors[0]
            size = getattr(modules[module_name], name).shape[dim]
            inserted = set(positions)
            layout.kept[module_name, role] = torch.tensor([p for p in range(size) if p not in inserted])
    return layout


def _tensors(twin: nn.Module, module_name: str, role: str) -> list[tuple[str, int]]:
    from .layers import handler_for

    module = dict(twin.named_modules())[module_name]
    handler = handler_for(module)
    return handler.output_tensors(module) if role == OUTPUTS else handler.input_tensors(module)


def _overrides(
    twin: nn.Module, graph: ChannelGraph, layout: _Layout, owners: list[Site], thetas: list[Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The copy's tensors with the candidates' rows made from ``thetas`` and their output columns replaced by
    zero leaves (whose gradients are the g_j): (tensors by qualified name, leaves by qualified name)."""
    modules = dict(twin.named_modules())
    replaced: dict[str, Tensor] = {}
    leaves: dict[str, Tensor] = {}
    for module_name, entries in layout.columns.items():
        module = modules[module_name]
        positions = torch.tensor([p for _, ps in entries for p in ps])
        for name, dim in _tensors(twin, module_name, INPUTS):
            key = f"{module_name}.{name}" if module_name else name
            base = replaced.get(key, getattr(module, name).detach())
            moved = base.movedim(dim, 0)
            leaf = torch.zeros_like(moved[positions]).requires_grad_(True)
            leaves[key] = leaf
            replaced[key] = moved.index_put((positions,), leaf).movedim(0, dim)
    for module_name, entries in layout.rows.items():
        module = modules[module_name]
        original = graph.modules[module_name]  # the model before the candidates: theta's layout
        member, columns = _member_of(owners[entries[0][0]], module_name)
        handler = member.handler
        rows = torch.tensor([row for _, row in entries])
        theta = torch.stack([thetas[index][columns] for index, _ in entries])
        values = handler.parameters_from_theta(original, theta)
        input_dims = dict(handler.input_tensors(original))
        kept_inputs = layout.kept.get((module_name, INPUTS))
        for name, dim in handler.output_tensors(module):
            if name not in values:
                continue
            key = f"{module_name}.{name}" if module_name else name
            base = replaced.get(key, getattr(module, name).detach())
            moved = base.movedim(dim, 0)
            row_shape = getattr(original, name).movedim(dim, 0).shape[1:]
            value = values[name].movedim(dim, 0).to(moved.dtype).reshape(len(rows), *row_shape)
            if kept_inputs is not None and name in input_dims:
                # the copy's rows also have the other candidates' columns (zero: a new neuron sees no new neuron)
                row_dim = input_dims[name] - (1 if input_dims[name] > dim else 0)
                shape = list(value.shape)
                shape[row_dim + 1] = moved.shape[row_dim + 1]
                value = torch.zeros(shape, dtype=value.dtype).index_copy(row_dim + 1, kept_inputs, value)
            replaced[key] = moved.index_put((rows,), value).movedim(0, dim)
    return replaced, leaves


def _member_of(site: Site, module_name: str):
    for member, columns in site.member_slices():
        if member.module == module_name:
            return member, columns
    raise GraphError(f"'{module_name}' is not a member of site '{site.name}'")


def _loss(twin: nn.Module, replaced: dict[str, Tensor], batch: Any, run: LossClosure) -> tuple[Tensor, float]:
    returned = run(_Functional(twin, replaced), batch)
    loss, weight = returned if isinstance(returned, tuple) else (returned, batch_units(batch))
    _check_loss(loss, 0, twin)
    return loss, float(weight)


def _per_candidate(layout: _Layout, twin: nn.Module, leaf_gradients: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """Each candidate's output gradient, by consumer tensor, restricted to the consumers' old rows."""
    found: dict[int, dict[str, Tensor]] = defaultdict(dict)
    for module_name, entries in layout.columns.items():
        kept_outputs = layout.kept.get((module_name, OUTPUTS))
        output_dims = dict(_tensors(twin, module_name, OUTPUTS))
        for name, dim in _tensors(twin, module_name, INPUTS):
            key = f"{module_name}.{name}" if module_name else name
            gradient = leaf_gradients[key]
            start = 0
            for index, positions in entries:
                part = gradient[start : start + len(positions)]
                start += len(positions)
                if kept_outputs is not None and name in output_dims:
                    out_dim = output_dims[name] + (1 if output_dims[name] < dim else 0)
                    part = part.index_select(out_dim, kept_outputs.to(part.device))
                found[index][key] = part
    return [found.get(index, {}) for index in range(layout.count)]


def _ascend(twin, graph, layout, owners, thetas, radii, batch, run, options: FireflyOptions) -> list[Tensor]:
    """One projected gradient-ascent step of every candidate's ||g_j|| on one batch."""
    leaves_theta = [theta.detach().clone().requires_grad_(True) for theta in thetas]
    with torch.enable_grad():
        replaced, leaves = _overrides(twin, graph, layout, owners, leaves_theta)
        loss, _ = _loss(twin, replaced, batch, run)
        keys = list(leaves)
        gradients = torch.autograd.grad(loss, [leaves[k] for k in keys], create_graph=True)
        per_candidate = _per_candidate(layout, twin, dict(zip(keys, gradients)))
        objective = sum(
            torch.sqrt(sum(g.pow(2).sum() for g in found.values()) + 1e-30) for found in per_candidate if found
        )
        if not isinstance(objective, Tensor) or not objective.requires_grad:
            return thetas
        steps = torch.autograd.grad(objective, leaves_theta, allow_unused=True)
    moved = []
    for theta, step, radius in zip(thetas, steps, radii):
        theta = theta.detach().double()
        if step is not None:
            step = step.double()
            tangent = step - (step @ theta) / (theta @ theta) * theta  # along the sphere
            norm = float(tangent.norm())
            if norm > 0:
                theta = theta + options.step_size * radius * tangent / norm
        moved.append(radius * theta / theta.norm())
    return moved


def _output_gradients(twin, graph, layout, owners, thetas, records, run, reduction: str) -> list[dict[str, Tensor]]:
    """g_j over all the statistics batches (the mean loss's gradient, or the sum's)."""
    total: list[dict[str, Tensor]] | None = None
    weight = 0.0
    for batch in records:
        with torch.enable_grad():
            replaced, leaves = _overrides(twin, graph, layout, owners, [t.detach() for t in thetas])
            loss, units = _loss(twin, replaced, batch, run)
            keys = list(leaves)
            found = dict(zip(keys, torch.autograd.grad(loss, [leaves[k] for k in keys])))
        scale = units if reduction == "mean" else 1.0
        weight += units
        per_candidate = _per_candidate(layout, twin, found)
        if total is None:
            total = [{k: scale * g.double() for k, g in part.items()} for part in per_candidate]
        else:
            for accumulated, part in zip(total, per_candidate):
                for k, g in part.items():
                    accumulated[k] += scale * g.double()
    divide = weight if reduction == "mean" else 1.0
    return [{k: g / divide for k, g in part.items()} for part in total or []]


def select_growth(
    results: Mapping,
    candidates: Sequence[NewNeuronCandidate],
    *,
    epsilon: float,
    max_count: int | None = None,
    costs: Mapping[str, float] | None = None,
    budget: float | None = None,
    threshold: float = 0.0,
    graph: ChannelGraph | None = None,
    allow_inexact: bool = False,
    options: FireflyOptions = FireflyOptions(),
    exact_cost: Callable[[Sequence[SplitRequest | NewNeuron]], float] | None = None,
) -> Selection:
    """Splits and new neurons ranked together by their predicted loss change (eps^2/2 lambda for a split,
    -t ||g|| for a new neuron), the best ``max_count`` of them, or the best within ``budget`` given the cost of
    one added neuron per site (``costs``) and, where it is more than their sum, the true cost of a set of them
    (``exact_cost``: see :func:`splitgrow.selection.select_within_budget`).

    Returns:
        A :class:`Selection` of :class:`SplitRequest` and :class:`NewNeuron`, which
        :func:`splitgrow.surgery.split_network` (or ``SplittableNetwork.split``) applies together.
    """
    if (max_count is None) == (budget is None):
        raise ValueError("give exactly one of max_count and budget")
    if max_count is not None:
        validate_selection(max_count, threshold)
    if graph is not None:
        graph.check_current()
    step = options.output_step(epsilon)
    split_candidates, skipped = eligible_neurons(results, threshold, graph, allow_inexact)
    items: list[tuple[float, Any]] = [
        (0.5 * epsilon**2 * index, ("split", index, name, channel)) for index, name, channel in split_candidates
    ]
    items += [(-step * c.gradient_norm, ("new", c)) for c in candidates if step * c.gradient_norm > 0]
    if budget is not None:
        costs = dict(costs or {})
        for _, item in items:
            site = item[2] if item[0] == "split" else item[1].site
            if site not in costs:
                skipped[site] = "no cost given for it"
        items = [i for i in items if (i[1][2] if i[1][0] == "split" else i[1][1].site) in costs]
        spend = [costs[i[1][2] if i[1][0] == "split" else i[1][1].site] for i in items]
        scores = [score for score, _ in items]
        return fit_within_budget(
            lambda allowance: [items[i] for i in choose_within_budget(scores, spend, allowance)],
            lambda picked: _build(picked, skipped, results, graph, step),
            budget,
            exact_cost,
            least_valuable=lambda picked: max(picked, key=lambda entry: entry[0]),
        )
    items.sort(key=lambda entry: entry[0])
    return _build(items[:max_count], skipped, results, graph, step)


def _build(
    items: list[tuple[float, Any]], skipped: dict[str, str], results: Mapping, graph: ChannelGraph | None, step: float
) -> Selection:
    """The requests of the chosen items, best first: splits, then new neurons, each after a channel no other
    request of the step uses."""
    items = sorted(items, key=lambda entry: entry[0])
    skipped = dict(skipped)
    chosen: list[SplitRequest | NewNeuron] = []
    split_channels: dict[str, set[int]] = defaultdict(set)
    for _, item in items:
        if item[0] == "split":
            _, index, name, channel = item
            chosen.append(_request(results, name, channel, index, graph))
            split_channels[name].add(channel)
    # a new neuron goes after a channel no other request of this step uses (one request per channel)
    used: dict[str, set[int]] = {name: set(channels) for name, channels in split_channels.items()}
    for _, item in items:
        if item[0] != "new":
            continue
        candidate = item[1]
        width = graph.sites[candidate.site].num_neurons if graph is not None else None
        taken = used.setdefault(candidate.site, set())
        free = [c for c in range((width or len(taken) + 1) - 1, -1, -1) if c not in taken]
        if not free:
            skipped[f"{candidate.site} (a new neuron)"] = "every channel is already split in this step"
            continue
        taken.add(free[0])
        fingerprint = None if graph is None else graph.fingerprint
        chosen.append(candidate.new_neuron(step, after=free[0], fingerprint=fingerprint))
    return Selection(chosen, skipped)
