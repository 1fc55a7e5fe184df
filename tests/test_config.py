"""Configs: strict loading, clear messages, and the shipped files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from splitgrow.config import load_config, parse_overrides
from splitgrow.errors import ConfigError
from splitgrow.experiments.images import ImagesConfig
from splitgrow.experiments.mmd import MMDConfig
from splitgrow.experiments.rbf import RBFConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    assert load_config(RBFConfig) == RBFConfig()


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, "epsilon: 0.2\nmax_neurons: 5\ncurve_neurons: [2, 5]\n")
    config = load_config(RBFConfig, path, {"max_neurons": 6})
    assert (config.epsilon, config.max_neurons, config.curve_neurons) == (0.2, 6, [2, 5])


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; users write it anyway
    assert load_config(RBFConfig, write(tmp_path, "threshold: -1e-3\n")).threshold == -1e-3


def test_integers_are_accepted_for_floats_but_not_the_reverse(tmp_path):
    assert load_config(RBFConfig, write(tmp_path, "learning_rate: 1\n")).learning_rate == 1.0
    with pytest.raises(ConfigError, match="'max_neurons' must be an integer"):
        load_config(RBFConfig, write(tmp_path, "max_neurons: 2.5\n"))
    with pytest.raises(ConfigError, match="'max_neurons' must be an integer"):
        load_config(RBFConfig, write(tmp_path, "max_neurons: true\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epsilon: -0.1\n", "epsilon .* must be >= 0"),
        ("max_splits_per_step: 0\n", r"m_\*\) must be >= 1"),
        ("threshold: 0.5\n", r"lambda_\*\) must be <= 0"),
        ("epsilon: 0.1\nepsilno: 0.2\n", r"unknown setting 'epsilno' \(.*\): did you mean 'epsilon'"),
        ("zzz: 1\n", r"unknown setting 'zzz' \(.*\): known settings: "),
        ("methods: [splitting, magic]\n", "unknown method"),
        ("x_min: 3\nx_max: 1\n", "x_min"),
        ("learning_rate: fast\n", "'learning_rate' must be a number"),
        ("learning_rate: .nan\n", "must be finite"),
        ("curve_neurons: 3\n", "'curve_neurons' must be a list"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("epsilon: [1\n", "malformed YAML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(RBFConfig, path)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RBFConfig, tmp_path / "nope.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError):
        load_config(RBFConfig, binary)


def test_empty_file_means_defaults(tmp_path):
    assert load_config(MMDConfig, write(tmp_path, "")) == MMDConfig()


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a=1", "b=[1, 2]", "c=-1e-3", "d=text"]) == {"a": 1, "b": [1, 2], "c": "-1e-3", "d": "text"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_mmd_validation():
    with pytest.raises(ConfigError, match="same length"):
        load_config(MMDConfig, None, {"mixture_means": [0.0]})
    with pytest.raises(ConfigError, match="splitting_form"):
        load_config(MMDConfig, None, {"splitting_form": "approximate"})


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("rbf.yaml", RBFConfig),
        ("rbf-paper.yaml", RBFConfig),
        ("mmd.yaml", MMDConfig),
        ("mmd-converged.yaml", MMDConfig),
        ("images-cpu.yaml", ImagesConfig),
        ("images-paper-vgg19.yaml", ImagesConfig),
        ("images-paper-mobilenetv1.yaml", ImagesConfig),
    ],
)
def test_shipped_configs_load(name, cls):
    config = load_config(cls, CONFIGS / name)
    assert dataclasses.is_dataclass(config)


def test_default_configs_match_the_dataclass_defaults():
    # configs/rbf.yaml and configs/mmd.yaml document the defaults; they must not drift apart
    assert load_config(RBFConfig, CONFIGS / "rbf.yaml") == RBFConfig()
    assert load_config(MMDConfig, CONFIGS / "mmd.yaml") == MMDConfig()
    assert load_config(ImagesConfig, CONFIGS / "images-cpu.yaml") == ImagesConfig()


def test_converged_mmd_config_differs_from_the_paper_only_in_the_learning_rate():
    paper = load_config(MMDConfig, CONFIGS / "mmd.yaml")
    converged = load_config(MMDConfig, CONFIGS / "mmd-converged.yaml")
    assert dataclasses.replace(converged, learning_rate=paper.learning_rate) == paper
    assert (paper.learning_rate, converged.learning_rate) == (0.01, 0.1)


def test_image_paper_configs_have_the_paper_protocol():
    for model in ("vgg19", "mobilenetv1"):
        paper = load_config(ImagesConfig, CONFIGS / f"images-paper-{model}.yaml")
        assert (paper.dataset, paper.model, paper.batch_size, paper.learning_rate) == ("cifar10", model, 64, 0.1)
        assert (paper.momentum, paper.weight_decay, paper.bn_sparsity, paper.start_width) == (0.9, 1e-4, 1e-4, 16)
        assert paper.epochs == paper.finetune_epochs == 160
    vgg = load_config(ImagesConfig, CONFIGS / "images-paper-vgg19.yaml")
    assert vgg.full_widths[0] == 64 and vgg.full_widths[-1] == 512
    with pytest.raises(ConfigError, match="full_widths must list 16 positive widths"):
        load_config(ImagesConfig, None, {"full_widths": [8, 8]})


def test_paper_config_has_the_paper_settings():
    paper = load_config(RBFConfig, CONFIGS / "rbf-paper.yaml")
    assert (paper.iterations_per_step, paper.learning_rate, paper.num_samples) == (50_000, 0.1, 1000)
    assert (paper.target_neurons, paper.start_neurons, paper.max_splits_per_step) == (15, 1, 1)
    assert paper.threshold == -1e-3


def test_full_widths_replace_full_width_in_the_start_width_check():
    widths = [64] * 16
    config = load_config(ImagesConfig, None, {"full_widths": widths, "start_width": 48})  # above full_width (32)
    assert config.start_width == 48
    with pytest.raises(ConfigError, match="every entry of full_widths"):
        load_config(ImagesConfig, None, {"full_widths": [64] * 15 + [40], "start_width": 48})
