"""What every dataset loader shares: the error type and the default cache folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import SplitgrowError

#: where downloaded datasets go when no --data-root is given
CACHE = Path.home() / ".cache" / "splitgrow"


class DataError(SplitgrowError):
    """A dataset file is missing, truncated or corrupt."""
