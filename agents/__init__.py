"""Agents that learn teacher weights (installed as ``kd_env.agents``).

* :class:`Reinforce`: our policy-gradient agent (batch-level and per-sample envs);
* :class:`MTKDRL`: the published MTKD-RL agent, reproduced from the official code;
* :class:`MTKDRLPG`: per-sample teacher routing by a true policy gradient (a teacher-equivariant
  scorer, or MTKD-RL's network with its priors), for the label-aware ``label_logprob`` reward;
* :mod:`kd_env.agents.sb3`: stable-baselines3's PPO, A2C, SAC, TD3 and DDPG with recommended
  hyperparameters for these slow-stepping envs.

All follow SB3's ``predict`` / ``learn`` / ``save`` / ``load`` protocol.
"""

from .base import BaseAgent, StepRecord
from .mtkd_rl import MTKDRL
from .mtkd_rl_pg import MTKDRLPG
from .reinforce import Reinforce

__all__ = ["MTKDRL", "MTKDRLPG", "BaseAgent", "Reinforce", "StepRecord"]
