"""Checkpoints of long runs: progress and results as JSON, tensors as a weights-only torch file, both written
atomically, so that a killed run resumes from its last checkpoint and never reads a half-written one."""

from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_write_bytes, atomic_write_json
from .errors import SplitgrowError


class Checkpoint:
    """The state of a run, written atomically after every epoch: ``checkpoint.json`` (progress and results)
    and ``checkpoint.pt`` (tensors of the task in progress)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.progress: dict[str, Any] = {"completed": {}, "current": None}
        self._session_started = time.perf_counter()
        self._earlier_sessions_s = 0.0

    def elapsed(self) -> float:
        """Seconds of computation of the run so far, over every session that worked on it."""
        return self._earlier_sessions_s + time.perf_counter() - self._session_started

    def load(self) -> bool:
        path = self.folder / "checkpoint.json"
        if not path.is_file():
            return False
        try:
            self.progress = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise SplitgrowError(f"{path} is corrupt ({error}); delete it to start the run again") from None
        self._earlier_sessions_s = float(self.progress.get("elapsed_s", 0.0))
        return True

    def tensors(self) -> dict[str, Any] | None:
        path = self.folder / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise SplitgrowError(f"{path} is corrupt ({error}); delete it to start the task again") from None

    def save(self, tensors: dict[str, Any] | None) -> None:
        if tensors is not None:
            buffer = io.BytesIO()
            torch.save(tensors, buffer)
            atomic_write_bytes(self.folder / "checkpoint.pt", buffer.getvalue())
        self.progress["elapsed_s"] = self.elapsed()
        atomic_write_json(self.folder / "checkpoint.json", self.progress)
