"""Faults found by probing the command line and the data loaders with bad input: numbers beyond 64 bits in options,
settings whose arithmetic overflows deep in a run, hand-edited or foreign results under `report` and `--resume`, a
run folder of another experiment, a file as the keyword data folder, Speech Commands and WAV messages in the house
form, a failed Speech Commands download that left folders behind, and CIFAR-10's archive read once for both splits.
Each user error ends in one line, ``splitgrow: error: <what> (<where>): <how to fix>``, exit status 2, no traceback,
and leaves the files as they were."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import tarfile
import wave

import numpy as np
import pytest
import yaml
from test_cli import invoke, tiny_config
from test_data import cifar_batch
from test_faults import MICRO_RBF, assert_one_line_error, make_rbf_folder, snapshot
from test_speech_data import _Response, served_archive, speakers_in, write_tree

from splitgrow.config import MAX_STEP_SIZE, build_config, load_config
from splitgrow.data import DataError, load_dataset, load_keyword_data, load_splits, read_wav, speech, write_wav
from splitgrow.data.common import read_archive_members
from splitgrow.errors import ConfigError
from splitgrow.experiments import experiments
from splitgrow.experiments.kws import KwsConfig
from splitgrow.experiments.prototypes import MAX_ELASTIC_SIGMA, PrototypesConfig
from splitgrow.experiments.rbf import RBFConfig

#: the house form of a message: "<what> (<where>): <how to fix>", the where naming a file or folder given here
HOUSE_FORM = re.compile(r"^(?P<what>.+) \((?P<where>[^()]+)\): (?P<fix>.+)$")

# ------------------------------------------------------------------------------------------ options beyond 64 bits

HUGE = str(10**21)  # click reads it as a Python int; torch and range() overflowed on it


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "rbf", "--seeds", HUGE], [f"--seeds must be below 2^63 (--seeds {HUGE})", "64-bit integer"]),
        (["run", "rbf", "--seed", HUGE], [f"--seed must be below 2^63 (--seed {HUGE})"]),
        (["run", "rbf", "--jobs", HUGE], [f"--jobs must be below 2^63 (--jobs {HUGE})"]),
        (["inspect", "--model", "mlp", "--width", HUGE], [f"--width must be below 2^63 (--width {HUGE})"]),
        (["inspect", "--model", "mlp", "--data", "random", "--samples", HUGE], ["--samples must be below 2^63"]),
        (["inspect", "--model", "mlp", "--data", "random", "--batch-size", HUGE], ["--batch-size must be below"]),
        (["inspect", "--model", "mlp", "--seed", HUGE], [f"--seed must be below 2^63 (--seed {HUGE})"]),
        (["inspect", "--model", "mlp", "--seed", "-1"], ["--seed must be >= 0 (--seed -1): give a number >= 0"]),
        (["inspect", "--model", "mlp", "--data", "random", "--budget", "nan"], ["--budget needs --data and a value"]),
        (["inspect", "--model", "mlp", "--json", ""], ["empty --json (--json ''): give --json a file name"]),
    ],
)
def test_numbers_beyond_reach_and_empty_names_are_one_line_errors(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")] if args[0] == "run" else []
    assert_one_line_error(invoke(*args, *out), *fragments)
    assert snapshot(tmp_path) == {}  # nothing written: no run folder, no "." as the --json file


def test_the_largest_64_bit_seed_is_still_taken(tmp_path):
    out = tmp_path / "out"
    config = tiny_config(tmp_path, MICRO_RBF + "workers: 0\n")
    largest = str(2**63 - 1)
    result = invoke("run", "rbf", "--config", str(config), "--seed", largest, "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((out / f"seed-{largest}" / "results.json").read_text())["seed"] == 2**63 - 1


# ------------------------------------------------------------------------------------------ settings that overflowed


@pytest.mark.parametrize("name", list(experiments()))
def test_a_split_step_whose_square_overflows_is_refused_by_every_experiment(name):
    config_class = experiments()[name].config_class
    with pytest.raises(ConfigError, match=r"epsilon \(the split step size\) must be at most 1e\+150, got 1e\+300"):
        build_config(config_class, {"epsilon": 1e300})
    assert build_config(config_class, {"epsilon": MAX_STEP_SIZE}).epsilon == MAX_STEP_SIZE
    assert (MAX_STEP_SIZE**2) / 2 < float("inf")  # the bound keeps eps^2/2 a float
    with pytest.raises(ConfigError, match=r"epsilon \(the split step size\) must be >= 0, got -0.5"):
        build_config(config_class, {"epsilon": -0.5})


@pytest.mark.parametrize("config_class", [RBFConfig, PrototypesConfig])
def test_a_probe_step_whose_square_overflows_is_refused(config_class):
    with pytest.raises(ConfigError, match=r"probe_epsilon \(the split step size\) must be at most 1e\+150"):
        build_config(config_class, {"probe_epsilon": 1e200})


def test_an_overflowing_split_step_at_the_command_line(tmp_path):
    """mmd with epsilon 1e300 used to end in an OverflowError traceback when its first split was predicted."""
    out = tmp_path / "out"
    line = assert_one_line_error(invoke("run", "mmd", "--set", "epsilon=1e300", "--out", str(out)), "(--set)")
    assert "epsilon (the split step size) must be at most 1e+150" in line
    assert not out.exists()


def test_elastic_smoothing_wider_than_any_kernel_is_refused():
    """elastic_sigma 1e30 made a kernel of 4e30 taps: an OverflowError in torch.arange."""
    with pytest.raises(ConfigError, match=r"elastic_sigma must be at most 1000 pixels \(the digits are 28 wide\)"):
        build_config(PrototypesConfig, {"elastic_sigma": 1e30})
    assert build_config(PrototypesConfig, {"elastic_sigma": MAX_ELASTIC_SIGMA}).elastic_sigma == 1000.0


def test_a_negative_data_seed_is_a_config_error(tmp_path):
    """numpy's generators take no negative seed: kws with data_seed -1 used to end in a ValueError traceback."""
    with pytest.raises(ConfigError, match="data_seed must be >= 0, got -1"):
        build_config(KwsConfig, {"data_seed": -1})
    out = tmp_path / "out"
    assert_one_line_error(invoke("run", "kws", "--set", "data_seed=-1", "--out", str(out)), "(--set)", "data_seed")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ results edited by hand


def rbf_folder(tmp_path):
    """A finished-looking rbf run folder of the micro settings, and those settings' config file."""
    config_file = tiny_config(tmp_path, MICRO_RBF)
    out = tmp_path / "out"
    make_rbf_folder(out, load_config(RBFConfig, config_file))
    return out, config_file


EDITS = {
    "config null": ({"config": None}, "not the results of a splitgrow run (its config None)"),
    "wall time a string": ({"wall_time_s": "one"}, "not the results of a splitgrow run (its wall_time_s 'one')"),
    "seed a string": ({"seed": "zero"}, "not the results of a splitgrow run (its seed 'zero')"),
    "metadata a list": ({"metadata": []}, "its metadata []"),
    "seed a boolean": ({"seed": False}, "its seed False"),
    "another seed": ({"seed": 7}, "the results of seed 7 in the folder of seed 0 (moved, or edited)"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_report_and_resume_of_hand_edited_results_are_one_line(tmp_path, edit):
    """Each used to be a TypeError traceback (sum of the wall times, the settings compared) or a silently wrong
    summary (a seed that is not its folder's)."""
    out, config_file = rbf_folder(tmp_path)
    change, message = EDITS[edit]
    path = out / "seed-0" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    before = snapshot(out)
    assert_one_line_error(invoke("report", str(out)), message, f"({path})")
    resumed = invoke("run", "rbf", "--config", str(config_file), "--out", str(out), "--resume", "-q")
    assert_one_line_error(resumed, message, f"({path})")
    assert snapshot(out) == before


def test_report_lists_only_the_missing_keys(tmp_path):
    out, _ = rbf_folder(tmp_path)
    path = out / "seed-0" / "results.json"
    results = json.loads(path.read_text())
    del results["metadata"], results["wall_time_s"]
    path.write_text(json.dumps(results))
    assert_one_line_error(invoke("report", str(out)), "(no metadata, wall_time_s)", f"({path})")


def test_resume_refuses_finished_results_its_summary_cannot_use_before_running_anything(tmp_path):
    """Results of another experiment, or lacking what the summary reads: refused at once, not after the other
    seeds ran (a KeyError traceback at the end)."""
    out, config_file = rbf_folder(tmp_path)  # its results hold no curves: an rbf summary cannot use them
    args = ["run", "rbf", "--config", str(config_file), "--out", str(out), "--seeds", "2", "--resume", "-q"]
    before = snapshot(out)
    line = assert_one_line_error(invoke(*args), "cannot resume: results that are not those of a rbf run (KeyError")
    assert f"delete {out / 'seed-0'} to run that seed again" in line
    assert snapshot(out) == before  # seed 1 did not run

    path = out / "seed-0" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "experiment": "mmd"}))
    before = snapshot(out)
    assert_one_line_error(invoke(*args), "cannot resume: the results of the mmd experiment, not rbf", f"({path})")
    assert snapshot(out) == before


def test_a_folder_of_another_experiment_is_named_as_such(tmp_path):
    """Not a list of every setting of the other experiment as "changed to None"."""
    out, _ = rbf_folder(tmp_path)
    before = snapshot(out)
    for resume in ([], ["--resume"]):
        line = assert_one_line_error(
            invoke("run", "mmd", "--out", str(out), *resume), "the folder holds a run of another experiment"
        )
        assert "its config.yaml sets target_neurons, target_variance, x_min, x_max, start_neurons and" in line
        assert "which mmd has no setting for" in line and "-> None" not in line
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------ keyword data


def test_a_file_as_the_keyword_data_folder_is_named_even_with_download(tmp_path):
    """It used to say the folder "does not exist"; with --download, a NotADirectoryError."""
    blocker = tmp_path / "speech.tar.gz"
    blocker.write_bytes(b"not a folder")
    for download in (False, True):
        with pytest.raises(DataError, match=r"^a file, not the folder of the dataset \(.*speech.tar.gz\): give"):
            load_keyword_data(blocker, download=download)
    out = tmp_path / "out"
    result = invoke("run", "kws", "--data-root", str(blocker), "--download", "--out", str(out))
    assert_one_line_error(result, "a file, not the folder of the dataset", f"({blocker})")
    assert not out.exists() and blocker.read_bytes() == b"not a folder"


def mono_or_stereo_wav(channels: int, frames: int) -> bytes:
    """A 16 kHz, 16-bit WAV file of ``channels`` channels and ``frames`` frames of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(np.zeros(channels * frames, "<i2").tobytes())
    return buffer.getvalue()


SPEECH_FAULTS = {
    "truncated clip": ("yes/cut.wav", lambda p: p.write_bytes(p.read_bytes()[:2000]), "truncated WAV file"),
    "not a WAV file": ("no/text.wav", lambda p: p.write_bytes(b"hello"), "not a readable WAV file"),
    "no samples": ("up/empty.wav", lambda p: p.write_bytes(mono_or_stereo_wav(1, 0)), "a WAV file of no samples"),
    "stereo": (
        "go/two.wav",
        lambda p: p.write_bytes(mono_or_stereo_wav(2, 4)),
        "a WAV file of 2 channels, expected mono",
    ),
    "short noise": (
        "_background_noise_/noise0.wav",
        lambda p: write_wav(p, np.zeros(16000, np.int16), 16000),  # exactly 1 s
        "16000 samples: a background noise recording must be longer than 1 s",
    ),
    "no noise": (
        "_background_noise_",
        lambda p: [f.unlink() for f in p.iterdir()],
        "no .wav recordings: silence clips need background noise",
    ),
    "binary list": ("validation_list.txt", lambda p: p.write_bytes(b"\xff\xfe"), "not a text file of clip names"),
}


@pytest.mark.parametrize("fault", list(SPEECH_FAULTS))
def test_speech_and_wav_messages_have_the_house_form(tmp_path, fault):
    """What is wrong, the file or folder in parentheses, then the fix, as every other loader says it."""
    write_tree(tmp_path, speakers=speakers_in("training", 1) + speakers_in("validation", 1), unknown_words=())
    name, damage, problem = SPEECH_FAULTS[fault]
    target = tmp_path / name
    if name.endswith(".wav") and not target.exists():
        target.write_bytes(next((tmp_path / "yes").iterdir()).read_bytes())
    (tmp_path / "testing_list.txt").write_text("")
    damage(target)
    with pytest.raises(DataError) as error:
        load_keyword_data(tmp_path, split="lists" if name.endswith(".txt") else "hash")
    parts = HOUSE_FORM.match(str(error.value))
    assert parts is not None, str(error.value)
    assert problem in parts["what"] and parts["where"] == str(target), str(error.value)
    assert "\n" not in str(error.value) and parts["fix"]


def test_a_missing_wav_file_names_it_in_the_house_form(tmp_path):
    with pytest.raises(DataError, match=rf"^no such WAV file \({tmp_path / 'gone.wav'}\): check the path"):
        read_wav(tmp_path / "gone.wav", 16000)


def test_a_damaged_clip_at_the_command_line(tmp_path):
    write_tree(tmp_path / "data", speakers=speakers_in("training", 1), unknown_words=())
    clip = tmp_path / "data" / "left" / "cut.wav"
    write_wav(clip, np.ones(12000, np.int16), 16000)
    clip.write_bytes(clip.read_bytes()[:3000])
    out = tmp_path / "out"
    result = invoke("run", "kws", "--data-root", str(tmp_path / "data"), "--out", str(out), "-q")
    assert_one_line_error(result, "truncated WAV file: its header announces 12000 samples, it holds 1478", f"({clip})")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ the download


@pytest.fixture
def small_archive(tmp_path, monkeypatch):
    """A Speech Commands archive of one speaker, as the official address would serve it (checksum patched)."""
    return served_archive(tmp_path, monkeypatch)[1]


def test_a_failed_download_leaves_no_folder_behind(tmp_path, small_archive):
    """The cache's parent folders used to be created before the download, and stayed when it failed."""
    target = tmp_path / "new" / "cache" / "speech"

    def offline(url, timeout):
        raise OSError("no route to host")

    class Dropped(_Response):
        def read(self, size=-1):
            raise OSError("connection reset by peer")

    for opener, message in (
        (offline, "could not download .*: no route to host"),
        (lambda url, timeout: Dropped(small_archive), "could not download .*: connection reset by peer"),
        (lambda url, timeout: _Response(small_archive[:-100]), "has SHA-256 .*: not unpacked"),
    ):
        with pytest.raises(DataError, match=message) as error:
            speech.fetch_speech_commands(target, opener=opener)
        assert HOUSE_FORM.match(str(error.value)) and f"({target})" in str(error.value)
        assert sorted(os.listdir(tmp_path)) == ["source"]
    (tmp_path / "kept").mkdir()  # a folder that was there before is the user's: kept
    with pytest.raises(DataError):
        speech.fetch_speech_commands(tmp_path / "kept" / "speech", opener=offline)
    assert sorted(os.listdir(tmp_path)) == ["kept", "source"] and not os.listdir(tmp_path / "kept")
    speech.fetch_speech_commands(target, opener=lambda url, timeout: _Response(small_archive))
    assert sorted(os.listdir(target.parent)) == ["speech"] and (target / "yes").is_dir()


def test_a_full_disk_during_the_download_is_the_file_systems_error(tmp_path, small_archive, monkeypatch):
    """Not "could not download ...: check the connection": the disk is at fault, and the error names the target."""
    real = speech.tempfile.NamedTemporaryFile

    def full_disk(*args, **kwargs):
        handle = real(*args, **kwargs)

        def write(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        handle.write = write
        return handle

    monkeypatch.setattr(speech.tempfile, "NamedTemporaryFile", full_disk)
    target = tmp_path / "new" / "speech"
    with pytest.raises(OSError) as error:
        speech.fetch_speech_commands(target, opener=lambda url, timeout: _Response(small_archive))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert not isinstance(error.value, DataError) and sorted(os.listdir(tmp_path)) == ["source"]


# ------------------------------------------------------------------------------------------ the CIFAR-10 archive


def write_cifar_archive(root, *, order=None):
    """cifar-10-python.tar.gz of six tiny batches (members in ``order``, by default the official names' order)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as archive:
        for name in order or names:
            payload = pickle.dumps(cifar_batch(3, names.index(name)))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def test_the_packed_cifar_archive_is_decompressed_once_for_both_splits(tmp_path, monkeypatch):
    order = ["test_batch", "data_batch_5", "data_batch_2", "data_batch_4", "data_batch_1", "data_batch_3"]
    write_cifar_archive(tmp_path, order=order)  # members out of order, as in the official archive
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(
        tarfile, "open", lambda *args, **kwargs: opened.append(kwargs.get("mode")) or real_open(*args, **kwargs)
    )
    train, test = load_splits("cifar10", tmp_path)
    assert opened == ["r|gz"]  # one pass over the archive, streamed: no seeking back to a member
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    for split, loaded in (("train", train), ("test", test)):
        alone = load_dataset("cifar10", split, tmp_path)
        assert alone.images.equal(loaded.images) and alone.labels.equal(loaded.labels)
    expected = np.concatenate([cifar_batch(3, index)[b"data"] for index in range(5)]).reshape(-1, 3, 32, 32)
    assert train.images.numpy().tolist() == expected.tolist()  # batches 1..5 in their order, not the archive's


def test_archive_members_are_read_in_the_order_asked_and_a_missing_one_is_named(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in (("b", b"first b"), ("a", b"an a"), ("b", b"second b")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        folder = tarfile.TarInfo("c")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
    raw = buffer.getvalue()
    path = tmp_path / "x.tgz"
    found = read_archive_members(raw, path, ["a", "b"], kind=".tgz", missing="no {member}", fix="repack it")
    assert found == [b"an a", b"second b"]  # a name given twice: the last, as tar itself extracts it
    with pytest.raises(DataError, match=rf"^no c \({path}\): repack it$"):  # a folder is not the file asked for
        read_archive_members(raw, path, ["a", "c"], kind=".tgz", missing="no {member}", fix="repack it")
    with pytest.raises(DataError, match=r"not a readable .tgz archive .*: truncated or corrupt"):
        read_archive_members(raw[: len(raw) // 2], path, ["a"], kind=".tgz", missing="no {member}", fix="repack it")


def test_an_images_run_reads_the_packed_archive(tmp_path):
    write_cifar_archive(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    settings = {"start_width": 2, "full_width": 4, "batch_size": 8, "epochs": 1, "finetune_epochs": 1, "stages": 1}
    config.write_text(yaml.safe_dump({**settings, "split_batches": 1, "retrain": False}))
    out = tmp_path / "out"
    args = ["run", "images", "--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--config", str(config)]
    result = invoke(*args, "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "seed-0" / "results.json").read_text())["config"]["dataset"] == "cifar10"
