"""WAV files with scipy's :mod:`scipy.io.wavfile` and numpy (no audio package needed).

Speech Commands and its synthetic stand-in are mono 16-bit PCM at 16 kHz. :func:`read_wav` also reads the other
sample formats a user's recordings come in (8-bit unsigned, 24- and 32-bit PCM, 32- and 64-bit float, in plain or
WAVE_FORMAT_EXTENSIBLE headers, with any extra chunks) and converts them to 16 bits. A file of another sample rate
or channel count is refused rather than resampled or mixed down (that would change the data without saying so);
so is a truncated or corrupt file: each is a :class:`DataError` naming the file and the fix.
"""

from __future__ import annotations

import io
import struct
import warnings
import wave
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from ..artifacts import atomic_write_bytes
from .common import DataError

#: what fixes a damaged file
_REPLACE = "replace it or delete it"
#: a chunk size that streaming writers (and RF64 files) leave when they cannot seek back to fill it in
_UNKNOWN_SIZE = 0xFFFFFFFF


def _chunks(raw: bytes) -> dict[bytes, tuple[int, int]]:
    """Each chunk of a RIFF file as its tag -> (offset of its body, announced size): scipy reads what a cut file
    still holds and only warns, so a truncated data chunk is found here."""
    chunks: dict[bytes, tuple[int, int]] = {}
    offset = 12  # after "RIFF", the file size and "WAVE"
    while offset + 8 <= len(raw):
        tag, size = raw[offset : offset + 4], int.from_bytes(raw[offset + 4 : offset + 8], "little")
        chunks.setdefault(tag, (offset + 8, size))
        offset += 8 + size + size % 2  # a chunk of odd size is followed by a pad byte
    return chunks


def _check_complete(raw: bytes, path: Path) -> None:
    """Raise if the data chunk announces more bytes than the file holds."""
    chunks = _chunks(raw)
    if b"fmt " not in chunks or b"data" not in chunks:
        return  # scipy says what is missing
    fmt_offset, _ = chunks[b"fmt "]
    frame_bytes = int.from_bytes(raw[fmt_offset + 12 : fmt_offset + 14], "little")  # block align
    offset, size = chunks[b"data"]
    if size != _UNKNOWN_SIZE and frame_bytes and len(raw) - offset < size:
        raise DataError(
            f"truncated WAV file: its header announces {size // frame_bytes} samples, it holds "
            f"{(len(raw) - offset) // frame_bytes}",
            path,
            _REPLACE,
        )


def _to_int16(samples: np.ndarray, path: Path) -> np.ndarray:
    """Samples of any format scipy reads, as int16: 8-bit (unsigned) exactly; wider integers rounded to their top
    16 bits (scipy gives 24-bit samples left-justified in int32); floats in [-1, 1] scaled by 32768, rounded and
    clipped."""
    if samples.dtype == np.int16:
        return samples
    if samples.dtype == np.uint8:
        return ((samples.astype(np.int16) - 128) * 256).astype(np.int16)
    if samples.dtype.kind == "i":
        scaled = samples / float(2 ** (8 * samples.dtype.itemsize - 16))
    else:
        if not np.isfinite(samples).all():
            raise DataError("a WAV file of NaN or infinite samples", path, _REPLACE)
        scaled = samples.astype(np.float64) * 32768.0
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """The samples of a mono WAV file at ``sample_rate`` Hz, as int16 (samples,).

    Any PCM (8 to 64 bits) or float (32 or 64 bits) format is read, in a plain or a WAVE_FORMAT_EXTENSIBLE header,
    whatever other chunks the file holds, and converted to 16 bits (see :func:`_to_int16`).

    Raises:
        DataError: the file is missing or unreadable, is not a WAV file, is truncated, has more than one channel,
            another sample rate, a compressed format (A-law, ADPCM, ...) or non-finite float samples.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("no such WAV file", path, "check the path, or restore the file") from None
    except OSError as error:  # no permission, a folder of that name, ...
        raise DataError(
            f"cannot read the WAV file ({error.strerror})", path, "check its permissions, or replace it"
        ) from None
    _check_complete(raw, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks are skipped, as they should be
            rate, samples = wavfile.read(io.BytesIO(raw))
    except (ValueError, EOFError, struct.error) as error:  # struct.error: a header cut short
        reason = str(error) if raw else ""
        # scipy's words for a format it does not decode (A-law, mu-law, ADPCM, 12-bit float, ...)
        foreign = reason.startswith(("Unknown wave file format", "Unsupported bit depth"))
        fix = "convert it to PCM (e.g. `sox IN -e signed -b 16 OUT`)" if foreign else _REPLACE
        raise DataError(f"not a readable WAV file ({reason or 'empty or cut short'})", path, fix) from None
    if samples.ndim != 1:
        raise DataError(
            f"a WAV file of {samples.shape[1]} channels, expected mono", path, "mix it down, e.g. `sox IN -c 1 OUT`"
        )
    if rate != sample_rate:
        raise DataError(
            f"a WAV file sampled at {rate} Hz, expected {sample_rate} Hz",
            path,
            f"resample it, e.g. `sox IN -r {sample_rate} OUT`",
        )
    return _to_int16(samples, path)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write int16 samples (samples,) as a mono 16-bit PCM WAV file, atomically."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(f"write_wav needs a 1-D int16 array, got {samples.dtype} of shape {samples.shape}")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(samples.astype("<i2").tobytes())
    atomic_write_bytes(path, buffer.getvalue())
