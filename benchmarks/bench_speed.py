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
* ``store`` (issue #8): env construction + reset with a warm teacher-output store (goal <= 2 s),
  the store's build time and size, and the float16 store's error against float32 on a batch
  (KD loss, feature MSE, total loss; goal <= 1e-3).
* ``run``: whole 1-epoch and 3-epoch runs, set-up included, kd-env (warm store) against the
  reference loop, each in its own process: time ratio (goals >= 2 and >= 2.5) and peak RSS
  ratio (goal <= 1.5).
* ``teachers16``: 16 small untrained nets as teachers, teachers run every step: one engine update
  / (the 16 teachers' forward passes + the student's step, timed separately): goal <= 1.10; and
  the 16-teacher store's build time and size.
* ``accuracy``: the student's final test accuracy after one epoch with a float16 and a float32
  store, 3 seeds each (goal: within the seed spread).
* ``agents``: one 1-epoch ``kd-env train`` run of the per-sample MTKD-RL agent and of the router
  (the suite's leading agent), each against AVER, each run in its own process: wall time and
  peak RSS ratios (goal <= 1.05 each).
* ``imports`` (issue #12): resident memory (RSS) of a fresh process after ``import torch``,
  after ``import kd_env`` (and its time), and of one synthetic-env worker (an env built, reset
  and stepped once, as in each ``SubprocVecEnv`` / async worker); which heavy modules each
  stage has loaded; and what ``import torchvision`` would add on top.
* ``sweep`` (issue #14): ``kd-env bench``'s local executor, the wall time of one sweep (a preset,
  ``--sweep-preset``, default ``quick``; ``--steps`` caps each run's updates per epoch) with
  ``--jobs 1`` (every core for one run at a time) and with ``--jobs 2`` (two runs at once, the
  cores divided between them), teachers and teacher-output stores made beforehand; the speed-up
  jobs 1 / jobs 2.

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
from pathlib import Path

import torch

DATASET = "fashion_mnist"


def _setup(batch_size: int, feature_kd: bool = True, cache: bool = False, **config_overrides):
    """Teachers of the default pool, a fresh engine and the data."""
    from kd_env.data import load_dataset
    from kd_env.engine import DistillationEngine, EngineConfig
    from kd_env.envs import DATASET_DEFAULTS, StudentFactory
    from kd_env.teachers import TEACHER_POOLS, ensure_teacher_pool, load_teacher

    data = load_dataset(DATASET)
    paths = ensure_teacher_pool(DATASET, train_missing=True)
    teachers = [load_teacher(path) for path in paths]
    student = StudentFactory(DATASET_DEFAULTS[DATASET]["student"], data.num_classes, data.image_shape[0])
    config = EngineConfig(epochs=1, batch_size=batch_size, feature_kd=feature_kd, cache_teacher_outputs=cache, **config_overrides)
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


def _reference_epoch(steps: int, batch_size: int, epochs: int = 1) -> float:
    """Epochs written the way the public MTKD-RL / RepDistiller code does it; set-up included."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from kd_env.data import find_data_root
    from kd_env.engine import build_adapters

    start = time.perf_counter()  # set-up counts: loading data and teachers is part of a run
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
        return (
            F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1), reduction="none").sum(1)
            * temperature**2
        )

    for step, (images, labels) in ((s, b) for _ in range(epochs) for s, b in enumerate(loader)):
        if step >= steps:
            continue
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


def _kd_env_epoch(steps: int, batch_size: int, epochs: int = 1) -> float:
    """A kd-env run through the batch-level env; the time includes building the env (set-up)."""
    import gymnasium as gym
    import numpy as np

    import kd_env  # noqa: F401

    start = time.perf_counter()
    env = gym.make(
        "MultiTeacherKD-FashionMNIST-v0",
        epochs=epochs,
        batch_size=batch_size,
        max_steps_per_epoch=steps,
        reward_mode="neg_loss",
        action_mode="simplex",
    ).unwrapped
    action = np.full(env.action_space.shape, 1.0, dtype=np.float32)
    env.reset(seed=0)
    print(json.dumps({"setup_seconds": time.perf_counter() - start}))  # data, teachers, store, reset
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(action)
    return time.perf_counter() - start


def _child(kind: str, steps: int, batch_size: int, epochs: int = 1) -> None:
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    if kind == "reference":
        seconds = _reference_epoch(steps, batch_size, epochs)
    elif kind == "kd_env":
        seconds = _kd_env_epoch(steps, batch_size, epochs)
    elif kind == "construct":
        seconds = _construct_and_reset(batch_size)
    else:  # "agent:<name>": one `kd-env train` run
        seconds = _agent_run(kind.split(":", 1)[1], epochs)
    from kd_env.run import peak_rss_mib

    peak_mib = peak_rss_mib()
    print(json.dumps({"kind": kind, "seconds": seconds, "peak_rss_mib": peak_mib}))


def _run_child(kind: str, steps: int, batch_size: int, epochs: int = 1) -> dict:
    """One measurement in a fresh process (its own peak RSS); the child's last JSON line."""
    output = (
        subprocess.run(
            [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--batch-size", str(batch_size), "--epochs", str(epochs)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()
    )
    record = json.loads(output[-1])
    for line in output[:-1]:
        if line.startswith('{"setup_seconds"'):
            record.update(json.loads(line))
    return record


def bench_epoch(steps: int, batch_size: int, rounds: int) -> None:
    results: dict[str, list[dict]] = {"reference": [], "kd_env": []}
    _run_child("construct", steps, batch_size)  # the store exists before anything is timed
    for _ in range(rounds):
        for kind in results:
            results[kind].append(_run_child(kind, steps, batch_size))
    seconds = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
    memory = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
    label = "a full epoch" if steps <= 0 else f"{steps} updates"
    print(f"[epoch] Fashion-MNIST, batch {batch_size}, {label}, median of {rounds} rounds, one process per run, set-up included")
    print(f"  reference loop {seconds['reference']:.2f} s | kd-env {seconds['kd_env']:.2f} s")
    print(f"  ratio reference / kd-env = {seconds['reference'] / seconds['kd_env']:.2f}  (goal >= 2.0)")
    print(f"  peak RSS: reference {memory['reference']:.0f} MiB | kd-env {memory['kd_env']:.0f} MiB")
    setup = statistics.median(r.get("setup_seconds", float("nan")) for r in results["kd_env"])
    print(f"  of kd-env's time, env construction + reset (warm teacher-output store): {setup:.2f} s")


def _construct_and_reset(batch_size: int) -> float:
    """Env construction + reset, timed in a fresh process (data, teachers, store opened or built)."""
    import gymnasium as gym

    import kd_env  # noqa: F401

    start = time.perf_counter()
    env = gym.make("MultiTeacherKD-FashionMNIST-v0", epochs=1, batch_size=batch_size).unwrapped
    env.reset(seed=0)
    return time.perf_counter() - start


def _agent_run(spec: str, epochs: int) -> float:
    """One ``kd-env train`` run as a user starts it. ``spec`` is ``agent`` or ``agent@reward_mode``
    (the per-sample env for the per-sample agents)."""
    import tempfile

    from kd_env.cli import main as cli_main

    agent, _, reward_mode = spec.partition("@")
    per_sample = ["--per-sample"] if agent in ("mtkd-rl", "router") else []
    reward = ["--env-arg", f"reward_mode={reward_mode}"] if reward_mode else []
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        cli_main(
            [
                "train",
                "--agent",
                agent,
                *per_sample,
                "--env-arg",
                f"epochs={epochs}",
                *reward,
                "--run-dir",
                run_dir,
                "--no-progress",
                "--no-tensorboard",
                "--checkpoint-every",
                "0",
                "--threads",
                os.environ.get("KD_BENCH_THREADS", "2"),
            ]
        )
        return time.perf_counter() - start


def bench_store(batch_size: int, rounds: int) -> None:
    """Construction + reset with a warm store; build time and size; float16 against float32."""
    from kd_env.engine import per_sample_kd_loss

    _run_child("construct", 0, batch_size)  # builds the store if missing, so the rounds below find it warm
    construct = [_run_child("construct", 0, batch_size)["seconds"] for _ in range(rounds)]
    engines = {dtype: _setup(batch_size, cache=True, store_dtype=dtype)[0] for dtype in ("float16", "float32")}
    store = engines["float16"].teacher_store
    assert store is not None, "the teacher-output store could not be used (see the warning above)"
    print(f"[store] Fashion-MNIST pool, {store.num_samples} training images, batch {batch_size}")
    print(f"  env construction + reset, warm store: {statistics.median(construct):.2f} s (median of {rounds}; goal <= 2 s)")
    for dtype, engine in engines.items():
        manifest = engine.teacher_store.manifest
        print(f"  {dtype} store: {engine.teacher_store.nbytes / 2**20:.0f} MiB, built in {manifest['build_seconds']:.1f} s")
    batches = {dtype: engine.reset(seed=0) for dtype, engine in engines.items()}
    weights = torch.full((batch_size, engines["float16"].num_teachers), 1.0 / engines["float16"].num_teachers)
    errors = {}
    for name, value in {
        "KD loss": lambda b: per_sample_kd_loss(b.student_logits.detach(), b.teacher_logits, 4.0).mean(),
        "feature MSE": lambda b: b.feature_mse.detach().mean(),
        "total loss": lambda b: (
            b.student_ce.detach() + (weights * b.kd_loss.detach()).sum(1) + 5.0 * (weights * b.feature_mse.detach()).sum(1)
        ).mean(),
    }.items():
        half, full = float(value(batches["float16"])), float(value(batches["float32"]))
        errors[name] = abs(half - full) / abs(full)
    print(
        "  float16 vs float32 store on one batch, relative error: "
        + ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
        + "  (goal <= 1e-3)"
    )


def bench_run(batch_size: int, rounds: int) -> None:
    """Whole 1- and 3-epoch runs, set-up included, kd-env against the reference loop."""
    _run_child("construct", 0, batch_size)  # the store exists before anything is timed
    for epochs, goal in ((1, 2.0), (3, 2.5)):
        results: dict[str, list[dict]] = {"reference": [], "kd_env": []}
        for _ in range(rounds):
            for kind in results:
                results[kind].append(_run_child(kind, 0, batch_size, epochs))
        seconds = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
        memory = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
        print(f"[run] {epochs}-epoch run, set-up included, batch {batch_size}, median of {rounds}, one process each")
        print(
            f"  reference {seconds['reference']:.1f} s | kd-env {seconds['kd_env']:.1f} s | "
            f"ratio {seconds['reference'] / seconds['kd_env']:.2f} (goal >= {goal})"
        )
        print(
            f"  peak RSS: reference {memory['reference']:.0f} MiB | kd-env {memory['kd_env']:.0f} MiB | "
            f"ratio {memory['kd_env'] / memory['reference']:.2f} (goal <= 1.5)"
        )


def bench_teachers16(repeats: int, batch_size: int) -> None:
    """16 small teachers run every step: the engine's update against the sum of its parts."""
    import torch.nn.functional as F

    from kd_env.data import load_dataset
    from kd_env.engine import DistillationEngine, EngineConfig
    from kd_env.models import create_model
    from kd_env.teacher_outputs import clear_stores

    data = load_dataset(DATASET)
    teachers = []
    for index in range(16):
        torch.manual_seed(100 + index)
        teachers.append(create_model("mlp" if index % 2 else "cnn_w8", data.num_classes, 1, image_size=28).eval())
    student_factory = lambda: create_model("cnn_w8", data.num_classes, 1, image_size=28)  # noqa: E731
    names = [f"t{index}" for index in range(16)]
    engine = DistillationEngine(
        student_factory, teachers, data, EngineConfig(epochs=50, batch_size=batch_size, cache_teacher_outputs=False), teacher_names=names
    )
    engine.reset(seed=0)
    uniform = torch.full((16,), 1.0 / 16)
    images = engine.eval_transform(data.train_images[:batch_size], train=False)
    teacher_images = images.contiguous(memory_format=torch.channels_last)
    labels = data.train_labels[:batch_size]
    with torch.inference_mode():
        outputs = [teacher.forward_all(teacher_images) for teacher in engine.teachers]
    outputs = [type(o)(*(t.clone() for t in o)) for o in outputs]  # out of inference mode
    student = student_factory()
    adapters = __import__("copy").deepcopy(engine.adapters)
    optimizer = torch.optim.SGD(list(student.parameters()) + list(adapters.parameters()), lr=0.05, momentum=0.9, nesterov=True)

    def student_step() -> None:  # the student's part of an update, teacher outputs given
        out = student.forward_all(images)
        loss = F.cross_entropy(out.logits, labels)
        log_student = F.log_softmax(out.logits / 4.0, dim=1)
        for adapter, output in zip(adapters, outputs):
            loss = loss + F.kl_div(log_student, F.softmax(output.logits / 4.0, dim=1), reduction="batchmean") * 4.0**2 / 16
            loss = loss + 5.0 * F.mse_loss(adapter(out.feature_map), output.feature_map) / 16
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def teacher_forward(teacher) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                teacher.forward_all(teacher_images)

        return run

    variants: dict[str, Callable[[], None]] = {"engine": lambda: engine.step(uniform), "student": student_step}
    variants.update({name: teacher_forward(teacher) for name, teacher in zip(names, engine.teachers)})
    times = _alternate(variants, repeats)
    parts = times["student"] + sum(times[name] for name in names)
    print(f"[teachers16] 16 teachers (8 cnn_w8, 8 mlp, untrained), student cnn_w8, batch {batch_size}, teachers every step")
    print(
        f"  engine update {times['engine']:.1f} ms | 16 teacher forwards {parts - times['student']:.1f} ms + "
        f"student step {times['student']:.1f} ms = {parts:.1f} ms | ratio {times['engine'] / parts:.3f} (goal <= 1.10)"
    )
    start = time.perf_counter()
    stored = DistillationEngine(student_factory, teachers, data, EngineConfig(epochs=1, batch_size=batch_size), teacher_names=names)
    build = time.perf_counter() - start
    assert stored.teacher_store is not None
    print(
        f"  16-teacher float16 store: {stored.teacher_store.nbytes / 2**20:.0f} MiB, built in "
        f"{stored.teacher_store.manifest['build_seconds']:.1f} s (engine construction {build:.1f} s)"
    )
    key = stored.teacher_store.path.name
    stored.teacher_store.close()
    clear_stores(keys=[key])  # random teachers: no later run will want it


def bench_accuracy(batch_size: int, seeds: int) -> None:
    """Final test accuracy after one epoch, float16 store against float32, several seeds."""
    results: dict[str, list[float]] = {}
    for dtype in ("float16", "float32"):
        engine = _setup(batch_size, cache=True, store_dtype=dtype)[0]
        uniform = torch.full((engine.num_teachers,), 1.0 / engine.num_teachers)
        for seed in range(seeds):
            engine.reset(seed=seed)
            while not engine.done:
                engine.step(uniform)
            results.setdefault(dtype, []).append(engine.evaluate("test", engine.best_student())[0])
    print(f"[accuracy] student test accuracy after 1 epoch (uniform weights), seeds 0-{seeds - 1}")
    for dtype, accuracies in results.items():
        print(
            f"  {dtype} store: {statistics.mean(accuracies) * 100:.2f} +- {statistics.stdev(accuracies) * 100:.2f} "
            f"({', '.join(f'{a * 100:.2f}' for a in accuracies)})"
        )
    gap = abs(statistics.mean(results["float16"]) - statistics.mean(results["float32"]))
    print(
        f"  difference of the means {gap * 100:.2f} points; seed spread (std, float32) "
        f"{statistics.stdev(results['float32']) * 100:.2f} points"
    )


# (label, the AVER run it is compared with, the agent run): MTKD-RL as the paper runs it (both
# with the env's default reward, which MTKD-RL reads), and the suite's leading agent, the router,
# with its label_logprob credit against AVER with the cheapest reward mode, as the suite runs rules
_AGENT_PAIRS = [
    ("MTKD-RL per-sample", "aver", "mtkd-rl"),
    ("Router per-sample", "aver@neg_loss", "router@label_logprob"),
]


def bench_agents(batch_size: int, rounds: int) -> None:
    """Per-sample agents against AVER: one 1-epoch `kd-env train` run each, own processes,
    rounds alternating between the runs."""
    _run_child("construct", 0, batch_size)
    specs = list(dict.fromkeys(spec for _, aver, agent in _AGENT_PAIRS for spec in (aver, agent)))
    results: dict[str, list[dict]] = {spec: [] for spec in specs}
    for _ in range(rounds):
        for spec in specs:
            results[spec].append(_run_child(f"agent:{spec}", 0, batch_size, 1))
    seconds = {spec: statistics.median(r["seconds"] for r in runs) for spec, runs in results.items()}
    memory = {spec: max(r["peak_rss_mib"] for r in runs) for spec, runs in results.items()}
    print(f"[agents] one 1-epoch `kd-env train` run each (Fashion-MNIST, default pool), median of {rounds}")
    for label, aver, agent in _AGENT_PAIRS:
        print(
            f"  {label} ({agent}) {seconds[agent]:.1f} s, {memory[agent]:.0f} MiB | AVER ({aver}) {seconds[aver]:.1f} s, "
            f"{memory[aver]:.0f} MiB | ratios: time {seconds[agent] / seconds[aver]:.3f}, "
            f"memory {memory[agent] / memory[aver]:.3f} (goal <= 1.05 each)"
        )


_IMPORTS_CHILD = """
import json, sys, time

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

def loaded():
    return [name for name in ("torchvision", "torch._dynamo", "sympy", "stable_baselines3", "tensorboard") if name in sys.modules]

record = {"python": rss_mib()}
import torch
torch.set_num_threads(1)
record["torch"] = rss_mib()
start = time.perf_counter()
import kd_env
record["kd_env_import_s"] = time.perf_counter() - start
record["kd_env"] = rss_mib()
record["kd_env_modules"] = loaded()
import numpy as np, gymnasium as gym
env = gym.make("MultiTeacherKD-Synthetic-v0")
env.reset(seed=0)
env.step(np.zeros(env.action_space.shape, dtype=np.float32))
record["worker"] = rss_mib()
record["worker_modules"] = loaded()
import torchvision
record["plus_torchvision"] = rss_mib()
print(json.dumps(record))
"""


def bench_imports(rounds: int) -> None:
    """RSS of ``import kd_env`` and of one synthetic-env worker, each child a fresh process."""
    if not sys.platform.startswith("linux"):
        print("[imports] skipped: reads /proc/self/status (Linux only)")
        return

    def child() -> dict:
        output = subprocess.run([sys.executable, "-c", _IMPORTS_CHILD], check=True, capture_output=True, text=True)
        return json.loads(output.stdout.strip().splitlines()[-1])

    child()  # trains the synthetic teachers into the cache if missing: not part of a worker's cost
    records = [child() for _ in range(rounds)]
    median = {
        key: statistics.median(r[key] for r in records)
        for key in ("python", "torch", "kd_env", "worker", "plus_torchvision", "kd_env_import_s")
    }
    print(f"[imports] fresh processes, 1 torch thread, median of {rounds}; RSS in MiB")
    print(
        f"  python {median['python']:.0f} | import torch {median['torch']:.0f} | import kd_env {median['kd_env']:.0f} "
        f"(+{median['kd_env'] - median['torch']:.0f} over torch; {median['kd_env_import_s']:.2f} s)"
    )
    print(f"    heavy modules loaded by import kd_env: {records[-1]['kd_env_modules'] or 'none'}")
    print(f"  synthetic-env worker (built, reset, one step) {median['worker']:.0f}; loaded: {records[-1]['worker_modules']}")
    print(f"  import torchvision on top of that worker: +{median['plus_torchvision'] - median['worker']:.0f}")


def bench_sweep(preset_name: str, steps: int) -> None:
    """One sweep through the local executor with ``--jobs 1`` and with ``--jobs 2``: wall times."""
    import dataclasses
    import tempfile

    from kd_env.comparison import run_benchmark
    from kd_env.comparison.sweep import plan, prepare_teachers, resolve_preset
    from kd_env.utils import available_cores, threads_per_run

    overrides = {"max_steps_per_epoch": steps} if steps else {}
    _, preset = resolve_preset(preset_name)
    prepare_teachers(preset, overrides)  # trained once, outside the timings
    # one untimed run per scenario first: it builds the teacher-output stores both sweeps then read
    warm_up = dataclasses.replace(preset, methods=preset.methods[:1], seeds=preset.seeds[:1], students=preset.students[:1])
    with tempfile.TemporaryDirectory(prefix="kd_env_bench_sweep_") as out:
        run_benchmark(warm_up, out, overrides, progress=False, jobs=2)
    seconds: dict[int, float] = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory(prefix="kd_env_bench_sweep_") as out:
            runs = len(plan(preset, Path(out)))
            start = time.perf_counter()
            run_benchmark(preset_name, out, overrides, progress=False, jobs=jobs)
            seconds[jobs] = time.perf_counter() - start
    cap = f"at most {steps} updates per epoch" if steps else "full epochs"
    print(f"[sweep] preset {preset_name} ({runs} runs, {cap}), local executor, {available_cores()} cores, set-up included")
    print(
        f"  --jobs 1 ({threads_per_run(1)} threads per run) {seconds[1]:.1f} s | --jobs 2 ({threads_per_run(2)} per run) "
        f"{seconds[2]:.1f} s | speed-up jobs 1 / jobs 2 = {seconds[1] / seconds[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--section",
        action="append",
        choices=["all", "step", "epoch", "env", "store", "run", "teachers16", "accuracy", "agents", "imports", "sweep"],
        help="repeatable; default: all",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $KD_BENCH_THREADS or 2)")
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dtype in the accuracy section")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0, help="updates per epoch measured (0: a full epoch)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sweep-preset", default="quick", help="the preset the sweep section runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:  # the children read it too
        os.environ["KD_BENCH_THREADS"] = str(args.threads)
    steps = args.steps if args.steps > 0 else 10**9
    if args.child:
        _child(args.child, steps, args.batch_size, args.epochs)
        return
    sections = set(args.section or ["all"])
    if "all" in sections:
        sections = {"step", "epoch", "env", "store", "run", "teachers16", "accuracy", "agents", "imports", "sweep"}
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if "step" in sections:
        bench_step(args.repeats, args.batch_size)
    if "env" in sections:
        bench_env(args.repeats, args.batch_size)
    if "epoch" in sections:
        bench_epoch(args.steps, args.batch_size, args.rounds)
    if "store" in sections:
        bench_store(args.batch_size, max(3, args.rounds))
    if "run" in sections:
        bench_run(args.batch_size, args.rounds)
    if "teachers16" in sections:
        bench_teachers16(args.repeats, args.batch_size)
    if "accuracy" in sections:
        bench_accuracy(args.batch_size, args.seeds)
    if "agents" in sections:
        bench_agents(args.batch_size, args.rounds)
    if "imports" in sections:
        bench_imports(max(3, args.rounds))
    if "sweep" in sections:
        bench_sweep(args.sweep_preset, args.steps)


if __name__ == "__main__":
    main()
