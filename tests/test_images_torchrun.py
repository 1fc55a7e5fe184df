"""The image experiment launched by ``torchrun`` with two CPU processes (gloo): each trains, evaluates and computes
splitting statistics on its rows of every batch; rank 0 alone writes; launches that cannot work are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_cli import invoke
from test_data import write_mnist
from test_images import TINY

from splitgrow.classification import evaluate
from splitgrow.data import Batches, load_dataset
from splitgrow.models import build_model

SETTINGS = {**TINY, "stages": 1, "retrain": "false", "split_batches": 2, "pruning_methods": "[l1]"}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    write_mnist(folder / "mnist", train=48, test=20)  # 20 test images: the last batch of 4 splits 2 + 2
    config = folder / "tiny.yaml"
    config.write_text("\n".join(f"{key}: {value}" for key, value in SETTINGS.items()))
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "splitgrow", "run", "images", "--dataset", "mnist", "--data-root", str(folder / "mnist")),
        *("--config", str(config), "--out", str(folder / "out"), "-q"),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return folder, finished


def test_two_processes_grow_one_model_and_rank_0_writes(launched):
    folder, finished = launched
    assert finished.stdout.count("results: ") == 1  # one table, from rank 0
    results = json.loads((folder / "out" / "seed-0" / "results.json").read_text())
    assert results["processes"] == 2
    stage = results["growth"]["splitting"][0]
    # the statistics of both processes are summed: every image of the split batches counts, not one process's half
    assert stage["samples"] == SETTINGS["split_batches"] * SETTINGS["batch_size"]
    assert stage["widths_after"] != stage["widths_before"]
    leftovers = [path.name for path in (folder / "out").rglob("*") if ".tmp" in path.name]
    assert not leftovers


def test_the_sharded_evaluation_is_the_whole_test_set(launched):
    """The accuracy and loss rank 0 recorded (each process evaluated half the test set and the counts were summed)
    equal one process's evaluation of the saved grown model on every test image."""
    folder, _ = launched
    results = json.loads((folder / "out" / "seed-0" / "results.json").read_text())
    grown = next(r for r in results["rows"] if r["method"] == "splitting" and r["stage"] == 1)
    start = json.loads((folder / "out" / "seed-0" / "checkpoint.json").read_text())["start_config"]
    model = build_model("vgg19", **{**start, "widths": grown["widths"]})
    model.load_state_dict(torch.load(folder / "out" / "seed-0" / "splitting.pt", weights_only=True)["model"])
    test = load_dataset("mnist", "test", folder / "mnist")
    accuracy, loss = evaluate(model, Batches(test, SETTINGS["batch_size"], size=32))
    assert grown["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert grown["test_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize(
    ("args", "environment", "message"),
    [
        (["run", "rbf"], {"WORLD_SIZE": "2", "RANK": "0"}, "the rbf experiment does not take a torchrun launch"),
        (["run", "images", "--jobs", "2"], {"WORLD_SIZE": "2", "RANK": "0"}, "--jobs cannot be combined"),
        (["run", "images"], {"WORLD_SIZE": "2"}, "incomplete torchrun environment"),
    ],
)
def test_launches_that_cannot_work_are_refused(tmp_path, monkeypatch, args, environment, message):
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    if "RANK" not in environment:
        monkeypatch.delenv("RANK", raising=False)
    result = invoke(*args, "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_under_torchrun_a_setting_error_is_printed_once_and_a_process_error_names_its_process(monkeypatch, capsys):
    import typer

    from splitgrow.cli import _one_line_errors
    from splitgrow.data import DataError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = invoke("run", "images", "--set", "epochs=0", "-q")  # every process meets it: process 0 says it
    assert result.exit_code == 2 and result.stderr == ""
    monkeypatch.setenv("RANK", "0")
    result = invoke("run", "images", "--set", "epochs=0", "-q")
    assert result.exit_code == 2 and result.stderr.count("splitgrow: error: invalid setting") == 1
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(typer.Exit), _one_line_errors("elsewhere"):
        raise DataError("damaged file", "/data/x", "download it again")  # may be this process's own
    assert capsys.readouterr().err.startswith("splitgrow: error: process 1 of 2: damaged file (/data/x)")
