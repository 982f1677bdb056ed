"""AEKD's weights: the FISTA solver (``capped_simplex_min_norm``) against the exact active-set
solver (``capped_simplex_min_norm_exact``), side by side on the Gram matrices of the Fashion-MNIST
pool (issue #25).

Run (the Fashion-MNIST teacher pool cached, or trained first):

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/aekd_solver.py --updates 300

It trains a student for ``--updates`` updates with AEKD's own weights (the batch-level env, the
given pools, AE-KD's cap 0.6), keeps the Gram matrix of every update (the one ``aekd_weights``
builds from the batch's logits), then times both solvers on the same matrices, interleaved in
``--repeats`` rounds (the median round is reported), and prints the speed ratio, the iteration
counts' spread and the largest difference of the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.baselines import rules
from kd_env.engine import DistillationEngine


def pool_grams(pool: str, updates: int, seed: int, temperature: float = 4.0) -> list[torch.Tensor]:
    """The Gram matrices ``G = g g^T`` of ``updates`` AEKD updates on a Fashion-MNIST pool."""
    env = gym.make("MultiTeacherKD-FashionMNIST-v0", pool=pool, reward_mode="neg_loss", feature_kd=False, action_mode="simplex")
    env.reset(seed=seed)
    engine: DistillationEngine = getattr(env.unwrapped, "engine")  # noqa: B009  (the env's own, not typed on gym.Env)
    grams: list[torch.Tensor] = []
    for _ in range(updates):
        batch = engine.current
        if batch is None:
            env.reset(seed=seed + len(grams))
            batch = engine.current
        assert batch is not None
        with torch.no_grad():
            student = torch.softmax(batch.student_logits.double() / temperature, dim=-1).mean(0)
            teachers = torch.softmax(batch.teacher_logits.double() / temperature, dim=-1).mean(1)
            gradients = student.unsqueeze(0) - teachers
            gram = gradients @ gradients.T
        grams.append(gram)
        weights = rules.capped_simplex_min_norm(gram, 0.6)
        env.step(weights.float().numpy())
    env.close()
    return grams


def time_solver(solve: Callable[[torch.Tensor, float], torch.Tensor], grams: list[torch.Tensor]) -> float:
    """Seconds per call over ``grams``."""
    start = time.perf_counter()
    for gram in grams:
        solve(gram, 0.6)
    return (time.perf_counter() - start) / len(grams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", nargs="+", default=["capacity", "mixed"], help="Fashion-MNIST pools (kd_env.teachers.POOLS)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for pool in args.pool:
        compare(pool, pool_grams(pool, args.updates, args.seed), args.repeats)


def compare(pool: str, grams: list[torch.Tensor], repeats: int) -> None:
    """Both solvers on ``grams``: weights, objective and time per solve."""
    num = grams[0].shape[0]
    fista = [rules.capped_simplex_min_norm(gram, 0.6) for gram in grams]
    exact = [rules.capped_simplex_min_norm_exact(gram, 0.6) for gram in grams]
    difference = max(float((a - b).abs().max()) for a, b in zip(fista, exact))
    gap = max(float(b @ g @ b - a @ g @ a) / max(float(g.abs().max()), 1e-300) for a, b, g in zip(exact, fista, grams))
    rounds: dict[str, list[float]] = {"fista": [], "exact": []}
    for _ in range(repeats):  # interleaved, so that both see the same machine load
        rounds["fista"].append(time_solver(rules.capped_simplex_min_norm, grams))
        rounds["exact"].append(time_solver(rules.capped_simplex_min_norm_exact, grams))
    old, new = statistics.median(rounds["fista"]), statistics.median(rounds["exact"])
    at_cap = np.mean([bool((w >= 0.6 - 1e-9).any()) for w in exact])
    at_zero = np.mean([bool((w <= 1e-12).any()) for w in exact])
    print(f"Fashion-MNIST pool {pool!r}: K = {num} teachers, {len(grams)} updates' Gram matrices, cap 0.6")
    print(f"  updates with a weight at the cap: {at_cap:.0%}, with a weight at 0: {at_zero:.0%}")
    print(f"  FISTA (capped_simplex_min_norm):       {old * 1e3:8.3f} ms a solve (median of {repeats} rounds)")
    print(f"  exact (capped_simplex_min_norm_exact): {new * 1e3:8.3f} ms a solve")
    print(f"  speed ratio FISTA / exact: {old / new:.1f}x (goal >= 10x)")
    print(f"  largest weight difference: {difference:.2e} (goal <= 1e-6)")
    print(f"  largest objective excess of FISTA over exact, relative to max |G|: {gap:.2e}")


if __name__ == "__main__":
    main()
