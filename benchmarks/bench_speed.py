"""Speed and memory of kd-env against hand-written and reference loops, measured side by side.

Run (after ``make install``; trains the Fashion-MNIST teacher pool first if it is not cached):

    .venv/bin/python benchmarks/bench_speed.py            # all sections
    .venv/bin/python benchmarks/bench_speed.py --section step --repeats 30

Sections (each prints ratios; the goals are from the project's issues):

* ``step``: one engine update with uniform weights / one bare hand-written multi-teacher KD
  update (same models, same batch, teachers run every step in both): goal <= 1.05.
* ``epoch``: the wall time of an epoch of a reference loop written the way the public MTKD-RL /
  RepDistiller code does it (torch ``DataLoader`` over torchvision's dataset with PIL
  transforms, teachers one after another, the KD loss computed again for the reward) / the
  same epoch through kd-env (uint8 tensors, teacher outputs cached since augmentation is off,
  every quantity computed once): goal >= 2.0. Each side runs in its own process so their
  peak memory (max RSS) is measured separately.
* ``env``: a batch-level env step and a per-sample env step / the engine step alone, same
  weights: goal <= 1.05 each.

Timing rounds alternate between the variants (A B A B ...) and report medians, so machine
noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

DATASET = "fashion_mnist"


def _setup(batch_size: int, feature_kd: bool = True, cache: bool = False):
    """Teachers of the default pool, a fresh engine and the data."""
    from kd_env.data import load_dataset
    from kd_env.engine import DistillationEngine, EngineConfig
    from kd_env.envs.common import DATASET_DEFAULTS, StudentFactory
    from kd_env.teachers import TEACHER_POOLS, ensure_teacher_pool, load_teacher

    data = load_dataset(DATASET)
    paths = ensure_teacher_pool(DATASET, train_missing=True)
    teachers = [load_teacher(path) for path in paths]
    student = StudentFactory(DATASET_DEFAULTS[DATASET]["student"], data.num_classes, data.image_shape[0])
    config = EngineConfig(epochs=1, batch_size=batch_size, feature_kd=feature_kd, cache_teacher_outputs=cache)
    engine = DistillationEngine(student, teachers, data, config, teacher_names=list(TEACHER_POOLS[DATASET]))
    return engine, data, teachers


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def _alternate(variants: dict[str, Callable[[], None]], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        for run in variants.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: _median_ms(values) for name, values in samples.items()}


def bench_step(repeats: int, batch_size: int) -> None:
    """Engine update vs a bare multi-teacher KD update on the same batch."""
    import torch.nn.functional as F

    engine, data, teachers = _setup(batch_size)
    engine.reset(seed=0)
    assert engine.student is not None and engine.adapters is not None
    uniform = torch.full((engine.num_teachers,), 1.0 / engine.num_teachers)

    # the bare loop: same student/adapters/optimizer settings, its own copies, one fixed batch
    bare_student = engine.student_factory()
    bare_adapters = copy.deepcopy(engine.adapters)  # the same adapters, its own copy
    bare_optimizer = torch.optim.SGD(
        list(bare_student.parameters()) + list(bare_adapters.parameters()), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    indices = torch.arange(batch_size)
    images = engine.eval_transform(data.train_images[indices], train=False)
    # the best layout for each, as a careful hand-written loop would choose: channels-last for
    # the teachers' inference, contiguous for training the small student
    teacher_images = images.contiguous(memory_format=torch.channels_last)
    labels = data.train_labels[indices]
    temperature = engine.config.temperature

    def bare_step() -> None:
        with torch.inference_mode():
            teacher_outputs = [teacher.forward_all(teacher_images) for teacher in teachers]
        student_output = bare_student.forward_all(images)
        loss = F.cross_entropy(student_output.logits, labels)
        log_student = F.log_softmax(student_output.logits / temperature, dim=1)
        for adapter, output in zip(bare_adapters, teacher_outputs):
            kd = F.kl_div(log_student, F.softmax(output.logits.clone() / temperature, dim=1), reduction="batchmean")
            loss = loss + kd * temperature**2 / len(teachers)
            loss = loss + 5.0 * F.mse_loss(adapter(student_output.feature_map), output.feature_map.clone()) / len(teachers)
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()

    def engine_step() -> None:
        if engine.done:
            engine.reset(seed=0)
        engine.step(uniform)

    times = _alternate({"engine": engine_step, "bare": bare_step}, repeats)
    print(f"[step] batch {batch_size}, {engine.num_teachers} teachers, teachers run every step in both")
    print(f"  engine step {times['engine']:.2f} ms | bare hand-written step {times['bare']:.2f} ms")
    print(f"  ratio engine / bare = {times['engine'] / times['bare']:.3f}  (goal <= 1.05)")


def bench_env(repeats: int, batch_size: int) -> None:
    """Env step overhead over the engine step alone, same weights."""
    import gymnasium as gym
    import numpy as np

    import kd_env  # noqa: F401  (registers the ids)

    env_kwargs = {"epochs": 50, "batch_size": batch_size, "reward_mode": "neg_loss", "action_mode": "simplex"}
    batch_env = gym.make("MultiTeacherKD-FashionMNIST-v0", **env_kwargs).unwrapped
    vector_env = gym.make_vec("MultiTeacherKD-FashionMNIST-v0", num_envs=batch_size, vectorization_mode="vector_entry_point", **env_kwargs)
    engine, _, _ = _setup(batch_size, cache=True)  # the same engine settings as the envs build
    teachers = batch_env.num_teachers
    batch_action = np.full(2 * teachers, 1.0 / teachers, dtype=np.float32)
    vector_action = np.tile(batch_action, (batch_size, 1))
    uniform = torch.full((teachers,), 1.0 / teachers)
    batch_env.reset(seed=0)
    vector_env.reset(seed=0)
    engine.reset(seed=0)
    times = _alternate(
        {
            "engine": lambda: engine.step(uniform, uniform),
            "batch_env": lambda: batch_env.step(batch_action),
            "per_sample_env": lambda: vector_env.step(vector_action),
        },
        repeats,
    )
    print(f"[env] batch {batch_size}; teacher outputs cached in all three")
    print(f"  engine {times['engine']:.2f} ms | batch env {times['batch_env']:.2f} ms | per-sample env {times['per_sample_env']:.2f} ms")
    print(f"  ratio batch env / engine = {times['batch_env'] / times['engine']:.3f}  (goal <= 1.05)")
    print(f"  ratio per-sample env / engine = {times['per_sample_env'] / times['engine']:.3f}  (goal <= 1.05)")


def _reference_epoch(steps: int, batch_size: int) -> float:
    """An epoch written the way the public MTKD-RL / RepDistiller code does it."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from kd_env.data import find_data_root
    from kd_env.engine import build_adapters

    engine, data, teachers = _setup(batch_size)  # for the same models and adapters only
    root = find_data_root(DATASET)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    dataset = datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True)
    torch.manual_seed(0)
    student = engine.student_factory()
    adapters = build_adapters(student.feature_channels, engine.teacher_shapes)
    optimizer = torch.optim.SGD(
        list(student.parameters()) + list(adapters.parameters()), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    temperature = 4.0

    def per_sample_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(
            F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1), reduction="none"
        ).sum(1) * temperature**2

    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if step == steps:
            break
        teacher_outputs = []
        with torch.no_grad():
            for teacher in teachers:  # one after another, as the reference code does
                teacher_outputs.append(teacher.forward_all(images))
        student_output = student.forward_all(images)
        weights = torch.full((batch_size, len(teachers)), 1.0 / len(teachers))
        loss = F.cross_entropy(student_output.logits, labels)
        for k, (adapter, output) in enumerate(zip(adapters, teacher_outputs)):
            loss = loss + (weights[:, k] * per_sample_kd(student_output.logits, output.logits)).mean()
            mse = (adapter(student_output.feature_map) - output.feature_map).pow(2).flatten(1).mean(1)
            loss = loss + 5.0 * (weights[:, k] * mse).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # the reward: the KD terms computed a second time, as in train_loops.py
            reward = -F.cross_entropy(student_output.logits.detach(), labels, reduction="none")
            for k, output in enumerate(teacher_outputs):
                reward = reward - weights[:, k] * per_sample_kd(student_output.logits.detach(), output.logits)
    return time.perf_counter() - start


def _kd_env_epoch(steps: int, batch_size: int) -> float:
    import gymnasium as gym
    import numpy as np

    import kd_env  # noqa: F401

    start = time.perf_counter()
    env = gym.make(
        "MultiTeacherKD-FashionMNIST-v0", epochs=1, batch_size=batch_size, max_steps_per_epoch=steps,
        reward_mode="neg_loss", action_mode="simplex",
    ).unwrapped
    print(json.dumps({"setup_seconds": time.perf_counter() - start}))  # data + the one-off teacher pass
    action = np.full(env.action_space.shape, 1.0, dtype=np.float32)
    start = time.perf_counter()  # includes the first forward passes of reset, not the teacher cache
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(action)
    return time.perf_counter() - start


def _child(kind: str, steps: int, batch_size: int) -> None:
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    seconds = _reference_epoch(steps, batch_size) if kind == "reference" else _kd_env_epoch(steps, batch_size)
    from kd_env.run import peak_rss_mib

    peak_mib = peak_rss_mib()
    print(json.dumps({"kind": kind, "seconds": seconds, "peak_rss_mib": peak_mib}))


def bench_epoch(steps: int, batch_size: int, rounds: int) -> None:
    results: dict[str, list[dict]] = {"reference": [], "kd_env": []}
    for _ in range(rounds):
        for kind in results:
            output = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--batch-size", str(batch_size)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()
            record = json.loads(output[-1])
            for line in output[:-1]:
                if line.startswith('{"setup_seconds"'):
                    record.update(json.loads(line))
            results[kind].append(record)
    seconds = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
    memory = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
    label = "a full epoch" if steps <= 0 else f"{steps} updates"
    print(f"[epoch] Fashion-MNIST, batch {batch_size}, {label}, median of {rounds} rounds, one process per run")
    print(f"  reference loop {seconds['reference']:.2f} s | kd-env {seconds['kd_env']:.2f} s")
    print(f"  ratio reference / kd-env = {seconds['reference'] / seconds['kd_env']:.2f}  (goal >= 2.0)")
    print(f"  peak RSS: reference {memory['reference']:.0f} MiB | kd-env {memory['kd_env']:.0f} MiB")
    setup = statistics.median(r.get("setup_seconds", float("nan")) for r in results["kd_env"])
    print(
        f"  kd-env's one-off set-up (data to tensors, teacher outputs cached for the run): {setup:.1f} s; "
        f"counting it once, reference / kd-env = {seconds['reference'] / (seconds['kd_env'] + setup):.2f} for one epoch"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["all", "step", "epoch", "env"], default="all")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0, help="updates per epoch measured (0: a full epoch)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", choices=["reference", "kd_env"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps if args.steps > 0 else 10**9
    if args.child:
        _child(args.child, steps, args.batch_size)
        return
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if args.section in ("all", "step"):
        bench_step(args.repeats, args.batch_size)
    if args.section in ("all", "env"):
        bench_env(args.repeats, args.batch_size)
    if args.section in ("all", "epoch"):
        bench_epoch(args.steps, args.batch_size, args.rounds)


if __name__ == "__main__":
    main()
