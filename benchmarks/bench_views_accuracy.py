"""Accuracy with fixed augmented views against fresh augmentation (issue #27), side by side.

Fashion-MNIST with augmentation on (crop 4 + flip), ``--train-size`` training images, the default
pool, uniform teacher weights through the batch-level env, logit KD (``feature_kd=False``, as FKD
stores soft labels), ``--epochs`` epochs; for each seed, three runs: fresh augmentation (the
teachers on every batch), ``augment_views=4`` and ``augment_views=16`` (the views drawn once
from ``views_seed=0``; the stores are built by each variant's first run, their build time
printed apart). Reported: the test accuracy of the best-validation student, mean +- std over the
seeds per variant, and whether each views mean lies within the seed spread (one std) of fresh
augmentation's mean, else how far.

Run (about 10-15 minutes on 2 threads, the stores' builds included):

    .venv/bin/python benchmarks/bench_views_accuracy.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch


def one_run(seed: int, views: int | None, args: argparse.Namespace) -> tuple[float, float]:
    """Test accuracy of the best-validation student, and the run's seconds (set-up included)."""
    import gymnasium as gym

    import kd_env  # noqa: F401  (registers the envs)

    kwargs: dict[str, Any] = {
        "augment": True,
        "feature_kd": False,
        "train_size": args.train_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "reward_mode": "neg_loss",
        "action_mode": "simplex",
    }
    if views is not None:
        kwargs["augment_views"] = views
    start = time.perf_counter()
    env: Any = gym.make("MultiTeacherKD-FashionMNIST-v0", **kwargs).unwrapped
    action = np.full(env.action_space.shape, 1.0, dtype=np.float32)
    env.reset(seed=seed)
    info: dict[str, Any] = {}
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(action)
    env.close()
    return 100.0 * float(info["final_test_acc"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--views", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants: list[int | None] = [None, *args.views]
    names = {views: "fresh augmentation" if views is None else f"{views} views" for views in variants}
    accuracy: dict[int | None, list[float]] = {views: [] for views in variants}
    seconds: dict[int | None, list[float]] = {views: [] for views in variants}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Fashion-MNIST, augmentation on (crop 4 + flip), "
        f"{args.train_size} training images, {args.epochs} epochs, batch {args.batch_size}, uniform weights, logit KD"
    )
    for views in args.views:  # build each store first: its build is not a run's time
        _, build = one_run(0, views, argparse.Namespace(**{**vars(args), "epochs": 1}))
        print(f"  {views} views: store built (and one 1-epoch run) in {build:.1f} s")
    for seed in range(args.seeds):  # the variants alternate within each seed
        for views in variants:
            acc, run_seconds = one_run(seed, views, args)
            accuracy[views].append(acc)
            seconds[views].append(run_seconds)
            print(f"  seed {seed} {names[views]}: test accuracy {acc:.2f}% ({run_seconds:.1f} s)", flush=True)
    fresh_mean, fresh_std = statistics.mean(accuracy[None]), statistics.stdev(accuracy[None])
    print(f"[views accuracy] test accuracy of the best-validation student, mean +- std over {args.seeds} seeds")
    for views in variants:
        mean, std = statistics.mean(accuracy[views]), statistics.stdev(accuracy[views])
        line = f"  {names[views]:>18}: {mean:.2f} +- {std:.2f}  (median run {statistics.median(seconds[views]):.1f} s)"
        if views is not None:
            gap = mean - fresh_mean
            spread = max(fresh_std, std)
            verdict = "within the seed spread" if abs(gap) <= spread else f"outside the seed spread by {abs(gap) - spread:.2f} points"
            line += f"; difference to fresh {gap:+.2f}, seed std {spread:.2f}: {verdict}"
        print(line)
    print(f"  (fresh augmentation: {fresh_mean:.2f} +- {fresh_std:.2f})")


if __name__ == "__main__":
    main()
