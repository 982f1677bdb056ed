"""Label regimes (#22): full (the default), none (no training labels) and noisy training labels."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env

import kd_env
from kd_env.agents import MTKDRL, MTKDRLPG
from kd_env.baselines import make_baseline, rules
from kd_env.baselines.mmkd import MMKD
from kd_env.data import corrupt_labels
from kd_env.data.labels import derived_noise_seed
from kd_env.engine import TrainingLabelsHidden
from kd_env.envs import KDEnvSettings, PerSampleKDVectorEnv

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
FAST: dict[str, Any] = {"epochs": 1, "max_steps_per_epoch": 3}
NOISY: dict[str, Any] = {"labels": "noisy", "label_noise": 0.25}
LABEL_COLUMNS = ("teacher_ce", "teacher_acc", "student_ce")


def _per_sample(**kwargs) -> PerSampleKDVectorEnv:
    return PerSampleKDVectorEnv(num_envs=16, **FAST, **kwargs)


# ---------------------------------------------------------------------- the noise itself
def test_symmetric_noise_flips_exactly_the_rate_reproducibly():
    labels = torch.arange(1000) % 10
    noisy = corrupt_labels(labels, 10, 0.2, "symmetric", seed=3)
    changed = noisy != labels
    assert int(changed.sum()) == 200  # exactly round(rate * N), every one a different class
    assert noisy.dtype == torch.int64 and noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(noisy, corrupt_labels(labels, 10, 0.2, "symmetric", seed=3))
    assert not torch.equal(noisy, corrupt_labels(labels, 10, 0.2, "symmetric", seed=4))
    assert len(set(noisy[changed].tolist())) == 10  # the wrong labels spread over the classes
    assert torch.equal(corrupt_labels(labels, 10, 0.0, "symmetric", seed=3), labels)
    assert torch.equal(labels, torch.arange(1000) % 10)  # the input is not modified


def test_pair_noise_maps_each_flipped_class_to_the_next():
    labels = torch.arange(400) % 4
    noisy = corrupt_labels(labels, 4, 0.3, "pairs", seed=0)
    changed = noisy != labels
    assert int(changed.sum()) == 120
    assert torch.equal(noisy[changed], (labels[changed] + 1) % 4)  # 3 -> 0 included
    # the same samples are chosen as by symmetric noise with the same seed: only the new class differs
    assert torch.equal(changed, corrupt_labels(labels, 4, 0.3, "symmetric", seed=0) != labels)


def test_derived_seed_is_fixed_and_differs_from_the_split_seed():
    assert derived_noise_seed(0) == derived_noise_seed(0) != derived_noise_seed(1)
    assert derived_noise_seed(0) != 0 and 0 <= derived_noise_seed(7) < 2**56


# ---------------------------------------------------------------------- noisy envs
def test_noisy_env_corrupts_the_training_labels_only():
    clean = gym.make(SYNTHETIC, **FAST).unwrapped.engine
    noisy = gym.make(SYNTHETIC, **FAST, **NOISY).unwrapped.engine
    again = gym.make(SYNTHETIC, **FAST, **NOISY).unwrapped.engine
    seeded = gym.make(SYNTHETIC, **FAST, **NOISY, label_noise_seed=5).unwrapped.engine
    pairs = gym.make(SYNTHETIC, **FAST, **NOISY, label_noise_kind="pairs").unwrapped.engine
    true = clean.data.train_labels
    count = round(0.25 * true.shape[0])
    assert int((noisy.data.train_labels != true).sum()) == count
    assert torch.equal(noisy.data.train_labels, again.data.train_labels)  # the derived seed is fixed
    assert not torch.equal(noisy.data.train_labels, seeded.data.train_labels)
    assert int((seeded.data.train_labels != true).sum()) == count
    changed = pairs.data.train_labels != true
    assert int(changed.sum()) == count
    assert torch.equal(pairs.data.train_labels[changed], (true[changed] + 1) % clean.num_classes)
    for engine in (noisy, seeded, pairs):
        assert torch.equal(engine.data.true_train_labels, true)
        assert torch.equal(engine.data.train_images, clean.data.train_images)
        for split in ("val", "test"):
            assert torch.equal(getattr(engine.data, f"{split}_labels"), getattr(clean.data, f"{split}_labels"))
        # the teachers' outputs do not depend on labels: the same teacher-output store
        assert engine.teacher_source.store is not None and clean.teacher_source.store is not None
        assert engine.teacher_source.store.path == clean.teacher_source.store.path
    assert clean.data.clean_train_labels is None


def test_noisy_labels_reach_the_loss_and_the_label_columns():
    env = gym.make(SYNTHETIC, **FAST, **NOISY, action_mode="simplex").unwrapped
    env.reset(seed=0)
    batch = env.engine.current
    noisy = env.engine.data.train_labels[batch.indices]
    assert torch.equal(batch.labels, noisy)
    assert not torch.equal(noisy, env.engine.data.true_train_labels[batch.indices])  # this batch has a flipped label
    expected_ce = kd_env.engine.per_sample_cross_entropy(batch.teacher_logits, noisy)
    torch.testing.assert_close(batch.teacher_ce, expected_ce, rtol=0, atol=0)
    torch.testing.assert_close(batch.student_ce, kd_env.engine.per_sample_cross_entropy(batch.student_logits, noisy), rtol=0, atol=0)
    # CA-MKD reads the noisy labels, as a user with noisy data would; the oracle, a reference, the true ones
    camkd = make_baseline("camkd", env)
    torch.testing.assert_close(camkd.teacher_weights(batch), rules.camkd_weights(batch.teacher_logits, noisy))
    oracle = make_baseline("oracle", env)
    true = env.engine.data.true_train_labels[batch.indices]
    torch.testing.assert_close(oracle.teacher_weights(batch), rules.oracle_weights(oracle.class_accuracy, true))


# ---------------------------------------------------------------------- the label-free regime
@pytest.mark.parametrize("feature_kd", [False, True])
def test_label_free_loss_is_the_distillation_loss_alone(feature_kd):
    env = gym.make(SYNTHETIC, **FAST, labels="none", action_mode="simplex", feature_kd=feature_kd, alpha=0.7, beta=2.0).unwrapped
    env.reset(seed=0)
    batch = env.engine.current
    assert not batch.has_training_labels
    weights = torch.tensor([0.5, 0.3, 0.2])
    # the hand reference: alpha * kd_scale * sum_k w KL (+ beta * sum_k w MSE), no CE term
    reference = 0.7 * (batch.kd_loss.detach() * weights).sum(1)
    if feature_kd:
        reference = reference + 2.0 * (batch.feature_mse.detach() * weights).sum(1)
    result = env.engine.step(weights)
    torch.testing.assert_close(result.per_sample_loss, reference, rtol=1e-6, atol=0)
    assert result.loss == pytest.approx(float(reference.mean()), rel=1e-6)
    assert result.student_ce is None


def test_label_free_loss_is_the_full_loss_less_the_student_ce():
    losses, ce = {}, None
    for labels in ("full", "none"):
        env = gym.make(SYNTHETIC, **FAST, labels=labels, action_mode="simplex").unwrapped
        env.reset(seed=0)  # the same student, data order and batch
        if labels == "full":
            ce = float(env.engine.current.student_ce.detach().mean())
        losses[labels] = env.engine.step(torch.tensor([0.2, 0.3, 0.5])).loss
    assert losses["full"] - losses["none"] == pytest.approx(ce, rel=1e-5)


def test_label_free_batch_withholds_every_label_quantity():
    env = gym.make(SYNTHETIC, **FAST, labels="none").unwrapped
    env.reset(seed=0)
    batch = env.engine.current
    for name in kd_env.engine.LABEL_FIELDS:
        with pytest.raises(TrainingLabelsHidden, match=f"StepBatch.{name} .*labels='none'"):
            getattr(batch, name)
    assert batch.batch_size == batch.indices.shape[0]
    _, _, _, _, info = env.step(env.action_space.sample())
    assert "ce" not in info  # the student's training CE reads the labels


@pytest.mark.parametrize("state_parts", [["performance", "gap"], ["performance"]])
def test_label_free_batch_observation_drops_the_label_columns(state_parts):
    full = gym.make(SYNTHETIC, **FAST, state_parts=state_parts).unwrapped
    env = gym.make(SYNTHETIC, **FAST, state_parts=state_parts, labels="none").unwrapped
    assert not any(name.endswith(LABEL_COLUMNS) for name in env.feature_names)
    assert env.feature_names == [name for name in full.feature_names if not name.endswith(LABEL_COLUMNS)]
    assert env.feature_names[-2:] == ["progress", "lr"]
    observation, _ = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape == (len(env.feature_names),)
    assert env.observation_space.contains(observation)
    # the columns left are the full regime's, value for value (same student, same batch)
    full_observation, _ = full.reset(seed=0)
    kept = [full.feature_names.index(name) for name in env.feature_names]
    np.testing.assert_array_equal(observation, full_observation[kept])


def test_label_free_per_sample_state_drops_teacher_ce_and_rebuilds_compact_states():
    full, env = _per_sample(), _per_sample(labels="none")
    assert not any(name.endswith("/teacher_ce") for name in env.feature_names)
    assert env.feature_names == [name for name in full.feature_names if not name.endswith("/teacher_ce")]
    observation, _ = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape
    assert env.single_observation_space.shape == (len(env.feature_names),)
    full_observation, _ = full.reset(seed=0)
    kept = [full.feature_names.index(name) for name in env.feature_names]
    np.testing.assert_array_equal(observation, full_observation[:, kept])
    compact = env.compact_states(observation)
    assert compact is not None
    np.testing.assert_array_equal(env.expand_states(compact).numpy(), observation)


def test_per_sample_state_with_no_column_left_is_refused():
    with pytest.raises(ValueError, match="no column.*labels='none'"):
        _per_sample(labels="none", state_parts=["performance"], include_embeddings=False, logits=None)


@pytest.mark.parametrize("regime", [{}, {"labels": "full"}, {"labels": "none"}, NOISY])
def test_checker_passes_in_every_regime(regime):
    env = gym.make(SYNTHETIC, **FAST, **regime)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
    env.close()


def test_full_regime_given_explicitly_is_the_default_bit_for_bit():
    traces = []
    for regime in ({}, {"labels": "full"}):
        env = gym.make(SYNTHETIC, **FAST, **regime)
        observation, _ = env.reset(seed=0)
        trace = [observation]
        rng = np.random.default_rng(0)
        for _ in range(3):
            observation, reward, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            trace += [observation, reward, info["loss"], info["ce"], info["weights"]]
        traces.append(trace)
    for first, second in zip(*traces):
        np.testing.assert_array_equal(first, second)


# ---------------------------------------------------------------------- what runs without labels
@pytest.mark.parametrize("name", ["aver", "ebkd", "aekd", "best", "random", "no-kd", "oracle"])
def test_rules_that_read_no_training_label_run_without_labels(name):
    action_mode = "raw" if name == "no-kd" else "simplex"
    env = _per_sample(labels="none", action_mode=action_mode)
    policy = make_baseline(name, env)
    observation, _ = env.reset(seed=0)
    for _ in range(3):
        action, _ = policy.predict(observation)
        observation, rewards, terminated, _, _ = env.step(action)
        assert np.isfinite(rewards).all()
    assert terminated.all()


def test_oracle_reads_the_true_labels_without_labels():
    env = _per_sample(labels="none", action_mode="simplex")
    oracle = make_baseline("oracle", env)
    env.reset(seed=0)
    batch = env.engine.current
    true = env.engine.data.true_train_labels[batch.indices]
    torch.testing.assert_close(oracle.teacher_weights(batch), rules.oracle_weights(oracle.class_accuracy, true))


@pytest.mark.parametrize("name", ["camkd", "ce-softmax", "ce-route"])
def test_rules_that_read_training_labels_are_refused_without_labels(name):
    env = _per_sample(labels="none", action_mode="simplex")
    with pytest.raises(ValueError, match=f"'{name}' reads the training labels.*labels='none'.*aver"):
        make_baseline(name, env)


def test_mmkd_is_refused_without_labels():
    env = _per_sample(labels="none", action_mode="simplex")
    with pytest.raises(ValueError, match="'mmkd' reads the training labels.*labels='none'"):
        MMKD(env)


def test_agents_that_read_teacher_ce_are_refused_and_the_router_builds():
    env = _per_sample(labels="none", action_mode="raw")
    with pytest.raises(ValueError, match="MTKD-RL reads each teacher's CE.*labels='none'"):
        MTKDRL(env)
    with pytest.raises(ValueError, match="network='mtkd'.*labels='none'"):
        MTKDRLPG(env, network="mtkd")
    router = MTKDRLPG(env, network="scorer")
    assert "teacher_ce" not in router.slices.scalars
    observation, _ = env.reset(seed=0)
    action, _ = router.predict(observation, deterministic=True)
    assert action.shape == env.action_space.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward_mode": "label_logprob"}, "reward_mode='label_logprob' reads the training labels.*labels='none'.*val_loss_delta"),
        ({"feature_term": "camkd"}, "feature_term='camkd'.*labels='none'"),
    ],
)
def test_label_rewards_and_terms_are_refused_without_labels(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make(SYNTHETIC, **FAST, labels="none", **kwargs)
    gym.make(SYNTHETIC, **FAST, **kwargs).close()  # fine with labels


@pytest.mark.parametrize("reward_mode", ["neg_loss", "val_loss_delta", "val_acc"])
def test_rewards_without_training_labels_run_without_labels(reward_mode):
    env = gym.make(SYNTHETIC, **FAST, labels="none", reward_mode=reward_mode)
    env.reset(seed=0)
    for _ in range(3):
        _, reward, terminated, _, info = env.step(env.action_space.sample())
        assert np.isfinite(reward)
    assert terminated and "val_acc" in info and "final_test_acc" in info


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": "partial"}, r"labels must be one of \('full', 'none', 'noisy'\), got 'partial'"),
        ({"labels": "noisy"}, r"labels='noisy' needs label_noise"),
        ({"labels": "noisy", "label_noise": -0.1}, r"label_noise must be a number in \[0, 1\), got -0.1"),
        ({"labels": "noisy", "label_noise": 1.0}, r"label_noise must be a number in \[0, 1\), got 1.0"),
        ({"labels": "noisy", "label_noise": "abc"}, r"label_noise must be a number in \[0, 1\), got 'abc'"),
        ({"labels": "noisy", "label_noise": float("nan")}, r"label_noise must be a number in \[0, 1\), got nan"),
        ({"labels": "noisy", "label_noise": True}, r"label_noise must be a number in \[0, 1\), got True"),
        ({"labels": "noisy", "label_noise": 0.1, "label_noise_kind": "swap"}, r"label_noise_kind must be one of \('symmetric', 'pairs'\)"),
        ({"labels": "noisy", "label_noise": 0.1, "label_noise_seed": -1}, r"label_noise_seed must be an integer >= 0, got -1"),
        ({"label_noise": 0.2}, r"label_noise=0.2 applies to labels='noisy' only, got labels='full'"),
        ({"labels": "none", "label_noise_kind": "pairs"}, r"label_noise_kind='pairs' applies to labels='noisy' only"),
        ({"label_noise_seed": 3}, r"label_noise_seed=3 applies to labels='noisy' only"),
    ],
)
def test_bad_label_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KDEnvSettings.from_kwargs(**kwargs)
    with pytest.raises(ValueError, match=message):
        gym.make(SYNTHETIC, **FAST, **kwargs)  # before any data or teacher is loaded


def test_bad_label_type_is_refused():
    with pytest.raises(TypeError, match="labels must be a string, got 0"):
        KDEnvSettings.from_kwargs(labels=0)


def test_checkpoint_of_another_regime_is_refused(tmp_path):
    env = gym.make(SYNTHETIC, **FAST, **NOISY).unwrapped
    env.reset(seed=0)
    path = env.save(tmp_path / "noisy.pt")
    other = gym.make(SYNTHETIC, **FAST).unwrapped
    with pytest.raises(ValueError, match="labels: checkpoint 'noisy' vs env 'full'"):
        other.load(path)
    again = gym.make(SYNTHETIC, **FAST, **NOISY).unwrapped
    again.load(path)  # the same regime resumes
