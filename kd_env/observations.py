"""Observation builders: the batch-level summary and MTKD-RL's per-sample state, with names.

Both read a prepared :class:`~kd_env.engine.StepBatch`, so the quantities the engine computed
once (teacher CE, entropy, KL to the student, feature cosine) are reused, never recomputed.

Features come in two groups, as in the paper's state ablation (Table 6b):

* ``"performance"``: how good each teacher is on the sample(s): teacher CE against the label,
  accuracy, entropy (batch level); CE, pooled embedding, logits (per sample).
* ``"gap"``: how far the student is from each teacher: KL(teacher || student) at T, and the
  cosine similarity of the adapted student feature to the teacher embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kd_env.engine import StepBatch

STATE_PARTS = ("performance", "gap")

# Finite bounds of the batch-level features (the checkers ask for finite Box bounds); values are
# clipped into them. Losses above these are far outside any healthy training run.
MAX_LOSS = 50.0
MAX_KD = 500.0


def _check_parts(state_parts: Sequence[str]) -> tuple[str, ...]:
    parts = tuple(state_parts)
    unknown = set(parts) - set(STATE_PARTS)
    if not parts or unknown:
        raise ValueError(f"state_parts must be a non-empty subset of {STATE_PARTS}, got {parts}")
    return parts


@dataclass(frozen=True)
class BatchFeatureSpec:
    """Names and bounds of the batch-level observation.

    Args:
        teacher_names: one name per teacher.
        num_classes: classes of the task (bounds the entropy).
        feature_kd: whether the cosine feature exists (it needs the feature adapters).
        state_parts: which groups to include.
    """

    teacher_names: tuple[str, ...]
    num_classes: int
    feature_kd: bool
    state_parts: tuple[str, ...] = STATE_PARTS

    def per_teacher(self) -> list[tuple[str, float, float]]:
        """(name, low, high) of each per-teacher feature, in observation order."""
        columns: list[tuple[str, float, float]] = []
        if "performance" in self.state_parts:
            columns += [
                ("teacher_ce", 0.0, MAX_LOSS),
                ("teacher_acc", 0.0, 1.0),
                ("teacher_entropy", 0.0, math.log(self.num_classes)),
            ]
        if "gap" in self.state_parts:
            columns.append(("kd_loss", 0.0, MAX_KD))
            if self.feature_kd:
                columns.append(("feature_cosine", -1.0, 1.0))
        return columns

    @property
    def names(self) -> list[str]:
        names = [f"{teacher}/{column}" for teacher in self.teacher_names for column, _, _ in self.per_teacher()]
        return names + ["progress", "lr", "student_ce"]

    def bounds(self, max_lr: float) -> tuple[np.ndarray, np.ndarray]:
        per_teacher = self.per_teacher()
        low = [low for _ in self.teacher_names for _, low, _ in per_teacher] + [0.0, 0.0, 0.0]
        high = [high for _ in self.teacher_names for _, _, high in per_teacher] + [1.0, max_lr, MAX_LOSS]
        return np.asarray(low, dtype=np.float32), np.asarray(high, dtype=np.float32)


def batch_features(batch: StepBatch, spec: BatchFeatureSpec, *, progress: float, lr: float, max_lr: float) -> np.ndarray:
    """The batch-level observation: per-teacher batch means, then progress, LR and student CE."""
    columns: list[torch.Tensor] = []
    if "performance" in spec.state_parts:
        columns += [batch.teacher_ce.mean(0), batch.teacher_correct.mean(0), batch.teacher_entropy.mean(0)]
    if "gap" in spec.state_parts:
        columns.append(batch.kd_loss.detach().mean(0))
        if spec.feature_kd:
            assert batch.feature_cosine is not None
            columns.append(batch.feature_cosine.mean(0))
    per_teacher = torch.stack(columns, dim=1).flatten()  # teacher-major, as in spec.names
    extra = torch.tensor([progress, lr, float(batch.student_ce.detach().mean())], dtype=per_teacher.dtype, device=per_teacher.device)
    observation = torch.cat([per_teacher, extra]).float().cpu().numpy()
    low, high = spec.bounds(max_lr)
    # per-column replacement values: numpy broadcasts array nan/posinf/neginf, its stubs only take floats
    return np.clip(np.nan_to_num(observation, nan=high, posinf=high, neginf=low), low, high).astype(np.float32)  # type: ignore[call-overload]


@dataclass(frozen=True)
class SampleStateSpec:
    """Layout of MTKD-RL's per-sample state: per teacher ``[cos, KL, CE, embedding, logits]``.

    Args:
        teacher_names: one name per teacher.
        embedding_dims: each teacher's embedding size.
        num_classes: classes of the task.
        feature_kd: whether the cosine feature exists.
        include_embeddings: keep the teacher embeddings (the largest part of the state).
        logits: ``"all"`` for the raw logits, an int ``k`` for the k largest (sorted), or
            ``None`` to drop them.
        state_parts: which groups to include.
    """

    teacher_names: tuple[str, ...]
    embedding_dims: tuple[int, ...]
    num_classes: int
    feature_kd: bool
    include_embeddings: bool = True
    logits: str | int | None = "all"
    state_parts: tuple[str, ...] = STATE_PARTS

    def _num_logits(self) -> int:
        if self.logits is None:
            return 0
        if self.logits == "all":
            return self.num_classes
        if isinstance(self.logits, int) and 0 < self.logits <= self.num_classes:
            return self.logits
        raise ValueError(f"logits must be 'all', None or an int in [1, {self.num_classes}], got {self.logits!r}")

    @property
    def names(self) -> list[str]:
        names: list[str] = []
        for teacher, dim in zip(self.teacher_names, self.embedding_dims):
            if "gap" in self.state_parts:
                if self.feature_kd:
                    names.append(f"{teacher}/feature_cosine")
                names.append(f"{teacher}/kd_loss")
            if "performance" in self.state_parts:
                names.append(f"{teacher}/teacher_ce")
                if self.include_embeddings:
                    names += [f"{teacher}/embedding{i}" for i in range(dim)]
                names += [f"{teacher}/logit{i}" for i in range(self._num_logits())]
        return names

    @property
    def size(self) -> int:
        return len(self.names)


def per_sample_state(batch: StepBatch, spec: SampleStateSpec, clip: float) -> torch.Tensor:
    """The per-sample observation ``[B, D]`` (float32, detached, clipped to ``[-clip, clip]``).

    Raw values, as in the official code (no normalisation), except the clip that gives the
    observation space finite bounds.
    """
    rows: list[torch.Tensor] = []
    num_logits = spec._num_logits()
    for k in range(len(spec.teacher_names)):
        if "gap" in spec.state_parts:
            if spec.feature_kd:
                assert batch.feature_cosine is not None
                rows.append(batch.feature_cosine[:, k : k + 1])
            rows.append(batch.kd_loss.detach()[:, k : k + 1])
        if "performance" in spec.state_parts:
            rows.append(batch.teacher_ce[:, k : k + 1])
            if spec.include_embeddings:
                rows.append(batch.teacher_embeddings[k])
            if num_logits == spec.num_classes:
                rows.append(batch.teacher_logits[k])
            elif num_logits:
                rows.append(batch.teacher_logits[k].topk(num_logits, dim=1).values)
    state = torch.cat(rows, dim=1).float()
    return torch.nan_to_num(state, nan=clip, posinf=clip, neginf=-clip).clamp_(-clip, clip)
