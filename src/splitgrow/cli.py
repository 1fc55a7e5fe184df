"""The ``splitgrow`` command line: a thin layer over :mod:`splitgrow.experiments`.

User errors (an unknown experiment, a bad setting, a missing or malformed config file, a diverging run) print one
line, ``splitgrow: error: ...``, and exit with status 2 before anything is written.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from . import __version__
from .config import load_config, parse_overrides
from .errors import SplitgrowError

app = typer.Typer(
    name="splitgrow",
    help="Grow neural networks by splitting steepest descent (Liu, Wu & Wang, NeurIPS 2019).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_USER_ERROR = 2


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"splitgrow: error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"splitgrow {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Grow neural networks by splitting steepest descent."""


@app.command("list")
def list_experiments() -> None:
    """List the experiments that `splitgrow run` knows."""
    from .experiments import experiments

    for name, experiment in experiments().items():
        typer.echo(f"{name:8s} {experiment.description}")


@app.command()
def run(
    experiment: Annotated[str, typer.Argument(help="Experiment to run (see `splitgrow list`): rbf, mmd, images.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder [default: runs/EXPERIMENT].")] = None,
    seed: Annotated[int, typer.Option("--seed", help="First random seed.")] = 0,
    seeds: Annotated[int, typer.Option("--seeds", help="Number of seeds: SEED, SEED+1, ...")] = 1,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of settings (e.g. configs/rbf-paper.yaml).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one setting, KEY=VALUE (YAML syntax); repeatable."),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Run seeds in this many processes.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoints.")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", help="images: fashion-mnist, mnist or cifar10.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="images: vgg19 or mobilenetv1.")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="images: folder of the dataset.")] = None,
    download: Annotated[bool, typer.Option("--download", help="images: fetch the dataset (internet).")] = False,
    device: Annotated[str | None, typer.Option("--device", help="images: cpu or cuda.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")] = False,
) -> None:
    """Run an experiment: results.json and PNG figures per seed, then summary.json, summary.md and a table."""
    from .experiments import Reporter, experiments, run_experiment

    known = experiments()
    if experiment not in known:
        fail(f"unknown experiment {experiment!r}; choose one of: {', '.join(known)}")
    if seeds < 1:
        fail(f"--seeds must be >= 1, got {seeds}")
    if seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    if jobs < 1:
        fail(f"--jobs must be >= 1, got {jobs}")
    spec = known[experiment]
    shortcuts = {"dataset": dataset, "model": model, "data_root": data_root, "download": download or None}
    shortcuts["device"] = device
    try:
        values = parse_overrides(overrides or [])
        settings_fields = {f.name for f in dataclasses.fields(spec.config_class)}
        for key, value in shortcuts.items():
            if value is None:
                continue
            option = "--" + key.replace("_", "-")
            if key not in settings_fields:
                fail(f"{option} does not apply to the {experiment} experiment (it has no '{key}' setting)")
            values[key] = str(value) if isinstance(value, Path) else value
        settings = load_config(spec.config_class, config, values)
        out_dir = out if out is not None else Path("runs") / experiment
        if out_dir.exists() and not out_dir.is_dir():
            fail(f"--out {out_dir} exists and is not a folder")
        if resume and not out_dir.is_dir():
            fail(f"--resume: {out_dir} does not exist; give the --out folder of the run to continue")
        _, table = run_experiment(
            spec, settings, list(range(seed, seed + seeds)), out_dir, Reporter(not quiet), jobs=jobs, resume=resume
        )
    except SplitgrowError as error:
        fail(str(error))
    except KeyboardInterrupt:
        typer.echo("splitgrow: interrupted; finished seeds are in their folders", err=True)
        raise typer.Exit(130) from None
    typer.echo(table)
    typer.echo(f"\nresults: {out_dir}/summary.json, {out_dir}/seed-*/results.json and figures")


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="The --out folder of a finished `splitgrow run`.")],
) -> None:
    """Redraw the figures and rewrite the summary of a finished run from its results files (no re-running)."""
    from .experiments import report_experiment

    try:
        _, table = report_experiment(out)
    except SplitgrowError as error:
        fail(str(error))
    typer.echo(table)


@app.command()
def inspect(
    model: Annotated[str, typer.Option("--model", help="Zoo model: mlp, vgg19, mobilenetv1, dscnn, resnet, concat.")],
    width: Annotated[int, typer.Option("--width", help="Width of every layer (see splitgrow.models).")] = 16,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Also compute splitting indexes on data: 'random' (random inputs and labels)."),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Samples used for the indexes.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for the indexes.")] = 64,
    solver: Annotated[str, typer.Option("--solver", help="dense, lobpcg (matrix-free), rayleigh or auto.")] = "auto",
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="With --data: the splits that lower the loss most within this budget."),
    ] = None,
    budget_kind: Annotated[str, typer.Option("--budget-kind", help="What --budget counts: parameters or flops.")] = (
        "parameters"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the weights and the random data.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the table as JSON.")] = None,
) -> None:
    """Print a zoo model's splittable sites: neurons, parameters, FLOPs, split costs and (with --data) indexes."""
    import torch

    from .artifacts import atomic_write_json
    from .experiments.common import format_number, markdown_table
    from .inspection import site_table
    from .models import build_model, uniform_widths
    from .network import SplittableNetwork

    if width < 1:
        fail(f"--width must be >= 1, got {width}")
    if data not in (None, "random"):
        fail(f"--data must be 'random' (real datasets come with `splitgrow run images`), got {data!r}")
    if samples < 1 or batch_size < 1:
        fail("--samples and --batch-size must be >= 1")
    from .budget import COST_KINDS
    from .network_statistics import SOLVERS

    if solver not in SOLVERS:
        fail(f"--solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if budget_kind not in COST_KINDS:
        fail(f"--budget-kind must be one of {', '.join(COST_KINDS)}, got {budget_kind!r}")
    if budget is not None and (data is None or budget < 0):
        fail("--budget needs --data and a value >= 0")
    try:
        torch.manual_seed(seed)
        network = build_model(model, **uniform_widths(model, width))
        example = network.example_input(2)
        net = SplittableNetwork(network, example)
        results = None
        if data == "random":
            generator = torch.Generator().manual_seed(seed)
            classes = network.config()["num_classes"]
            inputs = torch.randn((samples, *example.shape[1:]), generator=generator)
            targets = torch.randint(0, classes, (samples,), generator=generator)
            batches = [(inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, samples, batch_size)]
            results = net.splitting(batches, torch.nn.functional.cross_entropy, solver=solver, progress=True)
        rows, totals = site_table(net.graph, example, results)
        selection = None
        if budget is not None:
            from .budget import select_within_budget, split_costs

            costs = split_costs(net.graph, example, budget_kind)
            selection = select_within_budget(results, costs, budget, graph=net.graph)
    except SplitgrowError as error:
        fail(str(error))
    headers = ["site", "kind", "neurons", "d", "params", "FLOPs", "split +params", "split +FLOPs", "exact"]
    keys = ["site", "kind", "neurons", "neuron_dim", "parameters", "flops", "split_parameters", "split_flops", "exact"]
    if results is not None:
        headers += ["min index", "negative", "solver", "converged"]
        keys += ["min_index", "negative", "solver", "converged"]
    headers.append("note")
    keys.append("note")
    table_rows = []
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key)
            if key == "min_index":
                cells.append(format_number(value))
            elif value is None:
                cells.append("-")
            elif key == "converged":
                cells.append(f"{value:.0%}")
            elif isinstance(value, bool):
                cells.append("yes" if value else "no")
            else:
                cells.append(str(value))
        table_rows.append(cells)
    typer.echo(markdown_table(headers, table_rows))
    typer.echo(
        f"\n{model} at width {width}: {len(net.sites)} sites, {sum(net.widths().values())} neurons, "
        f"{totals['parameters']:,} parameters, {totals['flops']:,} FLOPs per sample"
    )
    chosen = None
    if selection is not None:
        spent = sum(costs[request.site] for request in selection)
        chosen = [{"site": r.site, "channel": r.channel, "index": r.index, "cost": costs[r.site]} for r in selection]
        typer.echo(
            f"\nwithin a budget of {budget:g} {budget_kind}: {len(selection)} splits costing {spent:g}, predicted "
            f"loss change eps^2/2 * {sum(r.index for r in selection):.3e}"
        )
        if chosen:
            typer.echo(
                markdown_table(
                    ["site", "channel", "index", f"cost ({budget_kind})"],
                    [[c["site"], c["channel"], format_number(c["index"]), f"{c['cost']:g}"] for c in chosen],
                )
            )
    if json_path is not None:
        atomic_write_json(
            json_path, {"model": model, "width": width, "sites": rows, "totals": totals, "budget_selection": chosen}
        )


def main() -> None:
    """Entry point of the ``splitgrow`` console script."""
    app(prog_name="splitgrow")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
