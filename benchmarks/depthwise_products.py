"""Depthwise convolutions in the splitting statistics: PyTorch's grouped convolution against the tap loops.

A depthwise-separable network's splitting sites are chains (pointwise -> depthwise): every matrix-free product
runs the depthwise layer forward and both its adjoints. ``splitgrow.layers.conv`` does that with grouped
convolutions where :func:`~splitgrow.layers.conv.grouped_convolution_pays` says so (GPUs; undilated 2-D kernels on
the CPU) and with one shifted multiply-add per kernel tap elsewhere. For each model, on the same random inputs,
the whole splitting phase (statistics + LOBPCG) is timed both ways, alternating, best of ``--repeats``, side by
side in one run; the indexes of the two must agree to float32 rounding.

    python benchmarks/depthwise_products.py [--models mobilenetv1:32 dscnn:64] [--samples 512] [--device cuda]

Writes benchmarks/results/depthwise_products.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from _common import machine, timed

from splitgrow import SplittableNetwork
from splitgrow.artifacts import atomic_write_text
from splitgrow.experiments.common import markdown_table
from splitgrow.layers import conv
from splitgrow.models import build_model, uniform_widths

RESULTS = Path(__file__).resolve().parent / "results" / "depthwise_products"


def measure(name: str, width: int, samples: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(name, **uniform_widths(name, width)).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(model.example_input(samples).shape, generator=generator).to(device)
    with torch.no_grad():
        classes = model(inputs[:1].to(device)).shape[1]
    labels = torch.randint(0, classes, (samples,), generator=generator).to(device)
    batches = [(inputs[i : i + 64], labels[i : i + 64]) for i in range(0, samples, 64)]
    net = SplittableNetwork(model, inputs[:2])
    chains = [site.name for site in net.graph.splittable_sites() if site.chain is not None]

    def phase():
        return net.splitting(batches, F.cross_entropy, sites=chains, solver="lobpcg", tolerance=1e-3, seed=0)

    seconds = {"grouped": float("inf"), "taps": float("inf")}
    indexes = {}
    for _ in range(repeats):
        for way in ("taps", "grouped"):
            with mock.patch.object(conv, "grouped_convolution_pays", lambda module, tensor, way=way: way == "grouped"):
                results, elapsed = timed(device, phase)
            seconds[way] = min(seconds[way], elapsed)
            indexes[way] = torch.cat([results[site].indexes.cpu() for site in chains])
    scale = indexes["taps"].abs().max().item()
    return {
        "model": name,
        "width": width,
        "samples": samples,
        "chain_sites": len(chains),
        "seconds": seconds,
        "speedup": seconds["taps"] / seconds["grouped"],
        "largest_index_difference": (indexes["taps"] - indexes["grouped"]).abs().max().item() / scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv1:32", "dscnn:64"], help="name:width")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.samples, args.repeats = ["mobilenetv1:2"], 16, 1
    device = torch.device(args.device)
    rows = []
    for spec in args.models:
        name, width = spec.split(":")
        rows.append(measure(name, int(width), args.samples, args.repeats, device))
        print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine(device), "settings": vars(args) | {"out": str(args.out)}, "models": rows}
    table = markdown_table(
        ["model", "width", "samples", "chain sites", "tap loops, s", "grouped, s", "speed-up", "index difference"],
        [
            [
                r["model"],
                r["width"],
                r["samples"],
                r["chain_sites"],
                f"{r['seconds']['taps']:.2f}",
                f"{r['seconds']['grouped']:.2f}",
                f"{r['speedup']:.1f}x",
                f"{r['largest_index_difference']:.1e}",
            ]
            for r in rows
        ],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    summary = (
        f"Splitting phase of the chain sites (statistics + LOBPCG at tolerance 1e-3) on {report['machine']['device']}, "
        f"torch {torch.__version__}; "
        "best of the repeats, alternating; index difference: largest |taps - grouped| over the largest |index|.\n\n"
    )
    atomic_write_text(args.out.with_suffix(".md"), summary + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
