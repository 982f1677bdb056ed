"""stable-baselines3's PPO, unchanged, on the same batch-level env as REINFORCE.

.venv/bin/python examples/ppo_fashion_mnist.py
.venv/bin/tensorboard --logdir runs/examples
"""

from __future__ import annotations

from typing import cast

import gymnasium as gym
from stable_baselines3.common.callbacks import BaseCallback

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.agents.sb3 import make_sb3_agent
from kd_env.envs import MultiTeacherKDEnv

LOG_DIR = "runs/examples/ppo_fashion_mnist"

env = gym.make("MultiTeacherKD-FashionMNIST-v0", epochs=3, train_teachers=True)
budget = cast(MultiTeacherKDEnv, env.unwrapped).engine.total_steps  # one student training run

# PPO with the recommended hyperparameters for slow-stepping envs (agents/hyperparams/ppo.yml):
# short rollouts, observation normalisation, the agent on the CPU.
model = make_sb3_agent("ppo", env, seed=0, tensorboard_log=LOG_DIR)


class PrintEpochs(BaseCallback):
    """Print validation accuracy at epoch ends and keep the run's final numbers."""

    final: dict = {}

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]
        if "val_acc" in info:
            print(f"epoch {info['epoch']}: val acc {info['val_acc']:.4f}, weights {info['weights'].round(3)}")
        if "final_test_acc" in info:
            PrintEpochs.final = dict(info)
        return True


model.learn(budget, callback=PrintEpochs())
print(f"student test accuracy (best-validation checkpoint): {PrintEpochs.final['final_test_acc']:.4f}")
print(f"TensorBoard logs: {LOG_DIR}")
