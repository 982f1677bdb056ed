"""How a teacher is made: the training recipe per dataset and the data a teacher is trained on.

The standard recipe (:func:`default_recipe`): SGD with momentum 0.9 and weight decay 5e-4, the
learning rate multiplied by 0.1 at 62.5%, 75% and 87.5% of the epochs (epochs 150/180/210 of
the 240-epoch CIFAR recipe of CRD/MTKD-RL), batched augmentation from
:func:`kd_env.data.default_augmentation`, cross-entropy loss.

A :class:`TeacherRecipe` says what data a teacher sees, so that teacher pools with structure
(the benchmark's scenarios) are built, trained and cached like the default pool:

* ``classes``: train only on the images of these classes (a *specialist*: accurate on its own
  classes, confidently wrong on the others, since it never saw them);
* ``relabel``: train on labels moved by a fixed derangement of the classes (every class mapped
  to another one, seeded): a teacher that is confident and systematically wrong.

Both are dataset-agnostic, so the scenarios exist for every dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

#: Default teacher pool per dataset. The CIFAR pools are the four teachers of MTKD-RL.
TEACHER_POOLS: dict[str, list[str]] = {
    "cifar100": ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"],
    "cifar10": ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"],
    # heterogeneous: an MLP, two plain CNNs and a ResNet with different training budgets, so
    # the teachers differ clearly in accuracy (about 84/82/87/90% test); the pool trains in
    # about 3-4 minutes on 2 CPU cores.
    "fashion_mnist": ["mlp", "cnn_w8", "cnn_w16", "resnet8"],
    "synthetic": ["mlp", "cnn_w8", "cnn_w16"],
}

#: Default epochs per teacher of each default pool (also used for a pool member trained alone).
TEACHER_POOL_EPOCHS: dict[str, dict[str, int]] = {
    "cifar100": {arch: 240 for arch in TEACHER_POOLS["cifar100"]},
    "cifar10": {arch: 240 for arch in TEACHER_POOLS["cifar10"]},
    "fashion_mnist": {"mlp": 1, "cnn_w8": 3, "cnn_w16": 5, "resnet8": 5},
    "synthetic": {"mlp": 2, "cnn_w8": 3, "cnn_w16": 4},
}

# dataset -> (epochs, lr, batch_size)
_DATASET_RECIPES: dict[str, dict[str, Any]] = {
    "cifar100": {"epochs": 240, "lr": 0.05, "batch_size": 64},
    "cifar10": {"epochs": 240, "lr": 0.05, "batch_size": 64},
    "fashion_mnist": {"epochs": 5, "lr": 0.05, "batch_size": 128},
    "synthetic": {"epochs": 3, "lr": 0.05, "batch_size": 64},
}
_SMALL_LR_ARCH_PREFIXES = ("MobileNet", "ShuffleV")  # CRD recipe: lr 0.01 for these
#: Fractions of the epoch budget after which the learning rate drops by 10x (teachers and
#: students alike: :class:`kd_env.engine.EngineConfig` uses the same fractions).
LR_DECAY_AT: tuple[float, ...] = (0.625, 0.75, 0.875)


def default_recipe(arch: str, dataset: str) -> dict[str, Any]:
    """The default ``epochs``, ``lr`` and ``batch_size`` for ``arch`` on ``dataset``.

    Epochs come from :data:`TEACHER_POOL_EPOCHS` when ``arch`` is in the dataset's pool, else from
    the dataset default (240 for CIFAR). MobileNet/ShuffleNet use lr 0.01 as in CRD.
    """
    recipe = dict(_DATASET_RECIPES.get(dataset, {"epochs": 10, "lr": 0.05, "batch_size": 64}))
    recipe["epochs"] = TEACHER_POOL_EPOCHS.get(dataset, {}).get(arch, recipe["epochs"])
    if arch.startswith(_SMALL_LR_ARCH_PREFIXES):
        recipe["lr"] = 0.01
    return recipe


def lr_milestones(epochs: int) -> list[int]:
    """Epoch indices (0-based epochs completed) after which the lr is multiplied by 0.1."""
    return [int(round(f * epochs)) for f in LR_DECAY_AT]


def lr_for_epoch(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of 0-based ``epoch``: ``base_lr * 0.1**(#milestones <= epoch)``."""
    return base_lr * 0.1 ** sum(1 for m in lr_milestones(epochs) if epoch >= m)


def derangement(num_classes: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(num_classes)`` with no fixed point (class c -> perm[c] != c).

    A random cyclic shift of a random order: shuffle the classes, then map each to the next one
    in the shuffled order. Every class moves, and the map is a bijection, so a teacher trained
    on it is as confident as a normal one, just wrong on every class.
    """
    if num_classes < 2:
        raise ValueError(f"a derangement needs at least 2 classes, got {num_classes}")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(num_classes, generator=generator).tolist()
    mapping = [0] * num_classes
    for position, cls in enumerate(order):
        mapping[cls] = order[(position + 1) % num_classes]
    return mapping


def _ranges(classes: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2.5"``: a short, file-name-safe tag for a class subset."""
    runs: list[list[int]] = []
    for cls in classes:
        if runs and cls == runs[-1][1] + 1:
            runs[-1][1] = cls
        else:
            runs.append([cls, cls])
    return ".".join(f"{first}" if first == last else f"{first}-{last}" for first, last in runs)


@dataclass(frozen=True)
class TeacherRecipe:
    """One teacher of a pool: its architecture and the data it is trained on.

    Args:
        arch: a zoo model name.
        epochs: training epochs (``None``: :func:`default_recipe`).
        seed: the training seed (weight init, batch order, augmentation).
        classes: train only on these classes (a specialist); ``None``: every class.
        relabel: seed of a :func:`derangement` applied to every label the teacher sees
            (training and model-selection labels); ``None``: the true labels.
    """

    arch: str
    epochs: int | None = None
    seed: int = 0
    classes: tuple[int, ...] | None = None
    relabel: int | None = None

    def __post_init__(self) -> None:
        if self.classes is not None:
            if not self.classes:
                raise ValueError("a class subset must name at least one class")
            object.__setattr__(self, "classes", tuple(sorted(int(c) for c in self.classes)))

    @property
    def name(self) -> str:
        """File-name-safe name: the architecture plus what its data was (``mlp-c0-2``, ``mlp-perm1``),
        plus ``-e<epochs>`` when the epochs are set."""
        name = self.arch
        if self.classes is not None:
            name += f"-c{_ranges(self.classes)}"
        if self.relabel is not None:
            name += f"-perm{self.relabel}"
        if self.epochs is not None:
            name += f"-e{self.epochs}"
        return name

    @property
    def is_plain(self) -> bool:
        """Trained on every class with the true labels (the default pool's kind)."""
        return self.classes is None and self.relabel is None

    def label_map(self, num_classes: int) -> list[int] | None:
        """The label mapping applied in training (``None``: identity)."""
        return None if self.relabel is None else derangement(num_classes, self.relabel)

    def to_metadata(self, num_classes: int) -> dict[str, Any]:
        """How the teacher was made, for its checkpoint's metadata (plain types)."""
        meta = asdict(self)
        meta["classes"] = None if self.classes is None else list(self.classes)
        meta["label_map"] = self.label_map(num_classes)
        return meta
