"""Handlers by module type: the one place that says how splitgrow sees each layer.

A module's handler is the one registered for the most specific class in its method resolution order; an
elementwise activation module known to the activation table gets the activation handler; anything else has none
(and the graph refuses to grow through it, naming it). Register a handler for your own layer type with
:func:`register_layer` (docs/layers.md has a worked example); the tracer then treats that type as one opaque call.
"""

from __future__ import annotations

from torch import nn

from .activations import activation_of_module
from .base import LayerHandler
from .conv import Conv2dHandler
from .conv1d import Conv1dHandler
from .conv3d import Conv3dHandler
from .conv_transpose import ConvTransposeHandler
from .instance_norm import InstanceNormHandler
from .linear import LinearHandler
from .normalization import BatchNormHandler
from .per_channel import ActivationHandler, PerChannelHandler
from .prelu import PReLUHandler
from .refused import RefusedHandler
from .transformer import FORM_METHODS, TRACED_FORMS, TracedForm

_HANDLERS: dict[type[nn.Module], LayerHandler] = {}
_ACTIVATION_HANDLER = ActivationHandler()
#: types registered by users: the tracer keeps them as single calls instead of tracing into them
_USER_TYPES: set[type[nn.Module]] = set()


def register_layer(handler: LayerHandler, *, leaf: bool = True) -> LayerHandler:
    """Register ``handler`` for every type in ``handler.types`` (replacing an earlier registration).

    With ``leaf`` (the default), the tracer treats these types as single calls, as it does torch's own layers,
    instead of tracing through their forward. Returns the handler, so it can be used as a decorator's result.
    """
    if not handler.types:
        raise ValueError(f"{type(handler).__name__}.types names no module class")
    for module_type in handler.types:
        _HANDLERS[module_type] = handler
        if leaf:
            _USER_TYPES.add(module_type)
    return handler


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler of ``module``, or None when splitgrow does not know its type."""
    for cls in type(module).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    if activation_of_module(module) is not None:
        return _ACTIVATION_HANDLER
    return None


def is_registered_leaf(module: nn.Module) -> bool:
    """Whether this module is traced as one call: a user registered its type as a layer, or as an activation
    (whose registered phi, phi', phi'' would otherwise be bypassed by tracing into its forward), or it subclasses
    one of torch's transformer modules with a forward of its own (refused by name, not traced into)."""
    if isinstance(module, tuple(TRACED_FORMS)) and traced_form(module) is None:
        return True  # a subclass of torch's transformer modules with its own forward: refused as one call
    return any(cls in _USER_TYPES for cls in type(module).__mro__) or activation_of_module(module) is not None


def traced_form(module: nn.Module) -> TracedForm | None:
    """The form the tracer follows in place of ``module``'s forward (torch's transformer modules, whose own
    forward decides on a fast path with tests that cannot be traced), or None to trace or keep it as usual. A
    subclass that overrides ``forward`` or a block it calls (``_ff_block``, ...) has none: the form copies
    torch's."""
    if any(cls in _USER_TYPES for cls in type(module).__mro__):
        return None  # a handler of the user's own for this type: it is one call, as registered
    for cls in type(module).__mro__:
        if cls in TRACED_FORMS:
            same = all(getattr(type(module), name, None) is getattr(cls, name, None) for name in FORM_METHODS)
            return TRACED_FORMS[cls] if same else None
    return None


for _handler in (
    LinearHandler(),
    Conv2dHandler(),
    Conv1dHandler(),
    Conv3dHandler(),
    ConvTransposeHandler(),
    BatchNormHandler(),
    InstanceNormHandler(),
    PerChannelHandler(),
    PReLUHandler(),
    RefusedHandler(),
):
    register_layer(_handler, leaf=False)
