"""REINFORCE learns teacher weights while a Fashion-MNIST student trains (batch-level env).

    .venv/bin/python examples/reinforce_fashion_mnist.py
    .venv/bin/tensorboard --logdir runs/examples

One episode is one student training run; the agent learns online during it, like MTKD-RL.
"""

from __future__ import annotations

from typing import cast

import gymnasium as gym
from torch.utils.tensorboard import SummaryWriter

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.agents.reinforce import Reinforce
from kd_env.envs import MultiTeacherKDEnv

LOG_DIR = "runs/examples/reinforce_fashion_mnist"

# 1. The environment: the default teacher pool (trained on first use, then cached) and student.
env = gym.make("MultiTeacherKD-FashionMNIST-v0", epochs=3, train_teachers=True)
kd = cast(MultiTeacherKDEnv, env.unwrapped)  # the env inside gym.make's wrappers
teachers = kd.teacher_names
print("teachers:", teachers)

# 2. The agent: a Gaussian policy over the action logits, updated every 16 student updates.
agent = Reinforce(env, seed=0, n_steps=16)

# 3. Log what the agent chose and how the student did, every step.
writer = SummaryWriter(LOG_DIR)
final: dict[str, float] = {}


def log(record: dict) -> None:
    info, step = record["info"], record["step"]
    for name, weight in zip(teachers, info["weights"]):
        writer.add_scalar(f"weights/logit/{name}", weight, step)
    writer.add_scalar("reward/mean", record["reward_mean"], step)
    if "val_acc" in info:
        writer.add_scalar("eval/val_acc", info["val_acc"], step)
        print(f"epoch {info['epoch']}: val acc {info['val_acc']:.4f}, weights {info['weights'].round(3)}")
    if "final_test_acc" in info:
        final.update(info)


# 4. One student training run (the env's whole budget of updates).
agent.learn(kd.engine.total_steps, callback=log, progress_bar=True)
writer.close()

print(f"student test accuracy (best-validation checkpoint): {final['final_test_acc']:.4f}")
print(f"TensorBoard logs: {LOG_DIR}")
