"""Observation builders: the batch-level summary and MTKD-RL's per-sample state, with names.

Both read a prepared :class:`~kd_env.engine.StepBatch`, so the quantities the engine computed
once (teacher CE, entropy, KL to the student, feature cosine) are reused, never recomputed.

Features come in two groups, as in the paper's state ablation (Table 6b):

* ``"performance"``: how good each teacher is on the sample(s): teacher CE against the label,
  accuracy, entropy (batch level); CE, pooled embedding, logits (per sample).
* ``"gap"``: how far the student is from each teacher: KL(teacher || student) at T, and the
  cosine similarity of the adapted student feature to the teacher embedding.
* ``"agreement"`` (opt in, issue #23): how much the other teachers back each teacher's
  prediction (:func:`teacher_agreement`), a label-free column that names no class and no
  teacher, so a policy that reads it can be used on another pool.

In the label-free regime (``label_free=True`` in the specs, the envs' ``labels="none"``) every
column that reads a training label is absent, not zeroed: teacher CE and accuracy and the
student's CE (batch level), teacher CE (per sample). The names and the observation space shrink
with them, so a policy that looks a column up by name fails at construction, not later.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kd_env.engine import StepBatch

STATE_PARTS = ("performance", "gap", "agreement")
DEFAULT_STATE_PARTS = ("performance", "gap")

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
        label_free: drop the columns that read a training label (``teacher_ce``,
            ``teacher_acc``, ``student_ce``).
    """

    teacher_names: tuple[str, ...]
    num_classes: int
    feature_kd: bool
    state_parts: tuple[str, ...] = DEFAULT_STATE_PARTS
    label_free: bool = False

    def per_teacher(self) -> list[tuple[str, float, float]]:
        """(name, low, high) of each per-teacher feature, in observation order."""
        columns: list[tuple[str, float, float]] = []
        if "performance" in self.state_parts:
            if not self.label_free:
                columns += [("teacher_ce", 0.0, MAX_LOSS), ("teacher_acc", 0.0, 1.0)]
            columns.append(("teacher_entropy", 0.0, math.log(self.num_classes)))
        if "gap" in self.state_parts:
            columns.append(("kd_loss", 0.0, MAX_KD))
            if self.feature_kd:
                columns.append(("feature_cosine", -1.0, 1.0))
        if "agreement" in self.state_parts:
            columns.append(("agreement", 0.0, 1.0))
        return columns

    def _extra(self, max_lr: float) -> list[tuple[str, float, float]]:
        """(name, low, high) of the training-state features after the per-teacher ones."""
        extra = [("progress", 0.0, 1.0), ("lr", 0.0, max_lr)]
        return extra if self.label_free else [*extra, ("student_ce", 0.0, MAX_LOSS)]

    @property
    def names(self) -> list[str]:
        names = [f"{teacher}/{column}" for teacher in self.teacher_names for column, _, _ in self.per_teacher()]
        return names + [name for name, _, _ in self._extra(1.0)]

    def bounds(self, max_lr: float) -> tuple[np.ndarray, np.ndarray]:
        per_teacher = self.per_teacher()
        low = [low for _ in self.teacher_names for _, low, _ in per_teacher] + [low for _, low, _ in self._extra(max_lr)]
        high = [high for _ in self.teacher_names for _, _, high in per_teacher] + [high for _, _, high in self._extra(max_lr)]
        return np.asarray(low, dtype=np.float32), np.asarray(high, dtype=np.float32)


def batch_features(batch: StepBatch, spec: BatchFeatureSpec, *, progress: float, lr: float, max_lr: float) -> np.ndarray:
    """The batch-level observation: per-teacher batch means, then progress, LR and student CE
    (the label-based columns only where ``spec`` has them: not ``label_free``)."""
    columns: list[torch.Tensor] = []
    if "performance" in spec.state_parts:
        if not spec.label_free:
            columns += [batch.teacher_ce.mean(0), batch.teacher_correct.mean(0)]
        columns.append(batch.teacher_entropy.mean(0))
    if "gap" in spec.state_parts:
        columns.append(batch.kd_loss.detach().mean(0))
        if spec.feature_kd:
            assert batch.feature_cosine is not None
            columns.append(batch.feature_cosine.mean(0))
    if "agreement" in spec.state_parts:
        columns.append(teacher_agreement(batch.teacher_logits).mean(0))
    per_teacher = torch.stack(columns, dim=1).flatten()  # teacher-major, as in spec.names
    extra_values = [progress, lr] if spec.label_free else [progress, lr, float(batch.student_ce.detach().mean())]
    extra = torch.tensor(extra_values, dtype=per_teacher.dtype, device=per_teacher.device)
    observation = torch.cat([per_teacher, extra]).float().cpu().numpy()
    low, high = spec.bounds(max_lr)
    # per-column replacement values: numpy broadcasts array nan/posinf/neginf, its stubs only take floats
    return np.clip(np.nan_to_num(observation, nan=high, posinf=high, neginf=low), low, high).astype(np.float32)  # type: ignore[call-overload]  # numpy applies array nan/posinf/neginf per column; its stubs type them as floats


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
        label_free: drop the teacher CE columns (they read the training labels).
    """

    teacher_names: tuple[str, ...]
    embedding_dims: tuple[int, ...]
    num_classes: int
    feature_kd: bool
    include_embeddings: bool = True
    logits: str | int | None = "all"
    state_parts: tuple[str, ...] = DEFAULT_STATE_PARTS
    label_free: bool = False

    def _num_logits(self) -> int:
        if self.logits is None:
            return 0
        if self.logits == "all":
            return self.num_classes
        if isinstance(self.logits, int) and 0 < self.logits <= self.num_classes:
            return self.logits
        raise ValueError(f"logits must be 'all', None or an int in [1, {self.num_classes}], got {self.logits!r}")

    def _columns(self) -> list[tuple[str, bool]]:
        """(name, depends on the student) of every column, in state order."""
        columns: list[tuple[str, bool]] = []
        for teacher, dim in zip(self.teacher_names, self.embedding_dims):
            if "gap" in self.state_parts:
                if self.feature_kd:
                    columns.append((f"{teacher}/feature_cosine", True))
                columns.append((f"{teacher}/kd_loss", True))
            if "performance" in self.state_parts:
                if not self.label_free:
                    columns.append((f"{teacher}/teacher_ce", False))
                if self.include_embeddings:
                    columns += [(f"{teacher}/embedding{i}", False) for i in range(dim)]
                columns += [(f"{teacher}/logit{i}", False) for i in range(self._num_logits())]
            if "agreement" in self.state_parts:
                columns.append((f"{teacher}/agreement", False))
        return columns

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._columns()]

    @property
    def size(self) -> int:
        return len(self._columns())

    @property
    def student_columns(self) -> list[int]:
        """Positions of the columns that depend on the student (the ``gap`` group: cosine, KL);
        the others are the teachers' alone (a function of the sample where no augmentation runs)."""
        return [position for position, (_, of_student) in enumerate(self._columns()) if of_student]


def per_sample_state(batch: StepBatch, spec: SampleStateSpec, clip: float) -> torch.Tensor:
    """The per-sample observation ``[B, D]`` (float32, detached, clipped to ``[-clip, clip]``).

    Raw values, as in the official code (no normalisation), except the clip that gives the
    observation space finite bounds.
    """
    return sample_state(
        spec,
        clip,
        feature_cosine=batch.feature_cosine,
        kd_loss=batch.kd_loss.detach(),
        teacher_ce=None if spec.label_free else batch.teacher_ce,
        teacher_embeddings=batch.teacher_embeddings,
        teacher_logits=batch.teacher_logits,
    )


def sample_state(
    spec: SampleStateSpec,
    clip: float,
    *,
    feature_cosine: torch.Tensor | None,
    kd_loss: torch.Tensor,
    teacher_ce: torch.Tensor | None,
    teacher_embeddings: Sequence[torch.Tensor],
    teacher_logits: torch.Tensor,
) -> torch.Tensor:
    """:func:`per_sample_state` from its parts: the student-teacher gaps ``feature_cosine`` and
    ``kd_loss`` ``[B, K]``, the teachers' ``teacher_ce`` ``[B, K]`` (``None`` where
    ``spec.label_free``), embeddings and logits ``[K, B, C]``.

    Every operation is elementwise or per row, so a row depends on that sample's values alone.
    """
    rows: list[torch.Tensor] = []
    num_logits = spec._num_logits()
    agreement = teacher_agreement(teacher_logits) if "agreement" in spec.state_parts else None
    for k in range(len(spec.teacher_names)):
        if "gap" in spec.state_parts:
            if spec.feature_kd:
                assert feature_cosine is not None
                rows.append(feature_cosine[:, k : k + 1])
            rows.append(kd_loss[:, k : k + 1])
        if "performance" in spec.state_parts:
            if not spec.label_free:
                assert teacher_ce is not None
                rows.append(teacher_ce[:, k : k + 1])
            if spec.include_embeddings:
                rows.append(teacher_embeddings[k])
            if num_logits == spec.num_classes:
                rows.append(teacher_logits[k])
            elif num_logits:
                rows.append(teacher_logits[k].topk(num_logits, dim=1).values)
        if agreement is not None:
            rows.append(agreement[:, k : k + 1])
    state = torch.cat(rows, dim=1).float()
    return torch.nan_to_num(state, nan=clip, posinf=clip, neginf=-clip).clamp_(-clip, clip)


def teacher_agreement(teacher_logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: for each teacher k, the mean probability the *other* teachers give the class
    teacher k predicts, ``mean_{j != k} softmax(z_j)[argmax z_k]`` (0 with one teacher).

    Label-free and class-free: it says whether a teacher's prediction is backed by the pool,
    which is what separates right from wrong teachers where the wrong ones disagree among
    themselves (relabelled teachers, specialists outside their classes).
    """
    num_teachers = teacher_logits.shape[0]
    if num_teachers == 1:
        return teacher_logits.new_zeros(teacher_logits.shape[1], 1)
    probabilities = torch.softmax(teacher_logits.float(), dim=-1)  # [K, B, C]
    predicted = teacher_logits.argmax(dim=-1)  # [K, B]
    # [k, j, B]: teacher j's probability of teacher k's predicted class
    backing = (
        probabilities.unsqueeze(0)
        .expand(num_teachers, -1, -1, -1)
        .gather(3, predicted[:, None, :, None].expand(-1, num_teachers, -1, 1))[..., 0]
    )
    own = backing.diagonal(dim1=0, dim2=1).transpose(0, 1)  # [K, B]: p_k(argmax z_k)
    return ((backing.sum(dim=1) - own) / (num_teachers - 1)).transpose(0, 1)


def state_digest(states: np.ndarray) -> int:
    """CRC-32 of a batch of states' exact float32 bytes: a rebuild that differs in one bit is
    caught (a check against mix-ups, not against tampering; 4x cheaper than a cryptographic hash,
    and it runs on every stored batch)."""
    return zlib.crc32(np.ascontiguousarray(states, dtype=np.float32).data)


@dataclass(frozen=True)
class CompactStates:
    """A batch of per-sample states, kept as what only the step knew: the samples' rows in the
    training set and the student-dependent columns (cosine, KL). The teachers' columns are read
    again from the teacher-output store when the states are rebuilt
    (:meth:`~kd_env.envs.per_sample_env.PerSampleKDVectorEnv.expand_states`); ``digest`` is the
    observed states', so a rebuild that differs in one bit is detected.

    Why: MTKD-RL's agent keeps every state of an epoch for its update. Whole, that is
    ``batches x B x state_dim`` floats (101 MB for a Fashion-MNIST epoch with the default pool);
    compact, ``B x (1 + 2 K)`` numbers per batch (2.2 MB). CIFAR-100 (340 MB) trains with
    augmentation, so its states stay whole, unless it trains on fixed views (``augment_views``,
    issue #27): then ``indices`` are the samples' views' rows in the store (``image * V + view``).
    """

    indices: torch.Tensor  # [B] int64, CPU
    student_columns: torch.Tensor  # [B, G] float32, CPU: the observed values
    digest: int

    @property
    def nbytes(self) -> int:
        return int(self.indices.nbytes + self.student_columns.nbytes)

    def state_dict(self) -> dict[str, Any]:
        return {"indices": self.indices, "student_columns": self.student_columns, "digest": self.digest}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CompactStates:
        return cls(state["indices"], state["student_columns"], int(state["digest"]))
