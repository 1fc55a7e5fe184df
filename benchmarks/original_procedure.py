"""The original authors' whole splitting phase against splitgrow's, on real Fashion-MNIST (issue 9, item 3).

The original procedure, written here from its description (Liu, Wu & Wang's released code, in our own words):
for each layer in turn, ONE pass over the whole training set in which every neuron j of that layer gets an auxiliary
d x d variable V_j, added to the layer's output as phi''(z_j) (b_j x)^T V_j (b_j x) for every input patch x (b_j the
BatchNorm scale, z_j the pre-activation), so that the gradient of the loss with respect to V_j, summed over the
pass, is neuron j's splitting matrix S_j; then a general eigensolver (``numpy.linalg.eig``) per neuron, and the
neurons with the smallest lambda_min across the network are split. Its layers are the convolutions followed by
BatchNorm and the activation (VGG19's 16; MobileNetV1's first conv and 13 pointwise convs, whose neuron is the
pointwise row alone: the original code duplicates the next depthwise filter without a splitting direction, where
splitgrow's neuron also spans that filter).

splitgrow's whole phase: statistics + LOBPCG + selection, on all the training images (which also defines the exact
full-data selection, at a tight LOBPCG tolerance), with adaptive statistics (library defaults) and on fixed
samples (``--fixed-samples``, the first images of the adaptive run's order), all at the library's LOBPCG tolerance
and reading at most ``--max-positions`` output positions per image of each convolution (0: all), each on
``--draws`` random orders of the training batches: one draw's overlap moves by a neuron or two.

The original procedure would take hours on a CPU: each layer's pass is timed on ``--original-samples`` images and
scaled linearly to the training set (its cost is linear in the samples: the same forward, backward and P d^2 work
per image); the eigensolves are timed on every neuron. With ``--check-exact`` the original's indexes on the timed
samples are compared with splitgrow's dense ones on the same samples, in float64.

    python benchmarks/original_procedure.py [--quick] [--models vgg19 mobilenetv1] [--train-images 8000]

Writes benchmarks/results/original_procedure.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import numpy as np
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
from torch import Tensor, nn

from splitgrow.experiments.common import markdown_table
from splitgrow.network import SplittableNetwork
from splitgrow.statistics.adaptive import AdaptiveStatistics, Selected, adaptive_splitting, top_fraction
from splitgrow.statistics.splitting import ITERATIVE_TOLERANCE, SolverOptions

EPOCH_IMAGES = 50_000


def original_layers(model: nn.Module) -> dict[str, nn.Sequential]:
    """The layers the original code splits: conv -> BatchNorm -> Softplus blocks with a full (ungrouped) conv,
    by the conv's name (which is also splitgrow's name of the site it starts)."""
    return {
        f"{name}.0": block
        for name, block in model.named_modules()
        if isinstance(block, nn.Sequential)
        and len(block) == 3
        and isinstance(block[0], nn.Conv2d)
        and block[0].groups == 1
        and isinstance(block[1], nn.BatchNorm2d)
        and isinstance(block[2], nn.Softplus)
    }


def softplus_second_derivative(activation: nn.Softplus, z: Tensor) -> Tensor:
    """phi''(z) of torch's Softplus (linear, so 0, above its threshold)."""
    s = torch.sigmoid(activation.beta * z)
    return torch.where(activation.beta * z > activation.threshold, 0.0, activation.beta * s * (1 - s))


class AuxiliaryVariables:
    """The original construction on one conv -> BN -> Softplus block: while attached, the block's output gains
    phi''(z_j) (b_j x)^T V_j (b_j x) per neuron j and position, with V_j = 0 (the output is unchanged); the
    gradients of V_j accumulate S_j."""

    def __init__(self, block: nn.Sequential, neurons: list[int]) -> None:
        self.block, self.neurons = block, neurons
        conv = block[0]
        dim = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        weight = conv.weight
        self.variables = [torch.zeros(dim, dim, dtype=weight.dtype, requires_grad=True) for _ in neurons]
        self._handles = [
            conv.register_forward_pre_hook(self._keep_input),
            block[1].register_forward_hook(self._keep_preactivation),
            block[2].register_forward_hook(self._add_auxiliary),
        ]

    def _keep_input(self, conv: nn.Conv2d, inputs: tuple[Tensor, ...]) -> None:
        self._input = inputs[0]

    def _keep_preactivation(self, bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._preactivation = output

    def _add_auxiliary(self, activation: nn.Softplus, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        conv, bn = self.block[0], self.block[1]
        patches = F.unfold(
            self._input.detach(), conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride
        )  # (B, d, positions), entries in the order of a flattened weight row
        batch, dim, positions = patches.shape
        patches = patches.transpose(1, 2).reshape(-1, dim)
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        curvature = softplus_second_derivative(activation, self._preactivation.detach())
        terms = []
        for neuron, variable in zip(self.neurons, self.variables):  # one neuron at a time, as the original
            scaled = scale[neuron] * patches
            quadratic = ((scaled @ variable) * scaled).sum(1).view(batch, *output.shape[2:])
            terms.append(curvature[:, neuron] * quadratic)
        auxiliary = torch.zeros_like(output)
        auxiliary[:, self.neurons] = torch.stack(terms, 1)
        return output + auxiliary

    def detach(self) -> list[np.ndarray]:
        """Remove the hooks; the accumulated S_j (sums over the pass) as numpy arrays."""
        for handle in self._handles:
            handle.remove()
        return [variable.grad.numpy() for variable in self.variables]


def original_layer_pass(model: nn.Module, block: nn.Sequential, neurons: list[int], batches: list[Batch]):
    """One pass over ``batches`` for one layer: S_j of ``neurons`` as sums of per-batch mean-loss gradients."""
    auxiliary = AuxiliaryVariables(block, neurons)
    try:
        for inputs, targets in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), targets).backward()
    finally:
        matrices = auxiliary.detach()
    return matrices


def smallest_eigenpair(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    """lambda_min and its eigenvector from the general eigensolver (the original code's ``numpy.linalg.eig``)."""
    values, vectors = np.linalg.eig(matrix)
    smallest = int(np.argmin(values.real))
    return float(values.real[smallest]), vectors[:, smallest].real


def original_phase(
    model: nn.Module, batches: list[Batch], args: argparse.Namespace, scale_to: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The original procedure on ``batches`` (timed), its pass times scaled to ``scale_to`` images; the indexes
    it found (S as means over the batches) by layer."""
    samples = sum(len(targets) for _, targets in batches)
    layers = original_layers(model)
    indexes, timing = {}, []
    for name, block in layers.items():
        neurons = list(range(block[0].out_channels))
        matrices, pass_seconds = timed(torch.device("cpu"), original_layer_pass, model, block, neurons, batches)
        started = time.perf_counter()
        found = [smallest_eigenpair(matrix / len(batches)) for matrix in matrices]
        eig_seconds = time.perf_counter() - started
        indexes[name] = np.array([value for value, _ in found])
        timing.append(
            {
                "layer": name,
                "neurons": len(neurons),
                "d": matrices[0].shape[0],
                "pass_seconds_measured": pass_seconds,
                "pass_seconds_scaled": pass_seconds * scale_to / samples,
                "eig_seconds": eig_seconds,
            }
        )
    return indexes, {"measured_samples": samples, "scaled_to": scale_to, "layers": timing}


def selection_of(indexes: dict[str, np.ndarray], fraction: float) -> set[tuple[str, int]]:
    """The original rule: the ``fraction`` of all neurons with the smallest lambda_min (below 0), network-wide."""
    ranked = sorted((float(v), name, n) for name, values in indexes.items() for n, v in enumerate(values) if v < 0)
    count = max(1, int(round(fraction * sum(len(values) for values in indexes.values()))))
    return {(name, n) for _, name, n in ranked[:count]}


def exact_check(model: nn.Module, batches: list[Batch], args: argparse.Namespace) -> float:
    """Largest relative difference, over the original's layers, between its lambda_min and splitgrow's dense
    index on the same samples, in float64 (sites that are exactly the original's ridge neurons)."""
    model64 = copy.deepcopy(model).double()
    batches64 = [(inputs.double(), targets) for inputs, targets in batches]
    original, _ = original_phase(model64, batches64, args, scale_to=1)
    net = SplittableNetwork(model64, batches64[0][0][:2])
    dense = net.splitting(batches64, F.cross_entropy, solver="dense")
    errors = []
    for name, values in original.items():
        site = dense[name]
        if len(site.members) != 1:
            continue  # splitgrow's neuron also spans the next depthwise filter: another matrix
        truth = site.indexes.numpy()
        errors.append(np.abs(values - truth).max() / np.abs(truth).max())
    return float(max(errors)) if errors else float("nan")


def _over_draws(seconds: list[float], overlaps: list[float]) -> dict[str, Any]:
    """A phase's mean time and overlap over the draws, and each draw's."""
    return {
        "seconds": sum(seconds) / len(seconds),
        "overlap": sum(overlaps) / len(overlaps),
        "seconds_each": seconds,
        "overlap_each": overlaps,
    }


def _overlap_cell(row: dict[str, Any]) -> str:
    low, high = min(row["overlap_each"]), max(row["overlap_each"])
    return f"{row['overlap']:.0%}" + ("" if low == high else f" ({low:.0%}-{high:.0%})")


def benchmark_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    training = fashion_mnist_batches(args.train_images, args.batch_size, seed=args.seed, device=device)
    model = briefly_trained(name, args.width, training, args.epochs, seed=args.seed, device=device)
    net = SplittableNetwork(model, training[0][0][:2])
    select = top_fraction(args.top_fraction)
    epoch_batches = training[: max(1, args.epoch_images // args.batch_size)]
    per_sample = [epoch_seconds_per_sample(model, epoch_batches, device)]

    def full_phase() -> Selected:
        results = net.splitting(training, F.cross_entropy, solver="lobpcg", tolerance=args.reference_tolerance)
        return select(results)

    reference, full_seconds = timed(device, full_phase)
    exact = {(site, n) for site, n, _ in reference}
    options = SolverOptions(
        solver="lobpcg", tolerance=args.tolerance, seed=args.seed, max_positions=args.max_positions or None
    )
    orders = []  # each draw: the training batches in its own random order
    for draw in range(args.draws):
        generator = torch.Generator().manual_seed(args.seed + 1 + draw)
        orders.append([training[i] for i in torch.randperm(len(training), generator=generator).tolist()])

    def overlap_with_exact(selected: Selected) -> float:
        return len(exact & {(site, n) for site, n, _ in selected}) / len(exact)

    def fixed_phase(batches: list[Batch]) -> Selected:
        return select(net.splitting(batches, F.cross_entropy, **vars(options)))

    fixed = []
    for samples in args.fixed_samples:
        count = max(1, samples // args.batch_size)
        draws = [timed(device, fixed_phase, order[:count]) for order in orders]
        fixed.append(
            {"samples": count * args.batch_size}
            | _over_draws([seconds for _, seconds in draws], [overlap_with_exact(sel) for sel, _ in draws])
        )

    def adaptive_phase(order: list[Batch]) -> tuple[Selected, int]:
        results = adaptive_splitting(
            model, net.graph, order, select, F.cross_entropy, adaptive=AdaptiveStatistics(), options=options
        )
        return select(results), int(results.adaptive["samples"])

    runs = [timed(device, adaptive_phase, order) for order in orders]
    adaptive = _over_draws([seconds for _, seconds in runs], [overlap_with_exact(sel) for (sel, _), _ in runs])
    adaptive["samples_each"] = [samples for (_, samples), _ in runs]

    measured = training[: max(1, args.original_samples // args.batch_size)]
    if args.original_samples < args.batch_size:
        measured = [(measured[0][0][: args.original_samples], measured[0][1][: args.original_samples])]
    original, timing = original_phase(model, measured, args, scale_to=len(training) * args.batch_size)
    original_seconds = sum(layer["pass_seconds_scaled"] + layer["eig_seconds"] for layer in timing["layers"])
    original_seconds_50k = sum(
        layer["pass_seconds_scaled"] * EPOCH_IMAGES / timing["scaled_to"] + layer["eig_seconds"]
        for layer in timing["layers"]
    )
    # the original's selection on the timed samples only: how much a small sample costs it in quality
    original_overlap = len(exact & selection_of(original, args.top_fraction)) / len(exact)
    per_sample.append(epoch_seconds_per_sample(model, epoch_batches, device))
    epoch_seconds = sum(per_sample) / len(per_sample) * EPOCH_IMAGES
    return {
        "model": name,
        "width": args.width,
        "neurons": net.neurons(),
        "original_neurons": sum(layer["neurons"] for layer in timing["layers"]),
        "training_images": len(training) * args.batch_size,
        "original": timing,
        "original_seconds": original_seconds,
        "original_seconds_50k_images": original_seconds_50k,
        "original_overlap_on_timed_samples": original_overlap,
        "splitgrow_full_seconds": full_seconds,
        "splitgrow_adaptive": adaptive,
        "splitgrow_adaptive_seconds": adaptive["seconds"],
        "splitgrow_adaptive_overlap": adaptive["overlap"],
        "speedup_full": original_seconds / full_seconds,
        "speedup_adaptive": original_seconds / adaptive["seconds"],
        "speedup_adaptive_50k_images": original_seconds_50k / adaptive["seconds"],
        "splitgrow_fixed": [
            row
            | {
                "speedup": original_seconds / row["seconds"],
                "speedup_50k_images": original_seconds_50k / row["seconds"],
            }
            for row in fixed
        ],
        "epoch_seconds_50k": epoch_seconds,
        "exact_check_relative_error": exact_check(model, measured, args) if args.check_exact else None,
    }


def report_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    rows = [
        [
            m["model"],
            f"{m['original_neurons']} / {m['neurons']}",
            m["training_images"],
            f"{m['original']['measured_samples']}",
            f"{m['original_seconds']:,.0f}",
            f"{m['splitgrow_full_seconds']:.0f}",
            f"{m['speedup_full']:.0f}x",
            ", ".join(str(samples) for samples in m["splitgrow_adaptive"]["samples_each"]),
            _overlap_cell(m["splitgrow_adaptive"]),
            f"{m['splitgrow_adaptive_seconds']:.0f}",
            f"{m['speedup_adaptive']:.0f}x",
            "; ".join(
                f"{f['samples']}: {_overlap_cell(f)}, {f['seconds']:.0f} s, {f['speedup']:.0f}x"
                for f in m["splitgrow_fixed"]
            ),
            f"{m['original_seconds_50k_images']:,.0f} / {m['speedup_adaptive_50k_images']:.0f}x / "
            + " / ".join(f"{f['speedup_50k_images']:.0f}x" for f in m["splitgrow_fixed"]),
        ]
        for m in report["models"]
    ]
    table = markdown_table(
        [
            "model",
            "neurons (original / splitgrow)",
            "training images",
            "original: images timed per layer",
            "original s (scaled)",
            "splitgrow, all images s",
            "speed-up",
            "splitgrow adaptive: samples of each draw",
            "adaptive: top-10% overlap with all images",
            "adaptive s (mean)",
            "speed-up, adaptive",
            "splitgrow fixed, samples: overlap, mean s, speed-up",
            "with 50k training images: original s / speed-up, adaptive / fixed",
        ],
        rows,
    )
    return (
        f"{machine_line(report)}\nTraining: {settings['epochs']} epochs on {settings['train_images']} real "
        f"Fashion-MNIST images, width {settings['width']}; splitgrow: LOBPCG at tolerance "
        f"{settings['reference_tolerance']} on all images (the exact selection); adaptive statistics and the fixed "
        f"samples at tolerance {settings['tolerance']}, reading "
        f"{settings['max_positions'] or 'all'} positions per image of each convolution at most, on "
        f"{settings['draws']} random orders of the training batches (overlap: mean and range; speed-ups from the "
        f"mean time).\n\n{table}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser, "original_procedure")  # --device: splitgrow's (the original runs on the CPU)
    parser.add_argument("--original-samples", type=int, default=64, help="images of each timed original pass")
    parser.add_argument("--tolerance", type=float, default=ITERATIVE_TOLERANCE, help="of the adaptive and fixed phases")
    parser.add_argument("--max-positions", type=int, default=256, help="positions read per image of a convolution")
    parser.add_argument("--fixed-samples", type=int, nargs="+", default=[2048, 4096], help="images of fixed phases")
    parser.add_argument("--draws", type=int, default=3, help="batch orders for the adaptive and fixed phases")
    parser.add_argument("--reference-tolerance", type=float, default=1e-4)
    parser.add_argument("--epoch-images", type=int, default=1024)
    parser.add_argument("--top-fraction", type=float, default=0.1)
    parser.add_argument("--check-exact", action="store_true", help="original vs splitgrow dense, float64")
    args = parser.parse_args()
    if args.quick:
        quick_training(args)
        args.original_samples, args.epoch_images, args.check_exact = 8, 32, True
        args.fixed_samples, args.max_positions, args.draws = [16, 32], 64, 2
    run_models(
        args,
        lambda name, device: benchmark_model(name, args, device),
        report_markdown,
        lambda result: {key: value for key, value in result.items() if key != "original"},
    )


if __name__ == "__main__":
    main()
