"""The cost of the splitting phase: reference, dense batched and matrix-free solvers against a training epoch.

Part 1, single conv layers of VGG19 widths (c_in = c_out = c, d = 9 c, no bias as before a BatchNorm) at the
spatial size VGG19 has them on 32x32 images, on a batch of random images through conv -> BN -> softplus ->
global pooling -> linear -> cross-entropy:

  (i)   reference: the original code's approach, written here from its description: one d x d matrix per neuron
        in a Python loop, as the gradient of an auxiliary variable, then a general (non-symmetric) eigensolver;
  (ii)  dense batched: all matrices at once (closed form) and one batched symmetric ``eigh``;
  (iii) matrix-free: LOBPCG on products S_j v_j computed with two convolutions, no unfolding, started at each
        neuron's lowest Ritz pair in the layer's shared 32-dimensional input subspace (the library's default), and
        beside it from random starts;
  (iv)  one training step of the same layer stack over the same samples.

For the largest layers (i) and (ii) are timed on the first few neurons and scaled by n / measured (the matrices
of all neurons would not fit in memory: that is the point). Reported: times, ratios, the memory the method's
dominant tensors need, the relative error of lambda_min against dense (on the top-m neurons), the top-m
overlap, and the largest error over all neurons (relative to the layer's largest index) of both starts.

Part 2, the whole splitting phase (statistics + solve + selection) of VGG19 and MobileNetV1 at width 64, briefly
trained on random CIFAR-shaped data: time per sample of the phase with the matrix-free solver on subsamples of
several sizes, the top-m overlap of each with the selection computed on all the data, and the time of one training
epoch, scaled to 50,000 images. Then, on one batch, LOBPCG from both starts against the dense eigenpairs of every
site: did it find lambda_min, or another eigenpair that also passes the residual test?

    python benchmarks/splitting_phase.py [--device cuda] [--quick]

Writes benchmarks/results/splitting_phase.json and .md (figures measured side by side in one run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine as describe_machine
from _common import timed as common_timed
from torch import nn

from splitgrow.experiments.common import markdown_table
from splitgrow.graph import ChannelGraph
from splitgrow.models import build_model, uniform_widths
from splitgrow.selection import select_splits
from splitgrow.solvers import dense_eigenpairs, lobpcg_smallest
from splitgrow.statistics import record_batches, ridge_splitting_matrices, splitting_eigenpairs, splitting_operators
from splitgrow.statistics.recording import recorded_inputs
from splitgrow.statistics.ridge import ridge_fields

LAYERS = {16: 32, 64: 32, 128: 16, 256: 8, 512: 4}  # channels -> spatial size in VGG19 on 32x32 inputs


PEAKS: dict[str, int] = {}  # peak GPU memory of the labelled calls


def timed(device: torch.device, function, *args, label: str | None = None, **kwargs):
    return common_timed(device, function, *args, peaks=PEAKS if label else None, label=label or "", **kwargs)


def layer_stack(channels: int, device: torch.device) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 10),
    ).to(device)


def reference_matrices(inputs: torch.Tensor, coefficients: torch.Tensor, neurons: int) -> list[np.ndarray]:
    """One matrix per neuron in a Python loop: S_j is the gradient of sum_p c_pj h_p^T A h_p with respect to an
    auxiliary d x d variable A (the original code's construction)."""
    out = []
    for j in range(neurons):
        auxiliary = torch.zeros((inputs.shape[1], inputs.shape[1]), dtype=inputs.dtype, requires_grad=True)
        value = (((inputs @ auxiliary) * inputs).sum(1) * coefficients[:, j]).sum()
        (gradient,) = torch.autograd.grad(value, auxiliary)
        out.append(gradient.numpy())
    return out


def benchmark_layer(channels: int, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    size = LAYERS[channels]
    model = layer_stack(channels, device)
    inputs = torch.randn(args.layer_samples, channels, size, size, device=device)
    targets = torch.randint(0, 10, (args.layer_samples,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):  # a few steps, so that gradients are not those of an untrained head
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    model.eval()
    graph = ChannelGraph(model, inputs[:2])
    site = graph.sites["0"]
    n, d = site.num_neurons, site.neuron_dim

    def epoch():
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        model.eval()

    _, epoch_seconds = timed(device, epoch)
    record, statistics_seconds = timed(
        device,
        lambda: next(iter(record_batches(model, graph, [(inputs, targets)], [site], loss_function=F.cross_entropy))),
    )
    handler = site.members[0].handler
    rows = handler.rows(model[0], record.values[recorded_inputs(graph, site)[0]])[:, 0].double()
    fields = ridge_fields(graph, site, record)
    effective = fields.coefficients if fields.scales[0] is None else fields.coefficients * fields.scales[0] ** 2
    coefficients = handler.coefficient_rows(model[0], effective).double()

    dense_neurons = n if n * d * d * 8 <= args.dense_bytes else max(1, args.dense_bytes // (d * d * 8))
    reference_neurons = min(n, args.reference_neurons if d > 1000 else 4 * args.reference_neurons)
    # (i) reference
    started = time.perf_counter()
    matrices = reference_matrices(rows.cpu(), coefficients.cpu(), reference_neurons)
    reference_values = [np.linalg.eig(m)[0].real.min() for m in matrices]
    reference_seconds = (time.perf_counter() - started) * n / reference_neurons
    # (ii) dense batched (closed form + batched eigh), on the neurons that fit
    (dense, dense_seconds) = timed(
        device, lambda: dense_eigenpairs(ridge_splitting_matrices(rows, coefficients[:, :dense_neurons])), label="dense"
    )
    dense_seconds = (dense_seconds + statistics_seconds) * n / dense_neurons
    reference_error = max(
        abs(r - float(v)) / abs(float(v)) for r, v in zip(reference_values, dense.indexes[:reference_neurons])
    )

    # (iii) matrix-free: LOBPCG from the shared-input-subspace start (the library's default), and from random
    def matrix_free(start: str):
        operators = splitting_operators(model, graph, [(inputs, targets)], F.cross_entropy)
        generator = torch.Generator().manual_seed(0)
        if start == "subspace":
            initial = operators["0"].ritz_start(args.subspace_dim, generator)
        else:
            initial = torch.randn((n, d), generator=generator).to(device)
        found = lobpcg_smallest(operators["0"].matvec, initial, tolerance=args.tolerance, max_iterations=500)
        return found, operators

    (found, operators), free_seconds = timed(device, matrix_free, "subspace", label="matrix_free")
    (found_random, _), random_seconds = timed(device, matrix_free, "random", label="matrix_free_random")
    compared = torch.arange(dense_neurons)
    exact = dense.indexes.cpu()
    approximate = found.indexes.double().cpu()[compared]
    m = max(1, int(round(args.top_fraction * dense_neurons)))
    top_exact = set(torch.argsort(exact)[:m].tolist())
    top_found = set(torch.argsort(approximate)[:m].tolist())
    selected = torch.tensor(sorted(top_exact))
    relative = ((approximate[selected] - exact[selected]).abs() / exact[selected].abs()).max().item()
    scale = exact.abs().max()  # errors of every neuron, relative to the layer's largest index

    def all_neurons_error(result) -> float:
        return ((result.indexes.double().cpu()[compared] - exact).abs() / scale).max().item()

    return {
        "channels": channels,
        "spatial": size,
        "samples": args.layer_samples,
        "neurons": n,
        "d": d,
        "epoch_seconds": epoch_seconds,
        "reference_seconds": reference_seconds,
        "reference_neurons_timed": reference_neurons,
        "dense_seconds": dense_seconds,
        "dense_neurons_timed": dense_neurons,
        "matrix_free_seconds": free_seconds,
        "lobpcg_iterations": found.iterations,
        "lobpcg_converged": float(found.converged.float().mean()),
        "matrix_free_random_start_seconds": random_seconds,
        "lobpcg_random_start_iterations": found_random.iterations,
        "all_neurons_error_subspace_start": all_neurons_error(found),
        "all_neurons_error_random_start": all_neurons_error(found_random),
        "dense_memory_bytes": n * d * d * 8,
        "matrix_free_memory_bytes": operators["0"].memory_bytes() + 8 * n * d * 4,
        "reference_vs_dense_relative_error": reference_error,
        "lambda_relative_error_top_m": relative,
        "top_m": m,
        "top_m_overlap": len(top_exact & top_found) / m,
        "cuda_peak_bytes": dict(PEAKS) if device.type == "cuda" else None,
    }


def random_cifar(count: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn((count, 3, 32, 32), generator=generator).to(device),
        torch.randint(0, 10, (count,), generator=generator).to(device),
    )


def benchmark_network(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(name, **uniform_widths(name, args.width)).to(device)
    inputs, targets = random_cifar(args.network_samples, device, seed=1)
    batches = [
        (inputs[i : i + args.batch_size], targets[i : i + args.batch_size])
        for i in range(0, args.network_samples, args.batch_size)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def epoch():
        model.train()
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    _, epoch_seconds = timed(device, epoch)  # also the brief training before the splitting statistics
    per_sample_epoch = epoch_seconds / args.network_samples
    graph = ChannelGraph(model, inputs[:2])
    neurons = sum(site.num_neurons for site in graph.sites.values())
    m = max(1, int(round(args.top_fraction * neurons)))

    def phase(sample_batches):
        results = splitting_eigenpairs(
            model, graph, sample_batches, F.cross_entropy, solver="lobpcg", tolerance=args.tolerance
        )
        return results, select_splits(results, m, graph=graph)

    (full_results, full_selection), full_seconds = timed(device, phase, batches)
    reference = {(r.site, r.channel) for r in full_selection}
    rows = []
    for samples in args.sample_sizes:
        count = max(1, samples // args.batch_size)
        (results, selection), seconds = timed(device, phase, batches[:count])
        overlap = len(reference & {(r.site, r.channel) for r in selection}) / max(1, len(reference))
        converged = float(np.mean([float(r.converged.float().mean()) for r in results.values()]))
        rows.append(
            {
                "samples": count * args.batch_size,
                "seconds": seconds,
                "epochs_of_50k": seconds / (per_sample_epoch * 50_000),
                "top_m_overlap_with_all_data": overlap,
                "converged_fraction": converged,
            }
        )
    # which eigenpair did LOBPCG find? Both starts against the dense solution on the first batch
    check = batches[: max(1, args.start_check_samples // args.batch_size)]
    exact, dense_check_seconds = timed(device, splitting_eigenpairs, model, graph, check, F.cross_entropy)
    starts = {}
    for start in ("subspace", "random"):
        found, seconds = timed(
            device,
            lambda start=start: splitting_eigenpairs(
                model, graph, check, F.cross_entropy, solver="lobpcg", tolerance=args.tolerance, start=start
            ),
        )
        errors = []
        for site, result in found.items():
            truth = exact[site].indexes.cpu()
            errors.append((result.indexes.cpu() - truth).abs() / truth.abs().max())
        errors = torch.cat(errors)
        chosen = {(r.site, r.channel) for r in select_splits(found, m, graph=graph)}
        truth_chosen = {(r.site, r.channel) for r in select_splits(exact, m, graph=graph)}
        starts[start] = {
            "seconds": seconds,
            "products": sum(r.products for r in found.values()),
            "max_error": errors.max().item(),
            "neurons_off_by_1_percent": int((errors > 1e-2).sum()),
            "top_m_overlap_with_dense": len(chosen & truth_chosen) / m,
        }
    return {
        "model": name,
        "width": args.width,
        "start_check_samples": len(check) * args.batch_size,
        "start_check_dense_seconds": dense_check_seconds,
        "starts": starts,
        "sites": len(graph.sites),
        "neurons": neurons,
        "top_m": m,
        "all_data_samples": args.network_samples,
        "all_data_phase_seconds": full_seconds,
        "epoch_seconds_per_sample": per_sample_epoch,
        "epoch_seconds_50k": per_sample_epoch * 50_000,
        "subsamples": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, nargs="+", choices=sorted(LAYERS), help="layer widths (default: all)")
    parser.add_argument("--layer-samples", type=int, default=64)
    parser.add_argument("--reference-neurons", type=int, default=2, help="neurons timed by (i) when d > 1000")
    parser.add_argument("--dense-bytes", type=int, default=2 * 2**30, help="largest dense batch of matrices")
    parser.add_argument("--models", nargs="+", default=["vgg19", "mobilenetv1"])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--network-samples", type=int, default=2048)
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--subspace-dim", type=int, default=32, help="shared input subspace of the LOBPCG start")
    parser.add_argument("--start-check-samples", type=int, default=64, help="samples of the dense check of starts")
    parser.add_argument("--top-fraction", type=float, default=0.1, help="m as a fraction of the neurons")
    parser.add_argument("--quick", action="store_true", help="small settings to check the script")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "splitting_phase")
    args = parser.parse_args()
    if args.channels is None:
        args.channels = [16, 64] if args.quick else [16, 64, 128, 256, 512]
    if args.quick:  # batches of 16, so that the subsamples (1 and 2 batches) and the check (1) are distinct sizes
        args.layer_samples, args.network_samples, args.batch_size = 8, 64, 16
        args.sample_sizes, args.start_check_samples, args.width = [16, 32], 16, 8
    device = torch.device(args.device)
    machine = describe_machine(device)
    layers = []
    for channels in args.channels:
        result = benchmark_layer(channels, args, device)
        layers.append(result)
        print(json.dumps(result), flush=True)
    networks = []
    for name in args.models:
        result = benchmark_network(name, args, device)
        networks.append(result)
        print(json.dumps(result), flush=True)
    report = {
        "machine": machine,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "layers": layers,
        "networks": networks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")

    def mib(value: float) -> str:
        return f"{value / 2**20:,.0f}" if value >= 2**20 else f"{value / 2**20:.2f}"

    layer_rows = [
        [
            f"{r['channels']} @ {r['spatial']}x{r['spatial']}",
            r["d"],
            f"{r['reference_seconds']:.3g}",
            f"{r['dense_seconds']:.3g}",
            f"{r['matrix_free_seconds']:.3g}",
            f"{r['epoch_seconds']:.3g}",
            f"{r['reference_seconds'] / r['dense_seconds']:.0f}x",
            f"{r['dense_seconds'] / r['matrix_free_seconds']:.0f}x",
            f"{mib(r['dense_memory_bytes'])} / {mib(r['matrix_free_memory_bytes'])}",
            f"{r['reference_vs_dense_relative_error']:.1e}",
            f"{r['lambda_relative_error_top_m']:.1e}",
            f"{r['top_m_overlap']:.0%}",
            f"{r['matrix_free_random_start_seconds']:.3g}",
            f"{r['all_neurons_error_subspace_start']:.1e} / {r['all_neurons_error_random_start']:.1e}",
        ]
        for r in layers
    ]
    layer_table = markdown_table(
        [
            "layer (c_out @ HxW)",
            "d",
            "(i) reference s",
            "(ii) dense s",
            "(iii) matrix-free s",
            "(iv) train step s",
            "(i)/(ii)",
            "(ii)/(iii)",
            "memory MiB dense / free",
            "ref. vs dense",
            "free vs dense, top-m",
            "top-m overlap",
            "(iii) from random start s",
            "all-neuron error, subspace / random start",
        ],
        layer_rows,
    )
    network_rows = [
        [
            n["model"],
            s["samples"],
            f"{s['seconds']:.1f}",
            f"{s['epochs_of_50k']:.3f}",
            f"{s['top_m_overlap_with_all_data']:.0%}",
            f"{s['converged_fraction']:.0%}",
        ]
        for n in networks
        for s in n["subsamples"]
    ]
    network_table = markdown_table(
        [
            "model",
            "samples",
            "phase s",
            "phase / epoch of 50k images",
            f"top-m overlap with all {args.network_samples}",
            "converged",
        ],
        network_rows,
    )
    start_rows = [
        [
            n["model"],
            start,
            f"{r['products']}",
            f"{r['seconds']:.1f}",
            f"{r['max_error']:.1e}",
            f"{r['neurons_off_by_1_percent']} of {n['neurons']}",
            f"{r['top_m_overlap_with_dense']:.0%}",
        ]
        for n in networks
        for start, r in n["starts"].items()
    ]
    start_table = markdown_table(
        ["model", "start", "LOBPCG products", "phase s", "largest error", "errors > 1%", "top-m overlap with dense"],
        start_rows,
    )
    text = (
        f"device: {machine['device']}, {machine['cpu_count']} CPUs, torch {machine['torch']}\n\n"
        f"Single layers, {args.layer_samples} samples:\n\n{layer_table}\n\n"
        f"Whole networks at width {args.width} (epoch of 50k images: "
        + ", ".join(f"{n['model']} {n['epoch_seconds_50k']:.0f} s" for n in networks)
        + f"):\n\n{network_table}\n\n"
        f"LOBPCG from the shared-input-subspace start and from random starts against dense eigenpairs, all sites, "
        f"{networks[0]['start_check_samples'] if networks else 0} samples (errors relative to each site's "
        f"largest index):\n\n{start_table}\n"
    )
    args.out.with_suffix(".md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
