"""Errors that carry a message meant for the user, not a traceback.

Every message has the form ``<what is wrong> (<where>): <how to fix it>``. The command line turns every
:class:`SplitgrowError` (and every ``OSError`` from the file system) into one line on stderr and exit code 2;
anything else escaping is a bug in splitgrow and keeps its traceback.
"""

from __future__ import annotations


class SplitgrowError(Exception):
    """Base class of the errors whose message tells the user what is wrong and how to fix it.

    Args:
        problem: what is wrong (or, alone, the whole message).
        where: the file, folder, setting or option concerned.
        fix: what the user can do about it.
    """

    def __init__(self, problem: str, where: object | None = None, fix: str | None = None) -> None:
        message = problem if where is None else f"{problem} ({where})"
        super().__init__(message if fix is None else f"{message}: {fix}")
        self.problem = problem
        self.where = where
        self.fix = fix


class ConfigError(SplitgrowError, ValueError):
    """A configuration file or value is missing, malformed or out of range."""


class DivergenceError(SplitgrowError, ArithmeticError):
    """Training produced a loss that is NaN or infinite."""


class CheckpointError(SplitgrowError):
    """A checkpoint cannot be read, is truncated, or is not one that splitgrow wrote for this run."""


class RunFolderError(SplitgrowError):
    """An output folder holds a run of other settings, or results that cannot be reported together."""


class SplitgrowWarning(UserWarning):
    """Something the user should know (a layer that will not grow, a surrogate in use), that is not an error."""
