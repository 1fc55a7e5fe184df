"""The activation table: which modules, functions and tensor methods are elementwise activations, and their
:class:`~splitgrow.activations.Activation` (phi, phi', phi'', kinks, and so whether a prediction through them is
exact), read off the module's or the call's own settings (Softplus' beta and threshold, GELU's approximation, ...).

Register another activation module with :func:`register_activation`::

    register_activation(MyAct, lambda module: Activation("myact", phi, dphi, d2phi))
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import activations as act
from ..activations import Activation

ModuleFactory = Callable[[nn.Module], Activation]
CallFactory = Callable[[tuple, dict], Activation]


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    """A call's argument by position (counting the tensor as 0) or keyword."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


_MODULES: dict[type[nn.Module], ModuleFactory] = {
    nn.Softplus: lambda m: act.softplus(float(m.beta), float(m.threshold)),
    nn.Sigmoid: lambda m: act.sigmoid(),
    nn.Tanh: lambda m: act.tanh(),
    nn.SiLU: lambda m: act.silu(),
    nn.GELU: lambda m: act.gelu(m.approximate),
    nn.ELU: lambda m: act.elu(float(m.alpha)),
    nn.Mish: lambda m: act.mish(),
    nn.ReLU: lambda m: act.relu(),
    nn.ReLU6: lambda m: act.hardtanh(0.0, 6.0),
    nn.Hardtanh: lambda m: act.hardtanh(float(m.min_val), float(m.max_val)),
    nn.LeakyReLU: lambda m: act.leaky_relu(float(m.negative_slope)),
    nn.Hardswish: lambda m: act.hardswish(),
    nn.Hardsigmoid: lambda m: act.hardsigmoid(),
}

_FUNCTIONS: dict[Callable, CallFactory] = {
    F.softplus: lambda a, k: act.softplus(
        float(_argument(a, k, 1, "beta", 1.0)), float(_argument(a, k, 2, "threshold", 20.0))
    ),
    torch.sigmoid: lambda a, k: act.sigmoid(),
    F.sigmoid: lambda a, k: act.sigmoid(),
    torch.tanh: lambda a, k: act.tanh(),
    F.tanh: lambda a, k: act.tanh(),
    F.silu: lambda a, k: act.silu(),
    F.gelu: lambda a, k: act.gelu(_argument(a, k, 1, "approximate", "none")),
    F.elu: lambda a, k: act.elu(float(_argument(a, k, 1, "alpha", 1.0))),
    F.mish: lambda a, k: act.mish(),
    torch.exp: lambda a, k: act.exponential(),
    torch.sin: lambda a, k: act.sine(),
    torch.cos: lambda a, k: act.cosine(),
    F.relu: lambda a, k: act.relu(),
    torch.relu: lambda a, k: act.relu(),
    F.relu6: lambda a, k: act.hardtanh(0.0, 6.0),
    F.hardtanh: lambda a, k: act.hardtanh(
        float(_argument(a, k, 1, "min_val", -1.0)), float(_argument(a, k, 2, "max_val", 1.0))
    ),
    F.leaky_relu: lambda a, k: act.leaky_relu(float(_argument(a, k, 1, "negative_slope", 0.01))),
    F.hardswish: lambda a, k: act.hardswish(),
    F.hardsigmoid: lambda a, k: act.hardsigmoid(),
}

_METHODS: dict[str, CallFactory] = {
    "sigmoid": lambda a, k: act.sigmoid(),
    "tanh": lambda a, k: act.tanh(),
    "exp": lambda a, k: act.exponential(),
    "relu": lambda a, k: act.relu(),
    "sigmoid_": lambda a, k: act.sigmoid(),
    "tanh_": lambda a, k: act.tanh(),
    "relu_": lambda a, k: act.relu(),
}

#: elementwise operations that keep every channel to itself but are not activations of a neuron
_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def register_activation(module_type: type[nn.Module], factory: ModuleFactory) -> None:
    """Teach splitgrow an elementwise activation module: ``factory(module)`` returns its
    :class:`~splitgrow.activations.Activation` (with phi'' and its kinks)."""
    _MODULES[module_type] = factory


def activation_of_module(module: nn.Module) -> Activation | None:
    """The activation an elementwise activation module computes, or None if it is not in the table."""
    for cls in type(module).__mro__:
        if cls in _MODULES:
            return _MODULES[cls](module)
    return None


def activation_of_call(op: str, target: Any, args: tuple, kwargs: dict) -> Activation | None:
    """The activation a traced call computes (``op`` is fx's 'call_function' or 'call_method'), or None."""
    if op == "call_function" and target in _FUNCTIONS:
        return _FUNCTIONS[target](args, kwargs)
    if op == "call_method" and target in _METHODS:
        return _METHODS[target](args, kwargs)
    return None


def modifies_input(op: str, target: Any, kwargs: dict, module: nn.Module | None = None) -> bool:
    """Whether a traced call overwrites its input tensor (an in-place module, method or function)."""
    if module is not None:
        return bool(getattr(module, "inplace", False))
    if kwargs.get("inplace", False):
        return True
    if op == "call_method":
        return isinstance(target, str) and target.endswith("_") and not target.startswith("_")
    return target in _IN_PLACE_OPERATORS
