"""What the benchmark scripts share: timing that waits for the GPU, and the description of the machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from splitgrow.artifacts import run_metadata


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    device: torch.device, function: Callable, *args: Any, peaks: dict[str, int] | None = None, label: str = "", **kwargs
) -> tuple[Any, float]:
    """(result, seconds) of ``function(*args, **kwargs)``; on a GPU the call's peak memory goes to ``peaks[label]``."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda" and peaks is not None:
        peaks[label] = torch.cuda.max_memory_allocated(device)
    return result, seconds


def machine(device: torch.device) -> dict[str, Any]:
    """Versions and platform (as every splitgrow result records them), the CPU count and the device's name."""
    return {
        **run_metadata(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
