"""kd-env with other RL libraries' loops as their documentation writes them (issue #21): skrl's
PPO and trainer, torchrl's ``GymEnv`` and collector, a CleanRL-style hand-written PPO; and the
env's own torch modes: a run stepped inside a caller's ``no_grad`` / ``inference_mode`` /
``autocast`` / ``torch.compile`` / another thread equals one stepped outside, to the bit."""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import kd_env  # noqa: F401  (registers the ids)
from kd_env.envs import MultiTeacherKDEnv, PerSampleKDVectorEnv

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
TINY: dict[str, Any] = {"epochs": 1, "max_steps_per_epoch": 5}
SLOTS = 8


@pytest.fixture(scope="module", autouse=True)
def _synthetic_teachers_trained() -> None:
    """Train the synthetic pool once, outside any test's timing."""
    gym.make(SYNTHETIC, **TINY).close()


def _count_steps(env: Any) -> list[bool]:
    """Record, for every ``step`` of ``env``, whether grad was enabled where the caller called it."""
    modes: list[bool] = []
    step = env.step

    def recording(action: Any) -> Any:
        modes.append(torch.is_grad_enabled())
        return step(action)

    env.step = recording
    return modes


# ---------------------------------------------------------------------- the env's own torch modes
def _batch_env() -> MultiTeacherKDEnv:
    return cast(MultiTeacherKDEnv, gym.make(SYNTHETIC, **TINY).unwrapped)


def _per_sample_env() -> PerSampleKDVectorEnv:
    return cast(PerSampleKDVectorEnv, gym.make_vec(SYNTHETIC, num_envs=SLOTS, vectorization_mode="vector_entry_point", **TINY))


ENVS: dict[str, Callable[[], Any]] = {"batch": _batch_env, "per_sample": _per_sample_env}


def _in_thread(context: Callable[[], AbstractContextManager[Any]]) -> Callable[[Callable[[], Any]], Any]:
    """Run a call on a fresh thread under ``context`` (grad mode is per thread)."""

    def run(call: Callable[[], Any]) -> Any:
        box: dict[str, Any] = {}

        def target() -> None:
            with context():
                try:
                    box["value"] = call()
                except BaseException as exc:  # re-raised on the caller's thread
                    box["error"] = exc

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return run


def _within(context: Callable[[], AbstractContextManager[Any]]) -> Callable[[Callable[[], Any]], Any]:
    def run(call: Callable[[], Any]) -> Any:
        with context():
            return call()

    return run


def _compiled(call: Callable[[], Any]) -> Any:
    return torch.compile(call)()


# how the caller runs reset and each step: (reset under, steps under)
CALLERS: dict[str, tuple[Callable[[Callable[[], Any]], Any], Callable[[Callable[[], Any]], Any]]] = {
    "no_grad": (_within(torch.no_grad), _within(torch.no_grad)),
    "inference_mode": (_within(torch.inference_mode), _within(torch.inference_mode)),
    "reset_under_no_grad_only": (_within(torch.no_grad), _within(nullcontext)),
    "reset_under_inference_mode_only": (_within(torch.inference_mode), _within(nullcontext)),
    "autocast_bfloat16": (_within(lambda: torch.autocast("cpu", dtype=torch.bfloat16)), _within(lambda: torch.autocast("cpu"))),
    "other_thread_in_inference_mode": (_in_thread(torch.inference_mode), _in_thread(torch.inference_mode)),
    "torch_compile": (_within(nullcontext), _compiled),
}


def _run(env: Any, reset_under: Callable[[Callable[[], Any]], Any], step_under: Callable[[Callable[[], Any]], Any]) -> list[Any]:
    """Everything a run shows: observations, rewards, flags, infos of every step to the episode's
    end (epoch-end evaluation and final metrics included), then the student's and best student's
    state and the optimizer's momentum."""
    rng = np.random.default_rng(0)
    observation, info = reset_under(lambda: env.reset(seed=3))
    trace: list[Any] = [observation, info]
    for _ in range(TINY["max_steps_per_epoch"]):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        trace += list(step_under(functools.partial(env.step, action)))
    engine = env.engine
    trace += [engine.student.state_dict(), engine.best_student_state]
    trace += [state["momentum_buffer"] for state in engine.optimizer.state.values()]
    return trace


def _assert_bitwise_equal(first: Any, second: Any) -> None:
    if first is None or second is None:
        assert first is None and second is None
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            _assert_bitwise_equal(first[key], second[key])
    elif isinstance(first, (list, tuple)):
        assert type(first) is type(second) and len(first) == len(second)
        for ours, theirs in zip(first, second):
            _assert_bitwise_equal(ours, theirs)
    elif isinstance(first, torch.Tensor):
        assert torch.equal(first, second) and first.dtype == second.dtype
    else:
        np.testing.assert_array_equal(first, second, strict=True)


@pytest.fixture(scope="module")
def reference_runs() -> dict[str, list[Any]]:
    """Each env's run stepped the plain way (grad on, no inference mode, no autocast, no compile)."""
    plain = _within(nullcontext)
    return {name: _run(make(), plain, plain) for name, make in ENVS.items()}


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("kind", list(ENVS))
def test_a_run_stepped_inside_a_callers_torch_mode_equals_one_stepped_outside(kind, caller, reference_runs):
    env = ENVS[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dynamo's notes on the graph break at the env call
        trace = _run(env, *CALLERS[caller])
    _assert_bitwise_equal(trace, reference_runs[kind])
    assert trace[-1].numel() > 0 and not torch.is_inference(trace[-1])  # the optimizer's momentum is a normal tensor


def test_load_under_inference_mode_then_stepping_equals_loading_outside(tmp_path):
    env = _batch_env()
    env.reset(seed=1)
    env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    env.save(tmp_path / "run.pt")
    action = np.full(env.action_space.shape, 0.5, dtype=np.float32)
    expected = env.step(action)
    with torch.inference_mode():
        env.load(tmp_path / "run.pt")
    _assert_bitwise_equal(env.step(action), expected)  # SGD's momentum updated in place: no inference tensors


def test_float64_and_graph_carrying_tensor_actions_equal_their_float32_rounding():
    env = _batch_env()
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, env.action_space.shape) for _ in range(3)]  # float64, NumPy's default
    env.reset(seed=2)
    as_float32 = [env.step(a.astype(np.float32)) for a in actions]
    env.reset(seed=2)
    as_float64 = [env.step(a) for a in actions]
    env.reset(seed=2)
    weight = torch.ones((), requires_grad=True)  # a policy output that still carries its graph
    as_tensors = [env.step(torch.from_numpy(a) * weight) for a in actions]
    _assert_bitwise_equal(as_float64, as_float32)
    _assert_bitwise_equal(as_tensors, as_float32)


def test_float64_weights_beyond_float32_are_clipped_as_logits_and_refused_as_weights():
    env = _batch_env()
    env.reset(seed=0)
    huge = np.zeros(env.action_space.shape)
    huge[0] = 1e300  # finite in float64, inf in float32
    reference = gym.make(SYNTHETIC, **TINY).unwrapped
    reference.reset(seed=0)
    expected = reference.step(np.where(huge > 1, 1.0, huge).astype(np.float32))  # a logit beyond the Box is its bound
    with pytest.warns(UserWarning, match="clipped"):
        _assert_bitwise_equal(env.step(huge), expected)
    for mode, action, error in [("raw", huge, "float32's range"), ("simplex", np.where(huge > 1, 1e-50, 1.0), "sum to zero")]:
        weights_env = gym.make(SYNTHETIC, action_mode=mode, **TINY).unwrapped
        weights_env.reset(seed=0)
        student = {k: v.clone() for k, v in weights_env.engine.student.state_dict().items()}
        # 1e-50 as the logit head's only weight: positive in float64, a zero head in float32
        head = action.copy()
        if mode == "simplex":
            head[1 : weights_env.num_teachers] = 0.0
        with pytest.raises(ValueError, match=error):
            weights_env.step(head)
        _assert_bitwise_equal(weights_env.engine.student.state_dict(), student)  # refused before any update


# ---------------------------------------------------------------------- skrl
@pytest.mark.parametrize(
    ("make_env", "global_step"),
    [
        # skrl resets a single env at its end: 12 steps = two 5-update students and 2 updates
        (lambda: gym.make(SYNTHETIC, **TINY), 2),
        # a vector env autoresets itself (next step): 5 updates, a reset step, 5 updates, a reset step
        (lambda: gym.make_vec(SYNTHETIC, num_envs=SLOTS, vectorization_mode="vector_entry_point", **TINY), 0),
    ],
    ids=["batch_env", "per_sample_vector_env"],
)
def test_skrl_ppo_with_its_sequential_trainer_steps_under_no_grad_and_learns(make_env, global_step):
    pytest.importorskip("skrl")
    from skrl.agents.torch.ppo import PPO, PPO_CFG
    from skrl.envs.wrappers.torch import wrap_env
    from skrl.memories.torch import RandomMemory
    from skrl.models.torch import DeterministicMixin, GaussianMixin, Model
    from skrl.trainers.torch import SequentialTrainer

    class Policy(GaussianMixin, Model):
        def __init__(self, observation_space: Any, action_space: Any, device: Any) -> None:
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            GaussianMixin.__init__(self, clip_actions=True)
            self.net = nn.Sequential(nn.Linear(self.num_observations, 16), nn.Tanh(), nn.Linear(16, self.num_actions))
            self.log_std = nn.Parameter(torch.zeros(self.num_actions))

        def compute(self, inputs: dict[str, Any], role: str = "") -> tuple[torch.Tensor, dict[str, Any]]:
            return self.net(inputs["observations"]), {"log_std": self.log_std}

    class Value(DeterministicMixin, Model):
        def __init__(self, observation_space: Any, action_space: Any, device: Any) -> None:
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.net = nn.Sequential(nn.Linear(self.num_observations, 16), nn.Tanh(), nn.Linear(16, 1))

        def compute(self, inputs: dict[str, Any], role: str = "") -> tuple[torch.Tensor, dict[str, Any]]:
            return self.net(inputs["observations"]), {}

    base = make_env()
    grad_modes = _count_steps(base.unwrapped)
    env = wrap_env(base)
    models = {name: cls(env.observation_space, env.action_space, env.device) for name, cls in (("policy", Policy), ("value", Value))}
    agent = PPO(
        models=models,
        memory=RandomMemory(memory_size=4, num_envs=env.num_envs, device=env.device),
        cfg=PPO_CFG(rollouts=4, learning_epochs=1, mini_batches=1),
        observation_space=env.observation_space,
        action_space=env.action_space,
        device=env.device,
    )
    before = [p.detach().clone() for p in models["policy"].parameters()]
    trainer_cfg = {"timesteps": 12, "headless": True, "disable_progressbar": True, "close_environment_at_exit": False}
    SequentialTrainer(cfg=trainer_cfg, env=env, agents=agent).train()
    assert grad_modes == [False] * 12  # skrl stepped every time inside torch.no_grad()
    assert base.unwrapped.engine.global_step == global_step  # the students trained at every step
    assert any(not torch.equal(a, b) for a, b in zip(before, models["policy"].parameters()))  # three PPO updates


# ---------------------------------------------------------------------- torchrl
def test_torchrl_gymenv_passes_check_env_specs_rolls_out_and_collects():
    pytest.importorskip("torchrl")
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv
    from torchrl.envs.utils import check_env_specs

    env = GymEnv(SYNTHETIC, **TINY)  # torchrl passes frameskip=1 and retries without it on Python's TypeError
    check_env_specs(env)
    rollout = env.rollout(10)  # stops at the episode's end
    assert rollout.batch_size == torch.Size([TINY["max_steps_per_epoch"]])
    assert rollout["next", "done"][-1].item() and not rollout["next", "done"][:-1].any()
    # torchrl's collector steps inside torch.no_grad(), with a random policy here
    collector = Collector(env, policy=None, frames_per_batch=4, total_frames=8)
    batches = list(collector)
    collector.shutdown()
    assert [batch.batch_size for batch in batches] == [torch.Size([4])] * 2
    assert torch.isfinite(torch.cat([batch["next", "reward"] for batch in batches])).all()


def test_unknown_arguments_fail_with_pythons_wording():
    with pytest.raises(TypeError, match=r"MultiTeacherKDEnv.__init__\(\) got an unexpected keyword argument 'frameskip'"):
        gym.make(SYNTHETIC, frameskip=1, **TINY)
    # Python names the first unexpected argument given; kd-env then lists them all and the known ones
    with pytest.raises(TypeError, match=r"argument 'bogus' \(unknown environment argument\(s\) \['bogus', 'frameskip'\]; known: \["):
        gym.make(SYNTHETIC, bogus=1, frameskip=1, **TINY)
    with pytest.raises(TypeError, match=r"PerSampleKDVectorEnv.__init__\(\) got an unexpected keyword argument 'frameskip'"):
        gym.make_vec(SYNTHETIC, num_envs=SLOTS, vectorization_mode="vector_entry_point", frameskip=1, **TINY)


# ---------------------------------------------------------------------- a CleanRL-style loop
class _ActorCritic(nn.Module):
    def __init__(self, observations: int, actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(observations, 16), nn.Tanh(), nn.Linear(16, 1))
        self.actor_mean = nn.Sequential(nn.Linear(observations, 16), nn.Tanh(), nn.Linear(16, actions))
        self.actor_logstd = nn.Parameter(torch.zeros(1, actions))

    def action_and_value(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = self.actor_mean(obs)
        dist = torch.distributions.Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(obs).squeeze(1)


def _cleanrl_ppo(envs: gym.vector.VectorEnv, iterations: int, num_steps: int) -> Iterator[float]:
    """CleanRL's ppo_continuous_action.py, cut down: a rollout with actions *and env steps*
    inside ``torch.no_grad()`` (as many hand-written loops do), GAE, one clipped PPO epoch.
    Yields the PPO loss of each iteration."""
    torch.manual_seed(0)
    num_envs = envs.num_envs
    obs_shape, act_shape = envs.single_observation_space.shape, envs.single_action_space.shape
    assert obs_shape is not None and act_shape is not None  # Box spaces
    obs_dim = int(np.prod(obs_shape))
    act_dim = int(np.prod(act_shape))
    agent = _ActorCritic(obs_dim, act_dim)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)
    next_obs = torch.as_tensor(envs.reset(seed=0)[0])
    next_done = torch.zeros(num_envs)
    for _ in range(iterations):
        obs, actions = torch.zeros(num_steps, num_envs, obs_dim), torch.zeros(num_steps, num_envs, act_dim)
        logprobs, rewards, dones, values = (torch.zeros(num_steps, num_envs) for _ in range(4))
        for step in range(num_steps):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.action_and_value(next_obs)
                next_obs_np, reward, terminations, truncations, _ = envs.step(action.clamp(-1, 1).cpu().numpy())
            values[step], actions[step], logprobs[step] = value, action, logprob
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs_np)
            next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
        with torch.no_grad():
            next_value = agent.action_and_value(next_obs)[3]
            advantages, last = torch.zeros_like(rewards), torch.zeros(num_envs)
            for t in reversed(range(num_steps)):
                not_done = 1.0 - (next_done if t == num_steps - 1 else dones[t + 1])
                following = next_value if t == num_steps - 1 else values[t + 1]
                delta = rewards[t] + 0.99 * following * not_done - values[t]
                advantages[t] = last = delta + 0.99 * 0.95 * not_done * last
            returns = advantages + values
        _, new_logprob, entropy, new_value = agent.action_and_value(obs.reshape(-1, obs_dim), actions.reshape(-1, act_dim))
        ratio = (new_logprob - logprobs.reshape(-1)).exp()
        adv = advantages.reshape(-1)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
        loss = policy_loss + 0.5 * ((new_value - returns.reshape(-1)) ** 2).mean() - 0.01 * entropy.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        yield float(loss.detach())


@pytest.mark.parametrize(
    "make_envs",
    [
        lambda: gym.make_vec(SYNTHETIC, num_envs=2, vectorization_mode="sync", **TINY),
        lambda: gym.make_vec(SYNTHETIC, num_envs=SLOTS, vectorization_mode="vector_entry_point", **TINY),
    ],
    ids=["sync_vector_of_batch_envs", "per_sample_vector_env"],
)
def test_cleanrl_style_ppo_loop_stepping_under_no_grad_trains_agent_and_students(make_envs):
    envs = make_envs()
    inner = envs.envs if isinstance(envs, gym.vector.SyncVectorEnv) else [envs]
    grad_modes = [_count_steps(env) for env in inner]
    losses = list(_cleanrl_ppo(envs, iterations=2, num_steps=4))
    assert len(losses) == 2 and all(np.isfinite(losses))
    # every env step ran inside torch.no_grad() (SyncVectorEnv calls reset, not step, to autoreset)
    assert all(len(modes) >= 7 and not any(modes) for modes in grad_modes)
    # 8 steps through 5-update episodes with next-step autoreset: 5 updates, a reset step, 2 updates
    assert [env.unwrapped.engine.global_step for env in inner] == [2] * len(inner)
    envs.close()


# ---------------------------------------------------------------------- MMKD's meta step
def test_mmkd_driven_under_no_grad_takes_the_same_meta_steps_and_actions_as_outside():
    from kd_env.baselines import MMKD

    def run(context: Callable[[], AbstractContextManager[Any]]) -> tuple[list[np.ndarray], dict[str, torch.Tensor], int]:
        env = PerSampleKDVectorEnv(num_envs=SLOTS, dataset="synthetic", action_mode="simplex", epochs=2, max_steps_per_epoch=6)
        policy = MMKD(env, buffer_size=16)
        actions = []
        with context():  # predict (and the meta step it owes) and step, as a no_grad evaluation loop would
            observation, _ = env.reset(seed=0)
            for _ in range(7):
                action, _ = policy.predict(observation)
                actions.append(action)
                observation, *_ = env.step(action)
        return actions, policy.nets.state_dict(), policy.meta_steps

    reference = run(nullcontext)
    assert reference[2] == 2  # owed by updates 0 and 5 (the epoch's last), taken before updates 1 and 6
    for context in (torch.no_grad, torch.inference_mode):
        _assert_bitwise_equal(run(context), reference)
