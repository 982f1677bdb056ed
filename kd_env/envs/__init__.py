"""Gymnasium views over the distillation engine, and their registration.

``import kd_env`` registers the ids below; ``gym.make("kd_env:MultiTeacherKD-CIFAR100-v0")`` works
without the import. Each id builds the batch-level :class:`MultiTeacherKDEnv` with
``gym.make`` and the per-sample :class:`PerSampleKDVectorEnv` with
``gym.make_vec(id, num_envs=B, vectorization_mode="vector_entry_point")``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from kd_env.envs.assembly import StudentFactory, TeacherSetupError
from kd_env.envs.batch_env import MultiTeacherKDEnv
from kd_env.envs.per_sample_env import PerSampleKDVectorEnv
from kd_env.envs.settings import DATASET_DEFAULTS, KDEnvSettings

ENV_IDS: dict[str, str] = {
    "MultiTeacherKD-CIFAR100-v0": "cifar100",
    "MultiTeacherKD-CIFAR10-v0": "cifar10",
    "MultiTeacherKD-FashionMNIST-v0": "fashion_mnist",
    "MultiTeacherKD-Synthetic-v0": "synthetic",
}


def register_envs() -> None:
    """Register every kd-env id with Gymnasium (idempotent)."""
    for env_id, dataset in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="kd_env.envs.batch_env:MultiTeacherKDEnv",
            vector_entry_point="kd_env.envs.per_sample_env:PerSampleKDVectorEnv",
            kwargs={"dataset": dataset},
            # the env enforces reset-before-step itself; without the wrapper an env restored by
            # ``env.unwrapped.load(path)`` can continue its episode through ``gym.make``'s wrappers
            order_enforce=False,
            # Gymnasium's passive checker (a one-time, warn-only check of the first reset and
            # step) crashes with a TypeError on a step that follows ``env.unwrapped.load(path)``
            # instead of a reset; the tests run Gymnasium's and SB3's full ``check_env`` instead.
            # ``gym.make(id, disable_env_checker=False)`` still adds it; with it on, resume with
            # ``env.reset(options={"checkpoint": path})``, which every wrapper sees as a reset.
            disable_env_checker=True,
            # deterministic on CPU; on GPU cuDNN may not be, see the README
            nondeterministic=False,
        )


def make_sb3_per_sample_env(env_id: str, num_envs: int = 1, **kwargs: Any):
    """The per-sample env of ``env_id`` wrapped for stable-baselines3 (a ``VecEnv``)."""
    from kd_env.envs.sb3_vec import SB3VecEnvAdapter

    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    return SB3VecEnvAdapter(env)


__all__ = [
    "DATASET_DEFAULTS",
    "ENV_IDS",
    "KDEnvSettings",
    "MultiTeacherKDEnv",
    "PerSampleKDVectorEnv",
    "StudentFactory",
    "TeacherSetupError",
    "make_sb3_per_sample_env",
    "register_envs",
]
