"""Observation values against an independent computation from the teachers' and the student's outputs.

The per-sample state (MTKD-RL's: per teacher cosine, KL, CE, embedding, logits) and the
batch-level features are read column by column, by the names the envs publish, and compared with
:mod:`kd_reference`, which recomputes each quantity from the networks and the raw images.
"""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
from kd_reference import reference_batch

from kd_env.agents.mtkd_rl import PriorColumns
from kd_env.envs import PerSampleKDVectorEnv

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
TEMPERATURE = 3.0
# the teacher-output store keeps embeddings and feature maps in float16: cosine and MSE differ
# from a float32 recomputation by up to ~1e-4; a wrong column or sample is off by far more
TOLERANCE: dict[str, Any] = {"rtol": 1e-3, "atol": 5e-4}


def _column(observation: np.ndarray, names: list[str], name: str) -> np.ndarray:
    return observation[..., names.index(name)]


def _check_per_sample_state(envs: PerSampleKDVectorEnv, observation: np.ndarray, clip: float) -> None:
    """Every column of the per-sample state equals the recomputed quantity (clipped like the env)."""
    reference = reference_batch(envs.engine, TEMPERATURE)
    names = envs.feature_names
    spec = envs.state_spec
    for k, teacher in enumerate(envs.teacher_names):
        expected: dict[str, np.ndarray] = {}
        if "gap" in spec.state_parts:
            expected["kd_loss"] = reference.kl[:, k].numpy()
            if spec.feature_kd:
                assert reference.cosine is not None
                expected["feature_cosine"] = reference.cosine[:, k].numpy()
        if "performance" in spec.state_parts:
            expected["teacher_ce"] = reference.teacher_ce[:, k].numpy()
            if spec.include_embeddings:
                embedding = reference.teacher_embeddings[k].numpy()
                expected.update({f"embedding{i}": embedding[:, i] for i in range(embedding.shape[1])})
            logits = reference.teacher_logits[k].numpy()
            if spec.logits == "all":
                expected.update({f"logit{i}": logits[:, i] for i in range(logits.shape[1])})
            elif spec.logits:
                largest = -np.sort(-logits, axis=1)[:, : spec.logits]
                expected.update({f"logit{i}": largest[:, i] for i in range(cast(int, spec.logits))})
        teacher_columns = [name for name in names if name.startswith(f"{teacher}/")]
        assert sorted(teacher_columns) == sorted(f"{teacher}/{column}" for column in expected)
        for column, values in expected.items():
            np.testing.assert_allclose(
                _column(observation, names, f"{teacher}/{column}"),
                np.clip(values, -clip, clip),
                **TOLERANCE,
                err_msg=f"per-sample state column {teacher}/{column}",
            )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"include_embeddings": False, "logits": 2, "obs_clip": 0.5},
        {"feature_kd": False, "logits": None, "state_parts": ["gap"]},
        {"state_parts": ["performance"]},
    ],
)
def test_per_sample_state_columns_match_the_networks(options):
    envs = PerSampleKDVectorEnv(num_envs=16, dataset="synthetic", epochs=1, max_steps_per_epoch=3, temperature=TEMPERATURE, **options)
    observation, _ = envs.reset(seed=4)
    clip = float(options.get("obs_clip", envs.obs_clip))
    _check_per_sample_state(envs, observation, clip)
    rng = np.random.default_rng(0)
    observation, *_ = envs.step(rng.uniform(-1, 1, envs.action_space.shape).astype(np.float32))
    _check_per_sample_state(envs, observation, clip)  # the next batch, after an update of the student
    # the compact form keeps the student's columns and rebuilds the rest, to the bit
    student_columns = [name for name in envs.feature_names if name.endswith(("/kd_loss", "/feature_cosine"))]
    assert [envs.feature_names[i] for i in envs.state_spec.student_columns] == student_columns
    compact = envs.compact_states(observation)
    assert compact is not None and compact.student_columns.shape == (16, len(student_columns))
    np.testing.assert_array_equal(envs.expand_states(compact).numpy(), observation)


def test_mtkd_rl_prior_columns_read_ce_kl_and_cosine():
    """MTKD-RL's priors find their inputs by name: those columns hold each teacher's CE, KL, cosine."""
    envs = PerSampleKDVectorEnv(num_envs=16, dataset="synthetic", epochs=1, max_steps_per_epoch=3, temperature=TEMPERATURE)
    observation, _ = envs.reset(seed=1)
    reference = reference_batch(envs.engine, TEMPERATURE)
    columns = PriorColumns.from_feature_names(envs.feature_names, envs.teacher_names, feature_kd=True)
    assert reference.cosine is not None and columns.feature_cosine is not None
    np.testing.assert_allclose(observation[:, list(columns.teacher_ce)], reference.teacher_ce.numpy(), **TOLERANCE, err_msg="teacher_ce")
    np.testing.assert_allclose(observation[:, list(columns.kd_loss)], reference.kl.numpy(), **TOLERANCE, err_msg="kd_loss")
    np.testing.assert_allclose(
        observation[:, list(columns.feature_cosine)], reference.cosine.numpy(), **TOLERANCE, err_msg="feature_cosine"
    )


def _check_batch_features(env, observation: np.ndarray, *, step: int, total: int, lr: float) -> None:
    """Per teacher the batch means of CE, accuracy, entropy, KL and cosine; then progress, LR, student CE."""
    reference = reference_batch(env.engine, TEMPERATURE)
    names = env.feature_names
    parts = env.feature_spec.state_parts
    for k, teacher in enumerate(env.teacher_names):
        expected: dict[str, float] = {}
        if "performance" in parts:
            expected["teacher_ce"] = float(reference.teacher_ce[:, k].mean())
            expected["teacher_acc"] = float(reference.teacher_correct[:, k].mean())
            expected["teacher_entropy"] = float(reference.teacher_entropy[:, k].mean())
        if "gap" in parts:
            expected["kd_loss"] = float(reference.kl[:, k].mean())
            if env.feature_spec.feature_kd:
                assert reference.cosine is not None
                expected["feature_cosine"] = float(reference.cosine[:, k].mean())
        assert [name for name in names if name.startswith(f"{teacher}/")] == [f"{teacher}/{column}" for column in expected]
        for column, value in expected.items():
            np.testing.assert_allclose(
                _column(observation, names, f"{teacher}/{column}"), value, **TOLERANCE, err_msg=f"{teacher}/{column}"
            )
    assert _column(observation, names, "progress") == pytest.approx(step / total)
    assert _column(observation, names, "lr") == pytest.approx(lr)
    np.testing.assert_allclose(_column(observation, names, "student_ce"), float(reference.student_ce.mean()), **TOLERANCE)


@pytest.mark.parametrize("options", [{}, {"feature_kd": False, "state_parts": ["gap"]}, {"state_parts": ["performance"]}])
def test_batch_features_match_the_networks(options):
    env = gym.make(SYNTHETIC, epochs=2, max_steps_per_epoch=3, lr=0.04, temperature=TEMPERATURE, **options).unwrapped
    observation, _ = env.reset(seed=2)
    _check_batch_features(env, observation, step=0, total=6, lr=0.04)
    rng = np.random.default_rng(1)
    # the LR decays 10x at 0.625 of the 2-epoch budget, rounded: after the first epoch (step 3)
    for step, lr in [(1, 0.04), (2, 0.04), (3, 0.004)]:
        observation, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        _check_batch_features(env, observation, step=step, total=6, lr=lr)
