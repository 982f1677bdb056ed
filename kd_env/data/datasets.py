"""In-memory datasets: train/validation/test tensors, the seeded validation split, the
synthetic dataset, and per-epoch index batches.

Everything stays a uint8 tensor on the training device for the whole run: a CIFAR training set
is 150 MB as uint8, so it fits on any GPU, and batches are then plain indexing with no
DataLoader workers, no PIL and no host-to-device copies per step.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .names import canonical_name

if TYPE_CHECKING:
    from .sources import RawDataset

__all__ = [
    "DATASET_STATS",
    "DatasetSplits",
    "SyntheticData",
    "batch_indices",
    "load_dataset",
    "make_synthetic",
    "split_train_val",
]

#: Per-channel (mean, std) in [0, 1] units, computed on each training set; the usual published
#: values, so numbers are comparable with the literature.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


@dataclass(repr=False)
class DatasetSplits:
    """A dataset held as tensors: train (validation removed), validation and test parts.

    Images are uint8 ``[N, C, H, W]``, labels int64 ``[N]``; the validation part may be empty
    (``N == 0``). ``mean``/``std`` are per-channel in [0, 1] units, for normalisation (see
    ``BatchTransform``). The test part is meant only for reported numbers; model selection and
    any tuning use the validation part.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None = None
    clean_train_labels: torch.Tensor | None = None
    """The true training labels where ``train_labels`` hold corrupted ones (the noisy label
    regime, :func:`kd_env.data.labels.with_noisy_train_labels`); ``None`` when ``train_labels``
    are the true labels. Read through :attr:`true_train_labels`."""

    _TENSOR_FIELDS = (
        "train_images",
        "train_labels",
        "val_images",
        "val_labels",
        "test_images",
        "test_labels",
    )

    def __post_init__(self) -> None:
        # Catch a malformed dataset here rather than as a shape error deep inside training.
        for part in ("train", "val", "test"):
            images = getattr(self, f"{part}_images")
            labels = getattr(self, f"{part}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(f"{part}_images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(f"{part}_labels must be int64 [{images.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")
            if images.shape[1:] != self.train_images.shape[1:]:
                raise ValueError(f"{part}_images shape {tuple(images.shape[1:])} differs from the train images")
        if len(self.mean) != self.image_shape[0] or len(self.std) != self.image_shape[0]:
            raise ValueError(f"mean/std need one value per channel ({self.image_shape[0]})")
        clean = self.clean_train_labels
        if clean is not None and (clean.dtype != torch.int64 or clean.shape != self.train_labels.shape):
            raise ValueError(f"clean_train_labels must be int64 {tuple(self.train_labels.shape)}, got {clean.dtype} {tuple(clean.shape)}")

    @property
    def true_train_labels(self) -> torch.Tensor:
        """The true training labels: ``clean_train_labels`` where the labels were corrupted, else ``train_labels``."""
        return self.train_labels if self.clean_train_labels is None else self.clean_train_labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.train_images.device

    def to(self, device: str | torch.device) -> DatasetSplits:
        """Return a copy with every tensor on ``device`` (the same object's tensors if already there)."""
        moved = {f: getattr(self, f).to(device) for f in self._TENSOR_FIELDS}
        clean = None if self.clean_train_labels is None else self.clean_train_labels.to(device)
        return dataclasses.replace(self, **moved, clean_train_labels=clean)

    def __repr__(self) -> str:
        # The default dataclass repr would print six tensors.
        return (
            f"DatasetSplits(name={self.name!r}, image_shape={self.image_shape}, "
            f"train={len(self.train_labels)}, val={len(self.val_labels)}, test={len(self.test_labels)}, "
            f"num_classes={self.num_classes}, device={self.device})"
        )


def split_train_val(
    images: torch.Tensor, labels: torch.Tensor, val_fraction: float, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Carve a validation part out of a training set with a seeded permutation.

    ``round(N * val_fraction)`` samples go to validation. The split depends only on ``N`` and
    ``split_seed`` (its own ``torch.Generator``, never the global RNG), so every run, teacher
    and student alike, sees the same validation samples. Both parts keep the original order.

    Returns:
        ``(train_images, train_labels, val_images, val_labels)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = images.shape[0]
    n_val = int(round(n * val_fraction))
    generator = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(n, generator=generator)
    # Sorting keeps each part in file order, so the split is a pure selection.
    val_idx = perm[:n_val].sort().values.to(images.device)
    train_idx = perm[n_val:].sort().values.to(images.device)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def batch_indices(
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """One epoch's index batches: every index in ``range(num_samples)`` once (unless dropped).

    The permutation is drawn from ``generator`` on the generator's device, so indexing a
    dataset on that device needs no copy.

    Args:
        num_samples: dataset size.
        batch_size: samples per batch; the last batch may be smaller unless ``drop_last``.
        generator: source of the shuffle.
        shuffle: if False, batches are ``0..num_samples-1`` in order (and ``generator`` is unused).
        drop_last: drop a final batch smaller than ``batch_size``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    device = generator.device
    if shuffle:
        order = torch.randperm(num_samples, generator=generator, device=device)
    else:
        order = torch.arange(num_samples, device=device)
    if drop_last:
        order = order[: (num_samples // batch_size) * batch_size]
    if order.numel() == 0:
        return []  # split() would give one empty batch, which a training step cannot use
    return list(order.split(batch_size))


class SyntheticData(NamedTuple):
    """Raw output of :func:`make_synthetic` (uint8 ``[N, C, H, W]`` images, int64 labels)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def make_synthetic(
    num_classes: int = 4,
    image_size: int = 8,
    channels: int = 1,
    train_size: int = 512,
    test_size: int = 256,
    seed: int = 0,
    noise: float = 0.5,
) -> SyntheticData:
    """A small deterministic class-conditional image dataset for tests and smoke runs.

    Each class has a random prototype image (pixels uniform in [0, 1]); a sample is its class's
    prototype plus Gaussian noise of std ``noise``, clipped to [0, 1] and quantised to uint8.
    Classes are balanced and shuffled. With the defaults the classes are well separated (a
    nearest-class-mean rule is ~99% accurate) yet noisy enough that a tiny net still has to
    learn something, in seconds on a CPU; raise ``noise`` for a harder task.

    Everything comes from one ``torch.Generator`` seeded with ``seed``, so the same arguments
    give identical tensors on every machine.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if min(image_size, channels, train_size, test_size) < 1:
        raise ValueError("image_size, channels, train_size and test_size must be positive")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, channels, image_size, image_size, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Balanced labels (i mod K), then shuffled so batches are mixed.
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        pixels = prototypes[labels] + noise * torch.randn(n, channels, image_size, image_size, generator=generator)
        images = (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return images, labels.to(torch.int64)

    train_images, train_labels = sample(train_size)
    test_images, test_labels = sample(test_size)
    return SyntheticData(train_images, train_labels, test_images, test_labels)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images in [0, 1] units (std floored to avoid division by 0)."""
    x = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = x.mean(dim=1)
    std = x.std(dim=1, unbiased=False).clamp_min(1e-3) if x.shape[1] > 0 else torch.ones_like(mean)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    verify_checksums: bool = True,
    **synthetic_kwargs: Any,
) -> DatasetSplits:
    """Load a dataset once into uint8 tensors on ``device``, with a seeded validation split.

    Args:
        name: ``"cifar100"``, ``"cifar10"``, ``"fashion_mnist"`` or ``"synthetic"`` (hyphens and
            case are ignored).
        data_root: folder tried first; see ``find_data_root`` for the full search order.
        download: allow torchvision to download the files if they are found nowhere. Off by
            default: nothing is ever downloaded silently.
        val_fraction: share of the training set held out for validation, in [0, 1); 0 gives
            empty validation tensors.
        split_seed: seed of the validation split (independent of any training seed).
        device: where the tensors are put.
        verify_checksums: check CIFAR files against the official md5 sums (torchvision's own
            check) and Fashion-MNIST's decompressed arrays against their SHA-256. Keep it on for
            real data; pass False only for files you generated yourself, such as test fixtures.
            Ignored for synthetic data.
        **synthetic_kwargs: arguments of :func:`make_synthetic` (only for ``"synthetic"``).

    Raises:
        DatasetNotFoundError: the files are nowhere and ``download`` is False.
        RuntimeError: CIFAR files failed the md5 check.
    """
    name = canonical_name(name)
    if name == "synthetic":
        # bind() rejects unknown keywords with a clear TypeError and fills in the defaults,
        # so num_classes is right whether or not the caller passed it.
        bound = inspect.signature(make_synthetic).bind(**synthetic_kwargs)
        bound.apply_defaults()
        raw: SyntheticData | RawDataset = make_synthetic(**bound.arguments)
        num_classes = int(bound.arguments["num_classes"])
        class_names: list[str] | None = [f"class_{i}" for i in range(num_classes)]
    else:
        if synthetic_kwargs:
            raise TypeError(f"unexpected arguments for {name}: {sorted(synthetic_kwargs)}")
        # torchvision reads the files: imported here, not at module import, so a process on
        # synthetic or in-memory data never pays for it (see kd_env.data.names)
        from .sources import read_dataset

        raw = read_dataset(name, data_root, download=download, verify_checksums=verify_checksums)
        class_names = raw.class_names
        num_classes = len(class_names)

    train_images, train_labels, val_images, val_labels = split_train_val(raw.train_images, raw.train_labels, val_fraction, split_seed)
    if name == "synthetic":
        # Stats of the training part only: the validation and test parts must not leak in.
        mean, std = _channel_stats(train_images)
    else:
        mean, std = DATASET_STATS[name]

    splits = DatasetSplits(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        val_images=val_images,
        val_labels=val_labels,
        test_images=raw.test_images,
        test_labels=raw.test_labels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        class_names=class_names,
    )
    return splits.to(device)
