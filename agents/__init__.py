"""Agents that learn teacher weights (installed as ``kd_env.agents``).

* :class:`Reinforce`: our policy-gradient agent (batch-level and per-sample envs);
* :class:`MTKDRL`: the published MTKD-RL agent, reproduced from the official code;
* :mod:`kd_env.agents.sb3`: stable-baselines3's PPO, A2C, SAC, TD3 and DDPG with recommended
  hyperparameters for these slow-stepping envs.

All follow SB3's ``predict`` / ``learn`` / ``save`` / ``load`` protocol.
"""

from .base import BaseAgent, StepRecord
from .mtkd_rl import MTKDRL
from .reinforce import Reinforce

__all__ = ["MTKDRL", "BaseAgent", "Reinforce", "StepRecord"]
