"""Dataset loaders on tiny fixtures written in the real formats, and their errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle

import numpy as np
import pytest
import torch

from splitgrow.data import Batches, DataError, augment, fetch, load_dataset, read_idx, write_idx


def write_mnist(root, train=40, test=20, *, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    for split, count in (("train", train), ("t10k", test)):
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 28, 28)), compress=compress)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, count), compress=compress)


def cifar_batch(count, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, count))}


def write_cifar(root, per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index in range(1, 6):
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(cifar_batch(per_batch, index)))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(per_batch, 9)))
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    write_mnist(tmp_path, compress=compress)
    train = load_dataset("mnist", "train", tmp_path)
    test = load_dataset("fashion-mnist", "test", tmp_path)
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (20,) and test.labels.dtype == torch.int64
    expected = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else "")))
    assert torch.equal(train.images[:, 0], torch.from_numpy(expected.copy()))


def test_cifar_batches(tmp_path):
    write_cifar(tmp_path)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")
    assert train.images.shape == (30, 3, 32, 32) and len(test) == 6
    first = cifar_batch(6, 1)
    assert torch.equal(train.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert train.labels[:6].tolist() == [int(v) for v in first[b"labels"]]


def test_truncated_and_corrupt_idx_files_name_the_path(tmp_path):
    write_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"truncated or corrupt \\({path}\\)"):
        load_dataset("mnist", "train", tmp_path)
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(16))
    with pytest.raises(DataError, match="bad magic number"):
        load_dataset("mnist", "train", tmp_path)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(gz, np.zeros((20, 28, 28)))
    gz.write_bytes(gz.read_bytes()[:40])
    (tmp_path / "t10k-images-idx3-ubyte").unlink(missing_ok=True)
    with pytest.raises(DataError, match=f"{gz}"):
        load_dataset("mnist", "test", tmp_path)


def test_corrupt_cifar_batches(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:200])
    with pytest.raises(DataError, match="not a CIFAR-10 python batch .*data_batch_3"):
        load_dataset("cifar10", "train", tmp_path)
    # a pickle that would run code is refused, not executed
    (folder / "data_batch_3").write_bytes(pickle.dumps(os.system))
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", "train", tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"no data_batch_3 \(.*\): pass --data-root"):
        load_dataset("cifar10", "train", tmp_path)


def test_missing_root_and_files_say_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"the data folder {missing} does not exist \\(mnist\\): .*--download"):
        load_dataset("mnist", "train", missing)
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte\[.gz\] \(.*\): .*dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", tmp_path)
    with pytest.raises(DataError, match=r"unknown dataset \(svhn\)"):
        load_dataset("svhn", "train", tmp_path)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_download_verifies_checksums_and_writes_atomically(tmp_path, monkeypatch):
    from splitgrow.data import images as data

    payload = gzip.compress(b"fixture")
    good = hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(data._DOWNLOADS, "mnist", ("https://example.invalid/", {"file.gz": good}))
    fetch("mnist", tmp_path, opener=lambda url, timeout: _Response(payload))
    assert (tmp_path / "file.gz").read_bytes() == payload
    monkeypatch.setitem(data._DOWNLOADS, "mnist", ("https://example.invalid/", {"other.gz": "0" * 32}))
    with pytest.raises(DataError, match="has md5 .* expected 0{32}: not written"):
        fetch("mnist", tmp_path, opener=lambda url, timeout: _Response(payload))
    assert not (tmp_path / "other.gz").exists() and not list(tmp_path.glob("*.tmp"))

    def offline(url, timeout):
        raise OSError("no route to host")

    with pytest.raises(DataError, match="could not download https://example.invalid/other.gz: no route"):
        fetch("mnist", tmp_path, opener=offline)


def test_batches_are_reproducible_normalised_and_augmented(tmp_path):
    write_mnist(tmp_path, train=50)
    dataset = load_dataset("mnist", "train", tmp_path)
    first = list(
        Batches(dataset, 16, shuffle=True, augmentation=True, size=32, generator=torch.Generator().manual_seed(3))
    )
    again = list(
        Batches(dataset, 16, shuffle=True, augmentation=True, size=32, generator=torch.Generator().manual_seed(3))
    )
    assert [b[0].shape for b in first] == [(16, 1, 32, 32)] * 3 + [(2, 1, 32, 32)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    plain = torch.cat([x for x, _ in Batches(dataset, 16, size=32)])
    expected = (dataset.images.float() / 255 - dataset.mean[0]) / dataset.std[0]
    torch.testing.assert_close(plain[:, :, 2:30, 2:30], expected)
    assert float(plain[:, :, :2].abs().max()) == 0  # zero padding to 32 x 32


def test_augmentation_is_a_padded_crop_and_flip():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = augment(images, torch.Generator().manual_seed(0), padding=1, flip=False)
    for original, cropped in zip(images, out):
        padded = torch.nn.functional.pad(original, (1, 1, 1, 1))
        assert any(torch.equal(cropped, padded[:, r : r + 4, c : c + 4]) for r in range(3) for c in range(3))
