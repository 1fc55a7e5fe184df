"""Wall time of the default `splitgrow run rbf` (and `splitgrow run mmd`) on this machine.

A benchmark, not a test: it runs the real command line in a subprocess, as a user would, a few times, and
reports the median beside the machine it ran on (CPU model, cores this process may use) and the load average
before each run, since a figure measured on a busy machine says little. Results go to
benchmarks/results/default_run_time.json.

    python benchmarks/default_run_time.py [--repeats 3] [--experiments rbf mmd] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import cpu_model


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. under taskset or a container's limit)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }


def time_command(arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(arguments, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--experiments", nargs="+", default=["rbf", "mmd"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "default_run_time.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "runs": {}}
    where = f"{report['machine']['cpu_model']}, {report['machine']['cores']} cores"
    for experiment in args.experiments:
        times, loads = [], []
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "-m", "splitgrow.cli", "run", experiment, "--out", out, "--quiet"]
                times.append(time_command(command))
        median = statistics.median(times)
        report["runs"][experiment] = {
            "command": f"splitgrow run {experiment}",
            "seconds": times,
            "median_seconds": median,
            "load_average_1min_before": loads,
        }
        load_text = ", ".join("-" if load is None else f"{load:.2f}" for load in loads)
        print(
            f"splitgrow run {experiment}: median {median:.1f} s over {len(times)} runs on {where}"
            f" (1-minute load average before each run: {load_text})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
