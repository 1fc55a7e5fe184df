"""What the benchmark scripts share: timing that waits for the GPU, the description of the machine, and real
Fashion-MNIST batches with brief seeded training for the benchmarks on real data."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitgrow.artifacts import atomic_write_json, atomic_write_text, run_metadata
from splitgrow.data import load_dataset, to_float

Batch = tuple[Tensor, Tensor]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    device: torch.device, function: Callable, *args: Any, peaks: dict[str, int] | None = None, label: str = "", **kwargs
) -> tuple[Any, float]:
    """(result, seconds) of ``function(*args, **kwargs)``; on a GPU the call's peak memory goes to ``peaks[label]``."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda" and peaks is not None:
        peaks[label] = torch.cuda.max_memory_allocated(device)
    return result, seconds


def machine(device: torch.device) -> dict[str, Any]:
    """Versions and platform (as every splitgrow result records them), the CPU count and the device's name."""
    return {
        **run_metadata(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


@functools.cache
def _fashion_mnist_train():
    return load_dataset("fashion-mnist", "train", None)


def fashion_mnist_batches(
    count: int, batch_size: int, *, seed: int = 0, skip: int = 0, device: torch.device | str = "cpu"
) -> list[Batch]:
    """``count`` real Fashion-MNIST training images, normalised and zero-padded to 32x32, in batches.

    The images are those at positions ``skip`` to ``skip + count`` of a permutation of the training set drawn
    from ``seed``: draws with the same seed and non-overlapping ``[skip, skip + count)`` are disjoint.
    """
    dataset = _fashion_mnist_train()
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[skip : skip + count]
    images = to_float(dataset.images[order], dataset.mean, dataset.std, size=32).to(device)
    labels = dataset.labels[order].to(device)
    return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, count, batch_size)]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of the image experiments (SGD, Nesterov momentum 0.9, weight decay 1e-4)."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)


def train_epoch(model: nn.Module, batches: list[Batch], optimizer: torch.optim.Optimizer) -> None:
    """One epoch of cross-entropy training over ``batches`` (in order: the batches were drawn at random)."""
    model.train()
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    model.eval()


def epoch_seconds_per_sample(model: nn.Module, batches: list[Batch], device: torch.device) -> float:
    """Seconds per sample of one training epoch over ``batches``, timed on a copy (the model is not changed)."""
    trainee = copy.deepcopy(model)
    optimizer = sgd(trainee)
    train_epoch(trainee, batches[:1], optimizer)  # warm-up: first-call allocations are not part of an epoch
    seconds = timed(device, train_epoch, trainee, batches, optimizer)[1]
    return seconds / sum(len(targets) for _, targets in batches)


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as ``uptime`` prints them (other jobs share this machine)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def cpu_model() -> str:
    """The processor's marketing name, e.g. 'AMD EPYC 7B13'; the architecture where the system does not say."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        completed = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=False
        )
        if completed.returncode == 0 and completed.stdout.strip():
            return completed.stdout.strip()
    return platform.processor() or platform.machine()


def briefly_trained(
    name: str, width: int, batches: list[Batch], epochs: int, *, seed: int = 0, device: torch.device | str = "cpu"
) -> nn.Module:
    """A zoo model (one input channel, uniform ``width``) trained for ``epochs`` over ``batches``, batch order
    reshuffled every epoch; in eval mode (BatchNorm uses its running statistics, as the splitting phase does)."""
    from splitgrow.models import build_model, uniform_widths

    torch.manual_seed(seed)
    model = build_model(name, **uniform_widths(name, width), in_channels=1).to(device)
    optimizer = sgd(model)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(batches), generator=generator).tolist()
        train_epoch(model, [batches[i] for i in order], optimizer)
    return model


# The benchmarks on briefly trained Fashion-MNIST networks (adaptive_statistics, original_procedure,
# selection_noise) share their training settings, their report's header and its writing.


def add_training_arguments(parser: argparse.ArgumentParser, results_name: str) -> None:
    """The settings of the trained networks, ``--quick``, ``--seed`` and ``--out`` (results/``results_name``)."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["vgg19", "mobilenetv1"])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=8000, help="real Fashion-MNIST training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / results_name)


def quick_training(args: argparse.Namespace) -> None:
    """``--quick``'s networks: width 4, one epoch on 64 images in batches of 16."""
    args.width, args.train_images, args.epochs, args.batch_size = 4, 64, 1, 16


def machine_line(report: dict[str, Any]) -> str:
    """The first line of a report: the processor, its load before and after, torch."""
    return (
        f"CPU: {report['cpu_model']}, {report['machine']['cpu_count']} cores, load average at start "
        f"{report['load_start']} and end {report['load_end']} (shared machine), torch {report['machine']['torch']}."
    )


def run_models(
    args: argparse.Namespace,
    measure: Callable[[str, torch.device], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    progress: Callable[[dict[str, Any]], Any],
) -> None:
    """``measure`` every model of ``--models``; after each, the report so far is written to ``--out`` (.json and
    .md, atomically: a stopped run keeps the models done) and ``progress(result)`` printed as JSON."""
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "machine": machine(device),
        "cpu_model": cpu_model(),
        "load_start": load_average(),
        "settings": vars(args) | {"out": str(args.out)},
        "models": [],
    }
    text = ""
    for name in args.models:
        result = measure(name, device)
        report["models"].append(result)
        report["load_end"] = load_average()
        text = markdown(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out.with_suffix(".json"), report)
        atomic_write_text(args.out.with_suffix(".md"), text)
        print(json.dumps(progress(result)), flush=True)
    print("\n" + text)
