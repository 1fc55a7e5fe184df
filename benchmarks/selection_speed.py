"""How long selection takes: choosing 50% of MobileNetV1's coupling groups by their splitting indexes.

MobileNetV1 (width 32: every layer 32 channels, 14 sites, 448 coupling groups) gets its splitting statistics on a few
batches of random 32x32 images (solver ``auto``); then ``SplittableNetwork.select`` and ``select_splits`` choose
ceil(fraction * neurons) of the groups with the most negative indexes below 0, each timed ``--repeats`` times (the
median is reported). Issue 8 measured 72 s for this choice when the chosen set was re-planned for every candidate;
it is linear in the number of candidates now. The machine (CPU model, cores, load average) is part of the result:
on a shared machine the times are upper bounds. ``--quick`` (width 4, 16x16 images) is a smoke test.

    nice -n 5 python benchmarks/selection_speed.py [--width 32] [--fraction 0.5] [--repeats 3] [--quick]

Writes benchmarks/results/selection_speed.json and .md (atomically).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import cpu_model
from _common import machine as describe_machine

from splitgrow import SplitgrowWarning
from splitgrow.artifacts import atomic_write_json, atomic_write_text
from splitgrow.experiments.common import markdown_table
from splitgrow.models import build_model, uniform_widths
from splitgrow.network import SplittableNetwork
from splitgrow.selection import select_splits


def median_seconds(function: Callable[[], Any], repeats: int) -> tuple[Any, float, list[float]]:
    """(the last result, the median time, every time) of ``repeats`` calls of ``function()``."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="MobileNetV1's width (every layer)")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the coupling groups to choose")
    parser.add_argument("--batches", type=int, default=2, help="batches of random images for the statistics")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (one: on a shared CPU, more threads spin against others)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "selection_speed")
    args = parser.parse_args()
    if args.quick:
        args.width, args.image_size, args.batches, args.batch_size, args.repeats = 4, 16, 1, 4, 1

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    widths = uniform_widths("mobilenetv1", args.width)
    model = build_model("mobilenetv1", **widths, image_size=args.image_size).eval()
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batches * args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 10, (images.shape[0],), generator=generator)
    batches = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, images.shape[0], args.batch_size)
    ]
    net = SplittableNetwork(model, images[:2])
    neurons = net.neurons()
    count = max(1, math.ceil(args.fraction * neurons))

    with warnings.catch_warnings():
        # the classifier (a model output) is not a site: recorded in the results' "skipped", not printed each time
        warnings.simplefilter("ignore", SplitgrowWarning)
        started = time.perf_counter()
        results = net.splitting(batches, F.cross_entropy, solver="auto")
        statistics_seconds = time.perf_counter() - started
        selection, network_seconds, network_times = median_seconds(
            lambda: net.select(results, count, threshold=0.0), args.repeats
        )
        direct, direct_seconds, direct_times = median_seconds(
            lambda: select_splits(results, count, 0.0, graph=net.graph), args.repeats
        )
    negative = sum(int((result.indexes < 0).sum()) for result in results.values())
    # the two entry points make the same choice, most negative index first
    chosen = [(request.site, request.channel) for request in selection]
    same_choice = chosen == [(request.site, request.channel) for request in direct]
    indexes = [request.index for request in selection]
    ordered = all(a <= b for a, b in zip(indexes, indexes[1:]))

    load = os.getloadavg()
    machine = {**describe_machine(torch.device("cpu")), "cpu_model": cpu_model(), "load_average": list(load)}
    report = {
        "machine": machine,
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "model": {
            "architecture": "mobilenetv1",
            "width": args.width,
            "sites": len(net.sites),
            "coupling_groups": neurons,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "requested": count,
        "negative_indexes": negative,
        "chosen": len(selection),
        "same_choice": same_choice,
        "ordered": ordered,
        "statistics_seconds": statistics_seconds,
        "select_seconds_median": network_seconds,
        "select_seconds": network_times,
        "select_splits_seconds_median": direct_seconds,
        "select_splits_seconds": direct_times,
        "skipped": dict(selection.skipped),
    }
    headers = ["call", "groups", "requested", "chosen", f"median of {args.repeats} s", "every run s"]
    rows = [
        [call, neurons, count, len(selection), f"{median:.4f}", ", ".join(f"{t:.4f}" for t in times)]
        for call, median, times in (
            ("SplittableNetwork.select", network_seconds, network_times),
            ("select_splits", direct_seconds, direct_times),
        )
    ]
    title = (
        f"Selection of {args.fraction:.0%} of MobileNetV1 width {args.width}'s coupling groups "
        f"({negative} with a negative index; statistics on {images.shape[0]} random "
        f"{args.image_size}x{args.image_size} images, solver auto, {statistics_seconds:.1f} s). "
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} cores, "
        f"torch threads: {machine['torch_threads']}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        "(shared: times are upper bounds)."
    )
    table = markdown_table(headers, rows)
    atomic_write_json(args.out.with_suffix(".json"), report)
    atomic_write_text(args.out.with_suffix(".md"), f"{title}\n\n{table}\n")
    print(f"{title}\n\n{table}")


if __name__ == "__main__":
    main()
