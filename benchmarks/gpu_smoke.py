"""CIFAR-100 on a GPU: every method of the ``cifar100-paper`` preset for a few updates.

No CIFAR-100 can be fetched on our machines, so this writes files of the real on-disk format
(``cifar-100-python/{train,test,meta}`` pickles) with random pixels and reads them through
torchvision (checksums off: the pixels are not the official ones). The teachers are the
MTKD-RL pool (RegNetY_400MF, RegNetX_400MF, resnet32x4, wrn_28_4), untrained (``random:``
specs): the step times and memory are those of the real architectures, the accuracies are
meaningless.

Each method runs through the same runner as ``kd-env bench`` (:func:`kd_env.run.train`) with the
preset's per-method env and agent arguments (the CA-MKD recipe, logit-only baselines, CA-MKD's
own feature term, MTKD-RL's per-student ``dynamic``), for ``--steps`` updates plus two: the
first has nothing to time from, the last closes the epoch (evaluation, MTKD-RL's agent update). Per method and
student it reports the median milliseconds per update (policy + env + student step, measured
between the ends of consecutive student updates) and their mean (MMKD's meta step, every fifth
update, is in the mean, not the median), the peak GPU memory of the run, and for the
per-sample methods the overhead over ``AVER (MTKD-RL)`` (the same loss terms with equal
weights: MTKD-RL's own baseline) and over ``AVER`` (logits only, the CA-MKD code's).

    python benchmarks/gpu_smoke.py --steps 50 --out results/gpu_smoke.json
    python benchmarks/gpu_smoke.py --device cpu --steps 2 --train-size 256 --test-size 64 \\
        --teachers resnet8 resnet8 --students resnet56 --batch-size 16     # checks the script itself
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

POOL = ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"]
ENV_ID = "MultiTeacherKD-CIFAR100-v0"


def write_cifar100(root: Path, train_size: int, test_size: int) -> None:
    """``<root>/cifar-100-python/{train,test,meta}`` in the real pickle format, random pixels."""
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
        pickle.dump(
            {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}, file, protocol=2
        )


def synchronize() -> None:
    """Wait for queued GPU work, so that wall-clock times include it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class MethodTiming:
    """One method on one student."""

    method: str
    student: str
    per_sample: bool
    ms_per_update: float
    ms_per_update_mean: float
    """The mean over the timed updates: it counts periodic work (MMKD's meta step) that the median leaves out."""
    updates_timed: int
    peak_gpu_mib: float
    run_wall_s: float


@contextmanager
def update_clock() -> Iterator[list[float]]:
    """Time stamps at the end of every student update (``DistillationEngine.step``) while open.

    The difference between consecutive stamps is one whole update cycle: the policy's work on
    the prepared batch, the env and the student's step, whatever the driver (rule, agent, SB3).
    """
    from kd_env.engine import DistillationEngine

    stamps: list[float] = []
    original = DistillationEngine.step

    def timed_step(self: DistillationEngine, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        synchronize()
        stamps.append(time.perf_counter())
        return result

    DistillationEngine.step = timed_step  # type: ignore[method-assign]  # time every step, restored below
    try:
        yield stamps
    finally:
        DistillationEngine.step = original  # type: ignore[method-assign]  # the class's own step again


def time_method(method: Any, student: str, env_kwargs: dict[str, Any], steps: int, run_dir: Path) -> MethodTiming:
    """Run one method for ``steps + 2`` updates (one short epoch) and time ``steps`` of them."""
    from kd_env.run import RunConfig, train

    config = RunConfig(
        env_id=ENV_ID,
        agent=method.agent,
        run_dir=str(run_dir),
        per_sample=method.per_sample,
        env_kwargs=env_kwargs,
        agent_kwargs=dict(method.agent_kwargs),
        seed=0,
        tensorboard=False,
        progress=False,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with update_clock() as stamps:
        train(config)
    wall = time.perf_counter() - start
    # the first update has no predecessor to time from, the last closes the epoch (evaluation,
    # agent update): the ``steps`` updates between them are the ordinary ones
    deltas = np.diff(stamps)[:-1]
    ms = 1000 * float(np.median(deltas)) if len(deltas) else float("nan")
    mean = 1000 * float(np.mean(deltas)) if len(deltas) else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return MethodTiming(method.label, student, method.per_sample, ms, mean, int(len(deltas)), peak, wall)


def overheads(timings: list[MethodTiming]) -> dict[str, dict[str, float]]:
    """Per student, each per-sample method's ms/update over AVER (MTKD-RL) and over AVER."""
    table: dict[str, dict[str, float]] = {}
    for student in sorted({t.student for t in timings}):
        rows = {t.method: t for t in timings if t.student == student}
        for reference in ("AVER (MTKD-RL)", "AVER"):
            if reference not in rows:
                continue
            for timing in rows.values():
                if timing.per_sample:
                    table.setdefault(f"{timing.method} / {reference}", {})[student] = timing.ms_per_update / rows[reference].ms_per_update
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="where the CIFAR-100-format files go (default: a temporary folder)")
    parser.add_argument("--train-size", type=int, default=50000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=50, help="timed updates per method (two more run untimed)")
    parser.add_argument("--students", nargs="+", default=None, help="default: the preset's four students")
    parser.add_argument("--teachers", nargs="+", default=POOL, help="architectures of the untrained teachers")
    parser.add_argument("--methods", nargs="+", default=None, help="method labels (default: every method of the preset)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's (64)")
    parser.add_argument("--preset", default="cifar100-paper")
    parser.add_argument("--device", default="cuda", help="cpu only to check this script itself")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    import kd_env  # noqa: F401  (registers the envs and policies)
    from kd_env.comparison.shipped import PRESETS

    preset = PRESETS[args.preset]
    methods = [m for m in preset.methods if args.methods is None or m.label in args.methods]
    if not methods:
        parser.error(f"no method of {args.preset} matches {args.methods}; labels: {[m.label for m in preset.methods]}")
    students = args.students or [s for s in preset.students if s]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {device_name}; preset {args.preset}: {len(methods)} methods x {len(students)} students")

    with tempfile.TemporaryDirectory(prefix="kd_env_gpu_smoke_") as scratch:
        root = Path(args.root or Path(scratch) / "data")
        start = time.perf_counter()
        write_cifar100(root, args.train_size, args.test_size)
        print(f"wrote CIFAR-100-format files ({args.train_size} train, {args.test_size} test) in {time.perf_counter() - start:.1f} s")
        timings: list[MethodTiming] = []
        for student in students:
            for method in methods:
                env_kwargs = {
                    **preset.env_kwargs,
                    **method.env_kwargs,
                    "student": student,
                    "data_root": str(root),
                    "verify_checksums": False,
                    "teachers": [f"random:{arch}" for arch in args.teachers],
                    "device": args.device,
                    "epochs": 1,
                    "max_steps_per_epoch": args.steps + 2,
                    "cache_dir": str(Path(scratch) / "cache"),
                }
                if args.batch_size is not None:
                    env_kwargs["batch_size"] = args.batch_size
                run_dir = Path(scratch) / "runs" / f"{student}__{method.label.replace(' ', '_').replace('/', '_')}"
                timing = time_method(method, student, env_kwargs, args.steps, run_dir)
                timings.append(timing)
                print(
                    f"[{student:>13} | {method.label:<17}{' per-sample' if method.per_sample else ' batch-level'}] "
                    f"{timing.ms_per_update:7.1f} ms/update (median of {timing.updates_timed}; mean "
                    f"{timing.ms_per_update_mean:.1f}), peak GPU memory "
                    f"{timing.peak_gpu_mib:.0f} MiB, whole run {timing.run_wall_s:.1f} s"
                )
    ratios = overheads(timings)
    for name, per_student in ratios.items():
        print(f"{name}: " + ", ".join(f"{student} {ratio:.2f}" for student, ratio in per_student.items()))
    report = {
        "torch": torch.__version__,
        "device": device_name,
        "preset": args.preset,
        "steps": args.steps,
        "timings": [timing.__dict__ for timing in timings],
        "overheads": ratios,
        "median_ms_per_update": {m.label: statistics.median(t.ms_per_update for t in timings if t.method == m.label) for m in methods},
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
