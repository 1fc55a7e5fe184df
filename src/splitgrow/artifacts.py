"""Writing results so that no file is ever half-written, and recording what produced them.

Every file goes to a temporary name in its destination folder and is renamed into place (an atomic replace on
POSIX and Windows), so a killed run leaves either the old file or the new one.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is an extra: the core library does not import it
    from matplotlib.figure import Figure


def _file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp's are owner-only)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Raises:
        OSError: the folder cannot be created or written (full disk, read-only file system, no permission, a file
            in the way, ...); its ``filename`` is always the path concerned (``path`` rather than the temporary
            file), and no temporary file is left behind.
    """
    path = Path(path)
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(temporary, _file_mode())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        named = isinstance(error, OSError) and error.filename is not None
        if isinstance(error, OSError) and not (named and Path(error.filename) in (path, *path.parents)):
            # write() and fsync() on a full disk name no file, mkstemp names its temporary one: name the target
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def json_ready(data: Any) -> Any:
    """``data`` as :func:`atomic_write_json` writes it and ``json.loads`` gives it back: tuples become lists, keys
    strings, and non-finite floats null."""
    return json.loads(json.dumps(_finite_or_none(data), allow_nan=False))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write strict JSON (non-finite floats become null) atomically."""
    atomic_write_text(path, json.dumps(_finite_or_none(data), indent=1, allow_nan=False) + "\n")


def new_figure(**options: Any) -> Figure:
    """A matplotlib ``Figure(**options)`` (no pyplot, so no display is needed). matplotlib is imported here, when a
    figure is drawn, not when an experiment's module is: it takes most of a second, which every command would pay."""
    from matplotlib.figure import Figure

    return Figure(**options)


def save_figure(figure: Figure, path: Path, *, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def run_metadata() -> dict[str, Any]:
    """Versions, platform and time, recorded with every result."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    import numpy
    import scipy
    import torch

    from . import __version__

    return {
        "splitgrow": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "matplotlib": installed("matplotlib"),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "command": sys.argv,
        "utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
