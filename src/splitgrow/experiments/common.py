"""What every experiment shares: seeds, progress reporting, the run loop over seeds, and tables."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..artifacts import atomic_write_json, atomic_write_text, run_metadata
from ..checkpoints import Checkpoint
from ..config import config_to_dict
from ..errors import RunFolderError
from ..parallel import is_main
from .workers import WorkerPool


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


#: results within this relative difference of each other are a tie, not a win (summaries, notes in figures): runs
#: that end in the same minimum differ in their last digits by rounding and by where training stopped, not by method
TIE_TOLERANCE = 1e-3


def outcome(value: float, other: float, tolerance: float = TIE_TOLERANCE) -> str:
    """``"win"`` when ``value`` is lower (better) than ``other`` by more than ``tolerance`` times the larger of their
    magnitudes, ``"loss"`` when it is higher by as much, ``"tie"`` otherwise."""
    if abs(value - other) <= tolerance * max(abs(value), abs(other)):
        return "tie"
    return "win" if value < other else "loss"


def coinciding(
    curves: dict[str, Sequence[float]],
    *,
    xs: dict[str, Sequence[float]] | None = None,
    scale: float | None = None,
    tolerance: float = TIE_TOLERANCE,
) -> list[list[str]]:
    """Groups of two or more named curves that a figure draws on top of each other: equal at every point within
    ``tolerance`` times ``scale`` (the figure's scale), or, without ``scale``, times the values' own magnitude (for a
    log axis). Curves with other abscissae ``xs`` never coincide."""
    groups: list[list[str]] = []
    for name, values in curves.items():
        for group in groups:
            other = group[0]
            if xs is not None and list(xs[name]) != list(xs[other]):
                continue
            a, b = np.asarray(values, dtype=float), np.asarray(curves[other], dtype=float)
            if a.shape != b.shape:
                continue
            bound = tolerance * (scale if scale is not None else np.maximum(np.abs(a), np.abs(b)))
            if np.all(np.abs(a - b) <= bound):
                group.append(name)
                break
        else:
            groups.append([name])
    return [group for group in groups if len(group) > 1]


def plot_method(
    ax: Any,
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    label: str,
    style: dict[str, Any],
    position: int,
    count: int,
    markers: int = 8,
) -> None:
    """Draw one method's line on matplotlib axes ``ax``: method ``position`` of ``count`` is stacked above the ones
    before it and has ``markers`` markers at an offset of its own, so that where lines coincide every method's
    markers still show (give the lower ones wider lines, the upper ones dashes)."""
    step = max(1, len(xs) // markers)
    ax.plot(
        xs,
        ys,
        label=label,
        zorder=2 + position,
        markevery=(position * step // max(1, count), step),
        markersize=4,
        markerfacecolor="none",
        **style,
    )


def note_coinciding(ax: Any, groups: list[list[str]], labels: dict[str, str]) -> None:
    """Write in a corner of ``ax`` which methods' lines lie on top of each other (groups from :func:`coinciding`)."""
    if groups:
        text = "; ".join(" = ".join(labels[name] for name in group) for group in groups)
        ax.text(
            0.01,
            0.01,
            f"coincide (within {TIE_TOLERANCE:g}): {text}",
            transform=ax.transAxes,
            fontsize=7,
            va="bottom",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )


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
        distributed: ``run_seed`` accepts a ``torchrun`` launch (data-parallel processes, see
            :mod:`splitgrow.parallel`); its settings have a ``device``.
    """

    name: str
    description: str
    config_class: type
    run_seed: Callable[[Any, int, Reporter], dict[str, Any]]
    plot: Callable[[dict[str, Any], Path], list[Path]]
    summarize: Callable[[list[dict[str, Any]]], tuple[dict[str, Any], str]]
    threads: int | None = None
    checkpoints: bool = False
    distributed: bool = False
    #: settings that do not change the results (where the data or device is): a resumed run may change them, and
    #: runs that differ only in them have one configuration
    resume_free_keys: frozenset[str] = frozenset()


def seed_checkpoint(experiment: Experiment, config: Any, seed: int, workdir: Path, *, resume: bool) -> Checkpoint:
    """The checkpoint of one seed's run in ``workdir`` (created), recording what the run is: the experiment, the seed
    and the settings, less those a resumed run may change (``resume_free_keys``). With ``resume``, the saved progress
    is loaded, and a checkpoint of another run is refused (:class:`~splitgrow.errors.CheckpointError`)."""
    settings = {key: value for key, value in config_to_dict(config).items() if key not in experiment.resume_free_keys}
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(workdir, {"experiment": experiment.name, "seed": seed, "config": settings})
    if resume:
        checkpoint.load()
    return checkpoint


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


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Run with cuDNN's deterministic algorithms and without its autotuner, so that a GPU run with the same seed
    repeats itself as a CPU run does (its fastest kernels may sum in a different order each time); the previous
    settings are restored after. CPU runs are unaffected."""
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before


def _run_one_seed(
    experiment: Experiment, config: Any, seed: int, reporter: Reporter, workdir: Path, resume: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    with torch_threads(experiment.threads), deterministic_kernels():
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


def _changed_settings(before: dict[str, Any], after: dict[str, Any], free_keys: frozenset[str]) -> list[str]:
    """The settings whose values differ, free keys aside, in the order of the settings."""
    keys = [*before, *(key for key in after if key not in before)]
    return [key for key in keys if key not in free_keys and before.get(key) != after.get(key)]


def _describe_changes(before: dict[str, Any], after: dict[str, Any], keys: list[str], most: int = 5) -> str:
    """``key: old -> new; ...`` for the first ``most`` keys."""
    changes = "; ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in keys[:most])
    return changes + (f"; and {len(keys) - most} more" if len(keys) > most else "")


def _recorded_settings(out_dir: Path) -> dict[str, Any] | None:
    """The settings in ``out_dir/config.yaml``, or None when the folder has none."""
    path = out_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        settings = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        settings = None
    if not isinstance(settings, dict):
        raise RunFolderError(
            "corrupt config.yaml, not a mapping of settings", path, "delete the folder or choose another --out"
        )
    return settings


def _check_same_settings(out_dir: Path, config_dict: dict[str, Any], experiment: Experiment, resume: bool) -> None:
    """A run folder belongs to one configuration: refuse to run or resume other settings into it, which would mix
    its results with results computed differently."""
    free_keys = experiment.resume_free_keys
    recorded = _recorded_settings(out_dir)
    foreign = [] if recorded is None else [str(key) for key in recorded if key not in config_dict]
    if foreign:  # every setting would differ: say what the folder holds instead
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunFolderError(
            f"the folder holds a run of another experiment (or of another version of splitgrow): its config.yaml "
            f"sets {shown}, which {experiment.name} has no setting for",
            out_dir,
            "choose another folder with --out",
        )
    changed = [] if recorded is None else _changed_settings(recorded, config_dict, free_keys)
    if not changed:
        return
    changes = _describe_changes(recorded, config_dict, changed)
    path = out_dir / "config.yaml"
    if resume:
        raise RunFolderError(
            f"cannot resume the run with other settings ({changes})",
            out_dir,
            f"resume with its settings (--config {path}), or start a new run with another --out",
        )
    raise RunFolderError(
        f"the folder holds a run with other settings ({changes})",
        out_dir,
        f"continue that run with --resume --config {path}, delete the folder to replace it, or choose another "
        "folder with --out",
    )


def _read_results(path: Path) -> dict[str, Any]:
    """One seed's ``results.json``, checked to be what :func:`run_experiment` writes."""
    fix = f"delete {path.parent} and run that seed again (--resume keeps the others)"
    try:
        results = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"corrupt results, not valid JSON: {error}", path, fix) from None
    except RecursionError:
        raise RunFolderError("corrupt results, lists nested too deeply", path, fix) from None
    required = ("experiment", "seed", "config", "metadata", "wall_time_s")
    if not isinstance(results, dict):
        raise RunFolderError(f"not the results of a splitgrow run (a {type(results).__name__})", path, fix)
    missing = [key for key in required if key not in results]
    if missing:
        raise RunFolderError(f"not the results of a splitgrow run (no {', '.join(missing)})", path, fix)
    # what a summary reads of every seed, checked here: a hand-edited value would fail there, as a traceback
    kinds = {"experiment": str, "seed": int, "config": dict, "metadata": dict, "wall_time_s": (int, float)}
    wrong = [
        f"{key} {results[key]!r}"
        for key, kind in kinds.items()
        if not isinstance(results[key], kind) or isinstance(results[key], bool)
    ]
    if wrong:
        raise RunFolderError(f"not the results of a splitgrow run (its {', '.join(wrong)})", path, fix)
    folder_seed = int(path.parent.name.removeprefix("seed-")) if re.fullmatch(r"seed-\d+", path.parent.name) else None
    if folder_seed is not None and results["seed"] != folder_seed:
        raise RunFolderError(
            f"the results of seed {results['seed']} in the folder of seed {folder_seed} (moved, or edited)",
            path,
            f"move them to seed-{results['seed']}, or {fix}",
        )
    return results


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _file_states(out_dir: Path) -> dict[Path, int]:
    """Every file under ``out_dir`` but its config.yaml, with its modification time (ns)."""
    if not out_dir.is_dir():
        return {}
    return {
        path: path.stat().st_mtime_ns
        for path in out_dir.rglob("*")
        if path.is_file() and path != out_dir / "config.yaml"
    }


def _remove_leftovers(
    out_dir: Path, seeds: Sequence[int], created: list[Path], wrote_settings: bool, before: dict[Path, int]
) -> None:
    """After a failed run: remove its seeds' empty folders (a seed whose first file could not be written), and if it
    wrote nothing else (the files are those of ``before``, unchanged), the config.yaml it wrote and the folders it
    created, so that it can be rerun freely (a refused --resume must not leave its settings as the folder's)."""
    for seed in seeds:
        folder = out_dir / f"seed-{seed}"
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if not wrote_settings or _file_states(out_dir) != before:
        return
    (out_dir / "config.yaml").unlink()
    for folder in created:
        if any(folder.iterdir()):
            return
        folder.rmdir()


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
    In a data-parallel run (``torchrun``) every process runs every seed and rank 0 alone writes the files.
    """
    config_dict = config_to_dict(config)
    _check_same_settings(out_dir, config_dict, experiment, resume)
    created = _missing_folders(out_dir)
    had_settings = (out_dir / "config.yaml").exists()
    before = {} if had_settings else _file_states(out_dir)  # only needed to take back a config.yaml it writes
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))
    try:
        return _run_seeds(experiment, config, config_dict, seeds, out_dir, reporter, jobs, resume)
    except BaseException:
        if is_main():
            _remove_leftovers(out_dir, seeds, created, wrote_settings=not had_settings, before=before)
        raise


def _run_seeds(
    experiment: Experiment,
    config: Any,
    config_dict: dict[str, Any],
    seeds: Sequence[int],
    out_dir: Path,
    reporter: Reporter,
    jobs: int,
    resume: bool,
) -> tuple[dict[str, Any], str]:
    """The body of :func:`run_experiment`, once its folder holds the run's config.yaml."""

    def finish(results: dict[str, Any]) -> dict[str, Any]:
        seed_dir = out_dir / f"seed-{results['seed']}"
        if not is_main():
            return results
        atomic_write_json(seed_dir / "results.json", results)
        experiment.plot(results, seed_dir)
        reporter.message(f"seed {results['seed']}: results in {seed_dir} ({results['wall_time_s']:.1f} s)")
        return results

    done: dict[int, dict[str, Any]] = {}
    if resume:
        for seed in seeds:
            path = out_dir / f"seed-{seed}" / "results.json"
            if path.is_file():
                done[seed] = _check_resumed_results(experiment, config_dict, _read_results(path), path)
                reporter.message(f"seed {seed}: already finished in {path.parent}")
    pending = [seed for seed in seeds if seed not in done]
    if jobs > 1 and len(pending) > 1:
        reporter.message(f"running {len(pending)} seeds in {min(jobs, len(pending))} processes")
        with WorkerPool(min(jobs, len(pending))) as pool:
            futures = [
                pool.submit(_run_in_worker, experiment.name, config, seed, out_dir / f"seed-{seed}", resume)
                for seed in pending
            ]
            for future in as_completed(futures):  # each seed's files as soon as it ends: an interrupt keeps them
                results = finish(future.result())
                done[results["seed"]] = results
    else:
        for seed in pending:
            done[seed] = finish(_run_one_seed(experiment, config, seed, reporter, out_dir / f"seed-{seed}", resume))
    all_results = [done[seed] for seed in seeds]
    summary, table = experiment.summarize(all_results)
    if not is_main():
        return summary, table
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


def _check_resumed_results(
    experiment: Experiment, config_dict: dict[str, Any], results: dict[str, Any], path: Path
) -> dict[str, Any]:
    """The finished results of a seed that ``--resume`` keeps, refused if they are another experiment's, of other
    settings, or if the summary at the end could not use them (edited): now, not after the other seeds have run,
    as a traceback."""
    fix = f"delete {path.parent} to run that seed again (--resume keeps the others), or choose another --out"
    if results["experiment"] != experiment.name:
        raise RunFolderError(
            f"cannot resume: the results of the {results['experiment']} experiment, not {experiment.name}", path, fix
        )
    changed = _changed_settings(results["config"], config_dict, experiment.resume_free_keys)
    if changed:
        changes = _describe_changes(results["config"], config_dict, changed)
        raise RunFolderError(
            f"cannot resume: this seed was run with other settings ({changes})",
            path,
            "choose another --out for these settings",
        )
    try:
        experiment.summarize([results])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        raise RunFolderError(
            f"cannot resume: results that are not those of a {experiment.name} run ({type(error).__name__}: "
            f"{error}): edited, or written by another version of splitgrow",
            path,
            fix,
        ) from None
    return results


def report_experiment(out_dir: Path) -> tuple[dict[str, Any], str]:
    """Redraw the figures and rewrite the summary of a finished run from its ``seed-*/results.json`` files.

    Raises:
        RunFolderError: no results, unreadable ones, or results of different experiments or settings (which a
            summary would mix), or a ``config.yaml`` that disagrees with them.
    """
    from . import experiments

    if not out_dir.is_dir():
        state = "not a folder" if out_dir.exists() else "no such folder"
        raise RunFolderError(
            f"no seed-*/results.json to report: {state}", out_dir, "give the --out folder of a finished run"
        )
    seed_folders = [folder for folder in out_dir.glob("seed-*") if re.fullmatch(r"seed-\d+", folder.name)]
    paths = sorted(
        (folder / "results.json" for folder in seed_folders if (folder / "results.json").is_file()),
        key=lambda path: int(path.parent.name.removeprefix("seed-")),
    )
    if not paths:
        raise RunFolderError("no seed-*/results.json to report", out_dir, "give the --out folder of a finished run")
    all_results = [_read_results(path) for path in paths]
    names = sorted({str(results["experiment"]) for results in all_results})
    known = experiments()
    if len(names) > 1 or names[0] not in known:
        raise RunFolderError(
            f"results of {'the experiments ' + ', '.join(names) if len(names) > 1 else 'an unknown experiment'}",
            out_dir,
            f"report the results of one of {', '.join(known)} per folder",
        )
    experiment = known[names[0]]
    _check_one_configuration(out_dir, all_results, experiment.resume_free_keys)
    try:
        for results, path in zip(all_results, paths):
            experiment.plot(results, path.parent)
        summary, table = experiment.summarize(all_results)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        # the results files are the user's: one that lacks what its experiment's runs record cannot be drawn
        raise RunFolderError(
            f"results that are not those of a {experiment.name} run ({type(error).__name__}: {error}): edited, or "
            "written by another version of splitgrow",
            out_dir,
            f"run the seeds again with `splitgrow run {experiment.name}` (into another --out)",
        ) from None
    try:
        previous = json.loads((out_dir / "summary.json").read_bytes())
    except (OSError, ValueError):  # no summary yet, or a damaged one: it is rewritten below
        previous = {}
    metadata = previous.get("metadata") if isinstance(previous, dict) else None
    atomic_write_json(
        out_dir / "summary.json",
        {
            "experiment": experiment.name,
            "seeds": [r["seed"] for r in all_results],
            "config": all_results[0]["config"],
            "metadata": metadata or all_results[0]["metadata"],
            "wall_time_s": sum(r["wall_time_s"] for r in all_results),
            **summary,
        },
    )
    atomic_write_text(out_dir / "summary.md", table + "\n")
    return summary, table


def _check_one_configuration(out_dir: Path, all_results: list[dict[str, Any]], free_keys: frozenset[str]) -> None:
    """Refuse to summarise seeds run with different settings together, or under a config.yaml of other ones."""
    groups: list[list[dict[str, Any]]] = []
    for results in all_results:
        group = next((g for g in groups if not _changed_settings(g[0]["config"], results["config"], free_keys)), None)
        if group is None:
            groups.append([results])
        else:
            group.append(results)
    if len(groups) > 1:
        first = groups[0][0]["config"]
        keys = list(dict.fromkeys(k for g in groups[1:] for k in _changed_settings(first, g[0]["config"], free_keys)))
        described = "; ".join(
            ", ".join(f"seed-{r['seed']}" for r in group)
            + ": "
            + ", ".join(f"{key}={group[0]['config'].get(key)!r}" for key in keys[:5])
            for group in groups
        )
        raise RunFolderError(
            f"results of different settings ({described})",
            out_dir,
            "move the seed folders of each setting into a folder of their own and report each",
        )
    recorded = _recorded_settings(out_dir)
    settings = all_results[0]["config"]
    changed = [] if recorded is None else _changed_settings(settings, recorded, free_keys)
    if changed:
        raise RunFolderError(
            f"config.yaml disagrees with the results ({_describe_changes(settings, recorded, changed)})",
            out_dir / "config.yaml",
            "restore the settings the seeds were run with (the 'config' of a results.json), or move the seeds to a "
            "folder of their own",
        )
