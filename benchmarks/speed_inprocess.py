"""The in-process side of ``bench_speed.py``: the shared set-up, the alternating timer, and the
sections timed inside one process (``step``, ``env``, ``teachers16``, ``accuracy``).

Not run on its own: ``benchmarks/bench_speed.py`` (whose docstring says what each section
measures) imports it, and so does ``speed_children.py`` for the set-up.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # imported inside the functions at run time, so ``--help`` stays quick
    from kd_env.data import DatasetSplits
    from kd_env.engine import DistillationEngine
    from kd_env.models import KDModel

DATASET = "fashion_mnist"


def setup(
    batch_size: int, feature_kd: bool = True, cache: bool = False, **config_overrides: Any
) -> tuple[DistillationEngine, DatasetSplits, list[KDModel]]:
    """Teachers of the default pool, a fresh engine and the data; ``config_overrides`` go to ``EngineConfig``."""
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
    """The median of ``samples`` (seconds), in milliseconds."""
    return 1000 * statistics.median(samples)


def alternate(variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each variant, rounds alternating A B A B ... so machine noise hits
    all of them alike; ``warmup`` untimed rounds first."""
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

    engine, data, teachers = setup(batch_size)
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

    times = alternate({"engine": engine_step, "bare": bare_step}, repeats)
    print(f"[step] batch {batch_size}, {engine.num_teachers} teachers, teachers run every step in both")
    print(f"  engine step {times['engine']:.2f} ms | bare hand-written step {times['bare']:.2f} ms")
    print(f"  ratio engine / bare = {times['engine'] / times['bare']:.3f}  (goal <= 1.05)")


def bench_env(repeats: int, batch_size: int) -> None:
    """Env step overhead over the engine step alone, same weights."""
    import gymnasium as gym
    import numpy as np

    import kd_env  # noqa: F401  (registers the ids)

    env_kwargs: dict[str, Any] = {"epochs": 50, "batch_size": batch_size, "reward_mode": "neg_loss", "action_mode": "simplex"}
    batch_env: Any = gym.make("MultiTeacherKD-FashionMNIST-v0", **env_kwargs).unwrapped
    vector_env = gym.make_vec("MultiTeacherKD-FashionMNIST-v0", num_envs=batch_size, vectorization_mode="vector_entry_point", **env_kwargs)
    engine, _, _ = setup(batch_size, cache=True)  # the same engine settings as the envs build
    teachers = batch_env.num_teachers
    batch_action = np.full(2 * teachers, 1.0 / teachers, dtype=np.float32)
    vector_action = np.tile(batch_action, (batch_size, 1))
    uniform = torch.full((teachers,), 1.0 / teachers)
    batch_env.reset(seed=0)
    vector_env.reset(seed=0)
    engine.reset(seed=0)
    times = alternate(
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
    assert engine.adapters is not None, "the engine has no feature adapters (feature KD off)"
    adapters = copy.deepcopy(engine.adapters)
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

    def teacher_forward(teacher: KDModel) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                teacher.forward_all(teacher_images)

        return run

    variants: dict[str, Callable[[], object]] = {"engine": lambda: engine.step(uniform), "student": student_step}
    variants.update({name: teacher_forward(teacher) for name, teacher in zip(names, engine.teachers)})
    times = alternate(variants, repeats)
    parts = times["student"] + sum(times[name] for name in names)
    print(f"[teachers16] 16 teachers (8 cnn_w8, 8 mlp, untrained), student cnn_w8, batch {batch_size}, teachers every step")
    print(
        f"  engine update {times['engine']:.1f} ms | 16 teacher forwards {parts - times['student']:.1f} ms + "
        f"student step {times['student']:.1f} ms = {parts:.1f} ms | ratio {times['engine'] / parts:.3f} (goal <= 1.10)"
    )
    start = time.perf_counter()
    stored = DistillationEngine(student_factory, teachers, data, EngineConfig(epochs=1, batch_size=batch_size), teacher_names=names)
    build = time.perf_counter() - start
    assert stored.teacher_source.store is not None
    print(
        f"  16-teacher float16 store: {stored.teacher_source.store.nbytes / 2**20:.0f} MiB, built in "
        f"{stored.teacher_source.store.manifest['build_seconds']:.1f} s (engine construction {build:.1f} s)"
    )
    key = stored.teacher_source.store.path.name
    stored.teacher_source.store.close()
    clear_stores(keys=[key])  # random teachers: no later run will want it


def bench_accuracy(batch_size: int, seeds: int) -> None:
    """Final test accuracy after one epoch, float16 store against float32, several seeds."""
    results: dict[str, list[float]] = {}
    for dtype in ("float16", "float32"):
        engine = setup(batch_size, cache=True, store_dtype=dtype)[0]
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
