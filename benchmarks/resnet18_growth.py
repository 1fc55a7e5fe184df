"""Grow a width-scaled torchvision-style ResNet-18 on Fashion-MNIST by splitting, for two stages.

The network is torchvision's ResNet-18 as people write it (BasicBlock with one shared ``nn.ReLU(inplace=True)``
called twice, ``out += identity``, 1x1 downsampling shortcuts), with every width scaled by ``--width`` / 64 and a
stem for 28x28 grey images (a 3x3 convolution and 2x2 max pooling instead of the 7x7 stride-2 convolution and 3x3
pooling). ReLU has phi'' = 0, so the splitting statistics use softplus(beta)'s curvature at the kink
(``relu_surrogate=beta``, named in the results). The sites that grow are the inner convolutions of the eight
blocks (conv1 -> bn1 -> relu: exact with the surrogate); the residual streams are coupled by the sums and do not
(``SplittableNetwork.graph.describe()`` says why, and the stage records list them as skipped).

The run goes through the public :class:`splitgrow.Grower`: train ``--epochs-per-phase`` epochs (SGD with Nesterov
momentum, its state carried across every split; the learning rate follows one cosine over the run), grow
``--fraction`` of the neurons with the most negative indexes, and again; test accuracy after every phase and right
after every split (a split keeps the function up to eps), parameters before and after every stage. Seeded: the same
seed and thread count give the same numbers on a CPU.

    nice -n 5 python benchmarks/resnet18_growth.py [--width 8] [--train 8000] [--epochs-per-phase 2] [--quick]

The defaults took 10-12 minutes on 2 CPU cores shared with other jobs (load average 15-19, one torch thread).
Writes benchmarks/results/resnet18_growth.json and .md (atomically).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import machine as describe_machine
from torch import Tensor, nn

from splitgrow import Grower, GrowthPolicy
from splitgrow.artifacts import atomic_write_json, atomic_write_text
from splitgrow.data import Batches, load_dataset
from splitgrow.experiments.common import markdown_table
from splitgrow.surgery import parameter_count


class BasicBlock(nn.Module):
    """torchvision's basic block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then the same ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18's layout (4 stages of 2 basic blocks, widths w, 2w, 4w, 8w; torchvision has w = 64) for small
    grey images: 3x3 stem convolution and 2x2 max pooling."""

    def __init__(self, width: int = 8, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        stages, inplanes = [], width
        for index, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def train_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer) -> float:
    """One epoch of SGD; the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for images, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / count


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> float:
    """Test accuracy in eval mode."""
    model.eval()
    correct, count = 0, 0
    for images, labels in batches:
        correct += int((model(images).argmax(1) == labels).sum())
        count += len(labels)
    return correct / count


def grown_widths(stage: Any) -> dict[str, list[int]]:
    """The sites whose width changed in a stage: before and after."""
    return {
        site: [before, stage.widths_after[site]]
        for site, before in stage.widths_before.items()
        if stage.widths_after.get(site) != before
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8, help="the first stage's width (torchvision: 64)")
    parser.add_argument("--train", type=int, default=8000, help="training images (the first ones of the set)")
    parser.add_argument("--test", type=int, default=10000, help="test images")
    parser.add_argument("--statistics", type=int, default=512, help="training images for the splitting statistics")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs-per-phase", type=int, default=2)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.3, help="share of the neurons split per stage")
    parser.add_argument("--epsilon", type=float, default=0.01, help="the split's step")
    parser.add_argument("--relu-surrogate", type=float, default=3.0, help="beta of the softplus curvature")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST's IDX files (default: found)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (one: on a shared CPU, more threads spin against others)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "resnet18_growth")
    args = parser.parse_args()
    if args.quick:
        args.width, args.train, args.test, args.statistics, args.batch_size = 2, 128, 128, 64, 32
        args.epochs_per_phase = 1
    started = time.perf_counter()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set = load_dataset("fashion-mnist", "train", args.data_root).subset(args.train)
    test_set = load_dataset("fashion-mnist", "test", args.data_root).subset(args.test)
    train = Batches(train_set, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    test = Batches(test_set, 500)
    # a fixed list: the statistics and the measured loss change of a stage see the same samples
    statistics_data = list(Batches(train_set.subset(args.statistics), 128))

    model = ResNet18(args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    policy = GrowthPolicy(
        first=args.epochs_per_phase,
        every=args.epochs_per_phase,
        fraction=args.fraction,
        max_stages=args.stages,
        epsilon=args.epsilon,
        solver="auto",
        statistics_batches=len(statistics_data),
    )
    epochs = args.epochs_per_phase * (args.stages + 1)
    # one cosine decay over the whole run: the optimiser (and so the schedule) keeps its identity across splits
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    grower = Grower(
        model,
        statistics_data[0][0][:2],
        statistics_data,
        policy=policy,
        loss_function=F.cross_entropy,
        optimizer=optimizer,
        relu_surrogate=args.relu_surrogate,
        seed=args.seed,
    )
    sites = grower.net.graph.describe()

    phases: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    phase_started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train_loss = train_epoch(model, train, optimizer)
        schedule.step()
        print(f"epoch {epoch}: training loss {train_loss:.4f}", flush=True)
        if epoch % args.epochs_per_phase == 0:
            phases.append(
                {
                    "phase": len(phases),
                    "epochs": epoch,
                    "parameters": parameter_count(model),
                    "train_loss": train_loss,
                    "test_accuracy": accuracy(model, test),
                    "seconds": time.perf_counter() - phase_started,
                }
            )
            print(f"  phase {phases[-1]['phase']}: test accuracy {phases[-1]['test_accuracy']:.4f}", flush=True)
        stage = grower.epoch_end(metrics={"train_loss": train_loss})
        if stage is not None:
            record = {
                "stage": stage.stage,
                "epoch": stage.epoch,
                "parameters_before": stage.parameters_before,
                "parameters_after": stage.parameters_after,
                "splits": len(stage.splits),
                "most_negative_index": min(split["index"] for split in stage.splits),
                "widths": grown_widths(stage),
                "predicted_loss_change": stage.predicted_change,
                "measured_loss_change": stage.measured_change,
                "test_accuracy_before": phases[-1]["test_accuracy"],
                "test_accuracy_right_after_split": accuracy(model, test),
                "seconds": stage.seconds,
                "skipped": stage.skipped,
            }
            stages.append(record)
            print(
                f"  stage {stage.stage}: {record['splits']} splits, parameters {stage.parameters_before:,} -> "
                f"{stage.parameters_after:,}, test accuracy {record['test_accuracy_right_after_split']:.4f}",
                flush=True,
            )
            phase_started = time.perf_counter()

    load = os.getloadavg()
    report = {
        "machine": {**describe_machine(torch.device("cpu")), "load_average": list(load)},
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "relu_surrogate": f"phi'' of softplus(beta={args.relu_surrogate:g}) at ReLU's kink",
        "sites": sites,
        "phases": phases,
        "stages": stages,
        "final_test_accuracy": phases[-1]["test_accuracy"],
        "final_parameters": parameter_count(model),
        "seconds": time.perf_counter() - started,
    }
    stage_rows = [
        [
            s["stage"],
            s["epoch"],
            f"{s['parameters_before']:,}",
            f"{s['parameters_after']:,}",
            s["splits"],
            f"{s['most_negative_index']:.3g}",
            f"{s['predicted_loss_change']:.3g}",
            "" if s["measured_loss_change"] is None else f"{s['measured_loss_change']:.3g}",
            f"{s['test_accuracy_before']:.4f}",
            f"{s['test_accuracy_right_after_split']:.4f}",
        ]
        for s in stages
    ]
    phase_rows = [
        [p["phase"], p["epochs"], f"{p['parameters']:,}", f"{p['train_loss']:.4f}", f"{p['test_accuracy']:.4f}"]
        for p in phases
    ]
    title = (
        f"ResNet-18 (width {args.width}, torchvision: 64; one shared in-place ReLU per block, relu_surrogate="
        f"{args.relu_surrogate:g}) grown by splitting on Fashion-MNIST: {args.train} training images, "
        f"{len(test_set)} test images, {args.epochs_per_phase} epochs per phase, {args.fraction:.0%} of the neurons "
        f"per stage, eps = {args.epsilon:g}, seed {args.seed}. {report['seconds'] / 60:.1f} min on "
        f"{report['machine']['cpu_count']} CPU cores (load average {load[0]:.2f}, shared machine)."
    )
    stage_table = markdown_table(
        [
            "stage",
            "after epoch",
            "parameters before",
            "parameters after",
            "splits",
            "most negative index",
            "predicted loss change",
            "measured loss change",
            "test accuracy before",
            "test accuracy right after",
        ],
        stage_rows,
    )
    phase_table = markdown_table(["phase", "epochs", "parameters", "training loss", "test accuracy"], phase_rows)
    text = f"{title}\n\n{stage_table}\n\n{phase_table}\n"
    atomic_write_json(args.out.with_suffix(".json"), report)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(f"\n{text}")


if __name__ == "__main__":
    main()
