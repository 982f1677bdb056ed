"""The classic teacher-weighting rules of multi-teacher KD, as pure tensor functions.

Shapes follow the library convention: ``K`` teachers, ``B`` samples, ``C`` classes; teacher
logits are stacked ``[K, B, C]``, student logits are ``[B, C]``, labels ``[B]``. Every rule
returns weights on the simplex: ``[B, K]`` per sample or ``[K]`` per batch (except the no-KD
reference, :func:`no_kd_weights`, which is all zeros). The rules are
vectorised over samples and teachers and stay finite for saturated logits (``+-1e4``).

Sources (see ``reference/baselines.md``): the official CA-MKD repository (``Rorozhl/CA-MKD``,
``helper/loops.py``), which also holds the re-implementations of AVER and EBKD that the CIFAR-100
literature runs, and the official AE-KD repository (``AnTuo1998/AE-KD``,
``helper/optimization.py``). Where the original loss uses weights that do not sum to one, the
rule here is renormalised to the simplex and :func:`kd_scale_for` gives the factor that
restores the original loss magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from kd_env.engine.losses import camkd_weights_from_ce, per_sample_cross_entropy, per_sample_entropy

from .capped_simplex import capped_simplex_min_norm, capped_simplex_min_norm_exact, project_capped_simplex

__all__ = [
    "aekd_weights",
    "aver_weights",
    "best_teacher_weights",
    "camkd_weights",
    "camkd_weights_from_ce",
    "capped_simplex_min_norm",
    "capped_simplex_min_norm_exact",
    "ce_route_weights",
    "ce_softmax_weights",
    "class_accuracies",
    "ebkd_weights",
    "kd_scale_for",
    "no_kd_weights",
    "oracle_weights",
    "project_capped_simplex",
    "random_dirichlet_weights",
]


def _check_teacher_logits(teacher_logits: torch.Tensor) -> int:
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be stacked [K, B, C], got shape {tuple(teacher_logits.shape)}")
    if teacher_logits.shape[0] < 1:
        raise ValueError("teacher_logits holds no teacher (K = 0)")
    return int(teacher_logits.shape[0])


# ------------------------------------------------------------------------------------------------
# AVER, EBKD, CA-MKD: closed-form rules
# ------------------------------------------------------------------------------------------------


def aver_weights(
    num_teachers: int,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """AVER: equal weights ``w_k = 1/K``.

    Source: CA-MKD repo, ``ensemble_method == "AVERAGE_LOSS"`` (mean over teachers of the KD loss).

    Returns:
        ``[K]`` if ``batch_size`` is None, else ``[B, K]``.
    """
    if num_teachers < 1:
        raise ValueError(f"num_teachers must be >= 1, got {num_teachers}")
    shape = (num_teachers,) if batch_size is None else (batch_size, num_teachers)
    return torch.full(shape, 1.0 / num_teachers, device=device, dtype=dtype)


def ebkd_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """EBKD: lower-entropy teachers get more weight, per sample.

    ``H_bk`` is the entropy of ``softmax(z_k)`` at ``T = 1``; ``w_bk = (1 - H_bk / sum_j H_bj) / (K - 1)``.
    Source: the CA-MKD repo's EBKD branch (``helper/loops.py``), which uses ``1 - H_k / sum_j H_j``
    (summing to ``K - 1``); dividing by ``K - 1`` puts it on the simplex, and
    ``kd_scale_for("ebkd", K)`` restores the original magnitude.

    Edge cases: ``K = 1`` gives weight 1. A sample where every teacher has zero entropy
    (saturated one-hot predictions, where the original formula is 0/0) gets uniform weights;
    so do identical teachers, by the formula itself.

    Args:
        teacher_logits: ``[K, B, C]``.

    Returns:
        ``[B, K]``.
    """
    num_teachers = _check_teacher_logits(teacher_logits)
    batch_size = teacher_logits.shape[1]
    if num_teachers == 1:
        return teacher_logits.new_ones(batch_size, 1)
    entropy = per_sample_entropy(teacher_logits, temperature=1.0)  # [B, K]
    total = entropy.sum(dim=1, keepdim=True)
    positive = total > 0
    ratio = entropy / torch.where(positive, total, torch.ones_like(total))
    weights = (1.0 - ratio) / (num_teachers - 1)
    return torch.where(positive, weights, torch.full_like(weights, 1.0 / num_teachers))


def camkd_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CA-MKD: confidence-aware weights from each teacher's cross-entropy with the label, per sample.

    ``w_bk = (1 - softmax_k(CE_b.)_k) / (K - 1)`` with ``CE_bk = -log softmax(z_k)_b[y_b]`` at ``T = 1``.
    Source: CA-MKD repo, ``helper/loops.py`` (branch ``CAMKD``). The original divides by zero
    for ``K = 1``; here ``K = 1`` gives weight 1.

    Args:
        teacher_logits: ``[K, B, C]``.
        labels: ``[B]`` integer labels.

    Returns:
        ``[B, K]``.
    """
    _check_teacher_logits(teacher_logits)
    return camkd_weights_from_ce(per_sample_cross_entropy(teacher_logits, labels))


# ------------------------------------------------------------------------------------------------
# Label-confidence rules: the strongest simple rules wherever the training labels can be read
# ------------------------------------------------------------------------------------------------
#
# With the label in hand, the teacher that is right on a sample is the one with the lowest
# cross-entropy on it. These two rules say so in one line each; no published MTKD method uses
# them as such (CA-MKD's ``1 - softmax(CE)`` is a far flatter cousin), but they are the bar that a
# learned weighting which reads the same columns (the CE on the label) must clear: a reward
# that is a function of the observation (``label_logprob``) is maximised by them greedily.


def ce_softmax_weights(teacher_ce: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``softmax_k(-CE_k / tau)``: teachers with a lower cross-entropy on the label weigh more.

    ``tau -> 0`` tends to :func:`ce_route_weights`; ``tau -> inf`` to equal weights. At ``tau = 1``
    the weight of teacher ``k`` is proportional to the probability it gives the true label.

    Args:
        teacher_ce: ``[B, K]`` per sample (one row per sample) or ``[K]`` (one vector, e.g. the
            batch's mean cross-entropy per teacher).
        tau: temperature, a finite number > 0.

    Returns:
        the weights, shaped like ``teacher_ce``, on the simplex along the last dimension.
    """
    if not tau > 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    return torch.softmax(-teacher_ce / tau, dim=-1)


def ce_route_weights(teacher_ce: torch.Tensor) -> torch.Tensor:
    """Hard routing: all weight on the teacher with the lowest cross-entropy on the label; teachers
    tied at the minimum share it equally.

    Args:
        teacher_ce: ``[B, K]`` or ``[K]`` (see :func:`ce_softmax_weights`).

    Returns:
        the weights, shaped like ``teacher_ce``, on the simplex along the last dimension.
    """
    lowest = teacher_ce.min(dim=-1, keepdim=True).values
    chosen = (teacher_ce == lowest).to(teacher_ce.dtype)
    return chosen / chosen.sum(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------------
# AEKD: min-norm point of the capped convex hull of the teachers' KD gradients (the solvers are
# in capped_simplex.py)
# ------------------------------------------------------------------------------------------------


def aekd_weights(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 4.0,
    cap: float = 0.6,
) -> torch.Tensor:
    """AEKD ("Agree to Disagree"): the min-norm convex combination of the teachers' KD gradients.

    ``g_k = mean_b(softmax(z_s/T) - softmax(z_k/T))`` is, up to a positive factor that cancels,
    the batch-mean gradient of the batchmean ``T^2 * KL`` w.r.t. the student logits, i.e. what
    the official code gets from K backward passes (``reference/baselines.md`` section 4).
    ``alpha = argmin |sum_k alpha_k g_k|^2`` s.t. ``sum alpha = 1``, ``0 <= alpha_k <= cap``
    (solved exactly by :func:`capped_simplex_min_norm_exact`: 30-180x faster than the FISTA solver
    :func:`capped_simplex_min_norm`, equal to it within 1e-9 where the minimiser is unique). If
    ``cap < 1/K`` the constraint is infeasible and, like the official code, the weights are uniform. Source: AE-KD repo, ``helper/loops.py`` and
    ``helper/optimization.py::find_optimal_svm`` (without the optional ``--svm_norm``).

    Args:
        teacher_logits: ``[K, B, C]``.
        student_logits: ``[B, C]`` (detached or not; no gradient flows).
        temperature: the KD temperature ``T``.
        cap: the per-teacher cap ``C``.

    Returns:
        ``[K]`` per-batch weights, in the dtype and on the device of ``teacher_logits``.
    """
    _check_teacher_logits(teacher_logits)
    if student_logits.shape != teacher_logits.shape[1:]:
        raise ValueError(f"student_logits has shape {tuple(student_logits.shape)}, expected {tuple(teacher_logits.shape[1:])}")
    with torch.no_grad():
        student_probs = torch.softmax(student_logits.double() / temperature, dim=-1).mean(0)  # [C]
        teacher_probs = torch.softmax(teacher_logits.double() / temperature, dim=-1).mean(1)  # [K, C]
        gradients = student_probs.unsqueeze(0) - teacher_probs  # [K, C]
        alpha = capped_simplex_min_norm_exact(gradients @ gradients.T, cap=cap)
    return alpha.to(device=teacher_logits.device, dtype=teacher_logits.dtype)


# ------------------------------------------------------------------------------------------------
# Loss scale, best single teacher, random weights
# ------------------------------------------------------------------------------------------------


def kd_scale_for(method: str, num_teachers: int) -> float:
    """The factor on ``mean_b sum_k w_bk KL_bk`` that reproduces a method's original KD magnitude.

    ``1/K`` for CA-MKD (its loss is ``(1/(B K)) sum w KL`` with weights summing to 1), ``(K-1)/K``
    for EBKD (same normalisation, original weights sum to ``K-1``), 1 for AVER, AEKD and every
    other method (``reference/baselines.md`` section 0.1). With ``K = 1`` every method is vanilla
    KD and the factor is 1 (the original EBKD would give 0, CA-MKD divides by zero).

    Args:
        method: a name such as ``"camkd"``, ``"CA-MKD"``, ``"ebkd"``; case, ``-`` and ``_`` are ignored.
    """
    if num_teachers < 1:
        raise ValueError(f"num_teachers must be >= 1, got {num_teachers}")
    if num_teachers == 1:
        return 1.0
    key = method.lower().replace("-", "").replace("_", "")
    if key == "camkd":
        return 1.0 / num_teachers
    if key == "ebkd":
        return (num_teachers - 1) / num_teachers
    return 1.0


def best_teacher_weights(val_accuracies: torch.Tensor | Sequence[float] | np.ndarray) -> torch.Tensor:
    """Best single teacher: one-hot ``[K]`` on the highest validation accuracy (ties -> the first)."""
    if isinstance(val_accuracies, torch.Tensor):
        accuracies = val_accuracies.detach()
    else:
        accuracies = torch.as_tensor(np.asarray(val_accuracies, dtype=np.float64))
    if accuracies.dim() != 1 or accuracies.numel() < 1:
        raise ValueError(f"val_accuracies must be a non-empty [K] vector, got shape {tuple(accuracies.shape)}")
    weights = torch.zeros(accuracies.numel(), dtype=torch.float32, device=accuracies.device)
    weights[int(torch.argmax(accuracies.double()))] = 1.0  # argmax returns the first maximum
    return weights


def _log_standard_gamma(shape: tuple[int, ...], concentration: float, generator: torch.Generator) -> torch.Tensor:
    """``log`` of Gamma(concentration, 1) draws, float64, using only ``generator``.

    Marsaglia & Tsang (2000) rejection sampling (acceptance > 95%), redrawing only the rejected
    entries; for ``concentration < 1`` the boost ``G(a) = G(a + 1) * U^(1/a)``, kept in log space
    so that tiny concentrations do not underflow. Deterministic given the generator's state.
    """
    device = generator.device
    if concentration == 1.0:  # Gamma(1) is Exp(1) = -log(1 - U), U in [0, 1)
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        return torch.log((-torch.log1p(-uniform)).clamp_min(torch.finfo(torch.float64).tiny))
    shape_param = concentration + 1.0 if concentration < 1.0 else concentration
    d = shape_param - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.float64, device=device)
    pending = torch.arange(numel, device=device)
    while pending.numel() > 0:
        normal = torch.randn(pending.numel(), generator=generator, dtype=torch.float64, device=device)
        uniform = torch.rand(pending.numel(), generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * normal) ** 3
        log_v = torch.log(v.clamp_min(torch.finfo(torch.float64).tiny))
        accept = (v > 0) & (torch.log(uniform) < 0.5 * normal * normal + d - d * v + d * log_v)
        out[pending[accept]] = math.log(d) + log_v[accept]
        pending = pending[~accept]
    if concentration < 1.0:
        uniform = torch.rand(numel, generator=generator, dtype=torch.float64, device=device)
        out = out + torch.log1p(-uniform) / concentration  # log(U') with U' = 1 - U in (0, 1]
    return out.view(shape)


def random_dirichlet_weights(
    num_teachers: int,
    generator: torch.Generator,
    batch_size: int | None = None,
    concentration: float = 1.0,
) -> torch.Tensor:
    """Random weights from a symmetric Dirichlet(concentration), drawn only from ``generator``.

    ``w = softmax(log Gamma_k)`` (= normalised Gamma draws, computed in log space so it never
    divides by zero). ``concentration = 1`` is the uniform distribution on the simplex. Same
    generator state -> same weights; the global torch RNG is not touched.

    Returns:
        float32 ``[K]`` if ``batch_size`` is None, else ``[B, K]``, on the generator's device.
    """
    if num_teachers < 1:
        raise ValueError(f"num_teachers must be >= 1, got {num_teachers}")
    if not concentration > 0 or not math.isfinite(concentration):
        raise ValueError(f"concentration must be a positive finite number, got {concentration}")
    shape = (num_teachers,) if batch_size is None else (batch_size, num_teachers)
    log_gamma = _log_standard_gamma(shape, float(concentration), generator)
    return torch.softmax(log_gamma, dim=-1).float()


# ------------------------------------------------------------------------------------------------
# Reference points: the label-aware oracle (an upper reference) and no distillation at all
# ------------------------------------------------------------------------------------------------


def class_accuracies(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each teacher's accuracy on each class: ``A_kc = mean over samples of class c of [pred_k == c]``.

    Args:
        predictions: ``[K, N]`` predicted classes (argmax of each teacher's logits).
        labels: ``[N]`` true labels.
        num_classes: ``C``.

    Returns:
        float64 ``[K, C]``; NaN for a class with no sample (nothing is known about it).
    """
    if predictions.dim() != 2 or labels.dim() != 1 or predictions.shape[1] != labels.shape[0]:
        raise ValueError(f"predictions must be [K, N] and labels [N], got {tuple(predictions.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    correct = (predictions.long() == labels.unsqueeze(0)).double()  # [K, N]
    hits = torch.zeros(predictions.shape[0], num_classes, dtype=torch.float64, device=predictions.device)
    hits.index_add_(1, labels, correct)
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, hits / counts.clamp_min(1.0), torch.full_like(hits, float("nan")))


def oracle_weights(class_accuracy: torch.Tensor, labels: torch.Tensor, tolerance: float = 0.02) -> torch.Tensor:
    """The label-aware oracle: per sample, uniform weight on the teachers best at its true class.

    For a sample of class ``y`` the teachers ``k`` with ``A_ky >= max_j A_jy - tolerance`` share the
    weight equally, the others get zero. It reads the *true label* of the sample, which no
    deployable method can (that is what makes it an upper reference, not a competitor): with one
    good teacher and confidently wrong ones it trusts the good one on every class; with class
    specialists it routes each sample to the specialist of its class. A class without any
    accuracy measurement (NaN column: no validation sample of that class) gets uniform weights.

    Args:
        class_accuracy: ``[K, C]`` per-class accuracies (:func:`class_accuracies` on validation data).
        labels: ``[B]`` true labels of the batch.
        tolerance: how far below the best teacher's class accuracy a teacher may be and still
            share the weight (>= 0; 0 keeps only exact ties).

    Returns:
        float32 ``[B, K]`` on the simplex, on the device of ``labels``.
    """
    if class_accuracy.dim() != 2:
        raise ValueError(f"class_accuracy must be [K, C], got shape {tuple(class_accuracy.shape)}")
    if not tolerance >= 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    per_sample = class_accuracy.to(labels.device).T[labels.long()]  # [B, K]
    unknown = torch.isnan(per_sample).all(dim=1, keepdim=True)
    best = torch.nan_to_num(per_sample, nan=-math.inf).max(dim=1, keepdim=True).values
    chosen = (per_sample >= best - tolerance) | unknown  # NaN compares False: only unknown rows are all-True
    return (chosen.float() / chosen.float().sum(dim=1, keepdim=True)).float()


def no_kd_weights(
    num_teachers: int,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """No distillation: every teacher weight 0, so the student's loss is its cross-entropy alone.

    Not on the simplex: the environment must apply it as it is (``action_mode="raw"``).

    Returns:
        ``[K]`` if ``batch_size`` is None, else ``[B, K]``.
    """
    if num_teachers < 1:
        raise ValueError(f"num_teachers must be >= 1, got {num_teachers}")
    shape = (num_teachers,) if batch_size is None else (batch_size, num_teachers)
    return torch.zeros(shape, device=device, dtype=dtype)
