"""PPO on the per-sample env (MTKD-RL's formulation): one decision per training sample.

The per-sample env is a Gymnasium VectorEnv whose slots are the samples of a batch; SB3 sees it
through kd-env's VecEnv adapter, so PPO trains on it unchanged.

    .venv/bin/python examples/ppo_per_sample.py
    .venv/bin/tensorboard --logdir runs/examples
"""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

import kd_env
from kd_env.agents.sb3 import make_sb3_agent

LOG_DIR = "runs/examples/ppo_per_sample"
BATCH = 128

# num_envs is the batch size: 128 sample slots, one student update per vector step.
venv = kd_env.make_sb3_per_sample_env(
    "MultiTeacherKD-FashionMNIST-v0", num_envs=BATCH, epochs=3, reward_mode="neg_loss", train_teachers=True
)
budget = venv.env.engine.total_steps * BATCH  # SB3 counts one timestep per slot

model = make_sb3_agent("ppo", venv, env_id="MultiTeacherKD-FashionMNIST-v0", per_sample=True, seed=0, tensorboard_log=LOG_DIR)


class PrintEpochs(BaseCallback):
    final: dict = {}

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]  # every slot carries the batch's values
        if "val_acc" in info:
            print(f"epoch {info['epoch']}: val acc {info['val_acc']:.4f}")
        if "final_test_acc" in info:
            PrintEpochs.final = dict(info)
        return True


model.learn(budget, callback=PrintEpochs())
print(f"student test accuracy (best-validation checkpoint): {PrintEpochs.final['final_test_acc']:.4f}")
print(f"TensorBoard logs: {LOG_DIR}")
