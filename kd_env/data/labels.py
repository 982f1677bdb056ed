"""Label regimes: which training labels the student (and whatever reads its batches) is given.

* ``"full"``: the true training labels (the default).
* ``"none"``: no training labels. The data is unchanged here (the true labels stay in
  :class:`~kd_env.data.DatasetSplits`, for the teacher-output store's key and the label-aware
  oracle, a reference); the engine withholds them (``EngineConfig.label_free``).
* ``"noisy"``: the training labels corrupted once, deterministically from a seed, by
  :func:`with_noisy_train_labels`, before the engine sees them; the validation and test splits
  stay clean.

Noise model. ``rate`` is the fraction of training labels that are *wrong*: exactly
``round(rate * N)`` samples, drawn without replacement from a seeded permutation, get another
class. ``"symmetric"``: a class drawn uniformly among the ``C - 1`` others (so no flip is a
no-op and the rate is the true error rate, unlike the convention that draws among all ``C``
classes); ``"pairs"``: class ``c`` becomes ``(c + 1) mod C`` (a class-dependent pair flip, the
structured noise of real annotators confusing neighbouring classes).
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from .datasets import DatasetSplits

__all__ = ["LABEL_NOISE_KINDS", "LABEL_REGIMES", "corrupt_labels", "derived_noise_seed", "with_noisy_train_labels"]

LABEL_REGIMES = ("full", "none", "noisy")
LABEL_NOISE_KINDS = ("symmetric", "pairs")


def derived_noise_seed(split_seed: int) -> int:
    """The label-noise seed when none is given: derived from the split seed, but not equal to it
    (the split's own permutation is drawn from ``split_seed``; the noise must not reuse that
    stream). SHA-256 rather than ``hash()``: the same number in every process."""
    digest = hashlib.sha256(f"kd_env.label_noise:{int(split_seed)}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # < 2**56: a valid torch seed


def corrupt_labels(labels: torch.Tensor, num_classes: int, rate: float, kind: str, seed: int) -> torch.Tensor:
    """A copy of ``labels`` with exactly ``round(rate * N)`` of them changed to another class.

    Args:
        labels: ``[N]`` int64 labels in ``[0, num_classes)``.
        num_classes: ``C >= 2``.
        rate: the fraction of labels made wrong, in ``[0, 1)``.
        kind: ``"symmetric"`` (another class uniformly) or ``"pairs"`` (``c -> (c + 1) mod C``).
        seed: every draw comes from a ``torch.Generator`` seeded with it (CPU, then moved), so the
            same arguments give the same labels on every machine and device.

    Raises:
        ValueError: a bad ``rate``, ``kind`` or ``num_classes``.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"label_noise must be a number in [0, 1), got {rate!r}")
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"label_noise_kind must be one of {LABEL_NOISE_KINDS}, got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    cpu = labels.detach().to("cpu")
    count = int(round(rate * cpu.shape[0]))
    generator = torch.Generator().manual_seed(int(seed))
    flipped = torch.randperm(cpu.shape[0], generator=generator)[:count]
    if kind == "pairs":
        offset = torch.ones(count, dtype=torch.int64)
    else:  # an offset in 1..C-1 is a uniformly drawn *other* class
        offset = torch.randint(1, num_classes, (count,), generator=generator, dtype=torch.int64)
    noisy = cpu.clone()
    noisy[flipped] = (cpu[flipped] + offset) % num_classes
    return noisy.to(labels.device)


def with_noisy_train_labels(data: DatasetSplits, rate: float, kind: str, seed: int) -> DatasetSplits:
    """``data`` with its training labels corrupted (:func:`corrupt_labels`); validation and test
    untouched. The true training labels are kept in ``clean_train_labels``: the teachers'
    outputs do not depend on labels, so the teacher-output store is keyed on the true ones (one
    store for every noise setting), and the label-aware oracle, a reference, reads them."""
    noisy = corrupt_labels(data.train_labels, data.num_classes, rate, kind, seed)
    return dataclasses.replace(data, train_labels=noisy, clean_train_labels=data.true_train_labels)
