"""stable-baselines3 agents on kd-env: the yaml hyperparameters, every algorithm's ``learn`` running
its updates on the batch-level and per-sample envs, save/load round trips, seeding, and PPO learning
to follow the one useful teacher among noise teachers (which an untrained PPO does not)."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import kd_env  # noqa: F401  (registers the ids)
from kd_env.agents.sb3 import (
    ALGORITHMS,
    VEC_NORMALIZE_FILE,
    load_hyperparams,
    load_sb3_agent,
    make_sb3_agent,
    make_sb3_eval_env,
    parse_python_literal,
    raw_hyperparams,
    save_sb3_agent,
    section_name,
)
from kd_env.envs import ENV_IDS
from kd_env.envs.sb3_vec import SB3VecEnvAdapter

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
# 8 updates per episode: a few hundred agent steps cross many episode ends (autoreset paths)
FAST: dict[str, Any] = {"epochs": 2, "max_steps_per_epoch": 4}
OFF_POLICY = ("sac", "td3", "ddpg")
# keys RL Zoo handles itself rather than passing to the algorithm's constructor
ZOO_KEYS = {"n_envs", "n_timesteps", "policy", "normalize", "noise_type", "noise_std"}


def _parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def _raw_observations(env_id: str, count: int, **kwargs) -> np.ndarray:
    """Observations of the batch env under random actions (what a VecNormalize would see)."""
    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(0)
    observation, _ = env.reset(seed=5)
    observations = [observation]
    while len(observations) < count:
        observation, _, terminated, _, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        observations.append(observation)
        if terminated:
            observation, _ = env.reset()
    return np.stack(observations)


def _deterministic_actions(model, raw_observations: np.ndarray) -> np.ndarray:
    vec_normalize = model.get_vec_normalize_env()
    observations = raw_observations if vec_normalize is None else vec_normalize.normalize_obs(raw_observations)
    actions, _ = model.predict(observations, deterministic=True)
    return actions


# ---------------------------------------------------------------------------------- yaml files
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_yaml_has_a_valid_section_for_every_env_id(algo):
    constructor = set(inspect.signature(ALGORITHMS[algo].__init__).parameters)
    for env_id in [*ENV_IDS, "default"]:
        for per_sample in (False, True):
            expected = f"{env_id}/per-sample" if per_sample else env_id
            assert section_name(algo, env_id, per_sample) == expected
            raw = raw_hyperparams(algo, env_id, per_sample)
            # every key is either RL Zoo's or an argument of the SB3 class: no typo slips through
            assert set(raw) - ZOO_KEYS <= constructor, set(raw) - ZOO_KEYS - constructor
            params = load_hyperparams(algo, env_id, per_sample)
            assert params["policy"] == "MlpPolicy"
            assert params["n_timesteps"] > 0
            assert params["normalize"]["norm_obs"] is True and params["normalize"]["gamma"] == params["gamma"]
            assert isinstance(params["policy_kwargs"], dict)
            n_envs = params["n_envs"]
            assert n_envs == 1 or per_sample  # batch-level envs are too expensive to replicate
            if algo in ("ppo", "a2c"):
                rollout = params["n_steps"] * n_envs
                assert rollout > 1
                if not per_sample:
                    assert 8 <= params["n_steps"] <= 64
            if algo == "ppo":
                assert rollout % params["batch_size"] == 0, (env_id, per_sample)
            if algo in OFF_POLICY:
                assert params["learning_starts"] < params["n_timesteps"] / 10
                assert params["batch_size"] <= params["buffer_size"]
            assert ("noise_type" in params) == (algo in ("td3", "ddpg"))


def test_unknown_env_id_gets_the_default_section():
    assert section_name("ppo", "CartPole-v1") == "default"
    assert section_name("ppo", None, per_sample=True) == "default/per-sample"
    assert load_hyperparams("ppo", "CartPole-v1") == load_hyperparams("ppo", "default")


def test_hyperparameter_strings_are_parsed_without_eval():
    parsed = parse_python_literal("dict(net_arch=dict(pi=[64, 64], vf=[32]), activation_fn=nn.ReLU, log_std_init=-1.0, ortho_init=False)")
    assert parsed == {"net_arch": {"pi": [64, 64], "vf": [32]}, "activation_fn": torch.nn.ReLU, "log_std_init": -1.0, "ortho_init": False}
    assert parse_python_literal("{'optimizer_class': th.optim.AdamW, 'x': (1, 'a', None)}") == {
        "optimizer_class": torch.optim.AdamW,
        "x": (1, "a", None),
    }
    for code in (
        "__import__('os').system('echo pwned')",
        "dict(a=open('/etc/passwd'))",
        "nn.Module",
        "dict(**{'a': 1})",
        "(lambda: 1)()",
        "[1] * 10",
        "dict(a=nn.Tanh.__subclasses__)",
    ):
        with pytest.raises(ValueError):
            parse_python_literal(code)


def test_schedules_and_overrides_follow_rl_zoo():
    params = load_hyperparams("ppo", "MultiTeacherKD-CIFAR100-v0")
    schedule = params["learning_rate"]  # lin_3e-4: linear from 3e-4 (progress_remaining 1) to 0
    assert schedule(1.0) == pytest.approx(3e-4) and schedule(0.5) == pytest.approx(1.5e-4) and schedule(0.0) == 0.0
    model = make_sb3_agent("ppo", gym.make(SYNTHETIC, **FAST), learning_rate="lin_1e-3", normalize=False, n_steps=8, batch_size=8)
    assert model.lr_schedule(1.0) == pytest.approx(1e-3)
    assert model.get_vec_normalize_env() is None and model.n_steps == 8
    assert model.device.type == "cpu"


def test_bad_arguments_raise_clear_errors():
    env = gym.make(SYNTHETIC, **FAST)
    with pytest.raises(ValueError, match="algo must be one of"):
        make_sb3_agent("dqn", env)
    with pytest.raises(ValueError, match="CPU"):
        make_sb3_agent("ppo", env, device="cuda")
    with pytest.raises(ValueError, match="off-policy"):
        make_sb3_agent("ppo", env, noise_type="normal", noise_std=0.1)
    with pytest.raises(ValueError, match="per-sample env"):
        make_sb3_agent("ppo", env, per_sample=True)
    with pytest.raises(ValueError, match="not allowed"):
        make_sb3_agent("ppo", env, policy_kwargs="dict(activation_fn=os.system)")


# ---------------------------------------------------------------------------------- training runs
# These check that ``learn`` runs each algorithm's updates through kd-env without a warning (the
# parameters move, episode statistics arrive); whether an algorithm *learns* is checked below, for PPO.
@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_updates_its_policy_on_the_batch_env_without_warnings(algo):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make_sb3_agent(algo, gym.make(SYNTHETIC, **FAST), seed=0)
        before = _parameters(model)
        model.learn(240)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert model.num_timesteps >= 240
    assert model._n_updates > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, _parameters(model)))
    # Monitor inside the DummyVecEnv: finished training runs reach SB3's episode statistics
    assert len(model.ep_info_buffer) >= 240 // 8 - 1
    assert isinstance(model.get_env(), VecNormalize)
    if algo in ("td3", "ddpg"):
        assert model.action_noise is not None


@pytest.mark.parametrize("algo", ["ppo", *OFF_POLICY])
def test_ppo_and_off_policy_algorithms_update_on_the_per_sample_env_through_the_adapter(algo):
    params = load_hyperparams(algo, SYNTHETIC, per_sample=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make_sb3_agent(algo, SYNTHETIC, per_sample=True, seed=0, env_kwargs=FAST)
        before = _parameters(model)
        # the shipped per-sample section: PPO two rollouts; an off-policy algorithm a few env
        # steps (n_envs transitions each) past learning_starts, across an episode end
        steps = 2 * model.n_steps * model.n_envs if algo == "ppo" else params["learning_starts"] + 8 * model.n_envs
        model.learn(steps)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert model.n_envs == params["n_envs"] == 32  # one slot per sample of the student's batch
    assert isinstance(model.get_env().unwrapped, SB3VecEnvAdapter)
    assert model.num_timesteps >= steps
    if algo == "ppo":  # exactly two rollouts, each trained on for n_epochs passes
        assert model.num_timesteps == steps and model._n_updates == 2 * model.n_epochs
    else:
        assert model._n_updates > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, _parameters(model)))
    if algo in OFF_POLICY:
        # one transition per sample slot and env step, all of them kept
        assert model.replay_buffer.size() * model.n_envs == model.num_timesteps
        assert model.replay_buffer.observations.shape[1:] == (32, *model.observation_space.shape)


def test_a_per_sample_env_instance_selects_the_per_sample_section():
    envs = gym.make_vec(SYNTHETIC, num_envs=8, vectorization_mode="vector_entry_point", **FAST)
    model = make_sb3_agent("a2c", envs, seed=0)
    assert model.n_envs == 8
    assert model.n_steps == load_hyperparams("a2c", SYNTHETIC, per_sample=True)["n_steps"]
    before = _parameters(model)
    model.learn(64)
    # 64 transitions are 64 / (n_steps * n_envs) = 2 rollouts of the 8 slots, one A2C update each
    assert model.num_timesteps == 64 and model._n_updates == 64 // (model.n_steps * model.n_envs) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, _parameters(model)))


@pytest.mark.slow
def test_same_seed_gives_the_same_ppo_parameters():
    def train(seed: int) -> list[torch.Tensor]:
        model = make_sb3_agent("ppo", gym.make(SYNTHETIC, **FAST), seed=seed)
        model.learn(48)
        return _parameters(model)

    first, again, other = train(3), train(3), train(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


# ---------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_save_load_round_trip_gives_the_same_deterministic_actions(algo, tmp_path: Path):
    overrides = {"learning_starts": 16} if algo in OFF_POLICY else {}  # train before saving
    model = make_sb3_agent(algo, gym.make(SYNTHETIC, **FAST), seed=1, **overrides)
    model.learn(48)
    raw_observations = _raw_observations(SYNTHETIC, 12, **FAST)
    expected = _deterministic_actions(model, raw_observations)

    path = save_sb3_agent(model, tmp_path / "agent" / "model")
    assert path == tmp_path / "agent" / "model.zip" and path.is_file()
    assert (path.parent / VEC_NORMALIZE_FILE).is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([VEC_NORMALIZE_FILE, "model.zip"])  # no temp files

    loaded = load_sb3_agent(algo, path, gym.make(SYNTHETIC, **FAST))
    assert type(loaded) is ALGORITHMS[algo]
    stats = loaded.get_vec_normalize_env()
    assert stats is not None and stats.training is False and stats.norm_reward is False
    np.testing.assert_array_equal(stats.obs_rms.mean, model.get_vec_normalize_env().obs_rms.mean)
    np.testing.assert_array_equal(_deterministic_actions(loaded, raw_observations), expected)


def test_saving_without_normalization_removes_stale_statistics(tmp_path: Path):
    normalized = make_sb3_agent("a2c", gym.make(SYNTHETIC, **FAST))
    save_sb3_agent(normalized, tmp_path / "model.zip")
    assert (tmp_path / VEC_NORMALIZE_FILE).is_file()
    plain = make_sb3_agent("a2c", gym.make(SYNTHETIC, **FAST), normalize=False)
    save_sb3_agent(plain, tmp_path / "model.zip")
    assert not (tmp_path / VEC_NORMALIZE_FILE).exists()
    loaded = load_sb3_agent("a2c", tmp_path / "model", gym.make(SYNTHETIC, **FAST))
    assert loaded.get_vec_normalize_env() is None
    with pytest.raises(FileNotFoundError):
        load_sb3_agent("a2c", tmp_path / "missing.zip", gym.make(SYNTHETIC, **FAST))


# ---------------------------------------------------------------------------------- PPO learns
# One trained teacher and two untrained (noise) teachers; feature KD off so the action is the
# three logit-KD weights. alpha=3 makes the KD term weigh enough that following a noise teacher
# visibly slows the student, and val_loss_delta rewards exactly that: over a training run,
# always trusting cnn_w16 earns about 2x the return of uniform weights, 4x that of a noise teacher.
LEARNING_ENV = {
    "teachers": ["cnn_w16", "random:cnn_w8:1", "random:cnn_w8:2"],
    "feature_kd": False,
    "alpha": 3.0,
    "reward_mode": "val_loss_delta",
    "epochs": 2,
    "max_steps_per_epoch": 8,
}
LEARNING_STEPS = 2000  # ~125 training runs of 16 updates; ~10-15 s on one core


def _mean_weights_over_an_episode(policy, env: VecEnv, seed: int = 123) -> np.ndarray:
    """Mean teacher weights (``info["weights"]``) of the deterministic policy over one fresh run."""
    env.seed(seed)
    observation = env.reset()
    weights = []
    while True:
        action, _ = policy.predict(observation, deterministic=True)
        observation, _, dones, infos = env.step(action)
        weights.append(infos[0]["weights"])
        if dones[0]:
            return np.mean(weights, axis=0)


FOLLOWS_THE_USEFUL_TEACHER = 0.6
"""The criterion: the deterministic policy's mean weight on the trained teacher (index 0) over one
run. Uniform weights put 1/3 there."""


class _ZeroPolicy:
    """All-zero actions = uniform weights: the criterion must reject it."""

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return np.zeros((len(observation), 3), dtype=np.float32), state


@pytest.mark.slow
def test_ppo_learns_to_follow_the_only_useful_teacher():
    # the Synthetic-v0 section of ppo.yml as it ships (gamma 0.5, 10 epochs per 16-step rollout);
    # no wall-clock bound: time belongs in benchmarks/, this machine's load varies 10x
    # the controls fail the criterion: the same PPO before it learns (the same seed gives the same
    # initial network), and uniform weights
    untrained = make_sb3_agent("ppo", gym.make(SYNTHETIC, **LEARNING_ENV), seed=0)
    before = _mean_weights_over_an_episode(untrained, make_sb3_eval_env(untrained, gym.make(SYNTHETIC, **LEARNING_ENV)))
    assert before[0] < FOLLOWS_THE_USEFUL_TEACHER, f"untrained PPO already put {before} on {LEARNING_ENV['teachers']}"
    uniform = _mean_weights_over_an_episode(_ZeroPolicy(), make_sb3_eval_env(untrained, gym.make(SYNTHETIC, **LEARNING_ENV)))
    np.testing.assert_allclose(uniform, 1 / 3, atol=1e-6)

    # a new model, so that its training starts from the seeded global RNG state, as without the controls
    model = make_sb3_agent("ppo", gym.make(SYNTHETIC, **LEARNING_ENV), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(_parameters(untrained), _parameters(model)))
    model.learn(LEARNING_STEPS)
    weights = _mean_weights_over_an_episode(model, make_sb3_eval_env(model, gym.make(SYNTHETIC, **LEARNING_ENV)))
    assert weights[0] > FOLLOWS_THE_USEFUL_TEACHER, f"PPO put {weights} on {LEARNING_ENV['teachers']} after {LEARNING_STEPS} steps"
