"""Per-sample distillation quantities: every formula of the library lives here, once.

Shapes follow one convention: ``K`` teachers, ``B`` samples, ``C`` classes. Teacher logits are
stacked ``[K, B, C]``; per-sample, per-teacher results are ``[B, K]``. Everything is vectorised
over samples and teachers (no Python loop), and numerically safe (``log_softmax``, never
``log(softmax)``), so saturated logits give finite values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample against its label.

    Args:
        logits: ``[B, C]`` or stacked ``[K, B, C]``.
        labels: ``[B]`` integer labels.

    Returns:
        ``[B]`` for ``[B, C]`` logits, ``[B, K]`` for stacked logits.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    index = labels.view(*([1] * (logits.dim() - 2)), -1, 1).expand(*logits.shape[:-1], 1)
    ce = -log_probs.gather(-1, index).squeeze(-1)
    return ce.transpose(0, 1) if logits.dim() == 3 else ce


def per_sample_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits / temperature)`` per sample.

    Returns ``[B]`` for ``[B, C]`` logits, ``[B, K]`` for stacked ``[K, B, C]`` logits.
    """
    log_probs = F.log_softmax(logits / temperature, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return entropy.transpose(0, 1) if logits.dim() == 3 else entropy


def per_sample_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD per sample and teacher: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.

    This is MTKD-RL's ``DistillKL(unreduce=True)`` and CA-MKD's ``DistillKL(is_ca=True)``.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[K, B, C]`` (or ``[B, C]`` for one teacher).
        temperature: the softening temperature ``T``.

    Returns:
        ``[B, K]`` (``[B]`` for ``[B, C]`` teacher logits).
    """
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    kl = kl * temperature**2
    return kl.transpose(0, 1) if teacher_logits.dim() == 3 else kl


def per_sample_feature_mse(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNet-style MSE per sample: the mean over ``C, H, W`` of the squared difference -> ``[B]``."""
    return (student_map - teacher_map).pow(2).flatten(1).mean(1)


def feature_cosine(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per sample of two ``[B, D]`` embeddings -> ``[B]``."""
    return F.cosine_similarity(student_embedding, teacher_embedding, dim=1, eps=1e-8)


def weighted_teacher_sum(per_sample_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each sample's teacher-weighted loss ``sum_k w[b, k] * loss[b, k]`` -> ``[B]``.

    Args:
        per_sample_loss: ``[B, K]``.
        weights: ``[B, K]`` per-sample weights or ``[K]`` per-batch weights (broadcast).
    """
    return (per_sample_loss * weights).sum(1)


def weighted_teacher_loss(per_sample_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The one weighting convention of kd-env: ``mean_b sum_k w[b, k] * loss[b, k]``."""
    return weighted_teacher_sum(per_sample_loss, weights).mean()


def camkd_weights_from_ce(teacher_ce: torch.Tensor) -> torch.Tensor:
    """CA-MKD's confidence rule on given teacher cross-entropies ``[B, K]``:
    ``(1 - softmax_k(CE)) / (K - 1)``; ``K = 1`` gives weight 1.

    Shared by the CA-MKD rule (:func:`kd_env.baselines.rules.camkd_weights`) and MTKD-RL's
    confidence prior (whose state holds the CE), so it lives below both.
    """
    num_teachers = teacher_ce.shape[-1]
    if num_teachers == 1:
        return torch.ones_like(teacher_ce)
    return (1.0 - torch.softmax(teacher_ce, dim=-1)) / (num_teachers - 1)


def mixture_label_logprob(
    weights: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, normaliser: float
) -> torch.Tensor:
    """``[B]``: ``log sum_k w_ik softmax(z_ik / T)[y_i] / normaliser``, the log-probability the
    weighted teacher mixture gives each sample's label (``label_logprob`` on training samples,
    ``val_label_logprob`` on the validation probe's).

    Args:
        weights: ``[B, K]`` non-negative teacher weights; each row is renormalised to sum to one,
            and an all-zero row (no teacher) scores chance, ``-log(C) / normaliser``.
        teacher_logits: ``[K, B, C]``; labels: ``[B]``; temperature: the KD temperature ``T``.
    """
    weights = weights.detach().float()
    totals = weights.sum(dim=1, keepdim=True)
    mixture_weights = weights / totals.clamp_min(1e-12)
    # [K, B, C] -> each teacher's softened probability of the label: [B, K]
    log_probs = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    label_log_probs = log_probs.gather(2, labels.view(1, -1, 1).expand(log_probs.shape[0], -1, 1))
    label_log_probs = label_log_probs.squeeze(2).transpose(0, 1)
    # log sum_k w_k p_k(y), stably; log(0) = -inf terms drop out of the logsumexp
    mixture = torch.logsumexp(label_log_probs + torch.log(mixture_weights), dim=1)
    chance = torch.full_like(mixture, -math.log(teacher_logits.shape[-1]))
    mixture = torch.where(totals.squeeze(1) > 0, mixture, chance)
    return mixture / normaliser
