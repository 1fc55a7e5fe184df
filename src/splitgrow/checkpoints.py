"""Checkpoints of long runs: progress and results as JSON, tensors as a weights-only torch file, both written
atomically, so that a killed run resumes from its last checkpoint and never reads a half-written one.

A checkpoint that cannot be used (cut short, emptied, overwritten by something else, edited by hand, or from another
program) is a :class:`~splitgrow.errors.CheckpointError` saying so, never a silent fresh start or a traceback:
resuming must either continue the run or refuse."""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .artifacts import atomic_write_bytes, atomic_write_json, json_ready
from .errors import CheckpointError
from .parallel import is_main

#: the key of ``checkpoint.json`` that holds the digest of the rest of the progress
_DIGEST = "sha256"


class Checkpoint:
    """The state of a run, written atomically after every epoch: ``checkpoint.json`` (progress and results)
    and ``checkpoint.pt`` (tensors of the task in progress).

    ``progress`` holds ``completed`` (results by task name), ``current`` (None, or a mapping whose ``task`` names
    the task in progress) and anything else the run records. The tensors of the task in progress carry its name
    under ``"task"``, which ties ``checkpoint.pt`` to ``checkpoint.json``. ``checkpoint.json`` also records a SHA-256
    digest of the progress: the runs read its contents without checking their every type, so one changed since it
    was written (by hand, or by a damaged disk) is refused as a whole.

    Args:
        folder: where the two files are.
        identity: what the run is (JSON-ready: e.g. its experiment, seed and settings), recorded in
            ``checkpoint.json``; :meth:`load` refuses a checkpoint that records another identity, so that a run never
            continues from the state of another experiment, seed or configuration.
    """

    def __init__(self, folder: Path, identity: dict[str, Any] | None = None) -> None:
        self.folder = folder
        # as JSON gives it back (tuples become lists), to compare with the recorded one
        self.identity = None if identity is None else json.loads(json.dumps(identity))
        self.progress: dict[str, Any] = {"completed": {}, "current": None}
        self._session_started = time.perf_counter()
        self._earlier_sessions_s = 0.0

    @property
    def _fix(self) -> str:
        return f"delete {self.folder} to run this seed again from its start (the other seeds are kept by --resume)"

    def elapsed(self) -> float:
        """Seconds of computation of the run so far, over every session that worked on it."""
        return self._earlier_sessions_s + time.perf_counter() - self._session_started

    def load(self) -> bool:
        """Read ``checkpoint.json``; False when there is none (the run had not reached its first checkpoint).

        Raises:
            CheckpointError: the file is not valid JSON, not the progress of a run, changed since it was written (its
                digest disagrees), or the progress of another run (another identity).
        """
        path = self.folder / "checkpoint.json"
        if not path.is_file():
            return False
        try:
            progress = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"corrupt checkpoint, not valid JSON: {error}", path, self._fix) from None
        except RecursionError:
            raise CheckpointError("corrupt checkpoint, lists nested too deeply", path, self._fix) from None
        current = progress.get("current") if isinstance(progress, dict) else None
        elapsed = progress.get("elapsed_s", 0.0) if isinstance(progress, dict) else None
        if (
            not isinstance(progress, dict)
            or not isinstance(progress.get("completed"), dict)
            or not (current is None or (isinstance(current, dict) and isinstance(current.get("task"), str)))
            or not (isinstance(elapsed, (int, float)) and math.isfinite(elapsed))
        ):
            found = type(progress).__name__ if not isinstance(progress, dict) else "a mapping of other keys"
            raise CheckpointError(
                f"not the progress of a splitgrow run (found {found}, expected completed tasks and the current one)",
                path,
                self._fix,
            )
        recorded_digest = progress.pop(_DIGEST, None)
        # a checkpoint without a digest (written before digests were recorded) cannot be checked and is accepted
        if recorded_digest is not None and recorded_digest != _digest(progress):
            raise CheckpointError(
                "checkpoint changed since splitgrow wrote it (edited by hand, or damaged): its contents disagree "
                "with their SHA-256 digest",
                path,
                f"{self._fix}, or run again without --resume into another --out",
            )
        self._check_identity(progress.get("identity"), path)
        self.progress = progress
        self._earlier_sessions_s = float(elapsed)
        return True

    def _check_identity(self, recorded: Any, path: Path) -> None:
        """Refuse the progress of another run. A checkpoint without an identity (written before identities were
        recorded) cannot be checked and is accepted."""
        if recorded is None or self.identity is None or recorded == self.identity:
            return
        if not isinstance(recorded, dict):
            raise CheckpointError(f"foreign checkpoint: it records the run {recorded!r}", path, self._fix)
        keys = list(dict.fromkeys([*self.identity, *recorded]))
        # what differs at the top (the experiment, the seed) says it all; otherwise the settings that differ
        differences = [
            f"{key}: {recorded.get(key)!r}, this run {self.identity.get(key)!r}"
            for key in keys
            if recorded.get(key) != self.identity.get(key)
            and not (isinstance(recorded.get(key), dict) and isinstance(self.identity.get(key), dict))
        ]
        if not differences:
            for key in keys:
                mine, theirs = self.identity.get(key), recorded.get(key)
                if isinstance(mine, dict) and isinstance(theirs, dict):
                    differences += [
                        f"{name}: {theirs.get(name)!r}, this run {mine.get(name)!r}"
                        for name in dict.fromkeys([*theirs, *mine])
                        if theirs.get(name) != mine.get(name)
                    ]
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise CheckpointError(
            f"checkpoint of another run ({shown})", path, f"resume with the settings of the run, or {self._fix}"
        )

    def tensors(self) -> dict[str, Any] | None:
        """The tensors of the task in progress, or None when no task is in progress.

        Raises:
            CheckpointError: a task is in progress but ``checkpoint.pt`` is missing, cut short, not a weights-only
                torch file, or holds something other than that task's tensors.
        """
        current = self.progress.get("current")
        if current is None:
            return None
        task = current["task"]
        path = self.folder / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"missing checkpoint of the task in progress, {task!r}", path, self._fix)
        tensors = load_tensors(path, self._fix)
        if not isinstance(tensors, dict) or tensors.get("task") != task:
            found = f"a {type(tensors).__name__}" if not isinstance(tensors, dict) else f"task {tensors.get('task')!r}"
            raise CheckpointError(
                f"foreign checkpoint: it holds {found}, not the tensors of the task in progress, {task!r}",
                path,
                self._fix,
            )
        return tensors

    def save(self, tensors: dict[str, Any] | None) -> None:
        """Write ``tensors`` (if given) and then the progress, each atomically (rank 0 alone in a data-parallel
        run: every process holds the same state)."""
        if not is_main():
            return
        if tensors is not None:
            buffer = io.BytesIO()
            torch.save(tensors, buffer)
            atomic_write_bytes(self.folder / "checkpoint.pt", buffer.getvalue())
        if self.identity is not None:
            self.progress["identity"] = self.identity
        self.progress["elapsed_s"] = self.elapsed()
        atomic_write_json(self.folder / "checkpoint.json", {**self.progress, _DIGEST: _digest(self.progress)})


def _digest(progress: dict[str, Any]) -> str:
    """SHA-256 of the progress as JSON gives it back (tuples as lists, keys as strings, sorted), so that the progress
    saved and the one read from its file agree. The identity is left out: :meth:`Checkpoint.load` compares it with
    the run's own, and a checkpoint without one (written before identities were recorded) is accepted."""
    body = {key: value for key, value in progress.items() if key != "identity"}
    return hashlib.sha256(json.dumps(json_ready(body), sort_keys=True).encode()).hexdigest()


def damaged_record(stream: BinaryIO) -> str | None:
    """The first record of a torch zip file whose bytes fail their CRC-32 (torch.load reads damaged tensor bytes
    without complaint), or None; a file that is no zip archive is left to torch.load to judge. Rewinds the stream."""
    try:
        if not zipfile.is_zipfile(stream):
            return None
        stream.seek(0)
        with zipfile.ZipFile(stream) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return None  # a damaged directory: torch.load refuses it, with the message below
    finally:
        stream.seek(0)


def load_tensors(path: Path, fix: str = "delete it to start again") -> Any:
    """A weights-only torch file, or a one-line CheckpointError saying it is empty, cut short or not a torch file."""
    path = Path(path)
    with path.open("rb") as stream:  # a file that cannot be opened is the file system's error, reported as such
        damaged = damaged_record(stream)
        if damaged is not None:
            raise CheckpointError(
                f"corrupt checkpoint: the bytes of its record '{damaged}' do not match their checksum", path, fix
            )
        try:
            return torch.load(stream, map_location="cpu", weights_only=True)
        except Exception:  # torch reports damaged bytes with many types (OSError, EOFError, UnpicklingError, ...)
            size = path.stat().st_size
            state = f"cut short or not a torch file ({size:,} bytes)" if size else "empty (0 bytes)"
            raise CheckpointError(f"corrupt checkpoint: {state}", path, fix) from None
