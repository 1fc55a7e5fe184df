"""What importing splitgrow costs: the core library loads none of the extras (the command line, plots, pruning,
Lightning), and the command line loads matplotlib only when it draws a figure (it takes most of a second, which
every command, `splitgrow list` and each worker process of `--jobs` included, would pay)."""

from __future__ import annotations

import json
import subprocess
import sys

# not tqdm: torch.hub imports it whenever it is installed
EXTRAS = ("matplotlib", "typer", "click", "yaml", "lightning", "torch_pruning", "pytest")

PROBE = f"""
import json, sys
extras = {EXTRAS!r}
loaded = lambda: sorted(name for name in extras if name in sys.modules)
import splitgrow, splitgrow.growth, splitgrow.statistics
core = loaded()
from splitgrow.cli import app
from splitgrow.experiments import experiments
experiments()
print(json.dumps({{"core": core, "command_line": loaded()}}))
"""


def test_the_core_library_loads_no_extra_and_the_command_line_no_plotting():
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert loaded["core"] == []
    assert "matplotlib" not in loaded["command_line"] and "typer" in loaded["command_line"]
