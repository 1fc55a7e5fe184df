"""The Python blocks of docs/layers.md run as written, in order, in one namespace, so the page cannot rot: its worked
example registers a layer and an activation, and checks the split it makes (eps = 0 keeps the function, the loss
change matches eps^2/2 times the indexes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from torch import nn

from splitgrow.layers import activations, registry

ROOT = Path(__file__).resolve().parents[1]
LAYERS_PAGE = ROOT / "docs" / "layers.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.fixture
def scratch_registries(monkeypatch):
    """The page registers a layer and an activation: keep them out of the other tests' registries."""
    monkeypatch.setattr(activations, "_MODULES", dict(activations._MODULES))
    monkeypatch.setattr(registry, "_HANDLERS", dict(registry._HANDLERS))
    monkeypatch.setattr(registry, "_USER_TYPES", set(registry._USER_TYPES))


def test_layers_page_examples_run(scratch_registries, capsys):
    blocks = python_blocks(LAYERS_PAGE)
    assert len(blocks) == 4  # inspection, your own layer, your own activation, both at work
    namespace = {"__name__": "docs_layers"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{LAYERS_PAGE.name}, python block {number}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split(" | ")[:4] == ["fc1", "linear", "ridge", "True"]
    # the registrations took effect (the page's own assertions checked the mathematics)
    assert registry.handler_for(namespace["model"].fc) is registry._HANDLERS[namespace["EqualizedLinear"]]
    assert activations.activation_of_module(nn.CELU(alpha=2.0)).name == "celu(alpha=2)"


def test_the_registrations_do_not_leak_into_other_tests():
    assert activations.activation_of_module(nn.CELU()) is None
