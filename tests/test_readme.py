"""The README's Python examples (```python blocks; ```py marks a fragment, such as a torchrun script) run as
written, and its set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_examples_and_exactly_two_setup_commands():
    assert len(EXAMPLES) >= 2
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    setup = [c for c in commands if c.startswith("python3 -m venv")]
    assert len(setup) == 2
    assert "splitgrow run rbf" in setup[0] and "pytest" in setup[1]
    test_command = setup[1].strip().split(" && ")[-1]  # CI runs the README's own test command
    assert test_command.startswith("python -m pytest") and test_command in (ROOT / ".ci" / "run").read_text()


def _installed_requirements(command: str) -> set[str]:
    """The distributions a set-up command's ``pip install -e '.[extras]'`` brings, extras resolved through
    pyproject.toml (names only, nested ``splitgrow[...]`` extras followed)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras_table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    match = re.search(r"pip install -e '?\.(?:\[([a-z,]+)\])?'?", command)
    assert match, command
    pending, names = (match.group(1) or "").split(","), set()
    while pending:
        extra = pending.pop()
        for requirement in extras_table.get(extra, []):
            nested = re.fullmatch(r"splitgrow\[([a-z,]+)\]", requirement)
            if nested:
                pending.extend(nested.group(1).split(","))
            else:
                names.add(re.split(r"[<>=\[ ]", requirement)[0])
    return names


def test_the_first_setup_command_installs_what_the_command_line_imports():
    commands = [c for c in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL) if c.startswith("python3 -m venv")]
    # `splitgrow run rbf` fails at once without the command line's extra (typer, figures, configs)
    assert {"typer", "matplotlib", "pyyaml", "tqdm"} <= _installed_requirements(commands[0])
    assert {"typer", "pytest"} <= _installed_requirements(commands[1])


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index, capsys):
    exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()
