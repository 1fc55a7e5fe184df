"""The ``splitgrow`` command line: a thin layer over :mod:`splitgrow.experiments`.

Every failure a user can cause or meet (a bad setting or option, a missing or corrupt file, a folder that cannot
be written, a full disk, a diverging run) prints one line, ``splitgrow: error: <what> (<where>): <how to fix>``,
and exits with status 2: :func:`_one_line_errors` is the one place that turns the library's errors into that line.
Anything else is a bug in splitgrow and is shown as one, with its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.core

from . import __version__
from .config import describe_settings, load_config, parse_overrides
from .errors import ConfigError, SplitgrowError

try:  # recent typer carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - typer that depends on click
    from click import exceptions as click_exceptions

EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


class _OneLineUsageErrors(typer.core.TyperGroup):
    """The command group, whose option parser's errors (an unknown option, a missing value, a bad number) print the
    house's one line, not click's usage block; exit status 2 as click gives them."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        # click's standalone mode, but for how a usage error is shown
        try:
            outcome = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # a bare `splitgrow`: its help, as always
                error.show()
            else:
                typer.echo(f"splitgrow: error: {_usage_problem(error)}", err=True)
            sys.exit(error.exit_code)
        except click_exceptions.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(EXIT_BUG)
        # outside standalone mode click returns the code of a typer.Exit (e.g. --help's 0, fail's 2), else None
        sys.exit(outcome if isinstance(outcome, int) else 0)


def _usage_problem(error: Any) -> SplitgrowError:
    """A click usage error in the house form: what click says, the command, and where its help is."""
    command = error.ctx.command_path if error.ctx is not None else "splitgrow"
    fix = f"`{command} --help` lists its arguments and options"
    possibilities = getattr(error, "possibilities", None)  # an unknown option: click's guesses, moved to the fix
    if possibilities:
        fix = f"did you mean {' or '.join(sorted(possibilities))}? {fix}"
    message = " ".join((error.message if possibilities else error.format_message()).split()).rstrip(".")
    given = error.ctx.params if error.ctx is not None else {}
    if "unexpected extra argument" in message and given.get("input_shape") is not None:
        fix = "give a shape as one value with commas, e.g. --input-shape 3,32,32; " + fix  # a shape's usual typo
    return SplitgrowError(message[:1].lower() + message[1:], command, fix)


@contextlib.contextmanager
def _naming_the_command(ctx: Any) -> Iterator[None]:
    """Give the usage errors that click raises without a command (e.g. a missing option value) that of ``ctx``."""
    try:
        yield
    except click_exceptions.UsageError as error:
        if error.ctx is None:
            error.ctx, error.cmd = ctx, ctx.command
        raise


class _Command(typer.core.TyperCommand):
    """A subcommand whose usage errors all name it."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with _naming_the_command(ctx):
            return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="splitgrow",
    help="Grow neural networks by splitting steepest descent (Liu, Wu & Wang, NeurIPS 2019).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: for the help of `run` (the registry itself is imported lazily: each experiment pulls in its dependencies)
_EXPERIMENT_NAMES = "rbf, mmd, images, transfer, kws, prototypes"
_DATA_EXPERIMENTS = "images, kws, transfer, prototypes"
_DATASET_HELP = f"{_DATA_EXPERIMENTS}: the dataset (`splitgrow run NAME --help` lists the choices)."
_DATA_ROOT_HELP = f"{_DATA_EXPERIMENTS}: folder of the dataset."
_DOWNLOAD_HELP = f"{_DATA_EXPERIMENTS}: fetch the dataset (internet)."

#: what each file-system error means, and what fixes it (beyond choosing another place)
_FILE_SYSTEM_ERRORS = {
    errno.ENOSPC: ("no space left on the disk", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space"),
    errno.EROFS: ("read-only file system", None),
    errno.EACCES: ("permission denied", "change its permissions"),
    errno.EPERM: ("operation not permitted", None),
    errno.ENOTDIR: ("a file stands where a folder is needed", None),
    errno.EISDIR: ("a folder stands where a file is needed", None),
    errno.ENOENT: ("no such file or folder", None),
    errno.EEXIST: ("something is already there", None),
    errno.ENAMETOOLONG: ("file name too long", None),
    errno.EFBIG: ("file too large for the file system", "free some space"),
    errno.EIO: ("input/output error", "check the disk or network mount"),
}


_SMALLER = "use smaller settings (batch size, widths, samples)"
#: the largest whole number an option takes: torch and numpy take 64-bit integers (as the settings do, see
#: :mod:`splitgrow.config`); a larger one would overflow inside them, as a traceback
_LARGEST = 2**63 - 1


def _check_counts(**options: tuple[int, int]) -> None:
    """Refuse an integer option outside ``least`` .. 2^63 - 1, given as ``--name=(value, least)``."""
    for name, (value, least) in options.items():
        option = "--" + name.replace("_", "-")
        if not least <= value <= _LARGEST:
            if value < least:
                fail(f"{option} must be >= {least}", f"{option} {value}", f"give a number >= {least}")
            fail(f"{option} must be below 2^63", f"{option} {value}", "give a 64-bit integer (a smaller number)")


def fail(problem: str, where: object | None = None, fix: str | None = None, *, every_process: bool = True) -> NoReturn:
    """Print ``splitgrow: error: <problem> (<where>): <fix>`` on one line and exit with status 2.

    Under ``torchrun`` an error that every process meets alike (``every_process``: a setting, an option) is printed
    by process 0 alone, rather than once per process; one that may be a single process's own (its data, files,
    memory) is printed by each process that meets it, naming the process."""
    rank, world = _torchrun_rank()
    if world > 1 and every_process and rank != 0:
        raise typer.Exit(EXIT_USER_ERROR)
    process = f"process {rank} of {world}: " if world > 1 and not every_process else ""
    typer.echo(f"splitgrow: error: {process}{SplitgrowError(problem, where, fix)}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of a torchrun launch from its environment; (0, 1) for a plain or malformed one (which
    the launch itself refuses, once per process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return (int(os.environ["RANK"]), world) if world > 1 else (0, 1)
    except (KeyError, ValueError):
        return 0, 1


def _file_system_error(error: OSError, elsewhere: str) -> SplitgrowError:
    """The one-line form of a file-system error; ``elsewhere`` says how to use another place instead."""
    problem, fix = _FILE_SYSTEM_ERRORS.get(error.errno, (error.strerror or "file-system error", None))
    where = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    return SplitgrowError(problem, where, elsewhere if fix is None else f"{fix}, or {elsewhere}")


def _bug_report_address() -> str:
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("splitgrow").get_all("Project-URL") or []
    except PackageNotFoundError:
        urls = []
    issues = [url.split(",", 1)[1].strip() for url in urls if url.lower().startswith(("issues,", "bug tracker,"))]
    return issues[0] if issues else "the splitgrow maintainers"


@contextlib.contextmanager
def _one_line_errors(elsewhere: str, interrupted: str = "interrupted") -> Iterator[None]:
    """Turn every error a user can cause or meet into one line and exit status 2; show any other as a bug.

    Args:
        elsewhere: how to write somewhere else, for a file-system error (e.g. "choose another folder with --out").
        interrupted: what to say on Ctrl-C.
    """
    previous = _terminate_as_interrupt()
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except SplitgrowError as error:
        fail(str(error), every_process=isinstance(error, ConfigError))
    except OSError as error:
        fail(str(_file_system_error(error, elsewhere)), every_process=False)
    except MemoryError:
        fail("out of memory", "this machine", _SMALLER, every_process=False)
    except KeyboardInterrupt:
        typer.echo(f"splitgrow: {interrupted}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as error:
        torch = sys.modules.get("torch")  # only torch, once imported, can run out of GPU memory
        if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
            fail(
                "out of GPU memory",
                "--device",
                "use smaller settings (batch size, widths) or another GPU",
                every_process=False,
            )
        if isinstance(error, RuntimeError) and "can't allocate memory" in str(error):  # torch's CPU allocator
            fail("out of memory", "this machine", _SMALLER, every_process=False)
        traceback.print_exc()
        typer.echo(
            f"splitgrow: this is a bug in splitgrow, not a problem with your input; please report it to "
            f"{_bug_report_address()} with the command, `splitgrow --version` and the traceback above",
            err=True,
        )
        raise typer.Exit(EXIT_BUG) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (``kill``, a batch scheduler's time limit) stop a command as Ctrl-C does: with the message
    that says how to continue, exit status 130, and the checkpoints written so far intact. Returns the handler
    it replaced (None where signals cannot be set: outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


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


@app.command("list", cls=_Command)
def list_experiments() -> None:
    """List the experiments that `splitgrow run` knows."""
    from .experiments import experiments

    known = experiments()
    width = max(map(len, known))
    for name, experiment in known.items():
        typer.echo(f"{name:{width}s}  {experiment.description}")


class _RunCommand(_Command):
    """``run``, whose ``--help`` also lists the settings of the experiment it names (``splitgrow run NAME --help``),
    read from the experiment's config dataclass, so that every registered experiment gets it."""

    _EXPERIMENT = "splitgrow.help_experiment"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # --help acts while the arguments are parsed, before EXPERIMENT has a value: read it beforehand
        with _naming_the_command(ctx):
            values, _, _ = self.make_parser(ctx).parse_args(args=list(args))
        ctx.meta[self._EXPERIMENT] = values.get("experiment")
        return super().parse_args(ctx, args)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        from .experiments import experiments

        super().format_epilog(ctx, formatter)
        known = experiments()
        spec = known.get(ctx.meta.get(self._EXPERIMENT))
        if spec is None:
            formatter.write_paragraph()
            formatter.write_text(f"`splitgrow run NAME --help` lists the settings of NAME ({', '.join(known)}).")
            return
        with formatter.section(f"Settings of {spec.name} (--config FILE.yaml, --set KEY=VALUE)"):
            summary = (spec.config_class.__doc__ or "").strip()
            if summary:
                formatter.write_text(" ".join(summary.replace("``", "").split()))
                formatter.write_paragraph()
            formatter.write_dl(
                [
                    (f"{setting.name}: {setting.type}", f"{setting.meaning} [default: {setting.default}]".lstrip())
                    for setting in describe_settings(spec.config_class)
                ]
            )


@app.command(cls=_RunCommand)
def run(
    experiment: Annotated[str, typer.Argument(help=f"Experiment to run (see `splitgrow list`): {_EXPERIMENT_NAMES}.")],
    # a string, not a Path: Path("") is the current folder, and an empty --out must not write there
    out: Annotated[str | None, typer.Option("--out", help="Output folder [default: runs/EXPERIMENT].")] = None,
    seed: Annotated[int, typer.Option("--seed", help="First random seed.")] = 0,
    seeds: Annotated[int, typer.Option("--seeds", help="Number of seeds: SEED, SEED+1, ...")] = 1,
    config: Annotated[
        str | None, typer.Option("--config", help="YAML file of settings (e.g. configs/rbf-paper.yaml).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one setting, KEY=VALUE (YAML syntax); repeatable."),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Run seeds in this many processes.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoints.")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", help=_DATASET_HELP)] = None,
    model: Annotated[str | None, typer.Option("--model", help="images: vgg19 or mobilenetv1.")] = None,
    # a string, as --out: an empty --data-root is refused by the settings, not read as the current folder
    data_root: Annotated[str | None, typer.Option("--data-root", help=_DATA_ROOT_HELP)] = None,
    download: Annotated[bool, typer.Option("--download", help=_DOWNLOAD_HELP)] = False,
    device: Annotated[str | None, typer.Option("--device", help="images, kws: cpu or cuda.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")] = False,
) -> None:
    """Run an experiment: results.json and PNG figures per seed, then summary.json, summary.md and a table.

    An --out folder holds one run: a second run with other settings into it is refused.
    """
    from .experiments import Reporter, experiments, run_experiment

    known = experiments()
    if experiment not in known:
        fail(f"unknown experiment {experiment!r}", "splitgrow run", f"choose one of {', '.join(known)}")
    _check_counts(seeds=(seeds, 1), seed=(seed, 0), jobs=(jobs, 1))
    if out is not None and not out.strip():
        fail("empty --out", "--out ''", "give --out a folder (without --out, results go to runs/EXPERIMENT)")
    if config is not None and not config.strip():  # as a Path, the current folder
        fail("empty --config", "--config ''", "give --config a YAML file of settings, or leave it out")
    spec = known[experiment]
    out_dir = Path(out) if out is not None else Path("runs") / experiment
    assignments = _parse_assignments(overrides or [])
    shortcuts = {"dataset": dataset, "model": model, "data_root": data_root, "download": download or None}
    shortcuts["device"] = device
    settings_fields = {f.name for f in dataclasses.fields(spec.config_class)}
    options: dict[str, dict[str, Any]] = {}
    for key, value in shortcuts.items():
        if value is None:
            continue
        option = "--" + key.replace("_", "-")
        if key not in settings_fields:
            fail(
                f"{option} does not apply to the {experiment} experiment",
                option,
                f"leave it out: {experiment} has no '{key}' setting (`splitgrow run {experiment} --help` lists them)",
            )
        options[option] = {key: value}
        if key in assignments and assignments[key] != options[option][key]:
            fail(
                f"{option} and --set {key} disagree",
                f"{option} {options[option][key]}, --set {key}={assignments[key]}",
                "give the setting once",
            )
    elsewhere = "choose another folder with --out"
    with _one_line_errors(
        elsewhere, interrupted="interrupted; finished seeds are in their folders, --resume continues"
    ):
        settings = load_config(spec.config_class, None if config is None else Path(config), assignments, options)
        if out_dir.exists() and not out_dir.is_dir():
            fail("not a folder", out_dir, f"give --out a folder, or {elsewhere}")
        if resume and not out_dir.is_dir():
            fail("nothing to resume", f"--resume: no folder {out_dir}", "give the --out folder of the run to continue")
        launch = _torchrun_launch(experiment, spec, jobs)
        reporter = Reporter(not quiet and (launch is None or launch.rank == 0))
        with contextlib.ExitStack() as stack:
            if launch is not None:
                from .parallel import process_group

                stack.enter_context(process_group(launch, settings.device))
            _, table = run_experiment(
                spec, settings, list(range(seed, seed + seeds)), out_dir, reporter, jobs=jobs, resume=resume
            )
    if launch is not None and launch.rank != 0:
        return  # rank 0 prints the results
    typer.echo(table)
    typer.echo(f"\nresults: {out_dir}/summary.json, {out_dir}/seed-*/results.json and figures")


def _parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """The ``--set`` assignments as a mapping, or the one-line error of a malformed one."""
    try:
        return parse_overrides(assignments)
    except SplitgrowError as error:
        fail(str(error))


def _torchrun_launch(experiment: str, spec: Any, jobs: int) -> Any:
    """The ``torchrun`` launch this process belongs to (None for a plain run), refused where it cannot work."""
    from .parallel import launched

    launch = launched()
    if launch is None:
        return None
    if not spec.distributed:
        fail(
            f"the {experiment} experiment does not take a torchrun launch",
            f"{launch.world_size} processes",
            f"run it as one process (`splitgrow run {experiment}`); --jobs runs seeds in parallel",
        )
    if jobs > 1:
        fail(
            "--jobs cannot be combined with a torchrun launch",
            f"--jobs {jobs}",
            "leave --jobs out: the torchrun processes share every seed",
        )
    return launch


@app.command(cls=_Command)
def report(
    # a string, as run's --out: an empty one is refused, not read as the current folder
    out: Annotated[str, typer.Argument(help="The --out folder of a finished `splitgrow run`.")],
) -> None:
    """Redraw the figures and rewrite the summary of a finished run from its results files (no re-running)."""
    from .experiments import report_experiment

    if not out.strip():
        fail("empty folder name", "splitgrow report ''", "give the --out folder of a finished run")
    with _one_line_errors(f"copy {out} to a writable place and report the copy"):
        _, table = report_experiment(Path(out))
    typer.echo(table)


def _example_of(
    network: Any, shape: tuple[int, ...], spec: str, vocab_size: int | None = None
) -> tuple[Any, int | None]:
    """A random example batch of 2 samples for a model of your own (in its parameters' dtype; token ids in
    [0, vocab_size) with a vocabulary), and its number of classes when its output is (batch, classes) logits (None
    otherwise)."""
    import torch

    from .errors import ConfigError
    from .modes import evaluating

    parameter = next(network.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    if vocab_size is None:
        example = torch.randn((2, *shape), dtype=dtype)
    else:
        example = torch.randint(0, vocab_size, (2, *shape), generator=torch.Generator().manual_seed(0))
    try:
        with evaluating(network), torch.no_grad():
            output = network(example)
    except Exception as error:  # noqa: BLE001 - the user's model on the user's shape: say which, once
        raise ConfigError(
            f"the model fails on a random input of shape {tuple(example.shape)} ({type(error).__name__}: {error})",
            f"--model {spec}",
            "check --input-shape (one sample's shape, without the batch dimension), and give --vocab-size N if "
            "the model reads token ids",
        ) from None
    is_logits = isinstance(output, torch.Tensor) and output.dim() == 2 and output.is_floating_point()
    return example, int(output.shape[1]) if is_logits else None


@app.command(cls=_Command)
def inspect(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Zoo model: mlp, vgg19, mobilenetv1, dscnn, dscnn-l, resnet, concat. Or your own, with "
            "--input-shape: FILE.py:NAME or MODULE:NAME (a module, an nn.Module class or a factory, called without "
            "arguments).",
        ),
    ],
    width: Annotated[
        int | None, typer.Option("--width", help="Zoo model: width of every layer (see splitgrow.models).")
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="Your own model: one sample's shape, e.g. 3,32,32 (no batch dimension)."),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            "--vocab-size",
            help="Your own model reads token ids: its random inputs are integers in [0, N) (N: its nn.Embedding's "
            "num_embeddings), not Gaussian numbers.",
        ),
    ] = None,
    relu_surrogate: Annotated[
        float | None,
        typer.Option("--relu-surrogate", help="Give ReLU-like activations softplus(beta)'s curvature (beta > 0)."),
    ] = None,
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
    # a string, as run's --out: an empty one is refused, not read as the current folder
    json_path: Annotated[str | None, typer.Option("--json", help="Also write the table as JSON.")] = None,
) -> None:
    """Print a model's splittable sites, and why other layers are not: neurons, parameters, FLOPs, split costs
    and (with --data) indexes. The model is one of the zoo's, or your own (``--model my_nets.py:Net
    --input-shape 3,32,32``)."""
    import torch

    from .artifacts import atomic_write_json
    from .experiments.common import format_number, markdown_table
    from .inspection import site_table
    from .model_import import import_model, is_model_spec, parse_input_shape
    from .models import MODELS, build_model, uniform_widths
    from .network import SplittableNetwork

    own = is_model_spec(model)
    if own and ":" not in model:  # a file alone: the error lists the models it defines
        with _one_line_errors("choose another --json path"):
            import_model(model)
    if not own and model not in MODELS:
        fail(
            f"unknown model {model!r}",
            "--model",
            f"choose one of {', '.join(MODELS)}, or name your own as FILE.py:NAME with --input-shape",
        )
    if not own and vocab_size is not None:
        fail("--vocab-size is for a model of your own", f"--vocab-size {vocab_size}", f"{model} knows its input")
    if own and width is not None:
        fail(
            "--width sizes a zoo model",
            f"--width {width}",
            f"leave it out for {model} (build it at the width you want)",
        )
    if not own and input_shape is not None:
        fail("--input-shape is for a model of your own", f"--input-shape {input_shape}", f"{model} knows its input")
    if own and input_shape is None:
        fail("a model of your own needs --input-shape", f"--model {model}", "give one sample's shape, e.g. 3,32,32")
    if relu_surrogate is not None and not relu_surrogate > 0:  # not > 0: NaN too
        fail("--relu-surrogate must be > 0", f"--relu-surrogate {relu_surrogate:g}", "give softplus's beta, e.g. 4")
    width = 16 if width is None and not own else width
    if width is not None and width < 1:
        fail("--width must be >= 1", f"--width {width}", "give a width >= 1")
    if data not in (None, "random"):
        fail("--data must be 'random'", f"--data {data}", "real datasets come with `splitgrow run images`")
    if samples < 1 or batch_size < 1:
        fail("--samples and --batch-size must be >= 1", f"--samples {samples} --batch-size {batch_size}", "raise them")
    _check_counts(
        width=(width or 1, 1),
        samples=(samples, 1),
        batch_size=(batch_size, 1),
        seed=(seed, 0),
        vocab_size=(vocab_size or 1, 1),
    )
    from .selection import COST_KINDS
    from .statistics import SOLVERS

    if solver not in SOLVERS:
        fail("unknown solver", f"--solver {solver}", f"--solver must be one of {', '.join(SOLVERS)}")
    if budget_kind not in COST_KINDS:
        fail(
            "unknown budget kind",
            f"--budget-kind {budget_kind}",
            f"--budget-kind must be one of {', '.join(COST_KINDS)}",
        )
    if budget is not None and (data is None or not budget >= 0):  # not >= 0: NaN too
        fail("--budget needs --data and a value >= 0", f"--budget {budget:g}", "add --data random, or drop --budget")
    if json_path is not None and not json_path.strip():
        fail("empty --json", "--json ''", "give --json a file name, or leave it out")
    with _one_line_errors("choose another --json path"):
        torch.manual_seed(seed)
        if own:
            network = import_model(model)
            example, classes = _example_of(network, parse_input_shape(input_shape), model, vocab_size)
        else:
            network = build_model(model, **uniform_widths(model, width))
            example, classes = network.example_input(2), network.config()["num_classes"]
        net = SplittableNetwork(network, example, relu_surrogate=relu_surrogate)
        results = None
        if data == "random":
            generator = torch.Generator().manual_seed(seed)
            if classes is None:
                fail(
                    "--data random needs a classifier: logits of shape (batch, classes)",
                    f"--model {model}",
                    "leave --data out to list the sites alone",
                )
            shape = (samples, *example.shape[1:])
            if vocab_size is None:
                inputs = torch.randn(shape, generator=generator, dtype=example.dtype)
            else:
                inputs = torch.randint(0, vocab_size, shape, generator=generator)
            targets = torch.randint(0, classes, (samples,), generator=generator)
            batches = [(inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, samples, batch_size)]
            results = net.splitting(batches, torch.nn.functional.cross_entropy, solver=solver, progress=True)
        rows, totals = site_table(net.graph, example, results)
        selection = None
        if budget is not None:
            from .inspection import split_costs
            from .selection import select_within_budget

            costs = split_costs(net.graph, budget_kind)
            selection = select_within_budget(results, costs, budget, graph=net.graph)
    headers = ["site", "kind", "activation", "neurons", "d", "params", "FLOPs", "split +params", "split +FLOPs"]
    headers.append("exact")
    keys = ["site", "kind", "activation", "neurons", "neuron_dim", "parameters", "flops", "split_parameters"]
    keys += ["split_flops", "exact"]
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
        f"\n{model}{'' if own else f' at width {width}'}: {len(net.sites)} site{'' if len(net.sites) == 1 else 's'}, "
        f"{sum(net.widths().values()):,} neurons, "
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
        with _one_line_errors("choose another --json path"):
            atomic_write_json(
                Path(json_path),
                {
                    "model": model,
                    "width": width,
                    "input_shape": None if input_shape is None else list(example.shape[1:]),
                    "vocab_size": vocab_size,
                    "relu_surrogate": relu_surrogate,
                    "sites": rows,
                    "totals": totals,
                    "budget_selection": chosen,
                },
            )


def main() -> None:
    """Entry point of the ``splitgrow`` console script."""
    app(prog_name="splitgrow")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
