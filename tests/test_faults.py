"""The command line under faults (issue 13): every bad input and broken file a user can meet ends with one line,
``splitgrow: error: <what> (<where>): <how to fix>``, exit status 2, no traceback and no partial file or folder;
a run folder holds one configuration. Faults are made in temporary folders; the CLI runs in-process."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_cli import invoke, tiny_config
from test_data import cifar_batch, write_cifar, write_mnist

from splitgrow import artifacts
from splitgrow.checkpoints import Checkpoint
from splitgrow.config import config_to_dict, describe_settings, load_config
from splitgrow.data import write_idx
from splitgrow.errors import CheckpointError
from splitgrow.experiments import experiments
from splitgrow.experiments.common import Experiment
from splitgrow.experiments.images import ImagesConfig
from splitgrow.experiments.rbf import RBFConfig

#: the smallest rbf run that writes every file (about a second)
MICRO_RBF = """
num_samples: 20
max_neurons: 2
iterations_per_step: 20
methods: [splitting]
probe_neurons: 2
probe_count: 1
probe_iterations: 0
angle_steps: 1
curve_neurons: [2]
record_every: 10
"""

TINY_IMAGES = {
    "train_samples": 0,
    "test_samples": 0,
    "start_width": 2,
    "full_width": 4,
    "batch_size": 16,
    "epochs": 1,
    "finetune_epochs": 1,
    "stages": 1,
    "split_batches": 1,
    "retrain": False,
}


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit status 2, exactly one line on stderr in the house form, no traceback; returns the line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    line = result.stderr
    assert line.startswith("splitgrow: error: ") and line.count("\n") == 1, line
    assert " (" in line and "): " in line, f"not '<what> (<where>): <how to fix>': {line}"
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (empty folders as None)."""
    if not folder.exists():
        return {}
    return {str(path.relative_to(folder)): (None if path.is_dir() else path.read_bytes()) for path in folder.rglob("*")}


# ------------------------------------------------------------------------------------------ where results go


def test_out_under_a_regular_file(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = blocker / "run"
    line = assert_one_line_error(
        invoke("run", "rbf", "--out", str(out), "-q"), "a file stands where a folder is needed", str(out), "--out"
    )
    assert "Errno" not in line
    assert blocker.read_text() == "not a folder"
    out_file = invoke("run", "rbf", "--out", str(blocker), "-q")
    assert_one_line_error(out_file, "not a folder", str(blocker))


@pytest.mark.parametrize("system", ["/proc", "/sys"])
def test_out_under_proc_or_sys(system):
    if not Path(system).is_dir():
        pytest.skip(f"no {system} on this system")
    out = Path(system) / "splitgrow-test-run"
    assert_one_line_error(invoke("run", "rbf", "--out", str(out), "-q"), str(out), "--out")
    assert not out.exists()


def test_out_on_a_read_only_file_system(tmp_path, monkeypatch):
    # chmod does not stop root; the kernel's answer on a read-only mount is EROFS from mkdir, simulated here
    read_only = tmp_path / "mounted"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    out = read_only / "run"
    assert_one_line_error(invoke("run", "rbf", "--out", str(out), "-q"), "read-only file system", "--out")
    assert not read_only.exists()


def test_disk_full_during_a_run(tmp_path, monkeypatch):
    """The second seed's results hit a full disk: one line naming the file, the first seed's results intact, no
    temporary or half-written file, and no empty folder for the second seed."""
    real_writer = artifacts.atomic_write_bytes

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() and fsync() raise it: no file name

    def writer(path, data):
        with monkeypatch.context() as patch:
            if Path(path).parent.name == "seed-1":
                patch.setattr(os, "fsync", full_disk)
            real_writer(path, data)

    monkeypatch.setattr(artifacts, "atomic_write_bytes", writer)
    out = tmp_path / "out"
    config = tiny_config(tmp_path, MICRO_RBF)
    result = invoke("run", "rbf", "--config", str(config), "--out", str(out), "--seeds", "2", "-q")
    assert_one_line_error(result, "no space left on the disk", str(out / "seed-1"), "free some space")
    assert sorted(os.listdir(out)) == ["config.yaml", "seed-0"]
    assert json.loads((out / "seed-0" / "results.json").read_text())["seed"] == 0
    assert not list(out.rglob("*.tmp"))


def test_atomic_writer_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as raised:
        artifacts.atomic_write_text(path, "new")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["results.json"]


def test_a_run_that_fails_before_any_result_leaves_nothing(tmp_path, monkeypatch):
    # a diverging run: the folder it made and its config.yaml are removed, so the fixed settings can go there
    from splitgrow.shallow.network import ShallowRegression

    monkeypatch.setattr(ShallowRegression, "_loss_tensor", lambda self: torch.tensor(float("nan"), requires_grad=True))
    out = tmp_path / "new" / "out"
    result = invoke("run", "rbf", "--config", str(tiny_config(tmp_path, MICRO_RBF)), "--out", str(out), "-q")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ one folder, one run


def make_rbf_folder(out: Path, config: RBFConfig, seeds=(0,)) -> None:
    """A finished-looking rbf run folder: config.yaml and each seed's results.json (with the keys runs write)."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    for seed in seeds:
        (out / f"seed-{seed}").mkdir()
        results = {"experiment": "rbf", "seed": seed, "config": config_to_dict(config), "metadata": {}}
        (out / f"seed-{seed}" / "results.json").write_text(json.dumps({**results, "wall_time_s": 1.0}))


def test_a_second_run_with_other_settings_is_refused(tmp_path):
    config_file = tiny_config(tmp_path, MICRO_RBF)
    out = tmp_path / "out"
    make_rbf_folder(out, load_config(RBFConfig, config_file))
    before = snapshot(out)
    other = invoke("run", "rbf", "--config", str(config_file), "--set", "learning_rate=0.05", "--out", str(out))
    assert_one_line_error(other, "holds a run with other settings", "learning_rate: 0.1 -> 0.05", "--resume", "--out")
    resumed = invoke("run", "rbf", "--config", str(config_file), "--set", "epsilon=0.2", "--out", str(out), "--resume")
    assert_one_line_error(resumed, "cannot resume", "epsilon: 0.1 -> 0.2", f"--config {out / 'config.yaml'}")
    assert snapshot(out) == before


def test_report_refuses_results_of_different_settings(tmp_path):
    out = tmp_path / "out"
    make_rbf_folder(out, RBFConfig(), seeds=(0, 1))
    faster = config_to_dict(RBFConfig(learning_rate=0.05))
    results = json.loads((out / "seed-1" / "results.json").read_text())
    (out / "seed-1" / "results.json").write_text(json.dumps({**results, "config": faster}))
    before = snapshot(out)
    line = assert_one_line_error(invoke("report", str(out)), "results of different settings", "move the seed folders")
    assert "seed-0: learning_rate=0.1" in line and "seed-1: learning_rate=0.05" in line
    assert snapshot(out) == before  # no summary.json mixing the two

    (out / "seed-1").rename(tmp_path / "elsewhere")
    (out / "config.yaml").write_text(yaml.safe_dump(faster))
    assert_one_line_error(invoke("report", str(out)), "config.yaml disagrees with the results", "learning_rate")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"[1, 2]", "not the results of a splitgrow run"), (b'{"experiment": "rb', "corrupt results, not valid JSON")],
)
def test_report_of_damaged_results(tmp_path, content, message):
    out = tmp_path / "out"
    make_rbf_folder(out, RBFConfig())
    (out / "seed-0" / "results.json").write_bytes(content)
    assert_one_line_error(invoke("report", str(out)), message, str(out / "seed-0" / "results.json"))


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, train=32, test=16)
    return root


def images_args(root: Path, tmp_path: Path) -> list[str]:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_IMAGES))
    return ["run", "images", "--dataset", "mnist", "--data-root", str(root), "--config", str(config), "-q"]


def killed_images_run(root: Path, tmp_path: Path) -> Path:
    """The folder of an images run killed in the middle of its first task (what `--resume` continues)."""
    config = load_config(ImagesConfig, tmp_path / "tiny.yaml", None, {"--dataset": {"dataset": "mnist"}})
    config = dataclasses.replace(config, data_root=str(root))
    out = tmp_path / "out"
    (out / "seed-0").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    checkpoint = Checkpoint(out / "seed-0")
    checkpoint.progress["current"] = {"task": "splitting", "phase": 0, "epoch": 1, "done": False}
    checkpoint.save({"task": "splitting", "model": {"weight": torch.randn(64, 64)}})
    return out


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_tensor_bytes(path: Path) -> None:
    """Damage 16 bytes in the middle of the file, inside the 64 x 64 tensor's record: torch.load reads them as
    other numbers without complaint; the record's CRC-32 tells."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


CHECKPOINT_FAULTS = {
    "damaged tensor bytes": ("checkpoint.pt", flip_tensor_bytes, "corrupt checkpoint: the bytes of its record"),
    "truncated checkpoint.pt": ("checkpoint.pt", truncate, "corrupt checkpoint: cut short"),
    "0-byte checkpoint.pt": ("checkpoint.pt", lambda path: path.write_bytes(b""), "corrupt checkpoint: empty"),
    "random bytes": ("checkpoint.pt", lambda path: path.write_bytes(os.urandom(3000)), "corrupt checkpoint"),
    "empty dict": ("checkpoint.pt", lambda path: torch.save({}, path), "foreign checkpoint"),
    "a tensor": ("checkpoint.pt", lambda path: torch.save(torch.zeros(3), path), "foreign checkpoint"),
    "JSON list": ("checkpoint.json", lambda path: path.write_text("[]"), "not the progress of a splitgrow run"),
    "truncated JSON": ("checkpoint.json", truncate, "corrupt checkpoint, not valid JSON"),
    "missing checkpoint.pt": ("checkpoint.pt", Path.unlink, "missing checkpoint of the task in progress"),
}


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_resume_from_a_damaged_checkpoint_refuses(mnist_root, tmp_path, fault):
    """Never torch's multi-line weights_only advice, never a silent fresh start: one line, nothing written."""
    args = images_args(mnist_root, tmp_path)
    out = killed_images_run(mnist_root, tmp_path)
    name, damage, message = CHECKPOINT_FAULTS[fault]
    damage(out / "seed-0" / name)
    before = snapshot(out)
    line = assert_one_line_error(invoke(*args, "--out", str(out), "--resume"), message, "seed-0", "delete")
    assert "weights_only" not in line
    assert snapshot(out) == before


def test_the_checkpoint_of_the_task_in_progress_is_the_one_loaded(tmp_path):
    checkpoint = Checkpoint(tmp_path)
    checkpoint.progress["current"] = {"task": "splitting", "epoch": 1}
    checkpoint.save({"task": "splitting", "weight": torch.arange(4.0)})
    again = Checkpoint(tmp_path)
    assert again.load() and torch.equal(again.tensors()["weight"], torch.arange(4.0))
    again.progress["current"] = {"task": "full"}  # checkpoint.json and checkpoint.pt of different tasks
    with pytest.raises(
        CheckpointError, match="holds task 'splitting', not the tensors of the task in progress, 'full'"
    ):
        again.tensors()
    again.progress["current"] = None  # no task in progress: the tensors are not needed, whatever they hold
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert again.tensors() is None


# ------------------------------------------------------------------------------------------ data


def write_cifar_batch(folder: Path, name: str, batch: dict) -> None:
    (folder / name).write_bytes(pickle.dumps(batch))


def empty_mnist(root: Path) -> None:
    write_mnist(root)
    write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(0))


def large_mnist(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("t10k", 8)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 40, 40)))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))


def bright_cifar(root: Path) -> None:
    folder = write_cifar(root)
    batch = cifar_batch(6, 2)
    batch[b"data"] = batch[b"data"].astype(np.int64)
    batch[b"data"][0, 0] = 300
    write_cifar_batch(folder, "data_batch_2", batch)


def nan_label_cifar(root: Path) -> None:
    folder = write_cifar(root)
    batch = cifar_batch(6, 4)
    batch[b"labels"] = [float("nan"), *batch[b"labels"][1:]]
    write_cifar_batch(folder, "data_batch_4", batch)


DATA_FAULTS = {
    "0 images": ("mnist", empty_mnist, "the test files hold 0 images"),
    "pixels above 255": ("cifar10", bright_cifar, "pixels from 0 to 300, outside 0..255"),
    "NaN labels": ("cifar10", nan_label_cifar, "labels that are not whole numbers"),
    "40x40 images, image_size 32": ("mnist", large_mnist, "exceed image_size 32 (image_size): set image_size to 40"),
}


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_bad_data_is_one_line_and_creates_nothing(tmp_path, fault):
    dataset, make, message = DATA_FAULTS[fault]
    make(tmp_path / "data")
    out = tmp_path / "out"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_IMAGES))
    result = invoke(
        "run", "images", "--dataset", dataset, "--data-root", str(tmp_path / "data"), "--config", str(config),
        "--out", str(out), "-q",
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ options and settings


@pytest.mark.parametrize(
    ("args", "label", "message"),
    [
        (["--dataset", "imagenet"], "(--dataset)", "dataset must be one of fashion-mnist, mnist, cifar10"),
        (["--device", "tpu"], "(--device)", "device must be cpu or cuda, got 'tpu'"),
        (["--model", "resnet"], "(--model)", "model must be one of vgg19, mobilenetv1"),
        (["--set", "batch_size=0"], "(--set)", "batch_size must be >= 1"),
    ],
)
def test_errors_name_the_option_the_user_typed(tmp_path, args, label, message):
    out = tmp_path / "out"
    line = assert_one_line_error(invoke("run", "images", *args, "--out", str(out)), label, message)
    assert label == "(--set)" or "--set" not in line
    assert not out.exists()


def test_a_setting_from_a_file_is_blamed_on_the_file(tmp_path):
    config = tiny_config(tmp_path, "x_min: 3\n")  # valid alone (x_max is 5); --set x_max=2 makes the pair invalid
    line = assert_one_line_error(invoke("run", "rbf", "--config", str(config), "--set", "x_max=2"), "(--set)")
    assert "x_min (3.0) must be below x_max (2.0)" in line
    fixed = load_config(RBFConfig, tiny_config(tmp_path, "x_min: 6\n"), {"x_max": 7})  # invalid file, fixed by --set
    assert (fixed.x_min, fixed.x_max) == (6.0, 7.0)


def test_divergence_from_the_initialisation_does_not_blame_the_learning_rate(tmp_path):
    config = tiny_config(tmp_path, MICRO_RBF)
    result = invoke(
        "run", "rbf", "--config", str(config), "--set", "init_weight_std=1e200", "--out", str(tmp_path / "o"),
        "--quiet",
    )  # fmt: skip
    line = assert_one_line_error(result, "before any step", "init_weight_std")
    assert "learning rate" not in line


# ------------------------------------------------------------------------------------------ help


def normalised(text: str) -> str:
    """Without whitespace: help text is wrapped to the terminal, at spaces and hyphens."""
    return "".join(text.split())


@pytest.mark.parametrize("name", list(experiments()))
def test_run_help_lists_every_setting_with_its_default(name):
    result = invoke("run", name, "--help")
    assert result.exit_code == 0, result.output
    text = normalised(result.stdout)
    assert normalised(f"Settings of {name} (--config FILE.yaml, --set KEY=VALUE)") in text
    for setting in describe_settings(experiments()[name].config_class):
        assert normalised(f"{setting.name}: {setting.type} {setting.meaning} [default: {setting.default}]") in text


def test_a_new_experiment_gets_its_help_for_free(monkeypatch):
    @dataclasses.dataclass
    class ToyConfig:
        """Settings of a toy experiment."""

        #: steps of the toy
        #: (two lines of comment)
        steps: int = 3
        rate: float = 0.5
        """the toy's rate"""
        names: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
        root: str | None = None

    toy = Experiment("toy", "a toy", ToyConfig, run_seed=None, plot=None, summarize=None)
    monkeypatch.setattr("splitgrow.experiments.experiments", lambda: {"toy": toy})
    result = invoke("run", "--out", "somewhere", "toy", "--help")
    assert result.exit_code == 0, result.output
    text = normalised(result.stdout)
    for expected in (
        "Settings of a toy experiment.",
        "steps: int steps of the toy (two lines of comment) [default: 3]",
        "rate: float the toy's rate [default: 0.5]",
        "names: list[str] [default: [a, b]]",
        "root: str | None [default: null]",
    ):
        assert normalised(expected) in text


# ------------------------------------------------------------------------------------------ bugs


def test_a_bug_keeps_its_traceback_and_says_it_is_a_bug(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a mistake in splitgrow")

    monkeypatch.setattr("splitgrow.experiments.run_experiment", broken)
    result = invoke("run", "rbf", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError: a mistake in splitgrow" in result.stderr
    assert "this is a bug in splitgrow" in result.stderr.splitlines()[-1]


def test_memory_is_a_user_error(tmp_path, monkeypatch):
    def huge(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("splitgrow.experiments.run_experiment", huge)
    assert_one_line_error(invoke("run", "rbf", "--out", str(tmp_path / "out")), "out of memory")


def test_the_torch_load_of_random_bytes_is_caught_whatever_torch_raises(tmp_path):
    checkpoint = Checkpoint(tmp_path)
    checkpoint.progress["current"] = {"task": "t"}
    buffer = io.BytesIO()
    torch.save({"task": "t", "weights": torch.ones(1000)}, buffer)
    for cut in (1, 100, len(buffer.getvalue()) - 1):
        (tmp_path / "checkpoint.pt").write_bytes(buffer.getvalue()[:cut])
        with pytest.raises(CheckpointError, match="corrupt checkpoint: cut short"):
            checkpoint.tensors()


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    """A batch scheduler's time limit (SIGTERM) ends a run with the interrupt message and status 130, not silently."""
    out = tmp_path / "out"
    # one process: a worker being spawned at that moment would add its own EOFError to stderr
    command = [sys.executable, "-m", "splitgrow.cli", "run", "rbf", "--out", str(out), "--set", "workers=1", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "config.yaml").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the run has validated its settings and is inside its error handling
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == (
        "splitgrow: interrupted; finished seeds are in their folders, --resume continues"
    )
    assert "Traceback" not in stderr
