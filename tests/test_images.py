"""The image-classification experiment on tiny fixture data: growth, pruning, retraining, kill and resume."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import invoke
from test_data import write_cifar, write_mnist

from splitgrow.config import build_config
from splitgrow.experiments.common import Reporter
from splitgrow.experiments.images import ImagesConfig, _Interrupted, run_seed, summarize
from splitgrow.inspection import model_flops
from splitgrow.models import build_model, load_model

TINY = {
    "train_samples": 0,
    "test_samples": 0,
    "start_width": 2,
    "full_width": 4,
    "batch_size": 16,
    "epochs": 2,
    "finetune_epochs": 1,
    "stages": 2,
    "growth_ratio": 0.3,
    "split_batches": 1,
}


def tiny_config(root, **changes) -> ImagesConfig:
    return build_config(ImagesConfig, {**TINY, "dataset": "mnist", "data_root": str(root), **changes})


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, train=48, test=16)
    return root


def test_growth_pruning_and_retraining_end_to_end(mnist_root, tmp_path):
    config = tiny_config(mnist_root)
    results = run_seed(config, 0, Reporter(False), workdir=tmp_path)
    rows = results["rows"]
    splitting = [r for r in rows if r["method"] == "splitting" and r["variant"] == "fine-tuned"]
    assert [r["stage"] for r in splitting] == [0, 1, 2]
    assert splitting[0]["parameters"] < splitting[1]["parameters"] < splitting[2]["parameters"]
    full = build_model("vgg19", **{**json.loads((tmp_path / "full.json").read_text())["config"]})
    for method in ("bn", "l1"):
        pruned = [r for r in rows if r["method"] == method and r["variant"] == "fine-tuned"]
        assert pruned and all(r["parameters"] <= results["full_parameters"] for r in pruned)
        first = next(r for r in pruned if r["stage"] == 1)
        assert first["parameters"] < results["full_parameters"]  # at the first stage's size, pruning removes some
        assert abs(first["ratio"] - splitting[1]["ratio"]) < 0.15
    assert {r["variant"] for r in rows} == {"fine-tuned", "retrained"}
    example = torch.zeros(1, 1, 32, 32)
    for row in rows:  # sizes and FLOPs agree with the architecture rebuilt from the recorded widths
        model = build_model("vgg19", **{**full.config(), "widths": row["widths"]})
        assert sum(p.numel() for p in model.parameters()) == row["parameters"]
        assert model_flops(model, example) == row["flops"]
        assert 0.0 <= row["accuracy"] <= 1.0
    rebuilt, history = load_model(tmp_path / "full-slim")
    assert history and rebuilt.config()["widths"] == [4] * 16


def test_mobilenet_on_cifar_fixture(tmp_path):
    write_cifar(tmp_path / "data", per_batch=8)
    config = build_config(
        ImagesConfig,
        {
            **TINY,
            "dataset": "cifar10",
            "model": "mobilenetv1",
            "data_root": str(tmp_path / "data"),
            "stages": 1,
            "pruning_methods": ["l1"],
            "retrain": False,
            "growth_methods": ["splitting", "signed", "firefly"],
            "firefly_candidates": 1,
            "firefly_steps": 1,
        },
    )
    results = run_seed(config, 0, Reporter(False), workdir=tmp_path / "run")
    methods = {(r["method"], r["stage"]) for r in results["rows"]}
    growth = {(m, s) for m in ("splitting", "signed", "firefly") for s in (0, 1)}
    assert methods == growth | {("l1", 1)}
    start = next(r for r in results["rows"] if r["method"] == "splitting" and r["stage"] == 0)
    for method in ("splitting", "signed", "firefly"):
        grown = next(r for r in results["rows"] if r["method"] == method and r["stage"] == 1)
        assert grown["parameters"] > start["parameters"], method
        stage = results["growth"][method][0]
        added = sum(stage["widths_after"].values()) - sum(stage["widths_before"].values())
        if method == "signed":  # two or three neurons per signed split
            assert added == sum(len(split["weights"]) - 1 for split in stage["splits"]) > len(stage["splits"])
        else:
            assert added == len(stage["splits"])
    summary, table = summarize([{**results, "seed": 0}])
    assert set(summary["wins"]) == {"splitting", "signed", "firefly"}
    assert "Firefly (splits + new neurons)" in table and "fine-tuned, stage 1: best" in table


def comparable(results):
    return json.dumps(results["rows"], sort_keys=True)


@pytest.fixture(scope="module")
def uninterrupted(mnist_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    return run_seed(tiny_config(mnist_root, stages=1), 0, Reporter(False), workdir=folder), folder


@pytest.mark.parametrize("stop", [2, 3, 7, 11])
def test_a_killed_run_resumes_to_the_same_result(mnist_root, tmp_path, uninterrupted, stop):
    """Interrupt after `stop` epochs (the end of the first stage, the middle of a fine-tuning phase, inside the
    full-network training, inside a retraining) and resume: the results, the trained full networks and the last
    task's weights equal those of an uninterrupted run."""
    config = tiny_config(mnist_root, stages=1)
    reference, whole_folder = uninterrupted
    with pytest.raises(_Interrupted):
        run_seed(config, 0, Reporter(False), workdir=tmp_path / "killed", stop_after_epochs=stop)
    killed_seconds = json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["elapsed_s"]
    resumed = run_seed(config, 0, Reporter(False), workdir=tmp_path / "killed", resume=True)
    assert comparable(resumed) == comparable(reference)
    assert resumed["wall_time_s"] > killed_seconds > 0  # the time of both sessions
    whole = torch.load(whole_folder / "checkpoint.pt", weights_only=True)
    again = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert whole["task"] == again["task"]
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    for name in ("full", "full-slim"):
        first, _ = load_model(whole_folder / name)
        second, _ = load_model(tmp_path / "killed" / name)
        for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
            assert torch.equal(a, b), (name, key)


def test_command_line(mnist_root, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, "stages": 1, "retrain": "false"}.items()))
    out = tmp_path / "out"
    args = ["run", "images", "--dataset", "mnist", "--data-root", str(mnist_root), "--config", str(config)]
    result = invoke(*args, "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert "splitting (ours) more accurate than a pruning baseline at the same stage in" in result.stdout
    assert (out / "seed-0" / "accuracy_vs_ratio.png").is_file()
    resumed = invoke(*args, "--out", str(out), "--resume", "-q")
    assert resumed.exit_code == 0 and json.loads((out / "summary.json").read_text())["comparisons"] == 2
    # resuming with other settings would mix results computed two ways: refused, nothing rewritten
    settings = (out / "config.yaml").read_text()
    changed = invoke(*args, "--out", str(out), "--resume", "--set", "epochs=3", "-q")
    assert changed.exit_code == 2 and "cannot resume" in changed.stderr and "epochs: 2 -> 3" in changed.stderr
    assert (out / "config.yaml").read_text() == settings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "rbf", "--dataset", "mnist"], "--dataset does not apply to the rbf experiment"),
        (
            ["run", "images", "--dataset", "mnist", "--data-root", "/nonexistent/data"],
            "/nonexistent/data does not exist",
        ),
        (["run", "images", "--model", "resnet50"], "model must be one of vgg19, mobilenetv1"),
        (["run", "images", "--dataset", "svhn"], "dataset must be one of"),
        (["run", "images", "--resume"], "--resume: "),
    ],
)
def test_command_line_errors(tmp_path, args, message):
    result = invoke(*args, "--out", str(tmp_path / "none"), "-q")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
