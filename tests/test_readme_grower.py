"""README's "Grow your own model" snippet runs, and grows the model the way it says (the snippet is read from
README.md itself, so the test follows the text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_grow_your_own_model_snippet_grows_inside_a_plain_training_loop():
    section = README[README.index("## Grow your own model") :]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[:1]
    assert "grower.epoch_end()" in snippet
    namespace: dict = {"__name__": "readme"}
    exec(compile(snippet, "README.md, Grow your own model", "exec"), namespace)
    grower, model, optimizer = namespace["grower"], namespace["model"], namespace["optimizer"]

    first, second = grower.history
    assert (first.epoch, second.epoch) == (2, 4)  # every 2 epochs, then max_stages
    # 2 splits per stage, each one more neuron
    assert sum(first.widths_after.values()) == sum(first.widths_before.values()) + 2
    assert sum(second.widths_after.values()) == sum(first.widths_after.values()) + 2
    assert model[0].out_features + model[2].out_features == 12
    # the optimiser trains the grown parameters, with its momentum carried across the splits
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in model.parameters())
    assert all("momentum_buffer" in optimizer.state[p] for p in model.parameters())
    # the prediction is eps^2/2 times the sum of the split neurons' indexes, each below 0
    indexes = [split["index"] for split in second.splits]
    assert all(index < 0 for index in indexes)
    assert second.predicted_change == pytest.approx(0.01**2 / 2 * sum(indexes), rel=1e-6)
