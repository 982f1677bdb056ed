"""What both environment views share: the engine core, the step's ``info``, the run's final
numbers and the training-state checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from kd_env.engine import DistillationEngine, StepResult
from kd_env.envs.assembly import build_engine
from kd_env.envs.rewards import RewardTracker
from kd_env.envs.settings import KDEnvSettings
from kd_env.utils import atomic_torch_save
from kd_env.weights import action_to_weights, validate_action


def step_info(engine: DistillationEngine, result: StepResult) -> dict[str, Any]:
    """The deterministic ``info`` of one update (no wall-clock values, so checkers can compare)."""
    info: dict[str, Any] = {
        "weights": result.logit_weights.mean(0).cpu().numpy().astype(np.float32),
        "kd_loss": result.kd_loss.mean(0).cpu().numpy().astype(np.float32),
        "ce": float(result.student_ce.mean()),
        "loss": float(result.loss),
        "epoch": int(engine.epoch),
        "step": int(engine.global_step),
        "lr": float(engine.lr),
        "diverged": bool(result.diverged),
    }
    if result.feature_weights is not None:
        info["feature_weights"] = result.feature_weights.mean(0).cpu().numpy().astype(np.float32)
    if result.feature_mse is not None:
        info["feature_mse"] = result.feature_mse.mean(0).cpu().numpy().astype(np.float32)
    if result.epoch_end:
        info["val_acc"] = float(result.val_acc) if result.val_acc is not None else float("nan")
        if result.test_acc is not None:
            info["test_acc"] = float(result.test_acc)
    info.update(final_metrics(engine, result))
    return info


def final_metrics(engine: DistillationEngine, result: StepResult) -> dict[str, float]:
    """At the end of a training run: the best validation accuracy, its epoch, and the test
    accuracy of that best-validation student (the number to report). Empty before the end."""
    if not result.done or result.diverged or engine.best_student_state is None:
        return {}
    test_acc, _ = engine.evaluate("test", engine.best_student())
    return {"best_val_acc": float(engine.best_val_acc), "best_epoch": float(engine.best_epoch), "final_test_acc": float(test_acc)}


CHECKPOINT_FORMAT = "kd_env.env/1"
# settings that must match between a checkpoint and the env that loads it
_COMPAT_KEYS = ("dataset", "student", "epochs", "batch_size", "feature_kd", "reward_mode", "max_steps_per_epoch")


class KDEnvCore:
    """What the batch-level and the per-sample env share: settings, engine, action space,
    rewards, and the training-state checkpoint (``save`` / ``load``).

    Subclasses call :meth:`_setup_core` first in ``__init__`` and keep ``_last_observation``
    up to date; :meth:`_extra_state` / :meth:`_load_extra_state` add what is theirs alone.
    """

    settings: KDEnvSettings
    engine: DistillationEngine
    np_random: np.random.Generator
    _last_observation: np.ndarray | None

    def _setup_core(self, kwargs: dict[str, Any]) -> None:
        self.settings = KDEnvSettings.from_kwargs(**kwargs)
        self.engine = build_engine(self.settings)
        self.teacher_names = list(self.engine.teacher_names)
        self.num_teachers = self.engine.num_teachers
        self.heads = 2 if self.settings.feature_kd else 1
        self.rewards = RewardTracker(self.engine, self.settings.reward_mode, self.settings.probe_size, self.settings.reward_scale)
        self._last_observation = None
        self._episode_seed: int | None = None

    @property
    def last_observation(self) -> np.ndarray | None:
        """A copy of the observation the env last returned (e.g. to continue after :meth:`load`)."""
        return None if self._last_observation is None else self._last_observation.copy()

    def _single_action_space(self) -> spaces.Box:
        low = -1.0 if self.settings.action_mode == "softmax" else 0.0
        return spaces.Box(low, 1.0, (self.heads * self.num_teachers,), dtype=np.float32)

    def _start_episode(self) -> None:
        """A fresh student; every random draw of the episode derives from this one integer."""
        self._episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.engine.reset(self._episode_seed)
        self.rewards.reset()

    def _weights_for(self, action: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        array = validate_action(action, shape, self.settings.action_mode, self.num_teachers)
        return action_to_weights(array, self.num_teachers, self.heads, self.settings.action_mode, self.settings.scale)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _compat_settings(self) -> dict[str, Any]:
        values = {key: getattr(self.settings, key) for key in _COMPAT_KEYS}
        values["teacher_names"] = list(self.teacher_names)
        return values

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
            **self._extra_state(),
        }
        return atomic_torch_save(state, path)

    def load(self, path: str | Path) -> None:
        """Restore a :meth:`save` checkpoint; ``ValueError`` names what does not match."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no environment checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which and why
            raise ValueError(f"environment checkpoint {path} is corrupt or truncated ({exc}); save it again") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a kd-env environment checkpoint (format {CHECKPOINT_FORMAT})")
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"{path} holds a {state.get('kind')} checkpoint, this env is a {type(self).__name__}")
        expected = self._compat_settings()
        mismatched = {k: (state["settings"].get(k), v) for k, v in expected.items() if state["settings"].get(k) != v}
        if mismatched:
            details = ", ".join(f"{k}: checkpoint {a!r} vs env {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"checkpoint {path} was made by a different environment ({details}); build the env with the same arguments")
        self.engine.load_state_dict(state["engine"])
        self.rewards.load_state_dict(state["rewards"])
        self.np_random.bit_generator.state = state["np_random"]
        self._episode_seed = state["episode_seed"]
        self._last_observation = state["last_observation"].numpy().astype(np.float32)
        self._load_extra_state(state)
