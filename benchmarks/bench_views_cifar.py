"""Augmented views on MTKD-RL's CIFAR-100 pool (issue #27): the official-style loop against kd-env
with the teachers online and with ``augment_views`` (the store built beforehand), side by side.

The Fashion-MNIST pool of ``bench_speed.py --section views`` has teachers that cost little next to
the student, so a store of views saves little there. This script measures where the teachers are
the cost, as in the paper: CIFAR-100-format files (random pixels, the real on-disk format, read
through torchvision as ``gpu_smoke.py`` writes them) and MTKD-RL's four teacher architectures
(RegNetY_400MF, RegNetX_400MF, resnet32x4, wrn_28_4; untrained, ``random:`` specs: the time is the
architectures', the accuracy meaningless), a student of the ``cifar100-paper`` preset, CIFAR's
augmentation (crop 4 + flip), logit KD with equal weights (the same loss on every side).

Variants, each in its own process (its own peak memory), the order alternating over ``--rounds``:

* ``reference``: written the way the public MTKD-RL / RepDistiller code trains: torchvision's
  CIFAR-100 dataset with PIL ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` in a
  2-worker ``DataLoader``, the teachers one after another under ``no_grad``, one SGD step;
* ``fresh``: kd-env's batch env, augmentation on, the teachers on every batch (one stacked pass);
* ``views``: kd-env with ``augment_views=--views`` (the store warm: built once by ``build`` first,
  timed apart).

Each prints its set-up time (data, models, store opened), its epoch time (``--train-size`` images,
kd-env's epoch-end evaluation included) and the median milliseconds per update. The ratios printed:
reference / views (issue #27's goal: >= 2.0, on the whole run and per update) and fresh / views.

    python benchmarks/bench_views_cifar.py --threads 1 --train-size 1024 --views 4        # CPU
    python benchmarks/bench_views_cifar.py --device cuda --train-size 20000 --views 4     # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# beside this file: the CIFAR-100-format writer and the per-update clock of the GPU smoke run
from gpu_smoke import POOL, synchronize, update_clock, write_cifar100

ENV_ID = "MultiTeacherKD-CIFAR100-v0"
VARIANTS = ("reference", "fresh", "views")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reference(args: argparse.Namespace) -> dict[str, Any]:
    """The official-style loop (module docstring); set-up and epoch timed apart."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    from kd_env.data.datasets import DATASET_STATS
    from kd_env.data.sources import _cifar_class  # torchvision's CIFAR100, checksums off (random pixels)
    from kd_env.models.registry import create_model

    start = time.perf_counter()
    device = torch.device(args.device)
    mean, std = DATASET_STATS["cifar100"]
    transform = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    dataset = Subset(_cifar_class("cifar100", verify_checksums=False)(args.root, train=True, transform=transform), range(args.train_size))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=2, drop_last=True)
    teachers = []
    for arch in args.teachers:  # the same random initialisation as kd-env's ``random:<arch>`` teachers
        with torch.random.fork_rng():
            torch.manual_seed(0)
            teachers.append(create_model(arch, 100, 3, image_size=32).eval().requires_grad_(False).to(device))
    torch.manual_seed(0)
    student = create_model(args.student, 100, 3, image_size=32).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    temperature = 4.0
    synchronize()
    setup = time.perf_counter() - start
    stamps = []
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.no_grad():
            teacher_logits = [teacher(images) for teacher in teachers]  # one after another
        student_logits = student(images)
        loss = F.cross_entropy(student_logits, labels)
        log_student = F.log_softmax(student_logits / temperature, 1)
        for logits in teacher_logits:
            kd = F.kl_div(log_student, F.softmax(logits / temperature, 1), reduction="none").sum(1) * temperature**2
            loss = loss + kd.mean() / len(teachers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        synchronize()
        stamps.append(time.perf_counter())
    return {"setup_s": setup, "epoch_s": time.perf_counter() - start, "stamps": stamps}


def _kd_env(args: argparse.Namespace, views: int | None) -> dict[str, Any]:
    """kd-env's batch env for one epoch with equal weights; ``views``: ``augment_views``."""
    import gymnasium as gym

    import kd_env  # noqa: F401  (registers the envs)

    env_kwargs: dict[str, Any] = {
        "teachers": [f"random:{arch}" for arch in args.teachers],
        "student": args.student,
        "data_root": args.root,
        "verify_checksums": False,
        "cache_dir": args.cache,
        "train_size": args.train_size,
        "batch_size": args.batch_size,
        "epochs": 1,
        "device": args.device,
        "augment": True,
        "feature_kd": False,
        "reward_mode": "neg_loss",
        "action_mode": "simplex",
    }
    if views is not None:
        env_kwargs.update(augment_views=views, views_store="logits")
    start = time.perf_counter()
    env: Any = gym.make(ENV_ID, **env_kwargs).unwrapped
    env.reset(seed=0)
    synchronize()
    setup = time.perf_counter() - start
    if args.variant == "build":
        return {"setup_s": setup, "epoch_s": 0.0, "stamps": []}
    action = np.full(env.action_space.shape, 1.0, dtype=np.float32)
    start = time.perf_counter()
    with update_clock() as stamps:
        terminated = False
        while not terminated:
            _, _, terminated, _, _ = env.step(action)
    return {"setup_s": setup, "epoch_s": time.perf_counter() - start, "stamps": list(stamps)}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.variant == "reference":
        result = _reference(args)
    else:
        result = _kd_env(args, None if args.variant == "fresh" else args.views)
    deltas = np.diff(result.pop("stamps"))[:-1]  # the last update closes the epoch (evaluation)
    result["ms_per_update"] = 1000 * float(np.median(deltas)) if len(deltas) else float("nan")
    result["updates"] = int(len(deltas)) + 2 if len(deltas) else 0
    result["peak_rss_mib"] = _peak_rss_mib()
    result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    print("RESULT " + json.dumps(result), flush=True)


def _run(args: argparse.Namespace, variant: str, root: str, cache: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", variant, "--root", root, "--cache", cache]
    for name in ("threads", "train_size", "batch_size", "views", "student", "device"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    command += ["--teachers", *args.teachers]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every variant (default 1)")
    parser.add_argument("--train-size", type=int, default=1024, help="training images: one epoch of them is timed")
    parser.add_argument("--batch-size", type=int, default=64, help="the paper's 64")
    parser.add_argument("--views", type=int, default=4, help="augment_views of the views variant")
    parser.add_argument("--student", default="MobileNetV2", help="a student of the cifar100-paper preset")
    parser.add_argument("--teachers", nargs="+", default=POOL, help="teacher architectures (default: MTKD-RL's pool)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1, help="each variant this many times, the order alternating")
    parser.add_argument("--root", default=None, help="CIFAR-100-format files (default: written to a temporary folder)")
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", dest="variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        child(args)
        return
    if args.train_size < 4 * args.batch_size:
        parser.error("--train-size must hold at least 4 batches (the first and last updates are not timed)")
    with tempfile.TemporaryDirectory(prefix="kd_env_views_cifar_") as scratch:
        root = args.root or str(Path(scratch) / "data")
        if args.root is None:
            # kd-env keeps a validation split out of the training files: write enough for train_size
            write_cifar100(Path(root), args.train_size + max(args.train_size // 9, 500), 500)
        cache = str(Path(scratch) / "cache")
        built = _run(args, "build", root, cache)
        print(
            f"[views-cifar] {args.device}, {args.threads} torch thread(s); teachers {', '.join(args.teachers)}; student {args.student}; "
            f"{args.train_size} training images, batch {args.batch_size}, crop 4 + flip, logit KD, equal weights"
        )
        print(f"  store of {args.views} views (logits): built in {built['setup_s']:.1f} s (construction + reset, the teachers' pass)")
        results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
        for round_index in range(args.rounds):
            for variant in VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]:
                results[variant].append(_run(args, variant, root, cache))
    summary = {variant: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for variant, runs in results.items() if runs}
    names = {"reference": "official-style loop", "fresh": "kd-env, fresh augmentation", "views": f"kd-env, {args.views} views"}
    for variant, row in summary.items():
        print(
            f"  {names[variant]:<28} set-up {row['setup_s']:7.1f} s | epoch {row['epoch_s']:7.1f} s | "
            f"{row['ms_per_update']:8.1f} ms/update | peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
    whole = {variant: row["setup_s"] + row["epoch_s"] for variant, row in summary.items()}
    reference, fresh, views = summary["reference"], summary["fresh"], summary["views"]
    print(
        f"  ratio official-style / views: whole run {whole['reference'] / whole['views']:.2f}, epoch {reference['epoch_s'] / views['epoch_s']:.2f}, "
        f"per update {reference['ms_per_update'] / views['ms_per_update']:.2f}  (goal >= 2.0)"
    )
    print(
        f"  ratio fresh / views: whole run {whole['fresh'] / whole['views']:.2f}, epoch {fresh['epoch_s'] / views['epoch_s']:.2f}, "
        f"per update {fresh['ms_per_update'] / views['ms_per_update']:.2f}"
    )


if __name__ == "__main__":
    main()
