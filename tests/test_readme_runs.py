"""Each experiment command README.md quotes results of is the run committed under benchmarks/results/runs/: the
command, resolved by the command line as a user would type it today, gives the settings recorded in that run's
config.yaml. A changed default, a renamed setting or a command edited without rerunning fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

pytest.importorskip("typer")

from typer.testing import CliRunner  # noqa: E402

import splitgrow.experiments  # noqa: E402
from splitgrow.cli import app  # noqa: E402
from splitgrow.config import config_to_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "results" / "runs"


def _commands(readme: str) -> list[str]:
    """The experiment commands with an ``--out runs/NAME``: whole lines of code blocks, or inline code in prose."""
    found = []
    for line in readme.splitlines():
        if "splitgrow run " in line and "--out runs/" in line:
            inline = re.findall(r"`([^`]*splitgrow run [^`]*)`", line)
            found += inline or [line.split("#")[0].strip()]
    return found


COMMANDS = _commands((ROOT / "README.md").read_text())
#: runs whose folders were not kept (README says so): their tables stand on the commands alone
NOT_KEPT = {"rbf-paper", "mmd", "mmd-converged"}
#: recorded settings that differ from the command for a documented reason
RECORDED_DIFFERENTLY = {
    # run when "auto" still meant the dense solver wherever the matrices fit, which was every site of these
    # networks; README's commands name the dense solver that computed them (auto has since turned matrix-free)
    ("images-vgg19", "solver"): "auto",
    ("images-mobilenetv1", "solver"): "auto",
}


def _run_name(command: str) -> str:
    words = shlex.split(command)
    return words[words.index("--out") + 1].removeprefix("runs/")


def test_readme_quotes_runs_and_names_the_ones_not_kept():
    names = {_run_name(command) for command in COMMANDS}
    assert len(names) >= 10
    assert NOT_KEPT <= names
    assert {path.name for path in RUNS.iterdir()} <= names  # no committed run that README does not quote


@pytest.mark.parametrize("command", COMMANDS, ids=_run_name)
def test_the_command_gives_the_settings_its_committed_run_recorded(command, monkeypatch):
    name = _run_name(command)
    if name in NOT_KEPT:
        pytest.skip("README says this run was not kept")
    folder = RUNS / name
    recorded = yaml.safe_load((folder / "config.yaml").read_text())
    summary = folder / "summary.json"
    if summary.exists():
        assert yaml.safe_load(summary.read_text())["config"] == recorded  # JSON is YAML

    captured = {}

    def resolve_only(spec, settings, seeds, out_dir, reporter, **options):
        captured["settings"], captured["seeds"] = settings, seeds
        return None, ""

    monkeypatch.setattr(splitgrow.experiments, "run_experiment", resolve_only)
    monkeypatch.chdir(ROOT)  # --config paths are relative to the repository
    words = shlex.split(command)
    result = CliRunner().invoke(app, words[words.index("splitgrow") + 1 :])
    assert "settings" in captured, result.output
    today = config_to_dict(captured["settings"])
    differences = {
        key: (value, today.get(key, "(no such setting today)"))
        for key, value in recorded.items()
        if today.get(key, "(no such setting today)") != value and RECORDED_DIFFERENTLY.get((name, key)) != value
    }
    assert not differences, f"{name}: recorded vs today's command: {differences}"
    if summary.exists():  # the committed seeds are the command's (or the first of them, where a run was cut short)
        assert set(yaml.safe_load(summary.read_text())["seeds"]) <= set(captured["seeds"])
