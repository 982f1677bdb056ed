"""The classic multi-teacher KD baselines as policies with SB3's ``predict`` protocol.

Each baseline (AVER, EBKD, CA-MKD, the label-confidence rules ``ce-softmax`` and ``ce-route``,
AEKD, best single teacher, random Dirichlet weights) is a policy object with ``predict(observation, state=None, episode_start=None, deterministic=False)
-> (action, state)``, ``learn`` (a no-op), ``save`` and ``load``, so SB3's ``evaluate_policy`` and
the benchmark runner drive them exactly like the RL agents, through the same environments.

The core that drives a rule through an environment (how a baseline reads the batch, the
action modes, checkpoints) is :class:`~kd_env.baselines.base.BaselinePolicy`.

Reference policies
------------------
Two entries of :data:`BASELINE_POLICIES` are reference points, not competing methods
(``reference = True``): :class:`Oracle` (the label-aware oracle, an upper reference that reads
each sample's true label) and :class:`NoKD` (all weights zero: the student trained on
cross-entropy alone, the floor that distillation must beat).

Loss scale
----------
The environment computes ``mean_b sum_k w_bk KL_bk`` with weights on the simplex for every
method. The published methods normalise differently (``reference/baselines.md`` section 0.1):
CA-MKD's KD term is ``1/K`` of that, EBKD's ``(K-1)/K``. To match a published method's loss
magnitude, create the environment with the ``kd_scale`` setting::

    env = gym.make("MultiTeacherKD-CIFAR100-v0", action_mode="simplex",
                   kd_scale=published_kd_scale("camkd", num_teachers=4))
    policy = CAMKD(env)

The policy does not change the scale itself: the knob belongs to the environment, so that
every method compared in one set-up trains under the same loss unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_env.engine.engine import StepBatch

from .base import BASELINE_POLICIES, CHECKPOINT_FORMAT, BaselinePolicy, registry_key
from .rules import (
    aekd_weights,
    aver_weights,
    best_teacher_weights,
    camkd_weights,
    ce_route_weights,
    ce_softmax_weights,
    class_accuracies,
    ebkd_weights,
    kd_scale_for,
    no_kd_weights,
    oracle_weights,
    random_dirichlet_weights,
)

__all__ = [
    "AEKD",
    "AVER",
    "BASELINE_POLICIES",
    "CAMKD",
    "CHECKPOINT_FORMAT",
    "CERoute",
    "CESoftmax",
    "LABEL_CONFIDENCE_RULES",
    "EBKD",
    "BaselinePolicy",
    "BestTeacher",
    "NoKD",
    "Oracle",
    "RandomDirichlet",
    "load_baseline",
    "make_baseline",
    "published_kd_scale",
    "registry_key",
]


class AVER(BaselinePolicy):
    """AVER: equal weights ``1/K`` (per batch)."""

    name = "aver"

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return aver_weights(self.num_teachers)


class EBKD(BaselinePolicy):
    """EBKD: lower-entropy teachers get more weight (per sample; :func:`rules.ebkd_weights`)."""

    name = "ebkd"

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return ebkd_weights(batch.teacher_logits)


class CAMKD(BaselinePolicy):
    """CA-MKD: teachers with lower cross-entropy on the label get more weight (per sample,
    :func:`rules.camkd_weights`; logit-level weights only, see the module docstring)."""

    name = "camkd"
    needs_training_labels = True

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return camkd_weights(batch.teacher_logits, batch.labels)


class _LabelConfidenceRule(BaselinePolicy):
    """A rule on the teachers' cross-entropy with the training label (:attr:`StepBatch.teacher_ce`).

    On the per-sample env each sample gets its own row; on the batch env the rule is applied to
    the batch's mean cross-entropy per teacher, one vector for the batch (not the mean of the
    rows, which would be another rule).
    """

    needs_training_labels = True

    def _batch_ce(self, batch: StepBatch) -> torch.Tensor:
        return batch.teacher_ce if self.per_sample_env else batch.teacher_ce.mean(dim=0)


class CESoftmax(_LabelConfidenceRule):
    """``softmax(-CE / tau)`` over the teachers' cross-entropy on the label (:func:`rules.ce_softmax_weights`).

    The bar for every method where labels are available: it reads only the label and the
    teachers' outputs, learns nothing, and matches the oracle on the suite's structured pools.

    Args:
        env: the environment (``action_mode="simplex"``).
        tau: temperature (> 0; default 1: weights proportional to the probability each teacher
            gives the label).
    """

    name = "ce-softmax"

    def __init__(self, env: Any, tau: float = 1.0) -> None:
        super().__init__(env)
        ce_softmax_weights(torch.zeros(1), tau)  # refuses a bad tau before any step
        self.tau = float(tau)
        self.config = {"tau": self.tau}

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return ce_softmax_weights(self._batch_ce(batch), self.tau)


class CERoute(_LabelConfidenceRule):
    """Hard routing to the teacher with the lowest cross-entropy on the label, ties shared
    (:func:`rules.ce_route_weights`)."""

    name = "ce-route"

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return ce_route_weights(self._batch_ce(batch))


class AEKD(BaselinePolicy):
    """AEKD: the min-norm capped convex combination of the teachers' KD gradients (per batch,
    :func:`rules.aekd_weights`).

    Args:
        env: the environment (``action_mode="simplex"``).
        cap: the per-teacher cap ``C`` (AE-KD's default 0.6); ``cap < 1/K`` gives uniform weights.
        temperature: the KD temperature for the gradients; ``None`` takes the env's ``temperature``.
    """

    name = "aekd"

    def __init__(self, env: Any, cap: float = 0.6, temperature: float | None = None) -> None:
        super().__init__(env)
        if not cap > 0:
            raise ValueError(f"cap must be > 0, got {cap}")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.cap = float(cap)
        self.temperature = float(self.engine.config.temperature if temperature is None else temperature)
        self.config = {"cap": self.cap, "temperature": temperature}

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return aekd_weights(batch.teacher_logits, batch.student_logits.detach(), self.temperature, self.cap)


class BestTeacher(BaselinePolicy):
    """All weight on the teacher with the best validation accuracy (per batch).

    The accuracies are measured once, at construction (the teachers and the validation split
    are fixed for the environment's lifetime), and kept in :attr:`val_accuracies`. Never the
    test split: choosing on test accuracy would leak it into the comparison.
    """

    name = "best"

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.val_accuracies = [float(value) for value in self.engine.evaluate_teachers("val")]
        if not all(np.isfinite(self.val_accuracies)):
            raise ValueError("BestTeacher needs a validation split to rank the teachers; create the env with val_fraction > 0")
        self.weights = best_teacher_weights(self.val_accuracies)
        self.best_index = int(self.weights.argmax())
        self.best_name = self.env.teacher_names[self.best_index]

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return self.weights


class RandomDirichlet(BaselinePolicy):
    """A random point of the simplex per step, from a seeded generator: a sanity floor.

    Same seed -> the same sequence of weights (the global RNGs are not touched).

    Args:
        env: the environment (``action_mode="simplex"``).
        seed: seeds the policy's own ``torch.Generator``.
        concentration: of the symmetric Dirichlet; 1 is uniform on the simplex.
        per_sample: on the per-sample env, draw one point per sample instead of one per step.
    """

    name = "random"
    uses_seed = True

    def __init__(self, env: Any, seed: int = 0, concentration: float = 1.0, per_sample: bool = False) -> None:
        super().__init__(env)
        if not concentration > 0 or not np.isfinite(concentration):
            raise ValueError(f"concentration must be a positive finite number, got {concentration}")
        self.seed = int(seed)
        self.concentration = float(concentration)
        self.per_sample = bool(per_sample)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.config = {"seed": self.seed, "concentration": self.concentration, "per_sample": self.per_sample}

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        batch_size = batch.batch_size if self.per_sample and self.per_sample_env else None
        return random_dirichlet_weights(self.num_teachers, self.generator, batch_size, self.concentration)


class Oracle(BaselinePolicy):
    """The label-aware oracle: an upper reference, not a competitor (it reads the true label).

    Definition. At construction, each teacher's accuracy on each class is measured on the
    environment's *validation* split with the true labels (never the test split):
    ``A_kc = fraction of validation images of class c that teacher k classifies correctly``.
    At every step, a sample with true label ``y`` puts uniform weight on the teachers with
    ``A_ky >= max_j A_jy - tolerance`` and zero on the others (:func:`rules.oracle_weights`).
    So with one good teacher and confidently wrong ones it trusts the good one on every
    sample, and with class specialists (teacher ``k`` right on its own classes only) it routes
    each sample to the specialist of its class. A class with no validation sample gets uniform
    weights.

    It is meant for the per-sample env, where it gives one row per sample (``[B, K]``). On the
    batch env the rows are averaged over the batch (one vector per update, the class mix of the
    batch), which is no longer a routing of samples.

    Label regimes: the oracle reads each sample's *true* label in every regime, from the
    dataset (``engine.data.true_train_labels``), not the labels the student is given: under
    ``labels="noisy"`` the clean ones, under ``labels="none"`` the withheld ones. It is the
    reference for what knowing the answer is worth, so it runs (and is not refused) where the
    competing rules that read labels are (``needs_training_labels`` stays False).

    Args:
        env: the environment (``action_mode="simplex"``) with a validation split (``val_fraction > 0``).
        tolerance: how far below the best class accuracy a teacher still shares the weight.

    Attributes:
        class_accuracy: ``[K, C]`` float64 validation accuracies per teacher and class.
    """

    name = "oracle"
    reference = True

    def __init__(self, env: Any, tolerance: float = 0.02) -> None:
        super().__init__(env)
        if not tolerance >= 0 or not np.isfinite(tolerance):
            raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.config = {"tolerance": self.tolerance}
        self.class_accuracy = self._measure_class_accuracy()

    @torch.inference_mode()
    def _measure_class_accuracy(self) -> torch.Tensor:
        """``[K, C]`` from the teachers' predictions on the validation split, in batches."""
        engine = self.engine
        images, labels = engine.data.val_images, engine.data.val_labels
        if labels.numel() == 0:
            raise ValueError("the oracle measures teachers on the validation split; create the env with val_fraction > 0")
        step = int(engine.config.eval_batch_size)
        predictions = []
        for start in range(0, int(labels.shape[0]), step):
            batch = engine.eval_transform(images[start : start + step], train=False)
            batch = batch.contiguous(memory_format=engine.teacher_format)
            predictions.append(torch.stack([teacher(batch).argmax(dim=1) for teacher in engine.teachers]))
        return class_accuracies(torch.cat(predictions, dim=1).cpu(), labels.cpu(), engine.num_classes)

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        # the true labels, whatever the env's label regime (see the class docstring)
        labels = self.engine.data.true_train_labels[batch.indices]
        return oracle_weights(self.class_accuracy, labels.cpu(), self.tolerance)


class NoKD(BaselinePolicy):
    """No distillation: every teacher weight (logit and feature heads) is 0, so the student
    trains on its cross-entropy alone. A reference floor, applied in ``action_mode="raw"``
    (simplex renormalisation refuses an all-zero head)."""

    name = "no-kd"
    action_mode = "raw"
    reference = True

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return no_kd_weights(self.num_teachers)

    def idle_weights(self) -> torch.Tensor:
        return no_kd_weights(self.num_teachers)


#: The label-confidence rules: the bar a learned method that reads training labels must clear.
LABEL_CONFIDENCE_RULES = ("ce-softmax", "ce-route")

BASELINE_POLICIES.update(
    {
        "aver": AVER,
        "ebkd": EBKD,
        "camkd": CAMKD,
        "ce-softmax": CESoftmax,
        "ce-route": CERoute,
        "aekd": AEKD,
        "best": BestTeacher,
        "random": RandomDirichlet,
        "oracle": Oracle,
        "no-kd": NoKD,
    }
)


def make_baseline(name: str, env: Any, seed: int = 0, **kwargs: Any) -> BaselinePolicy:
    """Build a baseline by name (``"aver"``, ``"ebkd"``, ``"camkd"``, ``"ce-softmax"``, ``"ce-route"``,
    ``"aekd"``, ``"best"``, ``"random"``, ``"oracle"``, ``"no-kd"``; class names and ``"CA-MKD"``-style spellings work too).

    ``seed`` goes to the baselines that draw random numbers and is ignored by the deterministic
    rules, so a runner can call every baseline alike. ``kwargs`` go to the constructor
    (e.g. ``cap=0.8`` for AEKD).
    """
    cls = BASELINE_POLICIES[registry_key(name)]
    if cls.uses_seed:
        return cls(env, seed=seed, **kwargs)  # type: ignore[call-arg]  # the classes with uses_seed take seed=; the base class does not
    return cls(env, **kwargs)


def load_baseline(path: str | Path, env: Any) -> BaselinePolicy:
    """Rebuild any saved baseline on ``env`` (the class is read from the checkpoint)."""
    return BaselinePolicy.load(path, env)


def published_kd_scale(policy_name: str, num_teachers: int) -> float:
    """The env's ``kd_scale`` that reproduces a baseline's published KD loss magnitude.

    ``1/K`` for CA-MKD, ``(K-1)/K`` for EBKD, 1 for the others (see :func:`rules.kd_scale_for`).
    Pass it when creating the environment: ``gym.make(..., kd_scale=published_kd_scale("camkd", K))``.

    Args:
        policy_name: a registry name (``"camkd"``) or class name (``"CAMKD"``, ``"BestTeacher"``).
        num_teachers: ``K``.
    """
    return kd_scale_for(registry_key(policy_name), num_teachers)
