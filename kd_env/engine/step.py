"""The engine's training step, as arithmetic: the prepared batch and the weighted loss.

:func:`prepare_batch` runs the forward passes of batch t (teachers from the
:class:`~kd_env.engine.teacher_source.TeacherOutputSource`, the student with its autograd graph
kept) and computes every per-sample quantity once, into a :class:`StepBatch`;
:func:`weighted_loss` turns a policy's teacher weights into the loss of that batch and the
:class:`StepResult` that reports it. The update itself (optimizer, rollback, epoch ends) is the
:class:`~kd_env.engine.engine.DistillationEngine`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from kd_env.engine.adapters import match_teacher_map
from kd_env.engine.batch import StepBatch, StepResult
from kd_env.engine.config import EngineConfig
from kd_env.engine.losses import (
    feature_cosine,
    per_sample_cross_entropy,
    per_sample_entropy,
    per_sample_feature_mse,
    per_sample_kd_loss,
    weighted_teacher_sum,
)
from kd_env.engine.teacher_source import TeacherOutputSource
from kd_env.models import KDModel


def prepare_batch(
    student: KDModel,
    adapters: nn.ModuleList,
    teachers: TeacherOutputSource,
    config: EngineConfig,
    indices: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    student_format: torch.memory_format,
    *,
    rows: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> StepBatch:
    """Forward passes and per-sample quantities of the training samples ``indices`` (pixels
    ``images``, already transformed; ``labels`` ``None`` in the label-free regime). With fixed
    augmented views, ``views`` are the samples' views and ``rows`` their kept teacher rows."""
    teacher_logits, teacher_embeddings, teacher_maps = teachers.outputs_for(indices, images, rows)
    student_output = student.forward_all(images.contiguous(memory_format=student_format))
    teacher_ce = teacher_correct = student_ce = None
    with torch.no_grad():
        if labels is not None:
            teacher_ce = per_sample_cross_entropy(teacher_logits, labels)
            teacher_correct = (teacher_logits.argmax(-1) == labels).transpose(0, 1).float()
        teacher_entropy = per_sample_entropy(teacher_logits)
    if labels is not None:
        student_ce = per_sample_cross_entropy(student_output.logits, labels)
    feature_mse = cosine = head_weights = None
    if config.feature_kd:
        adapted = [adapter(student_output.feature_map) for adapter in adapters]
        # one loop over teachers is unavoidable here: each adapter has its own channel count
        feature_mse = torch.stack([per_sample_feature_mse(a, match_teacher_map(t, a)) for a, t in zip(adapted, teacher_maps)], dim=1)
        with torch.no_grad():
            cosine = torch.stack([feature_cosine(a.mean(dim=(2, 3)), e) for a, e in zip(adapted, teacher_embeddings)], dim=1)
        if config.feature_term == "camkd":
            assert labels is not None  # EngineConfig.check refuses camkd with label_free
            head_weights = camkd_feature_weights(teachers.teachers, adapted, labels)
    return StepBatch(
        indices=indices,
        _labels=labels,
        teacher_logits=teacher_logits,
        teacher_embeddings=teacher_embeddings,
        _teacher_ce=teacher_ce,
        teacher_entropy=teacher_entropy,
        _teacher_correct=teacher_correct,
        student_logits=student_output.logits,
        _student_ce=student_ce,
        kd_loss=per_sample_kd_loss(student_output.logits, teacher_logits, config.temperature),
        feature_mse=feature_mse,
        feature_cosine=cosine,
        feature_head_weights=head_weights,
        # references to what the step already computed: no extra pass, no copy
        teacher_feature_maps=teacher_maps if config.feature_kd else [],
        student_feature_map=student_output.feature_map if config.feature_kd else None,
        views=views,
        teacher_rows=rows,
    )


def camkd_feature_weights(teachers: list[KDModel], adapted: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """CA-MKD's feature-level weights ``[B, K]`` (graph kept, as in the authors' code): the
    confidence of teacher k's head on the student's map adapted to teacher k."""
    # each teacher's head is frozen, but its input carries the student's graph
    head_ce = torch.stack(
        [per_sample_cross_entropy(teacher.head_logits(a), labels) for teacher, a in zip(teachers, adapted)],
        dim=1,
    )
    return (1.0 - torch.softmax(head_ce, dim=1)) / (len(teachers) - 1)


def weighted_loss(
    batch: StepBatch,
    logit_weights: torch.Tensor,
    feature_weights: torch.Tensor,
    config: EngineConfig,
    epoch: int,
) -> tuple[torch.Tensor, StepResult]:
    """The loss of ``batch`` under the (checked, ``[B, K]``) teacher weights, with its graph, and
    the :class:`StepResult` reporting it (``diverged`` when the loss is not finite)."""
    kd_term = config.alpha * config.kd_scale * weighted_teacher_sum(batch.kd_loss, logit_weights)
    # label-free: the teachers are the only teaching signal, no CE term
    per_sample_loss = kd_term if config.label_free else batch.student_ce + kd_term
    if batch.feature_head_weights is not None:
        feature_weights = batch.feature_head_weights  # CA-MKD's own feature weights, with their graph
    if batch.feature_mse is not None and epoch >= config.feature_kd_from_epoch:
        per_sample_loss = per_sample_loss + config.beta * weighted_teacher_sum(batch.feature_mse, feature_weights)
    loss = per_sample_loss.mean()
    result = StepResult(
        loss=float(loss.detach()),
        student_ce=None if config.label_free else batch.student_ce.detach(),
        kd_loss=batch.kd_loss.detach(),
        feature_mse=None if batch.feature_mse is None else batch.feature_mse.detach(),
        per_sample_loss=per_sample_loss.detach(),
        logit_weights=logit_weights,
        feature_weights=feature_weights.detach() if batch.feature_mse is not None else None,
        diverged=not bool(torch.isfinite(loss)),
    )
    return loss, result
