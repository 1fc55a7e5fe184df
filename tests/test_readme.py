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


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index, capsys):
    exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()
