"""The Gymnasium environments: registration, the checkers, determinism, bad input, resume."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from kd_reference import reference_batch
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import kd_env
from kd_env.envs import ENV_IDS, MultiTeacherKDEnv, PerSampleKDVectorEnv, TeacherSetupError

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
FAST = {"epochs": 2, "max_steps_per_epoch": 4}


def _rollout(env, seed, steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    observation, info = env.reset(seed=seed)
    trace = [(observation, None, None, info)]
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        observation, reward, terminated, truncated, info = env.step(action)
        trace.append((observation, reward, terminated, info))
        if terminated or truncated:
            break
    return trace


def _assert_same_trace(first, second):
    assert len(first) == len(second)
    for (obs_a, rew_a, term_a, info_a), (obs_b, rew_b, term_b, info_b) in zip(first, second):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert rew_a == rew_b and term_a == term_b
        assert info_a.keys() == info_b.keys()
        for key in info_a:
            np.testing.assert_array_equal(info_a[key], info_b[key])


def test_import_registers_every_id():
    for env_id in ENV_IDS:
        assert env_id in gym.registry
    assert gym.registry["MultiTeacherKD-CIFAR100-v0"].vector_entry_point is not None


def test_module_prefixed_id_builds_without_import():
    env = gym.make("kd_env:MultiTeacherKD-Synthetic-v0", **FAST)
    assert isinstance(env.unwrapped, MultiTeacherKDEnv)
    env.close()


@pytest.mark.parametrize("kwargs", [{}, {"feature_kd": False}, {"action_mode": "simplex"}, {"reward_mode": "neg_loss"}])
def test_checkers_pass_without_warnings(kwargs):
    env = gym.make(SYNTHETIC, **FAST, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
        if kwargs.get("action_mode") != "simplex":
            sb3_check_env(env.unwrapped, warn=True)
    if kwargs.get("action_mode") == "simplex":
        # Box(0, 1) is meant for weighting rules, not SB3 agents; SB3 says so, and only that
        with pytest.warns(UserWarning, match="symmetric and normalized Box action space"):
            sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_spaces_names_and_types():
    env = gym.make(SYNTHETIC, **FAST).unwrapped
    k = env.num_teachers
    assert env.action_space.shape == (2 * k,)
    assert env.observation_space.dtype == np.float32
    assert np.isfinite(env.observation_space.low).all() and np.isfinite(env.observation_space.high).all()
    assert len(env.feature_names) == env.observation_space.shape[0]
    assert env.feature_names[-3:] == ["progress", "lr", "student_ce"]
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert info["weights"].shape == (k,) and info["weights"].sum() == pytest.approx(1.0, abs=1e-5)
    assert set(info) >= {"weights", "kd_loss", "ce", "epoch", "step", "lr", "diverged", "feature_weights"}
    no_feature_kd = gym.make(SYNTHETIC, feature_kd=False, **FAST).unwrapped
    assert no_feature_kd.action_space.shape == (k,)
    gap_only = gym.make(SYNTHETIC, state_parts=["gap"], **FAST).unwrapped
    assert all(name.split("/")[-1] in ("kd_loss", "feature_cosine") for name in gap_only.feature_names[:-3])


def test_softmax_mapping_and_simplex_mode():
    env = gym.make(SYNTHETIC, feature_kd=False, scale=2.0, **FAST).unwrapped
    env.reset(seed=0)
    action = np.array([1.0, -1.0, 0.0], dtype=np.float32)
    _, _, _, _, info = env.step(action)
    np.testing.assert_allclose(info["weights"], torch.softmax(torch.tensor(2.0 * action), 0).numpy(), rtol=1e-5)
    simplex = gym.make(SYNTHETIC, feature_kd=False, action_mode="simplex", **FAST).unwrapped
    simplex.reset(seed=0)
    _, _, _, _, info = simplex.step(np.array([2.0, 1.0, 1.0], dtype=np.float32) / 4 * 2)
    np.testing.assert_allclose(info["weights"], [0.5, 0.25, 0.25], rtol=1e-6)
    raw = gym.make(SYNTHETIC, feature_kd=False, action_mode="raw", **FAST).unwrapped
    raw.reset(seed=0)
    _, _, _, _, info = raw.step(np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(info["weights"], [1.0, 1.0, 1.0])  # applied as given, not renormalised


# one bad action per line, 2K = 6 entries (K = 3 synthetic teachers); the per-sample tests put it
# in one slot of an otherwise valid batch
BAD_ACTIONS = [
    ("softmax", [np.nan, 0, 0, 0, 0, 0], "NaN"),
    ("softmax", [np.inf, 0, 0, 0, 0, 0], "NaN or inf"),
    ("softmax", [0, 0, 0, 0, 0], "shape"),
    ("simplex", [np.nan, 0.5, 0.5, 0.2, 0.3, 0.5], "NaN"),
    ("simplex", [-0.1, 0.5, 0.6, 0.3, 0.3, 0.4], "negative"),
    ("simplex", [0, 0, 0, 1, 0, 0], "sum to zero"),  # the logit head
    ("simplex", [0.2, 0.3, 0.5, 0, 0, 0], "sum to zero"),  # the feature head
    ("simplex", [0.2, 0.3, 0.5, 0.1], "shape"),
    ("raw", [-1, 0, 0, 1, 0, 0], "negative"),
    ("raw", [1, 1, np.nan, 1, 1, 1], "NaN"),
    ("raw", [1, 1, 1, 1, 1, 1, 1], "shape"),
]


def _valid_action(mode, shape, seed=0):
    """An action every mode accepts: softmax logits in [-1, 1], or positive weights."""
    low = -1.0 if mode == "softmax" else 0.1
    return np.random.default_rng(seed).uniform(low, 1.0, shape).astype(np.float32)


def _training_state(env):
    """Student and adapter parameters and buffers, optimizer state, step counters, random streams."""
    engine = env.engine
    tensors = {f"student.{k}": v.clone() for k, v in engine.student.state_dict().items()}
    tensors.update({"data_generator": engine.generator.get_state(), "torch_rng": torch.get_rng_state()})
    tensors.update({f"adapters.{k}": v.clone() for k, v in engine.adapters.state_dict().items()})
    optimizer = engine.optimizer.state_dict()
    for index, state in optimizer["state"].items():  # momentum buffers
        tensors.update({f"optimizer.{index}.{k}": v.clone() for k, v in state.items()})
    counters = (engine.global_step, engine.step_in_epoch, engine.epoch, str(env.np_random.bit_generator.state))
    return tensors, optimizer["param_groups"], counters


def _assert_same_training_state(before, after):
    assert before[0].keys() == after[0].keys()
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), f"{key} changed"
    assert before[1] == after[1], "optimizer settings changed"
    assert before[2] == after[2], "step counters or the env's generator changed"


def _assert_same_step(first, second):
    """Two ``step`` returns (single or vector env): observation, reward, flags and info equal."""
    for name, a, b in zip(("observation", "reward", "terminated", "truncated"), first[:4], second[:4]):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert first[4].keys() == second[4].keys()
    for key in first[4]:
        np.testing.assert_array_equal(first[4][key], second[4][key], err_msg=f"info[{key!r}]")


@pytest.mark.parametrize("mode, action, message", BAD_ACTIONS)
def test_bad_actions_raise_and_change_nothing(mode, action, message):
    env = gym.make(SYNTHETIC, action_mode=mode, **FAST).unwrapped
    observation, _ = env.reset(seed=0)
    before = _training_state(env)
    with pytest.raises(ValueError, match=message):
        env.step(np.asarray(action, dtype=np.float32))
    _assert_same_training_state(before, _training_state(env))
    np.testing.assert_array_equal(env.last_observation, observation)
    # the data order and the random streams too: the next valid step is a fresh env's first
    fresh = gym.make(SYNTHETIC, action_mode=mode, **FAST).unwrapped
    fresh.reset(seed=0)
    valid = _valid_action(mode, env.action_space.shape)
    _assert_same_step(env.step(valid), fresh.step(valid))
    _assert_same_training_state(_training_state(env), _training_state(fresh))


def test_same_seed_same_rollout_and_budget_terminates():
    first = _rollout(gym.make(SYNTHETIC, **FAST), seed=3, steps=20)
    second = _rollout(gym.make(SYNTHETIC, **FAST), seed=3, steps=20)
    _assert_same_trace(first, second)
    assert len(first) == 9  # reset + 2 epochs x 4 updates
    assert first[-1][2] is True
    assert "val_acc" in first[4][3] and "test_acc" in first[4][3]
    final = first[-1][3]  # the run's reportable numbers come with the last step
    assert 0 <= final["final_test_acc"] <= 1 and final["best_val_acc"] == max(first[4][3]["val_acc"], final["val_acc"])
    assert "final_test_acc" not in first[4][3]
    other = _rollout(gym.make(SYNTHETIC, **FAST), seed=4, steps=3)
    assert not np.array_equal(first[1][0], other[1][0])


def test_steps_per_action_sums_updates():
    env = gym.make(SYNTHETIC, steps_per_action=2, **FAST).unwrapped
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["step"] == 2


def test_divergence_terminates_with_penalty():
    env = gym.make(SYNTHETIC, lr=1e6, **FAST).unwrapped
    env.reset(seed=0)
    info = {}
    for _ in range(8):
        _, reward, terminated, _, info = env.step(np.ones(env.action_space.shape, dtype=np.float32))
        if terminated:
            break
    assert info["diverged"] is True and terminated and reward == env.settings.divergence_penalty
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))


def test_pickle_and_idempotent_close():
    env = gym.make(SYNTHETIC, **FAST)
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    _assert_same_trace(_rollout(clone, 1, 3), _rollout(env.unwrapped, 1, 3))
    env.close()
    env.close()


def test_save_and_load_resume_mid_epoch(tmp_path):
    kwargs = {"epochs": 2, "max_steps_per_epoch": 5}
    action = np.linspace(-1, 1, 6).astype(np.float32)
    reference = gym.make(SYNTHETIC, **kwargs).unwrapped
    reference.reset(seed=11)
    uninterrupted = [reference.step(action) for _ in range(10)]

    first = gym.make(SYNTHETIC, **kwargs).unwrapped
    first.reset(seed=11)
    before = [first.step(action) for _ in range(7)]
    first.save(tmp_path / "env.pt")
    assert not list(tmp_path.glob("*.tmp"))
    resumed = gym.make(SYNTHETIC, **kwargs).unwrapped
    resumed.load(tmp_path / "env.pt")
    after = [resumed.step(action) for _ in range(3)]
    for (o1, r1, t1, _, i1), (o2, r2, t2, _, i2) in zip(uninterrupted, before + after):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2 and t1 == t2 and i1.get("test_acc") == i2.get("test_acc")
    assert uninterrupted[-1][4]["val_acc"] == after[-1][4]["val_acc"]


def test_load_refuses_other_envs_and_corrupt_files(tmp_path):
    env = gym.make(SYNTHETIC, **FAST).unwrapped
    env.reset(seed=0)
    path = env.save(tmp_path / "env.pt")
    with pytest.raises(ValueError, match="batch_size"):
        gym.make(SYNTHETIC, batch_size=16, **FAST).unwrapped.load(path)
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        env.load(tmp_path / "bad.pt")


def test_missing_data_and_missing_teachers_say_how_to_fix(tmp_path, monkeypatch):
    from kd_env.data import DatasetNotFoundError

    monkeypatch.setenv("KD_ENV_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError):
        gym.make("MultiTeacherKD-CIFAR100-v0", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(TeacherSetupError, match="kd-env teachers train"):
        gym.make(SYNTHETIC, teachers=["cnn_w16"], train_teachers=False, cache_dir=str(tmp_path / "cache"), **FAST)


def test_unknown_arguments_are_refused():
    with pytest.raises(TypeError, match="unknown environment argument"):
        gym.make(SYNTHETIC, epoch=3)
    with pytest.raises(ValueError, match="reward_mode"):
        gym.make(SYNTHETIC, reward_mode="accuracy")


# ---------------------------------------------------------------------- per-sample env
def _record_steps(monkeypatch, engine):
    """Keep every StepResult of ``engine`` (its per-sample losses are not in the env's infos)."""
    results = []
    step = engine.step

    def recording_step(*args, **kwargs):
        results.append(step(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(engine, "step", recording_step)
    return results


def test_per_sample_env_via_make_vec(monkeypatch):
    loss = {"alpha": 0.7, "beta": 2.0, "kd_scale": 0.5, "temperature": 3.0}
    envs = gym.make_vec(SYNTHETIC, num_envs=16, vectorization_mode="vector_entry_point", action_mode="simplex", **loss, **FAST)
    assert isinstance(envs, PerSampleKDVectorEnv) and envs.num_envs == 16
    observations, _ = envs.reset(seed=0)
    assert observations.shape == (16, envs.single_observation_space.shape[0])
    assert envs.observation_space.contains(observations)
    k, slots = envs.num_teachers, np.arange(16)
    # each slot learns from one teacher per head, and its neighbours from others: logits from
    # teacher i % K, features from teacher (i + 1) % K
    logit_teacher, feature_teacher = slots % k, (slots + 1) % k
    actions = np.zeros((16, 2 * k), dtype=np.float32)
    actions[slots, logit_teacher] = 1.0
    actions[slots, k + feature_teacher] = 1.0
    reference = reference_batch(envs.engine, loss["temperature"])
    assert reference.feature_mse is not None
    # each sample's loss, from its own teachers alone (recomputed from the networks)
    expected = (
        reference.student_ce
        + loss["alpha"] * loss["kd_scale"] * reference.kl[slots, logit_teacher]
        + loss["beta"] * reference.feature_mse[slots, feature_teacher]
    ).numpy()
    results = _record_steps(monkeypatch, envs.engine)
    observations, rewards, terminations, truncations, infos = envs.step(actions)
    # float16 teacher maps in the store: ~1e-4 from a float32 recomputation
    np.testing.assert_allclose(results[0].per_sample_loss.numpy(), expected, rtol=1e-3, atol=5e-4)
    assert infos["loss"][0] == pytest.approx(expected.mean(), rel=1e-3)
    np.testing.assert_array_equal(infos["weights"], actions[:, :k])
    np.testing.assert_array_equal(infos["feature_weights"], actions[:, k:])
    np.testing.assert_allclose(infos["kd_loss"], reference.kl.numpy(), rtol=1e-3, atol=5e-4)
    assert infos["_weights"].all() and rewards.shape == (16,) and terminations.dtype == bool
    # MTKD-RL's reward: each sample's negative loss, z-scored in the batch (torch's std), clipped
    normalised = (expected.mean() - expected) / (expected.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(rewards, np.clip(normalised, 0.0, 1.0), atol=1e-3)
    envs.close()
    envs.close()


def test_per_sample_raw_all_zero_rows_train_on_the_label_alone(monkeypatch):
    """Raw mode applies weights as given: a zero row is no teacher (CE alone), not an error."""
    envs = PerSampleKDVectorEnv(num_envs=8, dataset="synthetic", action_mode="raw", **FAST)
    envs.reset(seed=1)
    actions = _valid_action("raw", envs.action_space.shape)
    actions[[2, 5]] = 0.0
    reference = reference_batch(envs.engine, 4.0)
    results = _record_steps(monkeypatch, envs.engine)
    envs.step(actions)
    loss = results[0].per_sample_loss.numpy()
    np.testing.assert_allclose(loss[[2, 5]], reference.student_ce[[2, 5]].numpy(), rtol=1e-5)
    assert (loss[[0, 1, 3, 4, 6, 7]] > reference.student_ce[[0, 1, 3, 4, 6, 7]].numpy()).all()


def test_per_sample_state_layout_options():
    full = PerSampleKDVectorEnv(dataset="synthetic", **FAST)
    small = PerSampleKDVectorEnv(dataset="synthetic", include_embeddings=False, logits=2, **FAST)
    k, classes = full.num_teachers, full.engine.num_classes
    embeddings = sum(shape[0] for shape in full.engine.teacher_shapes)
    assert full.single_observation_space.shape[0] == k * (3 + classes) + embeddings
    assert small.single_observation_space.shape[0] == k * (3 + 2)
    assert small.feature_names[:5] == ["mlp/feature_cosine", "mlp/kd_loss", "mlp/teacher_ce", "mlp/logit0", "mlp/logit1"]


def test_per_sample_determinism_and_autoreset():
    def run(seed):
        envs = PerSampleKDVectorEnv(dataset="synthetic", epochs=1, max_steps_per_epoch=2)
        observations, _ = envs.reset(seed=seed)
        trace = [observations]
        for step in range(3):
            actions = np.full(envs.action_space.shape, 0.1 * step, dtype=np.float32)
            observations, rewards, terminations, _, _ = envs.step(actions)
            trace += [observations, rewards, terminations]
        return envs, trace

    envs, first = run(5)
    _, second = run(5)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert first[6].all()  # the budget (2 updates) ends the episode on the second step
    assert not first[9].any() and (first[8] == 0).all()  # the next step only resets


@pytest.mark.parametrize("mode, action, message", BAD_ACTIONS + [("softmax", None, "shape")])
def test_per_sample_bad_actions_raise_and_change_nothing(mode, action, message):
    """One bad slot spoils the batch: nothing trains, and the next valid step is a fresh env's first."""

    def build():
        envs = PerSampleKDVectorEnv(num_envs=8, dataset="synthetic", action_mode=mode, **FAST)
        return envs, envs.reset(seed=0)[0]

    envs, observation = build()
    if action is None:  # one slot too few
        actions = _valid_action(mode, (7, 6))
    elif len(action) == 6:
        actions = _valid_action(mode, envs.action_space.shape)
        actions[3] = action
    else:  # a wrong row length
        actions = np.tile(np.asarray(action, dtype=np.float32), (8, 1))
    before = _training_state(envs)
    with pytest.raises(ValueError, match=message):
        envs.step(actions)
    _assert_same_training_state(before, _training_state(envs))
    np.testing.assert_array_equal(envs.last_observation, observation)
    fresh, _ = build()
    valid = _valid_action(mode, envs.action_space.shape)
    _assert_same_step(envs.step(valid), fresh.step(valid))
    _assert_same_training_state(_training_state(envs), _training_state(fresh))


def test_per_sample_save_load(tmp_path):
    kwargs = {"num_envs": 16, "dataset": "synthetic", "epochs": 2, "max_steps_per_epoch": 3}
    rng = np.random.default_rng(7)  # different weights for every slot and step
    actions = [rng.uniform(-1, 1, (16, 6)).astype(np.float32) for _ in range(6)]
    reference = PerSampleKDVectorEnv(**kwargs)
    reference.reset(seed=2)
    expected = [reference.step(action) for action in actions]
    first = PerSampleKDVectorEnv(**kwargs)
    first.reset(seed=2)
    got = [first.step(action) for action in actions[:2]]
    first.save(tmp_path / "vec.pt")
    resumed = PerSampleKDVectorEnv(**kwargs)
    observation, _ = resumed.reset(options={"checkpoint": tmp_path / "vec.pt"})
    np.testing.assert_array_equal(observation, got[-1][0])
    got += [resumed.step(action) for action in actions[2:]]  # across the epoch end to the last update
    for step, (a, b) in enumerate(zip(expected, got)):
        _assert_same_step(a, b)
        assert b[2].all() == (step == 5)
    assert "val_acc" in got[2][4] and "final_test_acc" in got[5][4]
    _assert_same_training_state(_training_state(reference), _training_state(resumed))


def test_sb3_adapter_is_a_working_vecenv():
    from stable_baselines3.common.vec_env import VecEnv

    venv = kd_env.make_sb3_per_sample_env(SYNTHETIC, num_envs=8, epochs=1, max_steps_per_epoch=2)
    assert isinstance(venv, VecEnv) and venv.num_envs == 8
    venv.seed(0)
    observations = venv.reset()
    assert observations.shape == (8, venv.observation_space.shape[0])
    observations, rewards, dones, infos = venv.step(np.zeros((8, venv.action_space.shape[0]), dtype=np.float32))
    assert not dones.any() and len(infos) == 8 and rewards.dtype == np.float32
    observations, rewards, dones, infos = venv.step(np.zeros((8, venv.action_space.shape[0]), dtype=np.float32))
    assert dones.all() and "terminal_observation" in infos[0]
    assert venv.get_attr("teacher_names")[0] == ["mlp", "cnn_w8", "cnn_w16"]
    venv.close()


@pytest.mark.slow  # 30 s or more on a loaded 2-core machine
def test_fashion_mnist_env_passes_the_checkers_and_repeats():
    """The real-data env (Fashion-MNIST from the Debian package, which `make test` installs).

    Untrained teachers keep the test fast; the data path, the spaces and the determinism
    checks are those of the default env.
    """
    kwargs = {"teachers": ["random:mlp", "random:cnn_w8"], "epochs": 1, "max_steps_per_epoch": 3}
    env = gym.make("MultiTeacherKD-FashionMNIST-v0", **kwargs)
    assert env.unwrapped.engine.data.train_images.shape[1:] == (1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)
    first = _rollout(env, seed=1, steps=5)
    second = _rollout(env, seed=1, steps=5)
    _assert_same_trace(first, second)
    assert first[-1][2] is True and "final_test_acc" in first[-1][3]
