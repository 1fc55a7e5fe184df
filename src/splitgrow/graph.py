"""The splittable sites of a PyTorch model and every layer coupled to each of their channels.

A *site* is a Linear or Conv2d layer whose output channels are neurons: the layer is followed, possibly through an
eval-mode BatchNorm, by an activation module with a derivative table (:mod:`splitgrow.activations`). Splitting
channel j of a site changes every layer that sees that channel:

* the site's producer (row j of its weight and bias: the neuron's theta);
* per-channel layers between it and its consumers (BatchNorm, depthwise Conv2d, pooling, dropout, activations);
* other producers coupled to the same channel by an elementwise sum or product (they are duplicated exactly);
* the consumers (Linear or Conv2d inputs), through concatenation offsets and flatten (one channel = H*W features).

The graph is built with ``torch.fx``: the model is traced symbolically and run once on an example input to record
every tensor's shape. Each tensor with a channel dimension (dim 1 of an (N, C) or (N, C, H, W) tensor) is a
*channel space*; operations link spaces by an index map (identity, concatenation offset, or flatten block).
Growing channel j of a site is the closure of {j} through those maps. Any space the closure meets that splitgrow
cannot grow (a model input or output, a reshape it does not understand, a grouped convolution, a normalisation
across channels, a shared module, ...) stops the split with an error naming the node and the reason; nothing is
ever changed silently.

Why not torch-pruning's ``DependencyGraph``: it couples channels the same way, but it has no expand operations,
and in version 1.6.1 it merges the branches of a concatenation followed by pooling and flatten into one group
(pruning channel j of one branch also prunes channel j of the other). An explicit graph with recorded shapes
gives exact index maps and errors that name the offending node.

*Exactness.* The second-order prediction eps^2/2 v^T S v of a split holds when the two offspring's outputs reach
the consumers through locally linear operations only (BatchNorm in eval mode, pooling, dropout, flatten,
concatenation, piecewise-linear activations). One more smooth nonlinearity per copy is covered in the common case
of a depthwise block (producer -> BN -> act -> depthwise conv -> BN -> act, as in MobileNet and DS-CNN): the
statistics then add the exact correction term. Anything else (a residual sum followed by an activation) makes a
site *inexact*; its splitting matrix is still the paper's, but :func:`splitgrow.surgery.split_network` refuses it
unless asked explicitly.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .activations import Activation, activation_of_module
from .errors import SplitgrowError


class GraphError(SplitgrowError):
    """The model cannot be traced, or a requested growth touches something splitgrow cannot grow."""


# ------------------------------------------------------------------------------------------ operation tables

_ACTIVATION_MODULES = (nn.Softplus, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU)
_SMOOTH_MODULES = (nn.Softplus, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.ELU, nn.Softsign, nn.Mish, nn.Hardswish)
_PIECEWISE_LINEAR_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_LINEAR_PER_CHANNEL_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)

_SMOOTH_FUNCTIONS = {F.softplus, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.gelu, F.elu, torch.exp}
_PIECEWISE_LINEAR_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.hardtanh,
    F.max_pool2d,
    F.adaptive_max_pool2d,
}
_LINEAR_FUNCTIONS = {F.dropout, F.dropout2d, F.avg_pool2d, F.adaptive_avg_pool2d}
_SMOOTH_METHODS = {"sigmoid", "tanh", "exp"}
_PIECEWISE_LINEAR_METHODS = {"relu"}
_IDENTITY_METHODS = {"contiguous", "clone"}
_BINARY_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_REDUCTIONS = {torch.mean, torch.amax, torch.sum}
_REDUCTION_METHODS = {"mean", "amax", "sum"}

LINEAR = "linear"
PIECEWISE_LINEAR = "piecewise-linear"
SMOOTH = "smooth"


# ------------------------------------------------------------------------------------------ data structures


@dataclass
class Edge:
    """An index map from positions of one space to another: identity, offset (``other`` is a concatenation
    input starting at ``offset`` of this space, or the reverse) or block (each channel of the lower space is
    ``block`` consecutive features of the upper one)."""

    kind: str
    other: str
    offset: int = 0
    block: int = 1
    size: int = 0

    def map(self, positions: Iterable[int]) -> set[int]:
        if self.kind == "identity":
            return set(positions)
        if self.kind == "to_part":  # concatenation output -> one input
            return {p - self.offset for p in positions if self.offset <= p < self.offset + self.size}
        if self.kind == "from_part":  # concatenation input -> output
            return {p + self.offset for p in positions}
        if self.kind == "to_features":  # channels -> flattened features
            return {p * self.block + r for p in positions for r in range(self.block)}
        if self.kind == "to_channels":  # flattened features -> channels
            return {p // self.block for p in positions}
        raise AssertionError(self.kind)


@dataclass
class Space:
    """The channel dimension of one tensor of the traced model."""

    node: str
    size: int
    producers: list[str] = field(default_factory=list)
    per_channel: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    #: the operation that produced this tensor from its input space(s): linear, piecewise-linear or smooth
    nonlinearity: str = LINEAR
    order: int = 0


@dataclass
class Site:
    """A layer whose output channels are splittable neurons.

    Attributes:
        name: qualified name of the producer module (Linear or Conv2d).
        kind: ``"linear"``, ``"conv"``, ``"depthwise"`` or ``"grouped"``.
        batch_norm: qualified name of the BatchNorm between producer and activation, if any.
        activation_module: qualified name of the activation module.
        activation: its derivative table.
        num_neurons: output channels.
        neuron_dim: d, parameters per neuron (filter entries plus 1 for the bias).
        exact: whether eps^2/2 v^T S v is the exact second-order loss change of a split.
        depthwise_chain: for a site feeding a depthwise block, (depthwise conv, its BatchNorm or None, its
            activation module): the statistics add the correction for that block.
        splittable: False when a split would touch something splitgrow cannot grow; ``reason`` says why.
    """

    name: str
    kind: str
    batch_norm: str | None
    activation_module: str
    activation: Activation
    num_neurons: int
    neuron_dim: int
    space: str
    exact: bool = True
    inexact_reason: str = ""
    depthwise_chain: tuple[str, str | None, str] | None = None
    splittable: bool = True
    reason: str = ""


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)  # tuples of metadata (several outputs) have no shape
    return None if shape is None else tuple(shape)


def _is_channel_tensor(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) in (2, 4)


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(value: Any) -> None:
        if isinstance(value, fx.Node):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(node.args)
    visit(node.kwargs)
    return [arg for arg in found if _shape(arg) is not None]


class ChannelGraph:
    """Sites and channel coupling of a model, traced on an example input.

    Args:
        model: the network; traced with ``torch.fx`` (its forward must not branch on tensor values).
        example_inputs: a tensor (or tuple of tensors) accepted by ``model``; only shapes matter.
        exclude: qualified module names (or name prefixes) whose output channels must not be split.
        relu_surrogate: if given, ReLU activations are treated as splittable with the phi'' of
            softplus(beta=relu_surrogate), an explicit approximation that every report names.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        *,
        exclude: Sequence[str] = (),
        relu_surrogate: float | None = None,
    ) -> None:
        self.model = model
        self.exclude = tuple(exclude)
        self.relu_surrogate = relu_surrogate
        inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        try:
            self.module = fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - any tracing failure becomes one clear message
            raise GraphError(
                f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); "
                "splitgrow needs a forward pass without Python control flow on tensor values"
            ) from None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.module).propagate(*inputs)
        except Exception as error:  # noqa: BLE001
            raise GraphError(f"the example input does not run through the model: {error}") from None
        finally:
            model.train(was_training)
        self.modules = dict(model.named_modules())
        self.spaces: dict[str, Space] = {}
        self.sites: dict[str, Site] = {}
        self.not_sites: dict[str, str] = {}
        self._nodes = {node.name: node for node in self.module.graph.nodes}
        self._module_node: dict[str, fx.Node] = {}
        self._build_spaces()
        self._find_sites()

    # ---------------------------------------------------------------------------------------- building

    def _space(self, node: fx.Node) -> Space | None:
        return self.spaces.get(node.name)

    def _link(self, a: Space, b: Space, kind: str, **kwargs: int) -> None:
        inverse = {"identity": "identity", "to_part": "from_part", "from_part": "to_part"}
        inverse.update({"to_features": "to_channels", "to_channels": "to_features"})
        a.edges.append(Edge(kind, b.node, **kwargs))
        b.edges.append(Edge(inverse[kind], a.node, **kwargs))

    def _block(self, spaces: Iterable[Space | None], reason: str) -> None:
        for space in spaces:
            if space is not None and reason not in space.blocked:
                space.blocked.append(reason)

    def _build_spaces(self) -> None:
        calls: dict[str, int] = {}
        for order, node in enumerate(self.module.graph.nodes):
            shape = _shape(node)
            if _is_channel_tensor(shape):
                self.spaces[node.name] = Space(node.name, shape[1], order=order)
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
                self._module_node[node.target] = node
        for node in self.module.graph.nodes:
            out = self._space(node)
            ins = [self._space(arg) for arg in _tensor_args(node)]
            if node.op == "placeholder":
                self._block([out], f"'{node.name}' is a model input")
            elif node.op == "output":
                self._block(ins, "the channels reach the model output")
            elif node.op == "get_attr":
                self._block([out], f"'{node.target}' is a tensor attribute of the model")
            elif node.op == "call_module":
                module = self.modules[node.target]
                if calls[node.target] > 1:
                    self._block([out, *ins], f"module '{node.target}' is called {calls[node.target]} times")
                    continue
                self._module_edges(node, module, out, ins)
            elif node.op in ("call_function", "call_method"):
                self._function_edges(node, out, ins)

    def _module_edges(self, node: fx.Node, module: nn.Module, out: Space | None, ins: list[Space | None]) -> None:
        name = node.target
        source = ins[0] if ins else None
        if isinstance(module, nn.Linear):
            if out is None or source is None or len(_shape(node)) != 2:
                self._block([out, source], f"Linear '{name}' is applied to a tensor that is not (N, features)")
                return
            source.consumers.append(name)
            out.producers.append(name)
        elif isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                self._block([out, source], f"Conv2d '{name}' uses padding_mode={module.padding_mode!r}")
            groups = module.groups
            if source is None or out is None:
                self._block([out, source], f"Conv2d '{name}' is applied to a tensor that is not (N, C, H, W)")
                return
            if groups == 1:
                source.consumers.append(name)
                out.producers.append(name)
            elif groups == module.in_channels == module.out_channels:
                # a depthwise convolution acts per channel: channel j in is channel j out
                self._link(source, out, "identity")
                out.producers.append(name)
                out.per_channel.append(name)
                out.nonlinearity = LINEAR
            else:
                self._block(
                    [out, source],
                    f"Conv2d '{name}' has groups={groups}: PyTorch needs channel counts divisible by groups",
                )
                out.producers.append(name)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not module.track_running_stats or not module.affine:
                self._block([out, source], f"BatchNorm '{name}' needs affine=True and running statistics")
            self._link(source, out, "identity")
            out.per_channel.append(name)
        elif isinstance(module, nn.Flatten):
            self._flatten(node, source, out)
        elif isinstance(module, _LINEAR_PER_CHANNEL_MODULES + _PIECEWISE_LINEAR_MODULES + _SMOOTH_MODULES):
            if out is None or source is None or out.size != source.size:
                self._block([out, source], f"'{name}' changes the channel count")
                return
            self._link(source, out, "identity")
            if isinstance(module, _SMOOTH_MODULES):
                out.nonlinearity = SMOOTH
            elif isinstance(module, _PIECEWISE_LINEAR_MODULES):
                out.nonlinearity = PIECEWISE_LINEAR
        else:
            self._block([out, *ins], f"module '{name}' ({type(module).__name__}) is not supported")

    def _flatten(self, node: fx.Node, source: Space | None, out: Space | None) -> None:
        source_shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        out_shape = _shape(node)
        if source is None or out is None or source_shape is None:
            self._block([out, source], f"'{node.name}' flattens a tensor splitgrow does not follow")
            return
        if len(source_shape) == 4 and out_shape == (
            source_shape[0],
            source_shape[1] * source_shape[2] * source_shape[3],
        ):
            self._link(source, out, "to_features", block=source_shape[2] * source_shape[3])
        elif out_shape == source_shape:
            self._link(source, out, "identity")
        else:
            self._block([out, source], f"'{node.name}' reshapes {source_shape} to {out_shape}")

    def _function_edges(self, node: fx.Node, out: Space | None, ins: list[Space | None]) -> None:
        target = node.target
        method = node.op == "call_method"
        if not ins and out is None:
            return
        if out is None:  # a non-tensor result (size, shape) or a tensor without channel dimension
            if (method and target in {"size", "dim"}) or target in {getattr}:
                return
            self._block(ins, f"'{node.name}' turns the channels into something splitgrow does not follow")
            return
        source = ins[0] if ins else None
        if (not method and target in _CAT_FUNCTIONS) or (method and target == "cat"):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            rank = len(_shape(node))
            if dim % rank != 1:
                self._block([out, *ins], f"'{node.name}' concatenates along dim {dim}, not the channel dim")
                return
            offset = 0
            for part in ins:
                self._link(out, part, "to_part", offset=offset, size=part.size)
                offset += part.size
            return
        if (not method and target is torch.flatten) or (method and target in {"flatten", "view", "reshape"}):
            self._flatten(node, source, out)
            return
        if (not method and target in _REDUCTIONS) or (method and target in _REDUCTION_METHODS):
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = dims if isinstance(dims, (list, tuple)) else [dims]
            rank = len(_shape(node.args[0]))
            if source is not None and None not in dims and all(d % rank >= 2 for d in dims) and out.size == source.size:
                self._link(source, out, "identity")
                return
            self._block([out, *ins], f"'{node.name}' reduces over the channel dimension")
            return
        binary = (not method and target in _BINARY_FUNCTIONS) or (method and target in _BINARY_METHODS)
        if binary:
            for part in ins:
                if part is None:
                    continue
                if part.size == out.size:
                    self._link(part, out, "identity")
                elif part.size != 1:
                    self._block([out, part], f"'{node.name}' broadcasts {part.size} channels to {out.size}")
            if node.target in (operator.mul, torch.mul, "mul", "mul_", operator.truediv, torch.div, "div"):
                if sum(part is not None for part in ins) > 1:
                    out.nonlinearity = SMOOTH  # a product of two channel tensors is not linear in either copy
            return
        per_channel = None
        if method:
            if target in _SMOOTH_METHODS:
                per_channel = SMOOTH
            elif target in _PIECEWISE_LINEAR_METHODS:
                per_channel = PIECEWISE_LINEAR
            elif target in _IDENTITY_METHODS:
                per_channel = LINEAR
        else:
            if target in _SMOOTH_FUNCTIONS:
                per_channel = SMOOTH
            elif target in _PIECEWISE_LINEAR_FUNCTIONS:
                per_channel = PIECEWISE_LINEAR
            elif target in _LINEAR_FUNCTIONS:
                per_channel = LINEAR
        if per_channel is not None and source is not None and source.size == out.size and len(ins) == 1:
            self._link(source, out, "identity")
            out.nonlinearity = per_channel
            return
        name = getattr(target, "__name__", str(target))
        self._block([out, *ins], f"operation '{node.name}' ({name}) is not supported")

    # ---------------------------------------------------------------------------------------- sites

    def _single_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def _activation_after(self, node: fx.Node) -> tuple[str | None, fx.Node | None, str]:
        """(batch norm name, activation node, reason if none) following a producer node."""
        batch_norm = None
        current = self._single_user(node)
        if current is None:
            return None, None, "its output has several users before any activation"
        if current.op == "call_module" and isinstance(self.modules[current.target], (nn.BatchNorm1d, nn.BatchNorm2d)):
            batch_norm = current.target
            current = self._single_user(current)
            if current is None:
                return batch_norm, None, "its BatchNorm output has several users before any activation"
        if current.op == "call_module" and isinstance(self.modules[current.target], _ACTIVATION_MODULES):
            return batch_norm, current, ""
        if current.op == "output":
            return batch_norm, None, "its output is the model's output, not an activation's input"
        if current.op == "call_module" and isinstance(self.modules[current.target], nn.Module):
            what = f"module '{current.target}' ({type(self.modules[current.target]).__name__})"
        else:
            what = f"'{current.name}'"
        if current.op in ("call_function", "call_method") and (
            current.target in _SMOOTH_FUNCTIONS | _PIECEWISE_LINEAR_FUNCTIONS
            or current.target in _SMOOTH_METHODS | _PIECEWISE_LINEAR_METHODS
        ):
            return batch_norm, None, f"its activation {what} is a function; use an activation module to hook it"
        return batch_norm, None, f"it is followed by {what}, not by an activation module"

    def _find_sites(self) -> None:
        for node in self.module.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.modules[node.target]
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            name = node.target
            batch_norm, activation_node, reason = self._activation_after(node)
            if activation_node is None:
                self.not_sites[name] = reason
                continue
            activation = activation_of_module(self.modules[activation_node.target])
            if activation.curvature_free:
                if isinstance(self.modules[activation_node.target], nn.ReLU) and self.relu_surrogate is not None:
                    from .activations import relu_with_softplus_surrogate

                    activation = relu_with_softplus_surrogate(self.relu_surrogate)
                else:
                    self.not_sites[name] = (
                        f"its activation {activation.name} has phi'' = 0, so every splitting index is 0; "
                        "pass relu_surrogate=beta to use softplus(beta) curvature explicitly"
                    )
                    continue
            kind, dim = self._kind_and_dim(module)
            site = Site(
                name=name,
                kind=kind,
                batch_norm=batch_norm,
                activation_module=activation_node.target,
                activation=activation,
                num_neurons=module.out_features if isinstance(module, nn.Linear) else module.out_channels,
                neuron_dim=dim,
                space=node.name,
            )
            self._classify(site, activation_node)
            if any(name == prefix or name.startswith(prefix + ".") for prefix in self.exclude):
                site.splittable, site.reason = False, "excluded by the user"
            self.sites[name] = site

    @staticmethod
    def _kind_and_dim(module: nn.Module) -> tuple[str, int]:
        if isinstance(module, nn.Linear):
            return "linear", module.in_features + (module.bias is not None)
        entries = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        dim = entries + (module.bias is not None)
        if module.groups == 1:
            return "conv", dim
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise", dim
        return "grouped", dim

    def _classify(self, site: Site, activation_node: fx.Node) -> None:
        """Decide splittability (nothing blocked in the coupled group) and exactness."""
        closure = self.closure(site.name, 0)
        blocked = [reason for name in closure for reason in self.spaces[name].blocked]
        if blocked:
            site.splittable, site.reason = False, "; ".join(dict.fromkeys(blocked))
        activation_order = self.spaces[activation_node.name].order
        smooth_after = sorted(
            (self.spaces[name] for name in closure if self.spaces[name].order > activation_order),
            key=lambda space: space.order,
        )
        smooth_after = [space for space in smooth_after if space.nonlinearity == SMOOTH]
        if not smooth_after:
            return
        chain = self._depthwise_chain(activation_node)
        if chain is not None and [space.node for space in smooth_after] == [chain[3]]:
            site.depthwise_chain = chain[:3]
            return
        site.exact = False
        names = ", ".join(f"'{space.node}'" for space in smooth_after)
        site.inexact_reason = (
            f"the offspring pass separately through the nonlinearity {names} before their outputs are summed"
        )

    def _depthwise_chain(self, activation_node: fx.Node) -> tuple[str, str | None, str, str] | None:
        """If the activation feeds exactly a depthwise conv -> [BN] -> activation module, return their names
        (and the second activation's node name)."""
        depthwise = self._single_user(activation_node)
        if depthwise is None or depthwise.op != "call_module":
            return None
        module = self.modules[depthwise.target]
        if not (isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1):
            return None
        batch_norm, second, _ = self._activation_after(depthwise)
        if second is None:
            return None
        return depthwise.target, batch_norm, second.target, second.name

    # ---------------------------------------------------------------------------------------- closure

    def closure(self, site: str, channel: int) -> dict[str, list[int]]:
        """Every space that channel ``channel`` of ``site`` reaches, with its positions there."""
        root = self.sites[site].space if site in self.sites else self._module_node[site].name
        found: dict[str, set[int]] = {root: {channel}}
        queue = deque([root])
        while queue:
            name = queue.popleft()
            for edge in self.spaces[name].edges:
                positions = edge.map(found[name])
                if not positions:
                    continue
                known = found.setdefault(edge.other, set())
                if not positions <= known:
                    known |= positions
                    queue.append(edge.other)
        return {name: sorted(positions) for name, positions in found.items()}

    def coupling_key(self, site: str, channel: int) -> tuple[int, int]:
        """An identifier of the coupled channel that ``channel`` of ``site`` belongs to: two (site, channel) pairs
        with the same key are one channel of the network (e.g. a depthwise channel and the pointwise channel
        feeding it) and cannot be split in the same step."""
        closure = self.closure(site, channel)
        return min((self.spaces[name].order, positions[0]) for name, positions in closure.items())

    def coupled_modules(self, site: str) -> dict[str, list[str]]:
        """The modules a split of ``site`` changes, by role: producers, per_channel, consumers."""
        closure = self.closure(site, 0)
        roles: dict[str, list[str]] = {"producers": [], "per_channel": [], "consumers": []}
        for name in closure:
            space = self.spaces[name]
            for role in roles:
                for module in getattr(space, role):
                    if module not in roles[role]:
                        roles[role].append(module)
        roles["producers"] = [m for m in roles["producers"] if m not in roles["per_channel"]]
        return roles

    def splittable_sites(self) -> list[Site]:
        return [site for site in self.sites.values() if site.splittable]

    def describe(self) -> list[dict[str, Any]]:
        """One plain dict per site and per non-site layer, for reports."""
        rows = [
            {
                "site": site.name,
                "kind": site.kind,
                "neurons": site.num_neurons,
                "neuron_dim": site.neuron_dim,
                "activation": site.activation.name,
                "batch_norm": site.batch_norm,
                "exact": site.exact,
                "splittable": site.splittable,
                "note": site.reason or site.inexact_reason or ("depthwise correction" if site.depthwise_chain else ""),
            }
            for site in self.sites.values()
        ]
        rows += [{"site": name, "kind": "not a site", "note": reason} for name, reason in self.not_sites.items()]
        return rows
