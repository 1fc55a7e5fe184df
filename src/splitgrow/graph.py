"""The splittable sites of a PyTorch model: its coupling groups of channels, and how each is split exactly.

The model is traced with ``torch.fx`` and run once on an example input to record every tensor's shape. Every
dimension of every traced tensor (but the batch dimension) is a *space* of positions; operations link spaces by
index maps (identity, a concatenation offset, a flatten block), and each layer says through its handler
(:mod:`splitgrow.layers`) whether it *produces* the channels of its output space and consumes those of its input
space (Linear, Conv), acts per channel (BatchNorm, activations, pooling, depthwise convolutions), or cannot be grown
through (LayerNorm, attention, a model input or output, an unknown operation).

Growing channel j of a producer changes every position its index maps reach: the *closure* of {j}. A closure is a
*coupling group*: the channels that can only be split together, e.g. a pointwise convolution's channel j and the
depthwise filter j that it feeds, or channel j of every layer summed into one residual stream. A *site* is one
kind of coupling group, one per producer's channels; its neurons are the groups, and a neuron's parameters theta
are the rows of every producer in the group (the pointwise filter and the depthwise filter together).

A site's splitting matrix S = sum g * Hessian(sigma) is that of the function sigma from the group's inputs to the
last nonlinearity its channels see separately before their consumers (the *segment*; g is the loss gradient
there), in one of three ways:

* ``ridge``: the segment is producer -> [BatchNorm] -> activation (or several producers, each through its
  BatchNorm, summed into the activation), and S = sum c h h^T in closed form (MATH.md);
* ``chain``: a depthwise-separable chain producer -> [BN] -> activation -> depthwise -> [BN] -> activation, in
  closed form (:mod:`splitgrow.statistics.chain`);
* ``segment``: any other segment of per-channel operations (a gated unit, a custom neuron layer, smooth operations
  after the activation), by automatic differentiation of the segment.

All three are exact: the split's loss change is eps^2/2 v^T S v to second order, up to *kinks*. A kink (ReLU at 0, max
pooling where two inputs tie) adds a second-order term of its own that no splitting matrix sees, as the paper's
does not; a site whose channels pass one records it in ``Site.kinks`` (ReLU's can be smoothed with
``relu_surrogate``). A producer whose channels only gate the group's (a squeeze-and-excitation's second layer)
is no part of the neuron: its rows are copied exactly, both offspring share one gate, and the product is linear
in each, so the segment ends before it (``Site.gates``). A group whose segment is not closed (a residual stream,
whose producers read the stream itself) is *inexact*: its first producer followed by an activation gets the
paper's per-layer S, the other producers are copied exactly, and a split needs ``allow_inexact``. Anything a split
would touch that splitgrow cannot grow makes the group unsplittable, with the reason naming the node; nothing is
ever changed silently.

Why not torch-pruning's ``DependencyGraph``: it couples channels the same way, but it has no expand operations and
(in version 1.6.1) merges the branches of a concatenation followed by pooling and flatten into one group. An
explicit graph with recorded shapes gives exact index maps and errors that name the offending node.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import operator
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from .activations import Activation, with_kink_surrogate
from .checks import is_number
from .errors import SplitgrowError
from .layers import (
    LINEAR,
    PIECEWISE_LINEAR,
    PRODUCE,
    REFUSE,
    SMOOTH,
    ChannelMap,
    LayerHandler,
    NeuronHandler,
    activation_of_call,
    handler_for,
    is_registered_leaf,
    traced_form,
)
from .layers.activations import modifies_input
from .layers.normalization import BatchNormHandler
from .layers.refused import RefusedHandler
from .modes import evaluating


class GraphError(SplitgrowError):
    """The model cannot be traced, or a requested growth touches something splitgrow cannot grow."""


# ------------------------------------------------------------------------------------------ operation tables

_BINARY = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_MULTIPLICATIONS = {operator.mul, operator.imul, torch.mul}
_DIVISIONS = {operator.truediv, operator.itruediv, torch.div}
_PRODUCTS = _MULTIPLICATIONS | _DIVISIONS
_MULTIPLICATION_METHODS, _DIVISION_METHODS = {"mul", "mul_"}, {"div", "div_"}
_PRODUCT_METHODS = _MULTIPLICATION_METHODS | _DIVISION_METHODS
#: elementwise operations other than activations, by how the offspring of a split pass through them
_ELEMENTWISE = {
    operator.neg: LINEAR,
    torch.neg: LINEAR,
    torch.abs: PIECEWISE_LINEAR,
    torch.clamp: PIECEWISE_LINEAR,
    torch.square: SMOOTH,
    torch.sqrt: SMOOTH,
    torch.rsqrt: SMOOTH,
    torch.log: SMOOTH,
    torch.pow: SMOOTH,
    operator.pow: SMOOTH,
    torch.nn.functional.dropout: LINEAR,
    torch.nn.functional.dropout1d: LINEAR,
    torch.nn.functional.dropout2d: LINEAR,
}
_ELEMENTWISE_METHODS = {
    "contiguous": LINEAR,
    "clone": LINEAR,
    "to": LINEAR,
    "float": LINEAR,
    "double": LINEAR,
    "type_as": LINEAR,
    "neg": LINEAR,
    "abs": PIECEWISE_LINEAR,
    "clamp": PIECEWISE_LINEAR,
    "square": SMOOTH,
    "sqrt": SMOOTH,
    "rsqrt": SMOOTH,
    "log": SMOOTH,
    "pow": SMOOTH,
}
#: per-channel pooling and resampling functions (channel dim 1)
_POOLING = {
    torch.nn.functional.avg_pool1d: LINEAR,
    torch.nn.functional.avg_pool2d: LINEAR,
    torch.nn.functional.adaptive_avg_pool1d: LINEAR,
    torch.nn.functional.adaptive_avg_pool2d: LINEAR,
    torch.nn.functional.avg_pool3d: LINEAR,
    torch.nn.functional.adaptive_avg_pool3d: LINEAR,
    torch.nn.functional.interpolate: LINEAR,
    torch.nn.functional.max_pool1d: PIECEWISE_LINEAR,
    torch.nn.functional.max_pool2d: PIECEWISE_LINEAR,
    torch.nn.functional.adaptive_max_pool1d: PIECEWISE_LINEAR,
    torch.nn.functional.adaptive_max_pool2d: PIECEWISE_LINEAR,
    torch.nn.functional.max_pool3d: PIECEWISE_LINEAR,
    torch.nn.functional.adaptive_max_pool3d: PIECEWISE_LINEAR,
}
#: broadcasting a tensor to a larger shape (a class token expanded to the batch)
_BROADCASTS = {torch.broadcast_to}
_BROADCAST_METHODS = {"expand", "expand_as", "broadcast_to"}
_PADDINGS = {torch.nn.functional.pad}
_CONCATENATIONS = {torch.cat, torch.concat}
#: reductions over positions that are smooth in each value, by the position of their keepdim argument
_SMOOTH_REDUCTIONS = {torch.std: 3, torch.var: 3, torch.logsumexp: 2}
_SMOOTH_REDUCTION_METHODS = {"std": 3, "var": 3, "logsumexp": 2}
_SOFTMAXES = {torch.softmax, torch.log_softmax, torch.nn.functional.softmax, torch.nn.functional.log_softmax}
_CHUNKS = {torch.chunk}
_FLATTEN = {torch.flatten}
_RESHAPES = {torch.reshape, torch.unflatten}
_PERMUTATIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.movedim}
_PERMUTATION_METHODS = {"permute", "transpose", "swapaxes", "movedim"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCTION_METHODS = {"mean", "sum", "amax", "amin"}
_IGNORED_METHODS = {"size", "dim", "numel"}
_SQUEEZES = {torch.squeeze: "squeeze", torch.unsqueeze: "unsqueeze"}
_SQUEEZE_METHODS = {"squeeze", "unsqueeze"}
#: layers that normalise across channels: they have weights, but are no layer with neurons of their own
_NORMALISATIONS = tuple(
    kind for kind in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None)) if kind
)
#: why the channels of a residual stream do not grow
_OPEN_STREAM = (
    "its channels pass a residual sum before any activation, so they are no neuron's output (split the layers "
    "inside the blocks)"
)
#: normalisations over a tensor's last dimensions (``normalized_shape``)
_TRAILING_NORMS = tuple(kind for kind in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if kind)
#: functions that make a parameter a layer's weights (a functional layer, which has no module to resize)
_WEIGHT_FUNCTIONS = {
    torch.nn.functional.linear,
    torch.nn.functional.bilinear,
    torch.nn.functional.conv1d,
    torch.nn.functional.conv2d,
    torch.nn.functional.conv3d,
    torch.nn.functional.conv_transpose1d,
    torch.nn.functional.conv_transpose2d,
    torch.nn.functional.conv_transpose3d,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.einsum,
    operator.matmul,
}
_WEIGHT_METHODS = {"matmul", "mm", "bmm", "addmm"}
_WEIGHT_VIEW_METHODS = {"t", "transpose", "permute", "view", "reshape", "contiguous", "to", "flatten"}


# ------------------------------------------------------------------------------------------ data structures

SpaceKey = tuple[str, int]  # (node name, dimension)


@dataclass
class Edge:
    """An index map from the positions of one space to those of another.

    ``identity``; ``to_part`` (this space is a concatenation, ``other`` its part starting at ``offset`` with
    ``size`` positions) and ``from_part`` (the reverse); ``to_features`` (this space's channel c is the flattened
    positions o * (size * inner) + c * inner + r of ``other``, o < outer, r < inner) and ``to_channels`` (the reverse).
    """

    kind: str
    other: SpaceKey
    offset: int = 0
    size: int = 0
    outer: int = 1
    inner: int = 1

    def map(self, positions: Iterable[int]) -> set[int]:
        if self.kind == "identity":
            return set(positions)
        if self.kind == "to_part":
            return {p - self.offset for p in positions if self.offset <= p < self.offset + self.size}
        if self.kind == "from_part":
            return {p + self.offset for p in positions}
        if self.kind == "to_features":
            stride = self.size * self.inner
            return {
                o * stride + c * self.inner + r for c in positions for o in range(self.outer) for r in range(self.inner)
            }
        if self.kind == "to_channels":
            return {(p // self.inner) % self.size for p in positions}
        raise AssertionError(self.kind)


_INVERSE = {
    "identity": "identity",
    "to_part": "from_part",
    "from_part": "to_part",
    "to_features": "to_channels",
    "to_channels": "to_features",
}


@dataclass
class Space:
    """One dimension of one traced tensor, and what happens to its positions."""

    key: SpaceKey
    size: int
    order: int
    #: modules whose output channels these are (their rows are neurons of the group)
    producers: list[str] = field(default_factory=list)
    #: modules with a tensor indexed by these channels, copied exactly at a split (BatchNorm)
    per_channel: list[str] = field(default_factory=list)
    #: modules that read these positions as input features (their columns are duplicated and halved)
    consumers: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    #: how the operation that made this space from its input spaces treats each channel
    nonlinearity: str = LINEAR
    #: equal parts (from ``chunk``) that must all grow by the same number of positions
    parts: list[tuple[int, int]] | None = None


@dataclass(frozen=True)
class Member:
    """The rows of one module that belong to a site's neurons: neuron j is row ``offset + j``."""

    module: str
    handler: NeuronHandler
    offset: int
    neuron_dim: int
    kind: str


@dataclass(frozen=True)
class Chain:
    """The nodes of a depthwise-separable chain P -> [BN1] -> phi1 -> D -> [BN2] -> phi2 (see
    :mod:`splitgrow.statistics.chain`)."""

    first_activation_node: str
    depthwise_node: str
    second_batch_norm: str | None
    second_activation_node: str
    first_activation: Activation
    second_activation: Activation


@dataclass
class Site:
    """A kind of coupling group whose channels are splittable neurons.

    Attributes:
        name: the group's first producer module (in the order of the forward pass).
        members: the modules whose rows make a neuron's theta, in order (theta is their rows concatenated).
        num_neurons: n, the number of groups (channels).
        neuron_dim: d, parameters per neuron (the members' row sizes added).
        kind: what the members are, e.g. ``"conv2d"``, ``"linear"``, ``"conv2d+depthwise"``.
        engine: ``"ridge"`` (closed form), ``"chain"`` (closed form of a depthwise-separable chain),
            ``"segment"`` (automatic differentiation of the segment) or ``"loss"`` (the Hessian of the whole loss
            in the split, for layers whose handler asks for it).
        activation: the activation of a ridge site (with its surrogate, if any); the first one of a segment.
        batch_norm: the BatchNorm between a ridge site's (first) producer and its activation, if any.
        branches: of a ridge site, (producer node, BatchNorm or None) for each member, in order: the members'
            outputs, each through its BatchNorm, are summed into the activation's input.
        exact: whether eps^2/2 v^T S v is the second-order loss change of a split (up to kinks); ``inexact_reason``
            says why not.
        kinks: the kinks the group's channels pass (max pooling, ReLU, a Softplus with a low threshold), whose
            own second-order effect the prediction leaves out; '' when there are none.
        splittable: False when a split would touch something splitgrow cannot grow; ``reason`` says why.
        space: the space of the first member's output channels.
        segment: the traced nodes of the segment, in order; ``frontier``: those whose outputs leave it.
        fed_back: the frontier nodes that also feed the rest of the segment, curved in theta: their loss gradient
            is read through their users outside the segment alone (:meth:`gradient_key`), since the path inside is
            part of the neuron's function.
        producer_node, activation_node: of a ridge or chain site (the first activation for a chain).
        chain: the rest of a chain site's nodes.
        gates: the producers whose channels only gate the group's (squeeze-and-excitation): their rows are copied
            exactly, so the offspring share one gate and the product is linear in each offspring.
    """

    name: str
    members: list[Member]
    num_neurons: int
    neuron_dim: int
    kind: str
    engine: str
    activation: Activation | None
    space: SpaceKey
    batch_norm: str | None = None
    exact: bool = True
    inexact_reason: str = ""
    kinks: str = ""
    splittable: bool = True
    reason: str = ""
    segment: list[str] = field(default_factory=list)
    frontier: list[str] = field(default_factory=list)
    producer_node: str = ""
    activation_node: str = ""
    branches: list[tuple[str, str | None]] = field(default_factory=list)
    chain: Chain | None = None
    gates: list[str] = field(default_factory=list)
    fed_back: list[str] = field(default_factory=list)

    @property
    def surrogate(self) -> str | None:
        return None if self.activation is None else self.activation.surrogate

    def gradient_key(self, node: str) -> str:
        """The key of the loss gradient the statistics read at frontier ``node``: the node's own (through all its
        users), or for a fed-back node this site's (through its users outside the segment only)."""
        return f"{node}@{self.name}" if node in self.fed_back else node

    def member_slices(self) -> list[tuple[Member, slice]]:
        """Each member with the slice of theta (and of a direction) that is its row."""
        slices, start = [], 0
        for member in self.members:
            slices.append((member, slice(start, start + member.neuron_dim)))
            start += member.neuron_dim
        return slices


@dataclass(frozen=True)
class TensorShape:
    """The shape of a traced node's tensor output, recorded in ``node.meta["tensor_meta"]``."""

    shape: tuple[int, ...]


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced model once and records the shape of every node that outputs one tensor (nodes with several
    outputs get none), as torch.fx's ShapeProp does, but with an error that names the failing node."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.extra_traceback = False  # the error names the node already; fx would append its graph listing

    def run_node(self, node: fx.Node) -> Any:
        try:
            result = super().run_node(node)
        except Exception as error:  # noqa: BLE001 - whatever the model raises becomes one clear message
            where = f"module '{node.target}'" if node.op == "call_module" else f"operation '{node.name}'"
            raise GraphError(
                f"the example input does not run through the model: {where} raised {type(error).__name__}: "
                f"{error}; pass an input batch (a tuple for several inputs) that the model accepts"
            ) from None
        if isinstance(result, torch.Tensor):
            node.meta["tensor_meta"] = TensorShape(tuple(result.shape))
        return result


def _inside(node: fx.Node) -> str:
    """Where a traced operation sits, for a message: " in module 'name' (Type)" for one inside a module of the user's
    that fx traced through (its name alone would not say where to look), else ""."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    return f" in module '{path}' ({getattr(kind, '__name__', kind)})"


def _trailing(source: fx.Node, count: int) -> set[int]:
    """The last ``count`` dimensions of ``source`` (what a LayerNorm of ``normalized_shape`` of that length covers)."""
    rank = len(_shape(source))
    return set(range(rank - count, rank))


def _function_name(node: fx.Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def _is_extreme_along(node: Any) -> bool:
    """Whether ``node`` is ``torch.max(x, dim)`` or ``torch.min(x, dim)`` (or the methods): the values and their
    indices along one dimension."""
    if not isinstance(node, fx.Node) or _argument(node, 1, "dim") is None:
        return False
    if node.op == "call_method":
        return node.target in ("max", "min")
    return node.op == "call_function" and node.target in (torch.max, torch.min)


def _attribute(module: nn.Module, target: str) -> Any:
    """The object a ``get_attr`` node reads (``target`` is a dotted path), or None."""
    found: Any = module
    for part in target.split("."):
        found = getattr(found, part, None)
    return found


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return None if meta is None else meta.shape


def _is_shape_query(node: fx.Node) -> bool:
    """Whether ``node`` reads only a tensor's metadata (``x.shape``, ``x.dtype``, ``x.size()``, ``x.dim()``), not its
    values (``x.T`` is an attribute too, but a tensor)."""
    return (node.target is getattr and _shape(node) is None) or (
        node.op == "call_method" and node.target in _IGNORED_METHODS
    )


def inputs_like(model: nn.Module, inputs: tuple) -> tuple:
    """``inputs`` on the device of ``model``'s parameters, floating ones in their dtype (an example recorded before
    the model was moved or cast)."""
    parameter = next(model.parameters(), None)

    def move(tensor: Any) -> Any:
        if parameter is None or not isinstance(tensor, torch.Tensor):
            return tensor
        if tensor.is_floating_point():
            return tensor.to(parameter.device, parameter.dtype)
        return tensor.to(parameter.device)

    return tuple(move(t) for t in inputs)


def _value_users(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its values, not only its shape (the sizes a ``view`` is given)."""
    return [user for user in node.users if not _is_shape_query(user)]


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


def _argument(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _stateful(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def _recomputed_tensors(module: nn.Module, handler: LayerHandler) -> list[str]:
    """The tensors a split would grow that are neither parameters nor buffers of ``module`` but attributes a forward
    pre-hook sets at every call (the old-style ``weight_norm``, ``spectral_norm``, ``prune``): a split could not
    grow them, since the hook would put back the old shape."""
    if not module._forward_pre_hooks:
        return []
    names = [name for name, _ in (*handler.output_tensors(module), *handler.input_tensors(module))]
    return [name for name in dict.fromkeys(names) if name not in module._parameters and name not in module._buffers]


def _tied_modules(model: nn.Module) -> dict[str, str]:
    """The modules that share a parameter or buffer with another module (tied weights), each with the refusal: a
    split would resize the shared tensor for both modules at once."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for module_name, module in model.named_modules():
        for attribute, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            owners.setdefault(id(tensor), []).append((module_name, attribute))
    tied: dict[str, str] = {}
    for holders in owners.values():
        for module_name, attribute in holders:
            others = [f"'{other}.{name}'" for other, name in holders if other != module_name]
            if others and module_name not in tied:
                tied[module_name] = (
                    f"module '{module_name}' shares its tensor '{attribute}' with {', '.join(others)} (tied "
                    "weights): a split would resize it for both; untie them to grow them"
                )
    return tied


def _read_outside_their_call(traced: fx.GraphModule) -> dict[str, str]:
    """The modules whose own parameters or buffers the forward also reads directly (``F.conv2d(x,
    self.conv.weight)`` beside ``self.conv(y)``), each with the refusal: a split would resize the tensor under
    that other use, which splitgrow does not see."""
    found: dict[str, str] = {}
    for node in traced.graph.nodes:
        if node.op != "get_attr":
            continue
        owner, _, attribute = node.target.rpartition(".")
        if not owner or owner in found:  # the model's own tensors (a class token) belong to no layer
            continue
        readers = [user for user in node.users if not _is_shape_query(user)]
        if not readers:  # its dtype or shape read (x.to(self.fc.weight.dtype)): no use a split changes
            continue
        readers = ", ".join(f"'{user.name}'" for user in readers)
        found[owner] = (
            f"module '{owner}': its tensor '{attribute}' is also read outside its call (by {readers}): a split "
            "would resize it under that use too; call the module there instead, or exclude it"
        )
    return found


def model_fingerprint(model: nn.Module) -> tuple:
    """The names and shapes of every parameter and buffer: changes whenever a split (or anything else) resizes
    the model."""
    return tuple((name, tuple(t.shape)) for name, t in [*model.named_parameters(), *model.named_buffers()])


_PARALLEL_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping user-registered layer types as single calls."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if traced_form(module) is not None:
            return False
        return is_registered_leaf(module) or super().is_leaf_module(module, qualified_name)

    def call_module(self, module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        form = traced_form(module)
        if form is not None:  # torch's transformer modules: their training arithmetic, not their fast-path tests
            forward = functools.partial(form, module)
        return super().call_module(module, forward, args, kwargs)


def _tensor_default(model: nn.Module) -> str | None:
    """The first argument of the model's forward whose default is a tensor, or None."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return next((p.name for p in parameters if isinstance(p.default, torch.Tensor)), None)


def _defaults_left_out(model: nn.Module, given: int | None) -> dict[str, Any]:
    """The forward's arguments after the ``given`` positional inputs that have defaults, with those defaults: the
    example leaves them out, so the traced graph is the forward run with them (``forward(x, labels=None)`` with a
    branch on ``labels is not None``, which fx cannot follow on a symbolic input)."""
    if given is None:
        return {}
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature Python can read
        return {}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    left_out = positional[given:] + [p for p in parameters if p.kind == p.KEYWORD_ONLY]
    # plain constants only: fx writes a tuple or a tensor default into generated code it cannot compile
    constants = (type(None), bool, int, float, str)
    return {p.name: p.default for p in left_out if p.default is not p.empty and type(p.default) in constants}


def trace(model: nn.Module, given: int | None = None) -> fx.GraphModule:
    """The model as a ``torch.fx.GraphModule`` sharing its submodules (GraphError if it cannot be traced);
    ``given``: the number of positional inputs the model will be called with (the forward's later arguments keep
    their defaults in the graph)."""
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise GraphError(
            f"{type(model).__name__} is the model compiled with torch.compile; give the graph the module it compiled "
            "(model._orig_mod; SplittableNetwork and Grower take the compiled model and do this themselves): the "
            "compiled model recompiles for the grown shapes"
        )
    if traced_form(model) is not None:  # fx traces a root's own forward, with the fast-path tests it cannot follow
        raise GraphError(
            f"{type(model).__name__} is the whole model: splitgrow follows torch's transformer modules inside a model "
            "(its forward's inputs and outputs are the model's), so wrap it in a module of your own, with the layers "
            "that feed it and read it"
        )
    if isinstance(model, _PARALLEL_WRAPPERS):
        raise GraphError(
            f"{type(model).__name__} is the model wrapped for data parallelism; give splitgrow the model itself "
            "(model.module) and wrap it again after each split"
        )
    tensor_default = _tensor_default(model)
    if tensor_default is not None:
        raise GraphError(
            f"{type(model).__name__}.forward's argument '{tensor_default}' has a tensor as its default, which torch.fx "
            "cannot trace",
            fix=f"default it to None and make the tensor inside forward when '{tensor_default}' is None",
        )
    tracer = _Tracer()
    try:
        graph = tracer.trace(model, concrete_args=_defaults_left_out(model, given) or None)
        return fx.GraphModule(tracer.root, graph)  # fx compiles its code here, which can fail too
    except Exception as error:  # noqa: BLE001 - any tracing failure becomes one clear message
        raise GraphError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); "
            "splitgrow needs a forward pass without Python control flow on tensor values"
        ) from None


def _stateful_calls(module: fx.GraphModule) -> set[str]:
    return {
        node.target
        for node in module.graph.nodes
        if node.op == "call_module" and _stateful(module.get_submodule(node.target))
    }


def _trace_for_statistics(model: nn.Module, given: int) -> fx.GraphModule:
    """The model traced in eval mode, as the statistics run it: a forward that branches on ``self.training``
    (functional dropout, stochastic depth) would otherwise keep its random training form in the traced graph. A
    model in training mode whose training forward calls layers with parameters that its eval forward does not
    (auxiliary heads) is traced as it is: those layers read channels that a split must grow too."""
    with evaluating(model):
        evaluated = trace(model, given)
    if not any(module.training for module in model.modules()):
        return evaluated
    as_is = trace(model, given)
    return as_is if _stateful_calls(as_is) - _stateful_calls(evaluated) else evaluated


def is_within(name: str, module: str) -> bool:
    """Whether the qualified module ``name`` is ``module`` or inside it."""
    return name == module or name.startswith(module + ".")


def check_excluded(model: nn.Module, exclude: Sequence[str]) -> tuple[str, ...]:
    """``exclude`` as a tuple, refused (GraphError) if an entry names no module of ``model``: a typo would
    otherwise let the layer it meant grow, silently."""
    if isinstance(exclude, str):
        raise GraphError(f"exclude must be a list of module names, got the string {exclude!r}: write [{exclude!r}]")
    exclude = tuple(exclude)  # once: a generator would be used up by the check
    wrong = [entry for entry in exclude if not isinstance(entry, str)]
    if wrong:
        raise GraphError(f"exclude must list module names (strings), got {wrong[0]!r}")
    names = [name for name, _ in model.named_modules() if name]
    unknown = [p for p in exclude if not any(is_within(n, p) for n in names)]
    if unknown:
        close = [match for p in unknown for match in difflib.get_close_matches(str(p), names, n=3)]
        hint = f" (did you mean {', '.join(repr(n) for n in close)}?)" if close else ""
        raise GraphError(
            f"exclude names {', '.join(repr(p) for p in unknown)}, which is no module of {type(model).__name__}"
            f"{hint}: give qualified module names (or prefixes), as model.named_modules() lists them"
        )
    return exclude


# ------------------------------------------------------------------------------------------ the graph


class ChannelGraph:
    """Sites and channel coupling of a model, traced on an example input.

    Args:
        model: the network; traced with ``torch.fx`` (its forward must not branch on tensor values).
        example_inputs: a tensor (or tuple of tensors, the forward's positional arguments) accepted by ``model``;
            only shapes matter. The model runs once on the whole example to record them, so a small batch is
            best; inputs without a batch dimension (an attention mask of shape (T, T)) are passed as they are.
        exclude: qualified module names (or name prefixes) whose channels must not be split.
        relu_surrogate: if given, piecewise-linear activations (ReLU, LeakyReLU, ReLU6, Hardtanh) get the smooth
            surrogate curvature of softplus(beta=relu_surrogate) at their kinks, an explicit approximation that
            every report names (:func:`splitgrow.activations.with_kink_surrogate`).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        *,
        exclude: Sequence[str] = (),
        relu_surrogate: float | None = None,
    ) -> None:
        if relu_surrogate is not None and not (is_number(relu_surrogate) and relu_surrogate > 0):
            raise GraphError(f"relu_surrogate (the surrogate's beta) must be > 0, got {relu_surrogate!r}")
        self.model = model
        self.exclude = check_excluded(model, exclude)
        self.relu_surrogate = relu_surrogate
        # the shapes are recorded on the example as given: which dimension of a second input is the batch's (if
        # any) is the model's business, and cutting an input that has none (a (T, T) mask) would break it
        inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        #: the example the shapes were recorded with
        self.example_inputs = inputs
        self.module = _trace_for_statistics(model, len(inputs))
        with evaluating(model), torch.no_grad():
            _ShapeRecorder(self.module).run(*inputs)
        self.fingerprint = model_fingerprint(model)
        self.modules = dict(model.named_modules())
        self.nodes = {node.name: node for node in self.module.graph.nodes}
        self.order = {node.name: index for index, node in enumerate(self.module.graph.nodes)}
        self.spaces: dict[SpaceKey, Space] = {}
        self.sites: dict[str, Site] = {}
        self.not_sites: dict[str, str] = {}
        #: whether some operation overwrites its input (the statistics then copy what they record)
        self.has_in_place = False
        self._maps: dict[str, ChannelMap] = {}
        self._pending_flattens: list[tuple[fx.Node, fx.Node, int, int]] = []
        self._pending_unflattens: list[tuple[fx.Node, fx.Node, int, int, int | None]] = []
        self._refusals: dict[str, str] = {}
        #: layers with weights that no handler grows (attention, embeddings, recurrent layers, unknown modules)
        self._unsupported: dict[str, str] = {}
        self._calls: dict[str, int] = {}
        self._tied = _tied_modules(model)
        self._tied.update({k: v for k, v in _read_outside_their_call(self.module).items() if k not in self._tied})
        self._closures: dict[tuple[SpaceKey, int], dict[SpaceKey, list[int]]] = {}
        self._build_spaces()
        self._find_sites()

    def for_copy(self, model: nn.Module) -> ChannelGraph:
        """The graph of a copy of the model (a twin the statistics work on), with the same options; the example
        inputs follow the copy's floating dtype."""
        parameter = next(model.parameters(), None)
        inputs = self.example_inputs
        if parameter is not None:
            inputs = tuple(
                t.to(parameter.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
            )
        return ChannelGraph(model, inputs, exclude=self.exclude, relu_surrogate=self.relu_surrogate)

    # ---------------------------------------------------------------------------------------- checks

    def check_current(self) -> None:
        """Raise GraphError if the model's parameters changed shape since it was traced (the graph is stale)."""
        now = model_fingerprint(self.model)
        if now != self.fingerprint:
            changed = next(
                (f"{a[0]} {a[1]} -> {b[1]}" for a, b in zip(self.fingerprint, now) if a != b),
                "parameters were added or removed",
            )
            raise GraphError(
                f"the model changed since this graph was traced ({changed}); trace it again "
                "(SplittableNetwork does this after each split)"
            )

    # ---------------------------------------------------------------------------------------- spaces

    def space(self, node: str, dim: int) -> Space | None:
        return self.spaces.get((node, dim))

    def _spaces_of(self, node: fx.Node) -> list[Space]:
        shape = _shape(node)
        return [] if shape is None else [self.spaces[(node.name, d)] for d in range(1, len(shape))]

    def _link(self, a: Space | None, b: Space | None, kind: str = "identity", **kwargs: int) -> None:
        if a is None or b is None:
            return
        a.edges.append(Edge(kind, b.key, **kwargs))
        b.edges.append(Edge(_INVERSE[kind], a.key, **kwargs))

    def _block(self, spaces: Iterable[Space | None], reason: str) -> None:
        for space in spaces:
            if space is not None and reason not in space.blocked:
                space.blocked.append(reason)

    def _block_node(self, node: fx.Node, reason: str, *, inputs: bool = True) -> None:
        self._block(self._spaces_of(node), reason)
        if inputs:
            for arg in _tensor_args(node):
                self._block(self._spaces_of(arg), reason)

    def _link_aligned(self, source: fx.Node, out: fx.Node, nonlinearity: str | None = None) -> list[Space]:
        """Link the dims of ``source`` to those of ``out`` aligned from the right (broadcasting); returns the
        output spaces that got a link."""
        source_shape, out_shape = _shape(source), _shape(out)
        linked = []
        shift = len(out_shape) - len(source_shape)
        if shift > 0:
            # a tensor without the batch dimension (a parameter, a constant): its first dimension is indexed by
            # positions of the output that splitgrow cannot add to it
            self._block(
                [self.space(out.name, shift)],
                f"'{source.name}' (no batch dimension) is broadcast along dimension {shift} of '{out.name}'",
            )
        for dim in range(1, len(source_shape)):
            target = self.space(out.name, dim + shift)
            if target is None:
                continue
            if source_shape[dim] != out_shape[dim + shift]:  # broadcast: one position against many
                self._block(
                    [self.space(source.name, dim)], f"'{out.name}' broadcasts dimension {dim} of '{source.name}'"
                )
                continue
            self._link(self.space(source.name, dim), target)
            if nonlinearity is not None:
                target.nonlinearity = nonlinearity
            linked.append(target)
        return linked

    def _build_spaces(self) -> None:
        for node in self.module.graph.nodes:
            shape = _shape(node)
            if shape is not None:
                for dim in range(1, len(shape)):
                    self.spaces[(node.name, dim)] = Space((node.name, dim), shape[dim], self.order[node.name])
            if node.op == "call_module":
                self._calls[node.target] = self._calls.get(node.target, 0) + 1
        for node in self.module.graph.nodes:
            if node.op == "placeholder":
                self._block_node(node, f"'{node.name}' is a model input")
            elif node.op == "output":
                for arg in _tensor_args(node):
                    self._block(self._spaces_of(arg), f"'{self._label(arg.name)}' reaches the model output")
            elif node.op == "get_attr":
                self._block_node(node, f"'{node.target}' is a tensor attribute of the model")
            elif node.op == "call_module":
                self._module_edges(node)
            elif node.op in ("call_function", "call_method"):
                self._function_edges(node)
        self._add_reshapes()

    def _module_edges(self, node: fx.Node) -> None:
        name = node.target
        module = self.modules[name]
        if modifies_input("call_module", None, {}, module):
            self.has_in_place = True
        if _shape(node) is None:
            reason = self._refusal_of(node) or f"module '{name}' ({type(module).__name__}) returns several tensors"
            self._block_node(node, reason)
            self._unsupported.setdefault(name, reason.removeprefix(f"'{name}': "))
            return
        if isinstance(module, nn.Flatten):
            self._flatten(node, node.args[0], module.start_dim, module.end_dim)
            return
        if isinstance(module, nn.Unflatten):
            self._reshape(node, node.args[0])
            return
        if isinstance(module, nn.GLU):
            self._glu(node, node.args[0], module.dim)
            return
        if isinstance(module, _TRAILING_NORMS) and not self._calls[name] > 1 and name not in self._tied:
            refusal = handler_for(module).channel_map(module, (), ()).reason
            source = node.args[0]
            self._normalise_over(node, source, _trailing(source, len(module.normalized_shape)), f"'{name}': {refusal}")
            return
        handler = handler_for(module)
        if handler is None:
            reason = (
                f"module '{name}' ({type(module).__name__}) is not supported: exclude what feeds it, or register a "
                "handler for it (splitgrow.layers.register_layer)"
            )
            self._block_node(node, reason)
            self._unsupported.setdefault(name, reason)
            return
        refusal = None
        if self._calls[name] > 1 and _stateful(module):
            refusal = f"module '{name}' is called {self._calls[name]} times (its weights are shared)"
        elif name in self._tied:
            refusal = self._tied[name]
        elif parametrize.is_parametrized(module):
            refusal = (
                f"module '{name}' has parametrizations (weight_norm, spectral_norm, ...): remove them "
                "(torch.nn.utils.parametrize.remove_parametrizations) to grow through it"
            )
        elif recomputed := _recomputed_tensors(module, handler):
            refusal = (
                f"module '{name}': its {', '.join(recomputed)} is recomputed at every call by a forward pre-hook "
                "(torch.nn.utils.weight_norm, spectral_norm or prune): remove it (remove_weight_norm, "
                "remove_spectral_norm, prune.remove) to grow through it"
            )
        if refusal is not None:
            self._block_node(node, refusal)
            self._refusals[name] = refusal
            return
        sources = _tensor_args(node)
        if not sources:
            self._block_node(node, f"module '{name}' reads no tensor")
            return
        source = sources[0]
        mapping = handler.channel_map(module, _shape(source), _shape(node))
        self._maps[node.name] = mapping
        if mapping.kind == REFUSE:
            self._block_node(node, f"'{name}': {mapping.reason}")
            if not isinstance(module, _NORMALISATIONS):  # a layer with weights of its own, never a neuron
                self._unsupported.setdefault(name, mapping.reason)
            return
        if mapping.kind == PRODUCE:
            consumed = self.space(source.name, mapping.input_dim)
            produced = self.space(node.name, mapping.output_dim)
            if consumed is not None and mapping.input_growable:
                consumed.consumers.append(name)
            elif consumed is not None:
                self._block([consumed], f"'{name}' ({type(module).__name__}) cannot take a duplicated input channel")
            if produced is not None:
                produced.producers.append(name)
            followed = {mapping.input_dim % len(_shape(source))}
            if isinstance(handler, NeuronHandler) and handler.output_channel_dim == -1:
                # a Linear keeps the token dimensions: they are positions, not channels
                for dim in range(1, len(_shape(node)) - 1):
                    self._link(self.space(source.name, dim), self.space(node.name, dim))
                    followed.add(dim)
            self._block_mixed(node, source, followed)
            return
        if mapping.input_dim is None:  # elementwise: every dimension passes through
            self._link_aligned(source, node, mapping.nonlinearity)
        else:
            out = self.space(node.name, mapping.output_dim)
            self._link(self.space(source.name, mapping.input_dim), out)
            if out is not None:
                out.nonlinearity = mapping.nonlinearity
            self._block_mixed(node, source, {mapping.input_dim % len(_shape(source))})
        out = self.space(node.name, mapping.output_dim) if mapping.output_dim is not None else None
        if out is not None:
            if mapping.neurons:
                out.producers.append(name)
            elif handler.follows_channels(module):
                out.per_channel.append(name)

    def _refusal_of(self, node: fx.Node) -> str | None:
        """The reason of a refused layer (attention, a recurrent layer) called by ``node``, or None: such a layer
        returns a tuple, and its own reason says more than that."""
        if node.op != "call_module":
            return None
        module = self.modules[node.target]
        handler = handler_for(module)
        if not isinstance(handler, RefusedHandler):
            return None
        return f"'{node.target}': {handler.channel_map(module, (), ()).reason}"

    def _block_mixed(self, node: fx.Node, source: fx.Node, followed: set[int]) -> None:
        """Block the dimensions of ``source`` that ``node`` does not follow position by position (a convolution's or
        a pooling's spatial ones): channels that reach them would not survive a split (their count would change
        the output's length instead)."""
        label = f"module '{node.target}'" if node.op == "call_module" else f"'{node.name}'"
        for dim in range(1, len(_shape(source))):
            if dim not in followed:
                self._block(
                    [self.space(source.name, dim)], f"{label} mixes the positions of dimension {dim} of its input"
                )

    def _flatten(self, node: fx.Node, source: Any, start: int, end: int) -> None:
        """Record a flatten; its edges are added once every other edge is known (see :meth:`_add_flattens`)."""
        if not isinstance(source, fx.Node) or _shape(source) is None or _shape(node) is None:
            self._block_node(node, f"'{node.name}' flattens a tensor splitgrow does not follow")
            return
        rank = len(_shape(source))
        start, end = start % rank, end % rank
        if start == 0:
            self._block_node(node, f"'{node.name}' flattens the batch dimension")
            return
        self._pending_flattens.append((node, source, start, end))

    def _channel_dims(self) -> set[SpaceKey]:
        """The spaces connected (through the edges known so far) to a producer or a consumer: the dimensions that
        hold channels. Spatial and token dimensions are not among them."""
        component: dict[SpaceKey, int] = {}
        capable: set[int] = set()
        for key in self.spaces:
            if key in component:
                continue
            members, queue = [key], deque([key])
            component[key] = len(capable) + len(component)
            label = component[key]
            while queue:
                current = self.spaces[queue.popleft()]
                if current.producers or current.consumers:
                    capable.add(label)
                for edge in current.edges:
                    if edge.other not in component:
                        component[edge.other] = label
                        members.append(edge.other)
                        queue.append(edge.other)
        return {key for key, label in component.items() if label in capable}

    def _add_reshapes(self) -> None:
        """The links of flattens and unflattens, added once every other edge is known: first the dimensions an
        unflatten keeps (identity links, right whatever the split dimension holds), so that the flattens and the
        unflattens after them see which dimensions hold channels; then the flattens; then each unflatten's split,
        refused where it splits channels."""
        for node, source, split, added, _ in self._pending_unflattens:
            for dim in range(1, len(_shape(source))):
                if dim != split:
                    self._link(self.space(source.name, dim), self.space(node.name, dim if dim < split else dim + added))
        self._add_flattens()
        self._add_unflattens()

    def _add_flattens(self) -> None:
        """Link each flattened dimension that holds channels to the merged dimension: channel c becomes the
        positions o * (size * inner) + c * inner + r. Dimensions that hold no channels (spatial ones) are not
        linked: their positions are not what grows, and linking them would couple every channel to every other."""
        channel_dims = self._channel_dims()
        for node, source, start, end in self._pending_flattens:
            shape = _shape(source)
            rank = len(shape)
            merged = [dim for dim in range(start, end + 1) if (source.name, dim) in channel_dims]
            if len(merged) > 1:
                self._block_node(node, f"'{node.name}' flattens two channel dimensions ({merged}) together")
                continue
            for dim in range(1, rank):
                source_space = self.space(source.name, dim)
                if dim < start:
                    self._link(source_space, self.space(node.name, dim))
                elif dim > end:
                    self._link(source_space, self.space(node.name, dim - (end - start)))
                elif dim in merged:
                    outer = 1
                    for size in shape[start:dim]:
                        outer *= size
                    inner = 1
                    for size in shape[dim + 1 : end + 1]:
                        inner *= size
                    self._link(
                        source_space,
                        self.space(node.name, start),
                        "to_features",
                        size=shape[dim],
                        outer=outer,
                        inner=inner,
                    )

    def _add_unflattens(self) -> None:
        """The dimension an unflatten splits: one that keeps its size beside dimensions of size 1 (``view(N, C, 1,
        1)``, a squeeze-and-excitation gate) is linked to that part; one truly split must hold no channels (tokens
        put back onto an image grid): its parts are positions, linked to nothing, as a flatten's spatial dimensions
        are. Decided after every other link, so that channels flattened away and back, or split twice, are seen."""
        channel_dims = self._channel_dims()
        for node, source, split, _, kept in self._pending_unflattens:
            if kept is not None:
                self._link(self.space(source.name, split), self.space(node.name, kept))
            elif (source.name, split) in channel_dims:
                self._block_node(
                    node,
                    f"'{node.name}'{_inside(node)} reshapes {_shape(source)} to {_shape(node)}, splitting channels",
                )

    def _function_edges(self, node: fx.Node) -> None:
        target, op = node.target, node.op
        method = op == "call_method"
        if modifies_input(op, target, node.kwargs):
            self.has_in_place = True
        sources = _tensor_args(node)
        out_shape = _shape(node)
        if target is operator.getitem:
            self._getitem(node)
            return
        if target is getattr and node.args[1:] == ("values",) and _is_extreme_along(node.args[0]):
            self._extreme_values(node, node.args[0])
            return
        if out_shape is None:
            if _is_shape_query(node):
                return
            if (method and target == "chunk") or target in _CHUNKS:
                return  # handled by the getitem nodes that pick the parts
            if _is_extreme_along(node):
                return  # handled by the getitem (or .values) nodes that pick the values
            self._block_node(node, f"'{node.name}' turns the channels into something splitgrow does not follow")
            return
        if not sources:
            return
        source = sources[0]
        name = _function_name(node)
        activation = activation_of_call(op, target, tuple(node.args), dict(node.kwargs))
        if activation is not None:
            kind = (
                LINEAR if activation.name == "identity" else PIECEWISE_LINEAR if activation.curvature_free else SMOOTH
            )
            self._link_aligned(source, node, kind)
            return
        if (method and target in _BINARY_METHODS) or (not method and target in _BINARY):
            counts: dict[int, int] = {}
            for part in sources:
                for space in self._link_aligned(part, node):
                    counts[space.key[1]] = counts.get(space.key[1], 0) + 1
            product = (method and target in _PRODUCT_METHODS) or (not method and target in _PRODUCTS)
            for dim, count in counts.items():
                if product and count > 1:  # a product of two coupled channels is not linear in either copy
                    self.spaces[(node.name, dim)].nonlinearity = SMOOTH
            return
        elementwise = _ELEMENTWISE_METHODS.get(target) if method else _ELEMENTWISE.get(target)
        if elementwise is not None and len(sources) == 1:
            self._link_aligned(source, node, elementwise)
            return
        if (method and target in _BROADCAST_METHODS) or (not method and target in _BROADCASTS):
            self._link_aligned(source, node)  # a dimension of size 1 that is repeated blocks its space, as for a sum
            return
        if not method and target in _PADDINGS:
            self._pad(node, source)
            return
        if not method and target in _POOLING:
            out = self.space(node.name, 1)
            self._link(self.space(source.name, 1), out)
            if out is not None:
                out.nonlinearity = _POOLING[target]
            self._block_mixed(node, source, {1})
            return
        if not method and target is torch.nn.functional.layer_norm:
            normalized = _argument(node, 1, "normalized_shape")
            count = len(normalized) if isinstance(normalized, (list, tuple)) else 1
            self._normalise_over(node, source, _trailing(source, count))
            return
        if not method and target is torch.nn.functional.glu:
            self._glu(node, source, _argument(node, 1, "dim", -1))
            return
        if (not method and target in _SOFTMAXES) or (method and target in ("softmax", "log_softmax")):
            self._normalise_along(node, source, _argument(node, 1, "dim", None))
            return
        if not method and target is torch.nn.functional.normalize:
            self._normalise_along(node, source, _argument(node, 2, "dim", 1))
            return
        if not method and target is torch.nn.functional.instance_norm:  # each channel over its own positions
            self._normalise_over(node, source, set(range(2, len(_shape(source)))))
            return
        smooth_reduction = _SMOOTH_REDUCTION_METHODS.get(target) if method else _SMOOTH_REDUCTIONS.get(target)
        if smooth_reduction is not None:  # a spread over positions (std, var, logsumexp): smooth in each channel
            keepdim = _argument(node, smooth_reduction, "keepdim", False)
            self._reduce_dims(node, source, _argument(node, 1, "dim"), keepdim, SMOOTH)
            return
        if (not method and target in _CONCATENATIONS) or (method and target == "cat"):
            self._concatenate(node, sources)
            return
        if (not method and target in _FLATTEN) or (method and target == "flatten"):
            start = _argument(node, 1, "start_dim", 0)
            end = _argument(node, 2, "end_dim", -1)
            self._flatten(node, source, start, end)
            return
        if (not method and target in _RESHAPES) or (
            method and target in ("view", "reshape", "unflatten", "view_as", "reshape_as")
        ):
            self._reshape(node, source)
            return
        if (not method and target in _PERMUTATIONS) or (method and target in _PERMUTATION_METHODS):
            self._permute(node, source, name)
            return
        if (not method and target in _REDUCTIONS) or (method and target in _REDUCTION_METHODS):
            self._reduce(node, source)
            return
        if (not method and target in _SQUEEZES) or (method and target in _SQUEEZE_METHODS):
            self._squeeze(node, source, target if method else _SQUEEZES[target])
            return
        self._block_node(node, f"operation '{node.name}' ({name}){_inside(node)} is not supported")

    def _normalise_over(self, node: fx.Node, source: fx.Node, normalised: set[int], refusal: str = "") -> None:
        """A normalisation over the dimensions ``normalised`` (a LayerNorm over its trailing ones, a softmax or an L_p
        normalisation along one, an instance norm over the positions): a smooth map of each position of the other
        dimensions (a LayerNorm over the time axis of (N, C, T) acts on each channel alone); channels in a
        normalised dimension would change the others' outputs and are refused, with ``refusal`` or the default."""
        for dim in range(1, len(_shape(source))):
            if dim in normalised:
                reason = refusal or (
                    f"'{node.name}'{_inside(node)} ({_function_name(node)}) normalises across dimension {dim}: a "
                    "split would change the other channels' outputs"
                )
                self._block([self.space(source.name, dim)], reason)
                continue
            out = self.space(node.name, dim)
            self._link(self.space(source.name, dim), out)
            if out is not None:
                out.nonlinearity = SMOOTH

    def _glu(self, node: fx.Node, source: fx.Node, dim: int) -> None:
        """A gated linear unit, a * sigmoid(b) with (a, b) the two halves of ``dim``: channel j of the output is a
        smooth function of input channels j and j + n/2, which a split must grow together (as for ``chunk``)."""
        shape = _shape(source)
        dim %= len(shape)
        if dim == 0:
            self._block_node(node, f"'{node.name}' gates across the batch dimension")
            return
        half = shape[dim] // 2
        whole, out = self.space(source.name, dim), self.space(node.name, dim)
        for offset in (0, half):
            self._link(whole, out, "to_part", offset=offset, size=half)
        if whole is not None:
            whole.parts = [(0, half), (half, half)]
        if out is not None:
            out.nonlinearity = SMOOTH
        for other in range(1, len(shape)):
            if other != dim:
                linked = self.space(node.name, other)
                self._link(self.space(source.name, other), linked)
                if linked is not None:
                    linked.nonlinearity = SMOOTH

    def _normalise_along(self, node: fx.Node, source: fx.Node, dim: Any) -> None:
        """A softmax or an L_p normalisation along one dimension (see :meth:`_normalise_over`)."""
        if not isinstance(dim, int):
            self._block_node(node, f"'{node.name}' ({_function_name(node)}) has no dimension given: pass dim=")
            return
        dim %= len(_shape(source))
        if dim == 0:
            self._block_node(node, f"'{node.name}' normalises across the batch dimension (it mixes samples)")
            return
        self._normalise_over(node, source, {dim})

    def _getitem(self, node: fx.Node) -> None:
        source, index = node.args
        if not isinstance(source, fx.Node):
            return
        if _shape(source) is None and _is_extreme_along(source) and index == 0 and _shape(node) is not None:
            self._extreme_values(node, source)
            return
        if _shape(source) is None:  # picking one output of a chunk
            producer = source
            chunked = producer.op == "call_method" and producer.target == "chunk" or producer.target in _CHUNKS
            if not chunked or _shape(node) is None:
                reason = self._refusal_of(producer)
                if reason is None:
                    reason = f"'{node.name}' picks an output of '{producer.name}' splitgrow does not follow"
                self._block_node(node, reason)
                return
            self._chunk_part(node, producer, index)
            return
        if _shape(node) is None:
            return
        indexes = index if isinstance(index, tuple) else (index,)
        shape = _shape(source)
        if Ellipsis in indexes:
            at = indexes.index(Ellipsis)
            fill = len(shape) - (len(indexes) - 1 - sum(i is None for i in indexes))
            indexes = indexes[:at] + (slice(None),) * fill + indexes[at + 1 :]
        dim_in, dim_out = 0, 0
        for item in indexes:
            if item is None:
                dim_out += 1
                continue
            if dim_in >= len(shape):
                break
            space = self.space(source.name, dim_in)
            if isinstance(item, slice) and item == slice(None):
                if dim_in > 0:
                    self._link(space, self.space(node.name, dim_out))
                dim_in, dim_out = dim_in + 1, dim_out + 1
            elif isinstance(item, int):
                self._block([space], f"'{node.name}' picks one position of dimension {dim_in}")
                dim_in += 1
            else:
                self._block([space, self.space(node.name, dim_out)], f"'{node.name}' slices part of dimension {dim_in}")
                dim_in, dim_out = dim_in + 1, dim_out + 1
        for rest in range(dim_in, len(shape)):
            if rest > 0:
                self._link(self.space(source.name, rest), self.space(node.name, dim_out + rest - dim_in))

    def _chunk_part(self, node: fx.Node, chunk: fx.Node, index: int) -> None:
        source = chunk.args[0]
        chunks = _argument(chunk, 1, "chunks")
        dim = _argument(chunk, 2, "dim", 0)
        shape = _shape(source)
        dim %= len(shape)
        ranges = [(int(part[0]), int(part.numel())) for part in torch.arange(shape[dim]).chunk(chunks)]
        if dim == 0:
            self._block_node(node, f"'{chunk.name}' chunks the batch dimension")
            return
        whole = self.space(source.name, dim)
        offset, size = ranges[index]
        self._link(whole, self.space(node.name, dim), "to_part", offset=offset, size=size)
        if whole is not None:
            whole.parts = ranges
        for other in range(1, len(shape)):
            if other != dim:
                self._link(self.space(source.name, other), self.space(node.name, other))

    def _concatenate(self, node: fx.Node, sources: list[fx.Node]) -> None:
        rank = len(_shape(node))
        dim = _argument(node, 1, "dim", 0) % rank
        if dim == 0:
            self._block_node(node, f"'{node.name}' concatenates along the batch dimension")
            return
        whole = self.space(node.name, dim)
        offset = 0
        for part in sources:
            size = _shape(part)[dim]
            self._link(whole, self.space(part.name, dim), "to_part", offset=offset, size=size)
            offset += size
            for other in range(1, rank):
                if other != dim:
                    self._link(self.space(part.name, other), self.space(node.name, other))

    def _pad(self, node: fx.Node, source: fx.Node) -> None:
        """``F.pad`` pads the last len(pad) / 2 dimensions (a U-Net's skip alignment, TensorFlow's "same"
        padding): every channel is padded on its own, so the other dimensions pass through, and a split channel
        in a padded dimension is blocked."""
        rank = len(_shape(source))
        padded = len(_argument(node, 1, "pad")) // 2
        followed = set(range(1, rank - padded))
        for dim in followed:
            self._link(self.space(source.name, dim), self.space(node.name, dim))
        self._block_mixed(node, source, followed)

    def _reshape(self, node: fx.Node, source: fx.Node) -> None:
        before, after = _shape(source), _shape(node)
        if before == after:
            self._link_aligned(source, node)
            return
        # a reshape that splits one dimension into consecutive ones is an unflatten (tokens back onto a grid)
        if before[0] == after[0] and len(after) > len(before):
            added = len(after) - len(before)
            for dim in range(1, len(before)):
                if (
                    before[:dim] == after[:dim]
                    and before[dim + 1 :] == after[dim + 1 + added :]
                    and math.prod(after[dim : dim + 1 + added]) == before[dim]
                ):
                    parts = after[dim : dim + 1 + added]
                    # all parts 1 but one of the whole size: no split, dimensions of size 1 inserted beside it
                    kept = next((dim + i for i, size in enumerate(parts) if size == before[dim]), None)
                    if kept is not None and sorted(parts)[:-1] != [1] * added:
                        kept = None
                    self._pending_unflattens.append((node, source, dim, added, kept))
                    return
        # a reshape that merges consecutive dimensions is a flatten
        if before[0] == after[0] and len(after) < len(before):
            for start in range(1, len(before)):
                end = start + len(before) - len(after)
                merged = 1
                for size in before[start : end + 1]:
                    merged *= size
                if before[:start] + (merged,) + before[end + 1 :] == after:
                    self._flatten(node, source, start, end)
                    return
        self._block_node(node, f"'{node.name}'{_inside(node)} reshapes {before} to {after}")

    def _permute(self, node: fx.Node, source: fx.Node, name: str) -> None:
        rank = len(_shape(source))
        if name in ("transpose", "swapaxes"):
            a = _argument(node, 1, "dim0") % rank
            b = _argument(node, 2, "dim1") % rank
            order = list(range(rank))
            order[a], order[b] = order[b], order[a]
        elif name == "movedim":
            start = _argument(node, 1, "source") % rank
            end = _argument(node, 2, "destination") % rank
            order = list(range(rank))
            order.insert(end, order.pop(start))
        else:
            dims = node.args[1:] if node.op == "call_method" else _argument(node, 1, "dims")
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            order = [d % rank for d in dims]
        if order[0] != 0:
            self._block_node(node, f"'{node.name}' moves the batch dimension")
            return
        for out_dim, in_dim in enumerate(order):
            if out_dim > 0:
                self._link(self.space(source.name, in_dim), self.space(node.name, out_dim))

    def _squeeze(self, node: fx.Node, source: fx.Node, name: str) -> None:
        """``squeeze`` removes dimensions of size 1 (the given ones, or all), ``unsqueeze`` inserts one; the other
        dimensions keep their positions. A removed dimension cannot grow (it must stay of size 1)."""
        before = _shape(source)
        rank = len(before)
        if name == "unsqueeze":
            inserted = _argument(node, 1, "dim") % (rank + 1)
            kept = [dim for dim in range(rank + 1) if dim != inserted]
            removed: set[int] = set()
        else:
            dims = _argument(node, 1, "dim")
            if dims is None:
                dims = range(rank)
            elif isinstance(dims, int):
                dims = [dims]
            removed = {dim % rank for dim in dims if before[dim % rank] == 1}  # torch keeps the other dimensions
            kept = [dim for dim in range(rank) if dim not in removed]
            inserted = None
        if 0 in removed or inserted == 0:
            self._block_node(node, f"'{node.name}' {name}s the batch dimension")
            return
        for dim in removed:
            self._block([self.space(source.name, dim)], f"'{node.name}' removes dimension {dim} (of size 1)")
        pairs = zip(range(rank), kept) if name == "unsqueeze" else zip(kept, range(rank))
        for in_dim, out_dim in pairs:
            if in_dim > 0:
                self._link(self.space(source.name, in_dim), self.space(node.name, out_dim))

    def _reduce(self, node: fx.Node, source: fx.Node) -> None:
        # a maximum over positions is a kink, as max pooling
        kind = PIECEWISE_LINEAR if _function_name(node) in ("amax", "amin") else LINEAR
        self._reduce_dims(node, source, _argument(node, 1, "dim"), _argument(node, 2, "keepdim", False), kind)

    def _extreme_values(self, node: fx.Node, extreme: fx.Node) -> None:
        """``node`` picks the values of ``torch.max(x, dim)`` (or min): a maximum over ``dim``, a kink."""
        dims, keepdim = _argument(extreme, 1, "dim"), _argument(extreme, 2, "keepdim")
        self._reduce_dims(node, extreme.args[0], dims, keepdim, PIECEWISE_LINEAR)

    def _reduce_dims(self, node: fx.Node, source: fx.Node, dims: Any, keepdim: Any, kind: str) -> None:
        """``node`` reduces ``source`` over ``dims``: the other dimensions pass through, with the nonlinearity
        ``kind`` (a maximum's kink, a standard deviation's curvature)."""
        rank = len(_shape(source))
        keepdim = bool(keepdim)
        if dims is None:
            self._block_node(node, f"'{node.name}' reduces over every dimension")
            return
        reduced = {d % rank for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        out_dim = 0
        for dim in range(rank):
            if dim in reduced:
                self._block([self.space(source.name, dim)], f"'{node.name}' reduces over dimension {dim}")
                if keepdim:
                    out_dim += 1
                continue
            if dim > 0:
                out = self.space(node.name, out_dim)
                self._link(self.space(source.name, dim), out)
                if out is not None:
                    out.nonlinearity = kind
            out_dim += 1

    # ---------------------------------------------------------------------------------------- closure

    def closure_from(self, root: SpaceKey, channel: int) -> dict[SpaceKey, list[int]]:
        """Every space that position ``channel`` of space ``root`` reaches, with its positions there (cached)."""
        cached = self._closures.get((root, channel))
        if cached is not None:
            return cached
        found: dict[SpaceKey, set[int]] = {root: {channel}}
        queue = deque([root])
        while queue:
            key = queue.popleft()
            for edge in self.spaces[key].edges:
                positions = edge.map(found[key])
                if not positions:
                    continue
                known = found.setdefault(edge.other, set())
                if not positions <= known:
                    known |= positions
                    queue.append(edge.other)
        result = {key: sorted(positions) for key, positions in found.items()}
        self._closures[(root, channel)] = result
        return result

    def closure(self, site: str, channel: int) -> dict[SpaceKey, list[int]]:
        """Every space that channel ``channel`` of site ``site`` reaches, with its positions there."""
        return self.closure_from(self.sites[site].space, channel)

    def coupled_modules(self, site: str) -> dict[str, list[str]]:
        """The modules a split of ``site`` changes, by role: producers (members and exact copies), per_channel,
        consumers."""
        roles: dict[str, list[str]] = {"producers": [], "per_channel": [], "consumers": []}
        for key in self.closure(site, 0):
            space = self.spaces[key]
            for role in roles:
                for module in getattr(space, role):
                    if module not in roles[role]:
                        roles[role].append(module)
        return roles

    def channel_count(self, module_name: str) -> int:
        """The number of output channels of a module's (first) call, as traced."""
        node = self._node_of_module(module_name)
        shape = _shape(node)
        return shape[self._maps[node.name].output_dim % len(shape)]

    # ---------------------------------------------------------------------------------------- sites

    def _node_of_module(self, name: str) -> fx.Node:
        """The (first) call of a module."""
        if not hasattr(self, "_module_nodes"):
            self._module_nodes: dict[str, fx.Node] = {}
            for node in self.module.graph.nodes:
                if node.op == "call_module":
                    self._module_nodes.setdefault(node.target, node)
        return self._module_nodes[name]

    def _find_sites(self) -> None:
        seen_groups: set[frozenset[str]] = set()
        for node in self.module.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.modules[node.target]
            mapping = self._maps.get(node.name)
            handler = handler_for(module)
            is_neuron_layer = isinstance(handler, NeuronHandler)
            if mapping is None or mapping.kind == REFUSE or not (mapping.kind == PRODUCE or mapping.neurons):
                if is_neuron_layer and node.target not in self.not_sites and mapping is not None:
                    if mapping.kind == REFUSE:
                        self.not_sites[node.target] = mapping.reason
                continue
            root = (node.name, mapping.output_dim % len(_shape(node)))
            if root not in self.spaces:  # a one-dimensional output: the batch dimension was squeezed away
                self.not_sites.setdefault(
                    node.target, f"its output of shape {_shape(node)} has no channel dimension besides the batch one"
                )
                continue
            closure = self.closure_from(root, 0)
            producers = sorted(
                {module_name for key in closure for module_name in self.spaces[key].producers},
                key=lambda m: self.order[self._node_of_module(m).name],
            )
            group = frozenset(producers)
            if group in seen_groups:
                continue
            seen_groups.add(group)
            site = self._make_site(producers, closure)
            if isinstance(site, str):
                for producer in producers:
                    self.not_sites.setdefault(producer, site)
                continue
            if any(is_within(m, prefix) for m in producers for prefix in self.exclude):
                site.splittable, site.reason = False, "excluded by the user"
            self.sites[site.name] = site
        for name, module in self.modules.items():
            if isinstance(handler_for(module), NeuronHandler) and name not in self.sites and name not in self.not_sites:
                if not any(name in (m.module for m in s.members) for s in self.sites.values()):
                    self.not_sites[name] = self._why_not(name)
        for name, reason in self._unsupported.items():
            if any(True for _ in self.modules[name].parameters(recurse=False)):
                self.not_sites.setdefault(name, reason)
        self._list_functional_layers()

    def _list_functional_layers(self) -> None:
        """A parameter used as a layer's weights by a function (``F.conv2d(x, self.weight)``) has no module that a
        split could resize: list it with the way to make it growable rather than leave it out of the report."""
        for node in self.module.graph.nodes:
            if node.op != "get_attr" or not isinstance(_attribute(self.module, node.target), nn.Parameter):
                continue
            owner = node.target.rpartition(".")[0]
            if owner in self._calls:
                continue  # the tensor of a module called as one (refused, with the reason), not one traced through
            users, seen = list(node.users), set()
            while users:
                user = users.pop()
                if user in seen:
                    continue
                seen.add(user)
                method = user.op == "call_method"
                if (
                    (method and user.target in _WEIGHT_VIEW_METHODS)
                    or user.target in (torch.t, torch.transpose, torch.permute, torch.reshape)
                    or (user.target is getattr and user.args[1:] in (("T",), ("mT",)))
                ):
                    users.extend(user.users)  # the weight transposed or viewed first
                    continue
                if (method and user.target in _WEIGHT_METHODS) or (
                    user.op == "call_function" and user.target in _WEIGHT_FUNCTIONS
                ):
                    function = _function_name(user)
                    if owner:  # a layer of the user's own, whose forward fx traced through
                        kind = type(self.modules[owner]).__name__
                        how = (
                            f"register a handler for {kind} (splitgrow.layers.register_layer), or build it from "
                            "nn.Linear / nn.Conv2d layers, to grow it"
                        )
                    else:
                        how = (
                            "splitgrow grows layers that are modules; make it one (nn.Linear, nn.Conv2d, ...) to "
                            "grow it"
                        )
                    self.not_sites.setdefault(
                        node.target,
                        f"parameter '{node.target}' belongs to a functional {function} call (a layer written as a "
                        f"function): {how}",
                    )
                    break

    def _why_not(self, name: str) -> str:
        nodes = [node for node in self.module.graph.nodes if node.op == "call_module" and node.target == name]
        if not nodes:
            called = [node.target for node in self.module.graph.nodes if node.op == "call_module"]
            parent = next((p for p in called if name.startswith(p + ".")), None)
            if parent is not None:
                return f"it is inside module '{parent}' ({type(self.modules[parent]).__name__}), traced as one call"
            return "it is never called"
        if name in self._refusals:
            return self._refusals[name]
        for site in self.sites.values():
            if name in self.coupled_modules(site.name)["producers"]:
                return f"its channels are copied exactly when site '{site.name}' is split (they are coupled)"
        return "its channels are not splittable"

    def _members(self, producers: list[str], closure: dict[SpaceKey, list[int]]) -> list[Member] | str:
        members = []
        for producer in producers:
            node = self._node_of_module(producer)
            module = self.modules[producer]
            handler = handler_for(module)
            if not isinstance(handler, NeuronHandler):
                return f"module '{producer}' produces channels but has no neuron handler"
            mapping = self._maps[node.name]
            dim = mapping.output_dim % len(_shape(node))
            positions = closure.get((node.name, dim), [])
            kind = type(module).__name__.lower()
            if mapping.neurons:
                kind = "depthwise"
            for offset in positions:
                members.append(Member(producer, handler, offset, handler.neuron_dim(module), kind))
        return members

    def _make_site(self, producers: list[str], closure: dict[SpaceKey, list[int]]) -> Site | str:
        members = self._members(producers, closure)
        if isinstance(members, str):
            return members
        first = members[0]
        first_node = self._node_of_module(first.module)
        if all(m.kind == "depthwise" for m in members):
            # a depthwise filter grows with its input channel, so some layer must produce that channel
            source = _tensor_args(first_node)[0].name
            return (
                f"'{first.module}' is depthwise: its channels grow with its input's, which come from '{source}' and "
                "not from a layer splitgrow can grow"
            )
        copies = sum(1 for m in members if m.module == first.module)
        num_neurons = first.handler.num_neurons(self.modules[first.module]) // copies
        root = (first_node.name, self._maps[first_node.name].output_dim % len(_shape(first_node)))
        in_closure = {key[0] for key in closure}
        blocked = list(dict.fromkeys(reason for key in closure for reason in self.spaces[key].blocked))
        for key, positions in closure.items():
            parts = self.spaces[key].parts
            if parts is not None:
                counts = [sum(1 for p in positions if start <= p < start + size) for start, size in parts]
                if len(set(counts)) > 1:
                    blocked.append(f"a split would move the boundaries of the chunks of '{key[0]}'")
        common = {"name": first.module, "num_neurons": num_neurons, "space": root}
        # a member that reads the site's channels back moves every channel's output at a split: only the Hessian
        # of the whole loss in the split sees that
        if any(m.handler.whole_loss for m in members) or self._feeds_itself(members, closure) is not None:
            site = Site(
                members=members,
                neuron_dim=sum(m.neuron_dim for m in members),
                kind="+".join(dict.fromkeys(m.kind for m in members)),
                engine="loss",
                activation=None,
                **common,
            )
            site.kinks = self._kinks(closure, site)
            if blocked:
                site.splittable, site.reason = False, "; ".join(blocked)
            return site
        gates, gate_nodes = self._gates(members, in_closure)
        if gates:
            members = [m for m in members if m.module not in gates]
            first = members[0]
        segment, frontier, smooth = self._segment(members, in_closure, gate_nodes)
        nonlinear_members = any(m.handler.nonlinear_in_theta for m in members)
        closed = self._closed(segment, members, in_closure, gate_nodes)
        if not smooth and not nonlinear_members and (blocked or not self._in_series(members, in_closure)):
            if blocked:
                return "; ".join(blocked)
            # a residual stream is no neuron's output whatever its activation: say that, not "pass a surrogate"
            return self._no_curvature_reason(in_closure) if closed else self._open_reason(segment, gate_nodes, gates)
        ridge = None if nonlinear_members else self._ridge_pattern(first)
        if ridge is not None:
            activation_node, batch_norm, activation = ridge
            ridge_nodes = [first_node.name, *([self._node_of_module(batch_norm).name] if batch_norm else [])]
            ridge_nodes.append(activation_node)
        if ridge is not None and len(members) == 1 and set(segment) <= set(ridge_nodes):
            site = self._ridge_site(first, ridge, ridge_nodes, common)
        elif closed and (summed := self._sum_pattern(members, segment)) is not None:
            branches, activation_node, activation = summed
            site = Site(
                members=members,
                neuron_dim=sum(m.neuron_dim for m in members),
                kind="+".join(dict.fromkeys(m.kind for m in members)),
                engine="ridge",
                activation=activation,
                batch_norm=branches[0][1],
                segment=segment,
                frontier=[activation_node],
                producer_node=branches[0][0],
                activation_node=activation_node,
                branches=branches,
                **common,
            )
        elif closed and ridge is not None and (chain := self._chain_pattern(members, ridge, segment)) is not None:
            site = self._ridge_site(first, ridge, ridge_nodes, common)
            site.members, site.neuron_dim = members, sum(m.neuron_dim for m in members)
            site.kind, site.engine, site.chain = "+".join(m.kind for m in members), "chain", chain
            site.segment, site.frontier = segment, [chain.second_activation_node]
        elif closed:
            activations = [a for a in (self._activation_of(n) for n in segment) if a is not None]
            site = Site(
                members=members,
                neuron_dim=sum(m.neuron_dim for m in members),
                kind="+".join(dict.fromkeys(m.kind for m in members)),
                engine="segment",
                activation=next((a for a in activations if not a.curvature_free or a.surrogate), None),
                segment=segment,
                frontier=frontier,
                **common,
            )
            site.fed_back = self._fed_back(segment, frontier, members, smooth)
        elif ridge is not None:
            site = self._ridge_site(first, ridge, ridge_nodes, common)
            beyond = [n for n in segment if n not in ridge_nodes and n in smooth]
            # with no curvature after the activation, the layers summed into these channels are copies that read the
            # offspring's mean through a consumer: both offspring add the same values, every consumer averages them,
            # and the loss moves by eps^2/2 v^T S v with the gradient of the activation's output along every path
            site.exact = not beyond
            if beyond:
                named = ", ".join(repr(self._label(n)) for n in beyond)
                site.inexact_reason = (
                    "its channels pass a residual sum and then a nonlinearity that the offspring see separately "
                    f"({named}); its S is the paper's per-layer one and the other layers summed into these channels "
                    "are copied exactly"
                )
        else:
            return self._open_reason(segment, gate_nodes, gates)
        site.gates = sorted(gates, key=lambda m: self.order[self._node_of_module(m).name])
        site.kinks = self._kinks(closure, site, gate_nodes)
        if blocked:
            site.splittable, site.reason = False, "; ".join(blocked)
        return site

    def _label(self, name: str) -> str:
        """How a message names a traced node: its module's name for a module call (what the user wrote), else the
        node's own name."""
        node = self.nodes[name]
        return node.target if node.op == "call_module" else name

    def _kinks(self, closure: dict[SpaceKey, list[int]], site: Site, gate_nodes: set[str] = frozenset()) -> str:
        """The kinks the group's channels pass on their way to the consumers (none for a surrogate activation;
        a gate's kinks are none either, since both offspring see the same gate value)."""
        found = []
        for name in sorted({key[0] for key in closure} - gate_nodes, key=self.order.__getitem__):
            activation = self._activation_of(name)
            node = self.nodes[name]
            label = self._label(name)
            if activation is not None:
                if activation.surrogate is None and not activation.exact:
                    found.append(f"'{label}' ({activation.inexact_reason})")
            elif self._nonlinearity(name) == PIECEWISE_LINEAR:
                module = self.modules.get(node.target) if node.op == "call_module" else None
                what = type(module).__name__ if module is not None else getattr(node.target, "__name__", node.target)
                found.append(f"'{label}' ({what})")
        return ", ".join(found)

    def _ridge_site(
        self, first: Member, ridge: tuple[str, str | None, Activation], nodes: list[str], common: dict
    ) -> Site:
        activation_node, batch_norm, activation = ridge
        return Site(
            members=[first],
            neuron_dim=first.neuron_dim,
            kind=first.kind,
            engine="ridge",
            activation=activation,
            batch_norm=batch_norm,
            segment=nodes,
            frontier=[activation_node],
            producer_node=nodes[0],
            activation_node=activation_node,
            branches=[(nodes[0], batch_norm)],
            **common,
        )

    def _activation_of(self, name: str) -> Activation | None:
        """The activation a node computes (with the surrogate if one is asked for), or None."""
        node = self.nodes[name]
        if node.op == "call_module":
            from .layers import activation_of_module

            activation = activation_of_module(self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            activation = activation_of_call(node.op, node.target, tuple(node.args), dict(node.kwargs))
        else:
            activation = None
        if activation is not None and activation.curvature_free and activation.kinks and self.relu_surrogate:
            activation = with_kink_surrogate(activation, self.relu_surrogate)
        return activation

    def _nonlinearity(self, name: str) -> str:
        kinds = {space.nonlinearity for key, space in self.spaces.items() if key[0] == name}
        activation = self._activation_of(name)
        if activation is not None and activation.surrogate is not None:
            return SMOOTH
        return SMOOTH if SMOOTH in kinds else PIECEWISE_LINEAR if PIECEWISE_LINEAR in kinds else LINEAR

    def _gates(self, members: list[Member], in_closure: set[str]) -> tuple[set[str], set[str]]:
        """The members that only gate the group's channels, as a squeeze-and-excitation's second layer does, and the
        nodes from each gate to its product (both offspring see the same value there): (modules, nodes).

        A gate member's output passes single-input operations (a sigmoid, a reshape) into a product with channels
        that do not depend on it. Copying its rows exactly gives both offspring one gate value, since its input
        lies outside the group (any path from the group's channels to it passes a consumer, which reads the
        offspring's mean), so the product is linear in each offspring with one coefficient: everything after the
        group's last activation sees only the offspring's mean, which is what makes S exact."""
        candidates: dict[str, tuple[list[str], fx.Node, fx.Node]] = {}
        for member in members:
            start = self._node_of_module(member.module)
            path, current = [start.name], start
            while len(_value_users(current)) == 1:
                (user,) = _value_users(current)
                if [a for a in _tensor_args(user) if a.name in in_closure] != [current] or user.name not in in_closure:
                    break
                path.append(user.name)
                current = user
            if len(_value_users(current)) != 1:
                continue
            (product,) = _value_users(current)
            operands = [a for a in _tensor_args(product) if a.name in in_closure]
            method = product.op == "call_method"
            multiply = product.target in (_MULTIPLICATION_METHODS if method else _MULTIPLICATIONS)
            divide = product.target in (_DIVISION_METHODS if method else _DIVISIONS)
            if len(operands) != 2 or not (multiply or (divide and operands[1] is current)):
                continue
            other = operands[0] if operands[1] is current else operands[1]
            if other is current or other is start or start.name in self._ancestors_within(other.name, {start.name}):
                continue
            candidates[member.module] = (path, product, other)
        gate_nodes = {name for path, _, _ in candidates.values() for name in path}
        gates = {module for module, (_, _, other) in candidates.items() if other.name not in gate_nodes}
        if len(gates) == len({m.module for m in members}):
            return set(), set()
        return gates, {name for module in gates for name in candidates[module][0][1:]} | {
            candidates[module][1].name for module in gates
        }

    def _segment(
        self, members: list[Member], in_closure: set[str], gate_nodes: set[str] = frozenset()
    ) -> tuple[list[str], list[str], set[str]]:
        """The nodes from the members to the last nonlinearity their channels see separately (those on a path from
        a member to a smooth node or to another member, within the closure, not counting a gate's nodes and
        product), the frontier (segment nodes whose outputs leave it), and the smooth nodes.

        A later member multiplies what reaches it by its own rows (a depthwise filter), so every node on the way
        there (a max pooling between the activation and the depthwise filter, as after ShuffleNetV2's stem) is
        part of the neuron's function."""
        member_nodes = {self._node_of_module(m.module).name for m in members}
        smooth = {n for n in in_closure - gate_nodes if n not in member_nodes and self._nonlinearity(n) == SMOOTH}
        downstream = self._reachable(member_nodes, in_closure, forward=True)
        upstream = self._reachable(smooth | member_nodes, in_closure, forward=False)
        keep = member_nodes | (downstream & upstream)
        segment = sorted(keep, key=self.order.__getitem__)
        frontier = [n for n in segment if any(user.name not in keep for user in self.nodes[n].users)]
        return segment, frontier, smooth & keep

    def _feeds_itself(self, members: list[Member], closure: dict[SpaceKey, list[int]]) -> str | None:
        """The member that also reads the site's channels through all its inputs (BC-ResNet's broadcast residual:
        a 1 x 1 convolution over a block's channels added back onto them), or None: a split then moves every
        other channel's output too, which no per-neuron closed form sees (the whole-loss engine does)."""
        readers = {consumer for key in closure for consumer in self.spaces[key].consumers}
        return next((m.module for m in members if m.module in readers), None)

    def _in_series(self, members: list[Member], in_closure: set[str]) -> bool:
        """Whether one member reads another's output (a depthwise filter after the convolution it grows with): the
        neuron's function is then a product of the two members' parameters, whose mixed second derivative is a
        splitting matrix even where every activation on the way is piecewise linear (ReLU)."""
        nodes = {self._node_of_module(m.module).name for m in members}
        return any(self._reachable({name}, in_closure, forward=True) & (nodes - {name}) for name in nodes)

    def _fed_back(self, segment: list[str], frontier: list[str], members: list[Member], smooth: set[str]) -> list[str]:
        """The frontier nodes that also feed the rest of the segment and are nonlinear in theta (a smooth node, a
        member nonlinear in its theta, or two members, such as a filter and the depthwise filter it feeds, before
        them). The loss gradient at such a node through all its users would weight its curvature by the gradient
        of the path inside as well, which the segment's own function already counts: the statistics read it
        through the outside users alone. A node linear in theta adds no curvature, so any gradient will do."""
        inside = set(segment)
        member_nodes = {self._node_of_module(m.module).name for m in members}
        nonlinear = {self._node_of_module(m.module).name for m in members if m.handler.nonlinear_in_theta}
        found = []
        for name in frontier:
            if not any(user.name in inside for user in self.nodes[name].users):
                continue
            before = self._reachable({name}, inside, forward=False)
            if before & (smooth | nonlinear) or len(before & member_nodes) > 1:
                found.append(name)
        return found

    def _reachable(self, starts: set[str], within: set[str], *, forward: bool) -> set[str]:
        """The nodes reached from ``starts`` (included) through users (forward) or inputs, staying in ``within``
        (or passing through a node whose output is a tuple, such as ``chunk``)."""
        found, queue = set(starts), deque(starts)
        while queue:
            node = self.nodes[queue.popleft()]
            for other in node.users if forward else node.all_input_nodes:
                passable = other.name in within or (_shape(other) is None and other.op != "output")
                if passable and other.name not in found:
                    found.add(other.name)
                    queue.append(other.name)
        return found

    def _closed(
        self, segment: list[str], members: list[Member], in_closure: set[str], gate_nodes: set[str] = frozenset()
    ) -> bool:
        """Whether no input of the segment that reaches the group's channels depends on the segment (else its
        channels feed back into it, as a residual stream's do into the next block's producers).

        Such inputs are every input of a member (its output channel reads all of them) and the inputs of the other
        segment nodes that carry the group's channels. An input that only carries other positions (the other parts
        of a DenseNet concatenation, computed from earlier splits of the same channels) sees the offspring averaged
        by their consumers: a change of order eps^2, the same for every offspring, whose effect on the loss is first
        order and counted by the recorded gradients.

        A gate (a squeeze-and-excitation inside a residual block) may read the segment where it is still linear in
        theta: its consumer reads the offspring's mean, which a symmetric split leaves exactly as it was, so both
        offspring see the gate's old value, a constant of the segment's function."""
        inside = set(segment)
        member_nodes = {self._node_of_module(m.module).name for m in members}
        outside_inputs = {
            arg.name
            for name in segment
            for arg in self.nodes[name].all_input_nodes
            if arg.name not in inside and (name in member_nodes or arg.name in in_closure)
        }
        linear = self._linear_in_theta(segment, members) if gate_nodes else set()
        for name in outside_inputs:
            read = self._ancestors_within(name, inside)
            if read and not (name in gate_nodes and read <= linear):
                return False
        return True

    def _open_reason(self, segment: list[str], gate_nodes: set[str], gates: set[str]) -> str:
        """Why a segment that is not closed is no neuron: a gate that reads it after a nonlinearity (the offspring's
        mean moves there, and with it the gate both see), else a residual stream fed back into it."""
        inside = set(segment)
        for name in sorted(gate_nodes, key=self.order.__getitem__):
            if name not in inside and self._ancestors_within(name, inside):
                named = ", ".join(f"'{gate}'" for gate in sorted(gates)) or f"'{self._label(name)}'"
                return (
                    f"the gate {named} reads these channels after a nonlinearity, so a split moves the gate value "
                    "both offspring see; a gate read before the block's activation would keep it"
                )
        return _OPEN_STREAM

    def _ancestors_within(self, name: str, inside: set[str]) -> set[str]:
        """The nodes of ``inside`` that ``name`` depends on."""
        found, queue, seen = set(), deque([self.nodes[name]]), set()
        while queue:
            node = queue.popleft()
            for arg in node.all_input_nodes:
                if arg.name in seen:
                    continue
                seen.add(arg.name)
                if arg.name in inside:
                    found.add(arg.name)
                queue.append(arg)
        return found

    def _linear_in_theta(self, segment: list[str], members: list[Member]) -> set[str]:
        """The segment nodes whose values are linear in the site's parameters: the members' outputs (a member fed by
        another is a product of both) and what linear operations make of them alone."""
        member_nodes = {self._node_of_module(m.module).name: m for m in members}
        inside, linear = set(segment), set()
        for name in segment:
            inputs = [arg.name for arg in self.nodes[name].all_input_nodes if arg.name in inside]
            if name in member_nodes:
                if not inputs and not member_nodes[name].handler.nonlinear_in_theta:
                    linear.add(name)
            elif inputs and all(i in linear for i in inputs) and self._nonlinearity(name) == LINEAR:
                linear.add(name)
        return linear

    def _chain_pattern(
        self, members: list[Member], ridge: tuple[str, str | None, Activation], segment: list[str]
    ) -> Chain | None:
        """The chain of a pointwise (or stem) convolution feeding a depthwise one, when the segment is exactly
        P -> [BN1] -> phi1 -> D -> [BN2] -> phi2, each node the single user of the previous one."""
        from .layers.conv import Conv2dHandler, is_depthwise

        if len(members) != 2 or not all(isinstance(m.handler, Conv2dHandler) for m in members):
            return None
        first, second = (self.modules[m.module] for m in members)
        if first.groups != 1 or not is_depthwise(second) or second.padding_mode != "zeros":
            return None
        first_activation_node, _, first_activation = ridge
        depthwise_node = self._node_of_module(members[1].module)
        if list(self.nodes[first_activation_node].users) != [depthwise_node]:
            return None
        after = self._ridge_pattern(members[1])
        if after is None:
            return None
        second_activation_node, second_batch_norm, second_activation = after
        expected = [
            self._node_of_module(members[0].module).name,
            *([self._node_of_module(ridge[1]).name] if ridge[1] else []),
            first_activation_node,
            depthwise_node.name,
            *([self._node_of_module(second_batch_norm).name] if second_batch_norm else []),
            second_activation_node,
        ]
        if segment != expected:
            return None
        return Chain(
            first_activation_node,
            depthwise_node.name,
            second_batch_norm,
            second_activation_node,
            first_activation,
            second_activation,
        )

    def _sum_pattern(
        self, members: list[Member], segment: list[str]
    ) -> tuple[list[tuple[str, str | None]], str, Activation] | None:
        """Several producers, each through an optional BatchNorm, summed and then through one activation with
        curvature (a ResNet block whose shortcut is a convolution): (branches, activation node, activation)."""
        if len(members) < 2 or len({m.module for m in members}) != len(members):
            return None
        if any(m.handler.nonlinear_in_theta or not m.handler.shares_inputs(self.modules[m.module]) for m in members):
            return None
        branches, adds = [], set()
        for member in members:
            node = self._node_of_module(member.module)
            batch_norm = None
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module":
                if isinstance(handler_for(self.modules[users[0].target]), BatchNormHandler):
                    batch_norm, node = users[0].target, users[0]
                    users = list(node.users)
            if len(users) != 1 or not self._is_add(users[0]):
                return None
            branches.append((self._node_of_module(member.module).name, batch_norm))
            current = users[0]
            while self._is_add(current):
                adds.add(current.name)
                users = list(current.users)
                if len(users) != 1:
                    return None
                current = users[0]
            activation_node = current.name
        activation = self._activation_of(activation_node)
        if activation is None or (activation.curvature_free and activation.surrogate is None):
            return None
        branch_nodes = {name for branch in branches for name in (branch[0], branch[1])} - {None}
        expected = {b[0] for b in branches} | {self._node_of_module(b[1]).name for b in branches if b[1]}
        expected |= adds | {activation_node}
        if set(segment) != expected or not branch_nodes:
            return None
        return branches, activation_node, activation

    @staticmethod
    def _is_add(node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in ("add", "add_")
        return node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)

    def _ridge_pattern(self, member: Member) -> tuple[str, str | None, Activation] | None:
        """(activation node, BatchNorm module, activation) when the member is followed by [BN ->] an activation with
        curvature, each the single user of the previous."""
        node = self._node_of_module(member.module)
        batch_norm = None
        users = list(node.users)
        if len(users) != 1:
            return None
        current = users[0]
        if current.op == "call_module" and isinstance(handler_for(self.modules[current.target]), BatchNormHandler):
            batch_norm = current.target
            users = list(current.users)
            if len(users) != 1:
                return None
            current = users[0]
        activation = self._activation_of(current.name)
        if activation is None or (activation.curvature_free and activation.surrogate is None):
            return None
        return current.name, batch_norm, activation

    def _no_curvature_reason(self, nodes: set[str]) -> str:
        for name in sorted(nodes, key=self.order.__getitem__):
            activation = self._activation_of(name)
            if activation is not None and activation.curvature_free and activation.kinks:
                return (
                    f"its activation {activation.name} has phi'' = 0, so every splitting index is 0; pass "
                    "relu_surrogate=beta (splitgrow inspect: --relu-surrogate BETA) to use softplus(beta) curvature "
                    "explicitly"
                )
        for name in sorted(nodes, key=self.order.__getitem__):
            node = self.nodes[name]
            if node.op == "call_module" and self._nonlinearity(name) == PIECEWISE_LINEAR:
                return (
                    f"its nonlinearity '{node.target}' ({type(self.modules[node.target]).__name__}) is piecewise "
                    "linear: phi'' = 0, so every splitting index is 0"
                )
        return "no activation with curvature follows it before its consumers (a linear unit: every index is 0)"

    # ---------------------------------------------------------------------------------------- reports

    def splittable_sites(self) -> list[Site]:
        return [site for site in self.sites.values() if site.splittable]

    def skipped(self) -> dict[str, str]:
        """Every layer whose channels will not grow, with the reason: unsplittable sites and layers that are not
        sites."""
        found = {name: site.reason for name, site in self.sites.items() if not site.splittable}
        found.update(self.not_sites)
        return found

    def describe(self) -> list[dict[str, Any]]:
        """One plain dict per site and per non-site layer, for reports (a frozen site's note says so: the selection
        skips it)."""
        from .selection import FROZEN, is_frozen

        rows = [
            {
                "site": site.name,
                "kind": site.kind,
                "members": [m.module for m in site.members],
                "neurons": site.num_neurons,
                "neuron_dim": site.neuron_dim,
                "engine": site.engine,
                "activation": None if site.activation is None else site.activation.name,
                "batch_norm": site.batch_norm,
                "exact": site.exact,
                "kinks": site.kinks,
                "splittable": site.splittable,
                "note": site.reason or site.inexact_reason or (FROZEN if is_frozen(self, site) else ""),
                "gates": site.gates,
            }
            for site in self.sites.values()
        ]
        rows += [{"site": name, "kind": "not a site", "note": reason} for name, reason in self.not_sites.items()]
        return rows


def handler_of(graph: ChannelGraph, module_name: str) -> LayerHandler:
    """The handler of one of the graph's modules (GraphError if it has none)."""
    handler = handler_for(graph.modules[module_name])
    if handler is None:
        raise GraphError(f"splitgrow cannot resize {type(graph.modules[module_name]).__name__} '{module_name}'")
    return handler
