"""The core of the classic baselines: :class:`BaselinePolicy`, a weighting rule driven through
a kd-env environment with SB3's ``predict`` protocol, its environment checks and its checkpoints.

The rules themselves are in :mod:`kd_env.baselines.rules` (pure tensor functions) and the
policies that apply them in :mod:`kd_env.baselines.policies`.

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

Per environment
---------------
* Batch-level env: one ``[K]`` weight vector per step. A per-sample rule (EBKD, CA-MKD) is
  averaged over the batch, which is *not* the same loss as applying it per sample; use the
  per-sample env to run those rules faithfully.
* Per-sample env: ``[B, K]``; per-sample rules give one row per sample, per-batch rules
  (AVER, AEKD, best teacher, random by default) are repeated on every row.
* With feature KD on (two action heads) the feature head gets the same weights as the logit
  head. CA-MKD's own feature weighting (the student's features passed through each teacher's
  classifier head, ``CalWeight`` in the official code) is **not** reproduced; neither is
  AEKD's hint-layer variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from kd_env.checkpoint_format import read_checkpoint, write_checkpoint
from kd_env.engine.engine import StepBatch
from kd_env.envs.batch_env import MultiTeacherKDEnv
from kd_env.envs.per_sample_env import PerSampleKDVectorEnv
from kd_env.envs.sb3_vec import SB3VecEnvAdapter

from .rules import aver_weights, kd_scale_for

__all__ = ["BASELINE_POLICIES", "CHECKPOINT_FORMAT", "BaselinePolicy", "KDEnv", "label_free_baselines", "registry_key", "resolve_env"]

CHECKPOINT_FORMAT = "kd_env.baseline/1"

KDEnv = MultiTeacherKDEnv | PerSampleKDVectorEnv


def resolve_env(env: Any) -> KDEnv:
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


def label_free_baselines() -> list[str]:
    """The registered baselines that run under ``labels="none"`` (they do not read training labels)."""
    return [name for name, cls in BASELINE_POLICIES.items() if not cls.needs_training_labels]


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
    needs_training_labels: ClassVar[bool] = False
    """Whether the rule reads the training labels the student is given (``batch.labels``,
    ``batch.teacher_ce``, ``batch.teacher_correct``, ``batch.student_ce``): CA-MKD, the
    label-confidence rules, MMKD. Such a policy is refused at construction on an env with
    ``labels="none"``, which withholds them. The rules on teacher outputs alone (AVER, EBKD,
    AEKD, random), on the validation split (best teacher) and no-KD do not. The oracle is the
    documented exception: a reference that reads the *true* labels by definition, in every
    regime (see :class:`~kd_env.baselines.policies.Oracle`)."""

    def __init__(self, env: Any) -> None:
        self.env = resolve_env(env)
        if type(self).needs_training_labels and self.env.settings.labels == "none":
            raise ValueError(
                f"policy {self.name or type(self).__name__!r} reads the training labels, which the env's labels='none' withholds; "
                f"run it with labels='full' or 'noisy', or use a policy that does not read them ({', '.join(label_free_baselines())})"
            )
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
        return kd_scale_for(self.name, self.num_teachers)

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
        return write_checkpoint(path, CHECKPOINT_FORMAT, {"name": self.name, "kwargs": dict(self.config)})

    @classmethod
    def load(cls, path: str | Path, env: Any = None) -> BaselinePolicy:
        """Rebuild a saved baseline on ``env`` (required: a baseline reads the env's batch)."""
        if env is None:
            raise ValueError("a baseline reads the environment's prepared batch; pass env= to load()")
        stored = read_checkpoint(
            path,
            CHECKPOINT_FORMAT,
            what="kd-env baseline checkpoint",
            fix="save the baseline again with policy.save(path)",
            required={"name": str, "kwargs": dict},
        )
        name = str(stored["name"])
        if cls is not BaselinePolicy and name != cls.name:
            raise ValueError(f"{path} holds the {name!r} baseline, not {cls.name!r}; use load_baseline()")
        return BASELINE_POLICIES[registry_key(name)](env, **stored["kwargs"])

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config.items())
        return f"{type(self).__name__}({type(self.env).__name__}{', ' if options else ''}{options})"


BASELINE_POLICIES: dict[str, type[BaselinePolicy]] = {}
"""The built-in baseline policies by registry name (``"aver"``, ``"camkd"``, ...), filled by
:mod:`~kd_env.baselines.policies`, which defines them (the package imports it)."""

_REGISTRY_ALIASES = {
    "bestteacher": "best",
    "randomdirichlet": "random",
    "nokd": "no-kd",
    "labeloracle": "oracle",
    "cesoftmax": "ce-softmax",
    "ceroute": "ce-route",
}


def registry_key(name: str) -> str:
    """``"CA-MKD"``, ``"CAMKD"``, ``"ca_mkd"`` -> ``"camkd"``; class names map to their registry name."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _REGISTRY_ALIASES.get(key, key)
    if key not in BASELINE_POLICIES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINE_POLICIES)}")
    return key
