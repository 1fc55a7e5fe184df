"""Type checks for settings given in code or read from YAML: a value of the wrong type (None, a string, a bool)
must be a :class:`~splitgrow.errors.ConfigError` naming the setting, not a TypeError from a comparison deep inside."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (a numpy one too; not a bool, not None, not a string)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, least: int) -> bool:
    """Whether ``value`` is an integer (a numpy one too; not a bool) >= ``least``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least
