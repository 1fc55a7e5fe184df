"""What signed splitting and Firefly add to the cost of a splitting phase, measured side by side in one run.

For VGG19 and MobileNetV1 (width ``--width``) on Fashion-MNIST images (the Debian package; random images of the
same shape with ``--random-data``), briefly trained, the phase of each growth method on the same statistics
batches:

* splitting: statistics, lambda_min and v_min of every neuron (solver ``auto``), selection of 10% of the neurons;
* signed: the same with lambda_max and v_max as well (``largest=True``) and the signed ranking;
* firefly: the splitting phase plus the new-neuron candidates (``FireflyOptions`` defaults: 4 per site, 4 ascent
  steps, scores on 4 batches) and the joint ranking.

Reported: seconds of each, and the extra cost of signed and Firefly as a multiple of the plain phase (the issue's
target: at most one more phase, i.e. a ratio <= 2).

    python benchmarks/growth_methods_cost.py [--width 32] [--batches 16] [--device cuda] [--quick]

Writes benchmarks/results/growth_methods_cost.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine, timed

from splitgrow import SplittableNetwork, signed_splitting
from splitgrow.artifacts import atomic_write_text
from splitgrow.firefly import FireflyOptions, new_neuron_candidates, select_growth
from splitgrow.models import build_model, uniform_widths

RESULTS = Path(__file__).resolve().parent / "results" / "growth_methods_cost"


def _data(samples: int, batch: int, random_data: bool, generator: torch.Generator) -> list[tuple]:
    if random_data:
        images = torch.randn(samples, 1, 32, 32, generator=generator)
        labels = torch.randint(0, 10, (samples,), generator=generator)
    else:
        from splitgrow.data import load_dataset

        dataset = load_dataset("fashion-mnist", "train", None).subset(samples)
        images = F.pad(torch.as_tensor(dataset.images, dtype=torch.float32), (2, 2, 2, 2))
        images = (images - images.mean()) / images.std()
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, samples, batch)]


def _train(model: torch.nn.Module, batches: list[tuple], epochs: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    return (time.perf_counter() - started) / max(epochs, 1)


def measure(name: str, width: int, batches: list[tuple], statistics: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(name, **uniform_widths(name, width), in_channels=1).to(device)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    epoch = _train(model, batches, 1)
    net = SplittableNetwork(model, batches[0][0][:2])
    data = batches[:statistics]
    count = max(1, math.ceil(0.1 * net.neurons()))

    def plain():
        results = net.splitting(data, F.cross_entropy, solver="auto")
        return net.select(results, count)

    def signed():
        results = net.splitting(data, F.cross_entropy, solver="auto", largest=True)
        return net.select(signed_splitting(results, 3.0), count)

    def firefly():
        results = net.splitting(data, F.cross_entropy, solver="auto")
        candidates = new_neuron_candidates(model, net.graph, data, F.cross_entropy, options=FireflyOptions())
        return select_growth(results, candidates, epsilon=0.1, max_count=count, graph=net.graph)

    plain()  # warm-up: tracing, first-call allocations
    times = {}
    for label, phase in (("splitting", plain), ("signed", signed), ("firefly", firefly)):
        _, times[label] = timed(device, phase)
    return {
        "model": name,
        "width": width,
        "neurons": net.neurons(),
        "statistics_samples": sum(int(x.shape[0]) for x, _ in data),
        "epoch_seconds_per_sample": epoch / sum(int(x.shape[0]) for x, _ in batches),
        "seconds": times,
        "signed_over_splitting": times["signed"] / times["splitting"],
        "firefly_over_splitting": times["firefly"] / times["splitting"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batches", type=int, default=16, help="statistics batches of 64 images")
    parser.add_argument("--models", nargs="+", default=["vgg19", "mobilenetv1"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-data", action="store_true", help="random images instead of Fashion-MNIST")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(args.device)
    if args.quick:
        args.width, args.batches = min(args.width, 4), 1
    generator = torch.Generator().manual_seed(0)
    batch = 16 if args.quick else 64
    samples = batch * max(args.batches, 2 if args.quick else 32)
    data = _data(samples, batch, args.random_data or args.quick, generator)
    rows = [measure(name, args.width, data, args.batches, device) for name in args.models]
    report = {"machine": machine(device), "settings": vars(args) | {"out": str(args.out)}, "rows": rows}
    lines = [
        "| model | width | neurons | statistics samples | splitting s | signed s | Firefly s | signed / splitting "
        "| Firefly / splitting |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = row["seconds"]
        lines.append(
            f"| {row['model']} | {row['width']} | {row['neurons']} | {row['statistics_samples']} | "
            f"{seconds['splitting']:.3g} | {seconds['signed']:.3g} | {seconds['firefly']:.3g} | "
            f"{row['signed_over_splitting']:.2f} | {row['firefly_over_splitting']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(report, indent=2, default=str))
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
