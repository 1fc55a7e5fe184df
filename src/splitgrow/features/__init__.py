"""Input features computed in torch: TensorFlow's MFCC (as Hello Edge used it for keyword spotting)."""

from .mfcc import (
    FILTERBANK_FLOOR,
    HELLO_EDGE_MFCC,
    MfccSettings,
    dct_matrix,
    mel_filterbank,
    mfcc,
    periodic_hann,
    power_spectrogram,
)

__all__ = [
    "FILTERBANK_FLOOR",
    "HELLO_EDGE_MFCC",
    "MfccSettings",
    "dct_matrix",
    "mel_filterbank",
    "mfcc",
    "periodic_hann",
    "power_spectrogram",
]
