"""Cost of the splitting phase on the zoo models, against one training epoch over the same samples.

For each model at a small width: its sites and neurons, the time to compute every splitting index over N samples
with the dense solver (hook statistics accumulated in float64, batched eigh) and with the matrix-free one
(statistics cached in float32, LOBPCG at tolerance 1e-3), and the time of one training epoch (SGD with Nesterov
momentum, batch 64) over the same N samples, measured side by side in one run. Random inputs of the model's shape
are enough for timing. Writes JSON and a markdown table.

    python benchmarks/zoo_splitting_cost.py [--samples 1024] [--width 16] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine as describe_machine
from _common import timed

from splitgrow.experiments.common import markdown_table
from splitgrow.models import build_model, uniform_widths
from splitgrow.network import SplittableNetwork

MODELS = ["mlp", "vgg19", "mobilenetv1", "dscnn", "resnet", "concat"]


def one_epoch(model, batches, device) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()

    def epoch() -> None:
        for inputs, targets in batches:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()

    return timed(device, epoch)[1]


def splitting_phase(net, batches, device, solver) -> float:
    return timed(device, net.splitting, batches, F.cross_entropy, solver=solver)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "zoo_splitting_cost")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows, report = [], []
    for name in args.models:
        model = build_model(name, **uniform_widths(name, args.width)).to(device)
        example = model.example_input(args.samples)
        classes = model.config()["num_classes"]
        inputs = example.to(device)
        targets = torch.randint(0, classes, (args.samples,), device=device)
        batches = [
            (inputs[i : i + args.batch_size], targets[i : i + args.batch_size])
            for i in range(0, args.samples, args.batch_size)
        ]
        net = SplittableNetwork(model, inputs[:2])
        one_epoch(model, batches[:1], device)  # warm-up
        splitting_phase(net, batches[:1], device, "lobpcg")
        runs: dict[str, list[float]] = {"epoch": [], "dense": [], "lobpcg": []}
        for _ in range(args.repeats):  # alternate, so that all see the same machine state
            runs["epoch"].append(one_epoch(model, batches, device))
            runs["dense"].append(splitting_phase(net, batches, device, "dense"))
            runs["lobpcg"].append(splitting_phase(net, batches, device, "lobpcg"))
        epoch, dense, free = (statistics.median(runs[key]) for key in ("epoch", "dense", "lobpcg"))
        entry = {
            "model": name,
            "width": args.width,
            "sites": len(net.sites),
            "neurons": sum(net.widths().values()),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dense_seconds": dense,
            "matrix_free_seconds": free,
            "epoch_seconds": epoch,
            "dense_ratio": dense / epoch,
            "matrix_free_ratio": free / epoch,
            "runs": runs,
        }
        report.append(entry)
        rows.append(
            [
                name,
                len(net.sites),
                entry["neurons"],
                f"{entry['parameters']:,}",
                f"{epoch:.3g}",
                f"{dense:.3g}",
                f"{dense / epoch:.1f}",
                f"{free:.3g}",
                f"{free / epoch:.1f}",
            ]
        )
        print(f"{name}: epoch {epoch:.2f} s, dense {dense:.2f} s, matrix-free {free:.2f} s", flush=True)
    machine = describe_machine(device)
    headers = [
        "model",
        "sites",
        "neurons",
        "parameters",
        "one epoch s",
        "all indexes, dense s",
        "dense / epoch",
        "all indexes, matrix-free s",
        "matrix-free / epoch",
    ]
    table = markdown_table(headers, rows)
    title = f"{args.samples} samples, batch {args.batch_size}, width {args.width}, {machine['device']}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "settings": vars(args) | {"out": str(args.out)}, "results": report}, indent=1)
        + "\n"
    )
    args.out.with_suffix(".md").write_text(f"{title}\n\n{table}\n")
    print(f"\n{title}\n\n{table}")


if __name__ == "__main__":
    main()
