"""The benchmark scripts run end to end on tiny settings, and the checks they report hold.

Only correctness is asserted here (solvers agree, selections overlap, sizes add up); the times they measure are
reported by the scripts, never tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


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


def test_adaptive_statistics_quick(tmp_path):
    out = tmp_path / "adaptive_statistics"
    run_script("adaptive_statistics.py", "--quick", "--models", "vgg19", "--out", str(out))
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    assert model["neurons"] == 16 * 4 and model["top_m"] <= round(0.1 * model["neurons"])
    # every position and at most 64 of each convolution's (32 x 32 maps at the start), side by side
    assert {row["max_positions"] for row in model["rows"]} == {0, 64}
    for positions in (0, 64):
        rows = [row for row in model["rows"] if row["max_positions"] == positions]
        fixed = [row for row in rows if row["method"] == "fixed"]
        # disjoint draws of each size where they fit in the 128 training images: 2 of 32, 2 of 64
        assert sorted(row["samples"] for row in fixed) == [32, 32, 64, 64]
        for row in rows:
            assert 0.0 <= row["overlap"] <= 1.0 and row["phase_over_epoch"] > 0
            # no selection of as many neurons can beat the reference's total decrease under the reference statistics
            assert row["selected"] <= model["top_m"] and row["decrease_fraction"] <= 1.0 + 1e-9
        (adaptive,) = [row for row in rows if row["method"] == "adaptive"]
        assert 32 <= adaptive["samples"] <= 128 and adaptive["samples"] % 16 == 0  # whole batches of 16
        if positions == 0 and adaptive["samples"] == model["reference_samples"]:  # the reference's data: its top
            assert adaptive["decrease_fraction"] >= 0.99
    assert "| adaptive" in out.with_suffix(".md").read_text() and "| 64 " in out.with_suffix(".md").read_text()


def test_original_procedure_quick(tmp_path):
    out = tmp_path / "original_procedure"
    run_script("original_procedure.py", "--quick", "--models", "vgg19", "--out", str(out))
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    # the original construction (auxiliary variables, numpy eig) and splitgrow's dense solver are the same
    # mathematics on VGG19's layers: the same indexes on the same samples, in float64
    assert model["exact_check_relative_error"] <= 1e-8
    assert model["original_neurons"] == model["neurons"] == 16 * 4
    layers = model["original"]["layers"]
    assert [layer["d"] for layer in layers] == [9] + [9 * 4] * 15
    for layer in layers:  # timed on 8 images, scaled to the 128 training images
        assert layer["pass_seconds_scaled"] == pytest.approx(layer["pass_seconds_measured"] * 128 / 8)
    adaptive = model["splitgrow_adaptive"]
    assert len(adaptive["samples_each"]) == len(adaptive["overlap_each"]) == 2  # two draws
    assert adaptive["overlap"] == pytest.approx(sum(adaptive["overlap_each"]) / 2)
    assert [row["samples"] for row in model["splitgrow_fixed"]] == [32, 64]  # 2 and 4 batches of 16
    for row in model["splitgrow_fixed"]:
        assert all(0.0 <= overlap <= 1.0 for overlap in row["overlap_each"])
        assert row["seconds"] == pytest.approx(sum(row["seconds_each"]) / 2)
        assert row["speedup"] == pytest.approx(model["original_seconds"] / row["seconds"])


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


def test_selection_noise_quick(tmp_path):
    out = tmp_path / "selection_noise"
    run_script("selection_noise.py", "--quick", "--models", "vgg19", "--out", str(out))
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    assert model["half_samples"] == [64, 64]  # 128 training images in batches of 16, split in two
    assert model["top_m"] == round(0.1 * model["neurons"]) and 0.0 <= model["overlap"] <= 1.0
    assert "| vgg19 " in out.with_suffix(".md").read_text()


def test_index_noise_quick(tmp_path):
    out = tmp_path / "index_noise"
    run_script("index_noise.py", "--quick", "--models", "vgg19", "--out", str(out))
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    # the batches' quadratic forms v_i^T S_b v_i average (weighted by samples) to the reference indexes
    assert model["consistency"] <= 1e-4 and model["batches"] == 8
    assert model["median_relative_sigma"] > 0.0
    fence = model["fence"]  # the window of two standard errors narrows as the sample grows
    assert fence["128"] >= fence["512"] >= fence["2048"] >= 0
    assert set(model["sampled_selections"]) == {"plain", "halves", "cross-fitted"}
    for draws in model["sampled_selections"].values():
        assert len(draws) == 1 and all(0.0 <= overlap <= 1.0 and decrease <= 1.0 + 1e-9 for overlap, decrease in draws)
    assert "| vgg19 " in out.with_suffix(".md").read_text()
