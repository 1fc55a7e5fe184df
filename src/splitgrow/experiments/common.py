"""What every experiment shares: seeds, progress reporting, the run loop over seeds, and tables."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..artifacts import atomic_write_json, atomic_write_text, run_metadata
from ..config import config_to_dict
from ..errors import SplitgrowError


def derive_seed(seed: int, *keys: str) -> int:
    """A 63-bit seed for one purpose (e.g. ``"target"``, ``"method/random_split"``) of a run with this seed.

    Streams for different purposes are independent, and adding a purpose never shifts the others.
    """
    digest = hashlib.sha256(":".join([str(seed), *keys]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, *keys: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


class Reporter:
    """Progress bars and one-line messages on stderr; silent when ``enabled`` is False."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def bar(self, total: int, description: str) -> tqdm:
        return tqdm(
            total=total,
            desc=description,
            unit="it",
            unit_scale=True,
            leave=False,
            disable=not self.enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)


def format_number(value: float | None, digits: int = 3) -> str:
    """Compact scientific notation for tables; '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits - 1}e}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table with columns padded for reading in a terminal too."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), separator, *(line(row) for row in cells[1:])])


@dataclass(frozen=True)
class Experiment:
    """An experiment the command line can run.

    Attributes:
        name: the command-line name (``splitgrow run NAME``).
        description: one line for listings.
        config_class: the dataclass of its settings (defaults = the documented default run).
        run_seed: runs one seed and returns the JSON-ready results (the numbers behind every figure).
        plot: draws the figures of one seed's results into a folder; returns the files written.
        summarize: from all seeds' results, a JSON-ready summary and a markdown table.
        threads: torch CPU threads while it runs (None: leave torch's setting). The toy experiments use 1: their
            tensors are so small that a second thread only adds synchronisation, and much more of it when the
            machine is busy with anything else.
        checkpoints: ``run_seed`` also takes ``workdir`` (the seed's folder) and ``resume``, and checkpoints there.
    """

    name: str
    description: str
    config_class: type
    run_seed: Callable[[Any, int, Reporter], dict[str, Any]]
    plot: Callable[[dict[str, Any], Path], list[Path]]
    summarize: Callable[[list[dict[str, Any]]], tuple[dict[str, Any], str]]
    threads: int | None = None
    checkpoints: bool = False
    resume_free_keys: frozenset[str] = frozenset()  # settings a resumed run may change (where data or device is)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads, restoring the previous setting after."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_one_seed(
    experiment: Experiment, config: Any, seed: int, reporter: Reporter, workdir: Path, resume: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    with torch_threads(experiment.threads):
        if experiment.checkpoints:
            results = experiment.run_seed(config, seed, reporter, workdir=workdir, resume=resume)
        else:
            results = experiment.run_seed(config, seed, reporter)
        metadata = run_metadata()
    return {
        "experiment": experiment.name,
        "seed": seed,
        "config": config_to_dict(config),
        "metadata": metadata,
        "wall_time_s": time.perf_counter() - started,
        **results,
    }


def _run_in_worker(name: str, config: Any, seed: int, workdir: Path, resume: bool) -> dict[str, Any]:
    """A seed in a worker process (looked up by name: experiments hold functions, which do not pickle)."""
    from . import experiments

    return _run_one_seed(experiments()[name], config, seed, Reporter(False), workdir, resume)


def _check_resumable(out_dir: Path, config_dict: dict[str, Any], free_keys: frozenset[str]) -> None:
    """Refuse to resume a run with settings other than those it was started with: its finished parts would be
    mixed with parts computed differently."""
    path = out_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        previous = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SplitgrowError(f"{path} is corrupt ({error}); delete {out_dir} or choose another --out") from None
    if not isinstance(previous, dict):
        raise SplitgrowError(f"{path} is not a mapping of settings; delete {out_dir} or choose another --out")
    changed = [
        f"{key}: {previous.get(key)!r} -> {value!r}"
        for key, value in config_dict.items()
        if key not in free_keys and previous.get(key) != value
    ]
    if changed:
        raise SplitgrowError(
            f"cannot resume the run in {out_dir} with other settings ({'; '.join(changed)}); "
            f"resume with its settings (--config {path}) or choose another --out"
        )


def run_experiment(
    experiment: Experiment,
    config: Any,
    seeds: Sequence[int],
    out_dir: Path,
    reporter: Reporter,
    *,
    jobs: int = 1,
    resume: bool = False,
) -> tuple[dict[str, Any], str]:
    """Run an experiment for every seed, writing ``seed-<s>/results.json`` and figures as each seed ends, then
    ``summary.json``, ``summary.md`` and the ``config.yaml`` that reproduces the run.

    With ``jobs`` > 1, seeds run in that many worker processes; every seed's numbers are the same as in a
    sequential run (each seed has its own random streams and runs single-threaded when the experiment says so).
    With ``resume``, seeds whose results exist are kept, and experiments with checkpoints continue from them.
    """
    config_dict = config_to_dict(config)
    if resume:
        _check_resumable(out_dir, config_dict, experiment.resume_free_keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))

    def finish(results: dict[str, Any]) -> dict[str, Any]:
        seed_dir = out_dir / f"seed-{results['seed']}"
        atomic_write_json(seed_dir / "results.json", results)
        experiment.plot(results, seed_dir)
        reporter.message(f"seed {results['seed']}: results in {seed_dir} ({results['wall_time_s']:.1f} s)")
        return results

    done: dict[int, dict[str, Any]] = {}
    if resume:
        for seed in seeds:
            path = out_dir / f"seed-{seed}" / "results.json"
            if path.is_file():
                done[seed] = json.loads(path.read_text())
                reporter.message(f"seed {seed}: already finished in {path.parent}")
    pending = [seed for seed in seeds if seed not in done]
    if jobs > 1 and len(pending) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        reporter.message(f"running {len(pending)} seeds in {min(jobs, len(pending))} processes")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=context) as pool:
            futures = {
                seed: pool.submit(_run_in_worker, experiment.name, config, seed, out_dir / f"seed-{seed}", resume)
                for seed in pending
            }
            for seed, future in futures.items():
                done[seed] = finish(future.result())
    else:
        for seed in pending:
            done[seed] = finish(_run_one_seed(experiment, config, seed, reporter, out_dir / f"seed-{seed}", resume))
    all_results = [done[seed] for seed in seeds]
    summary, table = experiment.summarize(all_results)
    atomic_write_json(
        out_dir / "summary.json",
        {
            "experiment": experiment.name,
            "seeds": list(seeds),
            "config": config_dict,
            "metadata": run_metadata(),
            "wall_time_s": sum(r["wall_time_s"] for r in all_results),
            **summary,
        },
    )
    atomic_write_text(out_dir / "summary.md", table + "\n")
    return summary, table


def report_experiment(out_dir: Path) -> tuple[dict[str, Any], str]:
    """Redraw the figures and rewrite the summary of a finished run from its ``seed-*/results.json`` files."""
    from ..errors import SplitgrowError
    from . import experiments

    paths = sorted(out_dir.glob("seed-*/results.json"), key=lambda p: int(p.parent.name.split("-", 1)[1]))
    if not paths:
        raise SplitgrowError(f"no seed-*/results.json under {out_dir}; give the --out folder of a finished run")
    try:
        all_results = [json.loads(path.read_text()) for path in paths]
    except json.JSONDecodeError as error:
        raise SplitgrowError(f"a results file under {out_dir} is not valid JSON: {error}") from None
    name = all_results[0].get("experiment")
    known = experiments()
    if name not in known:
        raise SplitgrowError(f"{paths[0]} is not the result of a known experiment")
    experiment = known[name]
    for results, path in zip(all_results, paths):
        experiment.plot(results, path.parent)
    summary, table = experiment.summarize(all_results)
    previous = {}
    if (out_dir / "summary.json").is_file():
        previous = json.loads((out_dir / "summary.json").read_text())
    atomic_write_json(
        out_dir / "summary.json",
        {
            "experiment": name,
            "seeds": [r["seed"] for r in all_results],
            "config": all_results[0]["config"],
            "metadata": previous.get("metadata", all_results[0]["metadata"]),
            "wall_time_s": sum(r["wall_time_s"] for r in all_results),
            **summary,
        },
    )
    atomic_write_text(out_dir / "summary.md", table + "\n")
    return summary, table
