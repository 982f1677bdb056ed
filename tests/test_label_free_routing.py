"""Issue #23: routing without training labels, paid on the validation probe; the agreement
column; the routers' PPO update and MLP network; leave-one-pool-out pretraining."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_env
from kd_env.agents.mtkd_rl_pg import MTKDRLPG
from kd_env.agents.routing_networks import TeacherMLP, TeacherSlices, logistic_normal_log_prob
from kd_env.comparison import sweep
from kd_env.comparison.presets import Method, Preset, Pretrain
from kd_env.engine.losses import mixture_label_logprob
from kd_env.envs import KDEnvSettings, PerSampleKDVectorEnv
from kd_env.observations import BatchFeatureSpec, SampleStateSpec, teacher_agreement

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
BATCH = 16
PROBE = 8
LABEL_FREE: dict[str, Any] = {"labels": "none", "reward_mode": "val_label_logprob", "probe_rows": PROBE, "feature_kd": False}


def probe_env(**overrides: Any) -> Any:
    kwargs = {"num_envs": BATCH, "pool": "specialists", "action_mode": "raw", "epochs": 1, **LABEL_FREE, **overrides}
    return gym.make_vec(SYNTHETIC, vectorization_mode="vector_entry_point", **kwargs)


def uniform(rows: int, teachers: int) -> np.ndarray:
    return np.full((rows, teachers), 1.0 / teachers, dtype=np.float32)


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward_mode": "val_label_logprob"}, "go together"),
        ({"probe_rows": 8}, "go together"),
        ({"reward_mode": "val_label_logprob", "probe_rows": 8, "feature_kd": True}, "feature_kd=False"),
        ({"reward_mode": "val_label_logprob", "probe_rows": 8, "feature_kd": False, "val_fraction": 0.0}, "validation split"),
        ({"reward_mode": "val_label_logprob", "probe_rows": 8, "feature_kd": False, "protocol": "official"}, "no validation split"),
        ({"probe_rows": -1}, "probe_rows must be an integer >= 0"),
    ],
)
def test_probe_settings_refuse_what_cannot_run(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KDEnvSettings.from_kwargs(**kwargs)


def test_probe_reward_is_allowed_without_training_labels() -> None:
    settings = KDEnvSettings.from_kwargs(**LABEL_FREE)
    assert settings.labels == "none" and settings.probe_rows == PROBE


# ---------------------------------------------------------------------- the per-sample env
def test_probe_rows_follow_the_batch_and_are_marked() -> None:
    env = probe_env()
    kd = env.unwrapped
    assert (kd.batch_size, kd.probe_rows, kd.num_envs) == (BATCH, PROBE, BATCH + PROBE)
    assert env.observation_space.shape == (BATCH + PROBE, len(kd.feature_names))
    observation, _ = env.reset(seed=0)
    assert observation.shape == (BATCH + PROBE, len(kd.feature_names))
    observation, rewards, terminated, truncated, infos = env.step(uniform(BATCH + PROBE, kd.num_teachers))
    assert rewards.shape == terminated.shape == (BATCH + PROBE,)
    assert infos["probe"].tolist() == [False] * BATCH + [True] * PROBE
    assert np.isnan(infos["kd_loss"][BATCH:]).all() and np.isfinite(infos["kd_loss"][:BATCH]).all()
    assert infos["weights"].shape == (BATCH + PROBE, kd.num_teachers)


def test_probe_rewards_are_the_mixture_log_probability_of_the_validation_label() -> None:
    env = probe_env()
    kd = env.unwrapped
    env.reset(seed=0)
    probe = kd.rewards.probe
    indices = probe.indices.clone()
    weights = np.random.default_rng(0).dirichlet(np.ones(kd.num_teachers), BATCH + PROBE).astype(np.float32)
    _, rewards, *_ = env.step(weights)
    # by hand: the teachers' logits on those validation images, their labels, the mixture
    images = kd.engine.eval_transform(kd.engine.data.val_images[indices], train=False)
    with torch.inference_mode():
        logits = torch.stack([teacher(images) for teacher in kd.engine.teachers])
    labels = kd.engine.data.val_labels[indices]
    probabilities = torch.softmax(logits.double() / kd.engine.config.temperature, dim=-1)[:, torch.arange(PROBE), labels]  # [K, P]
    expected = torch.log((torch.from_numpy(weights[BATCH:]).double() * probabilities.T).sum(1)) / math.log(kd.engine.num_classes)
    np.testing.assert_allclose(rewards[BATCH:], expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewards[:BATCH], rewards[BATCH:].mean())  # the batch's rows: the probe's mean
    assert not torch.equal(probe.indices, indices)  # the next step has new probe images


def test_probe_actions_never_reach_the_student() -> None:
    """Two envs, the same seed and the same weights on the batch's rows, other weights on the
    probe's: the students stay equal to the bit, and equal to a run with another probe size."""
    students = []
    for probe_weights, probe_rows in ((0, PROBE), (1, PROBE), (0, 3)):
        env = probe_env(probe_rows=probe_rows)
        kd = env.unwrapped
        env.reset(seed=4)
        generator = np.random.default_rng(0)
        for _ in range(3):
            batch = generator.dirichlet(np.ones(kd.num_teachers), BATCH).astype(np.float32)
            probe = np.eye(kd.num_teachers, dtype=np.float32)[np.full(probe_rows, probe_weights)]
            env.step(np.concatenate([batch, probe]))
        students.append([parameter.detach().clone() for parameter in kd.engine.student.parameters()])
    for other in students[1:]:
        assert all(torch.equal(a, b) for a, b in zip(students[0], other))


def test_probe_is_reproducible_and_survives_a_checkpoint(tmp_path: Path) -> None:
    actions = uniform(BATCH + PROBE, 4)
    first, second = probe_env(), probe_env()
    for env in (first, second):
        env.reset(seed=7)
    rewards_first = [first.step(actions)[1] for _ in range(2)]
    rewards_second = [second.step(actions)[1] for _ in range(2)]
    np.testing.assert_array_equal(rewards_first, rewards_second)
    path = first.unwrapped.save(tmp_path / "env.pt")
    expected = [first.step(actions) for _ in range(2)]
    resumed = probe_env()
    resumed.reset(options={"checkpoint": path})
    for observation, rewards, *_ in expected:
        again, again_rewards, *_ = resumed.step(actions)
        np.testing.assert_array_equal(again, observation)
        np.testing.assert_array_equal(again_rewards, rewards)


def test_probe_states_are_built_like_training_states() -> None:
    """A probe row is the state a training sample with the same teacher outputs would have:
    the same columns, the teachers' logits of that validation image."""
    env = probe_env(state_parts=["performance", "agreement"], include_embeddings=False)
    kd = env.unwrapped
    observation, _ = env.reset(seed=0)
    indices = kd.rewards.probe.indices
    images = kd.engine.eval_transform(kd.engine.data.val_images[indices], train=False)
    with torch.inference_mode():
        logits = torch.stack([teacher(images) for teacher in kd.engine.teachers])
    agreement = teacher_agreement(logits)
    for k, name in enumerate(kd.teacher_names):
        columns = [kd.feature_names.index(f"{name}/logit{i}") for i in range(kd.engine.num_classes)]
        np.testing.assert_allclose(observation[BATCH:, columns], logits[k].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(observation[BATCH:, kd.feature_names.index(f"{name}/agreement")], agreement[:, k].numpy(), atol=1e-6)


def test_batch_env_pays_its_weight_vector_on_the_probe() -> None:
    env = gym.make(SYNTHETIC, pool="specialists", epochs=1, action_mode="simplex", **LABEL_FREE)
    kd: Any = env.unwrapped
    env.reset(seed=0)
    indices = kd.rewards.probe.indices.clone()
    action = np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32)
    _, reward, *_ = env.step(action)
    logits, _ = kd.rewards.probe._teacher_outputs()
    weights = torch.from_numpy(action).expand(PROBE, -1)
    labels = kd.engine.data.val_labels[indices]
    expected = mixture_label_logprob(weights, logits[:, indices], labels, kd.engine.config.temperature, math.log(kd.engine.num_classes))
    assert reward == pytest.approx(float(expected.mean()), rel=1e-6)


def test_label_logprob_formula_is_shared_and_unchanged() -> None:
    """``mixture_label_logprob`` against a written-out reference, an all-zero row at chance."""
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 1.0, 0.0]]])  # [K=2, B=1, C=3]
    weights = torch.tensor([[3.0, 1.0]])
    p0 = math.exp(2 / 4) / (math.exp(2 / 4) + 1 + math.exp(-1 / 4))
    p1 = 1 / (2 + math.exp(1 / 4))
    expected = math.log(0.75 * p0 + 0.25 * p1) / math.log(3)
    assert float(mixture_label_logprob(weights, logits, torch.tensor([0]), 4.0, math.log(3))) == pytest.approx(expected)
    chance = mixture_label_logprob(torch.zeros(1, 2), logits, torch.tensor([0]), 4.0, math.log(3))
    assert float(chance) == pytest.approx(-1.0)


# ---------------------------------------------------------------------- agreement
def test_agreement_is_the_other_teachers_probability_of_each_prediction() -> None:
    logits = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    probabilities = logits.softmax(-1)
    predicted = logits.argmax(-1)
    expected = torch.zeros(6, 3)
    for k in range(3):
        for b in range(6):
            expected[b, k] = sum(probabilities[j, b, predicted[k, b]] for j in range(3) if j != k) / 2
    torch.testing.assert_close(teacher_agreement(logits), expected)
    assert torch.equal(teacher_agreement(logits[:1]), torch.zeros(6, 1))


def test_agreement_is_opt_in_and_named() -> None:
    default = SampleStateSpec(("a", "b"), (4, 4), 10, False)
    assert not any(name.endswith("agreement") for name in default.names)
    spec = SampleStateSpec(
        ("a", "b"), (4, 4), 10, False, include_embeddings=False, logits=3, state_parts=("performance", "agreement"), label_free=True
    )
    assert spec.names == ["a/logit0", "a/logit1", "a/logit2", "a/agreement", "b/logit0", "b/logit1", "b/logit2", "b/agreement"]
    batch = BatchFeatureSpec(("a", "b"), 10, False, state_parts=("agreement",))
    assert batch.names[:2] == ["a/agreement", "b/agreement"]


# ---------------------------------------------------------------------- the agent
def test_router_explores_and_learns_on_the_probe_rows_only() -> None:
    env = probe_env()
    agent = MTKDRLPG(env, seed=0, network="mlp", n_steps=2)
    observation, _ = env.reset(seed=0)
    action = agent._collect_action(observation)
    batch = agent.weights(observation[:BATCH]).numpy()
    np.testing.assert_allclose(action[:BATCH], batch, rtol=1e-6)  # deterministic where nothing pays
    assert not np.allclose(action[BATCH:], agent.weights(observation[BATCH:]).numpy())  # sampled where paid
    assert agent._rollout_samples[0].shape == (PROBE, 4) and agent._rollout_inputs[0].shape[0] == PROBE
    _, rewards, terminated, truncated, _ = env.step(action)
    agent._collect_outcome(rewards, terminated, truncated, observation)
    np.testing.assert_array_equal(agent._rollout_rewards[0].numpy(), rewards[BATCH:].astype(np.float32))


def test_ppo_with_one_epoch_takes_reinforces_step() -> None:
    """At the parameters that collected the rollout the PPO ratio is 1 and its gradient is the
    policy gradient's: one PPO epoch is one REINFORCE step (to rounding)."""
    torch.manual_seed(0)
    agents = [MTKDRLPG(probe_env(), seed=3, network="mlp", update=update, ppo_epochs=1, n_steps=1) for update in ("reinforce", "ppo")]
    inputs = torch.randn(PROBE, 4, agents[0].slices.row_size)
    samples = torch.randn(1, PROBE, 4)
    rewards = torch.randn(1, PROBE)
    for agent in agents:
        agent._rollout_inputs, agent._rollout_samples = [inputs.clone()], [samples[0].clone()]
        agent._rollout_sigmas, agent._rollout_rewards = [0.5], [rewards[0].clone()]
        agent._update()
    for a, b in zip(agents[0].policy.parameters(), agents[1].policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ppo_loss_stops_pushing_a_ratio_past_the_clip() -> None:
    """The clipped surrogate's gradient: zero for a decision whose ratio left ``1 +- clip`` in
    the direction its advantage pushes, ``-rho A / N d log pi`` for the others."""
    agent = MTKDRLPG(probe_env(), seed=0, network="mlp", update="ppo", clip_range=0.2)
    samples = torch.tensor([1.0, 0.0]).expand(1, 4, 2)
    old_log_prob = logistic_normal_log_prob(samples, torch.zeros(1, 4, 2), 1.0)
    # the first teacher's mean moves toward (+) or away from (-) its sample u = 1: ratios far
    # above the clip, inside, far below, inside; advantages +, +, -, -
    shift = torch.tensor([0.6, 0.05, -0.6, -0.05])
    mean = (shift.view(1, 4, 1) * torch.tensor([1.0, 0.0])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss = agent.ppo_loss(mean, samples, torch.tensor(1.0), old_log_prob, advantages)
    loss.backward()
    assert mean.grad is not None
    gradient = mean.grad[0, :, 0]
    ratio = torch.exp(logistic_normal_log_prob(samples, mean.detach(), 1.0) - old_log_prob)[0]
    assert ratio[0] > 1.2 and gradient[0] == 0  # above the clip with A > 0: held
    assert ratio[2] < 0.8 and gradient[2] == 0  # below the clip with A < 0: held
    # inside: d/dmu of -rho A / N, with d rho / dmu = rho (u - mu) / sigma^2 = rho (1 - mu)
    for i in (1, 3):
        expected = -float(ratio[i] * advantages[0, i]) / 4 * (1 - float(shift[i]))
        assert float(gradient[i]) == pytest.approx(expected, rel=1e-5)


def test_mlp_network_scores_all_teachers_from_all_rows() -> None:
    network = TeacherMLP(num_teachers=3, row_size=5, hidden=8)
    rows = torch.randn(4, 3, 5)
    assert network(rows).shape == (4, 3)
    with torch.no_grad():
        network.head.weight.normal_()
        changed = rows.clone()
        changed[:, 2] += 1.0  # another teacher's row moves every teacher's score
        assert not torch.allclose(network(rows)[:, 0], network(changed)[:, 0])


def test_router_learns_to_route_from_the_probe_without_labels() -> None:
    """On the synthetic specialists without training labels, the MLP router paid on the probe
    ends with a higher probe reward on the whole validation split than uniform weights."""
    env = probe_env(epochs=2, probe_rows=32)
    kd = env.unwrapped
    agent = MTKDRLPG(env, seed=0, network="mlp", update="ppo", n_steps=1, normalize_advantage=True, learning_rate=3e-3)
    agent.learn(kd.engine.total_steps * kd.num_envs)
    probe = kd.rewards.probe
    probe.indices = torch.arange(int(kd.engine.data.val_labels.shape[0]))
    states = probe.states(kd.state_spec, kd.obs_clip)
    learned = float(probe.rewards(agent.weights(states), 1.0).mean())
    equal = float(probe.rewards(torch.full((states.shape[0], 4), 0.25), 1.0).mean())
    assert learned > equal + 0.05


# ---------------------------------------------------------------------- transfer
def test_scorer_transfers_to_a_pool_with_another_number_of_teachers(tmp_path: Path) -> None:
    state = {"state_parts": ["performance", "agreement"], "include_embeddings": False, "logits": 2}
    source = MTKDRLPG(probe_env(**state), seed=0, network="scorer")
    path = source.save(tmp_path / "scorer.pt")
    three = probe_env(pool=None, teachers=["mlp", "cnn_w8", "random:mlp"], **state)
    frozen = MTKDRLPG(three, seed=0, network="scorer", policy_path=str(path), learn=False)
    assert frozen.num_teachers == 3
    for a, b in zip(frozen.policy.parameters(), source.policy.parameters()):
        assert torch.equal(a, b)
    mlp = MTKDRLPG(probe_env(**state), seed=0, network="mlp").save(tmp_path / "mlp.pt")
    with pytest.raises(ValueError, match="another state layout"):
        MTKDRLPG(three, seed=0, network="mlp", policy_path=str(mlp))
    other_columns = probe_env(
        state_parts=["performance"], include_embeddings=False, logits=2, pool=None, teachers=["mlp", "cnn_w8", "random:mlp"]
    )
    with pytest.raises(ValueError, match="another state layout"):
        MTKDRLPG(other_columns, seed=0, network="scorer", policy_path=str(path))


def test_slices_read_the_agreement_column() -> None:
    names = ["a/logit0", "a/logit1", "a/agreement", "b/logit0", "b/logit1", "b/agreement"]
    slices = TeacherSlices(names, ["a", "b"])
    assert slices.scalars == ["agreement"] and slices.num_logits == 2
    assert slices.index.tolist() == [[2, 0, 1], [5, 3, 4]]


# ---------------------------------------------------------------------- leave one pool out
def _lopo_preset(scenarios: list[str | None]) -> Preset:
    method = Method(
        "held out",
        "router",
        per_sample=True,
        env_kwargs={"reward_mode": "val_label_logprob", "probe_rows": 4, "feature_kd": False},
        agent_kwargs={"network": "scorer"},
        pretrain=Pretrain(student_runs=1, seed=1000, leave_one_pool_out=True),
    )
    return Preset(env_id=SYNTHETIC, env_kwargs={"epochs": 1}, scenarios=scenarios, methods=[method], seeds=[0, 1])


def test_leave_one_pool_out_chains_the_other_pools_in_stages(tmp_path: Path) -> None:
    preset = _lopo_preset(["capacity", "noisy", "specialists"])
    stages = sweep.plan_pretraining_stages(preset, tmp_path)
    assert [len(stage) for stage in stages] == [3, 3]  # one chain per held-out pool, two pools each
    chains = {held: sweep.pretraining_chain(preset, preset.methods[0], held, None, tmp_path) for held in preset.scenarios}
    assert [run.scenario for run in chains["noisy"]] == ["capacity", "specialists"]
    for held, chain in chains.items():
        assert held not in [run.config.env_kwargs["pool"] for run in chain]
        assert "policy_path" not in chain[0].config.agent_kwargs
        assert chain[1].config.agent_kwargs["policy_path"] == str(chain[0].run_dir / "checkpoints" / "agent.pt")
        assert chain[1].config.agent_kwargs["learn"] is True
        assert chain[0].run_dir in {run.run_dir for run in stages[0]} and chain[1].run_dir in {run.run_dir for run in stages[1]}
    # the evaluation runs read the chain's last policy, frozen
    runs = sweep.plan(preset, tmp_path)
    noisy = [run for run in runs if run.scenario == "noisy"]
    assert {run.config.agent_kwargs["policy_path"] for run in noisy} == {str(chains["noisy"][-1].run_dir / "checkpoints" / "agent.pt")}
    assert all(run.config.agent_kwargs["learn"] is False for run in noisy)
    # the same pools in the same order for two held-out pools still give two chains (names differ)
    assert len({run.run_dir for stage in stages for run in stage}) == 6


def test_leave_one_pool_out_needs_two_scenarios(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least two scenarios"):
        sweep.plan(_lopo_preset(["specialists"]), tmp_path)


def test_experiment_files_take_the_per_sample_env_arguments(tmp_path: Path) -> None:
    from kd_env.comparison.spec import SpecError, load_spec

    good = tmp_path / "good.yaml"
    good.write_text(
        "env_id: MultiTeacherKD-Synthetic-v0\nenv_kwargs: {}\nscenarios: [specialists]\nseeds: [0]\nmethods:\n"
        "- {label: R, agent: router, per_sample: true, env_kwargs: {include_embeddings: false, logits: 3}}\n"
    )
    assert load_spec(good).methods[0].env_kwargs["logits"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "env_id: MultiTeacherKD-Synthetic-v0\nenv_kwargs: {}\nscenarios: [specialists]\nseeds: [0]\nmethods:\n"
        "- {label: A, agent: aver, env_kwargs: {include_embeddings: false}}\n"
    )
    with pytest.raises(SpecError, match="include_embeddings"):
        load_spec(bad)


def test_registered_envs_still_build_without_a_probe() -> None:
    env: Any = gym.make_vec(SYNTHETIC, vectorization_mode="vector_entry_point", num_envs=BATCH, epochs=1)
    assert env.unwrapped.num_envs == BATCH and env.unwrapped.probe_rows == 0
    assert isinstance(env.unwrapped, PerSampleKDVectorEnv)
    assert kd_env.ENV_IDS  # the package's registry is intact
