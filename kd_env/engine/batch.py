"""What the engine hands out: the prepared batch (:class:`StepBatch`) and what one update did
(:class:`StepResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import overload

import torch

LABEL_FIELDS = ("labels", "teacher_ce", "teacher_correct", "student_ce")
"""The :class:`StepBatch` quantities that read a training label: withheld in the label-free regime."""


class TrainingLabelsHidden(RuntimeError):
    """A training label, or a quantity computed from one, was read in the label-free regime.

    Policies, rewards and agents that need training labels are refused when they are built on a
    ``labels="none"`` env; this error is the backstop for code that was not (a user's policy)."""


class _Withheld:
    """A :class:`StepBatch` quantity that reads a training label, stored as ``_<name>``: the
    tensor, or :class:`TrainingLabelsHidden` where the label-free regime withholds it (``None``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.private = name, f"_{name}"

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _Withheld: ...

    @overload
    def __get__(self, instance: StepBatch, owner: type | None = None) -> torch.Tensor: ...

    def __get__(self, instance: StepBatch | None, owner: type | None = None) -> torch.Tensor | _Withheld:
        if instance is None:
            return self
        value: torch.Tensor | None = getattr(instance, self.private)
        if value is None:
            raise TrainingLabelsHidden(
                f"StepBatch.{self.name} reads the training labels, which this env withholds (labels='none'): "
                "a policy, reward or agent that needs them cannot run in the label-free regime; use labels='full' or 'noisy'"
            )
        return value

    def __set__(self, instance: StepBatch, value: torch.Tensor) -> None:
        setattr(instance, self.private, value)


@dataclass
class StepBatch:
    """Everything known about the prepared batch before the update. ``[B, K]`` per-sample tensors.

    Tensors marked "graph" still carry the student's autograd graph; the others are detached.
    The feature maps are the engine's own tensors of this batch's forward passes (references,
    never copies), there for policies whose weights read them (MMKD's feature network).

    The quantities that read a training label (:data:`LABEL_FIELDS`: ``labels``, ``teacher_ce``,
    ``teacher_correct``, ``student_ce``) are stored as ``_labels``, ... and read under their own
    names. In the label-free regime they are ``None`` and reading one
    raises :class:`TrainingLabelsHidden` (:attr:`has_training_labels` says which case holds).
    Why a descriptor rather than ``Tensor | None`` fields: every consumer that runs with labels
    keeps its plain tensor type, and one that slipped through the construction-time refusal
    fails loudly naming the regime, instead of a ``None`` error somewhere or a silent fallback.
    """

    indices: torch.Tensor
    _labels: torch.Tensor | None  # [B]
    teacher_logits: torch.Tensor  # [K, B, C]
    teacher_embeddings: list[torch.Tensor]  # K x [B, D_k]
    _teacher_ce: torch.Tensor | None  # [B, K]
    teacher_entropy: torch.Tensor  # [B, K], at T = 1
    _teacher_correct: torch.Tensor | None  # [B, K] float 0/1
    student_logits: torch.Tensor  # [B, C], graph
    _student_ce: torch.Tensor | None  # [B], graph
    kd_loss: torch.Tensor  # [B, K], graph: T^2 KL(teacher || student)
    feature_mse: torch.Tensor | None  # [B, K], graph; None without feature KD
    feature_cosine: torch.Tensor | None  # [B, K]; None without feature KD
    feature_head_weights: torch.Tensor | None = None  # [B, K], graph; CA-MKD's feature weights
    # K x [B, C_k, H_k, W_k] float32, the teachers' last feature maps (from the teacher-output
    # store or the in-memory cache when the engine reads one); empty without feature KD
    teacher_feature_maps: list[torch.Tensor] = field(default_factory=list)
    student_feature_map: torch.Tensor | None = None  # [B, C, H, W], graph; None without feature KD
    # with fixed augmented views (augment_views, issue #27): each sample's view [B] and its row in
    # the kept teacher outputs [B] (index * V + view); None otherwise
    views: torch.Tensor | None = None
    teacher_rows: torch.Tensor | None = None

    labels = _Withheld()
    teacher_ce = _Withheld()
    teacher_correct = _Withheld()
    student_ce = _Withheld()

    @property
    def has_training_labels(self) -> bool:
        """False in the label-free regime (the :data:`LABEL_FIELDS` are withheld)."""
        return self._labels is not None

    @property
    def kept_rows(self) -> torch.Tensor:
        """The samples' rows in the kept teacher outputs: :attr:`teacher_rows` with views, else
        the training indices."""
        return self.indices if self.teacher_rows is None else self.teacher_rows

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[0])


@dataclass
class StepResult:
    """What one update did. Per-sample tensors are detached and on the engine's device."""

    loss: float
    student_ce: torch.Tensor | None  # [B]; None in the label-free regime (it reads the labels)
    kd_loss: torch.Tensor  # [B, K]
    feature_mse: torch.Tensor | None  # [B, K]
    per_sample_loss: torch.Tensor  # [B]: CE (none when label-free) + alpha * sum_k w KD + beta * sum_k w MSE
    logit_weights: torch.Tensor  # [B, K] as applied
    feature_weights: torch.Tensor | None
    diverged: bool = False
    epoch_end: bool = False
    done: bool = False
    val_acc: float | None = None
    test_acc: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
