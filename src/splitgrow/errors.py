"""Errors that carry a message meant for the user, not a traceback.

The command line turns every :class:`SplitgrowError` into one line on stderr and exit code 2; anything else
escaping is a bug in splitgrow and keeps its traceback.
"""

from __future__ import annotations


class SplitgrowError(Exception):
    """Base class of the errors whose message tells the user what is wrong and how to fix it."""


class ConfigError(SplitgrowError, ValueError):
    """A configuration file or value is missing, malformed or out of range."""


class DivergenceError(SplitgrowError, ArithmeticError):
    """Training produced a loss that is NaN or infinite."""
