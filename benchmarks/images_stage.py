"""One growth stage of the paper's CIFAR-10 protocol, timed, to plan the full run (issue: image classification).

On random CIFAR-shaped data (3 x 32 x 32 uint8 images, 10 classes, the real input pipeline with augmentation and
normalisation) and with a shipped config (default: the paper's VGG19 protocol), it times:

  * one training epoch of the starting network (every layer at ``start_width``),
  * the splitting phase of one stage (statistics over ``split_batches`` batches, the solver, selection of
    ``growth_ratio`` of the neurons, the split of model and optimiser),
  * one fine-tuning epoch of the grown network,
  * one training epoch of the full-size network (the pruning baselines start from it),

each over ``--samples`` images (median of ``--repeats`` epochs after a warm-up) and scaled to 50,000, and from
them an upper bound on the whole protocol: every epoch of it (splitting path, full networks, pruning fine-tunes,
retrainings) at the full-size network's cost.

    python benchmarks/images_stage.py [--device cuda] [--config configs/images-paper-vgg19.yaml] [--samples 2048]

Writes benchmarks/results/images_stage-<device>.json and .md. A benchmark, not a test; random data is enough
for time, not for accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine, timed

from splitgrow.classification import make_optimizer, train_epoch
from splitgrow.config import load_config
from splitgrow.data import Batches, ImageDataset
from splitgrow.experiments.common import markdown_table
from splitgrow.experiments.images import ImagesConfig, full_epochs, model_config
from splitgrow.models import build_model
from splitgrow.network import SplittableNetwork
from splitgrow.surgery import parameter_count

CIFAR_TRAIN_SIZE = 50_000
ROOT = Path(__file__).resolve().parent.parent


def random_cifar(count: int, seed: int) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return ImageDataset("cifar10", images, labels, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def protocol_epochs(config: ImagesConfig) -> int:
    """Every training epoch the comparison runs: splitting path, full networks, pruning, retraining."""
    splitting = config.epochs + config.stages * config.finetune_epochs
    full = full_epochs(config) * len(config.pruning_methods)
    pruning = len(config.pruning_methods) * config.stages * config.finetune_epochs
    retraining = (1 + len(config.pruning_methods)) * config.stages * (config.retrain_epochs or full_epochs(config))
    return splitting + full + pruning + (retraining if config.retrain else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "images-paper-vgg19.yaml")
    parser.add_argument("--samples", type=int, default=2048, help="images per timed epoch (scaled to 50,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per network (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = load_config(ImagesConfig, args.config, {"device": args.device})
    torch.manual_seed(args.seed)
    data = random_cifar(args.samples, args.seed)
    scale = CIFAR_TRAIN_SIZE / args.samples

    def batches(training: bool) -> Batches:
        return Batches(
            data,
            config.batch_size,
            shuffle=training,
            augmentation=training,
            size=config.image_size,
            generator=torch.Generator().manual_seed(args.seed),
            device=device,
        )

    def epoch_seconds(model, optimizer) -> float:
        train_epoch(model, batches(True), optimizer)  # warm-up: kernel selection, allocator, lazy initialisation
        times = [timed(device, lambda: train_epoch(model, batches(True), optimizer))[1] for _ in range(args.repeats)]
        return statistics.median(times) * scale

    start_config = model_config(config, config.start_width, 3, 10)
    model = build_model(config.model, **start_config).to(device)
    optimizer = make_optimizer(model, config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)
    start_parameters = parameter_count(model)
    start_epoch = epoch_seconds(model, optimizer)

    example = next(iter(batches(False)))[0][:2]
    statistics_batches = [batch for _, batch in zip(range(config.split_batches), batches(False))]

    def split_stage():
        net = SplittableNetwork(model, example)
        results = net.splitting(statistics_batches, F.cross_entropy, solver=config.solver, seed=args.seed)
        neurons = sum(site.num_neurons for site in net.sites.values())
        requests = net.select(results, max(1, math.ceil(config.growth_ratio * neurons)), config.threshold)
        net.split(requests, config.epsilon, optimizer=optimizer)
        return results, len(requests)

    (results, splits), split_seconds = timed(device, split_stage)
    grown_parameters = parameter_count(model)
    grown_epoch = epoch_seconds(model, optimizer)

    full = build_model(config.model, **model_config(config, config.full_width, 3, 10, config.full_widths)).to(device)
    full_optimizer = make_optimizer(
        full, config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
    full_epoch = epoch_seconds(full, full_optimizer)
    total_epochs = protocol_epochs(config)
    report = {
        "machine": machine(device),
        "config": str(args.config),
        "samples_timed": args.samples,
        "start_parameters": start_parameters,
        "start_epoch_seconds_50k": start_epoch,
        "split_phase_seconds": split_seconds,
        "split_phase_over_start_epoch": split_seconds / start_epoch,
        "splits": splits,
        "solvers": sorted({r.solver for r in results.values()}),
        "converged_fraction": float(
            torch.cat([r.converged.float().cpu() for r in results.values() if r.converged is not None]).mean()
        ),
        "grown_parameters": grown_parameters,
        "grown_epoch_seconds_50k": grown_epoch,
        "full_parameters": parameter_count(full),
        "full_epoch_seconds_50k": full_epoch,
        "protocol_epochs": total_epochs,
        "protocol_hours_upper_bound": total_epochs * full_epoch / 3600,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"images_stage-{device.type}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown_table(
        ["network", "parameters", "epoch of 50k images, s"],
        [
            [f"start ({config.model}, width {config.start_width})", f"{start_parameters:,}", f"{start_epoch:.1f}"],
            [f"after one split ({splits} neurons)", f"{grown_parameters:,}", f"{grown_epoch:.1f}"],
            ["full size", f"{report['full_parameters']:,}", f"{full_epoch:.1f}"],
        ],
    )
    text = (
        f"device: {report['machine']['device']}, torch {torch.__version__}; {args.config.name}, "
        f"{args.samples} random CIFAR-shaped images timed\n\n{table}\n\n"
        f"splitting phase (statistics over {len(statistics_batches)} batches, {', '.join(report['solvers'])} solver, "
        f"selection, split): {split_seconds:.1f} s = {report['split_phase_over_start_epoch']:.2f} epochs of the "
        f"starting network; {report['converged_fraction']:.0%} of the neurons converged\n"
        f"whole protocol: {total_epochs} epochs, at most {report['protocol_hours_upper_bound']:.1f} h "
        f"(every epoch at the full-size network's cost)\n"
    )
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
