"""Data layer: datasets as uint8 tensors on the training device, batched augmentation.

``load_dataset`` finds the files (never downloading unless asked), reads them with torchvision's
dataset classes, carves a seeded validation split from the training set and returns a
``DatasetSplits``; ``batch_indices`` gives an epoch's index batches and ``BatchTransform`` turns
a uint8 batch into augmented, normalised float32 images. The test split is for reported numbers
only; tune on the validation split.
"""

from .augment import BatchTransform, default_augmentation
from .sources import DatasetNotFoundError, default_cache_dir, find_data_root
from .tensors import DatasetSplits, batch_indices, load_dataset, make_synthetic

__all__ = [
    "BatchTransform",
    "DatasetNotFoundError",
    "DatasetSplits",
    "batch_indices",
    "default_augmentation",
    "default_cache_dir",
    "find_data_root",
    "load_dataset",
    "make_synthetic",
]
