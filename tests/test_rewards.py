"""Reward formulas against independent computations (kd_env/envs/rewards.py, the env docstrings).

Each test recomputes the reward from the networks (:mod:`kd_reference`), the actions and the
documented formula, for the batch-level and the per-sample env:

* ``neg_loss``: ``-loss / log(C)`` per update; per sample MTKD-RL's ``clip(z-score(-loss), 0, 1)``.
* ``val_loss_delta``: the drop of the student's CE on the first ``probe_size`` validation images.
* ``val_acc``: zero except at epoch ends; the return is the final validation accuracy - 1/C.
* ``label_logprob``: ``log sum_k w_k softmax(z_k / T)[y] / log(C)``, each row renormalised.

``reward_scale`` is 2 (or 1.5) throughout, so a reward that forgets it fails too.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from kd_reference import evaluate, per_sample_loss, reference_batch

from kd_env.envs import PerSampleKDVectorEnv

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
LOSS = {"alpha": 0.7, "beta": 2.0, "kd_scale": 0.5, "temperature": 3.0}
SCALE = 2.0  # softmax action scale
# float16 teacher feature maps in the store: the loss differs from a float32 recomputation by ~1e-4
TOLERANCE: dict[str, Any] = {"rtol": 1e-3, "atol": 5e-4}


def _softmax_weights(action: np.ndarray, num_teachers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-mode weights of an action ``[..., 2K]``: per head ``softmax(SCALE * clip(a, -1, 1))``."""
    heads = np.clip(action, -1.0, 1.0).astype(np.float64).reshape(*action.shape[:-1], 2, num_teachers)
    exp = np.exp(SCALE * heads)
    weights = torch.from_numpy(exp / exp.sum(-1, keepdims=True))
    return weights[..., 0, :], weights[..., 1, :]


def _reference_loss(env, action: np.ndarray) -> torch.Tensor:
    """The per-sample loss the next update of ``env`` trains on under ``action``."""
    logit_weights, feature_weights = _softmax_weights(action, env.num_teachers)
    return per_sample_loss(
        reference_batch(env.engine, LOSS["temperature"]),
        logit_weights,
        feature_weights,
        alpha=LOSS["alpha"],
        kd_scale=LOSS["kd_scale"],
        beta=LOSS["beta"],
    )


def _actions(rng: np.random.Generator, space) -> np.ndarray:
    return rng.uniform(-1, 1, space.shape).astype(np.float32)


def test_neg_loss_is_the_negative_loss_over_log_c():
    env = gym.make(SYNTHETIC, reward_mode="neg_loss", reward_scale=2.0, scale=SCALE, epochs=2, max_steps_per_epoch=2, **LOSS).unwrapped
    env.reset(seed=0)
    log_c = math.log(env.engine.data.num_classes)
    rng = np.random.default_rng(0)
    for _ in range(4):  # both epochs, across the epoch end
        action = _actions(rng, env.action_space)
        expected = -float(_reference_loss(env, action).mean()) / log_c * 2.0
        _, reward, _, _, _ = env.step(action)
        np.testing.assert_allclose(reward, expected, **TOLERANCE)


def test_per_sample_neg_loss_is_z_scored_and_clipped():
    envs = PerSampleKDVectorEnv(num_envs=32, dataset="synthetic", reward_scale=1.5, scale=SCALE, epochs=1, max_steps_per_epoch=3, **LOSS)
    envs.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(3):
        actions = _actions(rng, envs.action_space)
        reward = -_reference_loss(envs, actions).numpy()
        # MTKD-RL's batch normalisation: torch's std (n - 1), then clip to [0, 1], then the scale
        expected = np.clip((reward - reward.mean()) / (reward.std(ddof=1) + 1e-8), 0.0, 1.0) * 1.5
        _, rewards, _, _, _ = envs.step(actions)
        np.testing.assert_allclose(rewards, expected, rtol=0, atol=1e-3)  # measured: under 3e-4
        assert (rewards == 0).any() and (rewards == 1.5).any()  # both clip bounds are reached


@pytest.mark.parametrize("per_sample", [False, True])
def test_val_loss_delta_is_the_drop_of_the_probe_ce(per_sample):
    kwargs = {"reward_mode": "val_loss_delta", "reward_scale": 2.0, "probe_size": 20, "epochs": 2, "max_steps_per_epoch": 2}
    env = PerSampleKDVectorEnv(num_envs=16, dataset="synthetic", **kwargs) if per_sample else gym.make(SYNTHETIC, **kwargs).unwrapped
    env.reset(seed=2)
    log_c = math.log(env.engine.data.num_classes)
    before = evaluate(env.engine, "val", limit=20)[1]
    rng = np.random.default_rng(2)
    for _ in range(4):
        _, reward, _, _, _ = env.step(_actions(rng, env.action_space))
        after = evaluate(env.engine, "val", limit=20)[1]
        expected = (before - after) / log_c * 2.0
        np.testing.assert_allclose(reward, np.full(16, expected) if per_sample else expected, rtol=1e-5, atol=1e-6)
        before = after


@pytest.mark.parametrize("per_sample", [False, True])
def test_val_acc_return_is_the_final_val_acc_above_chance(per_sample):
    kwargs = {"reward_mode": "val_acc", "reward_scale": 2.0, "epochs": 2, "max_steps_per_epoch": 3}
    env = PerSampleKDVectorEnv(num_envs=16, dataset="synthetic", **kwargs) if per_sample else gym.make(SYNTHETIC, **kwargs).unwrapped
    env.reset(seed=3)
    chance = 1.0 / env.engine.data.num_classes
    rng = np.random.default_rng(3)
    rewards, epoch_val_accs = [], []
    for step in range(6):
        _, reward, terminated, _, _ = env.step(_actions(rng, env.action_space))
        reward = float(np.unique(reward).item()) if per_sample else reward  # every slot: the update's reward
        rewards.append(reward)
        if step == 2:  # the first epoch's end: the student as it was evaluated is the best so far
            epoch_val_accs.append(evaluate(env.engine, "val", state=env.engine.best_student_state)[0])
    assert np.all(terminated)
    epoch_val_accs.append(evaluate(env.engine, "val")[0])  # the final student (no batch is prepared after the end)
    assert rewards[0] == rewards[1] == rewards[3] == rewards[4] == 0.0  # sparse: epoch ends only
    assert rewards[2] == pytest.approx((epoch_val_accs[0] - chance) * 2.0)
    assert rewards[5] == pytest.approx((epoch_val_accs[1] - epoch_val_accs[0]) * 2.0)
    assert sum(rewards) == pytest.approx((epoch_val_accs[1] - chance) * 2.0)


def _label_logprob(reference, weights: torch.Tensor, num_classes: int) -> np.ndarray:
    """``log sum_k w_k softmax(z_k / T)[y] / log(C)`` per sample (rows renormalised); chance, -1, for a zero row."""
    probs = torch.softmax(reference.teacher_logits / LOSS["temperature"], dim=-1)  # [K, B, C]
    label_probs = probs[:, torch.arange(reference.labels.shape[0]), reference.labels].transpose(0, 1)  # [B, K]
    totals = weights.sum(-1, keepdim=True)
    mixture = (weights / torch.where(totals > 0, totals, torch.ones_like(totals)) * label_probs).sum(-1)
    values = torch.where(totals.squeeze(-1) > 0, torch.log(mixture), torch.tensor(math.log(1.0 / num_classes), dtype=torch.float64))
    return (values / math.log(num_classes)).numpy()


def test_label_logprob_per_sample_is_the_weighted_mixtures_label_log_probability():
    envs = PerSampleKDVectorEnv(
        num_envs=16,
        dataset="synthetic",
        reward_mode="label_logprob",
        reward_scale=2.0,
        action_mode="raw",
        feature_kd=False,
        epochs=1,
        **LOSS,
    )
    envs.reset(seed=4)
    num_classes = envs.engine.data.num_classes
    rng = np.random.default_rng(4)
    for _ in range(2):
        actions = rng.uniform(0, 3, envs.action_space.shape).astype(np.float32)  # rows far from summing to one
        actions[0] = 0.0  # no teacher: chance
        actions[1] = [0.0, 2.5, 0.0]  # one teacher
        expected = _label_logprob(reference_batch(envs.engine, LOSS["temperature"]), torch.from_numpy(actions).double(), num_classes)
        _, rewards, _, _, _ = envs.step(actions)
        np.testing.assert_allclose(rewards, expected * 2.0, rtol=1e-5, atol=1e-6)
        assert rewards[0] == pytest.approx(-2.0)


def test_label_logprob_batch_reward_is_the_batch_mean():
    env = gym.make(
        SYNTHETIC, reward_mode="label_logprob", reward_scale=2.0, action_mode="raw", feature_kd=False, epochs=1, **LOSS
    ).unwrapped
    env.reset(seed=5)
    num_classes = env.engine.data.num_classes
    for action in ([0.5, 0.0, 1.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]):
        weights = torch.tensor(action, dtype=torch.float64).expand(env.engine.config.batch_size, 3)
        expected = _label_logprob(reference_batch(env.engine, LOSS["temperature"]), weights, num_classes).mean() * 2.0
        _, reward, _, _, _ = env.step(np.asarray(action, dtype=np.float32))
        assert reward == pytest.approx(expected, rel=1e-5)
