"""What ``bench_speed.py`` runs in its child processes (``--child KIND``), one measurement per
fresh process so each has its own peak memory: the reference loop written the way the public
MTKD-RL / RepDistiller code trains, kd-env's epoch through the batch-level env, env construction +
reset, one ``kd-env train`` run; and the script the ``imports`` section runs with ``python -c``.

Not run on its own: ``benchmarks/bench_speed.py --child KIND`` calls :func:`child`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

# beside this file: bench_speed.py's folder is on sys.path when it runs
from speed_inprocess import DATASET, setup


def _reference_epoch(steps: int, batch_size: int, epochs: int = 1, augment: bool = False, train_size: int | None = None) -> float:
    """Epochs written the way the public MTKD-RL / RepDistiller code does it; set-up included.
    ``augment``: torchvision's ``RandomCrop(padding=4)`` and ``RandomHorizontalFlip`` on the PIL
    images first, as the official CIFAR loaders do; ``train_size``: the first that many images."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from kd_env.data import find_data_root
    from kd_env.engine import build_adapters

    start = time.perf_counter()  # set-up counts: loading data and teachers is part of a run
    engine, data, teachers = setup(batch_size)  # for the same models and adapters only
    root = find_data_root(DATASET)
    augmentation = [transforms.RandomCrop(28, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    transform = transforms.Compose([*augmentation, transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    dataset: Any = datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
    if train_size is not None:
        dataset = Subset(dataset, range(train_size))
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


def _kd_env_epoch(steps: int, batch_size: int, epochs: int = 1, **env_kwargs: Any) -> float:
    """A kd-env run through the batch-level env; the time includes building the env (set-up).
    ``env_kwargs``: more env arguments (``augment``, ``augment_views``, ``train_size``)."""
    import gymnasium as gym
    import numpy as np

    import kd_env  # noqa: F401

    start = time.perf_counter()
    env: Any = gym.make(
        "MultiTeacherKD-FashionMNIST-v0",
        epochs=epochs,
        batch_size=batch_size,
        max_steps_per_epoch=steps,
        reward_mode="neg_loss",
        action_mode="simplex",
        **env_kwargs,
    ).unwrapped
    action = np.full(env.action_space.shape, 1.0, dtype=np.float32)
    env.reset(seed=0)
    print(json.dumps({"setup_seconds": time.perf_counter() - start}))  # data, teachers, store, reset
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(action)
    return time.perf_counter() - start


def _construct_and_reset(batch_size: int, **env_kwargs: Any) -> float:
    """Env construction + reset, timed in a fresh process (data, teachers, store opened or built)."""
    import gymnasium as gym

    import kd_env  # noqa: F401

    start = time.perf_counter()
    env = gym.make("MultiTeacherKD-FashionMNIST-v0", epochs=1, batch_size=batch_size, **env_kwargs).unwrapped
    env.reset(seed=0)
    return time.perf_counter() - start


_LABEL_FREE_ARGS = ["--env-arg", "labels=none", "--env-arg", "feature_kd=false"]
_LABEL_FREE_ROUTER_ARGS = [
    *("--env-arg", "probe_rows=256", "--env-arg", 'state_parts=["performance"]', "--env-arg", "include_embeddings=false"),
    *("--agent-arg", "network=mlp", "--agent-arg", "update=ppo", "--agent-arg", "normalize_advantage=true"),
    *("--agent-arg", "learning_rate=0.003", "--agent-arg", "n_steps=1"),
]


def _agent_run(spec: str, epochs: int) -> float:
    """One ``kd-env train`` run as a user starts it. ``spec`` is ``agent``, ``agent@reward_mode``
    or either with a ``per-sample:`` prefix (the per-sample env for a batch-level rule, to compare
    a per-sample agent with AVER on the same env; per-sample agents get it anyway), all with an
    optional ``label-free:`` prefix (no training labels, logit KD only; the router with the
    validation probe and the label-free settings of the suite, issue #23)."""
    import tempfile

    from kd_env.cli import main as cli_main
    from kd_env.registry import get_policy

    label_free = spec.startswith("label-free:")
    spec = spec.removeprefix("label-free:")
    forced = spec.startswith("per-sample:")
    agent, _, reward_mode = spec.removeprefix("per-sample:").partition("@")
    per_sample = ["--per-sample"] if forced or get_policy(agent).per_sample else []  # as registered, unless asked
    reward = ["--env-arg", f"reward_mode={reward_mode}"] if reward_mode else []
    if label_free:  # the suite's label-free regime; the router as suite-v2-label-free runs it
        reward += _LABEL_FREE_ARGS + (_LABEL_FREE_ROUTER_ARGS if reward_mode == "val_label_logprob" else [])
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


def _views_child(variant: str, steps: int, batch_size: int, epochs: int, train_size: int, views: int) -> float:
    """The ``views`` section's runs (issue #27), augmentation on: ``reference`` (the official-style
    loop), ``fresh`` (kd-env, the teachers on every batch), ``views`` (kd-env, ``augment_views``,
    the store warm) and ``construct`` (builds that store)."""
    env_kwargs: dict[str, Any] = {"augment": True, "train_size": train_size}
    if variant == "reference":
        return _reference_epoch(steps, batch_size, epochs, augment=True, train_size=train_size)
    if variant == "fresh":
        return _kd_env_epoch(steps, batch_size, epochs, **env_kwargs)
    env_kwargs["augment_views"] = views
    if variant == "construct":
        return _construct_and_reset(batch_size, **env_kwargs)
    return _kd_env_epoch(steps, batch_size, epochs, **env_kwargs)


def child(kind: str, steps: int, batch_size: int, epochs: int = 1, train_size: int = 20000, views: int = 4) -> None:
    """One measurement of ``kind`` (``reference``, ``kd_env``, ``construct``, ``views:<variant>``
    or ``agent:<spec>``); prints it as the last JSON line, which ``bench_speed.py`` reads."""
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    if kind.startswith("views:"):
        seconds = _views_child(kind.split(":", 1)[1], steps, batch_size, epochs, train_size, views)
    elif kind == "reference":
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


# run with ``python -c`` by the imports section: a fresh process measuring itself stage by stage
IMPORTS_CHILD = """
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
