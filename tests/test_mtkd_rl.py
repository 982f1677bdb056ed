"""MTKD-RL's agent against the official rule, worked out independently here.

The references below are plain Python / numpy loops over samples and teachers with a
hand-written backward pass (no autograd), so they share no code with ``agents/mtkd_rl.py``.
The env runs use two untrained ("random:") teachers: nothing is trained before the tests.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_env.agents.mtkd_rl import (
    MTKDRL,
    MTKDRLNetwork,
    PriorColumns,
    confidence_prior,
    reward_weighted_log_loss,
    state_layout_of,
)
from kd_env.baselines.rules import camkd_weights
from kd_env.engine.losses import per_sample_cross_entropy
from kd_env.envs import PerSampleKDVectorEnv
from kd_env.observations import CompactStates

TEACHERS = ["random:cnn_w8:1", "random:cnn_w8:2"]
BATCH = 8


def make_env(**overrides) -> PerSampleKDVectorEnv:
    kwargs = {
        "dataset": "synthetic",
        "teachers": TEACHERS,
        "epochs": 2,
        "max_steps_per_epoch": 3,
        "action_mode": "raw",
        "num_envs": BATCH,
        **overrides,
    }
    return PerSampleKDVectorEnv(**kwargs)


def parameters_of(agent: MTKDRL) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in agent.policy.named_parameters()}


class RecordSteps(gym.vector.VectorWrapper):
    """Records what each ``step`` received: the observation acted on, the action, and the
    engine's KD factors while the step ran."""

    def __init__(self, env: PerSampleKDVectorEnv) -> None:
        super().__init__(env)
        self.steps: list[dict] = []
        self._observation: np.ndarray | None = None

    def reset(self, **kwargs):
        observation, info = super().reset(**kwargs)
        self._observation = observation
        return observation, info

    def step(self, actions):
        config = self.env.unwrapped.engine.config
        entry = {
            "observation": self._observation,
            "action": np.array(actions),
            "factors": (config.kd_scale, config.beta),
        }
        observation, rewards, terminated, truncated, info = super().step(actions)
        entry.update(info=info, rewards=rewards)
        self.steps.append(entry)
        self._observation = observation
        return observation, rewards, terminated, truncated, info


# ------------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------------


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def manual_forward_backward(
    params: dict[str, np.ndarray],
    states: np.ndarray,
    rewards: np.ndarray,
    columns: PriorColumns,
    heads: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weights ``[B, heads, K]`` and the gradient of the official agent loss, by hand.

    Loss: sum over heads of ``(1 / (B K)) sum_i sum_k -r_i log w_ik`` with
    ``w = m0 softmax(W relu(S s) + b) + m1 confidence + m2 gap``.
    """
    batch, num_teachers = states.shape[0], len(columns.teacher_ce)
    stem = params["stem.0.weight"]
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    weights = np.zeros((batch, heads, num_teachers))
    head_specs = [("logit_head", columns.kd_loss, "logit_mix"), ("feature_head", columns.feature_cosine, "feature_mix")]
    for i in range(batch):
        state = states[i]
        pre_activation = stem @ state
        hidden = np.maximum(pre_activation, 0.0)
        grad_hidden = np.zeros_like(hidden)
        ce = [state[c] for c in columns.teacher_ce]
        ce_softmax = _softmax(ce)
        confidence = [(1.0 - ce_softmax[k]) / (num_teachers - 1) for k in range(num_teachers)]
        for head_index, (head, gap_columns, mix_name) in enumerate(head_specs[:heads]):
            weight, bias = params[f"{head}.weight"], params[f"{head}.bias"]
            logits = [float(weight[k] @ hidden + bias[k]) for k in range(num_teachers)]
            agent = _softmax(logits)
            gap = _softmax([state[c] for c in gap_columns])
            mix = _softmax(list(params[mix_name])) if mix_name in params else [1 / 3, 1 / 3, 1 / 3]
            sources = [agent, confidence, gap]
            mixed = [sum(mix[c] * sources[c][k] for c in range(3)) for k in range(num_teachers)]
            weights[i, head_index] = mixed
            grad_mixed = [-rewards[i] / (batch * num_teachers) / mixed[k] for k in range(num_teachers)]
            grad_agent = [mix[0] * g for g in grad_mixed]
            grad_logits = [
                sum(grad_agent[k] * agent[k] * ((1.0 if k == j else 0.0) - agent[j]) for k in range(num_teachers))
                for j in range(num_teachers)
            ]
            for j in range(num_teachers):
                grads[f"{head}.bias"][j] += grad_logits[j]
                grads[f"{head}.weight"][j] += grad_logits[j] * hidden
                grad_hidden += grad_logits[j] * weight[j]
            if mix_name in params:
                grad_mix = [sum(grad_mixed[k] * sources[c][k] for k in range(num_teachers)) for c in range(3)]
                for a in range(3):
                    grads[mix_name][a] += sum(grad_mix[c] * mix[c] * ((1.0 if c == a else 0.0) - mix[a]) for c in range(3))
        grads["stem.0.weight"] += np.outer(grad_hidden * (pre_activation > 0), state)
    return weights, grads


# ------------------------------------------------------------------------------------------------
# priors, mix, loss
# ------------------------------------------------------------------------------------------------


def test_confidence_prior_is_camkds_rule():
    ce3 = torch.tensor([[0.2, 1.5, 3.0], [2.0, 2.0, 2.0]])
    expected = []
    for row in ce3.tolist():
        total = sum(math.exp(v) for v in row)
        expected.append([(1.0 - math.exp(v) / total) / 2.0 for v in row])
    torch.testing.assert_close(confidence_prior(ce3), torch.tensor(expected))
    # K = 2: (1 - softmax)_k = sigmoid(CE_other - CE_k)
    ce2 = torch.tensor([[0.3, 1.1]])
    torch.testing.assert_close(confidence_prior(ce2), torch.tensor([[_sigmoid(0.8), _sigmoid(-0.8)]]))
    assert confidence_prior(torch.tensor([[4.0]])).item() == 1.0
    # the same weights as the CA-MKD baseline computes from logits and labels
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 5, 4, generator=generator), torch.tensor([0, 1, 2, 3, 0])
    from_ce = confidence_prior(per_sample_cross_entropy(logits, labels))
    torch.testing.assert_close(from_ce, camkd_weights(logits, labels))


def _small_case() -> tuple[MTKDRLNetwork, PriorColumns, torch.Tensor]:
    """K = 2 teachers, B = 3 samples, hidden = 2; per teacher [cos, KL, CE, embedding0, logit0, logit1]."""
    row = ("feature_cosine", "kd_loss", "teacher_ce", "embedding0", "logit0", "logit1")
    names = [f"{teacher}/{column}" for teacher in ("a", "b") for column in row]
    columns = PriorColumns.from_feature_names(names, ["a", "b"], feature_kd=True)
    assert columns == PriorColumns(teacher_ce=(2, 8), kd_loss=(1, 7), feature_cosine=(0, 6))
    states = torch.tensor(
        [
            [0.5, 0.2, 0.1, 1.0, 2.0, -1.0, -0.3, 1.4, 2.2, 0.5, 0.0, 0.3],
            [0.9, 3.0, 1.5, -1.0, 0.5, 0.5, 0.1, 0.1, 0.2, 2.0, -2.0, 1.0],
            [-0.2, 0.0, 0.7, 0.3, -1.0, 2.0, 0.8, 0.6, 0.7, -0.5, 1.0, 1.0],
        ],
        dtype=torch.float64,
    )
    network = MTKDRLNetwork(12, columns, num_teachers=2, heads=2, hidden=2).double()
    with torch.no_grad():
        network.stem[0].weight.copy_(torch.linspace(-0.6, 0.6, 24, dtype=torch.float64).view(2, 12).flip(1))
        network.logit_head.weight.copy_(torch.tensor([[0.5, -1.0], [0.2, 0.3]]))
        network.logit_head.bias.copy_(torch.tensor([0.1, -0.2]))
        network.feature_head.weight.copy_(torch.tensor([[-0.4, 0.7], [0.9, 0.1]]))
        network.feature_head.bias.copy_(torch.tensor([0.0, 0.3]))
    return network, columns, states


def _expected_two_teacher_weights(network: MTKDRLNetwork, states: torch.Tensor, logit_mix, feature_mix) -> np.ndarray:
    """With K = 2 every softmax over teachers is a sigmoid of a difference."""
    stem = network.stem[0].weight.detach().numpy()
    out = np.zeros((states.shape[0], 2, 2))
    for i, state in enumerate(states.numpy()):
        hidden = np.maximum(stem @ state, 0.0)
        confidence_a = _sigmoid(state[8] - state[2])  # lower CE -> more weight
        heads = [
            (network.logit_head, state[1] - state[7], logit_mix),  # KL_a - KL_b
            (network.feature_head, state[0] - state[6], feature_mix),  # cos_a - cos_b
        ]
        for h, (head, gap_a_minus_b, mix) in enumerate(heads):
            z = head.weight.detach().numpy() @ hidden + head.bias.detach().numpy()
            agent_a = _sigmoid(z[0] - z[1])
            gap_a = _sigmoid(gap_a_minus_b)
            weight_a = mix[0] * agent_a + mix[1] * confidence_a + mix[2] * gap_a
            out[i, h] = [weight_a, mix[0] * (1 - agent_a) + mix[1] * (1 - confidence_a) + mix[2] * (1 - gap_a)]
    return out


def test_priors_and_equal_mix_match_hand_computation():
    network, _, states = _small_case()
    priors = network.priors(states)
    sample = states[1].tolist()
    assert priors["confidence"][1, 0].item() == pytest.approx(_sigmoid(sample[8] - sample[2]))
    assert priors["logit_gap"][1, 0].item() == pytest.approx(_sigmoid(sample[1] - sample[7]))  # larger KL -> more
    assert priors["feature_gap"][1, 1].item() == pytest.approx(_sigmoid(sample[6] - sample[0]))  # higher cos -> more
    weights = network(states)
    assert weights.shape == (3, 2, 2)
    third = (1 / 3, 1 / 3, 1 / 3)
    expected = _expected_two_teacher_weights(network, states, third, third)
    np.testing.assert_allclose(weights.detach().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(weights.sum(-1).detach().numpy(), 1.0, atol=1e-12)


def test_dynamic_mix_matches_hand_computation():
    network, columns, states = _small_case()
    dynamic = MTKDRLNetwork(12, columns, num_teachers=2, heads=2, dynamic=True, hidden=2).double()
    dynamic.load_state_dict(network.state_dict(), strict=False)
    np.testing.assert_array_equal(dynamic.logit_mix.detach().numpy(), [1.0, 1.0, 1.0])  # official init
    # ones through a softmax is the equal mix
    torch.testing.assert_close(dynamic(states), network(states))
    with torch.no_grad():
        dynamic.logit_mix.copy_(torch.tensor([0.5, -1.0, 2.0]))
        dynamic.feature_mix.copy_(torch.tensor([0.0, 1.0, 0.0]))
    logit_mix = _softmax([0.5, -1.0, 2.0])
    feature_mix = [1 / (2 + math.e), math.e / (2 + math.e), 1 / (2 + math.e)]
    expected = _expected_two_teacher_weights(dynamic, states, logit_mix, feature_mix)
    np.testing.assert_allclose(dynamic(states).detach().numpy(), expected, atol=1e-12)


def test_agent_loss_is_the_official_reward_weighted_bce():
    generator = torch.Generator().manual_seed(1)
    weights = torch.softmax(torch.randn(5, 2, 3, generator=generator), dim=-1)
    weights[0, 0] = torch.tensor([0.0, 0.5, 0.5])  # BCE's log floor at -100
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.9, 0.0])
    official = sum(
        F.binary_cross_entropy(weights[:, head], torch.ones_like(weights[:, head]), weight=rewards.unsqueeze(-1)) for head in range(2)
    )
    torch.testing.assert_close(reward_weighted_log_loss(weights, rewards), official)


# ------------------------------------------------------------------------------------------------
# the update
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_update_is_one_official_sgd_step_per_stored_batch(dynamic):
    agent = MTKDRL(make_env(), dynamic=dynamic, hidden=4, seed=0)
    columns = PriorColumns.from_dict(agent.state_layout["columns"])
    rng = np.random.default_rng(0)
    batches = [
        (rng.normal(size=(3, agent.observation_dim)).astype(np.float32), np.array([0.0, 0.7, 1.0], dtype=np.float32)),
        (rng.normal(size=(3, agent.observation_dim)).astype(np.float32), np.array([0.4, 0.0, 0.2], dtype=np.float32)),
    ]
    params = {name: value.double().numpy() for name, value in parameters_of(agent).items()}
    for states, rewards in batches:  # sequential: the second step starts from the first's result
        _, grads = manual_forward_backward(params, states.astype(np.float64), rewards.astype(np.float64), columns, 2)
        params = {name: value - 0.1 * grads[name] for name, value in params.items()}
        agent.buffer.append((torch.from_numpy(states), torch.from_numpy(rewards)))
    before = parameters_of(agent)
    losses = agent.train_on_buffer()
    assert losses is not None and losses["agent_steps"] == 2 and len(agent.buffer) == 0
    assert agent.train_on_buffer() is None  # nothing stored, nothing done
    after = parameters_of(agent)
    assert set(after) == set(params) and (("logit_mix" in after) == dynamic)
    for name, expected in params.items():
        assert not torch.equal(after[name], before[name]), name
        np.testing.assert_allclose(after[name].double().numpy(), expected, rtol=1e-4, atol=1e-6, err_msg=name)
    # the agent acts with the weights of the hand-updated network
    manual_weights, _ = manual_forward_backward(params, batches[0][0].astype(np.float64), batches[0][1], columns, 2)
    np.testing.assert_allclose(agent.weights(batches[0][0]).double().numpy(), manual_weights, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# predict, checks, save / load
# ------------------------------------------------------------------------------------------------


def test_predict_gives_simplex_actions_and_rejects_bad_input():
    env = make_env()
    agent = MTKDRL(env, seed=0)
    observation, _ = env.reset(seed=0)
    action, state = agent.predict(observation)
    assert state is None and action.shape == env.action_space.shape and action.dtype == np.float32
    assert env.action_space.contains(action)
    np.testing.assert_allclose(action.reshape(BATCH, 2, 2).sum(-1), 1.0, atol=1e-6)
    single, _ = agent.predict(observation[3], deterministic=True)
    np.testing.assert_allclose(single, action[3], atol=1e-7)
    np.testing.assert_array_equal(agent.predict(observation, deterministic=True)[0], action)  # never samples
    with pytest.raises(ValueError, match="expected"):
        agent.predict(observation[:, :-1])
    bad = observation.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        agent.predict(bad)
    env.step(action)  # the env takes the action as it is


def test_env_requirements_raise_clear_errors():
    with pytest.raises(ValueError, match="action_mode='raw'"):
        MTKDRL(make_env(action_mode="softmax"))
    with pytest.raises(ValueError, match="action_mode='raw'"):
        MTKDRL(make_env(action_mode="simplex"))
    with pytest.raises(ValueError, match="kd_loss"):
        MTKDRL(make_env(state_parts=["performance"]))
    with pytest.raises(ValueError, match="per-sample env"):
        MTKDRL(gym.make("MultiTeacherKD-Synthetic-v0", teachers=TEACHERS, epochs=1, max_steps_per_epoch=1))
    env = make_env()
    with pytest.raises(ValueError, match="warmup"):
        MTKDRL(env, warmup="sometimes")
    layout = state_layout_of(env)
    with pytest.raises(ValueError, match="does not match"):
        MTKDRL(env, state_layout={**layout, "teacher_names": ["x", "y"]})
    with pytest.raises(ValueError, match="state_layout"):
        MTKDRL(None, observation_space=env.single_observation_space, action_space=env.single_action_space)


def test_save_load_round_trip(tmp_path):
    env = make_env()
    agent = MTKDRL(env, dynamic=True, seed=0, agent_step=None)
    agent.learn(4 * BATCH)  # crosses the first epoch end: the agent has been updated once
    assert agent.num_updates == 1 and len(agent.buffer) == 1
    path = agent.save(tmp_path / "agent.pt")
    observation, _ = make_env().reset(seed=1)

    loaded = MTKDRL.load(path)  # no env: predict only
    np.testing.assert_array_equal(loaded.predict(observation)[0], agent.predict(observation)[0])
    for name, value in parameters_of(agent).items():
        assert torch.equal(parameters_of(loaded)[name], value)
    assert (loaded.dynamic, loaded.agent_step, loaded.num_timesteps, loaded.num_updates) == (True, None, 4 * BATCH, 1)
    with pytest.raises(ValueError, match="no env"):
        loaded.learn(BATCH)
    with pytest.raises(ValueError, match="space"):
        MTKDRL.load(path, env=make_env(teachers=TEACHERS + ["random:cnn_w8:3"]))
    (tmp_path / "broken.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        MTKDRL.load(tmp_path / "broken.pt")


def test_resume_mid_warmup_epoch_continues_exactly(tmp_path):
    straight = MTKDRL(make_env(), seed=3).learn(5 * BATCH)

    first_env = make_env()
    first = MTKDRL(first_env, seed=3).learn(2 * BATCH)  # stops inside the warm-up epoch
    first.save(tmp_path / "agent.pt")
    first_env.save(tmp_path / "env.pt")
    second_env = make_env()
    second_env.load(tmp_path / "env.pt")
    resumed = MTKDRL.load(tmp_path / "agent.pt", env=second_env).learn(3 * BATCH, reset_num_timesteps=False)
    assert resumed.num_updates == straight.num_updates == 1
    for name, value in parameters_of(straight).items():
        assert torch.equal(parameters_of(resumed)[name], value), name


# ------------------------------------------------------------------------------------------------
# learning on the env
# ------------------------------------------------------------------------------------------------


def test_official_warmup_then_agent_weights_and_epoch_end_updates():
    env = RecordSteps(make_env())
    agent = MTKDRL(env, seed=0)
    initial = parameters_of(agent)
    records: list[dict] = []
    after_first_update: dict[str, torch.Tensor] = {}

    def record_step(record: dict) -> None:
        records.append({**record, "updates": agent.num_updates})
        if agent.num_updates == 1 and not after_first_update:
            after_first_update.update({k: v.clone() for k, v in agent.policy.state_dict().items()})

    agent.learn(6 * BATCH, callback=record_step)
    assert [record["updates"] for record in records] == [0, 0, 1, 1, 1, 2]  # once per epoch, at its end
    assert [record["losses"] is not None for record in records] == [False, False, True, False, False, True]
    assert records[2]["losses"]["agent_steps"] == 3.0  # the warm-up epoch's 3 batches trained the agent
    assert records[-1]["done"]
    for step in env.steps[:3]:  # warm-up: all-ones, applied as they are (K times AVER's KD scale)
        np.testing.assert_array_equal(step["action"], 1.0)
        np.testing.assert_array_equal(step["info"]["weights"], 1.0)
        np.testing.assert_array_equal(step["info"]["feature_weights"], 1.0)
        assert step["factors"] == (1.0, 5.0)
    snapshot = MTKDRL(
        None,
        state_layout=agent.state_layout,
        observation_space=agent.observation_space,
        action_space=agent.action_space,
    )
    snapshot.policy.load_state_dict(after_first_update)
    for step in env.steps[3:]:  # then the agent's own weights (updated at the first epoch end)
        assert step["factors"] == (1.0, 5.0)
        np.testing.assert_array_equal(step["action"], snapshot.predict(step["observation"])[0])
        np.testing.assert_allclose(step["info"]["weights"], step["action"][:, :2], atol=1e-6)
        np.testing.assert_allclose(step["info"]["feature_weights"], step["action"][:, 2:], atol=1e-6)
        assert 0.0 <= step["rewards"].min() and step["rewards"].max() <= 1.0
    assert (env.unwrapped.engine.config.kd_scale, env.unwrapped.engine.config.beta) == (1.0, 5.0)
    assert any(not torch.equal(initial[name], value) for name, value in parameters_of(agent).items())


@pytest.mark.parametrize("warmup", ["uniform", "none"])
def test_other_warmups(warmup):
    env = RecordSteps(make_env(epochs=1))
    MTKDRL(env, warmup=warmup, seed=0).learn(2 * BATCH)
    assert all(step["factors"] == (1.0, 5.0) for step in env.steps)  # the agent never touches the env's loss
    assert np.all(env.steps[0]["action"] == 0.5) == (warmup == "uniform")


def _agent_steps(agent: MTKDRL, timesteps: int) -> list[float | None]:
    steps: list[float | None] = []
    agent.learn(timesteps, callback=lambda record: steps.append(record["losses"] and record["losses"]["agent_steps"]))
    return steps


def test_agent_step_and_buffer_bound():
    # official: update after batch_idx 2 (3 stored batches), then the rest at the epoch end
    agent = MTKDRL(make_env(epochs=1, max_steps_per_epoch=5), agent_step=2, seed=0)
    assert _agent_steps(agent, 5 * BATCH) == [None, None, 3.0, None, 2.0]
    bounded = MTKDRL(make_env(epochs=1), agent_step=None, max_buffer_batches=1, seed=0)
    assert _agent_steps(bounded, 3 * BATCH) == [None, None, 1.0]


def test_same_seed_same_run():
    first_env, second_env = RecordSteps(make_env()), RecordSteps(make_env())
    first = MTKDRL(first_env, dynamic=True, seed=7).learn(4 * BATCH)
    second = MTKDRL(second_env, dynamic=True, seed=7).learn(4 * BATCH)
    for step_a, step_b in zip(first_env.steps, second_env.steps, strict=True):
        for key in ("observation", "action", "rewards"):
            np.testing.assert_array_equal(step_a[key], step_b[key])
    for name, value in parameters_of(first).items():
        assert torch.equal(parameters_of(second)[name], value)
    other = MTKDRL(make_env(), dynamic=True, seed=8)
    assert not torch.equal(parameters_of(other)["logit_head.weight"], parameters_of(first)["logit_head.weight"])


# ------------------------------------------------------------------------------------------------
# compact buffer: the same update from sample indices and the student's columns
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_kwargs", [{}, {"teacher_store": False}, {"store_dtype": "float32"}])
def test_compact_buffer_rebuilds_states_bit_for_bit_and_updates_the_same(env_kwargs):
    compact_env, whole_env = RecordSteps(make_env(**env_kwargs)), RecordSteps(make_env(**env_kwargs))
    compact = MTKDRL(compact_env, dynamic=True, seed=0, agent_step=None)
    whole = MTKDRL(whole_env, dynamic=True, seed=0, agent_step=None, compact_buffer=False)
    compact.learn(2 * BATCH)
    whole.learn(2 * BATCH)
    assert [type(stored) for stored, _ in compact.buffer] == [CompactStates, CompactStates]
    assert [type(stored) for stored, _ in whole.buffer] == [torch.Tensor, torch.Tensor]
    for step, (stored, _), (states, _) in zip(compact_env.steps, compact.buffer, whole.buffer, strict=True):
        rebuilt = compact_env.unwrapped.expand_states(stored)
        assert torch.equal(rebuilt, states)
        np.testing.assert_array_equal(rebuilt.numpy(), step["observation"])  # what the agent acted on
        assert stored.nbytes * 5 < states.nbytes  # 2 teachers x 2 gap columns + the index, of 81 columns
    compact.learn(4 * BATCH, reset_num_timesteps=False)  # two epoch-end updates, the second on compact states
    whole.learn(4 * BATCH, reset_num_timesteps=False)
    assert compact.num_updates == whole.num_updates == 2
    for name, value in parameters_of(whole).items():
        assert torch.equal(parameters_of(compact)[name], value), name


class ScaleObservation(gym.vector.VectorObservationWrapper):
    def observations(self, observations):
        return observations * 2.0


def test_compact_states_only_where_the_env_can_rebuild_them():
    augmented = make_env(augment=True)
    observation, _ = augmented.reset(seed=0)
    assert not augmented.engine.teacher_outputs_by_index and augmented.compact_states(observation) is None
    with pytest.raises(RuntimeError, match="not kept"):
        augmented.engine.teacher_performance(torch.arange(BATCH))
    agent = MTKDRL(make_env(augment=True), seed=0, agent_step=None)
    agent.learn(2 * BATCH)
    assert all(isinstance(stored, torch.Tensor) for stored, _ in agent.buffer)

    env = make_env()
    first, _ = env.reset(seed=0)
    assert env.compact_states(first * 2.0) is None  # not the env's observation
    assert env.compact_states(first[:, :-1]) is None
    second, *_ = env.step(np.ones(env.action_space.shape, dtype=np.float32))
    assert env.compact_states(first) is None  # an older one: its samples are no longer known
    assert env.compact_states(second) is not None
    wrapped = MTKDRL(ScaleObservation(make_env()), seed=0, agent_step=None)  # the agent sees changed states
    wrapped.learn(2 * BATCH)
    assert all(isinstance(stored, torch.Tensor) for stored, _ in wrapped.buffer)


def test_compact_states_from_another_env_are_refused(tmp_path):
    env = make_env()
    agent = MTKDRL(env, seed=0, agent_step=None)
    agent.learn(2 * BATCH)
    stored = agent.buffer[0][0]
    assert isinstance(stored, CompactStates)
    other = make_env(teachers=["random:cnn_w8:5", "random:cnn_w8:6"])  # same shapes, other teachers
    other.reset(seed=0)
    with pytest.raises(ValueError, match="do not rebuild"):
        other.expand_states(stored)
    path = agent.save(tmp_path / "agent.pt")
    with pytest.raises(ValueError, match="do not rebuild"):
        MTKDRL.load(path, env=other)
    loaded = MTKDRL.load(path, env=make_env())  # the same env arguments: the states rebuild
    assert [type(stored) for stored, _ in loaded.buffer] == [CompactStates, CompactStates]
    for (mine, rewards), (theirs, their_rewards) in zip(agent.buffer, loaded.buffer, strict=True):
        assert torch.equal(env.expand_states(mine), loaded.kd_env.expand_states(theirs)) and torch.equal(rewards, their_rewards)
    predict_only = MTKDRL.load(path)  # no env: no rollout, and compact states cannot be used
    assert len(predict_only.buffer) == 0
    predict_only.buffer.append(agent.buffer[0])
    with pytest.raises(ValueError, match="with its env"):
        predict_only.train_on_buffer()
