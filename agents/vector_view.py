"""One ``[N, ...]`` view over a ``gym.Env`` or a shared-episode ``VectorEnv``, and the checks and
checkpoint form of the 1-D ``Box`` spaces kd-env's agents act in."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

__all__ = ["EnvLike", "VectorView", "box_from_state", "box_to_state", "check_box", "same_box"]

EnvLike = gym.Env | VectorEnv


def check_box(space: Any, what: str, *, bounded: bool) -> spaces.Box:
    """``space`` if it is a 1-D Box (with finite bounds when ``bounded``); else ``ValueError`` naming ``what``."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{what} must be a 1-D gymnasium Box, got {space!r}")
    if bounded and not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(f"{what} must have finite bounds, got {space!r}")
    return space


def box_to_state(space: spaces.Box) -> dict[str, torch.Tensor]:
    """The Box's bounds as tensors, for a ``torch.load(weights_only=True)``-safe checkpoint."""
    return {
        "low": torch.from_numpy(np.asarray(space.low, dtype=np.float32).copy()),
        "high": torch.from_numpy(np.asarray(space.high, dtype=np.float32).copy()),
    }


def box_from_state(state: dict[str, torch.Tensor]) -> spaces.Box:
    """The float32 Box that :func:`box_to_state` stored."""
    return spaces.Box(state["low"].numpy(), state["high"].numpy(), dtype=np.float32)


def same_box(first: spaces.Box, second: spaces.Box) -> bool:
    """Same shape and the same bounds at float32 precision (the dtype the checkpoint keeps)."""
    return (
        first.shape == second.shape
        and np.array_equal(np.asarray(first.low, dtype=np.float32), np.asarray(second.low, dtype=np.float32))
        and np.array_equal(np.asarray(first.high, dtype=np.float32), np.asarray(second.high, dtype=np.float32))
    )


class VectorView:
    """One ``[N, ...]`` interface over a ``gym.Env`` (``N = 1``) or a shared-episode ``VectorEnv``.

    Args:
        env: the environment; its (single) observation and action spaces must be 1-D Boxes, the
            action space with finite bounds.
    """

    def __init__(self, env: EnvLike) -> None:
        self.env = env
        self.is_vector = isinstance(env, VectorEnv)
        if isinstance(env, VectorEnv):
            self.num_envs = int(env.num_envs)
            observation_space, action_space = env.single_observation_space, env.single_action_space
        elif isinstance(env, gym.Env):
            self.num_envs = 1
            observation_space, action_space = env.observation_space, env.action_space
        else:
            raise ValueError(f"env must be a gymnasium Env or VectorEnv, got {type(env).__name__}")
        self.observation_space = check_box(observation_space, "the observation space", bounded=False)
        # actions are squashed into the bounds, so they must be finite
        self.action_space = check_box(action_space, "the action space", bounded=True)

    def reset(self, seed: int | None) -> np.ndarray:
        observation, _ = self.env.reset(seed=seed)
        return self._batch(observation)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step with ``actions [N, A]``; returns observations ``[N, D]``, rewards, terminated and
        truncated flags ``[N]``, and the env's info dict."""
        action = actions if self.is_vector else actions[0]
        observation, reward, terminated, truncated, info = self.env.step(action)
        rewards = np.asarray(reward, dtype=np.float64).reshape(self.num_envs)
        terminated_flags = np.asarray(terminated, dtype=bool).reshape(self.num_envs)
        truncated_flags = np.asarray(truncated, dtype=bool).reshape(self.num_envs)
        ended = terminated_flags | truncated_flags
        if ended.any() and not ended.all():
            # autoreset of single slots would need masking; kd-env's slots share one episode
            raise RuntimeError(
                "some vector slots ended and others did not; kd-env agents support vector envs whose "
                "slots share one episode (like PerSampleKDVectorEnv)"
            )
        return self._batch(observation), rewards, terminated_flags, truncated_flags, dict(info)

    def allow_step_after_restore(self) -> None:
        """Let ``gym.make``'s wrappers accept ``step`` on an env restored by its own ``load``.

        A restored env is mid-episode without a ``reset`` call through the wrappers:
        ``OrderEnforcing`` forbids that, and ``PassiveEnvChecker``'s first-step check compares
        with reset data it never saw. Both only guard the start of an episode, which the env's
        checkpoint stands in for; the kd-env envs themselves still raise if they were *not*
        restored, so nothing unsafe gets through. (Gymnasium has no public switch for this.)
        """
        env: Any = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, gym.wrappers.OrderEnforcing):
                env._has_reset = True
            if isinstance(env, gym.wrappers.PassiveEnvChecker):
                env.checked_reset = env.checked_step = True
                env.checked_data_reuse = True
            env = env.env

    def _batch(self, observation: Any) -> np.ndarray:
        array = np.asarray(observation, dtype=np.float32)
        return array.reshape(self.num_envs, *self.observation_space.shape)
