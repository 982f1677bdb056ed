"""Compare weighting methods on one env: equal weights, entropy, confidence, REINFORCE, PPO.

Every method trains one student for the same budget through the same env; the number reported
is the test accuracy of the best-validation student, mean +- std over seeds.

    .venv/bin/python examples/compare.py
    .venv/bin/tensorboard --logdir results/compare/runs

The full sweeps are `kd-env bench --preset fmnist` and `--preset cifar100-paper`.
"""

from __future__ import annotations

from kd_env.comparison import Method, Preset, run_benchmark

preset = Preset(
    env_id="MultiTeacherKD-FashionMNIST-v0",
    methods=[
        Method("AVER (equal weights)", "aver"),
        Method("EBKD (entropy)", "ebkd"),
        Method("CA-MKD (confidence)", "camkd"),
        Method("REINFORCE", "reinforce"),
        Method("PPO", "ppo"),
    ],
    seeds=[0, 1],
    env_kwargs={"epochs": 1, "train_teachers": True},
    description="Fashion-MNIST, 1 epoch, 2 seeds",
)

rows = run_benchmark(preset, "results/compare")
for row in sorted(rows, key=lambda row: -row["test_acc_mean"]):
    print(f"{row['method']:>22}: {row['test_acc_mean']:.2f} +- {row['test_acc_std']:.2f} % test accuracy")
print("table, plots and TensorBoard runs: results/compare")
