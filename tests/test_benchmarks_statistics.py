"""The statistics benchmarks (adaptive statistics, the original procedure, selection and index noise) run end to
end on tiny settings, and the checks they report hold (a file of their own, so that the suite's two processes
share the benchmark smoke tests)."""

from __future__ import annotations

import json

import pytest
from test_benchmarks import run_script


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
        # disjoint draws of each size where they fit in the 64 training images: 2 of 16, 2 of 32
        assert sorted(row["samples"] for row in fixed) == [16, 16, 32, 32]
        for row in rows:
            assert 0.0 <= row["overlap"] <= 1.0 and row["phase_over_epoch"] > 0
            # no selection of as many neurons can beat the reference's total decrease under the reference statistics
            assert row["selected"] <= model["top_m"] and row["decrease_fraction"] <= 1.0 + 1e-9
        (adaptive,) = [row for row in rows if row["method"] == "adaptive"]
        assert 32 <= adaptive["samples"] <= 64 and adaptive["samples"] % 16 == 0  # whole batches of 16
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
    for layer in layers:  # timed on 8 images, scaled to the 64 training images
        assert layer["pass_seconds_scaled"] == pytest.approx(layer["pass_seconds_measured"] * 64 / 8)
    adaptive = model["splitgrow_adaptive"]
    assert len(adaptive["samples_each"]) == len(adaptive["overlap_each"]) == 2  # two draws
    assert adaptive["overlap"] == pytest.approx(sum(adaptive["overlap_each"]) / 2)
    assert [row["samples"] for row in model["splitgrow_fixed"]] == [16, 32]  # 1 and 2 batches of 16
    for row in model["splitgrow_fixed"]:
        assert all(0.0 <= overlap <= 1.0 for overlap in row["overlap_each"])
        assert row["seconds"] == pytest.approx(sum(row["seconds_each"]) / 2)
        assert row["speedup"] == pytest.approx(model["original_seconds"] / row["seconds"])


def test_selection_noise_quick(tmp_path):
    out = tmp_path / "selection_noise"
    run_script("selection_noise.py", "--quick", "--models", "vgg19", "--out", str(out))
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    assert model["half_samples"] == [32, 32]  # 64 training images in batches of 16, split in two
    assert model["top_m"] == round(0.1 * model["neurons"]) and 0.0 <= model["overlap"] <= 1.0
    assert "| vgg19 " in out.with_suffix(".md").read_text()


def test_index_noise_quick(tmp_path):
    out = tmp_path / "index_noise"
    run_script("index_noise.py", "--quick", "--models", "vgg19", "--out", str(out))
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    # the batches' quadratic forms v_i^T S_b v_i average (weighted by samples) to the reference indexes
    assert model["consistency"] <= 1e-4 and model["batches"] == 4
    assert model["median_relative_sigma"] > 0.0
    fence = model["fence"]  # the window of two standard errors narrows as the sample grows
    assert fence["64"] >= fence["512"] >= fence["2048"] >= 0
    assert set(model["sampled_selections"]) == {"plain", "halves", "cross-fitted"}
    for draws in model["sampled_selections"].values():
        assert len(draws) == 1 and all(0.0 <= overlap <= 1.0 and decrease <= 1.0 + 1e-9 for overlap, decrease in draws)
    assert "| vgg19 " in out.with_suffix(".md").read_text()
