"""MFCCs exactly as TensorFlow's ``audio_spectrogram`` and ``mfcc`` ops compute them (Hello Edge's features).

The pipeline, for each clip of float samples in [-1, 1]:

1. *Spectrogram* (``tensorflow/core/kernels/spectrogram.cc``): frames of ``window_samples`` every
   ``stride_samples`` (only whole frames: 1 + (T - window) // stride of them), each multiplied by a periodic Hann
   window 0.5 - 0.5 cos(2 pi n / window), zero-padded to the next power of two (640 -> 1024) and Fourier
   transformed; the output is the power re^2 + im^2 of the 1 + fft / 2 = 513 bins.
2. *Mel filterbank* (``mfcc_mel_filterbank.cc``): mel(f) = 1127 ln(1 + f / 700); ``channels + 1`` centres
   equally spaced in mel above mel(lower), the last one at mel(upper). Bins from int(1.5 + lower / hz_per_bin)
   (DC is always excluded) to int(upper / hz_per_bin), with hz_per_bin = (sample_rate / 2) / (bins - 1), each
   give the *magnitude* sqrt(power) to the two channels whose centres surround them, with triangular weights.
3. log(max(filterbank, 1e-12)) (``mfcc.cc``);
4. DCT-II (``mfcc_dct.cc``): c_k = sqrt(2 / channels) sum_j x_j cos(pi k (j + 1/2) / channels), every k scaled
   alike (not orthonormal), the first ``coefficients`` kept.

Hello Edge uses 40 ms windows every 20 ms at 16 kHz, 40 channels from 20 Hz to 4 kHz and 10 coefficients: a
one-second clip gives 49 frames x 10 coefficients. Everything is computed in float64 (TensorFlow works in
double inside both ops; the float32 spectrogram it passes between them rounds at 1e-7 relative, which is not
reproduced) and returned in the input's dtype, batched over clips and on the input's device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: TensorFlow's kFilterbankFloor: the smallest filterbank output before the logarithm
FILTERBANK_FLOOR = 1e-12


@dataclass(frozen=True)
class MfccSettings:
    """The parameters of TensorFlow's MFCC; the defaults are Hello Edge's.

    Attributes:
        sample_rate: samples per second of the audio.
        window_samples: spectrogram frame length (640 = 40 ms at 16 kHz).
        stride_samples: hop between frames (320 = 20 ms).
        channels: mel filterbank channels.
        lower_frequency: lower edge of the filterbank in Hz.
        upper_frequency: upper edge of the filterbank in Hz.
        coefficients: DCT coefficients kept (at most ``channels``).
    """

    sample_rate: int = 16000
    window_samples: int = 640
    stride_samples: int = 320
    channels: int = 40
    lower_frequency: float = 20.0
    upper_frequency: float = 4000.0
    coefficients: int = 10

    def __post_init__(self) -> None:
        if self.window_samples < 2 or self.stride_samples < 1:
            raise ValueError(f"need window_samples >= 2 and stride_samples >= 1, got {self}")
        if not 0 <= self.lower_frequency < self.upper_frequency <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= lower_frequency < upper_frequency <= sample_rate / 2, got {self}")
        if not 1 <= self.coefficients <= self.channels:
            raise ValueError(f"need 1 <= coefficients <= channels, got {self}")

    @property
    def fft_length(self) -> int:
        """The FFT size: the smallest power of two holding a window (TensorFlow's NextPowerOfTwo)."""
        return 1 << (self.window_samples - 1).bit_length()

    @property
    def bins(self) -> int:
        """Spectrogram bins, DC to Nyquist."""
        return self.fft_length // 2 + 1

    def frames(self, samples: int) -> int:
        """Frames of a clip of ``samples`` samples (whole windows only)."""
        return 0 if samples < self.window_samples else 1 + (samples - self.window_samples) // self.stride_samples


#: Hello Edge's features: 49 x 10 for one second at 16 kHz
HELLO_EDGE_MFCC = MfccSettings()


def _frequency_to_mel(frequency: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(frequency, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def _filterbank_matrix(settings: MfccSettings) -> np.ndarray:
    # TensorFlow loops over bins with a running channel index; its band_mapper is the number of centres below the
    # bin's mel frequency, minus one, so a sorted search gives the same channels at once.
    bins = settings.bins
    mel_low = _frequency_to_mel(settings.lower_frequency)
    spacing = (_frequency_to_mel(settings.upper_frequency) - mel_low) / (settings.channels + 1)
    centres = mel_low + spacing * np.arange(1, settings.channels + 2)
    hz_per_bin = 0.5 * settings.sample_rate / (bins - 1)
    start = int(1.5 + settings.lower_frequency / hz_per_bin)
    end = int(settings.upper_frequency / hz_per_bin)
    used = np.arange(start, end + 1)
    mel = _frequency_to_mel(used * hz_per_bin)
    band = np.searchsorted(centres[: settings.channels], mel, side="left") - 1
    upper = centres[band + 1]
    lower = np.where(band >= 0, centres[np.maximum(band, 0)], mel_low)
    weight = (upper - mel) / (upper - lower)  # share of the bin on the falling edge of channel `band`
    matrix = np.zeros((bins, settings.channels))
    falling = band >= 0
    matrix[used[falling], band[falling]] = weight[falling]
    rising = band + 1 < settings.channels
    matrix[used[rising], band[rising] + 1] = 1.0 - weight[rising]
    return matrix


def mel_filterbank(settings: MfccSettings = HELLO_EDGE_MFCC) -> Tensor:
    """TensorFlow's triangular mel weights as a (bins, channels) float64 matrix: magnitude @ matrix = channels."""
    return torch.from_numpy(_filterbank_matrix(settings).copy())


def dct_matrix(channels: int, coefficients: int) -> Tensor:
    """TensorFlow's DCT-II as a (channels, coefficients) float64 matrix: log_mel @ matrix = MFCCs."""
    j = torch.arange(channels, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(coefficients, dtype=torch.float64).unsqueeze(0)
    return (2.0 / channels) ** 0.5 * torch.cos(torch.pi / channels * k * (j + 0.5))


def periodic_hann(length: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """0.5 - 0.5 cos(2 pi n / length), n = 0 .. length - 1 (TensorFlow's GetPeriodicHann)."""
    n = torch.arange(length, dtype=dtype, device=device)
    return 0.5 - 0.5 * torch.cos(2 * torch.pi * n / length)


def _spectrum(audio: Tensor, settings: MfccSettings) -> Tensor:
    """Complex float64 spectra (..., frames, bins) of Hann-windowed frames zero-padded to the FFT length."""
    if audio.shape[-1] < settings.window_samples:
        raise ValueError(f"clips of {audio.shape[-1]} samples are shorter than one window ({settings.window_samples})")
    frames = audio.to(torch.float64).unfold(-1, settings.window_samples, settings.stride_samples)
    window = periodic_hann(settings.window_samples, device=audio.device)
    return torch.fft.rfft(frames * window, n=settings.fft_length)


def power_spectrogram(audio: Tensor, settings: MfccSettings = HELLO_EDGE_MFCC) -> Tensor:
    """Squared-magnitude spectrogram of clips (..., samples) as float64 (..., frames, bins): TensorFlow's
    ``audio_spectrogram`` with ``magnitude_squared=True``."""
    spectrum = _spectrum(audio, settings)
    return spectrum.real.square() + spectrum.imag.square()


def mfcc(audio: Tensor, settings: MfccSettings = HELLO_EDGE_MFCC) -> Tensor:
    """MFCCs of clips (..., samples) with samples in [-1, 1]: (..., frames, coefficients) in the input's dtype.

    Example: ``mfcc(torch.zeros(8, 16000)).shape == (8, 49, 10)`` with the default (Hello Edge) settings.
    """
    if not audio.is_floating_point():
        raise TypeError(f"mfcc needs float samples in [-1, 1], got {audio.dtype}; divide int16 PCM by 32768")
    magnitude = _spectrum(audio, settings).abs()  # TensorFlow's sqrt of the power spectrogram, in one step
    mel = magnitude @ mel_filterbank(settings).to(audio.device)
    log_mel = mel.clamp_min(FILTERBANK_FLOOR).log()
    return (log_mel @ dct_matrix(settings.channels, settings.coefficients).to(audio.device)).to(audio.dtype)
