"""16-bit PCM WAV files with the standard library's :mod:`wave` and numpy (no audio package needed).

Speech Commands and its synthetic stand-in are mono 16-bit PCM at 16 kHz; anything else (another sample rate,
sample width or channel count, a truncated or corrupt file) is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_bytes
from .common import DataError


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """The samples of a mono 16-bit PCM WAV file at ``sample_rate`` Hz, as int16 (samples,).

    Raises:
        DataError: the file is missing, is not a WAV file, is truncated, or has another format.
    """
    try:
        with wave.open(str(path), "rb") as reader:
            channels, width, rate, count = (
                reader.getnchannels(),
                reader.getsampwidth(),
                reader.getframerate(),
                reader.getnframes(),
            )
            data = reader.readframes(count)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, EOFError, wave.Error) as error:
        reason = str(error) or "empty or cut short"  # EOFError: the file ends inside its header
        raise DataError(f"{path} is not a readable WAV file ({reason}); replace it or delete it") from None
    if (channels, width) != (1, 2):
        raise DataError(
            f"{path} has {channels} channel(s) of {8 * width}-bit samples; expected mono 16-bit PCM "
            f"(convert it, e.g. `sox IN -c 1 -b 16 OUT`)"
        )
    if rate != sample_rate:
        raise DataError(
            f"{path} is sampled at {rate} Hz, expected {sample_rate} Hz (resample it, e.g. `sox IN -r {sample_rate} "
            f"OUT`)"
        )
    if len(data) != 2 * count:
        raise DataError(f"{path} is truncated: its header announces {count} samples, it holds {len(data) // 2}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


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
