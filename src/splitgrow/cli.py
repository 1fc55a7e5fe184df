"""The ``splitgrow`` command line: a thin layer over :mod:`splitgrow.experiments`.

User errors (an unknown experiment, a bad setting, a missing or malformed config file, a diverging run) print one
line, ``splitgrow: error: ...``, and exit with status 2 before anything is written.
"""

from __future__ import annotations

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
    experiment: Annotated[str, typer.Argument(help="Experiment to run (see `splitgrow list`): rbf, mmd.")],
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
    spec = known[experiment]
    try:
        settings = load_config(spec.config_class, config, parse_overrides(overrides or []))
        out_dir = out if out is not None else Path("runs") / experiment
        if out_dir.exists() and not out_dir.is_dir():
            fail(f"--out {out_dir} exists and is not a folder")
        _, table = run_experiment(spec, settings, list(range(seed, seed + seeds)), out_dir, Reporter(not quiet))
    except SplitgrowError as error:
        fail(str(error))
    except KeyboardInterrupt:
        typer.echo("splitgrow: interrupted; finished seeds are in their folders", err=True)
        raise typer.Exit(130) from None
    typer.echo(table)
    typer.echo(f"\nresults: {out_dir}/summary.json, {out_dir}/seed-*/results.json and figures")


def main() -> None:
    """Entry point of the ``splitgrow`` console script."""
    app(prog_name="splitgrow")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
