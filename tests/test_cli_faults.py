"""More faults met at the command line: the option parser's own errors, hand-edited checkpoints, empty folder names,
clips without audio, settings that contradict each other, config files with a key twice, and results that are not
those of their experiment. Each ends in one line, ``splitgrow: error: <what> (<where>): <how to fix>``,
exit status 2, no traceback, and leaves the files as they were."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave

import pytest
import yaml
from test_cli import invoke, tiny_config
from test_data import write_mnist
from test_faults import MICRO_RBF, TINY_IMAGES, assert_one_line_error, killed_images_run, snapshot
from test_speech_data import write_tree

from splitgrow.checkpoints import Checkpoint
from splitgrow.config import build_config, load_config
from splitgrow.data import DataError, load_keyword_data
from splitgrow.errors import CheckpointError, ConfigError
from splitgrow.experiments.images import ImagesConfig
from splitgrow.experiments.rbf import RBFConfig

# ------------------------------------------------------------------------------------------ the option parser


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "rbf", "--bogus"], ["no such option: --bogus (splitgrow run): ", "splitgrow run --help"]),
        (["run", "rbf", "--seeds"], ["option '--seeds' requires an argument (splitgrow run)"]),
        (["run", "rbf", "--seeds", "abc"], ["invalid value for '--seeds'", "(splitgrow run)"]),
        (["run"], ["missing argument 'experiment' (splitgrow run)"]),
        (["frobnicate"], ["no such command 'frobnicate'", "(splitgrow)", "splitgrow --help"]),
        (["inspect", "--model", "mlp", "--width", "x"], ["invalid value for '--width'", "(splitgrow inspect)"]),
        (["list", "extra"], ["unexpected extra argument", "(splitgrow list)"]),
        (  # a shape written as separate numbers
            ["inspect", "--model", "mlp", "--input-shape", "1", "8", "8"],
            ["unexpected extra argument(s) (8 8)", "give a shape as one value with commas, e.g. --input-shape 3,32,32"],
        ),
    ],
)
def test_option_parser_errors_are_one_line(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(invoke(*args), *fragments)
    assert "Usage:" not in line and "Try '" not in line
    assert snapshot(tmp_path) == {}


def test_help_still_works_and_a_bare_command_shows_it():
    for args in (["--help"], ["run", "--help"], ["run", "rbf", "--help"]):
        result = invoke(*args)
        assert result.exit_code == 0 and "Usage:" in result.stdout, result.output
    assert "Commands" in invoke().output


def test_an_option_error_of_the_installed_command_is_one_line():
    command = [sys.executable, "-m", "splitgrow", "run", "rbf", "--epochs", "abc"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 2 and finished.stdout == ""
    assert finished.stderr.startswith("splitgrow: error: no such option: --epochs (splitgrow run): ")
    assert finished.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, train=32, test=16)
    return root


def test_resume_from_a_hand_edited_checkpoint_is_one_line(mnist_root, tmp_path):
    """A list where the results of a task belong: the run used to fail inside the images experiment."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_IMAGES))
    out = killed_images_run(mnist_root, tmp_path)
    path = out / "seed-0" / "checkpoint.json"
    progress = json.loads(path.read_text())
    path.write_text(json.dumps({**progress, "completed": {"splitting": []}}))
    before = snapshot(out)
    args = ["run", "images", "--dataset", "mnist", "--data-root", str(mnist_root), "--config", str(config), "-q"]
    line = assert_one_line_error(
        invoke(*args, "--out", str(out), "--resume"), "checkpoint changed since splitgrow wrote it", str(path)
    )
    assert f"delete {out / 'seed-0'}" in line and "without --resume" in line
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "edit",
    [
        lambda progress: progress["current"].update(epoch=-1),
        lambda progress: progress["current"].pop("phase"),
        lambda progress: progress.update(elapsed_s=progress["elapsed_s"] + 1),
        lambda progress: progress["completed"].update(full={"accuracy": "high"}),
    ],
)
def test_any_change_to_the_progress_is_refused(tmp_path, edit):
    identity = {"experiment": "images", "seed": 0, "config": {"widths": (2, 3)}}
    checkpoint = Checkpoint(tmp_path, identity)
    checkpoint.progress["current"] = {"task": "full", "phase": 0, "epoch": 2, "done": False}
    checkpoint.progress["completed"]["splitting"] = {"rows": [{"ratio": 0.5, "loss": float("nan")}]}
    checkpoint.save(None)
    assert Checkpoint(tmp_path, identity).load()  # as written: the digest of what JSON gives back agrees
    progress = json.loads((tmp_path / "checkpoint.json").read_text())
    edit(progress)
    (tmp_path / "checkpoint.json").write_text(json.dumps(progress))
    with pytest.raises(CheckpointError, match="checkpoint changed since splitgrow wrote it"):
        Checkpoint(tmp_path, identity).load()


# ------------------------------------------------------------------------------------------ names and settings


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "images", "--data-root", ""], ["(--data-root)", "data_root must name a folder"]),
        (["run", "kws", "--set", "data_root=''"], ["(--set)", "data_root must name a folder"]),
        (["run", "rbf", "--config", ""], ["empty --config"]),
        (["report", ""], ["empty folder name"]),
    ],
)
def test_an_empty_folder_or_file_name_is_not_the_current_folder(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke(*args, *(["--out", str(tmp_path / "out")] if args[0] == "run" else [])), *fragments)
    assert snapshot(tmp_path) == {}


def test_curve_sizes_no_network_reaches_are_refused(tmp_path):
    config = tiny_config(tmp_path, MICRO_RBF)  # max_neurons 2
    out = tmp_path / "out"
    args = ["run", "rbf", "--config", str(config), "--set", "curve_neurons=[2, 5]", "--out", str(out)]
    line = assert_one_line_error(invoke(*args))
    assert "curve_neurons [5] lie outside start_neurons (1) to max_neurons (2)" in line
    with pytest.raises(ConfigError, match=r"curve_neurons \[1\] lie outside start_neurons \(2\)"):
        build_config(RBFConfig, {"start_neurons": 2, "curve_neurons": [1, 3]})
    assert build_config(RBFConfig, {"start_neurons": 3, "curve_neurons": [3, 8]}).curve_neurons == [3, 8]
    assert not out.exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"momentum": -0.5}, "momentum must be in"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"bn_sparsity": -1e-4}, "bn_sparsity"),
    ],
)
def test_optimizer_settings_torch_refuses_are_config_errors(setting, message):
    with pytest.raises(ConfigError, match=message):
        build_config(ImagesConfig, setting)


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    text = f"epsilon: 0.1\n{MICRO_RBF.strip()}\nepsilon: 0.3\n"  # tiny settings: it used to run, with epsilon 0.3
    config = tiny_config(tmp_path, text)
    out = tmp_path / "out"
    line = assert_one_line_error(
        invoke("run", "rbf", "--config", str(config), "--out", str(out)), "the key 'epsilon' appears twice"
    )
    assert f"({config}, line {text.count(chr(10))})" in line and not out.exists()
    once = tiny_config(tmp_path, "x_min: -2.0\nmethods: [splitting]\n")
    assert load_config(RBFConfig, once).x_min == -2.0


# ------------------------------------------------------------------------------------------ data and reports


def test_a_wav_clip_of_no_samples_says_why(tmp_path):
    write_tree(tmp_path)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:  # a valid header announcing 0 frames: it used to read as silence
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
    (tmp_path / "yes" / "empty.wav").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=r"a WAV file of no samples .* \(.*empty.wav\): replace it or delete it"):
        load_keyword_data(tmp_path)


def test_report_of_a_missing_folder_or_of_foreign_results(tmp_path):
    assert_one_line_error(invoke("report", str(tmp_path / "nowhere")), "no such folder", "nowhere")
    out = tmp_path / "out"
    (out / "seed-0").mkdir(parents=True)
    results = {"experiment": "rbf", "seed": 0, "config": {}, "metadata": {}, "wall_time_s": 1.0, "grid": []}
    (out / "seed-0" / "results.json").write_text(json.dumps(results))
    before = snapshot(out)
    line = assert_one_line_error(invoke("report", str(out)), "results that are not those of a rbf run", str(out))
    assert "KeyError" in line and snapshot(out) == before
