"""Agents that learn teacher weights, installed as ``kd_env.agents``.

The source lives in the repository's top-level ``agents/`` folder and ``setup.cfg``'s
``package_dir`` installs it under ``kd_env``: import it as ``kd_env.agents``, never as
``agents`` (that name resolves only from the repository root, and on PyPI it belongs to other
projects). Modules, in the style of stable-baselines3 (an algorithm is a small subclass over a
common core):

* ``base``: :class:`BaseAgent`, the common core (SB3's ``predict`` / ``learn`` / ``save`` /
  ``load``, the learn loop, resume); ``callbacks`` (:class:`StepRecord`, the callback forms)
  and ``vector_view`` (one ``[N, ...]`` view over a ``gym.Env`` or a ``VectorEnv``) serve it;
* ``reinforce``: :class:`Reinforce`, our policy-gradient agent (batch-level and per-sample envs);
* ``mtkd_rl``: :class:`MTKDRL`, the published MTKD-RL agent, reproduced from the official code;
  its network, priors and loss are in ``mtkd_rl_network``;
* ``mtkd_rl_pg``: :class:`MTKDRLPG`, per-sample teacher routing by a true policy gradient (the
  ``router`` and ``mtkd-rl-pg`` agents); its networks are in ``routing_networks``;
* ``per_sample``: what the per-sample agents share (the env check, the state layout);
* ``sb3``: stable-baselines3's PPO, A2C, SAC, TD3 and DDPG as they are, with hyperparameters
  for these slow-stepping envs read RL-Zoo style by ``sb3_hyperparams`` from ``hyperparams/``.
"""

from .base import BaseAgent, StepRecord
from .mtkd_rl import MTKDRL
from .mtkd_rl_pg import MTKDRLPG
from .reinforce import Reinforce

__all__ = ["MTKDRL", "MTKDRLPG", "BaseAgent", "Reinforce", "StepRecord"]
