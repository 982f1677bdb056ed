"""An adapter from the per-sample Gymnasium VectorEnv to stable-baselines3's ``VecEnv`` API.

SB3 has its own vector API (``step_async``/``step_wait``, ``dones``, a list of info dicts,
auto-reset inside ``step_wait`` with ``terminal_observation``). Gymnasium 1.x vector envs are
not accepted by SB3 directly, so this thin adapter translates; PPO, A2C, SAC, TD3 and DDPG then
train on the per-sample env unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn


class SB3VecEnvAdapter(VecEnv):
    """Present a :class:`PerSampleKDVectorEnv` (one slot per sample) as an SB3 ``VecEnv``.

    Args:
        env: the per-sample vector env, or a Gymnasium wrapper of it.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        self.env = env
        self.render_mode = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        # SB3 seeds each sub-env with seed + index; the slots share one episode, so the first one counts
        seed = self._seeds[0]
        observation, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return observation

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.env.action_space.shape)

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async must come before step_wait"
        observation, rewards, terminations, truncations, infos = self.env.step(self._actions)
        dones = terminations | truncations
        info_list: list[dict[str, Any]] = [
            {key: value[index] for key, value in infos.items() if not key.startswith("_")} for index in range(self.num_envs)
        ]
        if dones.any():
            # SB3 resets inside step_wait; Gymnasium's NEXT_STEP mode would waste one step on it
            for index, info in enumerate(info_list):
                info["terminal_observation"] = observation[index]
                info["TimeLimit.truncated"] = bool(truncations[index] and not terminations[index])
            observation, _ = self.env.reset()
        return observation, rewards.astype(np.float32), dones, info_list

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.env, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
