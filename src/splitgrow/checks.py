"""Type checks for settings given in code or read from YAML: a value of the wrong type (None, a string, a bool)
must be a :class:`~splitgrow.errors.ConfigError` naming the setting, not a TypeError from a comparison deep inside."""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import nn

from .errors import ConfigError

#: the largest split step size: the predicted loss change is eps^2 / 2 times an index, and the square of a float
#: above 1.3e154 overflows (an OverflowError deep in a stage, not a message)
MAX_STEP_SIZE = 1e150


def check_model_type(model: Any) -> None:
    """Refuse (ConfigError) a model that is not a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"the model must be a torch.nn.Module, got {type(model).__name__}")


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (a numpy one too; not a bool, not None, not a string; not an integer
    too large for a float)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def is_step_size(value: Any) -> bool:
    """Whether ``value`` is a split step size epsilon: a number in [0, :data:`MAX_STEP_SIZE`]."""
    return is_number(value) and 0 <= value <= MAX_STEP_SIZE


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (a numpy one too; not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_count(value: Any, least: int) -> bool:
    """Whether ``value`` is an integer (a numpy one too; not a bool) >= ``least``."""
    return is_integer(value) and value >= least
