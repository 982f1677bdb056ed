"""What an agent's ``learn`` tells its callbacks: the per-step record and the accepted callback forms.

A callback is ``None``, a callable ``callback(record) -> bool | None``, an object with
``on_step(agent, record) -> bool | None`` (optionally ``on_training_start(agent)`` /
``on_training_end(agent)``), or a list of those; returning ``False`` stops ``learn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np

__all__ = ["AgentCallback", "CallbackLike", "Learner", "StepRecord", "as_callback_list"]


class Learner(Protocol):
    """What a callback may rely on in the agent it is handed: SB3's model surface, which
    :class:`~kd_env.agents.base.BaseAgent` (and so every kd-env agent) provides."""

    num_timesteps: int
    last_losses: dict[str, float]

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]: ...

    def save(self, path: str | Path) -> Path: ...


class StepRecord(TypedDict):
    """What a callback sees after each ``env.step`` (the runner logs it to TensorBoard)."""

    agent: Learner
    step: int
    """Index of this ``env.step`` call, counted from the last ``reset_num_timesteps=True``."""
    num_timesteps: int
    """SB3's counter after this step (``N`` per step)."""
    reward: float | np.ndarray
    """The env's reward: a float for a ``gym.Env``, ``[N]`` for a vector env."""
    reward_mean: float
    info: dict[str, Any]
    """The ``info`` dict of ``env.step``, unchanged."""
    done: bool
    """The episode ended on this step (terminated or truncated)."""
    losses: dict[str, float] | None
    """The agent's losses if this step completed a rollout and triggered an update, else None."""
    episode_return: float | None
    """Undiscounted return of the episode that just ended (mean over slots), else None."""
    episode_length: int | None


@runtime_checkable
class AgentCallback(Protocol):
    """The object form of a callback (SB3's ``BaseCallback._on_step`` in spirit)."""

    def on_step(self, agent: Learner, record: StepRecord) -> bool | None: ...


CallbackLike = None | Callable[[StepRecord], bool | None] | AgentCallback | Sequence[Any]


def as_callback_list(callback: CallbackLike) -> list[Any]:
    if callback is None:
        return []
    callbacks = list(callback) if isinstance(callback, (list, tuple)) else [callback]
    for item in callbacks:
        if not (hasattr(item, "on_step") or callable(item)):
            raise ValueError(f"callback {item!r} is neither callable nor has an on_step(agent, record) method")
    return callbacks
