"""Datasets without torchvision or torchaudio: each loader reads its standard on-disk format into memory."""

from .common import CACHE, DataError
from .images import (
    DATASETS,
    STATISTICS,
    Batches,
    ImageDataset,
    augment,
    default_root,
    fetch,
    load_dataset,
    read_cifar_batch,
    read_idx,
    to_float,
    write_idx,
)

__all__ = [
    "CACHE",
    "DATASETS",
    "STATISTICS",
    "Batches",
    "DataError",
    "ImageDataset",
    "augment",
    "default_root",
    "fetch",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
    "to_float",
    "write_idx",
]
