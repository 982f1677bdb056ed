"""How the runner drives each kind of policy: one :class:`Driver` per registry ``kind``
(:data:`DRIVERS`), over a :class:`RunContext` that holds the run's env, logger and budget.

* ``"policy"`` (:class:`PredictDriver`): the baselines and user policies, ``predict`` steps the env;
* ``"agent"`` (:class:`AgentDriver`): our agents, ``learn`` with a per-step callback;
* ``"sb3"`` (:class:`SB3Driver`): SB3's algorithms, ``learn`` with an SB3 callback (SB3's
  internals stay in :mod:`kd_env.agents.sb3`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kd_env.registry import PolicySpec
from kd_env.run.config import RunConfig
from kd_env.run.records import RunLogger, reduce_vector_info
from kd_env.run.run_folder import ENV_CHECKPOINT, RNG_FILE, _checkpoint_dir, _restore_global_rng

SavePolicy = Callable[[Path], object]
"""Writes a policy's checkpoint files into the folder it is given."""


class PolicyActionError(ValueError):
    """A policy returned an action the env refused (wrong shape, NaN, ...); the student was not updated."""


@dataclass
class RunContext:
    """What a :class:`Driver` needs to drive one run."""

    config: RunConfig
    spec: PolicySpec
    env: Any
    """The run's env as :func:`make_env` built it (what the policy is given)."""
    kd: Any
    """``env.unwrapped``: the kd-env env (its ``engine``, ``save`` / ``load``, ``last_observation``)."""
    logger: RunLogger
    remaining: int
    """Env steps left to run."""
    resumed: bool
    """Continuing from a checkpoint (the env is restored, the policy loaded)."""
    save_checkpoint: Callable[[SavePolicy], None]

    @property
    def checkpoints(self) -> Path:
        return _checkpoint_dir(self.config)

    @property
    def budget(self) -> int:
        """The env step at which the run stops."""
        return int(self.config.total_steps or self.kd.engine.total_steps * self.config.student_runs)

    @property
    def env_steps_per_timestep(self) -> int:
        """Timesteps (SB3's count) per env step: one per sample slot on the per-sample env."""
        return int(getattr(self.env, "num_envs", 1)) if self.config.per_sample else 1

    def batch_info(self, info: dict[str, Any]) -> dict[str, Any]:
        return reduce_vector_info(info) if self.config.per_sample else info

    def checkpoint_if_due(self, save_policy: SavePolicy) -> bool:
        """Checkpoint if this step is due; returns whether the budget is spent."""
        last = self.logger.step >= self.budget
        if _checkpoint_due(self.config, self.logger.step, last):
            self.save_checkpoint(save_policy)
        return last


class Driver(ABC):
    """How the runner builds, checkpoints, restores and steps one kind of policy."""

    checkpoint_file: ClassVar[str]
    """The policy's file in the run's ``checkpoints`` folder."""

    def build(self, context: RunContext) -> Any:
        """A new policy from the registry's factory: ``factory(env, seed=..., **agent_kwargs)``."""
        return context.spec.factory(context.env, seed=context.config.seed, **context.config.agent_kwargs)

    def restore(self, context: RunContext) -> Any:
        """The checkpointed policy: the entry's ``loader``, else the factory's policy with its
        checkpoint loaded (when it has ``load`` and a checkpoint was written)."""
        path = context.checkpoints / self.checkpoint_file
        if context.spec.loader is not None:
            return context.spec.loader(path, context.env)
        policy = self.build(context)
        if callable(getattr(policy, "load", None)) and path.exists():
            loaded = policy.load(path, env=context.env)
            return policy if loaded is None else loaded  # classmethod (returns) or in place (None)
        return policy

    def save(self, policy: Any, folder: Path) -> None:
        """Write the policy's checkpoint (policies without ``save`` keep none)."""
        if callable(getattr(policy, "save", None)):
            policy.save(folder / self.checkpoint_file)

    def run(self, context: RunContext) -> None:
        """Build (or restore, with the env) the policy and drive it for ``context.remaining`` steps."""
        if context.resumed:
            context.kd.load(context.checkpoints / ENV_CHECKPOINT)
            policy = self.restore(context)
            # building the restored policy drew from the global RNGs (e.g. SB3 initialises its
            # networks before loading them): put back their state at the checkpoint, so that the
            # policy's next random draws (SB3's action sampling) are the uninterrupted run's
            _restore_global_rng(context.checkpoints / RNG_FILE)
        else:
            policy = self.build(context)
        self.drive(context, policy)

    @abstractmethod
    def drive(self, context: RunContext, policy: Any) -> None:
        """Step the env ``context.remaining`` times with ``policy``, logging and checkpointing."""


class PredictDriver(Driver):
    """Policies that only act (the baselines, user policies): ``predict`` steps the env."""

    checkpoint_file = "policy.pt"

    def drive(self, context: RunContext, policy: Any) -> None:
        env = context.env
        if context.resumed:
            observation = context.kd.last_observation
        else:
            observation, _ = env.reset(seed=context.config.seed)
        for _ in range(context.remaining):
            action = _predict(context, policy, observation)
            try:
                observation, reward, terminated, truncated, info = env.step(action)
            except ValueError as exc:  # the env checks actions before it touches the student
                raise PolicyActionError(_bad_action_message(context, policy, action, exc)) from exc
            context.logger.log(context.batch_info(info), float(np.mean(reward)), None)
            if np.any(terminated) or np.any(truncated):
                observation, _ = env.reset()  # before the checkpoint, so a resume starts stepping
            if context.checkpoint_if_due(lambda folder: self.save(policy, folder)):
                return


def _predict(context: RunContext, policy: Any, observation: Any) -> Any:
    result = policy.predict(observation, deterministic=True)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise PolicyActionError(
            f"policy {context.config.agent!r} ({type(policy).__name__}).predict returned {type(result).__name__}; "
            "it must return (action, state) as SB3's predict does: return action, state"
        )
    return result[0]


def _bad_action_message(context: RunContext, policy: Any, action: Any, exc: ValueError) -> str:
    try:
        array = np.asarray(action, dtype=np.float64)
        returned = f"shape {array.shape}, {int(np.size(array) - np.isfinite(array).sum())} NaN/inf entries"
    except (TypeError, ValueError):
        returned = f"{type(action).__name__} that is not a numeric array"
    space = context.env.action_space
    mode = context.kd.settings.action_mode
    return (
        f"policy {context.config.agent!r} ({type(policy).__name__}) returned an action the env refused: {returned} "
        f"(env: {exc}). The student was not updated. Fix: predict must return a finite float array of shape "
        f"{tuple(space.shape)} (the env's action_space: one entry per teacher and head"
        f"{', one row per sample' if context.config.per_sample else ''}), valid in action_mode={mode!r}"
    )


class AgentDriver(Driver):
    """kd-env's agent protocol (:class:`kd_env.agents.BaseAgent`): ``learn`` with a per-step callback."""

    checkpoint_file = "agent.pt"

    def drive(self, context: RunContext, policy: Any) -> None:
        def on_step(record: dict[str, Any]) -> bool:
            context.logger.log(context.batch_info(record["info"]), float(record["reward_mean"]), record["losses"])
            return not context.checkpoint_if_due(lambda folder: self.save(policy, folder))

        timesteps = context.remaining * context.env_steps_per_timestep
        policy.learn(timesteps, callback=on_step, reset_num_timesteps=not context.resumed)


class SB3Driver(Driver):
    """stable-baselines3's algorithms, as they are (:mod:`kd_env.agents.sb3`)."""

    checkpoint_file = "agent.zip"

    def build(self, context: RunContext) -> Any:
        config = context.config
        return context.spec.factory(
            context.env, seed=config.seed, env_id=config.env_id, per_sample=config.per_sample, **config.agent_kwargs
        )

    def restore(self, context: RunContext) -> Any:
        from kd_env.agents.sb3 import continue_sb3_episode

        model = super().restore(context)
        continue_sb3_episode(model, context.kd.last_observation)  # the student's run goes on
        return model

    def save(self, policy: Any, folder: Path) -> None:
        from kd_env.agents.sb3 import save_sb3_agent

        save_sb3_agent(policy, folder / self.checkpoint_file)

    def drive(self, context: RunContext, policy: Any) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        driver = self

        class Logging(BaseCallback):
            def _on_step(self) -> bool:
                info = _sb3_batch_info(self.locals["infos"])
                values = self.model.logger.name_to_value.items()
                losses = {key.split("/")[-1]: value for key, value in values if key.startswith("train/")}
                # the env's own reward, as for every other agent: behind VecNormalize,
                # locals["rewards"] is the scaled reward the algorithm learns from
                normalizer = self.model.get_vec_normalize_env()
                rewards = self.locals["rewards"] if normalizer is None else normalizer.get_original_reward()
                context.logger.log(info, float(np.mean(rewards)), losses or None)
                # stop at the budget: SB3 would finish its rollout past it otherwise
                return not context.checkpoint_if_due(lambda folder: driver.save(self.model, folder))

        timesteps = context.remaining * policy.get_env().num_envs
        policy.learn(timesteps, callback=Logging(), reset_num_timesteps=not context.resumed)


DRIVERS: dict[str, Driver] = {"policy": PredictDriver(), "agent": AgentDriver(), "sb3": SB3Driver()}
"""One driver per registry ``kind`` (:data:`kd_env.registry.POLICY_KINDS`)."""


def _checkpoint_due(config: RunConfig, step: int, last: bool) -> bool:
    return last or (config.checkpoint_every > 0 and step % config.checkpoint_every == 0)


def _sb3_batch_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """SB3 hands one info dict per slot; the per-sample env's slots share the batch's values."""
    if len(infos) == 1:
        return infos[0]
    skip = {"terminal_observation", "episode", "TimeLimit.truncated"}
    stacked = {key: np.stack([np.asarray(item[key]) for item in infos]) for key in infos[0] if key not in skip}
    return reduce_vector_info(stacked)
