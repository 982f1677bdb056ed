"""The baseline policies driven through the environments: the weights they apply are the rules'."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.baselines import (
    AEKD,
    BASELINE_POLICIES,
    CAMKD,
    EBKD,
    BaselinePolicy,
    BestTeacher,
    NoKD,
    Oracle,
    RandomDirichlet,
    load_baseline,
    make_baseline,
    published_kd_scale,
    rules,
)
from kd_env.envs import PerSampleKDVectorEnv
from kd_env.envs.sb3_vec import SB3VecEnvAdapter

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
FAST = {"action_mode": "simplex", "epochs": 1, "max_steps_per_epoch": 3}
SLOTS = 8  # per-sample env batch size: small keeps the test fast
RANDOM_SEED = 7
# the weighting rules; the reference policies (oracle, no-kd) have tests of their own below
RULES = sorted(name for name, cls in BASELINE_POLICIES.items() if not cls.reference)


@pytest.fixture(scope="module")
def batch_env():
    env = gym.make(SYNTHETIC, **FAST)
    yield env
    env.close()


@pytest.fixture(scope="module")
def sample_env():
    env = PerSampleKDVectorEnv(num_envs=SLOTS, dataset="synthetic", **FAST)
    yield env
    env.close()


def _label_ce(batch) -> torch.Tensor:
    """``[B, K]``: each teacher's cross-entropy on the label, written out (not the engine's)."""
    log_probs = torch.log_softmax(batch.teacher_logits.double(), dim=-1)  # [K, B, C]
    return -log_probs[:, torch.arange(batch.labels.numel()), batch.labels].T.float()


def _rule_weights(name: str, engine, per_sample: bool = True) -> torch.Tensor:
    """The rule computed directly from the prepared batch, independently of the policy classes."""
    batch = engine.current
    k = engine.num_teachers
    if name in ("ce-softmax", "ce-route"):
        # per sample: a row each; on the batch env: the rule on the batch's mean CE per teacher
        ce = _label_ce(batch) if per_sample else _label_ce(batch).mean(0)
        if name == "ce-softmax":
            return torch.exp(-ce) / torch.exp(-ce).sum(-1, keepdim=True)
        return (ce == ce.min(-1, keepdim=True).values).float() / (ce == ce.min(-1, keepdim=True).values).float().sum(-1, keepdim=True)
    if name == "aver":
        return rules.aver_weights(k)
    if name == "ebkd":
        return rules.ebkd_weights(batch.teacher_logits)
    if name == "camkd":
        return rules.camkd_weights(batch.teacher_logits, batch.labels)
    if name == "aekd":
        return rules.aekd_weights(batch.teacher_logits, batch.student_logits.detach(), engine.config.temperature, cap=0.6)
    if name == "best":
        return rules.best_teacher_weights(engine.evaluate_teachers("val"))
    raise AssertionError(name)


def _expected_and_reference(name: str, engine, generator: torch.Generator | None, per_sample: bool = True) -> torch.Tensor:
    if name == "random":
        assert generator is not None
        return rules.random_dirichlet_weights(engine.num_teachers, generator)
    return _rule_weights(name, engine, per_sample)


@pytest.mark.parametrize("name", RULES)
def test_batch_env_applies_the_rule(batch_env, name):
    engine = batch_env.unwrapped.engine
    k = engine.num_teachers
    policy = make_baseline(name, batch_env, seed=RANDOM_SEED)
    reference_generator = torch.Generator().manual_seed(RANDOM_SEED) if name == "random" else None
    observation, _ = batch_env.reset(seed=1)
    steps = 0
    terminated = False
    while not terminated:
        expected = _expected_and_reference(name, engine, reference_generator, per_sample=False)
        if expected.dim() == 2:  # a per-sample rule on the batch env: averaged over the batch
            expected = expected.mean(0)
        action, state = policy.predict(observation, deterministic=True)
        assert state is None
        assert action.shape == (2 * k,) and action.dtype == np.float32
        observation, _, terminated, _, info = batch_env.step(action)
        np.testing.assert_allclose(info["weights"], expected.numpy(), atol=1e-6)
        # the feature head gets the logit head's weights
        np.testing.assert_allclose(info["feature_weights"], info["weights"], atol=1e-7)
        steps += 1
    assert steps == 3


@pytest.mark.parametrize("name", RULES)
def test_per_sample_env_applies_the_rule(sample_env, name):
    engine = sample_env.engine
    k = engine.num_teachers
    policy = make_baseline(name, sample_env, seed=RANDOM_SEED)
    reference_generator = torch.Generator().manual_seed(RANDOM_SEED) if name == "random" else None
    observation, _ = sample_env.reset(seed=2)
    saw_per_sample_difference = False
    for _ in range(3):
        expected = _expected_and_reference(name, engine, reference_generator).expand(SLOTS, k)
        action, _ = policy.predict(observation)
        assert action.shape == (SLOTS, 2 * k)
        observation, rewards, terminated, _, infos = sample_env.step(action)
        np.testing.assert_allclose(infos["weights"], expected.numpy(), atol=1e-6)
        np.testing.assert_allclose(infos["feature_weights"], infos["weights"], atol=1e-7)
        saw_per_sample_difference |= bool(np.ptp(infos["weights"], axis=0).max() > 1e-4)
    assert terminated.all()
    # per-sample rules really vary across the batch here; per-batch rules are broadcast
    assert saw_per_sample_difference == (name in ("ebkd", "camkd", "ce-softmax", "ce-route"))
    # the episode is over (no prepared batch): a valid action is still returned, and the
    # autoreset step that ignores it starts the next episode
    assert engine.current is None
    action, _ = policy.predict(observation)
    np.testing.assert_allclose(action, np.full((SLOTS, 2 * k), 1.0 / k), atol=1e-7)
    _, rewards, terminated, _, _ = sample_env.step(action)
    assert not terminated.any() and np.all(rewards == 0) and engine.current is not None


def test_random_per_sample_draws_one_point_per_sample(sample_env):
    policy = RandomDirichlet(sample_env, seed=3, per_sample=True)
    observation, _ = sample_env.reset(seed=0)
    expected = rules.random_dirichlet_weights(sample_env.num_teachers, torch.Generator().manual_seed(3), batch_size=SLOTS)
    action, _ = policy.predict(observation)
    _, _, _, _, infos = sample_env.step(action)
    np.testing.assert_allclose(infos["weights"], expected.numpy(), atol=1e-6)
    assert np.ptp(infos["weights"], axis=0).max() > 1e-3


def test_without_feature_kd_the_action_has_one_head():
    env = gym.make(SYNTHETIC, feature_kd=False, **FAST)
    policy = CAMKD(env)
    observation, _ = env.reset(seed=0)
    expected = rules.camkd_weights(env.unwrapped.engine.current.teacher_logits, env.unwrapped.engine.current.labels)
    action, _ = policy.predict(observation)
    assert action.shape == (env.unwrapped.num_teachers,)
    _, _, _, _, info = env.step(action)
    np.testing.assert_allclose(info["weights"], expected.mean(0).numpy(), atol=1e-6)
    assert "feature_weights" not in info


def _record_expected_weights(policy: BaselinePolicy, rule) -> list[np.ndarray]:
    """Wrap ``policy.predict`` so that each call first records ``rule()``: the weights the rule
    gives on the batch that the action is for (prepared before the step that trains on it)."""
    expected: list[np.ndarray] = []
    predict = policy.predict

    def recording_predict(observation, *args, **kwargs):
        expected.append(rule().numpy())
        return predict(observation, *args, **kwargs)

    policy.predict = recording_predict
    return expected


def test_sb3_evaluate_policy_on_the_batch_env():
    env = Monitor(gym.make(SYNTHETIC, **FAST))
    policy = CAMKD(env)  # built on the wrapped env; evaluate_policy adds a DummyVecEnv around it
    engine = env.unwrapped.engine
    k = env.unwrapped.num_teachers
    expected = _record_expected_weights(policy, lambda: rules.camkd_weights(engine.current.teacher_logits, engine.current.labels).mean(0))
    seen_actions: list[np.ndarray] = []
    step_rewards: list[float] = []

    def record(locals_, globals_):
        seen_actions.append(np.asarray(locals_["actions"]))
        step_rewards.append(float(locals_["rewards"][0]))
        # the applied weights are CA-MKD's on the batch the action was chosen for
        np.testing.assert_allclose(locals_["infos"][0]["weights"], expected[len(seen_actions) - 1], atol=1e-6)

    rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=2, return_episode_rewards=True, callback=record)
    assert lengths == [3, 3]
    assert len(expected) == 6 and all(np.isclose(weights.sum(), 1.0, atol=1e-6) for weights in expected)
    # the episode returns are the sums of the step rewards (Monitor rounds them to 6 decimals)
    np.testing.assert_allclose(rewards, [sum(step_rewards[:3]), sum(step_rewards[3:])], atol=1e-5)
    assert len(set(step_rewards)) == 6  # real, varying rewards, not a constant
    assert CAMKD(DummyVecEnv([lambda: env])).env is env.unwrapped  # SB3's one-copy VecEnv resolves too
    assert len(seen_actions) == 6 and all(action.shape == (1, 2 * k) for action in seen_actions)
    env.close()


def test_sb3_evaluate_policy_on_the_per_sample_adapter():
    inner = PerSampleKDVectorEnv(num_envs=SLOTS, dataset="synthetic", **FAST)
    venv = SB3VecEnvAdapter(inner)
    policy = make_baseline("ebkd", venv)
    expected = _record_expected_weights(policy, lambda: rules.ebkd_weights(inner.engine.current.teacher_logits))
    step_rewards: list[np.ndarray] = []

    def record(locals_, globals_):
        if locals_["i"] != 0:  # SB3 calls back once per slot and step: check the step's slots at the first
            return
        step_rewards.append(np.asarray(locals_["rewards"], dtype=np.float64).copy())
        infos = locals_["infos"]
        np.testing.assert_allclose(np.stack([info["weights"] for info in infos]), expected[len(step_rewards) - 1], atol=1e-6)

    rewards, lengths = evaluate_policy(policy, VecMonitor(venv), n_eval_episodes=SLOTS, return_episode_rewards=True, callback=record)
    assert lengths == [3] * SLOTS and len(expected) == 3
    assert all(np.ptp(weights, axis=0).max() > 1e-4 for weights in expected)  # per-sample weights, not one row
    # every slot's episode return is the sum of its step rewards (all slots end together, in slot order)
    np.testing.assert_allclose(rewards, np.sum(step_rewards, axis=0), atol=1e-5)
    venv.close()


def test_best_teacher_picks_the_best_validation_teacher():
    # a noise teacher first, so that "always teacher 0" would fail
    env = gym.make(SYNTHETIC, teachers=["random:cnn_w8:3", "cnn_w16"], **FAST)
    engine = env.unwrapped.engine
    val_accuracies = engine.evaluate_teachers("val")
    assert val_accuracies[1] > val_accuracies[0]
    policy = BestTeacher(env)
    assert policy.best_index == 1 and policy.best_name == env.unwrapped.teacher_names[1]
    assert policy.val_accuracies == pytest.approx(val_accuracies)
    observation, _ = env.reset(seed=0)
    action, _ = policy.predict(observation)
    np.testing.assert_array_equal(action, np.array([0, 1, 0, 1], dtype=np.float32))
    _, _, _, _, info = env.step(action)
    np.testing.assert_array_equal(info["weights"], np.array([0, 1], dtype=np.float32))
    env.close()


def test_random_dirichlet_is_seeded(batch_env):
    observation, _ = batch_env.reset(seed=0)

    def draws(policy: BaselinePolicy) -> list[np.ndarray]:
        return [policy.predict(observation)[0] for _ in range(3)]

    first = draws(RandomDirichlet(batch_env, seed=11))
    second = draws(make_baseline("random", batch_env, seed=11))
    other = draws(RandomDirichlet(batch_env, seed=12))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[0], first[1])  # a new point per step
    k = batch_env.unwrapped.num_teachers
    for action in first:
        np.testing.assert_allclose(action[:k].sum(), 1.0, atol=1e-6)
        np.testing.assert_array_equal(action[:k], action[k:])


def test_softmax_env_is_refused():
    env = gym.make(SYNTHETIC, epochs=1, max_steps_per_epoch=3)  # action_mode="softmax" by default
    for cls in BASELINE_POLICIES.values():
        with pytest.raises(ValueError, match=f'action_mode="{cls.action_mode}"'):
            cls(env)
    env.close()


def test_foreign_env_is_refused():
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="kd-env environment"):
        EBKD(env)
    env.close()


def test_wrong_observation_shape_is_refused(batch_env, sample_env):
    policy = EBKD(batch_env)
    observation, _ = batch_env.reset(seed=0)
    for bad in (observation[:-1], np.stack([observation, observation]), observation[None, None]):
        with pytest.raises(ValueError, match="observation has shape"):
            policy.predict(bad)
    sample_policy = EBKD(sample_env)
    sample_observation, _ = sample_env.reset(seed=0)
    with pytest.raises(ValueError, match="observation has shape"):
        sample_policy.predict(sample_observation[0])
    with pytest.raises(ValueError, match="observation has shape"):
        sample_policy.predict(observation)  # a batch-env observation given to a per-sample policy


def test_save_load_and_learn(batch_env, tmp_path):
    policy = AEKD(batch_env, cap=0.8)
    assert policy.learn(total_timesteps=1000) is policy
    path = policy.save(tmp_path / "aekd.pt")
    loaded = BaselinePolicy.load(path, env=batch_env)
    assert isinstance(loaded, AEKD) and loaded.cap == 0.8 and loaded.config == policy.config
    observation, _ = batch_env.reset(seed=0)
    np.testing.assert_array_equal(loaded.predict(observation)[0], policy.predict(observation)[0])
    assert isinstance(AEKD.load(path, batch_env), AEKD)
    with pytest.raises(ValueError, match="holds the 'aekd' baseline"):
        EBKD.load(path, batch_env)
    with pytest.raises(ValueError, match="pass env="):
        AEKD.load(path)

    random_policy = RandomDirichlet(batch_env, seed=5, concentration=0.5)
    first_draw = random_policy.predict(observation)[0]
    reloaded = load_baseline(random_policy.save(tmp_path / "random.pt"), batch_env)
    assert isinstance(reloaded, RandomDirichlet) and reloaded.seed == 5 and reloaded.concentration == 0.5
    np.testing.assert_array_equal(reloaded.predict(observation)[0], first_draw)  # restarts from the seed

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_baseline(tmp_path / "junk.pt", batch_env)


def test_published_kd_scale_and_registry(batch_env):
    assert published_kd_scale("camkd", 3) == pytest.approx(1 / 3)
    assert published_kd_scale("CA-MKD", 4) == pytest.approx(1 / 4)
    assert published_kd_scale("ebkd", 3) == pytest.approx(2 / 3)
    for name in ("aver", "aekd", "best", "random", "BestTeacher"):
        assert published_kd_scale(name, 3) == 1.0
    assert CAMKD(batch_env).kd_scale == pytest.approx(1 / batch_env.unwrapped.num_teachers)
    with pytest.raises(ValueError, match="unknown baseline"):
        published_kd_scale("mmkd", 3)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("mmkd", batch_env)
    assert isinstance(make_baseline("CA-MKD", batch_env), CAMKD)
    assert make_baseline("aekd", batch_env, seed=3, cap=0.9).cap == 0.9
    with pytest.raises(ValueError, match="cap"):
        AEKD(batch_env, cap=0.0)


# ------------------------------------------------------------------ reference policies


class LabelAwareTeacher(torch.nn.Module):
    """A teacher whose answers are set by construction: it looks the image up among the
    validation images (nearest neighbour, so it knows the true label) and answers confidently,
    right on the classes in ``right_on`` and wrong (the next class) on the others."""

    images: torch.Tensor  # buffers (register_buffer)
    labels: torch.Tensor

    def __init__(self, engine, right_on: set[int]) -> None:
        super().__init__()
        images = engine.eval_transform(engine.data.val_images, train=False)
        self.register_buffer("images", images.flatten(1).float())
        self.register_buffer("labels", engine.data.val_labels.clone())
        self.num_classes = engine.num_classes
        self.right_on = torch.tensor(sorted(right_on), dtype=torch.long)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = self.labels[torch.cdist(images.flatten(1).float(), self.images).argmin(dim=1)]
        right = torch.isin(labels, self.right_on)
        predicted = torch.where(right, labels, (labels + 1) % self.num_classes)
        return 10.0 * torch.nn.functional.one_hot(predicted, self.num_classes).float()


def _with_teachers(engine, right_on: list[set[int]]) -> None:
    engine.teachers = [LabelAwareTeacher(engine, classes) for classes in right_on]


def test_oracle_routes_each_sample_to_its_class_specialist():
    env = PerSampleKDVectorEnv(num_envs=SLOTS, dataset="synthetic", **FAST)
    engine = env.engine
    k, classes = engine.num_teachers, engine.num_classes
    # teacher j is right exactly on the classes c with c % K == j (every class has one specialist)
    _with_teachers(engine, [{c for c in range(classes) if c % k == j} for j in range(k)])
    policy = Oracle(env)
    expected_accuracy = torch.tensor([[float(c % k == j) for c in range(classes)] for j in range(k)], dtype=torch.float64)
    torch.testing.assert_close(policy.class_accuracy, expected_accuracy)
    observation, _ = env.reset(seed=0)
    for _ in range(2):
        labels = engine.current.labels
        expected = torch.nn.functional.one_hot(labels % k, k).float().numpy()
        assert len(set(labels.tolist())) > 1  # several classes in the batch: a real routing
        action, _ = policy.predict(observation)
        np.testing.assert_array_equal(action, np.concatenate([expected, expected], axis=1))
        observation, _, _, _, infos = env.step(action)
        np.testing.assert_allclose(infos["weights"], expected, atol=1e-7)
    env.close()


def test_oracle_trusts_the_one_good_teacher_over_confidently_wrong_ones():
    env = gym.make(SYNTHETIC, **FAST)
    engine = env.unwrapped.engine
    everything = set(range(engine.num_classes))
    _with_teachers(engine, [set(), everything, set()])  # teacher 1 always right, the others always wrong
    policy = Oracle(env)
    observation, _ = env.reset(seed=0)
    action, _ = policy.predict(observation)  # the batch env: the per-sample rows averaged
    np.testing.assert_array_equal(action, np.array([0, 1, 0, 0, 1, 0], dtype=np.float32))
    _, _, _, _, info = env.step(action)
    np.testing.assert_array_equal(info["weights"], np.array([0, 1, 0], dtype=np.float32))
    env.close()


class _Recording:
    """Stands in for the engine's dataset splits and records which attributes are read."""

    def __init__(self, data) -> None:
        self.__dict__["_data"] = data
        self.__dict__["read"] = set()

    def __getattr__(self, name: str):
        self.read.add(name)
        return getattr(self._data, name)


def test_oracle_measures_on_the_validation_split_only(batch_env):
    engine = batch_env.unwrapped.engine
    real = engine.data
    recorder = _Recording(real)
    engine.data = recorder
    try:
        policy = Oracle(batch_env, tolerance=0.05)
    finally:
        engine.data = real
    assert {"val_images", "val_labels"} <= recorder.read
    assert not any(name.startswith("test") for name in recorder.read), recorder.read
    # the accuracies are the teachers' own on the validation images, class by class
    images = engine.eval_transform(real.val_images, train=False)
    with torch.no_grad():
        predictions = torch.stack([teacher(images).argmax(1) for teacher in engine.teachers])
    for c in range(engine.num_classes):
        of_class = real.val_labels == c
        expected = (predictions[:, of_class] == c).double().mean(1)
        torch.testing.assert_close(policy.class_accuracy[:, c], expected)
    assert policy.config == {"tolerance": 0.05}


def test_oracle_rule_tolerance_ties_and_unseen_classes():
    accuracy = torch.tensor([[0.90, 0.50, float("nan")], [0.89, 0.90, float("nan")], [0.50, 0.87, float("nan")]])
    labels = torch.tensor([0, 1, 2])
    weights = rules.oracle_weights(accuracy, labels, tolerance=0.02)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])  # unseen class: uniform
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(rules.oracle_weights(accuracy, labels, tolerance=0.0)[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(rules.oracle_weights(accuracy, labels, tolerance=0.05)[1], torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="tolerance"):
        rules.oracle_weights(accuracy, labels, tolerance=-0.1)
    predictions = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])  # K=2 teachers, N=4 samples
    counted = rules.class_accuracies(predictions, torch.tensor([0, 1, 1, 0]), num_classes=3)
    torch.testing.assert_close(counted[:, :2], torch.tensor([[1.0, 1.0], [0.5, 0.5]], dtype=torch.float64))
    assert torch.isnan(counted[:, 2]).all()  # no sample of class 2


@pytest.mark.parametrize("per_sample", [False, True])
def test_no_kd_trains_on_cross_entropy_alone(per_sample):
    kwargs = {**FAST, "action_mode": "raw"}
    if per_sample:
        env = PerSampleKDVectorEnv(num_envs=SLOTS, dataset="synthetic", **kwargs)
    else:
        env = gym.make(SYNTHETIC, **kwargs)
    k = env.unwrapped.num_teachers
    policy = make_baseline("no-kd", env)
    assert isinstance(policy, NoKD) and policy.reference
    observation, _ = env.reset(seed=0)
    action, _ = policy.predict(observation)
    assert action.shape == ((SLOTS, 2 * k) if per_sample else (2 * k,))
    np.testing.assert_array_equal(action, np.zeros_like(action))
    _, _, _, _, info = env.step(action)
    # per-sample infos: "ce" per slot, "loss" the batch's in every slot; the batch loss is the mean CE
    info = {key: np.mean(value) if key in ("loss", "ce") else np.asarray(value) for key, value in info.items() if not key.startswith("_")}
    np.testing.assert_array_equal(info["weights"], 0.0)
    np.testing.assert_array_equal(info["feature_weights"], 0.0)
    assert np.all(info["kd_loss"] > 0)  # the teachers disagree with the student, yet nothing of it is trained on
    assert info["loss"] == pytest.approx(info["ce"], rel=1e-6)
    with pytest.raises(ValueError, match='action_mode="raw"'):
        NoKD(gym.make(SYNTHETIC, **FAST))  # simplex renormalisation would refuse the all-zero head
    env.close()


def test_ce_softmax_policy_keeps_its_tau_and_refuses_a_bad_one(batch_env, tmp_path):
    policy = make_baseline("CE-Softmax", batch_env, tau=0.25)
    path = policy.save(tmp_path / "ce.pt")
    loaded = load_baseline(path, batch_env)
    assert type(loaded).__name__ == "CESoftmax" and loaded.tau == 0.25 and loaded.needs_training_labels
    observation, _ = batch_env.reset(seed=3)
    ce = _label_ce(batch_env.unwrapped.engine.current).mean(0)
    action, _ = loaded.predict(observation)
    k = batch_env.unwrapped.engine.num_teachers
    np.testing.assert_allclose(action[:k], torch.softmax(-ce / 0.25, 0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="tau must be a finite number > 0, got 0"):
        make_baseline("ce-softmax", batch_env, tau=0)
