"""Issue #10: agents that learn the per-sample routing, the label-aware reward, and transfer.

The synthetic ``specialists`` pool has four classes and four teachers, teacher ``k`` trained
on class ``k`` only (right there, confidently wrong elsewhere), so the correct teacher of a
sample is the index of its label. Its tiny teachers train on first use, in seconds.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.agents.mtkd_rl_pg import MTKDRL_PG_DEFAULTS, MTKDRLPG, TeacherScorer, TeacherSlices, logistic_normal_log_prob

BATCH = 32
LEARN_STEPS = 160  # env steps (student updates) of learning before the routing is checked


def specialists_env(**overrides):
    kwargs = {
        "num_envs": BATCH,
        "pool": "specialists",
        "reward_mode": "label_logprob",
        "action_mode": "raw",
        "epochs": 2,
        **overrides,
    }
    return gym.make_vec("MultiTeacherKD-Synthetic-v0", vectorization_mode="vector_entry_point", **kwargs)


def correct_weight(weights: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean weight on each sample's own specialist (teacher index = label)."""
    return float(weights[torch.arange(labels.shape[0]), labels].mean())


def routing_score(agent: MTKDRLPG, env, steps: int) -> float:
    """Mean weight the agent's deterministic policy puts on the right specialist over ``steps``
    prepared batches, stepping the env with those weights."""
    kd = env.unwrapped
    observation, _ = env.reset(seed=123)
    scores = []
    for _ in range(steps):
        weights = agent.weights(observation)
        scores.append(correct_weight(weights, kd.engine.current.labels))
        observation, *_ = env.step(np.tile(weights.numpy(), (1, kd.heads)))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def trained_router(tmp_path_factory):
    """The scorer agent after LEARN_STEPS updates on the synthetic specialists, saved to a file."""
    env = specialists_env()
    agent = MTKDRLPG(env, seed=0, network="scorer")
    agent.learn(LEARN_STEPS * BATCH)
    path = tmp_path_factory.mktemp("router") / "router.pt"
    agent.save(path)
    return agent, path


def test_specialist_pool_maps_labels_to_teachers():
    env = specialists_env()
    names = env.unwrapped.teacher_names
    assert [name.split("-")[1] for name in names] == ["c0", "c1", "c2", "c3"]


def test_scorer_learns_the_routing_and_uniform_does_not(trained_router):
    agent, _ = trained_router
    env = specialists_env()
    assert routing_score(agent, env, 10) >= 0.8
    # the same check for uniform weights: 1/K on the right teacher
    observation, _ = env.reset(seed=123)
    uniform = torch.full((BATCH, env.unwrapped.num_teachers), 1.0 / env.unwrapped.num_teachers)
    assert correct_weight(uniform, env.unwrapped.engine.current.labels) < 0.8


def test_mtkd_network_with_priors_learns_the_routing():
    env = specialists_env()
    agent = MTKDRLPG(env, seed=0, **MTKDRL_PG_DEFAULTS)  # as registered (mtkd-rl-pg)
    before = routing_score(agent, specialists_env(), 3)
    agent.learn(LEARN_STEPS * BATCH)
    after = routing_score(agent, specialists_env(), 10)
    assert after >= 0.8 > before
    # the learned mix moved toward the agent's head, away from the priors
    mix = torch.softmax(agent.policy.logit_mix.detach(), dim=0)
    assert mix[0] > 0.5


def test_frozen_policy_transfers_to_a_new_seed_and_student(trained_router):
    _, path = trained_router
    for student in ("cnn_w8", "mlp"):
        env = specialists_env(student=student)
        frozen = MTKDRLPG(env, seed=7, network="scorer", learn=False, policy_path=str(path))
        before = {name: value.clone() for name, value in frozen.policy.state_dict().items()}
        statistics = frozen.obs_stats.state_dict()
        kd = env.unwrapped
        scores: list[float] = []

        def record(step_record, kd=kd, frozen=frozen, scores=scores) -> None:  # bound now, called now
            if kd.engine.current is not None and kd.last_observation is not None:
                scores.append(correct_weight(frozen.weights(kd.last_observation), kd.engine.current.labels))
            # frozen means deterministic: the applied weights are w(s) itself, rows on the simplex
            applied = step_record["info"]["weights"]
            assert np.allclose(applied.sum(axis=1), 1.0, atol=1e-5)

        frozen.learn(20 * BATCH, callback=record)
        assert np.mean(scores) >= 0.8
        assert frozen.num_updates == 0
        for name, value in frozen.policy.state_dict().items():
            assert torch.equal(value, before[name]), name
        assert torch.equal(frozen.obs_stats.mean, statistics["mean"])


def test_frozen_actions_are_the_deterministic_weights(trained_router):
    _, path = trained_router
    env = specialists_env()
    frozen = MTKDRLPG(env, seed=3, learn=False, policy_path=str(path))
    observation, _ = env.reset(seed=5)
    action = frozen._collect_action(observation)
    expected = frozen.predict(observation, deterministic=True)[0]
    np.testing.assert_array_equal(action, expected)


def test_policy_path_must_fit_the_state_layout(trained_router, tmp_path):
    _, path = trained_router
    other = specialists_env(feature_kd=False)  # no cosine columns: another layout
    with pytest.raises(ValueError, match="state layout"):
        MTKDRLPG(other, policy_path=str(path))


# ------------------------------------------------------------------------------------------------
# the policy-gradient update of the MTKD-RL network against a hand-computed REINFORCE step
# ------------------------------------------------------------------------------------------------

TEACHERS = ("a", "b")
CLASSES = 3


def tiny_layout() -> dict:
    names = []
    for teacher in TEACHERS:
        names += [f"{teacher}/kd_loss", f"{teacher}/teacher_ce"] + [f"{teacher}/logit{i}" for i in range(CLASSES)]
    return {"state_dim": len(names), "num_teachers": 2, "heads": 1, "teacher_names": list(TEACHERS), "feature_names": names}


def tiny_agent(**overrides) -> MTKDRLPG:
    layout = tiny_layout()
    kwargs = {
        "network": "mtkd",
        "hidden": 3,
        "normalize_observations": False,
        "max_grad_norm": None,
        "normalize_advantage": True,  # the hand computation below z-scores the advantages
        "state_layout": layout,
        "observation_space": spaces.Box(-100, 100, (layout["state_dim"],), dtype=np.float32),
        "action_space": spaces.Box(0, 1, (2,), dtype=np.float32),
        **overrides,
    }
    return MTKDRLPG(None, seed=4, **kwargs)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_reinforce(agent: MTKDRLPG, states, samples, sigma, rewards):
    """REINFORCE on the MTKD-RL network, worked out with numpy: loss, log-probs, advantages and
    the gradient of the loss w.r.t. the mix logits (chain rule written out)."""
    p = {name: value.detach().double().numpy() for name, value in agent.policy.named_parameters()}
    hidden = np.maximum(states @ p["stem.0.weight"].T, 0.0)
    head = softmax(hidden @ p["logit_head.weight"].T + p["logit_head.bias"])
    ce, kl = states[:, [1, 6]], states[:, [0, 5]]
    confidence = (1.0 - softmax(ce)) / (len(TEACHERS) - 1)
    gap = softmax(kl)
    sources = np.stack([head, confidence, gap])  # [3, B, K]
    mix = softmax(p["logit_mix"])
    weights = np.tensordot(mix, sources, axes=1)  # [B, K]
    mean = np.log(weights)
    log_prob = (-((samples - mean) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
    centred = rewards - rewards.mean()
    advantages = centred / (centred.std(ddof=1) + 1e-8)
    loss = -(log_prob * advantages).mean()
    # dL/dmean = -(1/B) A (u - m) / sigma^2; dmean/dw = 1/w; dw/dmix_s = source_s; softmax's Jacobian
    d_mean = -(advantages[:, None] * (samples - mean) / sigma**2) / len(rewards)
    d_weights = d_mean / weights
    d_mix = np.einsum("bk,sbk->s", d_weights, sources)
    d_logits = mix * (d_mix - (mix * d_mix).sum())
    return loss, log_prob, advantages, d_logits


def tiny_batch():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(4, len(tiny_layout()["feature_names"])))
    states[:, [1, 6]] = np.abs(states[:, [1, 6]]) * 2  # CE >= 0
    states[:, [0, 5]] = np.abs(states[:, [0, 5]])  # KL >= 0
    samples = rng.normal(size=(4, 2))
    rewards = np.array([-1.0, -0.2, -0.7, -0.1])
    return states, samples, rewards


def test_log_prob_matches_the_gaussian_formula():
    u, mean = torch.tensor([[0.3, -1.2]]), torch.tensor([[0.1, -0.4]])
    expected = sum(-((a - b) ** 2) / (2 * 0.5**2) - math.log(0.5) - 0.5 * math.log(2 * math.pi) for a, b in ((0.3, 0.1), (-1.2, -0.4)))
    assert float(logistic_normal_log_prob(u, mean, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_policy_gradient_loss_and_mix_gradient_match_the_hand_computation():
    agent = tiny_agent()
    states, samples, rewards = tiny_batch()
    sigma = 0.7
    mean = agent.mean_log_weights(torch.tensor(states, dtype=torch.float32))
    loss, advantages = agent.policy_loss(
        mean[None],
        torch.tensor(samples[None], dtype=torch.float32),
        torch.tensor([sigma]),
        torch.tensor(rewards[None], dtype=torch.float32),
    )
    hand_loss, hand_log_prob, hand_advantages, hand_d_mix = hand_reinforce(agent, states, samples, sigma, rewards)
    assert float(loss.detach()) == pytest.approx(hand_loss, rel=1e-4)
    np.testing.assert_allclose(advantages[0].numpy(), hand_advantages, rtol=1e-5)
    log_prob = logistic_normal_log_prob(torch.tensor(samples, dtype=torch.float32), mean, sigma)
    np.testing.assert_allclose(log_prob.detach().numpy(), hand_log_prob, rtol=1e-4)
    loss.backward()
    np.testing.assert_allclose(agent.policy.logit_mix.grad.numpy(), hand_d_mix, rtol=1e-3, atol=1e-7)


def test_update_takes_one_adam_step_on_that_loss():
    agent = tiny_agent(n_steps=1, mix_learning_rate=0.05)
    states, samples, rewards = tiny_batch()
    sigma = agent.sigma()
    *_, hand_d_mix = hand_reinforce(agent, states, samples, sigma, rewards)
    mix_before = agent.policy.logit_mix.detach().clone()
    raw = torch.tensor(states, dtype=torch.float32)
    agent._rollout_inputs, agent._rollout_raw = [agent._inputs(raw)], [raw]
    agent._rollout_samples = [torch.tensor(samples, dtype=torch.float32)]
    agent._rollout_sigmas = [sigma]
    agent._rollout_rewards = [torch.tensor(rewards, dtype=torch.float32)]
    agent._update()
    # Adam's first step moves each coordinate by lr * g / (|g| + eps): lr * sign(g) here
    step = (agent.policy.logit_mix.detach() - mix_before).numpy()
    np.testing.assert_allclose(step, -0.05 * np.sign(hand_d_mix), rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# the label-aware reward and the scorer's symmetry
# ------------------------------------------------------------------------------------------------


def test_label_logprob_reward_is_the_mixture_probability_of_the_label():
    env = specialists_env(num_envs=8)
    kd = env.unwrapped
    env.reset(seed=0)
    batch = kd.engine.current
    weights = np.random.default_rng(1).dirichlet(np.ones(4), size=8).astype(np.float32)
    temperature = kd.engine.config.temperature
    probs = torch.softmax(batch.teacher_logits.double() / temperature, dim=-1).numpy()  # [K, B, C]
    labels = batch.labels.numpy()
    label_probs = probs[:, np.arange(8), labels].T  # [B, K]
    expected = np.log((weights.astype(np.float64) * label_probs).sum(1)) / math.log(kd.engine.num_classes)
    _, rewards, *_ = env.step(np.tile(weights, (1, kd.heads)))
    np.testing.assert_allclose(rewards, expected, rtol=1e-4, atol=1e-6)
    # on this pool the right specialist pays more than any other teacher
    right = np.eye(4, dtype=np.float32)[kd.engine.current.labels.numpy()]
    wrong = np.roll(right, 1, axis=1)
    _, right_rewards, *_ = env.step(np.tile(right, (1, kd.heads)))
    env.reset(seed=0)
    env.step(np.tile(weights, (1, kd.heads)))
    _, wrong_rewards, *_ = env.step(np.tile(wrong, (1, kd.heads)))
    assert np.all(right_rewards > wrong_rewards)


def test_scorer_is_teacher_permutation_equivariant():
    env = specialists_env()
    kd = env.unwrapped
    slices = TeacherSlices(kd.feature_names, kd.teacher_names)
    observation, _ = env.reset(seed=0)
    torch.manual_seed(0)
    scorer = TeacherScorer(slices.row_size)
    rows = slices.rows(torch.as_tensor(observation))
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        np.testing.assert_allclose(scorer(rows[:, order]).numpy(), scorer(rows)[:, order].numpy(), rtol=1e-5, atol=1e-6)


def test_label_logprob_batch_reward_is_the_batch_mean():
    env = gym.make("MultiTeacherKD-Synthetic-v0", pool="specialists", reward_mode="label_logprob", action_mode="simplex", batch_size=8)
    kd = env.unwrapped
    env.reset(seed=0)
    batch = kd.engine.current
    weights = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    probs = torch.softmax(batch.teacher_logits.double() / kd.engine.config.temperature, dim=-1).numpy()
    label_probs = probs[:, np.arange(8), batch.labels.numpy()].T
    expected = np.mean(np.log(label_probs @ weights.astype(np.float64)) / math.log(kd.engine.num_classes))
    _, reward, *_ = env.step(np.tile(weights, kd.heads))
    assert reward == pytest.approx(expected, rel=1e-4)


def test_runner_trains_saves_and_evaluates_a_frozen_router(tmp_path):
    """The transfer protocol through the runner: train over several student runs, save, then
    evaluate the saved policy frozen on a new seed and another student (agent kwargs
    ``policy_path`` + ``learn=False``)."""
    from kd_env.run import RunConfig, train

    env_kwargs = {"pool": "specialists", "reward_mode": "label_logprob", "epochs": 1, "max_steps_per_epoch": 6}
    trained = train(
        RunConfig(
            "MultiTeacherKD-Synthetic-v0",
            "router",
            str(tmp_path / "train"),
            env_kwargs=env_kwargs,
            total_steps=18,
            tensorboard=False,
            progress=False,
        )
    )
    assert len(trained.episodes) == 3  # three student runs, one policy learning across them
    saved = tmp_path / "train" / "checkpoints" / "agent.pt"
    policy = MTKDRLPG.load(saved)
    assert policy.num_updates == 18 // policy.n_steps
    frozen = train(
        RunConfig(
            "MultiTeacherKD-Synthetic-v0",
            "router",
            str(tmp_path / "eval"),
            seed=11,
            env_kwargs={**env_kwargs, "student": "mlp"},
            agent_kwargs={"policy_path": str(saved), "learn": False},
            tensorboard=False,
            progress=False,
        )
    )
    assert len(frozen.episodes) == 1 and frozen.episodes[0]["final_test_acc"] >= 0
    evaluated = MTKDRLPG.load(tmp_path / "eval" / "checkpoints" / "agent.pt")
    assert evaluated.num_updates == 0 and not evaluated.learning
    for name, value in policy.policy.state_dict().items():
        assert torch.equal(value, evaluated.policy.state_dict()[name]), name


def test_running_baseline_credits_rewards_shared_by_the_batch():
    """A reward every sample of an update shares (val_loss_delta) has no per-sample advantage
    under the batch-mean baseline; the running baseline compares it with earlier updates."""
    states, samples, _ = tiny_batch()
    shared = np.full(4, -0.3)
    first, second = tiny_agent(), tiny_agent(baseline="running")
    mean = first.mean_log_weights(torch.tensor(states, dtype=torch.float32))[None].detach()
    inputs = (mean, torch.tensor(samples[None], dtype=torch.float32), torch.tensor([0.5]))
    _, batch_advantages = first.policy_loss(*inputs, torch.tensor(shared[None], dtype=torch.float32))
    assert torch.all(batch_advantages == 0)
    agent = second
    agent.running_baseline = -0.5
    rewards = np.array([-0.3, -0.3, -0.1, -0.6])
    _, advantages = agent.policy_loss(*inputs, torch.tensor(rewards[None], dtype=torch.float32))
    centred = rewards + 0.5
    np.testing.assert_allclose(advantages[0].numpy(), centred / (centred.std(ddof=1) + 1e-8), rtol=1e-5)


def test_unnormalised_advantages_keep_the_reward_scale():
    states, samples, rewards = tiny_batch()
    agent = tiny_agent(normalize_advantage=False)
    mean = agent.mean_log_weights(torch.tensor(states, dtype=torch.float32))[None].detach()
    _, advantages = agent.policy_loss(
        mean, torch.tensor(samples[None], dtype=torch.float32), torch.tensor([0.5]), torch.tensor(rewards[None], dtype=torch.float32)
    )
    np.testing.assert_allclose(advantages[0].numpy(), rewards - rewards.mean(), rtol=1e-6)
