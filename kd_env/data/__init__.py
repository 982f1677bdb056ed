"""Data layer: datasets as uint8 tensors on the training device, batched augmentation.

``load_dataset`` finds the files (never downloading unless asked), reads them with torchvision's
dataset classes, carves a seeded validation split from the training set and returns a
``DatasetSplits``; ``batch_indices`` gives an epoch's index batches and ``BatchTransform`` turns
a uint8 batch into augmented, normalised float32 images; ``with_noisy_train_labels`` corrupts the
training labels for the noisy label regime (:mod:`kd_env.data.labels`). The test split is for reported numbers
only; tune on the validation split.

torchvision is imported only when a dataset is read from disk (or :func:`find_data_root` is
used): ``kd_env.data.sources`` loads on first use, so that an env on synthetic or in-memory
data, and every subprocess worker running one, skips its import (~165 MB, ~3 s).
"""

from __future__ import annotations

from typing import Any

from .augment import BatchTransform, default_augmentation
from .datasets import DatasetSplits, batch_indices, load_dataset, make_synthetic
from .labels import LABEL_NOISE_KINDS, LABEL_REGIMES, corrupt_labels, with_noisy_train_labels
from .names import DatasetNotFoundError, default_cache_dir

# names whose module imports torchvision: resolved on first access (PEP 562)
_LAZY = {"find_data_root": "sources"}

__all__ = [
    "BatchTransform",
    "DatasetNotFoundError",
    "DatasetSplits",
    "LABEL_NOISE_KINDS",
    "LABEL_REGIMES",
    "batch_indices",
    "corrupt_labels",
    "default_augmentation",
    "default_cache_dir",
    "find_data_root",
    "load_dataset",
    "make_synthetic",
    "with_noisy_train_labels",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
