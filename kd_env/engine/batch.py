"""What the engine hands out: the prepared batch (:class:`StepBatch`) and what one update did
(:class:`StepResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepBatch:
    """Everything known about the prepared batch before the update. ``[B, K]`` per-sample tensors.

    Tensors marked "graph" still carry the student's autograd graph; the others are detached.
    The feature maps are the engine's own tensors of this batch's forward passes (references,
    never copies), there for policies whose weights read them (MMKD's feature network).
    """

    indices: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor  # [K, B, C]
    teacher_embeddings: list[torch.Tensor]  # K x [B, D_k]
    teacher_ce: torch.Tensor  # [B, K]
    teacher_entropy: torch.Tensor  # [B, K], at T = 1
    teacher_correct: torch.Tensor  # [B, K] float 0/1
    student_logits: torch.Tensor  # [B, C], graph
    student_ce: torch.Tensor  # [B], graph
    kd_loss: torch.Tensor  # [B, K], graph: T^2 KL(teacher || student)
    feature_mse: torch.Tensor | None  # [B, K], graph; None without feature KD
    feature_cosine: torch.Tensor | None  # [B, K]; None without feature KD
    feature_head_weights: torch.Tensor | None = None  # [B, K], graph; CA-MKD's feature weights
    # K x [B, C_k, H_k, W_k] float32, the teachers' last feature maps (from the teacher-output
    # store or the in-memory cache when the engine reads one); empty without feature KD
    teacher_feature_maps: list[torch.Tensor] = field(default_factory=list)
    student_feature_map: torch.Tensor | None = None  # [B, C, H, W], graph; None without feature KD

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class StepResult:
    """What one update did. Per-sample tensors are detached and on the engine's device."""

    loss: float
    student_ce: torch.Tensor  # [B]
    kd_loss: torch.Tensor  # [B, K]
    feature_mse: torch.Tensor | None  # [B, K]
    per_sample_loss: torch.Tensor  # [B]: CE + alpha * sum_k w KD + beta * sum_k w MSE
    logit_weights: torch.Tensor  # [B, K] as applied
    feature_weights: torch.Tensor | None
    diverged: bool = False
    epoch_end: bool = False
    done: bool = False
    val_acc: float | None = None
    test_acc: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
