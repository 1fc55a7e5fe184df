"""Where the selection's noise comes from: every neuron's splitting index, batch by batch (issue 9).

The top-10% selections of two disjoint halves of the training images agree on 94% of VGG19's neurons and on only
80% of MobileNetV1's (benchmarks/selection_noise.py). This benchmark asks why. Each model is trained briefly on real
Fashion-MNIST (as in benchmarks/adaptive_statistics.py: same seed and settings) and its reference eigenpairs
(lambda_i, v_i) come from all training images; then every batch b *alone* gives q_ib = v_i^T S_b v_i, whose mean
over the batches (weighted by their samples) is lambda_i again. To first order in the sampling noise, an index
estimated from N samples is lambda_i + v_i^T (S_N - S) v_i, so the spread of q_ib across batches measures it:

* sigma_i, the per-sample standard deviation of neuron i's index (from the batches' spread: batch means of n
  samples vary by sigma_i / sqrt(n)), and sigma_i / |lambda_i| for the neurons that matter (the reference's top
  20%);
* the neurons on the fence at N samples: within two standard errors (2 sigma_i / sqrt(N)) of the top-10%
  threshold, so that which side of it they land on is close to a coin toss;
* the overlaps that first-order noise alone gives: selections ranked by the batch means of q over random disjoint
  sets of batches (two halves; N samples against all), set beside the overlaps of real selections measured by
  the other benchmarks. What first-order noise does not explain comes from the eigenvectors (a noisy S rotates v
  and, at a near-degenerate lambda_min, biases the smallest eigenvalue down);
* for a depthwise-separable chain site, whose neuron is theta = (theta_A, theta_B) (the producer's filter and the
  depthwise filter), which block of S carries the index and which its noise: q = q_AA + q_AB + q_BB with q_AA =
  v_A^T S_AA v_A, q_BB = v_B^T S_BB v_B and the cross term q_AB = 2 v_A^T S_AB v_B;
* the tails: the excess kurtosis of the batch means (0 for Gaussian noise), median over the top 20%.

    python benchmarks/index_noise.py [--models vgg19 mobilenetv1] [--train-images 8000]

Writes benchmarks/results/index_noise.json and .md.
"""

from __future__ import annotations

import argparse
import math
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
from splitgrow.statistics import splitting_operators

#: sample sizes at which the fence and the first-order overlap with all images are reported
SAMPLE_SIZES = (512, 2048)


def batch_quadratic_forms(
    net: SplittableNetwork, batches: list, results: dict
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    """q[site]: (B, n) = v_i^T S_b v_i of every batch b and neuron i; for sites of two members (chains) also their
    blocks ("AA", "AB", "BB") as (B, n); and the (B,) batch sizes."""
    quadratic: dict[str, list[torch.Tensor]] = {name: [] for name in results}
    blocks: dict[str, dict[str, list[torch.Tensor]]] = {}
    sizes = []
    for batch in batches:
        operators = splitting_operators(net.model, net.graph, [batch], F.cross_entropy, dtype=torch.float32)
        sizes.append(len(batch[1]))
        for name, result in results.items():
            operator, directions = operators[name], result.directions.to(torch.float32)
            members = net.graph.sites[name].members
            if len(members) != 2:
                quadratic[name].append((directions * operator.matvec(directions)).double().sum(dim=1))
                continue
            # two products give all three blocks: S (v_A, 0) = (S_AA v_A, .) and S (0, v_B) = (S_AB v_B, S_BB v_B)
            split = members[0].neuron_dim
            first, second = directions.clone(), directions.clone()
            first[:, split:], second[:, :split] = 0.0, 0.0
            along_first, along_second = operator.matvec(first).double(), operator.matvec(second).double()
            parts = blocks.setdefault(name, {"AA": [], "AB": [], "BB": []})
            parts["AA"].append((first.double() * along_first).sum(dim=1))
            parts["AB"].append(2 * (first.double() * along_second).sum(dim=1))
            parts["BB"].append((second.double() * along_second).sum(dim=1))
            quadratic[name].append(parts["AA"][-1] + parts["AB"][-1] + parts["BB"][-1])
    stacked = {name: torch.stack(values) for name, values in quadratic.items()}
    stacked_blocks = {name: {k: torch.stack(v) for k, v in parts.items()} for name, parts in blocks.items()}
    return stacked, stacked_blocks, torch.tensor(sizes, dtype=torch.float64)


def weighted_mean(values: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Mean over batches (dimension 0) weighted by their samples."""
    return (sizes[:, None] * values).sum(dim=0) / sizes.sum()


def per_sample_std(values: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """sigma: batch means of n samples have variance sigma^2 / n, so sigma^2 ~ sum_b n_b (q_b - mean)^2 / (B - 1)."""
    centred = values - weighted_mean(values, sizes)
    return ((sizes[:, None] * centred**2).sum(dim=0) / (len(sizes) - 1)).sqrt()


def top(indexes: torch.Tensor, count: int) -> set[int]:
    """The ``count`` most negative indexes below 0 (the benchmarks' top-fraction rule)."""
    order = torch.argsort(indexes)
    return {int(i) for i in order[:count] if indexes[i] < 0}


def first_order_overlaps(
    q: torch.Tensor, sizes: torch.Tensor, count: int, samples: int, draws: int, generator: torch.Generator
) -> tuple[list[float], list[float]]:
    """Overlaps of selections ranked by the batch means of q over random sets of batches: (a set of about
    ``samples`` samples against all batches, two disjoint halves against each other), one per draw."""
    reference = top(weighted_mean(q, sizes), count)
    against_all, halves = [], []
    batches = len(sizes)
    take = max(1, min(batches, round(samples / float(sizes.mean()))))
    for _ in range(draws):
        order = torch.randperm(batches, generator=generator)
        chosen = order[:take]
        selection = top(weighted_mean(q[chosen], sizes[chosen]), count)
        against_all.append(len(selection & reference) / count)
        first, second = order[: batches // 2], order[batches // 2 :]
        a = top(weighted_mean(q[first], sizes[first]), count)
        b = top(weighted_mean(q[second], sizes[second]), count)
        halves.append(len(a & b) / count)
    return against_all, halves


def sampled_selections(
    net: SplittableNetwork,
    training: list,
    indexes: torch.Tensor,
    names: list[str],
    count: int,
    args: argparse.Namespace,
    generator: torch.Generator,
) -> dict[str, list[list[float]]]:
    """For ``args.draws`` random samples of ``args.samples`` images: (overlap with the reference selection, share
    of its decrease under the reference indexes) of the top ``count`` neurons ranked three ways: by lambda_min of
    the whole sample ("plain"), by the mean of its two halves' lambda_min ("halves"), and cross-fitted
    ("cross-fitted": v_A from one half evaluated on the other half's S, and the other way round, averaged)."""
    reference = top(indexes, count)
    best = float(-indexes[sorted(reference)].sum())
    found: dict[str, list[list[float]]] = {"plain": [], "halves": [], "cross-fitted": []}
    options = {"solver": "lobpcg", "tolerance": args.sample_tolerance, "seed": args.seed}
    for _ in range(args.selection_draws):
        order = torch.randperm(len(training), generator=generator)[: max(2, args.samples // args.batch_size)]
        sample = [training[i] for i in order.tolist()]
        folds = sample[0::2], sample[1::2]
        whole = net.splitting(sample, F.cross_entropy, **options)
        halves = [net.splitting(fold, F.cross_entropy, **options) for fold in folds]
        operators = [splitting_operators(net.model, net.graph, fold, F.cross_entropy) for fold in folds]
        crossed = []
        for name in names:
            first, second = (half[name].directions.to(torch.float32) for half in halves)
            on_second = (first * operators[1][name].matvec(first)).sum(dim=1)
            on_first = (second * operators[0][name].matvec(second)).sum(dim=1)
            crossed.append(0.5 * (on_second + on_first).double())
        rankings = {
            "plain": torch.cat([whole[n].indexes.double() for n in names]),
            "halves": torch.cat([0.5 * (halves[0][n].indexes + halves[1][n].indexes).double() for n in names]),
            "cross-fitted": torch.cat(crossed),
        }
        for way, ranking in rankings.items():
            chosen = top(ranking, count)
            found[way].append([len(chosen & reference) / count, float(-indexes[sorted(chosen)].sum()) / best])
    return found


def excess_kurtosis(values: torch.Tensor) -> torch.Tensor:
    centred = values - values.mean(dim=0)
    variance = (centred**2).mean(dim=0)
    return (centred**4).mean(dim=0) / variance.clamp_min(1e-300) ** 2 - 3.0


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    training = fashion_mnist_batches(args.train_images, args.batch_size, seed=args.seed, device=device)
    model = briefly_trained(name, args.width, training, args.epochs, seed=args.seed, device=device)
    net = SplittableNetwork(model, training[0][0][:2])
    results, reference_seconds = timed(
        device,
        net.splitting,
        training,
        F.cross_entropy,
        solver="auto",
        tolerance=args.tolerance,
        seed=args.seed,
    )
    names = list(results)
    indexes = torch.cat([results[n].indexes.to(torch.float64) for n in names])
    count = max(1, round(args.top_fraction * len(indexes)))
    generator = torch.Generator().manual_seed(args.seed + 1)
    selections, selection_seconds = timed(
        device, sampled_selections, net, training, indexes, names, count, args, generator
    )
    (quadratic, blocks, sizes), batch_seconds = timed(device, batch_quadratic_forms, net, training, results)
    q = torch.cat([quadratic[n] for n in names], dim=1)  # (B, all neurons)
    neuron_sites = [n for n in names for _ in range(results[n].indexes.numel())]
    mean_q = weighted_mean(q, sizes)
    order = torch.argsort(indexes)
    threshold = float(0.5 * (indexes[order[count - 1]] + indexes[order[count]]))
    watched = order[: 2 * count]  # the reference's top 20%: the selected neurons and their nearest rivals
    sigma = per_sample_std(q, sizes)
    relative = (sigma[watched] / indexes[watched].abs().clamp_min(1e-300)).median()
    samples = float(sizes.sum())
    fence = {
        str(n): int(((indexes - threshold).abs() < 2 * sigma / math.sqrt(n)).sum())
        for n in (*SAMPLE_SIZES, int(samples))
    }
    generator = torch.Generator().manual_seed(args.seed)
    first_order = {}
    for n in SAMPLE_SIZES:
        against_all, halves = first_order_overlaps(q, sizes, count, n, args.draws, generator)
        first_order[str(n)] = against_all
    first_order["halves"] = halves
    chain = {}
    if blocks:
        # The blocks' shares of the watched chain neurons' indexes, and each block's per-sample noise
        offsets, start = {}, 0
        for n in names:
            offsets[n] = (start, start + results[n].indexes.numel())
            start = offsets[n][1]
        watched_set = {int(i) for i in watched}
        for part in ("AA", "AB", "BB"):
            means, sigmas, scale = [], [], []
            for site, parts in blocks.items():
                lo, hi = offsets[site]
                rows = [i - lo for i in range(lo, hi) if i in watched_set]
                if not rows:
                    continue
                means.append(weighted_mean(parts[part][:, rows], sizes))
                sigmas.append(per_sample_std(parts[part][:, rows], sizes))
                scale.append(indexes[[lo + r for r in rows]].abs())
            if means:
                means_t, sigmas_t, scale_t = torch.cat(means), torch.cat(sigmas), torch.cat(scale)
                chain[part] = {
                    "share_of_index": float(means_t.sum() / -scale_t.sum()),
                    "median_relative_sigma": float((sigmas_t / scale_t.clamp_min(1e-300)).median()),
                    "neurons": len(scale_t),
                }
        chain_sigma = [
            float(sigma[i] / indexes[i].abs())
            for i in watched_set
            if len(net.graph.sites[neuron_sites[i]].members) == 2
        ]
        chain["total"] = {"median_relative_sigma": float(torch.tensor(chain_sigma).median()) if chain_sigma else None}
    return {
        "model": name,
        "width": args.width,
        "neurons": len(indexes),
        "top_m": count,
        "samples": samples,
        "batches": len(sizes),
        "seconds": {"reference": reference_seconds, "batches": batch_seconds, "selections": selection_seconds},
        "sampled_selections": selections,
        "consistency": float((mean_q - indexes).abs().max() / indexes.abs().max()),
        "threshold": threshold,
        "median_relative_sigma": float(relative),
        "fence": fence,
        "first_order_overlap": first_order,
        "median_excess_kurtosis": float(excess_kurtosis(q[:, watched]).median()),
        "chain_blocks": chain,
        "sites_of_top": sorted({neuron_sites[int(i)] for i in order[:count]}),
    }


def _mean_range(values: list[float]) -> str:
    return f"{sum(values) / len(values):.0%} ({min(values):.0%}-{max(values):.0%})"


def report_markdown(report: dict[str, Any]) -> str:
    rows = []
    for m in report["models"]:
        overlap = m["first_order_overlap"]
        rows.append(
            [
                m["model"],
                f"{m['neurons']} / {m['top_m']}",
                f"{m['median_relative_sigma']:.1f}",
                " / ".join(str(m["fence"][key]) for key in (*map(str, SAMPLE_SIZES), str(int(m["samples"])))),
                " / ".join(_mean_range(overlap[str(n)]) for n in SAMPLE_SIZES),
                _mean_range(overlap["halves"]),
                f"{m['median_excess_kurtosis']:.1f}",
            ]
        )
    sizes = " / ".join(map(str, SAMPLE_SIZES))
    table = markdown_table(
        [
            "model",
            "neurons / top 10%",
            "sigma / abs(lambda), top 20% (median)",
            f"on the fence at {sizes} / all samples",
            f"first-order overlap with all, {sizes} samples",
            "first-order overlap of two halves",
            "excess kurtosis of batch means",
        ],
        rows,
    )
    chains = []
    for m in report["models"]:
        if not m["chain_blocks"]:
            continue
        blocks = m["chain_blocks"]
        parts = ", ".join(
            f"{part}: {blocks[part]['share_of_index']:+.0%} of the index, "
            f"sigma/|lambda| {blocks[part]['median_relative_sigma']:.1f}"
            for part in ("AA", "AB", "BB")
            if part in blocks
        )
        chains.append(
            f"- {m['model']}: chain neurons of the top 20% (sigma/|lambda| of the whole index "
            f"{blocks['total']['median_relative_sigma']:.1f}): {parts}"
        )
    ranked = []
    for m in report["models"]:
        for way, draws in m["sampled_selections"].items():
            ranked.append(
                [
                    m["model"],
                    way,
                    len(draws),
                    _mean_range([overlap for overlap, _ in draws]),
                    _mean_range([decrease for _, decrease in draws]),
                ]
            )
    settings = report["settings"]
    ranked_table = markdown_table(
        ["model", "ranking", "draws", "top-10% overlap with the reference", "share of the reference's decrease"],
        ranked,
    )
    return (
        f"{machine_line(report)}\nTraining: {settings['epochs']} epochs on {settings['train_images']} real "
        f"Fashion-MNIST images (seed {settings['seed']}); reference eigenpairs on all of them (solver auto, tolerance "
        f"{settings['tolerance']}); q_ib = v_i^T S_b v_i for every batch of {settings['batch_size']}; first-order "
        f"overlaps over {settings['draws']} random batch sets.\n\n{table}\n"
        f"\nSelections from {settings['samples']} random images (LOBPCG at tolerance {settings['sample_tolerance']}) "
        "ranked by lambda_min of the whole sample (plain), by the mean of its halves' lambda_min (halves), or "
        "cross-fitted (each half's direction scored on the other half's S, averaged):\n\n"
        f"{ranked_table}\n"
        + (
            "\nBlocks of S for chain neurons (theta = (producer filter A, depthwise filter B)):\n\n"
            + "\n".join(chains)
            + "\n"
            if chains
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser, "index_noise")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="the reference solve's")
    parser.add_argument("--top-fraction", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=20, help="random batch sets for the first-order overlaps")
    parser.add_argument("--selection-draws", type=int, default=2, help="random samples for the ranked selections")
    parser.add_argument("--samples", type=int, default=2048, help="images in each sample of the ranked selections")
    parser.add_argument("--sample-tolerance", type=float, default=1e-2, help="LOBPCG's, on the samples")
    args = parser.parse_args()
    if args.quick:
        quick_training(args)
        args.samples, args.selection_draws, args.draws = 64, 1, 4
    run_models(args, lambda name, device: measure(name, args, device), report_markdown, lambda result: result)


if __name__ == "__main__":
    main()
