"""TensorFlow's MFCC in torch, checked against a float64 transcription of TensorFlow's C++ loops.

The reference below follows the structure of tensorflow/core/kernels/spectrogram.cc (GetPeriodicHann,
ProcessCoreFFT), mfcc_mel_filterbank.cc (Initialize, Compute), mfcc.cc (Compute) and mfcc_dct.cc (Initialize,
Compute) line by line, in plain Python; it shares no code with splitgrow.features.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitgrow.features import HELLO_EDGE_MFCC, MfccSettings, mel_filterbank, mfcc

SAMPLE_RATE = 16000


def tf_spectrogram(samples: np.ndarray, window_length: int, step: int) -> list[list[float]]:
    fft_length = 1
    while fft_length < window_length:
        fft_length *= 2
    window = [0.5 - 0.5 * math.cos(2 * math.pi * i / window_length) for i in range(window_length)]
    frames = []
    start = 0
    while start + window_length <= len(samples):
        buffer = np.zeros(fft_length)
        for j in range(window_length):
            buffer[j] = samples[start + j] * window[j]
        spectrum = np.fft.rfft(buffer)
        frames.append([spectrum[i].real ** 2 + spectrum[i].imag ** 2 for i in range(fft_length // 2 + 1)])
        start += step
    return frames


class TfMelFilterbank:
    def __init__(self, input_length, sample_rate, num_channels, lower, upper):
        def freq_to_mel(freq):
            return 1127.0 * math.log1p(freq / 700.0)

        self.num_channels = num_channels
        self.center_frequencies = [0.0] * (num_channels + 1)
        mel_low = freq_to_mel(lower)
        mel_hi = freq_to_mel(upper)
        mel_spacing = (mel_hi - mel_low) / (num_channels + 1)
        for i in range(num_channels + 1):
            self.center_frequencies[i] = mel_low + mel_spacing * (i + 1)
        hz_per_sbin = 0.5 * sample_rate / (input_length - 1)
        self.start_index = int(1.5 + lower / hz_per_sbin)
        self.end_index = int(upper / hz_per_sbin)
        self.band_mapper = [0] * input_length
        channel = 0
        for i in range(input_length):
            melf = freq_to_mel(i * hz_per_sbin)
            if i < self.start_index or i > self.end_index:
                self.band_mapper[i] = -2
            else:
                while channel < num_channels and self.center_frequencies[channel] < melf:
                    channel += 1
                self.band_mapper[i] = channel - 1
        self.weights = [0.0] * input_length
        for i in range(input_length):
            channel = self.band_mapper[i]
            if i < self.start_index or i > self.end_index:
                self.weights[i] = 0.0
            elif channel >= 0:
                self.weights[i] = (self.center_frequencies[channel + 1] - freq_to_mel(i * hz_per_sbin)) / (
                    self.center_frequencies[channel + 1] - self.center_frequencies[channel]
                )
            else:
                self.weights[i] = (self.center_frequencies[0] - freq_to_mel(i * hz_per_sbin)) / (
                    self.center_frequencies[0] - mel_low
                )

    def compute(self, power_frame):
        output = [0.0] * self.num_channels
        for i in range(self.start_index, self.end_index + 1):
            spec_val = math.sqrt(power_frame[i])
            weighted = spec_val * self.weights[i]
            channel = self.band_mapper[i]
            if channel >= 0:
                output[channel] += weighted
            channel += 1
            if channel < self.num_channels:
                output[channel] += spec_val - weighted
        return output


def tf_dct(values, coefficient_count):
    length = len(values)
    fnorm = math.sqrt(2.0 / length)
    arg = math.pi / length
    return [
        sum(fnorm * math.cos(i * arg * (j + 0.5)) * values[j] for j in range(length)) for i in range(coefficient_count)
    ]


def tf_mfcc(samples: np.ndarray, settings: MfccSettings) -> np.ndarray:
    spectrogram = tf_spectrogram(samples, settings.window_samples, settings.stride_samples)
    filterbank = TfMelFilterbank(
        len(spectrogram[0]), settings.sample_rate, settings.channels, settings.lower_frequency, settings.upper_frequency
    )
    rows = []
    for frame in spectrogram:
        working = [math.log(max(value, 1e-12)) for value in filterbank.compute(frame)]
        rows.append(tf_dct(working, settings.coefficients))
    return np.array(rows)


def synthetic_tones(count: int = 3, seconds: float = 1.0) -> np.ndarray:
    """A chord, a chirp with noise, and a silent clip that ends in a click (the 1e-12 floor is exercised)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(3)
    chord = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t) + 0.1 * np.sin(2 * np.pi * 2500 * t)
    chirp = 0.5 * np.sin(2 * np.pi * (50 * t + 1900 * t**2)) + 0.01 * rng.standard_normal(t.shape)
    silent = np.zeros_like(t)
    silent[-100:] = 0.9
    return np.stack([chord, chirp, silent][:count])


def test_filterbank_matches_tensorflow_weights():
    reference = TfMelFilterbank(513, SAMPLE_RATE, 40, 20.0, 4000.0)
    matrix = mel_filterbank(HELLO_EDGE_MFCC).numpy()
    assert (reference.start_index, reference.end_index) == (2, 256)  # 15.625 Hz per bin: DC and bin 1 excluded
    for i in range(513):
        expected = np.zeros(40)
        channel = reference.band_mapper[i]
        if channel != -2:
            if channel >= 0:
                expected[channel] += reference.weights[i]
            if channel + 1 < 40:
                expected[channel + 1] += 1.0 - reference.weights[i]
        np.testing.assert_allclose(matrix[i], expected, atol=1e-12, err_msg=f"bin {i}")
    assert matrix[:2].sum() == 0 and matrix[257:].sum() == 0


def test_mfcc_matches_tensorflow_transcription_in_float64():
    clips = synthetic_tones()
    expected = np.stack([tf_mfcc(clip, HELLO_EDGE_MFCC) for clip in clips])
    actual = mfcc(torch.from_numpy(clips), HELLO_EDGE_MFCC)
    assert actual.dtype == torch.float64 and actual.shape == (3, 49, 10)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-5)
    # the silent frames hit the floor: every channel log(1e-12), so c0 = sqrt(2/40) * 40 * log(1e-12)
    assert actual[2, 0, 0].item() == pytest.approx(math.sqrt(2 / 40) * 40 * math.log(1e-12), rel=1e-12)
    assert actual[2, 0, 1:].abs().max().item() < 1e-9


def test_mfcc_other_settings_and_float32():
    settings = MfccSettings(window_samples=480, stride_samples=160, channels=20, coefficients=13, upper_frequency=7600)
    clip = synthetic_tones(count=2, seconds=0.25).astype(np.float32)  # float32 samples, computed in float64
    expected = np.stack([tf_mfcc(c.astype(np.float64), settings) for c in clip])
    actual = mfcc(torch.from_numpy(clip), settings)
    assert settings.fft_length == 512 and actual.dtype == torch.float32
    assert actual.shape == (2, settings.frames(4000), 13) == (2, 23, 13)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6, atol=1e-4)


def test_frames_and_batching():
    assert HELLO_EDGE_MFCC.frames(16000) == 49 and HELLO_EDGE_MFCC.fft_length == 1024
    clips = torch.from_numpy(synthetic_tones(count=2)).float()
    batched = mfcc(clips.view(1, 2, -1))
    assert batched.shape == (1, 2, 49, 10)
    torch.testing.assert_close(batched[0, 1], mfcc(clips[1:2])[0])
    with pytest.raises(TypeError, match="divide int16 PCM by 32768"):
        mfcc(torch.zeros(1, 16000, dtype=torch.int16))
    with pytest.raises(ValueError, match="shorter than one window"):
        mfcc(torch.zeros(1, 600))
    with pytest.raises(ValueError, match="coefficients <= channels"):
        MfccSettings(coefficients=41)
