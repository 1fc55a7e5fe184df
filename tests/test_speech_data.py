"""Speech Commands in Hello Edge's conventions, on tiny WAV trees written here: split, loading, errors, mixing,
features and the download."""

from __future__ import annotations

import hashlib
import io
import math
import re
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from splitgrow.data import speech
from splitgrow.data.common import DataError
from splitgrow.data.speech import (
    CLASSES,
    KEYWORDS,
    Augmentation,
    KeywordSet,
    fetch_speech_commands,
    load_keyword_data,
    mix_audio,
    precompute_features,
    which_set,
)
from splitgrow.data.wav import read_wav, write_wav
from splitgrow.features import mfcc


def tf_which_set(filename, validation_percentage, testing_percentage):
    """TensorFlow's speech_commands input_data.which_set, transcribed."""
    base_name = filename.rsplit("/", 1)[-1]
    hash_name = re.sub(r"_nohash_.*$", "", base_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode()).hexdigest()
    percentage_hash = (int(hash_name_hashed, 16) % ((2**27 - 1) + 1)) * (100.0 / (2**27 - 1))
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < (testing_percentage + validation_percentage):
        return "testing"
    return "training"


def speakers_in(partition, count, start=0):
    """Speaker names that TensorFlow's hash puts in ``partition``."""
    names, candidate = [], start
    while len(names) < count:
        name = f"{candidate:08x}"
        if tf_which_set(f"{name}_nohash_0.wav", 10, 10) == partition:
            names.append(name)
        candidate += 1
    return names


def tone(seed, length=12000):
    return (np.random.default_rng(seed).uniform(-0.5, 0.5, length) * 32767).astype(np.int16)


def write_tree(root, *, speakers=None, unknown_words=("bed", "cat"), background_seconds=(1.5, 2.0)):
    """Every keyword and two unknown words from 3 training, 1 validation and 1 testing speaker (two takes each of
    a keyword, one of an unknown word), and two noise recordings. Returns {relative path: samples}."""
    speakers = speakers or speakers_in("training", 3) + speakers_in("validation", 1) + speakers_in("testing", 1)
    written = {}
    seed = 0
    for word in (*KEYWORDS, *unknown_words):
        for speaker in speakers:
            for take in range(2 if word in KEYWORDS else 1):
                seed += 1
                path = f"{word}/{speaker}_nohash_{take}.wav"
                samples = tone(seed, length=17000 if seed == 1 else 12000)  # one clip longer than 1 s
                write_wav(root / path, samples, 16000)
                written[path] = samples
    for index, seconds in enumerate(background_seconds):
        write_wav(root / "_background_noise_" / f"noise{index}.wav", tone(100 + index, int(seconds * 16000)), 16000)
    (root / "_background_noise_" / "README.md").write_text("not a recording")
    return written


def test_which_set_is_tensorflows_and_keeps_speakers_together():
    rng = np.random.default_rng(0)
    names = [f"{rng.integers(0, 2**32):08x}_nohash_{rng.integers(0, 5)}.wav" for _ in range(3000)]
    partitions = [which_set(name) for name in names]
    assert partitions == [tf_which_set(name, 10, 10) for name in names]
    assert [which_set(n, 5, 30) for n in names[:300]] == [tf_which_set(n, 5, 30) for n in names[:300]]
    shares = {p: partitions.count(p) / len(names) for p in ("training", "validation", "testing")}
    assert shares["validation"] == pytest.approx(0.1, abs=0.02) and shares["testing"] == pytest.approx(0.1, abs=0.02)
    speaker = names[0].split("_nohash_")[0]
    assert {which_set(f"yes/{speaker}_nohash_{k}.wav") for k in range(5)} == {partitions[0]}


def test_loads_partitions_with_silence_and_unknown(tmp_path):
    written = write_tree(tmp_path)
    data = load_keyword_data(tmp_path, seed=3)
    assert data.name == "speech-commands" and not data.synthetic
    for partition, speakers in (("training", 3), ("validation", 1), ("testing", 1)):
        part = data.partition(partition)
        keywords = 10 * 2 * speakers
        counts = part.class_counts()
        assert counts["_silence_"] == math.ceil(keywords / 10) and counts["_unknown_"] == math.ceil(keywords / 10)
        assert all(counts[word] == 2 * speakers for word in KEYWORDS)
        assert part.audio.shape == (len(part), 16000) and part.audio.dtype == torch.int16
        for row, (file, label) in enumerate(zip(part.files, part.labels.tolist())):
            if not file:
                assert CLASSES[label] == "_silence_" and not part.audio[row].any()
                continue
            assert which_set(file) == partition
            word = file.split("/")[0]
            assert CLASSES[label] == (word if word in KEYWORDS else "_unknown_")
            expected = np.zeros(16000, dtype=np.int16)
            samples = written[file][:16000]
            expected[: len(samples)] = samples
            assert np.array_equal(part.audio[row].numpy(), expected)  # zero-padded or cut to 1 s
    assert [len(b) for b in data.training.background] == [24000, 32000]
    again = load_keyword_data(tmp_path, seed=3)
    assert again.training.files == data.training.files
    other = load_keyword_data(tmp_path, seed=4)  # the 6 training unknowns are all taken; only the order differs
    assert other.training.files != data.training.files
    assert sorted(other.training.files) == sorted(data.training.files)


def test_list_files_split(tmp_path):
    write_tree(tmp_path)
    speaker = speakers_in("training", 1)[0]
    moved = [f"yes/{speaker}_nohash_0.wav", f"bed/{speaker}_nohash_0.wav", f"no/{speaker}_nohash_1.wav"]
    (tmp_path / "validation_list.txt").write_text(moved[0] + "\n" + moved[1] + "\n")
    with pytest.raises(DataError, match="split='lists' needs .*testing_list.txt"):
        load_keyword_data(tmp_path, split="lists")
    (tmp_path / "testing_list.txt").write_text(moved[2] + "\n")
    data = load_keyword_data(tmp_path, split="lists")
    assert sorted(f for f in data.validation.files if f) == sorted(moved[:2])
    assert data.validation.class_counts() == {**dict.fromkeys(CLASSES, 0), "_silence_": 1, "_unknown_": 1, "yes": 1}
    assert moved[2] in data.testing.files and moved[0] not in data.training.files
    hashed = load_keyword_data(tmp_path)  # the default ignores the lists, as TensorFlow does
    assert moved[0] in hashed.training.files


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "up" / "bad.wav").write_bytes(b"RIFF....not a wave"), r"not a readable WAV .*bad.wav"),
        (lambda root: write_wav(root / "go" / "slow.wav", tone(1), 8000), r"8000 Hz, expected 16000 Hz \(.*slow.wav"),
        (lambda root: _truncate(root / "go" / "cut.wav"), r"truncated WAV file: .* 12000 .* holds 5000 \(.*cut.wav"),
        (lambda root: _stereo(root / "on" / "two.wav"), r"2 channels, expected mono \(.*two.wav\): mix"),
        (lambda root: _remove(root / "stop"), r"no folder of clips for stop \(missing, or empty\): is it"),
        (lambda root: _remove(root / "_background_noise_"), r"no _background_noise_ folder: .* \(.*_noise_\): pass"),
    ],
)
def test_damaged_trees_give_one_line_errors(tmp_path, damage, message):
    speaker = speakers_in("validation", 1)
    write_tree(tmp_path, speakers=speaker, unknown_words=())
    damage(tmp_path)
    with pytest.raises(DataError, match=message) as error:
        load_keyword_data(tmp_path)
    assert "\n" not in str(error.value)


def test_missing_folder_and_bad_split(tmp_path):
    with pytest.raises(DataError, match=r"keyword data folder does not exist \(.*nowhere\): pass --data-root"):
        load_keyword_data(tmp_path / "nowhere")
    with pytest.raises(DataError, match="split must be one of hash, lists"):
        load_keyword_data(tmp_path, split="random")
    with pytest.raises(DataError, match="no <word>/.*wav clips"):
        load_keyword_data(tmp_path)


def _truncate(path):
    write_wav(path, tone(2), 16000)
    path.write_bytes(path.read_bytes()[: 44 + 10000])


def _stereo(path):
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(np.zeros(2000, dtype=np.int16).tobytes())


def _remove(path):
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_wav_round_trip(tmp_path):
    samples = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    write_wav(tmp_path / "a.wav", samples, 16000)
    assert np.array_equal(read_wav(tmp_path / "a.wav", 16000), samples)


# ------------------------------------------------------------------------------------------ mixing and features


def constant_set(labels, audio):
    """A partition whose background is all ones, so a mixed clip shows its volume directly."""
    return KeywordSet("training", audio, torch.tensor(labels), ("x",) * len(labels), (torch.ones(20000),))


def test_training_mix_follows_hello_edge():
    count = 1500
    keyword, silence = CLASSES.index("yes"), CLASSES.index("_silence_")
    labels = [silence] * 500 + [keyword] * 1000
    audio = torch.zeros(count, 16000, dtype=torch.int16)
    audio[:, 8000] = 16384  # an impulse of 0.5 in the middle of every clip: silence mutes it
    generator = torch.Generator().manual_seed(0)
    mixed = mix_audio(constant_set(labels, audio), torch.arange(count), Augmentation(), generator)
    volume = mixed[:, 0]  # the first sample: background only (shifts stay within 1600 samples)
    words = volume[500:]
    assert float((words > 0).float().mean()) == pytest.approx(0.8, abs=0.04) and float(words.max()) <= 0.1
    assert float(words[words > 0].mean()) == pytest.approx(0.05, abs=0.005)
    assert float(volume[:500].mean()) == pytest.approx(0.5, abs=0.05) and float(volume[:500].max()) > 0.95
    assert torch.equal(mixed[:500], volume[:500, None].expand(500, 16000))  # silence: background only
    shifts = (mixed[500:] - volume[500:, None]).argmax(1) - 8000
    assert int(shifts.min()) >= -1600 and int(shifts.max()) <= 1599
    assert int(shifts.min()) < -1500 and int(shifts.max()) > 1500 and abs(float(shifts.float().mean())) < 120


def test_vectorised_mix_matches_a_clip_by_clip_reference():
    rng = np.random.default_rng(5)
    background = tuple(torch.from_numpy(rng.uniform(-1, 1, n)).float() for n in (17000, 30000))
    audio = torch.from_numpy(rng.integers(-32768, 32767, (40, 16000))).to(torch.int16)
    part = KeywordSet("training", audio, torch.tensor([0] * 5 + [2] * 35), ("x",) * 40, background)
    draws = speech._draw(part, Augmentation(background_volume=0.7), torch.Generator().manual_seed(1))
    indices = torch.arange(3, 40, 2)
    mixed = speech._mix(part, indices, draws)
    for row, index in enumerate(indices.tolist()):
        shift = int(draws.shift[index])
        clip = torch.zeros(16000)
        if index >= 5:  # silence has no foreground
            source = audio[index].float() / 32768
            clip[max(shift, 0) : 16000 + min(shift, 0)] = source[max(-shift, 0) : 16000 - max(shift, 0)]
        recording = background[int(draws.recording[index])]
        start = int(draws.offset[index])
        assert 0 <= start < len(recording) - 16000
        expected = (clip + draws.volume[index] * recording[start : start + 16000]).clamp(-1, 1)
        assert torch.equal(mixed[row], expected)


def test_precompute_features(tmp_path):
    write_tree(tmp_path, speakers=speakers_in("training", 1) + speakers_in("validation", 1), unknown_words=("bed",))
    data = load_keyword_data(tmp_path, seed=0)
    features, labels = precompute_features(data.training, copies=2, seed=7)
    n = len(data.training)
    assert features.shape == (2 * n, 1, 49, 10) and features.dtype == torch.float32
    assert torch.equal(labels, data.training.labels.repeat(2))
    assert not torch.equal(features[:n], features[n:])  # fresh shifts and noise for every copy
    assert torch.equal(precompute_features(data.training, copies=2, seed=7)[0], features)  # reproducible
    smaller_batches, _ = precompute_features(data.training, copies=2, seed=7, batch_size=5)
    torch.testing.assert_close(smaller_batches, features, rtol=1e-6, atol=1e-5)  # the same draws
    evaluation, _ = precompute_features(data.validation, seed=0)
    words = [i for i, f in enumerate(data.validation.files) if f]
    expected = mfcc(data.validation.audio[words].float() / 32768)
    torch.testing.assert_close(evaluation[words, 0], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="copies must be >= 1"):
        precompute_features(data.validation, copies=0)


# ------------------------------------------------------------------------------------------ download


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def archive_of(tree, extra=None):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(tree.rglob("*")):
            archive.add(path, arcname=f"./{path.relative_to(tree)}", recursive=False)
        if extra:
            info = tarfile.TarInfo(extra)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


def served_archive(tmp_path: Path, monkeypatch) -> tuple[str, bytes]:
    """A Speech Commands archive of one speaker, as the official address would serve it (its checksum patched in):
    the address and the bytes."""
    source = tmp_path / "source"
    write_tree(source, speakers=speakers_in("training", 1), unknown_words=())
    for name in ("validation_list.txt", "testing_list.txt"):
        (source / name).write_text("")
    payload = archive_of(source)
    url = "https://example.invalid/speech_commands_v0.01.tar.gz"
    monkeypatch.setattr(speech, "_ARCHIVE", (url, hashlib.sha256(payload).hexdigest()))
    return url, payload


def test_download_is_verified_and_atomic(tmp_path, monkeypatch):
    url, payload = served_archive(tmp_path, monkeypatch)
    target = tmp_path / "cache" / "speech"
    fetch_speech_commands(target, opener=lambda url, timeout: _Response(payload))
    data = load_keyword_data(target)
    assert len(data.training) == 20 + 2  # keywords and silence: no other words in this tree
    fetch_speech_commands(target, opener=None)  # already there: nothing is downloaded
    assert sorted(p.name for p in target.parent.iterdir()) == ["speech"]  # no temporary file or folder left

    monkeypatch.setattr(speech, "_ARCHIVE", (url, "0" * 64))
    with pytest.raises(DataError, match="has SHA-256 .* expected 0{64}: not unpacked"):
        fetch_speech_commands(tmp_path / "other", opener=lambda url, timeout: _Response(payload))
    unsafe = archive_of(tmp_path / "source", extra="../escape.txt")
    monkeypatch.setattr(speech, "_ARCHIVE", (url, hashlib.sha256(unsafe).hexdigest()))
    with pytest.raises(DataError, match="unsafe member '../escape.txt'"):
        fetch_speech_commands(tmp_path / "other", opener=lambda url, timeout: _Response(unsafe))
    assert not (tmp_path / "escape.txt").exists()

    def offline(url, timeout):
        raise OSError("no route to host")

    with pytest.raises(DataError, match="could not download .*: no route to host"):
        fetch_speech_commands(tmp_path / "other", opener=offline)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "source"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="needs a new or empty folder"):
        fetch_speech_commands(tmp_path / "busy", opener=offline)
