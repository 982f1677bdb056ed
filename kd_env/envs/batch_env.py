"""The batch-level multi-teacher KD environment: one teacher-weight vector per student update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from kd_env.engine import DistillationEngine
from kd_env.envs.common import (
    KDEnvSettings,
    RewardTracker,
    action_to_weights,
    build_engine,
    step_info,
    validate_action,
)
from kd_env.features import BatchFeatureSpec, batch_features
from kd_env.utils import atomic_torch_save

CHECKPOINT_FORMAT = "kd_env.env/1"


class MultiTeacherKDEnv(gym.Env[np.ndarray, np.ndarray]):
    """
    ## Description

    A student network learns from K frozen teachers by knowledge distillation. At every step the
    agent chooses how much to trust each teacher; the environment applies those weights to one
    SGD update of the student and reports how training went. One episode is one full training
    run of a fresh student (``epochs`` over the training set).

    The student's loss on a batch is
    ``CE + alpha * mean_b sum_k w_k KL_T(teacher_k || student) + beta * mean_b sum_k v_k MSE_k``,
    with ``w`` the logit-KD weights and ``v`` the feature-KD weights (FitNet-style MSE between
    the adapted student feature map and teacher k's, as in MTKD-RL).

    Observation and action of a step belong to the same batch: the observation describes the
    batch the action's weights will be applied to.

    ## Action Space

    ``Box(-1, 1, (K,), float32)``, or ``(2K,)`` with feature KD on (first the logit head, then the
    feature head). Each head is mapped to the simplex by ``softmax(scale * a)``.
    With ``action_mode="simplex"`` the space is ``Box(0, 1)`` of the same shape and each head is
    renormalised to sum to one (negative entries or an all-zero head raise ``ValueError``);
    with ``action_mode="raw"`` the non-negative weights are applied as they are (MTKD-RL's
    warm-up epoch uses all-ones weights, a K-times KD scale).
    NaN, inf or a wrong shape raise ``ValueError`` and leave the student unchanged.

    ## Observation Space

    A 1-D float32 ``Box`` with finite bounds. For each teacher (teacher-major order), batch means
    of: teacher CE against the label, teacher accuracy, teacher entropy (the ``performance``
    group), KD loss to the student and feature cosine similarity (the ``gap`` group; cosine only
    with feature KD); then training progress in [0, 1], the current learning rate and the
    student's CE. ``env.unwrapped.feature_names`` names every entry and
    ``env.unwrapped.teacher_names`` the teachers. ``state_parts`` selects the groups.

    ## Rewards

    * ``"val_loss_delta"`` (default): the drop of the student's CE on a fixed held-out batch of
      the validation split across the update, divided by ``log(C)``. Default because it measures
      what the weights did to the student's generalisation, at every step; the paper's training
      loss reward can be raised by trusting whichever teacher the student already agrees with.
    * ``"neg_loss"``: MTKD-RL's reward, the negative weighted training loss of the batch just
      trained on, divided by ``log(C)``.
    * ``"val_acc"``: sparse; at each epoch end the gain in validation accuracy since the previous
      epoch end (from chance for the first), so the return is the final accuracy above chance.

    ``reward_scale`` multiplies every reward. A diverging student gets ``divergence_penalty``.

    ## Starting State

    ``reset(seed=...)`` builds a fresh student and feature adapters (new initialisation), a new
    SGD optimizer and LR schedule and a new data order, every random draw derived from the seed.
    The teachers and the dataset are loaded once, at construction.

    ## Episode End

    ``terminated=True`` when the training budget (``epochs`` x updates per epoch) is spent (the
    remaining budget is in the observation), or when the student diverges (non-finite loss:
    the update is skipped, ``info["diverged"] = True``). The environment never truncates.

    ## Arguments

    ```python
    import gymnasium as gym
    import kd_env

    env = gym.make("MultiTeacherKD-FashionMNIST-v0", student="cnn_w8", epochs=3, reward_mode="neg_loss")
    ```

    All keyword arguments are JSON-serialisable; see :class:`kd_env.envs.common.KDEnvSettings`:
    ``dataset``, ``student``, ``teachers`` (architectures from the cache, checkpoint paths or
    ``"random:<arch>"``), ``epochs``, ``batch_size``, ``lr``, ``device``, ``data_root``,
    ``download``, ``cache_dir``, ``train_teachers``, ``feature_kd``, ``reward_mode``,
    ``action_mode``, ``scale``, ``temperature``, ``alpha``, ``beta``, ``kd_scale``, ``augment``,
    ``max_steps_per_epoch``, ``val_fraction``, ``reward_scale``, ``divergence_penalty``,
    ``probe_size``, ``state_parts``, ``synthetic``; plus ``steps_per_action`` (updates per
    action, rewards summed) and ``render_mode`` (``"ansi"`` or None).

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, steps_per_action: int = 1, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if steps_per_action < 1:
            raise ValueError(f"steps_per_action must be >= 1, got {steps_per_action}")
        self.render_mode = render_mode
        self.steps_per_action = int(steps_per_action)
        self.settings = KDEnvSettings.from_kwargs(**kwargs)
        self.engine: DistillationEngine = build_engine(self.settings)
        self.teacher_names = list(self.engine.teacher_names)
        self.num_teachers = self.engine.num_teachers
        self.heads = 2 if self.settings.feature_kd else 1
        self.feature_spec = BatchFeatureSpec(
            tuple(self.teacher_names),
            self.engine.num_classes,
            self.settings.feature_kd,
            tuple(self.settings.state_parts),
        )
        self.feature_names = self.feature_spec.names
        self.max_lr = max(1.0, float(self.engine.config.lr))
        low, high = self.feature_spec.bounds(self.max_lr)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        action_low = -1.0 if self.settings.action_mode == "softmax" else 0.0
        self.action_space = spaces.Box(action_low, 1.0, (self.heads * self.num_teachers,), dtype=np.float32)
        self.rewards = RewardTracker(self.engine, self.settings.reward_mode, self.settings.probe_size, self.settings.reward_scale)
        self._last_observation: np.ndarray | None = None
        self._last_info: dict[str, Any] = {}
        self._episode_seed: int | None = None

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # every random draw of the episode derives from this one integer
        self._episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.engine.reset(self._episode_seed)
        self.rewards.reset()
        observation = self._observation()
        self._last_info = {"epoch": 0, "step": 0, "lr": float(self.engine.lr)}
        return observation, dict(self._last_info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._last_observation is None:
            raise RuntimeError("call reset() before step()")
        if self.engine.current is None:
            raise RuntimeError("the episode has ended; call reset() to start a new student")
        array = validate_action(action, self.action_space.shape, self.settings.action_mode, self.num_teachers)
        logit_weights, feature_weights = action_to_weights(
            array, self.num_teachers, self.heads, self.settings.action_mode, self.settings.scale
        )
        reward, terminated, info = 0.0, False, {}
        for _ in range(self.steps_per_action):
            result = self.engine.step(logit_weights, feature_weights)
            info = step_info(self.engine, result)
            if result.diverged:
                reward, terminated = float(self.settings.divergence_penalty), True
                break
            reward += self.rewards.batch_reward(result)
            if result.done:
                terminated = True
                break
        observation = self._observation() if not terminated else self._terminal_observation()
        self._last_info = info
        return observation, float(reward), bool(terminated), False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        info = self._last_info
        weights = info.get("weights")
        shown = "" if weights is None else " ".join(f"{n}={w:.2f}" for n, w in zip(self.teacher_names, weights))
        return f"epoch {info.get('epoch', 0)} step {info.get('step', 0)} lr {info.get('lr', 0):.4g} weights: {shown}"

    def close(self) -> None:
        # teachers and data stay (re-creating them is the expensive part); drop the episode state
        self.engine.current = None
        self._last_observation = None

    # ------------------------------------------------------------------ observations
    def _observation(self) -> np.ndarray:
        assert self.engine.current is not None
        self._last_observation = batch_features(
            self.engine.current, self.feature_spec, progress=self.engine.progress, lr=self.engine.lr, max_lr=self.max_lr
        )
        return self._last_observation.copy()

    def _terminal_observation(self) -> np.ndarray:
        """No next batch exists at the end: the last observation with progress set to its final value."""
        assert self._last_observation is not None
        observation = self._last_observation.copy()
        observation[self.feature_names.index("progress")] = np.float32(self.engine.progress)
        observation[self.feature_names.index("lr")] = np.float32(min(self.engine.lr, self.max_lr))
        self._last_observation = observation
        return observation.copy()

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write the whole training state (student, adapters, optimizer, schedule, data order,
        RNG, reward state) atomically. ``load`` on an env built with the same arguments resumes it."""
        if self._last_observation is None:
            raise RuntimeError("nothing to save: call reset() first")
        state = {
            "format": CHECKPOINT_FORMAT,
            "kind": type(self).__name__,
            "settings": self._compat_settings(),
            "engine": self.engine.state_dict(),
            "rewards": self.rewards.state_dict(),
            "np_random": self.np_random.bit_generator.state,
            "episode_seed": self._episode_seed,
            "last_observation": torch.from_numpy(self._last_observation.copy()),
        }
        return atomic_torch_save(state, path)

    def load(self, path: str | Path) -> None:
        """Restore a :meth:`save` checkpoint; raises ``ValueError`` naming what does not match."""
        state = load_env_checkpoint(path, type(self).__name__, self._compat_settings())
        self.engine.load_state_dict(state["engine"])
        self.rewards.load_state_dict(state["rewards"])
        self.np_random.bit_generator.state = state["np_random"]
        self._episode_seed = state["episode_seed"]
        self._last_observation = state["last_observation"].numpy().astype(np.float32)

    def _compat_settings(self) -> dict[str, Any]:
        return compat_settings(self.settings, self.teacher_names)


def compat_settings(settings: KDEnvSettings, teacher_names: list[str]) -> dict[str, Any]:
    """The settings that must match between a checkpoint and the env that loads it."""
    keys = ("dataset", "student", "epochs", "batch_size", "feature_kd", "reward_mode", "max_steps_per_epoch")
    values = {key: getattr(settings, key) for key in keys}
    values["teacher_names"] = list(teacher_names)
    return values


def load_env_checkpoint(path: str | Path, kind: str, expected: dict[str, Any]) -> dict[str, Any]:
    """Read an env checkpoint and check that it belongs to an env like this one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no environment checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise ValueError(f"environment checkpoint {path} is corrupt or truncated ({exc}); save it again") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a kd-env environment checkpoint (format {CHECKPOINT_FORMAT})")
    if state.get("kind") != kind:
        raise ValueError(f"{path} holds a {state.get('kind')} checkpoint, this env is a {kind}")
    mismatched = {k: (state["settings"].get(k), v) for k, v in expected.items() if state["settings"].get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs env {b!r}" for k, (a, b) in mismatched.items())
        raise ValueError(f"checkpoint {path} was made by a different environment ({details}); build the env with the same arguments")
    return state
