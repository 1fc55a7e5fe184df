"""How splitgrow sees each layer type: one :class:`LayerHandler` per type, and the activation table.

* :mod:`.base`: the handler interface (graph, surgery, cost, statistics);
* :mod:`.linear`, :mod:`.conv`, :mod:`.conv1d`, :mod:`.conv3d`, :mod:`.conv_transpose`, :mod:`.normalization`,
  :mod:`.instance_norm`, :mod:`.per_channel`, :mod:`.prelu`, :mod:`.refused`: the built-in handlers, one idea each;
* :mod:`.transformer`: the forms the tracer follows through torch's transformer modules;
* :mod:`.activations`: activation modules, functions and methods with phi, phi', phi'' and their exactness;
* :mod:`.registry`: lookup by module type, and :func:`register_layer` for your own layers.
"""

from .activations import activation_of_call, activation_of_module, register_activation
from .base import (
    LINEAR,
    PER_CHANNEL,
    PIECEWISE_LINEAR,
    PRODUCE,
    REFUSE,
    SMOOTH,
    ChannelMap,
    LayerHandler,
    NeuronHandler,
)
from .registry import handler_for, is_registered_leaf, register_layer, traced_form

__all__ = [
    "LINEAR",
    "PER_CHANNEL",
    "PIECEWISE_LINEAR",
    "PRODUCE",
    "REFUSE",
    "SMOOTH",
    "ChannelMap",
    "LayerHandler",
    "NeuronHandler",
    "activation_of_call",
    "activation_of_module",
    "handler_for",
    "is_registered_leaf",
    "register_activation",
    "register_layer",
    "traced_form",
]
