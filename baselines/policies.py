"""The classic multi-teacher KD baselines as policies with SB3's ``predict`` protocol.

Each baseline (AVER, EBKD, CA-MKD, AEKD, best single teacher, random Dirichlet weights) is a
policy object with ``predict(observation, state=None, episode_start=None, deterministic=False)
-> (action, state)``, ``learn`` (a no-op), ``save`` and ``load``, so SB3's ``evaluate_policy`` and
the benchmark runner drive them exactly like the RL agents, through the same environments.

How a baseline sees the batch (read this before using one)
----------------------------------------------------------
A rule needs the exact per-sample quantities of the batch it weights: teacher logits, labels
and, for AEKD, student logits. The batch-level observation only summarises them (batch means),
so a rule cannot be computed from the observation alone. A baseline is therefore **built with
the environment** (``EBKD(env)``) and, at every ``predict``, reads the batch the environment
has prepared, ``env.unwrapped.engine.current`` (a :class:`~kd_env.engine.engine.StepBatch`).
The environment guarantees that this is the same batch the observation describes and the
action's weights will be applied to. The observation is only checked: its shape must match the
environment's observation space (else ``ValueError``), which catches a policy being driven by
a different kind of environment. It must be driven by the environment it was built with (or a
wrapper / SB3 ``VecEnv`` around it); a baseline cannot serve a copy of the environment.

Accepted environments: the batch-level :class:`~kd_env.envs.batch_env.MultiTeacherKDEnv`
(``gym.make(...)``, any wrappers; SB3's ``DummyVecEnv`` with one copy), and the per-sample
:class:`~kd_env.envs.per_sample_env.PerSampleKDVectorEnv` (bare, or inside
:class:`~kd_env.envs.sb3_vec.SB3VecEnvAdapter`).

Actions
-------
A baseline gives its weights exactly, so the environment must be created in the action mode
the class names in its ``action_mode`` class attribute: ``"simplex"`` for the rules (each head
renormalised to sum to one), ``"raw"`` for :class:`NoKD` (all-zero weights, which simplex
renormalisation refuses). The default ``"softmax"`` mode would map the weights through
``softmax(scale * a)`` and distort them. Construction in any other mode raises ``ValueError``;
the runner (``kd-env train``) creates the env in the right mode by itself.

Reference policies
------------------
Two entries of :data:`BASELINES` are reference points, not competing methods
(``reference = True``): :class:`Oracle` (the label-aware oracle, an upper reference that reads
each sample's true label) and :class:`NoKD` (all weights zero: the student trained on
cross-entropy alone, the floor that distillation must beat).

* Batch-level env: one ``[K]`` weight vector per step. A per-sample rule (EBKD, CA-MKD) is
  averaged over the batch, which is *not* the same loss as applying it per sample; use the
  per-sample env to run those rules faithfully.
* Per-sample env: ``[B, K]``; per-sample rules give one row per sample, per-batch rules
  (AVER, AEKD, best teacher, random by default) are repeated on every row.
* With feature KD on (two action heads) the feature head gets the same weights as the logit
  head. CA-MKD's own feature weighting (the student's features passed through each teacher's
  classifier head, ``CalWeight`` in the official code) is **not** reproduced; neither is
  AEKD's hint-layer variant.

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
from typing import Any, ClassVar

import numpy as np
import torch

from kd_env.engine.engine import StepBatch
from kd_env.envs.batch_env import MultiTeacherKDEnv
from kd_env.envs.per_sample_env import PerSampleKDVectorEnv
from kd_env.envs.sb3_vec import SB3VecEnvAdapter
from kd_env.utils import atomic_torch_save

from .rules import (
    aekd_weights,
    aver_weights,
    best_teacher_weights,
    camkd_weights,
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
    "BASELINES",
    "CAMKD",
    "EBKD",
    "BaselinePolicy",
    "BestTeacher",
    "NoKD",
    "Oracle",
    "RandomDirichlet",
    "load_baseline",
    "make_baseline",
    "published_kd_scale",
]

CHECKPOINT_FORMAT = "kd_env.baseline/1"

KDEnv = MultiTeacherKDEnv | PerSampleKDVectorEnv


def _resolve_env(env: Any) -> KDEnv:
    """The kd-env environment under ``env``'s wrappers (Gymnasium wrappers, SB3 adapters)."""
    candidate = env
    if isinstance(candidate, SB3VecEnvAdapter):
        candidate = candidate.env
    elif hasattr(candidate, "envs") and hasattr(candidate, "step_async"):  # SB3 DummyVecEnv
        copies = candidate.envs
        if len(copies) != 1:
            raise ValueError(
                f"a baseline reads one environment's prepared batch; this VecEnv has {len(copies)} copies. "
                "Build one baseline per environment copy."
            )
        candidate = copies[0]
    candidate = getattr(candidate, "unwrapped", candidate)
    if not isinstance(candidate, (MultiTeacherKDEnv, PerSampleKDVectorEnv)):
        raise ValueError(
            f"a baseline needs a kd-env environment (MultiTeacherKDEnv or PerSampleKDVectorEnv, possibly wrapped), got {type(env).__name__}"
        )
    return candidate


def _registry_key(name: str) -> str:
    """``"CA-MKD"``, ``"CAMKD"``, ``"ca_mkd"`` -> ``"camkd"``; class names map to their registry name."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    aliases = {"bestteacher": "best", "randomdirichlet": "random", "nokd": "no-kd", "labeloracle": "oracle"}
    key = aliases.get(key, key)
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return key


def published_kd_scale(policy_name: str, num_teachers: int) -> float:
    """The env's ``kd_scale`` that reproduces a baseline's published KD loss magnitude.

    ``1/K`` for CA-MKD, ``(K-1)/K`` for EBKD, 1 for the others (see :func:`rules.kd_scale_for`).
    Pass it when creating the environment: ``gym.make(..., kd_scale=published_kd_scale("camkd", K))``.

    Args:
        policy_name: a registry name (``"camkd"``) or class name (``"CAMKD"``, ``"BestTeacher"``).
        num_teachers: ``K``.
    """
    return kd_scale_for(_registry_key(policy_name), num_teachers)


class BaselinePolicy:
    """A teacher-weighting rule driven through a kd-env environment (see the module docstring).

    Subclasses implement :meth:`teacher_weights`, returning ``[K]`` (one vector for the batch)
    or ``[B, K]`` (one row per sample) for the prepared batch, valid in the class's
    :attr:`action_mode` (on the simplex for ``"simplex"``).

    Args:
        env: the environment the policy will act in, created with ``action_mode=<cls>.action_mode``.
    """

    name: ClassVar[str] = ""
    uses_seed: ClassVar[bool] = False
    """Whether the constructor takes ``seed`` (only the random baseline)."""
    action_mode: ClassVar[str] = "simplex"
    """The env ``action_mode`` the weights are meant for; the runner creates the env in it."""
    reference: ClassVar[bool] = False
    """A reference point (oracle, no-KD), not a competing method."""

    def __init__(self, env: Any) -> None:
        self.env = _resolve_env(env)
        mode = type(self).action_mode
        if self.env.settings.action_mode != mode:
            raise ValueError(
                f"{type(self).__name__} gives teacher weights exactly and needs the environment in "
                f"action_mode={mode!r}, got action_mode={self.env.settings.action_mode!r}; "
                f'create the env with action_mode="{mode}"'
            )
        self.engine = self.env.engine
        self.num_teachers = int(self.env.num_teachers)
        self.heads = int(self.env.heads)
        self.per_sample_env = isinstance(self.env, PerSampleKDVectorEnv)
        self.config: dict[str, Any] = {}
        """The constructor's keyword arguments (besides ``env``): what :meth:`save` stores."""

    # ------------------------------------------------------------------ the rule
    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        """The rule: ``[K]`` or ``[B, K]`` weights on the simplex for ``batch``."""
        raise NotImplementedError

    def idle_weights(self) -> torch.Tensor:
        """A valid ``[K]`` action when no batch is prepared (the episode is over): equal weights."""
        return aver_weights(self.num_teachers)

    @property
    def kd_scale(self) -> float:
        """The env ``kd_scale`` that matches this method's published loss magnitude."""
        return published_kd_scale(self.name, self.num_teachers)

    # ------------------------------------------------------------------ SB3 protocol
    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The action for the batch the environment has prepared (the one ``observation`` describes).

        ``state`` is returned unchanged (the rules keep no recurrent state); ``episode_start``
        and ``deterministic`` are ignored (every rule but the random one is deterministic, and
        the random one is a random policy by definition).

        Returns:
            Batch env: ``[heads * K]`` for an observation of the observation space's shape,
            ``[1, heads * K]`` for a ``[1, D]`` observation (SB3's ``VecEnv`` of one copy).
            Per-sample env: ``[B, heads * K]``.

        Raises:
            ValueError: the observation's shape does not belong to the environment.
        """
        leading = self._check_observation(np.asarray(observation))
        batch = self.engine.current
        if batch is None:
            # no prepared batch: the episode is over (the per-sample env's autoreset step ignores
            # the action, the batch env refuses to step); any valid action will do
            weights = self.idle_weights()
        else:
            with torch.no_grad():
                weights = self.teacher_weights(batch).detach().to(device="cpu", dtype=torch.float32)
        if isinstance(self.env, PerSampleKDVectorEnv):  # i.e. self.per_sample_env
            weights = weights.expand(self.env.num_envs, self.num_teachers)
        elif weights.dim() == 2:
            weights = weights.mean(dim=0)  # per-sample rule on the batch env: one vector for the batch
        # every head gets the same weights (see the module docstring)
        action = torch.cat([weights] * self.heads, dim=-1).numpy().astype(np.float32)
        return action.reshape(*leading, *action.shape), state

    def _check_observation(self, observation: np.ndarray) -> tuple[int, ...]:
        """Raise unless ``observation`` has this env's shape; return the extra leading dims."""
        shape = self.env.observation_space.shape
        assert shape is not None  # a Box
        expected = tuple(shape)
        if observation.shape == expected:
            return ()
        if not self.per_sample_env and observation.shape == (1, *expected):
            return (1,)
        allowed = f"{expected}" if self.per_sample_env else f"{expected} or {(1, *expected)}"
        raise ValueError(
            f"observation has shape {observation.shape}, expected {allowed} "
            f"(the observation space of the {type(self.env).__name__} this {type(self).__name__} was built with)"
        )

    def learn(self, total_timesteps: int = 0, callback: Any = None, progress_bar: bool = False, **kwargs: Any) -> BaselinePolicy:
        """Nothing to learn: a fixed rule. Returns ``self`` (as SB3's ``learn`` does)."""
        return self

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write the baseline's name and keyword arguments (atomically). A random baseline's
        generator restarts from its seed on :meth:`load`."""
        return atomic_torch_save({"format": CHECKPOINT_FORMAT, "name": self.name, "kwargs": dict(self.config)}, path)

    @classmethod
    def load(cls, path: str | Path, env: Any = None) -> BaselinePolicy:
        """Rebuild a saved baseline on ``env`` (required: a baseline reads the env's batch)."""
        path = Path(path)
        if env is None:
            raise ValueError("a baseline reads the environment's prepared batch; pass env= to load()")
        if not path.is_file():
            raise FileNotFoundError(f"no baseline checkpoint at {path}")
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: say which and why
            raise ValueError(f"baseline checkpoint {path} is corrupt or not a torch file ({exc})") from exc
        if not isinstance(stored, dict) or stored.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a kd-env baseline checkpoint (format {CHECKPOINT_FORMAT})")
        name = str(stored["name"])
        if cls is not BaselinePolicy and name != cls.name:
            raise ValueError(f"{path} holds the {name!r} baseline, not {cls.name!r}; use load_baseline()")
        return BASELINES[_registry_key(name)](env, **stored["kwargs"])

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config.items())
        return f"{type(self).__name__}({type(self.env).__name__}{', ' if options else ''}{options})"


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

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        return camkd_weights(batch.teacher_logits, batch.labels)


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
        return oracle_weights(self.class_accuracy, batch.labels.cpu(), self.tolerance)


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


BASELINES: dict[str, type[BaselinePolicy]] = {
    "aver": AVER,
    "ebkd": EBKD,
    "camkd": CAMKD,
    "aekd": AEKD,
    "best": BestTeacher,
    "random": RandomDirichlet,
    "oracle": Oracle,
    "no-kd": NoKD,
}


def make_baseline(name: str, env: Any, seed: int = 0, **kwargs: Any) -> BaselinePolicy:
    """Build a baseline by name (``"aver"``, ``"ebkd"``, ``"camkd"``, ``"aekd"``, ``"best"``,
    ``"random"``, ``"oracle"``, ``"no-kd"``; class names and ``"CA-MKD"``-style spellings work too).

    ``seed`` goes to the baselines that draw random numbers and is ignored by the deterministic
    rules, so a runner can call every baseline alike. ``kwargs`` go to the constructor
    (e.g. ``cap=0.8`` for AEKD).
    """
    cls = BASELINES[_registry_key(name)]
    if cls.uses_seed:
        return cls(env, seed=seed, **kwargs)  # type: ignore[call-arg]
    return cls(env, **kwargs)


def load_baseline(path: str | Path, env: Any) -> BaselinePolicy:
    """Rebuild any saved baseline on ``env`` (the class is read from the checkpoint)."""
    return BaselinePolicy.load(path, env)
