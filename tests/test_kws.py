"""The keyword-spotting experiment on a few synthesised clips: growth through the Grower, the best validation
checkpoint, exact sizes, BN-prune, the summary, kill and resume, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import assert_png, invoke

from splitgrow.config import build_config, load_config
from splitgrow.data import speech_synthetic
from splitgrow.data.speech_synthetic import INSTALL_TOOLS, TOOLS, synthesize_keywords, synthetic_root
from splitgrow.experiments.common import Reporter
from splitgrow.experiments.kws import SYNTHETIC_LABEL, KwsConfig, _Interrupted, pruning_targets, run_seed
from splitgrow.models import dscnn_cost

needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason=f"espeak-ng, flite or sox is not installed ({INSTALL_TOOLS}; CI installs them)",
)

#: two stages on 6 clips per keyword (3 speakers: one per partition), a few steps each
TINY = {
    "synthetic_clips_per_word": 6,
    "augmented_copies": 2,
    "batch_size": 8,
    "learning_rates": [3e-3, 1e-3],
    "steps": [2, 2],
    "eval_every": 2,
    "start_width": 2,
    "reference_width": 4,
    "max_stages": 2,
    "max_parameters": 100_000,
    "split_batches": 1,
    "prune_points": 2,
}


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory):
    """A cache folder holding the tiny synthetic set, as `splitgrow run kws` builds it on first use."""
    cache = tmp_path_factory.mktemp("cache")
    synthesize_keywords(cache / synthetic_root(0, TINY["synthetic_clips_per_word"]).name, seed=0, clips_per_word=6)
    return cache


@pytest.fixture
def cached(synthetic_cache, monkeypatch):
    monkeypatch.setattr(speech_synthetic, "CACHE", synthetic_cache)
    return synthetic_cache


def write_config(path, settings):
    path.write_text("\n".join(f"{key}: {json.dumps(value)}" for key, value in settings.items()) + "\n")
    return path


@needs_tools
def test_two_stages_end_to_end(cached, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "kws", "--config", str(write_config(tmp_path / "tiny.yaml", TINY)), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert SYNTHETIC_LABEL in result.stdout and "no --data-root" in result.stderr
    results = json.loads((out / "seed-0" / "results.json").read_text())
    assert results["data"] == SYNTHETIC_LABEL and results["dataset"] == "speech-synthetic"
    assert results["training_examples"] == 2 * results["clips"]["training"]
    rows = results["rows"]
    splitting = [r for r in rows if r["method"] == "splitting"]
    assert [r["stage"] for r in splitting] == [0, 1, 2] and results["stop_reason"] == "reached max_stages = 2"
    assert splitting[0]["widths"] == [2] * 6
    for row in rows:  # Hello Edge's counts of the widths the network has; operations = 2 x MACs
        cost = dscnn_cost(row["widths"], "L")
        assert (row["parameters"], row["operations"]) == (cost.parameters, cost.operations)
        # the schedule ends at the first evaluation with the highest validation accuracy
        accuracies = [point["validation_accuracy"] for point in row["curve"]]
        assert [point["step"] for point in row["curve"]] == [2, 4] and row["steps"] == 4
        assert row["validation_accuracy"] == max(accuracies)
        assert row["best_step"] == row["curve"][accuracies.index(max(accuracies))]["step"]
    # each stage adds at most 30% of the parameters (energy-aware), by the splits the Grower recorded
    for stage, before, after in zip(results["growth"], splitting, splitting[1:]):
        assert stage["parameters_before"] == before["parameters"] and stage["parameters_after"] == after["parameters"]
        assert before["parameters"] < after["parameters"] <= 1.3 * before["parameters"]
        assert stage["splits"] and all(split["index"] < 0 for split in stage["splits"])
        assert sum(after["widths"]) - sum(before["widths"]) == len(stage["splits"])
    reference = next(r for r in rows if r["method"] == "dscnn")
    assert reference["widths"] == [4] * 6 and results["reference_parameters"] == reference["parameters"]
    pruned = [r for r in rows if r["method"] == "bn-prune"]
    assert [r["stage"] for r in pruned] == pruning_targets(splitting, reference["parameters"], 2)
    assert pruned and all(r["parameters"] < reference["parameters"] for r in pruned)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table1"]["splitting"]["test_accuracy_mean"] == splitting[-1]["test_accuracy"]
    assert summary["table1"]["dscnn"]["parameters"] == reference["parameters"]
    assert summary["comparisons"] == len(pruned)
    for figure in ("accuracy_vs_size.png", "validation_curves.png"):
        assert_png(out / "seed-0" / figure)


RESUMABLE = {**TINY, "max_stages": 1, "prune_points": 1}


@pytest.fixture(scope="module")
def uninterrupted(synthetic_cache, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speech_synthetic, "CACHE", synthetic_cache)
        config = build_config(KwsConfig, RESUMABLE)
        return run_seed(config, 0, Reporter(False), workdir=tmp_path_factory.mktemp("whole"))


@needs_tools
@pytest.mark.parametrize("stop", [3, 10])
def test_a_killed_run_resumes_to_the_same_result(cached, uninterrupted, tmp_path, stop):
    """Killed right after the growth, or inside BN-prune's fine-tuning (2 evaluations per network), then resumed:
    the same numbers as a run that was never interrupted."""
    config = build_config(KwsConfig, RESUMABLE)
    with pytest.raises(_Interrupted):
        run_seed(config, 0, Reporter(False), workdir=tmp_path, stop_after_evaluations=stop)
    resumed = run_seed(config, 0, Reporter(False), workdir=tmp_path, resume=True)
    assert json.dumps(resumed["rows"], sort_keys=True) == json.dumps(uninterrupted["rows"], sort_keys=True)
    assert [s["splits"] for s in resumed["growth"]] == [s["splits"] for s in uninterrupted["growth"]]
    assert [r["method"] for r in resumed["rows"]] == ["splitting", "splitting", "dscnn", "bn-prune"]


def test_pruning_targets_spread_over_the_smaller_stages():
    rows = [{"stage": stage, "parameters": size} for stage, size in enumerate([10, 13, 17, 22, 29, 38])]
    assert pruning_targets(rows, 30, 3) == [0, 2, 4]
    assert pruning_targets(rows, 30, 9) == [0, 1, 2, 3, 4]
    assert pruning_targets(rows, 30, 1) == [4]
    assert pruning_targets(rows, 5, 3) == [] and pruning_targets(rows, 30, 0) == []


def test_the_schedule_changes_rate_at_its_boundaries():
    config = build_config(KwsConfig, {"learning_rates": [5e-4, 1e-4, 2e-5], "steps": [3, 2, 1]})
    assert [config.learning_rate(step) for step in range(6)] == [5e-4] * 3 + [1e-4] * 2 + [2e-5]


def test_missing_tools_are_one_line_naming_the_apt_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(speech_synthetic, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(speech_synthetic.shutil, "which", lambda tool: None if tool == "espeak-ng" else "/usr/bin/x")
    result = invoke("run", "kws", "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"install them with `{INSTALL_TOOLS}`" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "steps=[10, 10]"], "learning_rates and steps must list the same number"),
        (["--set", "dataset=synthetic", "--data-root", "/data"], "dataset synthetic is built in"),
        (["--set", "activation=relu"], "activation must be one of softplus"),
        (["--data-root", "/nonexistent/speech"], "the keyword data folder does not exist (/nonexistent/speech)"),
    ],
)
def test_command_line_errors(tmp_path, args, message):
    result = invoke("run", "kws", *args, "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_shipped_configs():
    folder = Path(__file__).resolve().parents[1] / "configs"
    assert load_config(KwsConfig, folder / "kws.yaml") == KwsConfig()  # configs/kws.yaml documents the defaults
    paper = load_config(KwsConfig, folder / "kws-paper.yaml")
    assert not paper.synthetic and paper.reference_width == 276
    assert (paper.start_width, paper.batch_size, paper.growth, paper.growth_ratio) == (16, 100, "parameters", 0.3)
    assert (paper.learning_rates, paper.steps) == ([5e-4, 1e-4, 2e-5], [10_000] * 3)
    # growth stops at the first stage at or above max_parameters: at 30% per stage from the 3,196 parameters of
    # width 16, the last stage must land near Table 1's 282.6K, not a stage beyond it
    start = dscnn_cost([paper.start_width] * 6, "L").parameters
    stages = [start * (1 + paper.growth_ratio) ** k for k in range(paper.max_stages + 1)]
    final = next(size for size in stages if size >= paper.max_parameters)
    assert 250_000 < final < 300_000
