"""kd-env: multi-teacher knowledge distillation as a Gymnasium environment.

``import kd_env`` registers ``MultiTeacherKD-CIFAR100-v0``, ``MultiTeacherKD-CIFAR10-v0``,
``MultiTeacherKD-FashionMNIST-v0`` and ``MultiTeacherKD-Synthetic-v0``.
:func:`register_policy` adds a method of your own to ``kd-env train`` / ``bench`` (see :mod:`kd_env.registry`);
:func:`register_pool` a teacher pool of your own (checkpoints, or :class:`TeacherRecipe` s trained and cached).
"""

from __future__ import annotations

from kd_env.envs import ENV_IDS, MultiTeacherKDEnv, PerSampleKDVectorEnv, make_sb3_per_sample_env, register_envs
from kd_env.registry import policy_names, register_policy
from kd_env.teachers import TeacherRecipe, register_pool  # the envs import them anyway: no extra cost
from kd_env.version import __version__

register_envs()

__all__ = [
    "ENV_IDS",
    "MultiTeacherKDEnv",
    "PerSampleKDVectorEnv",
    "TeacherRecipe",
    "__version__",
    "make_sb3_per_sample_env",
    "policy_names",
    "register_envs",
    "register_policy",
    "register_pool",
]
