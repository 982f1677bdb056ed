"""Shared test set-up: a private cache (teachers and stores made here stay out of the user's
cache, and the user's cached teachers never leak into the tests), but the user's data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch


def _user_fashion_mnist_root() -> str | None:
    """Where the finder finds Fashion-MNIST for this user (Debian's folder, $KD_ENV_DATA, or the
    user's cache, where ``make data`` puts it for a non-root user), before the cache is swapped."""
    from kd_env.data import DatasetNotFoundError, find_data_root

    try:
        return str(find_data_root("fashion_mnist"))
    except DatasetNotFoundError:
        return None


_FASHION_MNIST_ROOT = os.environ.get("KD_ENV_DATA") or _user_fashion_mnist_root()
if _FASHION_MNIST_ROOT:
    os.environ["KD_ENV_DATA"] = _FASHION_MNIST_ROOT
# always a fresh cache (not setdefault: a user's KD_ENV_CACHE would be written to), removed at exit
_TEST_CACHE = tempfile.mkdtemp(prefix="kd_env_test_cache_")
os.environ["KD_ENV_CACHE"] = _TEST_CACHE
atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)
# the tests' networks are tiny: one thread avoids thread hand-off costs that dominate them
# (on a loaded 2-core machine two threads made some tests about 100 times slower)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_process_state():
    """Every test starts with one torch thread, this session's environment variables and no crash
    point counted, whatever an earlier test set (``--threads`` of an in-process ``kd-env`` command,
    a runner's thread setting, a variable a library call wrote, a ``$KD_ENV_CRASH_AT`` point
    reached in this process), and leaves them so: tests pass in any order."""
    from kd_env.utils import reset_crash_points

    environment = dict(os.environ)
    torch.set_num_threads(1)
    reset_crash_points()
    yield
    torch.set_num_threads(1)
    reset_crash_points()
    if dict(os.environ) != environment:
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        os.environ.update(environment)


@pytest.fixture(scope="session")
def synthetic_data():
    from kd_env.data import load_dataset

    return load_dataset("synthetic", val_fraction=0.1, split_seed=0)


@pytest.fixture(scope="session")
def synthetic_teachers(synthetic_data):
    """Two tiny seeded, untrained teachers: enough to exercise the engine's arithmetic."""
    from kd_env.models import create_model

    teachers = []
    for seed, arch in enumerate(["mlp", "cnn_w8"]):
        torch.manual_seed(seed)
        teachers.append(create_model(arch, synthetic_data.num_classes, 1, image_size=8).eval())
    return teachers


@pytest.fixture()
def make_engine(synthetic_data, synthetic_teachers):
    from kd_env.engine import DistillationEngine, EngineConfig
    from kd_env.envs import StudentFactory

    def factory(**overrides):
        config = EngineConfig(**{"epochs": 2, "batch_size": 32, **overrides})
        return DistillationEngine(
            StudentFactory("cnn_w8", synthetic_data.num_classes, 1),
            synthetic_teachers,
            synthetic_data,
            config,
            teacher_names=["mlp", "cnn"],
        )

    return factory
