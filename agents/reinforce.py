"""REINFORCE with a baseline: kd-env's own policy-gradient agent over teacher weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.distributions import Normal

from .base import BaseAgent, EnvLike

RETURN_BASELINES = ("value", "mean")
"""What ``Reinforce(baseline=...)`` subtracts from the returns: a learned critic or a running mean."""


class RunningMeanStd:
    """Running mean and variance of observations (Chan et al.'s parallel update, float64).

    The raw observations mix scales (losses up to ~10, accuracies in [0, 1], a learning rate of
    ~0.05, per-sample logits and embeddings), so the policy sees ``(x - mean) / std``, clipped.
    Only :meth:`update` changes the statistics, and only ``learn`` calls it: ``predict`` and a
    loaded agent evaluate with the frozen statistics of training.
    """

    def __init__(self, dim: int, epsilon: float = 1e-4) -> None:
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.var = torch.ones(dim, dtype=torch.float64)
        self.count = torch.tensor(epsilon, dtype=torch.float64)

    def update(self, batch: torch.Tensor) -> None:
        batch = batch.to(torch.float64)
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        merged = self.var * self.count + batch_var * batch_count + delta.pow(2) * self.count * batch_count / total
        self.var = merged / total
        self.count = total

    def normalize(self, batch: torch.Tensor, clip: float) -> torch.Tensor:
        scaled = (batch.to(torch.float64) - self.mean) / torch.sqrt(self.var + 1e-8)
        return scaled.clamp(-clip, clip).to(torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.var, self.count = state["mean"].clone(), state["var"].clone(), state["count"].clone()


def mlp(input_dim: int, hidden_sizes: Sequence[int], output_dim: int, output_gain: float) -> nn.Sequential:
    """A tanh MLP with orthogonal initialisation (the output layer scaled by ``output_gain``)."""
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    for index, layer in enumerate(linears):
        gain = output_gain if index == len(linears) - 1 else float(np.sqrt(2.0))
        nn.init.orthogonal_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """``N(mu(s), diag(exp(log_std)))`` over pre-squash actions; ``log_std`` is state-independent."""

    def __init__(self, observation_dim: int, action_dim: int, hidden_sizes: Sequence[int], log_std_init: float) -> None:
        super().__init__()
        # a tiny output gain starts every slot near a = 0, i.e. uniform teacher weights
        self.mean_net = mlp(observation_dim, hidden_sizes, action_dim, output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, observation: torch.Tensor) -> Normal:
        mean = self.mean_net(observation)
        return Normal(mean, self.log_std.exp().expand_as(mean))


class Reinforce(BaseAgent):
    """REINFORCE with a baseline, updated from partial rollouts; one shared policy for all slots.

    **Distribution: a tanh-squashed diagonal Gaussian over the action logits.** The policy draws
    ``u ~ N(mu(s), sigma)`` and sends ``a = tanh(u)`` (affinely mapped to the Box bounds) to the
    env, which turns it into teacher weights with ``softmax(scale * a)``. Why this and not a
    Dirichlet: the Dirichlet needs ``action_mode="simplex"``, while the SB3 agents we compare
    against act in softmax mode, so the Gaussian keeps every agent on the same env. Why tanh and
    not clipping: clipping piles probability mass onto ``+-1`` while the log-probability is still
    that of the unclipped sample, which biases the gradient; ``tanh`` is a bijection, so the
    stored pre-squash ``u`` gives the exact log-probability ``log N(u) - sum log(1 - tanh(u)^2)``,
    and since the Jacobian term does not depend on the parameters, the policy gradient is exactly
    that of ``log N(u; mu, sigma)``. The entropy bonus uses the Gaussian's (closed-form) entropy
    of ``u``, as the squashed entropy has none. ``predict(obs, deterministic=True)`` returns the
    squashed mean ``tanh(mu(s))``.

    **Updates.** Episodes are whole student trainings, far too long to wait for, so every
    ``n_steps`` env steps the agent updates from the partial rollout: discounted returns are
    bootstrapped with the baseline at the rollout's end (not at an episode end), the advantage
    ``G_t - b(s_t)`` is normalised over the rollout (all steps and slots), and one Adam step
    minimises ``-mean(log pi(u|s) * A) - ent_coef * entropy + vf_coef * MSE(V(s), G)``.

    **Baseline.** ``"value"`` (default): a learned critic ``V(s)`` (an MLP of the same hidden
    sizes) that sees training progress and the student's CE, so it tracks the strong time trend
    of KD rewards. ``"mean"``: an exponential running mean of the returns (no critic).

    **Discount.** ``gamma=0.99`` by default: a ~100-step horizon. With ``reward_mode=
    "val_loss_delta"`` the undiscounted return telescopes to (loss now - final loss), in which one
    update's effect is diluted; a small ``gamma`` credits an action with the drop it causes.

    **Vector envs.** On :class:`~kd_env.envs.PerSampleKDVectorEnv` one policy acts for all
    ``B`` slots (as in MTKD-RL): a step yields ``B`` samples, each with its slot's reward.

    Args:
        env: a ``gym.Env`` or a shared-episode ``VectorEnv`` (see :class:`BaseAgent`).
        seed: seeds the initialisation, the sampling RNG and the env's first reset.
        n_steps: env steps per update (a rollout holds ``n_steps * num_envs`` samples).
        gamma: discount in ``[0, 1]``.
        learning_rate: Adam's step size.
        hidden_sizes: hidden widths of the policy (and critic) MLP; empty means linear.
        ent_coef: weight of the entropy bonus (>= 0).
        vf_coef: weight of the critic's loss (``baseline="value"``).
        max_grad_norm: gradient-norm clip, or None.
        baseline: ``"value"`` or ``"mean"``.
        baseline_momentum: EMA rate of the ``"mean"`` baseline, in ``(0, 1]``.
        normalize_observations: running mean/std normalisation of observations.
        normalize_advantage: z-score advantages within each rollout.
        log_std_init: initial ``log sigma`` of the pre-squash Gaussian.
        obs_clip: clip of the normalised observations.
        observation_space, action_space: for an agent without env (see :meth:`load`).
    """

    def __init__(
        self,
        env: EnvLike | None,
        seed: int = 0,
        *,
        n_steps: int = 16,
        gamma: float = 0.99,
        learning_rate: float = 3e-3,
        hidden_sizes: Sequence[int] = (64,),
        ent_coef: float = 1e-3,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        baseline: str = "value",
        baseline_momentum: float = 0.1,
        normalize_observations: bool = True,
        normalize_advantage: bool = True,
        log_std_init: float = -0.5,
        obs_clip: float = 10.0,
        observation_space: spaces.Box | None = None,
        action_space: spaces.Box | None = None,
    ) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        hidden = list(hidden_sizes)
        if any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
            raise ValueError(f"hidden_sizes must be positive ints, got {hidden_sizes!r}")
        if baseline not in RETURN_BASELINES:
            raise ValueError(f"baseline must be one of {RETURN_BASELINES}, got {baseline!r}")
        if isinstance(baseline_momentum, bool) or not 0.0 < float(baseline_momentum) <= 1.0:
            raise ValueError(f"baseline_momentum must be in (0, 1], got {baseline_momentum!r}")
        if max_grad_norm is not None:
            self._check_positive("max_grad_norm", max_grad_norm)
        if not isinstance(log_std_init, (int, float)) or not np.isfinite(log_std_init):
            raise ValueError(f"log_std_init must be a finite number, got {log_std_init!r}")
        self.n_steps = int(n_steps)
        self.gamma = float(gamma)
        self.learning_rate = self._check_positive("learning_rate", learning_rate)
        self.hidden_sizes = [int(h) for h in hidden]
        self.ent_coef = self._check_positive("ent_coef", ent_coef, allow_zero=True)
        self.vf_coef = self._check_positive("vf_coef", vf_coef, allow_zero=True)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.baseline = baseline
        self.baseline_momentum = float(baseline_momentum)
        self.normalize_observations = bool(normalize_observations)
        self.normalize_advantage = bool(normalize_advantage)
        self.log_std_init = float(log_std_init)
        self.obs_clip = self._check_positive("obs_clip", obs_clip)
        super().__init__(env, seed, observation_space, action_space)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.policy = GaussianPolicy(self.observation_dim, self.action_dim, self.hidden_sizes, self.log_std_init)
            self.value_net = mlp(self.observation_dim, self.hidden_sizes, 1, output_gain=1.0) if baseline == "value" else None
        parameters = list(self.policy.parameters()) + ([] if self.value_net is None else list(self.value_net.parameters()))
        self.optimizer = torch.optim.Adam(parameters, lr=self.learning_rate)
        # separate streams: evaluating stochastically must not change what training samples
        self.generator = torch.Generator().manual_seed(self.seed)
        self.predict_generator = torch.Generator().manual_seed(self.seed + 1)
        self.obs_stats = RunningMeanStd(self.observation_dim)
        self.mean_baseline = 0.0
        self.mean_baseline_ready = False
        self.num_updates = 0
        low = torch.as_tensor(self.action_space.low, dtype=torch.float32)
        high = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        self._action_center, self._action_half_range = (high + low) / 2, (high - low) / 2
        self._discard_rollout()

    # ------------------------------------------------------------------ BaseAgent hooks
    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "n_steps": self.n_steps,
            "gamma": self.gamma,
            "learning_rate": self.learning_rate,
            "hidden_sizes": self.hidden_sizes,
            "ent_coef": self.ent_coef,
            "vf_coef": self.vf_coef,
            "max_grad_norm": self.max_grad_norm,
            "baseline": self.baseline,
            "baseline_momentum": self.baseline_momentum,
            "normalize_observations": self.normalize_observations,
            "normalize_advantage": self.normalize_advantage,
            "log_std_init": self.log_std_init,
            "obs_clip": self.obs_clip,
        }

    def _discard_rollout(self) -> None:
        self._rollout_observations: list[torch.Tensor] = []
        self._rollout_actions: list[torch.Tensor] = []
        self._rollout_rewards: list[torch.Tensor] = []
        self._rollout_dones: list[torch.Tensor] = []

    def _normalize(self, observation: torch.Tensor) -> torch.Tensor:
        return self.obs_stats.normalize(observation, self.obs_clip) if self.normalize_observations else observation

    def _squash(self, pre_squash: torch.Tensor) -> np.ndarray:
        action = self._action_center + self._action_half_range * torch.tanh(pre_squash)
        return action.numpy().astype(np.float32)

    def _collect_action(self, observation: np.ndarray) -> np.ndarray:
        raw = torch.from_numpy(observation)
        if self.normalize_observations:
            self.obs_stats.update(raw)
        policy_input = self._normalize(raw)
        with torch.no_grad():
            distribution = self.policy(policy_input)
            noise = torch.randn(distribution.mean.shape, generator=self.generator)
            pre_squash = distribution.mean + distribution.stddev * noise
        self._rollout_observations.append(policy_input)
        self._rollout_actions.append(pre_squash)
        return self._squash(pre_squash)

    def _collect_outcome(
        self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, next_observation: np.ndarray
    ) -> dict[str, float] | None:
        reward = torch.as_tensor(rewards, dtype=torch.float32)
        timed_out = torch.as_tensor(truncated & ~terminated)
        if timed_out.any():
            # a time limit is not a real end: credit the value of the state it cut off
            cut_values = self._baseline_values(self._normalize(torch.from_numpy(next_observation)))
            reward = reward + self.gamma * torch.where(timed_out, cut_values, torch.zeros_like(cut_values))
        self._rollout_rewards.append(reward)
        self._rollout_dones.append(torch.as_tensor(terminated | truncated, dtype=torch.float32))
        if len(self._rollout_rewards) < self.n_steps:
            return None
        return self._update(next_observation)

    @torch.no_grad()
    def _baseline_values(self, policy_input: torch.Tensor) -> torch.Tensor:
        if self.value_net is not None:
            return self.value_net(policy_input).squeeze(-1)
        return torch.full(policy_input.shape[:1], self.mean_baseline)

    def _update(self, next_observation: np.ndarray) -> dict[str, float]:
        observations = torch.stack(self._rollout_observations)  # [T, N, D]
        actions = torch.stack(self._rollout_actions)  # [T, N, A]
        rewards = torch.stack(self._rollout_rewards)  # [T, N]
        dones = torch.stack(self._rollout_dones)  # [T, N]
        self._discard_rollout()

        # returns of a partial rollout: bootstrap with the baseline unless the episode just ended
        running = self._baseline_values(self._normalize(torch.from_numpy(next_observation))) * (1.0 - dones[-1])
        returns = torch.empty_like(rewards)
        for t in range(rewards.shape[0] - 1, -1, -1):  # over time only; slots are one tensor op
            running = rewards[t] + self.gamma * (1.0 - dones[t]) * running
            returns[t] = running

        if self.value_net is not None:
            values = self.value_net(observations).squeeze(-1)
            value_loss = torch.mean((values - returns) ** 2)
            baseline = values.detach()
        else:
            if not self.mean_baseline_ready:
                self.mean_baseline, self.mean_baseline_ready = float(returns.mean()), True
            baseline = torch.full_like(returns, self.mean_baseline)
            value_loss = torch.zeros(())
        advantages = returns - baseline
        if self.normalize_advantage and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        distribution = self.policy(observations)
        log_prob = distribution.log_prob(actions).sum(-1)
        entropy = distribution.entropy().sum(-1).mean()
        policy_loss = -(log_prob * advantages).mean()
        loss = policy_loss - self.ent_coef * entropy + self.vf_coef * value_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        self.optimizer.step()
        if self.value_net is None:
            rate = self.baseline_momentum
            self.mean_baseline = (1 - rate) * self.mean_baseline + rate * float(returns.mean())
        self.num_updates += 1
        return {
            "loss": float(loss.detach()),
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "entropy": float(entropy.detach()),
            "action_std": float(self.policy.log_std.detach().exp().mean()),
            "grad_norm": float(grad_norm),
            "return_mean": float(returns.mean()),
            "baseline_mean": float(baseline.mean()),
        }

    @torch.no_grad()
    def _predict(self, observation: np.ndarray, deterministic: bool) -> np.ndarray:
        distribution = self.policy(self._normalize(torch.from_numpy(observation)))
        if deterministic:
            return self._squash(distribution.mean)
        noise = torch.randn(distribution.mean.shape, generator=self.predict_generator)
        return self._squash(distribution.mean + distribution.stddev * noise)

    def _state_dict(self) -> dict[str, Any]:
        # policy, optimizer, RNG streams and observation statistics: BaseAgent's SAVED_PARTS
        return {
            "value_net": None if self.value_net is None else self.value_net.state_dict(),
            "mean_baseline": self.mean_baseline,
            "mean_baseline_ready": self.mean_baseline_ready,
            "num_updates": self.num_updates,
            "rollout": {
                "observations": list(self._rollout_observations),
                "actions": list(self._rollout_actions),
                "rewards": list(self._rollout_rewards),
                "dones": list(self._rollout_dones),
            },
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        if self.value_net is not None:
            self.value_net.load_state_dict(state["value_net"])
        self.mean_baseline = float(state["mean_baseline"])
        self.mean_baseline_ready = bool(state["mean_baseline_ready"])
        self.num_updates = int(state["num_updates"])
        rollout = state["rollout"]
        self._rollout_observations = list(rollout["observations"])
        self._rollout_actions = list(rollout["actions"])
        self._rollout_rewards = list(rollout["rewards"])
        self._rollout_dones = list(rollout["dones"])
