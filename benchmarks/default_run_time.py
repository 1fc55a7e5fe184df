"""Wall time of the default `splitgrow run rbf` (and `splitgrow run mmd`) on this machine.

A benchmark, not a test: it runs the real command line in a subprocess, as a user would, a few times, and
reports the median with the machine's description. Results go to benchmarks/results/default_run_time.json.

    python benchmarks/default_run_time.py [--repeats 3] [--experiments rbf mmd]
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

import torch


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
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
        },
        "runs": {},
    }
    for experiment in args.experiments:
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "-m", "splitgrow.cli", "run", experiment, "--out", out, "--quiet"]
                times.append(time_command(command))
        report["runs"][experiment] = {
            "command": f"splitgrow run {experiment}",
            "seconds": times,
            "median_seconds": statistics.median(times),
        }
        print(f"splitgrow run {experiment}: median {statistics.median(times):.1f} s over {len(times)} runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
