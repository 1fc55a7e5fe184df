"""Image datasets without torchvision: MNIST-format IDX files (MNIST, Fashion-MNIST) and CIFAR-10 python batches.

Everything is loaded into memory as uint8 tensors; batches are normalised (and, for training, augmented) on the
fly with torch operations driven by an explicit ``torch.Generator``, so a run is reproducible and resumable.

Where the files are looked for: ``--data-root`` if given; otherwise, for Fashion-MNIST, the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), then ``~/.cache/splitgrow/<dataset>``. In that
root, the IDX files may be gzipped or not (whatever their name says), under their official names or the dotted ones
some mirrors use (``train-images.idx3-ubyte``), in the root itself, ``raw/`` or torchvision's ``MNIST/raw/`` and
``FashionMNIST/raw/``; CIFAR-10's batches in ``cifar-10-batches-py/``, the root itself, or still packed in
``cifar-10-python.tar.gz`` (read without unpacking it).
``download=True`` fetches the official files into the root unless they are there already (checksums verified,
written atomically).
A missing, truncated or corrupt file is a :class:`DataError` naming the path and how to get the data.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import io
import math
import pickle
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..artifacts import atomic_write_bytes
from .common import CACHE, DataError, read_archive_members

DATASETS = ("fashion-mnist", "mnist", "cifar10")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: where torchvision's MNIST and FashionMNIST classes leave the IDX files under their root
_TORCHVISION_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_DOWNLOADS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}
#: per-channel mean and standard deviation of the training images (in [0, 1])
STATISTICS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_HOW_TO_GET = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist`, pass --data-root to a folder with the "
    "four IDX files, or pass --download",
    "mnist": "pass --data-root to a folder with the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...), or "
    "pass --download",
    "cifar10": "pass --data-root to the folder holding cifar-10-batches-py (from cifar-10-python.tar.gz), or pass "
    "--download",
}


@dataclass
class ImageDataset:
    """Images (N, C, H, W) as uint8, labels (N,) as int64, and the per-channel normalisation."""

    name: str
    images: Tensor
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, count: int) -> ImageDataset:
        """The first ``count`` samples (for reduced runs)."""
        return ImageDataset(self.name, self.images[:count], self.labels[:count], self.mean, self.std, self.num_classes)


# ------------------------------------------------------------------------------------------ file formats


_REPLACE = "replace the file (a fresh copy, or --download)"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the data file: {error.strerror}", path, "check its permissions") from None


def _open(path: Path) -> bytes:
    raw = _read(path)
    # gzip's magic number, not the name, decides: browsers often unpack a downloaded .gz and keep its name
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"corrupt gzip file ({error or 'cut short'})", path, _REPLACE) from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST format): magic 0x0000 08 <ndim>, big-endian int32 sizes, then uint8 data."""
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError("not an IDX file of unsigned bytes (bad magic number)", path, _REPLACE)
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError("truncated IDX file (incomplete header)", path, _REPLACE)
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)  # Python integers: a damaged header must not overflow int64
    if len(data) != expected:
        raise DataError(
            f"{len(data)} bytes where the header announces {expected}: truncated or corrupt", path, _REPLACE
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``compress``); used by tests to make fixtures."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.tobytes()
    atomic_write_bytes(path, gzip.compress(payload) if compress else payload)


class _PickledDtype:
    """Stands in for a ``numpy.dtype`` while a CIFAR batch is unpickled.

    numpy's own ``dtype.__setstate__`` trusts its input: a damaged state (one flipped byte of a batch file) can
    crash the interpreter. Only the states of plain numeric dtypes are accepted here, and checked first. The
    official batches were pickled by Python 2, whose strings (the type code ``u1``, the byte order ``|``) unpickle
    as bytes.
    """

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        spec = _text(spec)
        if not isinstance(spec, str):
            raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric type")
        try:
            self.dtype = np.dtype(spec)
        except TypeError:
            raise pickle.UnpicklingError(f"unknown dtype {spec!r}") from None
        if self.dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric type")

    def __setstate__(self, state: object) -> None:
        # (version, byte order, subarray, names, fields, ...): a plain dtype has no subarray, names or fields
        if not (isinstance(state, tuple) and len(state) >= 5 and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"the state {state!r} of dtype {self.dtype} is damaged")
        order = _text(state[1])
        if order not in ("<", ">", "=", "|"):
            raise pickle.UnpicklingError(f"dtype {self.dtype} has an unknown byte order {order!r}")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _PickledArray:
    """Stands in for a ``numpy.ndarray`` while a CIFAR batch is unpickled: its state (shape, dtype, bytes) is
    checked and the array built with ``np.frombuffer``, never with numpy's unchecked ``__setstate__``."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 5:  # (version, shape, dtype, Fortran order, data)
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("a damaged array state")
        shape, dtype, fortran, data = state
        if not (
            isinstance(shape, tuple)
            and all(isinstance(size, int) and size >= 0 for size in shape)
            and isinstance(dtype, _PickledDtype)
            and isinstance(data, bytes)
        ):
            raise pickle.UnpicklingError("a damaged array state (its shape, dtype or data)")
        if len(data) != math.prod(shape) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"{len(data)} bytes for an array of shape {shape} and dtype {dtype.dtype}")
        self.array = np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C")


def _text(value: object) -> object:
    """A Python 2 string (bytes once unpickled) as text; anything else as it is."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


#: stands for ``numpy.ndarray``, which a batch names only as the first argument of ``_reconstruct``
_NDARRAY = object()


def _reconstruct(cls: object, shape: object, dtype_code: object) -> _PickledArray:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than an ndarray")
    return _PickledArray()


def _scalar(dtype: object, data: object) -> np.generic:
    if not (isinstance(dtype, _PickledDtype) and isinstance(data, bytes) and len(data) == dtype.dtype.itemsize):
        raise pickle.UnpicklingError("a damaged numpy scalar")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: numpy arrays and scalars of plain numeric types, lists, dicts and bytes;
    refuses anything else (no code runs, and no numpy internals see unchecked bytes)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _PickledDtype,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch") from None


def _unpickle_batch(raw: bytes) -> object:
    """The batch in ``raw``, its stand-in arrays replaced by numpy arrays.

    Raises:
        pickle.UnpicklingError: (among the errors that damaged bytes give) an array whose state never came.
    """

    def real(value: object) -> object:
        if isinstance(value, _PickledArray):
            if value.array is None:
                raise pickle.UnpicklingError("an array without its data")
            return value.array
        if isinstance(value, dict):
            return {key: real(item) for key, item in value.items()}
        if isinstance(value, list):
            return [real(item) for item in value]
        return value

    return real(_ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load())


def _integer_array(values: object) -> np.ndarray | None:
    """``values`` as an integer array (kept as it is if it is one) if they are all whole numbers, else None."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):  # ragged lists
        return None
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        return array.astype(np.int64)
    return None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one ``cifar-10-batches-py`` file.

    Raises:
        DataError: the file is unreadable, not a CIFAR-10 batch, or holds pixels outside 0..255 or labels outside
            0..9.
    """
    return _parse_cifar_batch(_read(path), path)


def _parse_cifar_batch(raw: bytes, path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_cifar_batch` of the bytes ``raw`` of the batch ``path`` (a file, or a member of the archive)."""
    try:
        batch = _unpickle_batch(raw)
    except Exception as error:  # damaged bytes raise many types (UnpicklingError, EOFError, KeyError, ...)
        raise DataError(f"not a CIFAR-10 python batch (truncated or corrupt: {error})", path, _REPLACE) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError("not a CIFAR-10 python batch (no data and labels)", path, _REPLACE)
    data, labels = _integer_array(batch[b"data"]), _integer_array(batch[b"labels"])
    if data is None or data.ndim != 2 or data.shape[1] != 3072:
        found = "non-integer pixels" if data is None else f"data of shape {data.shape}"
        raise DataError(f"not a CIFAR-10 python batch ({found}; expected (N, 3072) bytes)", path, _REPLACE)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"pixels from {data.min()} to {data.max()}, outside 0..255", path, _REPLACE)
    if labels is None or labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        found = "labels that are not whole numbers" if labels is None else f"{labels.size} labels"
        raise DataError(f"{found} for {data.shape[0]} images", path, _REPLACE)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"labels from {labels.min()} to {labels.max()}, outside 0..9", path, _REPLACE)
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)


# ------------------------------------------------------------------------------------------ locating and loading


def default_root(name: str) -> Path:
    """Where a dataset is looked for without --data-root."""
    if name == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    return CACHE / name


def _find_idx(root: Path, stem: str, name: str) -> Path:
    folders = (root, root / "raw", root / _TORCHVISION_FOLDERS[name])
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte: the name some mirrors and unzip tools give
    candidates = [folder / f"{file}{gz}" for folder in folders for file in (stem, dotted) for gz in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for candidate in candidates:
        if candidate.is_dir():
            raise DataError(f"{name}: a folder where the IDX file {candidate.name} belongs", candidate, _REPLACE)
    raise DataError(f"{name}: no {stem}[.gz]", root, _HOW_TO_GET[name])


def _load_idx_split(root: Path, name: str, split: str) -> ImageDataset:
    image_stem, label_stem = _IDX_FILES[split]
    images = read_idx(_find_idx(root, image_stem, name))
    label_path = _find_idx(root, label_stem, name)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"{name}: images of shape {images.shape} and labels of shape {labels.shape}; expected (N, rows, columns) "
            "and (N,)",
            root,
            _REPLACE,
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels", root, _REPLACE)
    if labels.max(initial=0) > 9:
        raise DataError(f"{name}: labels up to {labels.max()}, outside 0..9: a corrupt file", label_path, _REPLACE)
    _require_images(name, split, images.shape[0], root)
    mean, std = STATISTICS[name]
    return ImageDataset(
        name, torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), mean, std
    )


def _cifar_source(root: Path, split: str) -> Path:
    """The folder that holds every batch file of ``split``, else the archive ``cifar-10-python.tar.gz`` in ``root``
    (not unpacked yet, or unpacking was cut short)."""
    folder = root / _CIFAR_FOLDER if (root / _CIFAR_FOLDER).is_dir() else root
    missing = [file for file in _CIFAR_FILES[split] if not (folder / file).is_file()]
    if not missing:
        return folder
    if (root / _CIFAR_ARCHIVE).is_file():
        return root / _CIFAR_ARCHIVE
    raise DataError(f"cifar10: no {missing[0]} (nor {_CIFAR_ARCHIVE})", folder, _HOW_TO_GET["cifar10"])


def _read_cifar_archive(archive: Path, splits: tuple[str, ...]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The batches of each of ``splits`` read from the packed archive in one pass (nothing is written)."""
    fix = f"replace it (a fresh copy, or --download), or unpack it (`tar xzf {_CIFAR_ARCHIVE}`)"
    files = [file for split in splits for file in _CIFAR_FILES[split]]
    members = [f"{_CIFAR_FOLDER}/{file}" for file in files]
    found = read_archive_members(
        _read(archive), archive, members, kind=".tar.gz", missing="cifar10: no {member} in the archive", fix=fix
    )
    batches = dict(zip(files, found))
    return {
        split: [_parse_cifar_batch(batches[file], f"{archive}:{_CIFAR_FOLDER}/{file}") for file in _CIFAR_FILES[split]]
        for split in splits
    }


def _load_cifar_split(
    root: Path, split: str, packed: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> ImageDataset:
    """One split of CIFAR-10 from its batch files, or from the archive (``packed``: its batches, already read)."""
    source = _cifar_source(root, split)
    if source.is_dir():
        parts = [read_cifar_batch(source / file) for file in _CIFAR_FILES[split]]
    else:
        parts = packed if packed is not None else _read_cifar_archive(source, (split,))[split]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    _require_images("cifar10", split, images.shape[0], source)
    mean, std = STATISTICS["cifar10"]
    return ImageDataset("cifar10", torch.from_numpy(images.copy()), torch.from_numpy(labels), mean, std)


def _require_images(name: str, split: str, count: int, where: Path) -> None:
    if count == 0:
        raise DataError(f"{name}: the {split} files hold 0 images", where, _REPLACE)


def _dataset_root(name: str, root: Path | None, download: bool) -> Path:
    """The folder of ``name`` (``root``, or its default place), downloaded first with ``download``."""
    if name not in DATASETS:
        raise DataError("unknown dataset", name, f"choose one of {', '.join(DATASETS)}")
    root = Path(root) if root is not None else default_root(name)
    if root.exists() and not root.is_dir():
        raise DataError(
            f"{name}: a file, not the folder of the dataset", root, f"give --data-root a folder; {_HOW_TO_GET[name]}"
        )
    if download:
        fetch(name, root)
    if not root.is_dir():
        raise DataError(f"the data folder {root} does not exist", name, _HOW_TO_GET[name])
    return root


def load_dataset(name: str, split: str, root: Path | None = None, *, download: bool = False) -> ImageDataset:
    """Load the ``split`` ("train" or "test") of ``name`` (fashion-mnist, mnist, cifar10).

    To load both splits, :func:`load_splits` reads a packed CIFAR-10 archive once rather than once per split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _dataset_root(name, root, download)
    if name == "cifar10":
        return _load_cifar_split(root, split)
    return _load_idx_split(root, name, split)


def load_splits(name: str, root: Path | None = None, *, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of ``name``, as :func:`load_dataset` gives them; CIFAR-10's packed archive
    (``cifar-10-python.tar.gz``, 170 MB) is decompressed once for the two, not once per split."""
    root = _dataset_root(name, root, download)
    if name != "cifar10":
        return _load_idx_split(root, name, "train"), _load_idx_split(root, name, "test")
    sources = {split: _cifar_source(root, split) for split in ("train", "test")}
    packed = tuple(split for split, source in sources.items() if not source.is_dir())
    batches = _read_cifar_archive(sources[packed[0]], packed) if packed else {}
    return _load_cifar_split(root, "train", batches.get("train")), _load_cifar_split(root, "test", batches.get("test"))


def _on_disk(name: str, root: Path) -> bool:
    """Whether every file of ``name`` is in ``root`` already, in a form the loader reads (nothing to download)."""
    try:
        for split, stems in _IDX_FILES.items():
            if name == "cifar10":
                _cifar_source(root, split)
            else:
                for stem in stems:
                    _find_idx(root, stem, name)
    except DataError:
        return False
    return True


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fetch(name: str, root: Path, *, opener=urllib.request.urlopen) -> None:
    """Download ``name``'s official files into ``root`` unless the loader finds them there already (in any form it
    reads), skipping those already downloaded, verifying checksums and writing atomically; CIFAR-10's archive is
    unpacked into ``root/cifar-10-batches-py``.

    Raises:
        DataError: a download fails (no connection: the message names the URL and where to put the files by
            hand) or gives a file of another checksum; nothing is written for that file.
    """
    if _on_disk(name, root):
        return
    base, files = _DOWNLOADS[name]
    by_hand = f"check the connection, or download {', '.join(files)} from {base} by hand into {root}"
    for file, checksum in files.items():
        target = root / file
        if target.is_file() and _md5(target.read_bytes()) == checksum:
            continue
        try:
            with opener(base + file, timeout=60) as response:
                data = response.read()
        except (OSError, http.client.HTTPException) as error:  # IncompleteRead: the connection dropped mid-file
            raise DataError(f"could not download {base + file}: {error}", root, by_hand) from None
        if _md5(data) != checksum:
            raise DataError(
                f"{base + file} has md5 {_md5(data)}, expected {checksum}: not written", root, "try again later"
            )
        atomic_write_bytes(target, data)
        if name == "cifar10":
            # the batch files by their known names only: no path a member names is ever written to
            batches = [*_CIFAR_FILES["train"], *_CIFAR_FILES["test"]]
            members = [f"{_CIFAR_FOLDER}/{batch}" for batch in batches]
            missing = "cifar10: no {member} in the archive"
            found = read_archive_members(data, target, members, kind=".tar.gz", missing=missing, fix="try again later")
            for batch, raw in zip(batches, found):
                atomic_write_bytes(root / _CIFAR_FOLDER / batch, raw)


# ------------------------------------------------------------------------------------------ batches


def to_float(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], size: int | None = None) -> Tensor:
    """uint8 (N, C, H, W) -> normalised float32, zero-padded (centred) to ``size`` x ``size``.

    Raises:
        ValueError: an image is larger than ``size`` (images are padded, never cropped or resized).
    """
    x = images.float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    if size is None:
        return x
    height, width = x.shape[-2:]
    if max(height, width) > size:
        raise ValueError(f"{height}x{width} images do not fit size {size}: images are padded, never cropped")
    rows, cols = size - height, size - width
    return torch.nn.functional.pad(x, (cols // 2, cols - cols // 2, rows // 2, rows - rows // 2))


def augment(images: Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True) -> Tensor:
    """Random crops after zero padding by ``padding`` pixels, and random horizontal flips (standard CIFAR
    augmentation), for a float batch (N, C, H, W)."""
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    rows = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    cols = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    cropped = torch.stack([padded[i, :, r : r + height, c : c + width] for i, (r, c) in enumerate(zip(rows, cols))])
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
        cropped[flips] = cropped[flips].flip(3)
    return cropped


class Batches:
    """Mini-batches of an :class:`ImageDataset` in a reproducible order.

    Args:
        dataset: the data.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a new permutation every epoch from ``generator``.
        augmentation: random crop (4-pixel padding) and horizontal flip, for training.
        size: pad images to size x size (e.g. 28 -> 32 for VGG19 on Fashion-MNIST); at least their size.
        generator: the source of order and augmentation; its state is part of a checkpoint.
        device: where batches are sent.
        rows: the rows of every batch to keep (a process's shard in a data-parallel run, see
            :func:`splitgrow.parallel.shard_rows`); the order and the augmentation are drawn for the whole batch,
            so that every process's generator stays in step.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        augmentation: bool = False,
        size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        rows: slice | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.size = size
        self.generator = generator or torch.Generator().manual_seed(0)
        self.device = torch.device(device)
        self.rows = rows

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        count = len(self.dataset)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        for start in range(0, count, self.batch_size):
            index = order[start : start + self.batch_size]
            images = to_float(self.dataset.images[index], self.dataset.mean, self.dataset.std, self.size)
            if self.augmentation:
                images = augment(images, self.generator, flip=self.dataset.name == "cifar10")
            labels = self.dataset.labels[index]
            if self.rows is not None:
                if self.shuffle and len(index) < (self.rows.step or 1):
                    continue  # a last training batch too small to give every process a row (DDP needs all)
                images, labels = images[self.rows], labels[self.rows]
            yield images.to(self.device), labels.to(self.device)
