"""Independent reference computations for the env, reward, observation and engine tests.

Every number here is recomputed from the networks themselves (the frozen teachers, a copy of the
student and of its feature adapters) and the raw uint8 images, with plain torch functions and
never with kd_env's loss, observation or reward code. A test that compares the library with
these numbers therefore fails when a formula, a column or a per-sample index goes wrong, which a
test reading the engine's own intermediate tensors cannot show.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kd_env.engine import DistillationEngine


@dataclass(frozen=True)
class ReferenceBatch:
    """The prepared batch's per-sample quantities, recomputed; ``[B, K]`` unless noted (float64)."""

    labels: torch.Tensor  # [B]
    teacher_logits: torch.Tensor  # [K, B, C]
    teacher_embeddings: list[torch.Tensor]  # K x [B, D_k]
    student_logits: torch.Tensor  # [B, C]
    student_ce: torch.Tensor  # [B]
    teacher_ce: torch.Tensor
    teacher_entropy: torch.Tensor  # at T = 1
    teacher_correct: torch.Tensor  # 0/1
    kl: torch.Tensor  # T^2 KL(teacher || student) at T
    feature_mse: torch.Tensor | None  # adapted student map vs teacher map; None without adapters
    cosine: torch.Tensor | None  # pooled adapted student map vs teacher embedding


def normalise(engine: DistillationEngine, images: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel: what the student and the teachers see."""
    mean = torch.tensor(engine.data.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(engine.data.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample CE, ``[B]``."""
    return F.cross_entropy(logits.double(), labels, reduction="none")


@torch.no_grad()
def reference_batch(engine: DistillationEngine, temperature: float) -> ReferenceBatch:
    """Recompute everything about ``engine.current`` (the batch the next update trains on).

    Only the sample indices are read from the prepared batch (which samples the data order
    drew). The student and its adapters are deep copies in train mode, so their BatchNorm uses
    the batch's statistics, as the engine's forward did, and the engine's running statistics are
    not touched.
    """
    assert engine.current is not None, "reset the engine first"
    indices = engine.current.indices
    labels = engine.data.train_labels[indices]
    images = normalise(engine, engine.data.train_images[indices])
    teacher_outputs = [teacher.forward_all(images) for teacher in engine.teachers]
    teacher_logits = torch.stack([output.logits for output in teacher_outputs]).double()
    assert engine.student is not None and engine.adapters is not None
    student = copy.deepcopy(engine.student).train()
    student_output = student.forward_all(images)
    student_logits = student_output.logits.double()

    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(student_log_probs.expand_as(teacher_log_probs), teacher_log_probs, reduction="none", log_target=True).sum(-1)
    feature_mse = cosine = None
    if len(engine.adapters) > 0:
        adapters = copy.deepcopy(engine.adapters).train()
        adapted = [adapter(student_output.feature_map).double() for adapter in adapters]
        feature_mse = torch.stack(
            [(a - output.feature_map.double()).pow(2).mean(dim=(1, 2, 3)) for a, output in zip(adapted, teacher_outputs)], dim=1
        )
        pooled = [a.mean(dim=(2, 3)) for a in adapted]
        cosine = torch.stack(
            [
                (p * output.embedding.double()).sum(1) / (p.norm(dim=1) * output.embedding.double().norm(dim=1))
                for p, output in zip(pooled, teacher_outputs)
            ],
            dim=1,
        )
    return ReferenceBatch(
        labels=labels,
        teacher_logits=teacher_logits,
        teacher_embeddings=[output.embedding.double() for output in teacher_outputs],
        student_logits=student_logits,
        student_ce=cross_entropy(student_logits, labels),
        teacher_ce=torch.stack([cross_entropy(logits, labels) for logits in teacher_logits], dim=1),
        teacher_entropy=torch.distributions.Categorical(logits=teacher_logits).entropy().transpose(0, 1),
        teacher_correct=(teacher_logits.argmax(-1) == labels).double().transpose(0, 1),
        kl=temperature**2 * kl.transpose(0, 1),
        feature_mse=feature_mse,
        cosine=cosine,
    )


def per_sample_loss(
    reference: ReferenceBatch,
    logit_weights: torch.Tensor,
    feature_weights: torch.Tensor | None,
    *,
    alpha: float,
    kd_scale: float,
    beta: float,
) -> torch.Tensor:
    """The documented loss of each sample: ``CE + alpha * kd_scale * sum_k w_k KL_k + beta * sum_k v_k MSE_k``."""
    loss = reference.student_ce + alpha * kd_scale * (logit_weights.double() * reference.kl).sum(1)
    if reference.feature_mse is not None:
        assert feature_weights is not None
        loss = loss + beta * (feature_weights.double() * reference.feature_mse).sum(1)
    return loss


@torch.no_grad()
def evaluate(
    engine: DistillationEngine, split: str, limit: int | None = None, state: dict[str, torch.Tensor] | None = None
) -> tuple[float, float]:
    """Top-1 accuracy and mean CE of a copy of the student (with ``state`` loaded, if given), in
    eval mode, on a split's first ``limit`` samples (all by default)."""
    assert engine.student is not None
    student = copy.deepcopy(engine.student)
    if state is not None:
        student.load_state_dict(state)
    images = getattr(engine.data, f"{split}_images")[:limit]
    labels = getattr(engine.data, f"{split}_labels")[:limit]
    logits = student.eval()(normalise(engine, images))
    return float((logits.argmax(1) == labels).double().mean()), float(cross_entropy(logits, labels).mean())
