"""Per-sample teacher routing trained by a true policy gradient (issue #10).

:class:`MTKDRLPG` acts on the per-sample env (:class:`~kd_env.envs.PerSampleKDVectorEnv`, the
paper's state: per teacher ``[cos, KL, CE, embedding, logits]``). Each sample of a batch is one
decision of a contextual bandit, as in MTKD-RL; unlike the code-faithful :class:`~kd_env.agents.MTKDRL`
(a reward-weighted BCE toward all-ones), the weights are *sampled* and updated by REINFORCE, so
each teacher is credited for what its weight earned. Two networks:

* ``network="scorer"`` (registered as ``router``): :class:`TeacherScorer`, one small MLP shared
  by all teachers over each teacher's own slice of the state (cos, KL, CE, logits, and the CE's
  gap to the other teachers' mean), with a DeepSets context (the mean of all teachers' hidden
  codes), giving one score per teacher. Permuting the teachers permutes the scores, so what is
  learned is "trust the teacher whose features say it is right", the same rule for every
  teacher, which a few hundred updates suffice to find.
* ``network="mtkd"`` (registered as ``mtkd-rl-pg``): the published agent's
  :class:`~kd_env.agents.mtkd_rl.MTKDRLNetwork` (shared stem over the whole state, softmax head,
  confidence and gap priors, the mix learnable with ``dynamic=True``), whose mixed weights are
  the policy's mean: the paper's method as it describes it (a policy gradient over the agent
  and its priors' mix).

Policy: logistic-normal. ``u ~ N(log w(s), sigma^2 I)`` over the K teacher logits, weights
``softmax(u)`` (applied as they are: ``action_mode="raw"``). ``log pi(u|s)`` is the Gaussian's,
exact; ``predict(..., deterministic=True)`` gives ``w(s)`` itself. ``sigma`` follows a linear
schedule (exploration from ``sigma_start`` to ``sigma_end`` over ``sigma_decay_steps`` env steps).

Reward: ``reward_mode="label_logprob"`` (:class:`kd_env.envs.rewards.RewardTracker`), per sample,
the log-probability the weighted teacher mixture gives the true label, which pays for trusting
teachers that are right rather than the one the student agrees with.

Update: every ``n_steps`` env steps one Adam step on ``-mean(log pi(u|s) * A)``, with
``A = r - mean_batch(r)`` (the per-step batch mean is the baseline: it removes what all samples
of one update share, the student's progress included). The advantages keep the reward's scale
by default (``normalize_advantage=False``): where the teachers' label probabilities barely
differ (the ``capacity`` pool) the policy then stays near uniform weights, where they differ a
lot (``noisy``, ``specialists``) it routes. Measured on Fashion-MNIST, 2 epochs, 20k images,
seed 0 (val / test %): z-scored advantages (lr 3e-3) gave specialists 74.35 / 73.86 and
capacity 78.77 / 78.35 (AVER 79.65 / 79.52: hard routing among similar teachers costs a point);
unnormalised with lr 1e-2, 77.00 / 76.56 and 79.98 / 79.50; lr 3e-2 diverged to 57.2 / 57.6 on
specialists.

Without training labels (``labels="none"``, issue #23): ``label_logprob`` reads the training
labels and is refused. The router is paid on the **validation probe** instead
(``reward_mode="val_label_logprob"``, ``probe_rows=P``: :mod:`kd_env.envs.probe`): each step the
per-sample env appends P validation images to the batch's rows; the agent weights them from the
same label-free state as a training sample, samples its exploration noise on them only (the
batch's rows get the deterministic ``w(s)``: nothing pays for noise there, and noise there only
hurts the student), and learns from their rewards only, the log-probability the weighted
teachers give the validation label. The label is never in the observation, so the reward is not
a function of it: the policy must learn to predict which teacher is right from what it sees.
What it sees, in the suite's label-free rows (``include_embeddings=False``):

* ``network="mlp"`` (:class:`~kd_env.agents.routing_networks.TeacherMLP`), ``state_parts=
  ["performance"]``: every teacher's logits, in class order and the pool's teacher order. The
  MLP learns which teacher to trust from the pattern of the whole pool's predictions ("teacher 2
  when the pool's vote falls in teacher 2's classes"), which no per-teacher rule can express; it
  is tied to its pool. The student's columns (``"gap"``, KL to each teacher) are left out: they
  cost a student pass over the probe images, and the ablation row with them did not do better
  (README, Suite v2).
* ``network="scorer"``, ``state_parts=["performance", "agreement"]``, ``logits=3``: class-free
  columns only (each teacher's three largest logits, sorted, and how much the other teachers
  back its prediction, :func:`~kd_env.observations.teacher_agreement`), so one scorer takes any
  pool, any K: the leave-one-pool-out rows (``Pretrain(leave_one_pool_out=True)``).

``update="ppo"``: PPO's clipped surrogate instead of one REINFORCE step
(:mod:`~kd_env.agents.routing_updates`, where the update rules live).

Transfer: ``policy_path=`` starts from a saved agent's network and observation statistics;
``learn=False`` freezes it (no updates, no statistics, deterministic weights ``w(s)``), so a
policy trained over several student runs is evaluated on fresh seeds or students as it is.
``policy_path`` with ``learn=True`` fine-tunes it online instead. The state layout (teachers,
``state_parts``, ``feature_kd``, embeddings, logits) must be the one it was trained on; the
student may differ (it only changes the values of the gap columns).

Running it::

    # online: the agent learns within the one student run it weights
    kd-env train --agent router --env-arg reward_mode=label_logprob --env-arg pool=specialists
    # transfer: learn over several student runs (--total-steps > one run), then evaluate frozen
    kd-env train --agent router --env-arg reward_mode=label_logprob --total-steps 1500 --run-dir runs/tr
    kd-env train --agent router --env-arg reward_mode=label_logprob --seed 1 --env-arg student=cnn_w16 \
        --agent-arg policy_path=runs/tr/checkpoints/agent.pt --agent-arg learn=false

(``router`` and ``mtkd-rl-pg`` are registered per-sample, ``action_mode="raw"``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .base import BaseAgent, EnvLike
from .mtkd_rl_network import MTKDRLNetwork, PriorColumns
from .per_sample import per_sample_env, refuse_label_free, resolve_state_layout, routing_layout_of
from .reinforce import RunningMeanStd
from .routing_networks import TeacherMLP, TeacherScorer, TeacherSlices, logistic_normal_log_prob
from .routing_updates import RolloutUpdates

__all__ = ["MTKDRLPG", "MTKDRL_PG_DEFAULTS", "NETWORKS", "TeacherScorer", "TeacherSlices", "logistic_normal_log_prob", "routing_layout_of"]

NETWORKS = ("scorer", "mtkd", "mlp")
UPDATES = ("reinforce", "ppo")
_DEFAULT_HIDDEN = {"scorer": 32, "mtkd": 128, "mlp": 64}
#: The settings of the registered ``mtkd-rl-pg`` (MTKD-RL's network): measured on Fashion-MNIST
#: specialists (2 epochs, 20k images, seed 0, val / test %): 71.53 / 71.77 with these, 58.68 /
#: 59.61 with the scorer's defaults (unnormalised advantages, lr 1e-2, sigma 0.5 over 100 steps),
#: 63.45 / 63.89 with those and sigma 1.0 over 200; AVER 61.30 / 60.55. The dense stem over the
#: whole state needs the z-scored, smaller steps; its mix has its own rate (``mix_learning_rate``).
MTKDRL_PG_DEFAULTS: dict[str, Any] = {
    "network": "mtkd",
    "normalize_advantage": True,
    "learning_rate": 3e-3,
    "sigma_start": 1.0,
    "sigma_decay_steps": 200,
}
REWARD_BASELINES = ("batch", "running")


def _check_choices(
    network: str,
    n_steps: int,
    sigma_decay_steps: int,
    hidden: int | None,
    baseline: str,
    baseline_momentum: float,
    update: str,
    ppo_epochs: int,
) -> None:
    """Refuse a bad choice among :class:`MTKDRLPG`'s discrete and bounded arguments, naming it."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    for name, value in (("n_steps", n_steps), ("sigma_decay_steps", sigma_decay_steps), ("ppo_epochs", ppo_epochs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1):
        raise ValueError(f"hidden must be an int >= 1 or None, got {hidden!r}")
    if baseline not in REWARD_BASELINES:
        raise ValueError(f"baseline must be one of {REWARD_BASELINES}, got {baseline!r}")
    if isinstance(baseline_momentum, bool) or not isinstance(baseline_momentum, (int, float)) or not 0 < baseline_momentum <= 1:
        raise ValueError(f"baseline_momentum must be in (0, 1], got {baseline_momentum!r}")


class MTKDRLPG(RolloutUpdates, BaseAgent):
    """Per-sample teacher weights from a logistic-normal policy, trained by REINFORCE (see the module docstring).

    Args:
        env: the per-sample env (``action_mode="raw"``; ``reward_mode="label_logprob"``
            recommended), or None for a predict-only agent (then ``state_layout``).
        seed: seeds the initialisation, the sampling RNG and the env's first reset.
        network: ``"scorer"`` (:class:`TeacherScorer`), ``"mlp"`` (:class:`TeacherMLP`, one MLP
            over all teachers' rows, for one pool) or ``"mtkd"`` (:class:`MTKDRLNetwork` with priors).
        hidden: width of the scorer (32), the MLP (64) or the MTKD-RL stem (128).
        dynamic: ``network="mtkd"`` only: learn the mix of agent and priors (``--dynamic``); with
            the fixed 1/3 mix no teacher can get more than about 2/3 of the weight.
        mix_learning_rate: Adam's step size for the mix coefficients (``dynamic=True``): three
            numbers that must move by several units for the learned head to take over from the
            priors (measured on the synthetic specialists: with ``learning_rate`` for them too
            the weight on the right teacher stalled near 0.55 after 240 updates).
        n_steps: env steps per update (a rollout holds ``n_steps * B`` decisions).
        learning_rate: Adam's step size.
        sigma_start, sigma_end, sigma_decay_steps: the exploration schedule of ``sigma``
            (linear in env steps of learning, then constant). Measured (Fashion-MNIST
            specialists, 2 epochs, val %): from 1.0 over 200 steps, 77.00 (seed 0) and 67.42
            (seed 1); from 0.5 over 100 steps (the default), 79.18 and 76.38: wide early noise
            costs the student more than the exploration gains. On capacity 79.12 vs 79.98
            (AVER 79.65), within one seed's noise.
        normalize_observations: running mean/std of the inputs (shared across teachers for the
            scorer, so it stays equivariant); the MTKD-RL priors always read the raw columns.
        obs_clip: clip of the normalised inputs.
        max_grad_norm: gradient-norm clip, or None.
        baseline: ``"batch"`` (default): each step's batch-mean reward, which removes what the
            samples of one update share; with a reward every sample of an update shares
            (``val_loss_delta``, ``val_acc``) it leaves no signal at all. ``"running"``: an
            exponential running mean of the rewards over updates (rate ``baseline_momentum``),
            for those shared, batch-level rewards.
        baseline_momentum: rate of the ``"running"`` baseline, in ``(0, 1]``.
        normalize_advantage: divide the advantages by their standard deviation over the rollout.
            That makes the step size independent of how much the teachers' rewards differ: on a
            pool where they barely differ (``capacity``) it still drives the weights toward one
            teacher. ``False`` keeps the reward's own scale, so the policy moves only as far as the
            differences between teachers are large.
        update: ``"reinforce"`` (one policy-gradient step per rollout) or ``"ppo"`` (PPO's
            clipped surrogate, ``ppo_epochs`` steps per rollout; see the module docstring).
        ppo_epochs, clip_range: PPO's epochs per rollout and its ratio clip ``c``.
        tie_heads: with feature KD, send the logit head's weights to the feature head too (the
            teacher trusted for its logits is trusted for its features; ``label_logprob`` only
            credits the logit weights, so a separate feature head would only get noise).
        learn: ``False`` freezes the policy: no updates, no statistics, deterministic weights.
        policy_path: start from this saved :class:`MTKDRLPG`'s network and statistics (same state
            layout); the transfer protocol, with ``learn=False``.
        state_layout: :func:`routing_layout_of` of the env; :meth:`load` passes it.
        observation_space, action_space: for an agent without env (see :meth:`load`).
    """

    def __init__(
        self,
        env: EnvLike | None,
        seed: int = 0,
        *,
        network: str = "scorer",
        hidden: int | None = None,
        dynamic: bool = True,
        mix_learning_rate: float = 0.05,
        n_steps: int = 4,
        learning_rate: float = 1e-2,
        sigma_start: float = 0.5,
        sigma_end: float = 0.3,
        sigma_decay_steps: int = 100,
        normalize_observations: bool = True,
        obs_clip: float = 10.0,
        max_grad_norm: float | None = 1.0,
        baseline: str = "batch",
        baseline_momentum: float = 0.1,
        normalize_advantage: bool = False,
        tie_heads: bool = True,
        update: str = "reinforce",
        ppo_epochs: int = 4,
        clip_range: float = 0.2,
        learn: bool = True,
        policy_path: str | None = None,
        state_layout: dict[str, Any] | None = None,
        observation_space: spaces.Box | None = None,
        action_space: spaces.Box | None = None,
    ) -> None:
        _check_choices(network, n_steps, sigma_decay_steps, hidden, baseline, baseline_momentum, update, ppo_epochs)
        if max_grad_norm is not None:
            self._check_positive("max_grad_norm", max_grad_norm)
        self.baseline = baseline
        self.baseline_momentum = float(baseline_momentum)
        self.normalize_advantage = bool(normalize_advantage)
        self.running_baseline: float | None = None
        self.network = network
        self.hidden = int(hidden) if hidden is not None else _DEFAULT_HIDDEN[network]
        self.update = update
        self.ppo_epochs = int(ppo_epochs)
        self.clip_range = self._check_positive("clip_range", clip_range)
        self.dynamic = bool(dynamic)
        self.mix_learning_rate = self._check_positive("mix_learning_rate", mix_learning_rate)
        self.n_steps = int(n_steps)
        self.learning_rate = self._check_positive("learning_rate", learning_rate)
        self.sigma_start = self._check_positive("sigma_start", sigma_start)
        self.sigma_end = self._check_positive("sigma_end", sigma_end)
        self.sigma_decay_steps = int(sigma_decay_steps)
        self.normalize_observations = bool(normalize_observations)
        self.obs_clip = self._check_positive("obs_clip", obs_clip)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.tie_heads = bool(tie_heads)
        self.learning = bool(learn)
        self.policy_path = None if policy_path is None else str(policy_path)
        if env is not None and network == "mtkd":
            refuse_label_free(per_sample_env(env, "MTKDRLPG"), "MTKDRLPG with network='mtkd'", "each teacher's CE on the training label")
        layout = resolve_state_layout(None if env is None else routing_layout_of(per_sample_env(env, "MTKDRLPG")), state_layout, "MTKDRLPG")
        super().__init__(env, seed, observation_space, action_space)
        # the validation probe's rows follow the batch's (reward_mode="val_label_logprob"): only
        # they are paid, so only they explore and only they are learned from
        self.probe_rows = 0 if env is None else per_sample_env(env, "MTKDRLPG").probe_rows
        self.state_layout = layout
        self.num_teachers = int(layout["num_teachers"])
        self.heads = int(layout["heads"])
        if layout["state_dim"] != self.observation_dim or self.heads * self.num_teachers != self.action_dim:
            raise ValueError("state_layout does not fit the observation and action spaces")
        if self.heads == 2 and not self.tie_heads:
            raise ValueError(
                "tie_heads=False is not offered: the label_logprob reward credits the logit weights only, so an "
                "untied feature head would learn from noise"
            )
        self._build_policy()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.predict_generator = torch.Generator().manual_seed(self.seed + 1)
        self.num_updates = 0
        self.learn_steps = 0
        if self.policy_path is not None:
            self._start_from(self.policy_path)
        self._discard_rollout()

    # ------------------------------------------------------------------ the policy
    def _build_policy(self) -> None:
        """The network (seeded by the agent's seed, the global RNG untouched), its observation
        statistics and its optimizer, for the state layout in ``self.state_layout``."""
        names, teachers = self.state_layout["feature_names"], self.state_layout["teacher_names"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.network in ("scorer", "mlp"):
                self.slices: TeacherSlices | None = TeacherSlices(names, teachers)
                self.policy: nn.Module = (
                    TeacherScorer(self.slices.row_size, self.hidden)
                    if self.network == "scorer"
                    else TeacherMLP(self.num_teachers, self.slices.row_size, self.hidden)
                )
                # one set of statistics for every teacher's row: the scorer stays equivariant
                self.obs_stats = RunningMeanStd(self.slices.row_size)
            else:
                self.slices = None
                columns = PriorColumns.from_feature_names(names, teachers, feature_kd=False)
                # one head: tied heads share the logit head's weights (see tie_heads)
                self.policy = MTKDRLNetwork(self.observation_dim, columns, self.num_teachers, 1, self.dynamic, self.hidden)
                self.obs_stats = RunningMeanStd(self.observation_dim)
        # the mix coefficients get their own step size (see mix_learning_rate)
        mix = [p for name, p in self.policy.named_parameters() if name.endswith("_mix")]
        rest = [p for name, p in self.policy.named_parameters() if not name.endswith("_mix")]
        groups: list[dict[str, Any]] = [{"params": rest, "lr": self.learning_rate}]
        if mix:
            groups.append({"params": mix, "lr": self.mix_learning_rate})
        self.optimizer = torch.optim.Adam(groups)

    def _start_from(self, path: str) -> None:
        """Copy a saved agent's network and observation statistics (the transfer protocol)."""
        source = MTKDRLPG.load(Path(path))
        if source.network != self.network or source.hidden != self.hidden or source.dynamic != self.dynamic:
            raise ValueError(
                f"{path} holds a {source.network} network (hidden {source.hidden}, dynamic {source.dynamic}); "
                f"this agent is {self.network} (hidden {self.hidden}, dynamic {self.dynamic})"
            )
        if source.state_layout != self.state_layout and not self._rows_alike(source):
            raise ValueError(f"{path} was trained on another state layout (teachers or state options differ)")
        self.policy.load_state_dict(source.policy.state_dict())
        self.obs_stats.load_state_dict(source.obs_stats.state_dict())

    def _rows_alike(self, source: MTKDRLPG) -> bool:
        """Whether ``source``'s scorer reads teacher rows of the same columns as this agent's:
        the scorer is shared across teachers, so it takes another pool (other teachers, another
        K) as long as each teacher's row has the same columns (leave-one-pool-out transfer)."""
        mine, theirs = self.slices, source.slices
        return (
            self.network == "scorer"
            and mine is not None
            and theirs is not None
            and (mine.scalars, mine.num_logits, mine.row_size) == (theirs.scalars, theirs.num_logits, theirs.row_size)
            and self.heads == source.heads
        )

    def _inputs(self, states: torch.Tensor) -> torch.Tensor:
        """What the network reads: per-teacher rows (scorer) or the whole state, normalised."""
        features = self.slices.rows(states) if self.slices is not None else states
        if not self.normalize_observations:
            return features
        flat = features.reshape(-1, features.shape[-1])
        return self.obs_stats.normalize(flat, self.obs_clip).reshape(features.shape)

    def _update_statistics(self, states: torch.Tensor) -> None:
        if self.normalize_observations:
            features = self.slices.rows(states) if self.slices is not None else states
            self.obs_stats.update(features.reshape(-1, features.shape[-1]))

    def mean_log_weights(self, states: torch.Tensor) -> torch.Tensor:
        """The policy's mean ``log w(s)`` ``[N, K]`` for raw states ``[N, D]`` (with gradient)."""
        return self._mean_from(self._inputs(states), states)

    def _mean_from(self, inputs: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        """``log w(s)`` from the network's (normalised) inputs; the MTKD-RL priors also read the
        raw ``states`` (unused, and may be None, for the scorer)."""
        if self.slices is not None:
            return torch.log_softmax(self.policy(inputs), dim=-1)
        network = self.policy
        assert isinstance(network, MTKDRLNetwork)
        assert states is not None
        agent = torch.softmax(network.logit_head(network.stem(inputs)), dim=-1)
        priors = network.priors(states)  # the priors read the raw CE and KL columns
        mix = network._mix(network.logit_mix).to(states)
        weights = mix[0] * agent + mix[1] * priors["confidence"] + mix[2] * priors["logit_gap"]
        return torch.log(weights.clamp_min(1e-12))

    def weights(self, observation: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The deterministic weights ``w(s)`` ``[N, K]`` (no gradient)."""
        states = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        with torch.no_grad():
            return self.mean_log_weights(states).exp()

    def sigma(self) -> float:
        """The exploration scale now (linear schedule over the env steps spent learning)."""
        fraction = min(1.0, self.learn_steps / self.sigma_decay_steps)
        return self.sigma_start + fraction * (self.sigma_end - self.sigma_start)

    def _to_action(self, weights: torch.Tensor) -> np.ndarray:
        action = weights.repeat(1, self.heads) if self.heads == 2 else weights
        return action.numpy().astype(np.float32)

    # ------------------------------------------------------------------ BaseAgent hooks
    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "hidden": self.hidden,
            "dynamic": self.dynamic,
            "mix_learning_rate": self.mix_learning_rate,
            "n_steps": self.n_steps,
            "learning_rate": self.learning_rate,
            "sigma_start": self.sigma_start,
            "sigma_end": self.sigma_end,
            "sigma_decay_steps": self.sigma_decay_steps,
            "normalize_observations": self.normalize_observations,
            "obs_clip": self.obs_clip,
            "max_grad_norm": self.max_grad_norm,
            "baseline": self.baseline,
            "baseline_momentum": self.baseline_momentum,
            "normalize_advantage": self.normalize_advantage,
            "tie_heads": self.tie_heads,
            "update": self.update,
            "ppo_epochs": self.ppo_epochs,
            "clip_range": self.clip_range,
            "learn": self.learning,
            # the network is in the checkpoint itself: loading must not need the source file
            "policy_path": None,
            "state_layout": self.state_layout,
        }

    def _discard_rollout(self) -> None:
        # the network's inputs as the policy saw them when it acted (normalised with the
        # statistics of that moment), and the raw states the MTKD-RL priors read (mtkd only)
        self._rollout_inputs: list[torch.Tensor] = []
        self._rollout_raw: list[torch.Tensor] = []
        self._rollout_samples: list[torch.Tensor] = []
        self._rollout_sigmas: list[float] = []
        self._rollout_rewards: list[torch.Tensor] = []

    def _collect_action(self, observation: np.ndarray) -> np.ndarray:
        # the env hands a fresh array each step (BaseAgent makes it float32): no copy needed
        states = torch.from_numpy(np.asarray(observation, dtype=np.float32))
        if not self.learning:
            return self._to_action(self.weights(states))
        self._update_statistics(states)
        sigma = self.sigma()
        inputs = self._inputs(states)
        raw = None if self.slices is not None else states
        with torch.no_grad():
            mean = self._mean_from(inputs, raw)
        # the rows that are paid (all, or the validation probe's) explore and are learned from;
        # the batch's rows then get the policy's deterministic weights (nothing pays for noise there)
        paid = slice(mean.shape[0] - self.probe_rows, None) if self.probe_rows else slice(None)
        noise = torch.randn(mean[paid].shape, generator=self.generator)
        sample = mean[paid] + sigma * noise
        self._rollout_inputs.append(inputs[paid])
        if raw is not None:
            self._rollout_raw.append(raw[paid])
        self._rollout_samples.append(sample)
        self._rollout_sigmas.append(sigma)
        weights = torch.softmax(sample, dim=-1)
        if self.probe_rows:
            weights = torch.cat([mean[: mean.shape[0] - self.probe_rows].exp(), weights])
        return self._to_action(weights)

    def _collect_outcome(
        self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, next_observation: np.ndarray
    ) -> dict[str, float] | None:
        if not self.learning:
            return None
        self.learn_steps += 1
        paid = rewards[len(rewards) - self.probe_rows :] if self.probe_rows else rewards
        self._rollout_rewards.append(torch.as_tensor(paid, dtype=torch.float32))
        if len(self._rollout_rewards) < self.n_steps:
            return None
        return self._update()

    def _predict(self, observation: np.ndarray, deterministic: bool) -> np.ndarray:
        states = torch.from_numpy(observation)
        if deterministic:
            return self._to_action(self.weights(states))
        with torch.no_grad():
            mean = self.mean_log_weights(states)
            sample = mean + self.sigma() * torch.randn(mean.shape, generator=self.predict_generator)
        return self._to_action(torch.softmax(sample, dim=-1))

    # ------------------------------------------------------------------ checkpoints
    def _state_dict(self) -> dict[str, Any]:
        return {
            "num_updates": self.num_updates,
            "learn_steps": self.learn_steps,
            "running_baseline": self.running_baseline,
            "rollout": {
                "inputs": list(self._rollout_inputs),
                "raw": list(self._rollout_raw),
                "samples": list(self._rollout_samples),
                "sigmas": list(self._rollout_sigmas),
                "rewards": list(self._rollout_rewards),
            },
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        self.learn_steps = int(state["learn_steps"])
        baseline = state["running_baseline"]
        self.running_baseline = None if baseline is None else float(baseline)
        rollout = state["rollout"]
        self._rollout_inputs = list(rollout["inputs"])
        self._rollout_raw = list(rollout["raw"])
        self._rollout_samples = list(rollout["samples"])
        self._rollout_sigmas = [float(s) for s in rollout["sigmas"]]
        self._rollout_rewards = list(rollout["rewards"])
