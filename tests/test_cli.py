"""The command line: tiny end-to-end runs of every experiment, reproducibility, and user errors."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from splitgrow.cli import app
from splitgrow.experiments.common import Experiment, Reporter, run_experiment

TINY_RBF = """
num_samples: 20
max_neurons: 3
iterations_per_step: 300
threshold: 0.0
boosting_candidates: 2
methods: [splitting, random_split, net2net, new_init, gradient_boosting, scratch]
probe_neurons: 2
probe_count: 2
probe_iterations: 10
angle_steps: 2
curve_neurons: [2, 3]
record_every: 10
"""

TINY_MMD = """
num_samples: 60
iterations_per_step: 20
max_particles: 3
boosting_candidates: 3
record_every: 5
"""


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def tiny_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def numbers(results: dict) -> dict:
    return {key: value for key, value in results.items() if key not in {"metadata", "wall_time_s"}}


def test_rbf_end_to_end_on_tiny_settings(tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "rbf", "--config", str(tiny_config(tmp_path, TINY_RBF)), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "splitting (ours)" in result.stdout and "seed" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "rbf" and summary["seeds"] == [0]
    assert summary["metadata"]["torch"] and summary["config"]["max_neurons"] == 3
    results = json.loads((out / "seed-0" / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"splitting", "random_split", "net2net", "new_init", "gradient_boosting", "scratch"}
    assert methods["splitting"]["sizes"][0] == 1
    final = results["final_size"]
    for name, run in methods.items():
        assert run["final_size"] == final, name
        assert results["loss_at_final_size"][name] == pytest.approx(run["final_loss"])
    for event in methods["splitting"]["events"]:
        assert event["indexes"][0] < 0 and event["predicted_change"] < 0
    probes = results["probes"]
    assert len(probes["indexes"]["indexes"]) == 2 and len(probes["angles"]["degrees"]) == 3
    for name in ["curves", "training_loss", "indexes", "angles"]:
        assert_png(out / "seed-0" / f"{name}.png")
    assert (out / "config.yaml").is_file() and (out / "summary.md").is_file()
    assert not list(out.rglob("*.tmp"))


def test_mmd_end_to_end_on_tiny_settings(tmp_path):
    out = tmp_path / "out"
    result = invoke(
        "run", "mmd", "--config", str(tiny_config(tmp_path, TINY_MMD)), "--out", str(out), "--seeds", "2", "-q"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for seed in (0, 1):
        results = json.loads((out / f"seed-{seed}" / "results.json").read_text())
        for name, run in results["methods"].items():
            assert run["final_size"] == 3, name
            assert len(run["final_weights"]) == 3 and sum(run["final_weights"]) == pytest.approx(1.0)
            trajectory = run["trajectory"]
            assert len(trajectory["iteration"]) == len(trajectory["positions"]) == len(trajectory["weights"])
        assert_png(out / f"seed-{seed}" / "trajectories.png")
        assert_png(out / f"seed-{seed}" / "log_mmd.png")
    assert set(summary["mean"]) == {"splitting", "random_split", "new_init", "gradient_boosting"}


def test_same_seed_gives_the_same_numbers(tmp_path):
    config = str(tiny_config(tmp_path, TINY_RBF))
    outputs = []
    for name in ("a", "b"):
        assert invoke("run", "rbf", "--config", config, "--out", str(tmp_path / name), "-q").exit_code == 0
        outputs.append(numbers(json.loads((tmp_path / name / "seed-0" / "results.json").read_text())))
    assert outputs[0] == outputs[1]
    assert invoke("run", "rbf", "--config", config, "--out", str(tmp_path / "c"), "--seed", "1", "-q").exit_code == 0
    other = numbers(json.loads((tmp_path / "c" / "seed-1" / "results.json").read_text()))
    assert other["target"] != outputs[0]["target"]


BAD_INPUTS = [
    (["run", "resnet"], "unknown experiment 'resnet'"),
    (["run", "rbf", "--set", "epsilon=-0.5"], "epsilon (the split step size) must be >= 0"),
    (["run", "rbf", "--set", "max_splits_per_step=0"], "max_splits_per_step (m_*) must be >= 1"),
    (["run", "rbf", "--set", "threshold=0.1"], "threshold (lambda_*) must be <= 0"),
    (["run", "rbf", "--set", "epsilonn=0.1"], "unknown setting 'epsilonn'"),
    (["run", "rbf", "--config", "/nonexistent/paper.yaml"], "config file not found (/nonexistent/paper.yaml)"),
    (["run", "mmd", "--seeds", "0"], "--seeds must be >= 1"),
    (["run", "rbf", "--set", "epsilon"], "--set expects KEY=VALUE"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_user_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = invoke(*args, "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr.startswith("splitgrow: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("epsilon: [0.1\n", "malformed YAML"), ("epsilon: 0.1\nbogus_key: 3\n", "unknown setting 'bogus_key'")],
)
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    out = tmp_path / "out"
    result = invoke("run", "rbf", "--config", str(tiny_config(tmp_path, text)), "--out", str(out))
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_divergence_is_a_clear_error(tmp_path, monkeypatch):
    # Gaussian units saturate instead of overflowing, so force the NaN a diverging run would produce.
    import torch

    from splitgrow.shallow.network import ShallowRegression

    monkeypatch.setattr(ShallowRegression, "_loss_tensor", lambda self: torch.tensor(float("nan"), requires_grad=True))
    config = tiny_config(tmp_path, TINY_RBF)
    result = invoke("run", "rbf", "--config", str(config), "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2
    # NaN from the first evaluation on: the starting parameters are blamed, not the learning rate
    assert "training loss was nan at iteration 0, before any step" in result.stderr
    assert not (tmp_path / "out" / "seed-0").exists()


def test_console_script_entry_point(tmp_path):
    # the real process: exit status, stderr and no traceback, exactly as a user sees them
    completed = subprocess.run(
        [sys.executable, "-m", "splitgrow.cli", "run", "nonsense", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr == (
        "splitgrow: error: unknown experiment 'nonsense' (splitgrow run): "
        "choose one of rbf, mmd, images, transfer, kws, prototypes\n"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "splitgrow.cli", "list"], capture_output=True, text=True, check=True
    )
    assert "rbf" in listing.stdout and "mmd" in listing.stdout


def test_inspect_lists_sites_costs_and_indexes(tmp_path):
    result = invoke(
        "inspect",
        "--model",
        "dscnn",
        "--width",
        "4",
        "--data",
        "random",
        "--samples",
        "16",
        "--json",
        str(tmp_path / "sites.json"),
    )
    assert result.exit_code == 0, result.output
    # a pointwise layer and the depthwise filter it feeds split together: the row says with which
    pointwise = next(line for line in result.stdout.splitlines() if line.startswith("| blocks.0.pointwise.0 "))
    assert "with blocks.1.depthwise.0" in pointwise
    assert "dscnn at width 4: 6 sites, 24 neurons" in result.stdout  # a pointwise+depthwise pair is one site
    table = json.loads((tmp_path / "sites.json").read_text())
    sites = [row for row in table["sites"] if row["kind"] != "-"]
    assert len(sites) == 6 and all("min_index" in row and row["split_parameters"] > 0 for row in sites)
    assert table["totals"]["parameters"] > 0 and table["totals"]["flops"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "--model", "lenet"], "unknown model 'lenet'"),
        (["inspect", "--model", "vgg19", "--width", "0"], "--width must be >= 1"),
        (["inspect", "--model", "vgg19", "--data", "cifar"], "--data must be 'random'"),
    ],
)
def test_inspect_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_parallel_seeds_give_the_sequential_numbers(tmp_path):
    config = str(tiny_config(tmp_path, TINY_MMD))
    for name, jobs in (("sequential", "1"), ("parallel", "2")):
        out = str(tmp_path / name)
        result = invoke("run", "mmd", "--config", config, "--seeds", "2", "--jobs", jobs, "--out", out, "-q")
        assert result.exit_code == 0, result.output
    for seed in (0, 1):
        sequential = json.loads((tmp_path / "sequential" / f"seed-{seed}" / "results.json").read_text())
        parallel = json.loads((tmp_path / "parallel" / f"seed-{seed}" / "results.json").read_text())
        assert numbers(parallel) == numbers(sequential)


def test_inspect_budgeted_selection(tmp_path):
    result = invoke(
        "inspect",
        "--model",
        "mlp",
        "--width",
        "4",
        "--data",
        "random",
        "--samples",
        "32",
        "--solver",
        "lobpcg",
        "--budget",
        "30",
        "--json",
        str(tmp_path / "sites.json"),
    )
    assert result.exit_code == 0, result.output
    assert "within a budget of 30 parameters" in result.stdout
    chosen = json.loads((tmp_path / "sites.json").read_text())["budget_selection"]
    assert chosen and sum(c["cost"] for c in chosen) <= 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--solver", "qr"], "--solver must be one of"),
        (["--budget", "10"], "--budget needs --data"),
        (["--data", "random", "--budget-kind", "watts", "--budget", "1"], "--budget-kind must be one of"),
    ],
)
def test_inspect_solver_and_budget_errors(args, message):
    result = invoke("inspect", "--model", "mlp", *args)
    assert result.exit_code == 2 and message in result.stderr


def test_report_redraws_a_finished_run(tmp_path):
    out = tmp_path / "out"
    assert (
        invoke("run", "mmd", "--config", str(tiny_config(tmp_path, TINY_MMD)), "--out", str(out), "-q").exit_code == 0
    )
    (out / "seed-0" / "log_mmd.png").unlink()
    before = json.loads((out / "summary.json").read_text())
    result = invoke("report", str(out))
    assert result.exit_code == 0 and "Final log10 MMD^2" in result.stdout
    assert_png(out / "seed-0" / "log_mmd.png")
    after = json.loads((out / "summary.json").read_text())
    assert after["mean"] == before["mean"]
    missing = invoke("report", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "no seed-*/results.json" in missing.stderr


def test_every_seed_runs_with_deterministic_gpu_kernels(tmp_path):
    """cuDNN's deterministic algorithms, no autotuner, while a seed runs (GPU runs repeat themselves); the caller's
    settings come back after."""

    @dataclasses.dataclass
    class ToyConfig:
        steps: int = 1

    seen = []

    def run_seed(config, seed, reporter):
        seen.append((torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))
        return {"value": float(seed)}

    toy = Experiment("toy", "a toy", ToyConfig, run_seed, plot=lambda results, folder: [], summarize=lambda r: ({}, ""))
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = False, True
    try:
        run_experiment(toy, ToyConfig(), [0, 1], tmp_path / "out", Reporter(enabled=False))
        assert seen == [(True, False), (True, False)]
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = before


def test_inspect_help_names_every_zoo_model():
    from splitgrow.models import MODELS

    output = " ".join(invoke("inspect", "--help").output.split())
    listed = re.search(r"Zoo model: ([^.]*)\.", output).group(1).split(", ")
    assert sorted(listed) == sorted(MODELS)
