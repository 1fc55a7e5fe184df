"""Smoke tests of benchmarks/resnet18_growth.py and benchmarks/selection_speed.py on their ``--quick`` settings.

Only what must hold whatever the timing is asserted: the stages add up (every split adds one channel to one of the
blocks' inner convolutions, parameters chain from stage to stage), and both selection entry points choose the same
neurons, most negative index first. The times are reported by the scripts, never tested.
"""

from __future__ import annotations

import json

import pytest
from test_benchmarks import run_script

from splitgrow.data import DataError, load_dataset


def fashion_mnist_installed() -> bool:
    try:
        load_dataset("fashion-mnist", "test")
    except DataError:
        return False
    return True


@pytest.mark.skipif(not fashion_mnist_installed(), reason="Fashion-MNIST is not installed (dataset-fashion-mnist)")
# the layers before a residual sum cannot grow: the script's phases say so, as they should (not a failure here)
@pytest.mark.filterwarnings("ignore:splitting statistics.*will not grow")
def test_resnet18_growth_quick(tmp_path):
    out = tmp_path / "resnet18_growth"
    run_script("resnet18_growth.py", "--quick", "--out", str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    stages, phases = report["stages"], report["phases"]
    assert [s["stage"] for s in stages] == [1, 2] and len(phases) == 3
    inner = {row["site"] for row in report["sites"] if row.get("exact") and row["site"].endswith(".conv1")}
    assert len(inner) == 8  # conv1 of the eight basic blocks: exact with the ReLU surrogate
    for stage, before, after in zip(stages, phases, phases[1:]):
        assert stage["parameters_before"] == before["parameters"] < stage["parameters_after"] == after["parameters"]
        assert set(stage["widths"]) <= inner
        assert sum(new - old for old, new in stage["widths"].values()) == stage["splits"] > 0
        assert stage["most_negative_index"] < 0 and stage["predicted_loss_change"] < 0
        assert stage["test_accuracy_before"] == before["test_accuracy"]
    assert report["final_parameters"] == stages[-1]["parameters_after"]
    assert report["relu_surrogate"].startswith("phi'' of softplus(beta=3)")
    assert "| stage | after epoch | parameters before |" in out.with_suffix(".md").read_text()


def test_selection_speed_quick(tmp_path):
    out = tmp_path / "selection_speed"
    run_script("selection_speed.py", "--quick", "--out", str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    model = report["model"]
    assert (model["sites"], model["coupling_groups"]) == (14, 32 + 13 * 4)  # the stem keeps 32 channels
    assert report["requested"] == model["coupling_groups"] // 2
    assert report["chosen"] == min(report["requested"], report["negative_indexes"]) > 0
    assert report["same_choice"] and report["ordered"]
    assert report["machine"]["cpu_count"] >= 1 and len(report["machine"]["load_average"]) == 3
    assert "| SplittableNetwork.select |" in out.with_suffix(".md").read_text()
