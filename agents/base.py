"""The common core of kd-env's own agents: env handling, the learn loop, callbacks, checkpoints.

:class:`BaseAgent` mirrors stable-baselines3's model API (``predict`` / ``learn`` / ``save`` /
``load``) so one runner treats our agents, SB3 models and the classic rules alike; its docstring
is the contract (envs, counting, callbacks, resume).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces

from kd_env.checkpoint_format import read_checkpoint, write_checkpoint

from .callbacks import AgentCallback, CallbackLike, StepRecord, as_callback_list
from .vector_view import EnvLike, VectorView, box_from_state, box_to_state, check_box, same_box

__all__ = ["AgentCallback", "BaseAgent", "CallbackLike", "EnvLike", "StepRecord", "VectorView"]

CHECKPOINT_FORMAT = "kd_env.agent/1"

AgentT = TypeVar("AgentT", bound="BaseAgent")

SAVED_PARTS = ("policy", "optimizer", "generator", "predict_generator", "obs_stats")
"""The parts of an agent that :class:`BaseAgent` saves and restores itself, where the agent has
them (the attribute exists and is not ``None``): the policy network, its optimizer, the RNG
streams of learning and of ``predict`` (``torch.Generator``) and the running observation
statistics (anything with ``state_dict`` / ``load_state_dict``). They are stored under these
names next to what the agent's :meth:`BaseAgent._state_dict` adds."""


class BaseAgent(ABC):
    """Abstract base of kd-env's own agents.

    API (SB3's)
    -----------
    * ``predict(observation, state=None, episode_start=None, deterministic=False) -> (action,
      state)``: actions in the env's action space (raw actions, never weights) for one
      observation ``[D]`` or a batch ``[N, D]``;
    * ``learn(total_timesteps, callback=None, progress_bar=False, reset_num_timesteps=True)``;
    * ``save(path)`` (atomic) and the classmethod ``load(path, env=None)``;
    * ``num_timesteps`` and ``last_losses`` (``{name: float}`` of the latest update).

    Environments
    ------------
    Two kinds are accepted, through one ``[N, ...]`` view:

    * a ``gym.Env`` (e.g. :class:`~kd_env.envs.MultiTeacherKDEnv`): ``N = 1``, one action per step;
    * a Gymnasium ``VectorEnv`` whose slots share one episode (e.g.
      :class:`~kd_env.envs.PerSampleKDVectorEnv`, one slot per sample of the batch):
      ``N = num_envs``, one action and one reward per slot per step.

    ``num_timesteps`` counts like SB3: ``N`` per ``env.step`` call. The first episode is reset
    with ``seed``; later ones continue the env's own RNG.

    Callbacks
    ---------
    ``callback`` is ``None``, a callable ``callback(record) -> bool | None``, an object with
    ``on_step(agent, record) -> bool | None`` (and optionally ``on_training_start(agent)`` /
    ``on_training_end(agent)``), or a list of those. It is called after every ``env.step`` with
    a :class:`StepRecord` (step index, reward, the env's ``info``, episode end and return, and
    ``losses`` after an update); returning ``False`` stops ``learn`` (``None`` continues).

    Resuming a training run
    -----------------------
    A run's state lives in two places: the agent (networks, optimizer, RNG streams, observation
    statistics, baselines, the partial rollout, the last observation) and the environment
    (student, data order, its own RNG). Save both, restore both, continue without resetting::

        agent.save("agent.pt")
        env.unwrapped.save("env.pt")
        ...
        env = gym.make(env_id, **same_kwargs)          # or PerSampleKDVectorEnv(**same_kwargs)
        env.unwrapped.load("env.pt")
        agent = Reinforce.load("agent.pt", env=env)
        agent.learn(remaining_timesteps, reset_num_timesteps=False)

    On CPU this continues bit for bit: ``learn(N)`` in one go and ``learn(N/2)``, save, load,
    ``learn(N/2, reset_num_timesteps=False)`` give identical parameters wherever the split falls
    (the partial rollout is in the checkpoint). As in SB3, a continued ``learn`` counts
    *additional* timesteps. With ``reset_num_timesteps=True`` (the default) ``learn`` starts a
    new episode and drops any partial rollout. An env with another number of slots than the
    saved one cannot continue the episode: the agent then starts a new one.

    Args:
        env: a ``gym.Env`` or a shared-episode ``VectorEnv``; ``None`` for a predict-only agent,
            which then needs ``observation_space`` and ``action_space``.
        seed: seeds the network initialisation, the agent's sampling RNG and the env's first reset.
        observation_space: the (single-slot) observation space when ``env`` is None.
        action_space: the (single-slot) action space when ``env`` is None.

    Attributes:
        num_timesteps: SB3's counter (``N`` per ``env.step``).
        last_losses: the losses of the latest update, ``{name: float}`` (empty before the first).
    """

    def __init__(
        self,
        env: EnvLike | None,
        seed: int = 0,
        observation_space: spaces.Box | None = None,
        action_space: spaces.Box | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.env: EnvLike | None = env
        self._view: VectorView | None = None
        if env is not None:
            self._view = VectorView(env)
            self.observation_space = self._view.observation_space
            self.action_space = self._view.action_space
            self.num_envs = self._view.num_envs
        else:
            if observation_space is None or action_space is None:
                raise ValueError("without an env, pass observation_space and action_space")
            self.observation_space = check_box(observation_space, "observation_space", bounded=False)
            self.action_space = check_box(action_space, "action_space", bounded=True)
            self.num_envs = 1
        self.observation_dim = int(self.observation_space.shape[0])
        self.action_dim = int(self.action_space.shape[0])
        self.num_timesteps = 0
        self.last_losses: dict[str, float] = {}
        self._num_env_steps = 0
        self._last_observation: np.ndarray | None = None
        self._needs_reset = True
        self._env_seeded = False
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = 0

    # ------------------------------------------------------------------ what subclasses provide
    @abstractmethod
    def _hyperparameters(self) -> dict[str, Any]:
        """The constructor's keyword arguments (JSON-able), so ``load`` can rebuild the agent."""

    @abstractmethod
    def _collect_action(self, observation: np.ndarray) -> np.ndarray:
        """Choose the actions ``[N, A]`` for ``observation [N, D]`` while learning, remembering
        what the update will need (the observation as the policy saw it, the sampled action)."""

    @abstractmethod
    def _collect_outcome(
        self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, next_observation: np.ndarray
    ) -> dict[str, float] | None:
        """Store the outcome of the last action; update when a rollout is complete and return
        the losses of that update (else None). ``next_observation`` is the terminal one at an end."""

    @abstractmethod
    def _discard_rollout(self) -> None:
        """Forget a partial rollout (a fresh ``learn`` or an env that cannot continue it)."""

    @abstractmethod
    def _predict(self, observation: np.ndarray, deterministic: bool) -> np.ndarray:
        """Actions ``[N, A]`` in the env's action space for ``observation [N, D]``; no learning
        state (statistics, training RNG) may change here."""

    @abstractmethod
    def _state_dict(self) -> dict[str, Any]:
        """The agent's own state (``torch.load(weights_only)``-safe): what :data:`SAVED_PARTS`
        does not cover, e.g. extra networks, counters, baselines, the partial rollout."""

    @abstractmethod
    def _load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_state_dict` exactly (the :data:`SAVED_PARTS` are restored already)."""

    def _saved_parts(self) -> dict[str, Any]:
        """The agent's :data:`SAVED_PARTS` that it has (attributes not ``None``), by name."""
        parts = {name: getattr(self, name, None) for name in SAVED_PARTS}
        return {name: part for name, part in parts.items() if part is not None}

    def _parts_state_dict(self) -> dict[str, Any]:
        """The state of each of :meth:`_saved_parts` (a generator's RNG state, else ``state_dict()``)."""
        return {
            name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict() for name, part in self._saved_parts().items()
        }

    def _load_parts_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_parts_state_dict` into the agent's parts (each one it has must be saved)."""
        for name, part in self._saved_parts().items():
            if isinstance(part, torch.Generator):
                part.set_state(state[name])
            else:
                part.load_state_dict(state[name])

    # ------------------------------------------------------------------ SB3 protocol
    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict``: actions for one observation ``[D]`` or a batch ``[N, D]``.

        The policy is memoryless, so ``state`` is passed through and ``episode_start`` ignored.
        """
        array = np.asarray(observation, dtype=np.float32)
        single = array.shape == self.observation_space.shape
        if not single and (array.ndim != 2 or array.shape[1:] != self.observation_space.shape):
            raise ValueError(f"observation has shape {array.shape}; expected {self.observation_space.shape} or (N, {self.observation_dim})")
        if not np.all(np.isfinite(array)):
            raise ValueError("observation contains NaN or inf")
        actions = self._predict(array[None] if single else array, deterministic)
        return (actions[0] if single else actions), state

    def learn(
        self: AgentT,
        total_timesteps: int,
        callback: CallbackLike = None,
        progress_bar: bool = False,
        reset_num_timesteps: bool = True,
    ) -> AgentT:
        """Train for ``total_timesteps`` more timesteps (``N`` per ``env.step``).

        Args:
            total_timesteps: timesteps to run in this call (stops at the first step reaching them).
            callback: see the class docstring; returning ``False`` stops early.
            progress_bar: show a tqdm bar.
            reset_num_timesteps: ``True`` starts afresh (counter to 0, new episode, partial
                rollout dropped); ``False`` continues where the agent stands, e.g. after
                :meth:`load` together with the env's own checkpoint.
        """
        if self._view is None:
            raise ValueError("this agent has no env: pass env= to the constructor or to load()")
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 0:
            raise ValueError(f"total_timesteps must be a non-negative int, got {total_timesteps!r}")
        callbacks = as_callback_list(callback)
        if reset_num_timesteps:
            self.num_timesteps = 0
            self._num_env_steps = 0
            self._needs_reset = True
            self._discard_rollout()
        target = self.num_timesteps + int(total_timesteps)
        for item in callbacks:
            if hasattr(item, "on_training_start"):
                item.on_training_start(self)
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(total_timesteps), desc=type(self).__name__, unit="step")
        try:
            while self.num_timesteps < target:
                record = self._one_step()
                if bar is not None:
                    bar.update(self.num_envs)
                if not self._notify(callbacks, record):
                    break
        finally:
            if bar is not None:
                bar.close()
        for item in callbacks:
            if hasattr(item, "on_training_end"):
                item.on_training_end(self)
        return self

    def _one_step(self) -> StepRecord:
        assert self._view is not None
        if self._needs_reset or self._last_observation is None:
            # the first episode is seeded by the agent's seed, later ones continue the env's RNG
            self._last_observation = self._view.reset(None if self._env_seeded else self.seed)
            self._env_seeded = True
            self._needs_reset = False
            self._episode_return[:] = 0.0
            self._episode_length = 0
        actions = self._collect_action(self._last_observation)
        observation, rewards, terminated, truncated, info = self._view.step(actions)
        self.num_timesteps += self.num_envs
        step_index = self._num_env_steps
        self._num_env_steps += 1
        self._episode_return += rewards
        self._episode_length += 1
        losses = self._collect_outcome(rewards, terminated, truncated, observation)
        if losses is not None:
            self.last_losses = losses
        done = bool(terminated.any() or truncated.any())
        self._last_observation = observation
        self._needs_reset = done
        return StepRecord(
            agent=self,
            step=step_index,
            num_timesteps=self.num_timesteps,
            reward=rewards.copy() if self._view.is_vector else float(rewards[0]),
            reward_mean=float(rewards.mean()),
            info=info,
            done=done,
            losses=losses,
            episode_return=float(self._episode_return.mean()) if done else None,
            episode_length=self._episode_length if done else None,
        )

    def _notify(self, callbacks: list[Any], record: StepRecord) -> bool:
        keep_going = True
        for item in callbacks:
            answer = item.on_step(self, record) if hasattr(item, "on_step") else item(record)
            keep_going = keep_going and answer is not False
        return keep_going

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write the agent atomically: class, hyperparameters, networks, optimizer, RNG states,
        counters, running statistics, baselines, partial rollout and last observation.
        The env's state is *not* included: save it with ``env.unwrapped.save``."""
        try:
            hyperparameters = json.dumps(self._hyperparameters(), sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"hyperparameters of {type(self).__name__} are not JSON-serialisable: {exc}") from exc
        state = {
            "agent_class": type(self).__name__,
            "hyperparameters": hyperparameters,
            "seed": self.seed,
            "observation_space": box_to_state(self.observation_space),
            "action_space": box_to_state(self.action_space),
            "num_envs": self.num_envs,
            "num_timesteps": self.num_timesteps,
            "num_env_steps": self._num_env_steps,
            "last_losses": dict(self.last_losses),
            "last_observation": None if self._last_observation is None else torch.from_numpy(self._last_observation.copy()),
            "needs_reset": self._needs_reset,
            "env_seeded": self._env_seeded,
            "episode_return": torch.from_numpy(self._episode_return.copy()),
            "episode_length": self._episode_length,
            "agent": {**self._parts_state_dict(), **self._state_dict()},
        }
        return write_checkpoint(path, CHECKPOINT_FORMAT, state)

    @classmethod
    def load(cls: type[AgentT], path: str | Path, env: EnvLike | None = None) -> AgentT:
        """Rebuild a :meth:`save` checkpoint exactly.

        Args:
            path: the checkpoint.
            env: the env to continue learning on (restore its own checkpoint first to resume
                an episode), or None for a predict-only agent.

        Raises:
            kd_env.checkpoint_format.CheckpointNotFoundError: no file at ``path`` (a ``FileNotFoundError``).
            kd_env.checkpoint_format.CheckpointReadError: the file is corrupt, is not an agent
                checkpoint or holds another agent class (a ``ValueError``).
            ValueError: ``env``'s spaces differ from the saved ones.
        """
        path = Path(path)
        state = read_checkpoint(
            path,
            CHECKPOINT_FORMAT,
            what="kd-env agent checkpoint",
            fix="save the agent again with agent.save(path)",
            kind_key="agent_class",
            kind=cls.__name__,
            required={"hyperparameters": str, "agent": dict},
        )
        observation_space = box_from_state(state["observation_space"])
        action_space = box_from_state(state["action_space"])
        if env is not None:
            view = VectorView(env)
            for name, saved, current in (
                ("observation", observation_space, view.observation_space),
                ("action", action_space, view.action_space),
            ):
                if not same_box(saved, current):
                    difference = f"shape {saved.shape} vs {current.shape}" if saved.shape != current.shape else "different bounds"
                    raise ValueError(
                        f"{path} does not fit this env: its {name} space differs ({difference}); build the env with the same arguments"
                    )
        hyperparameters = json.loads(state["hyperparameters"])
        agent = cls(
            env,
            seed=int(state["seed"]),
            observation_space=None if env is not None else observation_space,
            action_space=None if env is not None else action_space,
            **hyperparameters,
        )
        agent._load_parts_state_dict(state["agent"])
        agent._load_state_dict(state["agent"])
        agent.num_timesteps = int(state["num_timesteps"])
        agent._num_env_steps = int(state["num_env_steps"])
        agent.last_losses = {str(k): float(v) for k, v in state["last_losses"].items()}
        agent._env_seeded = bool(state["env_seeded"])
        same_slots = int(state["num_envs"]) == agent.num_envs and env is not None
        if same_slots and state["last_observation"] is not None and not state["needs_reset"]:
            agent._last_observation = state["last_observation"].numpy().astype(np.float32)
            agent._needs_reset = False
            agent._episode_return = state["episode_return"].numpy().astype(np.float64)
            agent._episode_length = int(state["episode_length"])
            assert agent._view is not None
            agent._view.allow_step_after_restore()
        else:
            agent._needs_reset = True
            if not same_slots:
                agent._discard_rollout()
        return agent

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
        return float(value)
