"""The benchmark scripts run end to end on tiny settings, and the checks they report hold.

Only correctness is asserted here (solvers agree, selections overlap, sizes add up); the times they measure are
reported by the scripts, never tested.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str) -> None:
    """Run ``python benchmarks/NAME ARGS``, from its ``__main__`` block, in this process.

    The same code from the same entry point as the command line, without a fresh interpreter: importing torch and
    torch._dynamo (which the first optimiser imports) costs a new process several seconds, more than most quick
    runs. The scripts seed every draw themselves; what a run changes in this process (torch's global random state
    and thread count, the arguments, the import path, the scripts' shared module ``_common`` and its cached data)
    is put back afterwards, so that each run starts as the command line would and the tests after it are unaffected.
    """
    benchmarks = str(ROOT / "benchmarks")
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(ROOT / "benchmarks" / name), *args]
    sys.path.insert(0, benchmarks)  # the scripts import _common from their own directory
    try:
        with torch.random.fork_rng(devices=[]):
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv
        sys.path.remove(benchmarks)
        sys.modules.pop("_common", None)
        torch.set_num_threads(threads)


def test_splitting_phase_quick(tmp_path):
    out = tmp_path / "splitting_phase"
    run_script("splitting_phase.py", "--quick", "--channels", "16", "--models", "vgg19", "--out", str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    (layer,) = report["layers"]
    # the reference construction and the dense batched one are the same mathematics
    assert layer["reference_vs_dense_relative_error"] <= 1e-8
    assert layer["lambda_relative_error_top_m"] <= 1e-2 and layer["lobpcg_converged"] == 1.0
    assert layer["d"] == 9 * 16 and layer["neurons"] == 16
    (network,) = report["networks"]
    assert all(0.0 <= s["top_m_overlap_with_all_data"] <= 1.0 for s in network["subsamples"])
    # from the shared-subspace start LOBPCG finds lambda_min itself, not another pair that passes the residual test
    assert network["starts"]["subspace"]["max_error"] <= 1e-2
    assert network["starts"]["subspace"]["top_m_overlap_with_dense"] == 1.0
    assert "| 16 @ 32x32" in out.with_suffix(".md").read_text()


def test_images_stage_tiny(tmp_path):
    paper = yaml.safe_load((ROOT / "configs" / "images-paper-vgg19.yaml").read_text())
    tiny = {**paper, "start_width": 4, "full_widths": [8] * 16, "batch_size": 16, "split_batches": 2}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    out = tmp_path / "stage"
    run_script(
        "images_stage.py", "--config", str(tmp_path / "tiny.yaml"), "--samples", "32", "--repeats", "1",
        "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    # at most 30% of the 64 neurons split (ceil(19.2) = 20), each one more channel
    assert 0 < report["splits"] <= 20 and report["grown_parameters"] > report["start_parameters"]
    # the paper's protocol: 160 + 5 x 160 (splitting), 2 x 160 (full nets), 2 x 5 x 160 (pruning),
    # 3 x 5 x 160 (retraining of every found architecture)
    assert report["protocol_epochs"] == 5280
    assert report["converged_fraction"] == pytest.approx(1.0)


def test_growth_methods_cost_quick(tmp_path):
    out = tmp_path / "growth_methods_cost"
    run_script("growth_methods_cost.py", "--quick", "--models", "vgg19", "--out", str(out))
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["neurons"] == 16 * 4 and row["statistics_samples"] == 16
    assert set(row["seconds"]) == {"splitting", "signed", "firefly"} and min(row["seconds"].values()) > 0
    assert row["firefly_over_splitting"] == pytest.approx(row["seconds"]["firefly"] / row["seconds"]["splitting"])


def test_solver_choice_quick(tmp_path):
    out = tmp_path / "solver_choice"
    run_script("solver_choice.py", "--quick", "--out", str(out))
    rows = {row["model"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    # VGG19 at width 2 (d <= 18): auto is the dense solver; MobileNetV1's depthwise blocks go matrix-free
    assert rows["vgg19"]["auto_picked"] == ["dense"] and rows["vgg19"]["largest_d"] == 18
    assert rows["mobilenetv1"]["auto_picked"] == ["dense", "lobpcg"]
    for row in rows.values():
        assert set(row["seconds"]) == {"dense", "lobpcg", "auto"} and min(row["seconds"].values()) > 0
        assert row["lobpcg_overlap_with_dense"] >= 0.9  # the same selection, to a tolerance


def test_depthwise_products_quick(tmp_path):
    out = tmp_path / "depthwise_products"
    run_script("depthwise_products.py", "--quick", "--out", str(out))
    (row,) = json.loads(out.with_suffix(".json").read_text())["models"]
    # grouped convolutions and tap loops are two ways to the same products: the same indexes at every chain site
    assert row["chain_sites"] == 13 and row["largest_index_difference"] <= 1e-4


def test_the_gpu_checks_script_parses_and_names_its_parts():
    """benchmarks/cuda_checks.sh runs only where a GPU is lent: here, bash parses it and every part its header
    lists is a function of it."""
    script = ROOT / "benchmarks" / "cuda_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    parts = [line.split()[4] for line in text.splitlines() if line.startswith("#   bash benchmarks/cuda_checks.sh")]
    assert parts and all(f"\n{part}() {{\n" in text for part in parts)
