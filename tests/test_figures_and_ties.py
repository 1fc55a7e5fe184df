"""Summaries call results within a tolerance a tie, and figures show every method and name every line they draw
(experiments rbf and mmd)."""

from __future__ import annotations

import copy

import pytest
from matplotlib.figure import Figure

from splitgrow.experiments import mmd, rbf
from splitgrow.experiments.common import TIE_TOLERANCE, Reporter, coinciding, outcome, torch_threads

TINY_RBF = {
    "num_samples": 40,
    "max_neurons": 3,
    "iterations_per_step": 100,
    "threshold": 0.0,
    "boosting_candidates": 2,
    "methods": ["splitting", "random_split", "net2net", "new_init", "gradient_boosting", "scratch"],
    "probe_neurons": 2,
    "probe_count": 2,
    "probe_iterations": 30,
    "angle_steps": 2,
    "curve_neurons": [2, 3],
    "record_every": 10,
}
TINY_MMD = {"num_samples": 60, "iterations_per_step": 40, "max_particles": 3, "boosting_candidates": 3}
PAPER_MMD_METHODS = ["splitting", "random_split", "new_init", "gradient_boosting"]


@pytest.fixture(scope="module")
def rbf_results() -> dict:
    with torch_threads(1):
        return {"seed": 0, **rbf.run_seed(rbf.RBFConfig(**TINY_RBF), 0, Reporter(False))}


@pytest.fixture(scope="module")
def mmd_results() -> dict:
    with torch_threads(1):
        return {"seed": 0, **mmd.run_seed(mmd.MMDConfig(**TINY_MMD), 0, Reporter(False))}


def drawn_figures(module, results: dict, tmp_path, monkeypatch) -> dict[str, Figure]:
    """The figures ``module.plot`` draws, by file name."""
    figures = {}
    monkeypatch.setattr(module, "save_figure", lambda figure, path: figures.setdefault(path.name, figure))
    module.plot(results, tmp_path)
    return figures


def assert_every_line_in_a_legend(figure: Figure) -> None:
    legends = [legend for ax in figure.axes if (legend := ax.get_legend())] + list(figure.legends)
    named = {text.get_text() for legend in legends for text in legend.get_texts()}
    for ax in figure.axes:
        for artist in [*ax.get_lines(), *ax.collections]:
            label = artist.get_label()
            assert not label.startswith("_"), f"a line without a label in '{ax.get_title()}'"
            assert label in named, f"{label!r} of '{ax.get_title()}' is not in a legend"


def test_a_relative_difference_within_the_tolerance_is_a_tie():
    assert outcome(7.13803, 7.13827) == "tie" and outcome(7.13827, 7.13803) == "tie"
    assert outcome(1.0, 1.0 + 2 * TIE_TOLERANCE) == "win" and outcome(1.0 + 2 * TIE_TOLERANCE, 1.0) == "loss"
    assert outcome(-4.37, -4.0) == "win"  # lower is better, signs included
    assert outcome(0.0, 0.0) == "tie" and outcome(0.0, 1e-300) == "win"


def test_coinciding_curves_are_grouped():
    curves = {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0005, 3.0], "c": [1.0, 2.1, 3.0], "d": [1.0, 2.1, 3.0]}
    assert coinciding(curves) == [["a", "b"], ["c", "d"]]
    assert coinciding(curves, tolerance=1e-5) == [["c", "d"]]
    # near zero a pointwise relative test is too strict; the figure's scale decides
    assert coinciding({"a": [0.0, 1e-9], "b": [0.0, -1e-9]}) == []
    assert coinciding({"a": [0.0, 1e-9], "b": [0.0, -1e-9]}, scale=1.0) == [["a", "b"]]
    assert coinciding({"a": [1.0, 2.0], "b": [1.0, 2.0]}, xs={"a": [0, 1], "b": [0, 2]}) == []


def test_rbf_summary_calls_a_tiny_difference_a_tie(rbf_results):
    seeds = []
    for seed, (splitting, random_split, new_init) in enumerate([(7.13803, 7.13827, 0.0025), (0.5, 0.9, 0.5002)]):
        results = copy.deepcopy(rbf_results)
        results["seed"] = seed
        results["loss_at_final_size"].update(
            splitting=splitting, random_split=random_split, new_init=new_init, net2net=9.0, gradient_boosting=9.0
        )
        results["loss_at_final_size"]["scratch"] = 9.0
        seeds.append(results)
    summary, table = rbf.summarize(seeds)
    assert [row["splitting_vs_random_split"] for row in summary["per_seed"]] == ["tie", "win"]
    assert summary["splitting_vs_random_split"] == {"win": 1, "tie": 1, "loss": 0}
    assert summary["per_seed"][0]["lowest"] == ["new_init"]
    assert summary["per_seed"][1]["lowest"] == ["splitting", "new_init"]  # 0.5 and 0.5002: a tie for the lowest
    assert summary["splitting_lowest_count"] == 0 and summary["splitting_tied_lowest_count"] == 1
    assert "| tie " in table and "tie: splitting (ours), new initialisation" in table
    assert "won in 1, tied in 1 and lost in 0" in table and "beat" not in table


def test_mmd_summary_calls_a_tiny_difference_a_tie(mmd_results):
    seeds = []
    for seed, values in enumerate([(-4.0, -4.0001, -3.0, -3.0), (-4.0, -3.0, -3.0, -2.0)]):
        results = copy.deepcopy(mmd_results)
        results["seed"] = seed
        results["methods"] = {name: results["methods"][name] for name in PAPER_MMD_METHODS}
        for name, value in zip(PAPER_MMD_METHODS, values):
            results["methods"][name]["final_log10_mmd2"] = value
        seeds.append(results)
    summary, table = mmd.summarize(seeds)
    assert summary["lowest_per_seed"] == [["splitting", "random_split"], ["splitting"]]
    assert summary["lowest_mean"] == ["splitting"]  # means -4.0 and -3.50005
    assert "tie: splitting (ours), random split" in table and "splitting (ours) 1; ties 1" in table


def test_rbf_figures_show_every_method_and_name_every_line(rbf_results, tmp_path, monkeypatch):
    results = copy.deepcopy(rbf_results)
    # splitting and random splitting ending in the same minimum: the case where one line hid the other
    results["methods"]["random_split"]["curves"] = copy.deepcopy(results["methods"]["splitting"]["curves"])
    results["methods"]["random_split"]["history"] = copy.deepcopy(results["methods"]["splitting"]["history"])
    figures = drawn_figures(rbf, results, tmp_path, monkeypatch)
    assert set(figures) == {"curves.png", "training_loss.png", "indexes.png", "angles.png"}
    for figure in figures.values():
        assert_every_line_in_a_legend(figure)
    for name in ("curves.png", "training_loss.png"):
        lines = {line.get_label(): line for ax in figures[name].axes for line in ax.get_lines()}
        splitting, random_split = lines[rbf.LABELS["splitting"]], lines[rbf.LABELS["random_split"]]
        assert splitting.get_linestyle() != random_split.get_linestyle()
        assert splitting.get_marker() != random_split.get_marker()
        assert random_split.get_zorder() > splitting.get_zorder()  # the dashed line on top of the wide one
        notes = [text.get_text() for ax in figures[name].axes for text in ax.texts]
        assert any("splitting (ours) = random split" in note for note in notes), notes
    labels = {text.get_text() for text in figures["curves.png"].legends[0].get_texts()}
    assert rbf.LABELS["scratch"] in labels  # drawn in the last panel only, named all the same


def test_mmd_figures_show_every_method_and_name_every_line(mmd_results, tmp_path, monkeypatch):
    figures = drawn_figures(mmd, mmd_results, tmp_path, monkeypatch)
    assert set(figures) == {"trajectories.png", "log_mmd.png"}
    for figure in figures.values():
        assert_every_line_in_a_legend(figure)
    styles = {(line.get_linestyle(), line.get_marker()) for line in figures["log_mmd.png"].axes[0].get_lines()}
    assert len(styles) == len(mmd_results["methods"])  # every method drawn in a style of its own
