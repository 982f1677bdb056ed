"""How the routers learn from a rollout: one REINFORCE step, or PPO's clipped surrogate.

:class:`RolloutUpdates` is the update half of :class:`~kd_env.agents.mtkd_rl_pg.MTKDRLPG` (the
agent collects the rollout: states as the network saw them, sampled logits, the ``sigma`` of
each step, the rewards of the paid rows; this turns it into gradient steps):

* the advantage ``A = r - b``: ``b`` the per-step batch mean (``baseline="batch"``: it removes
  what all samples of one update share) or a running mean over updates (``"running"``), divided
  by its standard deviation with ``normalize_advantage=True``;
* ``update="reinforce"``: one Adam step on ``-mean(log pi(u|s) A)``, the policy's exact
  logistic-normal log-probability;
* ``update="ppo"``: PPO's clipped surrogate (Schulman et al. 2017), ``ppo_epochs`` full-batch
  steps on the rollout. Each decision is a one-step episode of a contextual bandit, so there is
  no critic and no GAE (the advantage is the reward less the baseline). With the validation
  probe's rewards and z-scored advantages, PPO (lr 3e-3, 4 epochs) beat REINFORCE on the tuning
  seeds (Fashion-MNIST specialists without labels, seeds 100-101: 76% vs 50% of the oracle's gain
  over AVER); the suite reports both (README, Suite v2).
"""

from __future__ import annotations

import torch
from torch import nn

from .routing_networks import logistic_normal_log_prob

__all__ = ["RolloutUpdates"]


class RolloutUpdates:
    """The update rules over the agent's rollout (see the module docstring); the agent provides
    the network's forward pass (:meth:`_mean_from`) and the attributes annotated here."""

    policy: nn.Module
    optimizer: torch.optim.Optimizer
    baseline: str
    baseline_momentum: float
    running_baseline: float | None
    normalize_advantage: bool
    max_grad_norm: float | None
    update: str
    ppo_epochs: int
    clip_range: float
    num_updates: int
    _rollout_inputs: list[torch.Tensor]
    _rollout_raw: list[torch.Tensor]
    _rollout_samples: list[torch.Tensor]
    _rollout_sigmas: list[float]
    _rollout_rewards: list[torch.Tensor]

    def _mean_from(self, inputs: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError  # the agent's network

    def _discard_rollout(self) -> None:
        raise NotImplementedError  # the agent's rollout buffers

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``A = r - b`` ``[T, B]`` (``b``: the per-step batch mean, or the running mean with
        ``baseline="running"``), divided by its standard deviation over the rollout with
        ``normalize_advantage=True``."""
        if self.baseline == "batch":
            advantages = rewards - rewards.mean(dim=1, keepdim=True)
        else:
            reference = float(rewards.mean()) if self.running_baseline is None else self.running_baseline
            advantages = rewards - reference
        if self.normalize_advantage and advantages.numel() > 1:
            advantages = advantages / (advantages.std() + 1e-8)
        return advantages

    def policy_loss(
        self, mean: torch.Tensor, samples: torch.Tensor, sigmas: torch.Tensor, rewards: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """REINFORCE's loss over a rollout, and its advantages.

        Args:
            mean: ``[T, B, K]`` the policy's mean ``log w(s)`` (with gradient) on the rollout's
                states; samples: ``[T, B, K]`` the sampled logits ``u``; sigmas: ``[T]`` the
                ``sigma`` each step was sampled with; rewards: ``[T, B]``.

        Returns:
            ``-mean(log pi(u|s) * A)`` with ``A`` from :meth:`advantages`, and ``A``.
        """
        advantages = self.advantages(rewards)
        log_prob = logistic_normal_log_prob(samples, mean, sigmas.view(-1, 1, 1))
        return -(log_prob * advantages).mean(), advantages

    def _gradient_step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        self.optimizer.step()
        return float(grad_norm)

    def _update(self) -> dict[str, float]:
        inputs = torch.cat(self._rollout_inputs)  # [T * B, ...]: one forward pass for the rollout
        raw = torch.cat(self._rollout_raw) if self._rollout_raw else None
        samples = torch.stack(self._rollout_samples)
        sigmas = torch.tensor(self._rollout_sigmas, dtype=torch.float32)
        rewards = torch.stack(self._rollout_rewards)
        self._discard_rollout()
        mean = self._mean_from(inputs, raw).reshape(samples.shape)
        if self.update == "reinforce":
            loss, _ = self.policy_loss(mean, samples, sigmas, rewards)
            grad_norm = self._gradient_step(loss)
        else:
            loss, grad_norm = self._ppo_epochs(mean, inputs, raw, samples, sigmas, rewards)
        if self.baseline == "running":  # updated after use: the baseline must not see these rewards' actions
            mean_reward = float(rewards.mean())
            previous = mean_reward if self.running_baseline is None else self.running_baseline
            self.running_baseline = (1 - self.baseline_momentum) * previous + self.baseline_momentum * mean_reward
        self.num_updates += 1
        # the largest weight of the rollout's last step before this update (no extra forward pass)
        top_weight = mean[-1].detach().exp().max(dim=-1).values.mean()
        return {
            "policy_loss": float(loss.detach()),
            "reward_mean": float(rewards.mean()),
            "sigma": float(sigmas[-1]),
            "grad_norm": grad_norm,
            "top_weight": float(top_weight),
        }

    def ppo_loss(
        self, mean: torch.Tensor, samples: torch.Tensor, sigma: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor
    ) -> torch.Tensor:
        """PPO's clipped surrogate, ``-mean(min(rho A, clip(rho, 1 - c, 1 + c) A))`` with
        ``rho = pi(u|s) / pi_old(u|s)``: a decision whose ratio has left the clip range in the
        direction its advantage pushes contributes no gradient."""
        ratio = torch.exp(logistic_normal_log_prob(samples, mean, sigma) - old_log_prob)
        clipped = ratio.clamp(1.0 - self.clip_range, 1.0 + self.clip_range)
        return -torch.minimum(ratio * advantages, clipped * advantages).mean()

    def _ppo_epochs(
        self,
        mean: torch.Tensor,
        inputs: torch.Tensor,
        raw: torch.Tensor | None,
        samples: torch.Tensor,
        sigmas: torch.Tensor,
        rewards: torch.Tensor,
    ) -> tuple[torch.Tensor, float]:
        """PPO's clipped surrogate (Schulman et al. 2017) over the rollout, ``ppo_epochs`` full-batch
        steps. Each decision is a one-step episode of a contextual bandit, so the advantage is
        the reward less the baseline (no critic, no GAE: there is no later reward to bootstrap)."""
        advantages = self.advantages(rewards)
        sigma = sigmas.view(-1, 1, 1)
        # the policy acted with these parameters: the rollout is collected between updates
        old_log_prob = logistic_normal_log_prob(samples, mean.detach(), sigma)
        loss, grad_norm = mean.new_zeros(()), 0.0
        for epoch in range(self.ppo_epochs):
            if epoch:
                mean = self._mean_from(inputs, raw).reshape(samples.shape)
            loss = self.ppo_loss(mean, samples, sigma, old_log_prob, advantages)
            grad_norm = self._gradient_step(loss)
        return loss, grad_norm
