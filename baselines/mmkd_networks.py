"""MMKD's two weight networks and its hard buffer (the authors' ``models/meta_util.py`` and
``dataset/buffer.py``); the policy that uses them is :class:`kd_env.baselines.mmkd.MMKD`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureWeight", "HardBuffer", "LogitsWeight", "MMKDWeightNets", "gram_rows"]


# ---------------------------------------------------------------------------- the weight networks
class LogitsWeight(nn.Module):
    """Per-sample logit weights from the teachers' and the student's logits (``LogitsWeight``).

    ``[z_1 | ... | z_K | z_s]`` (``C (K + 1)`` values per sample) -> Linear(``C (K+1) // factor``)
    -> ReLU -> Linear(``K``) -> softmax over teachers.

    Args:
        num_classes: ``C``.
        num_teachers: ``K``.
        factor: the hidden layer's reduction (the authors' ``--factor 2``).
    """

    def __init__(self, num_classes: int, num_teachers: int, factor: int = 2) -> None:
        super().__init__()
        inputs = num_classes * (num_teachers + 1)
        self.num_classes, self.num_teachers = int(num_classes), int(num_teachers)
        self.hidden = nn.Linear(inputs, inputs // factor)
        self.out = nn.Linear(inputs // factor, num_teachers)

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """``[K, B, C]`` teacher logits and ``[B, C]`` student logits -> ``[B, K]`` weights."""
        expected = (self.num_teachers, student_logits.shape[0], self.num_classes)
        if teacher_logits.dim() != 3 or tuple(teacher_logits.shape) != expected or student_logits.shape[1:] != (self.num_classes,):
            raise ValueError(
                f"LogitsWeight was built for K={self.num_teachers} teachers and C={self.num_classes} classes: it takes "
                f"[K, B, C] teacher logits and [B, C] student logits, got {tuple(teacher_logits.shape)} and "
                f"{tuple(student_logits.shape)}; build it with the env's teacher and class counts"
            )
        features = torch.cat([*teacher_logits.unbind(0), student_logits], dim=1)
        return torch.softmax(self.out(F.relu(self.hidden(features))), dim=-1)


def gram_rows(feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row ``b`` of every map's ``B x B`` Gram matrix of flattened features, side by side: ``[B, B * len(maps)]``."""
    flat = [feature_map.reshape(feature_map.shape[0], -1) for feature_map in feature_maps]
    return torch.cat([f @ f.t() for f in flat], dim=1)


class FeatureWeight(nn.Module):
    """Per-sample feature weights from the batch's Gram matrices (``FeatureWeight``).

    For each teacher and for the student, the ``B x B`` Gram matrix of the flattened last feature
    maps; sample ``b``'s input is row ``b`` of all ``K + 1`` of them (``B (K + 1)`` values) ->
    Linear(``B (K+1) // factor``) -> ReLU -> Linear(``K``) -> softmax over teachers. The input
    size depends on the batch size, so the network serves one fixed batch size only.

    Args:
        batch_size: ``B``.
        num_teachers: ``K``.
        factor: the hidden layer's reduction.
    """

    def __init__(self, batch_size: int, num_teachers: int, factor: int = 2) -> None:
        super().__init__()
        inputs = batch_size * (num_teachers + 1)
        self.batch_size, self.num_teachers = int(batch_size), int(num_teachers)
        self.hidden = nn.Linear(inputs, inputs // factor)
        self.out = nn.Linear(inputs // factor, num_teachers)

    def forward(self, teacher_maps: Sequence[torch.Tensor], student_map: torch.Tensor) -> torch.Tensor:
        """K teacher maps and the student's map, each ``[B, ...]`` -> ``[B, K]`` weights."""
        if len(teacher_maps) != self.num_teachers:
            raise ValueError(f"FeatureWeight was built for K={self.num_teachers} teachers, got {len(teacher_maps)} teacher feature maps")
        sizes = {int(m.shape[0]) for m in (*teacher_maps, student_map)}
        if sizes != {self.batch_size}:
            raise ValueError(
                f"FeatureWeight was built for batches of {self.batch_size} (its input is the B x B Gram matrices, "
                f"B (K + 1) values per sample), got feature maps of batch sizes {sorted(sizes)}; MMKD needs one "
                "fixed batch size: build it with the env's batch_size"
            )
        return torch.softmax(self.out(F.relu(self.hidden(gram_rows([*teacher_maps, student_map])))), dim=-1)


class MMKDWeightNets(nn.Module):
    """Both weight networks (one Adam optimises them together); ``features`` is ``None`` without feature KD."""

    def __init__(self, num_classes: int, num_teachers: int, batch_size: int, feature_kd: bool, factor: int = 2) -> None:
        super().__init__()
        self.logits = LogitsWeight(num_classes, num_teachers, factor)
        self.features = FeatureWeight(batch_size, num_teachers, factor) if feature_kd else None


# ---------------------------------------------------------------------------- the hard buffer
class HardBuffer:
    """The authors' hard buffer (``dataset/buffer.py``), of training-set indices.

    The first training batches fill it (whole batches, up to ``capacity``); once full, each
    batch's misclassified samples overwrite as many distinct slots chosen at random. A meta
    batch is ``batch_size`` distinct slots chosen at random.

    Args:
        capacity: slots (the authors' ``--buffer_size 256``).
        batch_size: samples per meta batch; at most ``capacity``.
        generator: the CPU generator of the slot draws.
    """

    def __init__(self, capacity: int, batch_size: int, generator: torch.Generator) -> None:
        if batch_size < 1 or capacity < batch_size:
            raise ValueError(
                f"the hard buffer needs capacity >= batch size >= 1 (a meta batch is batch_size distinct slots), "
                f"got capacity {capacity} and batch size {batch_size}; raise buffer_size"
            )
        self.capacity, self.batch_size, self.generator = int(capacity), int(batch_size), generator
        self.indices = torch.empty(0, dtype=torch.long)

    @property
    def full(self) -> bool:
        return int(self.indices.numel()) == self.capacity

    def add(self, indices: torch.Tensor, misclassified: torch.Tensor) -> None:
        """One training batch: filling, it goes in whole; full, its misclassified samples replace random slots."""
        indices = indices.detach().to("cpu", torch.long)
        if not self.full:
            room = self.capacity - int(self.indices.numel())
            self.indices = torch.cat([self.indices, indices[:room]])
            return
        hard = indices[misclassified.detach().to("cpu", torch.bool)]
        if hard.numel():
            slots = torch.randperm(self.capacity, generator=self.generator)[: hard.numel()]
            self.indices[slots] = hard

    def sample(self) -> torch.Tensor:
        """``batch_size`` indices from distinct slots (the buffer holds at least one batch after the first ``add``)."""
        if int(self.indices.numel()) < self.batch_size:
            raise RuntimeError(f"the hard buffer holds {self.indices.numel()} samples, fewer than a batch of {self.batch_size}")
        rows = torch.randperm(int(self.indices.numel()), generator=self.generator)[: self.batch_size]
        return self.indices[rows]
