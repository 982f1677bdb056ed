"""CIFAR-100 on a GPU: a smoke run of the real code path and its step times.

No CIFAR-100 can be fetched on our machines, so this writes files of the real on-disk format
(``cifar-100-python/{train,test,meta}`` pickles) with random pixels and reads them through
torchvision (checksums off: the pixels are not the official ones). The teachers are the
MTKD-RL pool (RegNetY_400MF, RegNetX_400MF, resnet32x4, wrn_28_4), untrained (``random:``
specs): the step times are those of the real architectures, the accuracies are meaningless.

    python benchmarks/gpu_smoke.py --steps 150
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import torch

POOL = ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"]


def write_cifar100(root: Path, train_size: int, test_size: int) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (("train", train_size), ("test", test_size)):
        payload = {
            "data": rng.integers(0, 256, (size, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, 100, size).tolist(),
            "coarse_labels": rng.integers(0, 20, size).tolist(),
            "filenames": [f"{i}.png" for i in range(size)],
            "batch_label": name,
        }
        with open(folder / name, "wb") as file:
            pickle.dump(payload, file, protocol=2)
    with open(folder / "meta", "wb") as file:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}, file, protocol=2)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")


def timed_episode(env, act, steps: int) -> tuple[float, dict]:
    """Milliseconds per env step over the steps after the first 10 (warm-up), and the last info."""
    observation, _ = env.reset(seed=0)
    times, info = [], {}
    for _ in range(steps):
        synchronize()
        start = time.perf_counter()
        observation, _, terminated, _, info = env.step(act(observation))
        synchronize()
        times.append(time.perf_counter() - start)
        if np.any(terminated):
            break
    return 1000 * float(np.median(times[10:])), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/kd_env_cifar100")
    parser.add_argument("--train-size", type=int, default=50000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--student", default="resnet56")
    parser.add_argument("--device", default="cuda", help="cpu only to check this script itself")
    args = parser.parse_args()

    import gymnasium as gym

    import kd_env  # noqa: F401
    from kd_env.agents import MTKDRL
    from kd_env.data import load_dataset
    from kd_env.teachers import load_teacher, train_teacher

    device = args.device
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    start = time.perf_counter()
    write_cifar100(Path(args.root), args.train_size, 10000)
    print(f"wrote CIFAR-100-format files ({args.train_size} train) in {time.perf_counter() - start:.1f} s")

    data = load_dataset("cifar100", args.root, verify_checksums=False, device=device)
    print(f"loaded: train {tuple(data.train_images.shape)} val {tuple(data.val_images.shape)} on {data.train_images.device}")
    start = time.perf_counter()
    path = train_teacher("resnet8", data, epochs=1, device=device, path=Path(args.root) / "resnet8.pt", progress=False)
    teacher = load_teacher(path, expected_arch="resnet8", expected_dataset="cifar100", device=device)
    print(f"teacher resnet8: 1 epoch trained, saved and verified in {time.perf_counter() - start:.1f} s ({type(teacher).__name__})")

    common = {
        "data_root": args.root,
        "verify_checksums": False,
        "teachers": [f"random:{arch}" for arch in POOL],
        "student": args.student,
        "device": device,
        "epochs": 1,
        "max_steps_per_epoch": args.steps,
    }
    steps_per_epoch = int(data.train_labels.shape[0]) // 64

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for reward_mode in ("neg_loss", "val_loss_delta"):
        env = gym.make("MultiTeacherKD-CIFAR100-v0", action_mode="simplex", reward_mode=reward_mode, **common)
        uniform = np.ones(env.action_space.shape, dtype=np.float32)
        ms, info = timed_episode(env, lambda observation: uniform, args.steps)
        print(
            f"[batch env, reward {reward_mode}, AVER weights, augmentation on, 4 teachers + {args.student}] {ms:.1f} ms/step, "
            f"~{ms * steps_per_epoch / 1000:.0f} s per {steps_per_epoch}-step epoch; peak GPU memory "
            f"{peak_mib():.0f} MiB; last info: val_acc {info.get('val_acc')}, "
            f"final_test_acc {info.get('final_test_acc')}"
        )
        if reward_mode == "neg_loss":
            env_ms = ms

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    engine = env.unwrapped.engine
    weights = torch.full((4,), 0.25, device=device)
    engine_times = []
    engine.reset(seed=0)
    for _ in range(min(60, args.steps)):
        if engine.done:
            engine.reset(seed=0)
        synchronize()
        start = time.perf_counter()
        engine.step(weights)
        synchronize()
        engine_times.append(time.perf_counter() - start)
    engine_ms = 1000 * float(np.median(engine_times[10:]))
    print(f"[engine alone] {engine_ms:.1f} ms/step -> batch env (neg_loss) / engine = {env_ms / engine_ms:.3f}")
    env.close()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    vector_env = gym.make_vec(
        "MultiTeacherKD-CIFAR100-v0", num_envs=64, vectorization_mode="vector_entry_point", action_mode="raw", reward_mode="neg_loss", **common
    )
    agent = MTKDRL(vector_env, seed=0)
    start = time.perf_counter()
    agent.learn(args.steps * 64)
    synchronize()
    seconds = time.perf_counter() - start
    print(
        f"[per-sample env + MTKD-RL agent (warm-up epoch, one agent update at its end)] {1000 * seconds / args.steps:.1f} ms/step "
        f"incl. the epoch-end evaluation; state dim {vector_env.single_observation_space.shape[0]}; "
        f"agent updates {agent.num_updates}; peak GPU memory {peak_mib():.0f} MiB"
    )


if __name__ == "__main__":
    main()
