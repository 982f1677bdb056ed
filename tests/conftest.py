"""Shared test set-up: a private cache (teachers trained here stay out of the user's cache)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# before anything imports kd_env: the synthetic envs train their tiny teachers into this cache
os.environ.setdefault("KD_ENV_CACHE", tempfile.mkdtemp(prefix="kd_env_test_cache_"))
# the tests' networks are tiny: one thread avoids thread hand-off costs that dominate them
torch.set_num_threads(1)


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
