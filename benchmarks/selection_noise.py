"""How noisy is the top-10% selection itself? Selections on two disjoint halves of the training images (issue 9).

The image benchmarks compare cheap phases with a reference selection on all training images; that reference is an
estimate too. Here each model is trained briefly on real Fashion-MNIST (as in benchmarks/adaptive_statistics.py,
same seed and settings), and the top 10% of its neurons by splitting index is selected from statistics on each
half of the training images (disjoint, matrix-free LOBPCG). Their overlap says how far any selection from that many
samples can be trusted: where two disjoint halves disagree on a fifth of the neurons, no small sample can agree
with a full-data reference on 95% of them.

    python benchmarks/selection_noise.py [--models vgg19 mobilenetv1] [--train-images 8000]

Writes benchmarks/results/selection_noise.json and .md.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    add_training_arguments,
    briefly_trained,
    fashion_mnist_batches,
    machine_line,
    quick_training,
    run_models,
    timed,
)

from splitgrow.experiments.common import markdown_table
from splitgrow.network import SplittableNetwork
from splitgrow.statistics.adaptive import top_fraction


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    training = fashion_mnist_batches(args.train_images, args.batch_size, seed=args.seed, device=device)
    model = briefly_trained(name, args.width, training, args.epochs, seed=args.seed, device=device)
    net = SplittableNetwork(model, training[0][0][:2])
    select = top_fraction(args.top_fraction)

    def selection(batches: list) -> set[tuple[str, int]]:
        results = net.splitting(batches, F.cross_entropy, solver="lobpcg", tolerance=args.tolerance, seed=args.seed)
        return {(site, neuron) for site, neuron, _ in select(results)}

    middle = len(training) // 2
    halves = [training[:middle], training[middle:]]
    (first, first_seconds), (second, second_seconds) = (timed(device, selection, half) for half in halves)
    return {
        "model": name,
        "width": args.width,
        "neurons": net.neurons(),
        "top_m": len(first),
        "half_samples": [sum(len(batch[1]) for batch in half) for half in halves],
        "seconds": [first_seconds, second_seconds],
        "overlap": len(first & second) / max(1, len(first)),
    }


def report_markdown(report: dict[str, Any]) -> str:
    rows = [
        [
            m["model"],
            m["width"],
            f"{m['neurons']} / {m['top_m']}",
            " + ".join(str(samples) for samples in m["half_samples"]),
            f"{m['overlap']:.0%}",
            " + ".join(f"{seconds:.0f}" for seconds in m["seconds"]),
        ]
        for m in report["models"]
    ]
    table = markdown_table(
        ["model", "width", "neurons / top 10%", "images in each half", "overlap of the two selections", "s"], rows
    )
    settings = report["settings"]
    return (
        f"{machine_line(report)}\nTraining: {settings['epochs']} epochs on {settings['train_images']} real "
        f"Fashion-MNIST images (seed {settings['seed']}); each half's selection: LOBPCG at tolerance "
        f"{settings['tolerance']}.\n\n{table}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser, "selection_noise")  # --train-images: split into two disjoint halves
    parser.add_argument("--tolerance", type=float, default=1e-2, help="LOBPCG's")
    parser.add_argument("--top-fraction", type=float, default=0.1)
    args = parser.parse_args()
    if args.quick:
        quick_training(args)
    run_models(args, lambda name, device: measure(name, args, device), report_markdown, lambda result: result)


if __name__ == "__main__":
    main()
