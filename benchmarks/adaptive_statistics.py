"""Adaptive statistics against fixed sample sizes, on real Fashion-MNIST (issue 9, item 2).

VGG19 and MobileNetV1 (one input channel, uniform width) are trained briefly on real Fashion-MNIST training
images padded to 32x32. Then, side by side in one run:

* the reference selection: the top 10% of all neurons by splitting index, from statistics on every training image
  (matrix-free LOBPCG at a tight tolerance: dense matrices cost P n d^2 per layer, hours on a CPU);
* adaptive statistics (:class:`splitgrow.statistics.adaptive.AdaptiveStatistics` with its defaults): batches in
  random order until the selection settles;
* fixed sample sizes, on disjoint draws from the training images;

each under every combination of the phase's LOBPCG tolerance (``--tolerances``) and position sampling
(``--max-positions``: a convolution's statistics read at most that many output positions per image, 0 = all).

For each: the top-10% overlap with the reference, the total predicted decrease of its selection evaluated under the
reference statistics (sum of -lambda_full over the selected neurons) against the reference selection's, the
samples used, and the phase cost (statistics + solve + selection) over the time of one training epoch of 50,000
images (an epoch over ``--epoch-images`` images timed in the same run, before and after the phases, scaled).

    python benchmarks/adaptive_statistics.py [--quick] [--models vgg19 mobilenetv1] [--train-images 8000]
        [--tolerances 1e-3 1e-2] [--max-positions 0 256]

Writes benchmarks/results/adaptive_statistics.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    Batch,
    add_training_arguments,
    briefly_trained,
    epoch_seconds_per_sample,
    fashion_mnist_batches,
    machine_line,
    quick_training,
    run_models,
    timed,
)

from splitgrow.experiments.common import markdown_table
from splitgrow.network import SplittableNetwork
from splitgrow.statistics.adaptive import AdaptiveStatistics, Selected, adaptive_splitting, top_fraction
from splitgrow.statistics.splitting import ITERATIVE_TOLERANCE, SolverOptions

EPOCH_IMAGES = 50_000  # the phase is priced in epochs over a CIFAR-sized training set


def quality(selected: Selected, reference: Selected, full_indexes: dict[tuple[str, int], float]) -> dict[str, float]:
    """Top-m overlap with the reference selection, and the predicted decrease of ``selected`` under the reference
    statistics as a fraction of the reference selection's (both sums of -lambda_full)."""
    chosen = {(site, neuron) for site, neuron, _ in selected}
    best = {(site, neuron) for site, neuron, _ in reference}
    decrease = sum(-full_indexes[key] for key in chosen)
    return {
        "overlap": len(chosen & best) / max(1, len(best)),
        "decrease_fraction": decrease / sum(-full_indexes[key] for key in best),
        "selected": len(chosen),
    }


def benchmark_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    training = fashion_mnist_batches(args.train_images, args.batch_size, seed=args.seed, device=device)
    started = time.perf_counter()
    model = briefly_trained(name, args.width, training, args.epochs, seed=args.seed, device=device)
    training_seconds = time.perf_counter() - started
    net = SplittableNetwork(model, training[0][0][:2])
    neurons = net.neurons()
    select = top_fraction(args.top_fraction)
    epoch_batches = training[: max(1, args.epoch_images // args.batch_size)]
    per_sample = [epoch_seconds_per_sample(model, epoch_batches, device)]

    def phase(batches: list[Batch], options: SolverOptions) -> tuple[Selected, Any]:
        results = net.splitting(batches, F.cross_entropy, **vars(options))
        return select(results), results

    reference_options = SolverOptions(solver="lobpcg", tolerance=args.reference_tolerance, seed=args.seed)
    (reference, full), reference_seconds = timed(device, phase, training, reference_options)
    full_indexes = {(site, n): float(v) for site, r in full.items() for n, v in enumerate(r.indexes.tolist())}
    converged = sum(int(r.converged.sum()) for r in full.values()) / neurons

    rows = []
    for tolerance, max_positions in itertools.product(args.tolerances, args.max_positions):
        options = SolverOptions(
            solver="lobpcg", tolerance=tolerance, seed=args.seed, max_positions=max_positions or None
        )
        setting = {"tolerance": tolerance, "max_positions": max_positions}
        for samples in args.sample_sizes:
            per_draw = max(1, samples // args.batch_size)
            for draw in range(min(args.draws, len(training) // per_draw)):
                batches = training[draw * per_draw : (draw + 1) * per_draw]  # disjoint draws
                (selected, _), seconds = timed(device, phase, batches, options)
                rows.append(
                    {"method": "fixed", "draw": draw, "samples": per_draw * args.batch_size, "seconds": seconds}
                    | setting
                    | quality(selected, reference, full_indexes)
                )
        for stop_tolerance, draw in itertools.product(args.adaptive_tolerances, range(args.adaptive_draws)):
            generator = torch.Generator().manual_seed(args.seed + 1 + draw)
            order = [training[i] for i in torch.randperm(len(training), generator=generator).tolist()]
            adaptive = AdaptiveStatistics(tolerance=stop_tolerance)  # otherwise the library's defaults

            def adaptive_phase(
                order: list[Batch] = order, options: SolverOptions = options, adaptive: AdaptiveStatistics = adaptive
            ) -> tuple[Selected, Any]:
                results = adaptive_splitting(
                    model, net.graph, order, select, F.cross_entropy, adaptive=adaptive, options=options
                )
                return select(results), results

            (selected, results), seconds = timed(device, adaptive_phase)
            rows.append(
                {
                    "method": "adaptive",
                    "adaptive_tolerance": stop_tolerance,
                    "draw": draw,
                    "samples": int(results.adaptive["samples"]),
                    "seconds": seconds,
                    "stop": results.adaptive["stop"],
                    "checks": results.adaptive["checks"],
                }
                | setting
                | quality(selected, reference, full_indexes)
            )
    per_sample.append(epoch_seconds_per_sample(model, epoch_batches, device))
    epoch_seconds = sum(per_sample) / len(per_sample) * EPOCH_IMAGES
    for row in rows:
        row["phase_over_epoch"] = row["seconds"] / epoch_seconds
    return {
        "model": name,
        "width": args.width,
        "neurons": neurons,
        "top_m": len(reference),
        "training_seconds": training_seconds,
        "reference_samples": len(training) * args.batch_size,
        "reference_seconds": reference_seconds,
        "reference_over_epoch": reference_seconds / epoch_seconds,
        "reference_converged_fraction": converged,
        "epoch_seconds_per_sample": per_sample,
        "epoch_seconds_50k": epoch_seconds,
        "adaptive_settings": vars(adaptive),
        "rows": rows,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and range over draws of each (setting, method, samples) — adaptive rows grouped together."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        method = f"adaptive ({row['adaptive_tolerance']:g})" if row["method"] == "adaptive" else row["method"]
        samples = 0 if row["method"] == "adaptive" else row["samples"]
        groups.setdefault((row["tolerance"], row["max_positions"], method, samples), []).append(row)
    out = []
    for (tolerance, max_positions, method, _), members in groups.items():

        def stats(key: str, members: list[dict[str, Any]] = members) -> tuple[float, float, float]:
            values = [m[key] for m in members]
            return sum(values) / len(values), min(values), max(values)

        out.append(
            {
                "tolerance": tolerance,
                "max_positions": max_positions,
                "method": method,
                "draws": len(members),
                **{key: stats(key) for key in ("samples", "overlap", "decrease_fraction", "phase_over_epoch")},
            }
        )
    return out


def report_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        machine_line(report),
        f"Training: {settings['epochs']} epochs on {settings['train_images']} real Fashion-MNIST images (seed "
        f"{settings['seed']}); reference: LOBPCG at tolerance {settings['reference_tolerance']} on all of them; "
        f"phases: LOBPCG at the tolerance shown, reading at most the positions shown of each convolution (all: "
        f"every one); adaptive: AdaptiveStatistics defaults but the stopping tolerance shown (batches of "
        f"{settings['batch_size']}).",
        "",
    ]
    for model in report["models"]:

        def cell(triple: tuple[float, float, float], fmt: str) -> str:
            mean, low, high = triple
            text = format(mean, fmt)
            return text if low == high else f"{text} ({format(low, fmt)}-{format(high, fmt)})"

        rows = [
            [
                f"{s['tolerance']:g}",
                s["max_positions"] or "all",
                s["method"],
                s["draws"],
                cell(s["samples"], ".0f"),
                cell(s["overlap"], ".0%"),
                cell(s["decrease_fraction"], ".1%"),
                cell(s["phase_over_epoch"], ".3f"),
            ]
            for s in model["summary"]
        ]
        lines += [
            f"{model['model']} width {model['width']}: {model['neurons']} neurons, top {model['top_m']}; epoch of "
            f"50k images {model['epoch_seconds_50k']:.0f} s; reference on {model['reference_samples']} images "
            f"{model['reference_seconds']:.0f} s ({model['reference_over_epoch']:.3f} epoch).",
            "",
            markdown_table(
                [
                    "tolerance",
                    "positions",
                    "statistics",
                    "draws",
                    "samples",
                    "top-10% overlap with the reference",
                    "predicted decrease / reference's",
                    "phase / epoch of 50k",
                ],
                rows,
            ),
            "",
        ]
        checks = [row for row in model["rows"] if row["method"] == "adaptive" and row.get("checks")]
        if checks:
            lines += ["Adaptive checks (samples: share of the decrease the previous check's selection keeps):", ""]
            for row in checks:
                steps = ", ".join(
                    f"{check['samples']:.0f}" + (f": {check['kept']:.1%}" if "kept" in check else "")
                    for check in row["checks"]
                )
                lines.append(
                    f"- tolerance {row['tolerance']:g}, positions {row['max_positions'] or 'all'}, stopping "
                    f"tolerance {row['adaptive_tolerance']:g}, draw {row['draw']}: {steps} ({row['stop']})"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser, "adaptive_statistics")  # the reference uses all --train-images
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=[128, 512, 1024, 2048])
    parser.add_argument("--draws", type=int, default=3, help="disjoint draws per fixed sample size, where they fit")
    parser.add_argument("--adaptive-draws", type=int, default=3, help="adaptive runs, each on its own batch order")
    parser.add_argument(
        "--adaptive-tolerances",
        type=float,
        nargs="+",
        default=[AdaptiveStatistics().tolerance],
        help="stopping tolerances of adaptive statistics (the library's default alone unless given)",
    )
    parser.add_argument(
        "--tolerances",
        type=float,
        nargs="+",
        default=[1e-3, ITERATIVE_TOLERANCE],
        help="LOBPCG tolerances of the phases",
    )
    parser.add_argument(
        "--max-positions",
        type=int,
        nargs="+",
        default=[0, 256],
        help="positions read per image of each convolution (0: all)",
    )
    parser.add_argument("--reference-tolerance", type=float, default=1e-4)
    parser.add_argument("--epoch-images", type=int, default=1024, help="images of each timed training epoch")
    parser.add_argument("--top-fraction", type=float, default=0.1)
    args = parser.parse_args()
    if args.quick:
        quick_training(args)
        args.sample_sizes, args.draws, args.adaptive_draws, args.epoch_images = [16, 32], 2, 1, 32
        args.tolerances, args.max_positions = [ITERATIVE_TOLERANCE], [0, 64]

    def measure(name: str, device: torch.device) -> dict[str, Any]:
        result = benchmark_model(name, args, device)
        return result | {"summary": summarise(result["rows"])}

    run_models(args, measure, report_markdown, lambda result: result["summary"])


if __name__ == "__main__":
    main()
