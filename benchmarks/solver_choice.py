"""Which eigensolver a whole splitting phase should use: dense against matrix-free LOBPCG, and what ``auto`` picks.

For each model and uniform width (one input channel, random weights), the splitting indexes of every site on the
same Fashion-MNIST images (the Debian package; random images of that shape with ``--random-data``), timed with
``solver="dense"``, ``"lobpcg"`` and ``"auto"`` side by side in one run, with the top-10% overlap of the matrix-free
selection with the dense one. ``auto``'s rule (``AUTO_DENSE_DIM`` in :mod:`splitgrow.statistics.splitting`) comes
from these timings.

    python benchmarks/solver_choice.py [--models vgg19:4 vgg19:8 mobilenetv1:8] [--samples 1024] [--quick]

Writes benchmarks/results/solver_choice.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import fashion_mnist_batches, machine, timed

from splitgrow import SplittableNetwork
from splitgrow.artifacts import atomic_write_text
from splitgrow.experiments.common import markdown_table
from splitgrow.models import build_model, uniform_widths
from splitgrow.selection import select_splits

RESULTS = Path(__file__).resolve().parent / "results" / "solver_choice"
SOLVERS = ("dense", "lobpcg", "auto")


def _batches(samples: int, random_data: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not random_data:
        return fashion_mnist_batches(samples, 64)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(samples, 1, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    return [(images[i : i + 64], labels[i : i + 64]) for i in range(0, samples, 64)]


def measure(name: str, width: int, batches: list, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = {**uniform_widths(name, width), "in_channels": 1}
    model = build_model(name, **config).to(device).eval()
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    net = SplittableNetwork(model, batches[0][0][:2])
    seconds, chosen, picked = {}, {}, {}
    top = max(1, round(0.1 * net.neurons()))
    for solver in SOLVERS:
        results, seconds[solver] = timed(device, net.splitting, batches, F.cross_entropy, solver=solver)
        chosen[solver] = {(r.site, r.channel) for r in select_splits(results, top, graph=net.graph)}
        picked[solver] = sorted({result.solver for result in results.values()})
    return {
        "model": name,
        "width": width,
        "largest_d": max(site.neuron_dim for site in net.graph.sites.values()),
        "seconds": seconds,
        "auto_picked": picked["auto"],
        "lobpcg_overlap_with_dense": len(chosen["lobpcg"] & chosen["dense"]) / max(1, len(chosen["dense"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg19:4", "vgg19:8", "mobilenetv1:8"], help="MODEL:WIDTH")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-data", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.samples, args.random_data = ["vgg19:2", "mobilenetv1:2"], 16, True
    device = torch.device(args.device)
    batches = _batches(args.samples, args.random_data)
    rows = []
    for spec in args.models:
        name, width = spec.split(":")
        rows.append(measure(name, int(width), batches, device))
    table = markdown_table(
        ["model", "width", "largest d", "dense s", "lobpcg s", "auto s", "auto picked", "top-10% overlap"],
        [
            [
                r["model"],
                r["width"],
                r["largest_d"],
                f"{r['seconds']['dense']:.2f}",
                f"{r['seconds']['lobpcg']:.2f}",
                f"{r['seconds']['auto']:.2f}",
                "+".join(r["auto_picked"]),
                f"{r['lobpcg_overlap_with_dense']:.0%}",
            ]
            for r in rows
        ],
    )
    report = {"machine": machine(device), "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(table)


if __name__ == "__main__":
    main()
