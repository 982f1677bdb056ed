"""MTKD-RL (Yang et al., AAAI 2025), reproduced from the official code (``winycg/MTKD-RL``).

The agent runs on the per-sample environment
(:class:`~kd_env.envs.per_sample_env.PerSampleKDVectorEnv`, ``action_mode="raw"``): each
sample of a training batch is one decision, its observation is the official state (per teacher
``[cos, KL, CE, embedding, logits]``) and its action the teacher weights of that sample, one
simplex per head (logit KD, then feature KD). See ``reference/mtkd_rl.md`` for the official
code's state, agent, reward and update, which this module follows line by line.

Only the learned part lives here. The per-sample state, the student's loss, the weighted KD
terms and the z-scored, clipped reward are the environment's (``reward_mode="neg_loss"``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from kd_env.envs.per_sample_env import PerSampleKDVectorEnv
from kd_env.observations import CompactStates

from .base import BaseAgent, EnvLike, StepRecord

# the network, its priors and loss, and the per-sample helpers live in their own modules; these
# names stay importable from here, where they were first published
from .mtkd_rl_network import BCE_LOG_FLOOR, MTKDRLNetwork, PriorColumns, confidence_prior, reward_weighted_log_loss
from .per_sample import per_sample_env, resolve_state_layout, state_layout_of
from .row_storage import RowStorage

__all__ = [
    "BCE_LOG_FLOOR",
    "MTKDRL",
    "MTKDRLNetwork",
    "PriorColumns",
    "confidence_prior",
    "resolve_state_layout",
    "reward_weighted_log_loss",
    "state_layout_of",
]

WARMUP_MODES = ("official", "uniform", "none")

StoredStates = torch.Tensor | CompactStates
"""A stored batch of states: whole ``[B, state_dim]``, or compact (rebuilt by the env when used)."""


class MTKDRL(BaseAgent):
    """MTKD-RL's agent, **code-faithful**: it reproduces the official ``winycg/MTKD-RL`` code.

    Per sample, the agent (:class:`MTKDRLNetwork`) maps the state to two simplex weight vectors
    (logit KD, feature KD), each a mix of its learned softmax head with the confidence prior
    and the logit-gap or feature-gap prior. Actions are deterministic (no sampling, no
    exploration), as in the official code; ``predict``'s ``deterministic`` changes nothing.

    **Training loop** (:meth:`learn`), as the official ``train_loops.py: train``:

    * every ``env.step`` is one student update; the agent stores the step's states and
      per-sample rewards (on the CPU; the official code keeps them on the GPU). Where the
      teachers' outputs are kept by sample (no augmentation: the teacher-output store), a
      stored batch is its samples' indices and student-dependent columns, and the env rebuilds
      the states bit for bit when the update reads them (``compact_buffer``);
    * at each epoch end (``"val_acc"`` in the env's info), and after every ``agent_step``-th
      batch of an epoch (official ``--agent-step 1000``; a CIFAR-100 epoch has 782 batches, so
      there only the epoch end counts), the agent makes one SGD step (lr 0.1, no momentum) per
      stored batch, in order, on :func:`reward_weighted_log_loss` with the weights recomputed by
      the current agent from the stored states, and clears the buffer;
    * warm-up: in the first epoch of each training run (episode) the student trains with
      all-ones weights for both heads, i.e. the *sum* over teachers of the KD terms (K times
      AVER's scale); those states and rewards still train the agent at the end of the epoch.

    A step whose student diverged is not stored (its penalty is not the official reward); a
    run that ends mid-epoch (divergence) trains the agent on the batches it has.

    **How the warm-up is applied.** The env runs in ``action_mode="raw"``, which applies
    non-negative weights as they are, so the all-ones warm-up weights reach the loss unchanged
    (the official K-times KD scale) and the agent's simplex rows afterwards are applied as they
    are too. ``warmup="uniform"`` sends ``1/K`` instead (epoch 0 is AVER at its usual scale);
    ``warmup="none"`` uses the agent from the first step.

    **This is not a policy gradient.** The loss is ``mean_{i,k}[-r_i log w_ik]`` per head, a
    reward-weighted cross-entropy toward the all-ones target. Under the simplex constraint
    ``sum_k log w_k`` is largest at uniform weights (its gradient through a softmax head is
    proportional to ``1 - K w_k``), so the update pulls the weights of low-loss samples
    (reward > 0) toward uniform and ignores samples with above-average loss (reward clipped to
    0). No action is sampled and the reward is not tied to which teacher got the weight: there
    is no per-teacher credit assignment. ``reference/mtkd_rl.md`` section 4 and issue #2 of the
    official repository make this point; the paper describes a policy gradient. With the equal
    mix the learned head is one third of the final weights, the two priors the rest.

    Args:
        env: the per-sample env (``action_mode="raw"``; ``reward_mode="neg_loss"``, its
            default, is the paper's reward), possibly wrapped; None for a predict-only agent.
        seed: seeds the agent's initialisation (the global RNG is untouched) and the env's
            first reset.
        dynamic: learn the mixing coefficients of agent and priors (``--dynamic``). A mapping
            ``{student architecture: bool}`` chooses per student, looked up by the env's
            ``student`` (the official README reports the better setting per student; the
            ``cifar100-paper`` preset passes that choice).
        learning_rate: the agent's SGD learning rate (0.1).
        hidden: stem width (128).
        warmup: ``"official"``, ``"uniform"`` or ``"none"`` (see above).
        warmup_epochs: length of the warm-up in student epochs (1).
        agent_step: also update after every ``agent_step``-th batch of an epoch (the official
            ``batch_idx % agent_step == 0 and batch_idx != 0``); None updates at epoch ends only.
        max_buffer_batches: keep at most this many batches, dropping the oldest; None keeps all
            (the official behaviour). A bound trades fidelity for memory: whole states are
            ``batches x B x state_dim`` floats (about 340 MB for a CIFAR-100 epoch, whose
            augmentation rules compact states out).
        compact_buffer: store compact states where the env can rebuild them
            (:meth:`~kd_env.envs.per_sample_env.PerSampleKDVectorEnv.compact_states`; an
            epoch of Fashion-MNIST states: 2.2 MB instead of 101 MB). The update is the same to
            the bit; False keeps whole states, as the official code does.
        state_layout: the env's state layout (:func:`state_layout_of`); :meth:`load` passes it,
            leave it None otherwise.
        observation_space, action_space: for an agent without env (see :meth:`load`).
    """

    def __init__(
        self,
        env: EnvLike | None,
        seed: int = 0,
        *,
        dynamic: bool | Mapping[str, bool] = False,
        learning_rate: float = 0.1,
        hidden: int = 128,
        warmup: str = "official",
        warmup_epochs: int = 1,
        agent_step: int | None = 1000,
        max_buffer_batches: int | None = None,
        compact_buffer: bool = True,
        state_layout: dict[str, Any] | None = None,
        observation_space: spaces.Box | None = None,
        action_space: spaces.Box | None = None,
    ) -> None:
        if warmup not in WARMUP_MODES:
            raise ValueError(f"warmup must be one of {WARMUP_MODES}, got {warmup!r}")
        for name, value, minimum in (("warmup_epochs", warmup_epochs, 0), ("hidden", hidden, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        for name, optional in (("agent_step", agent_step), ("max_buffer_batches", max_buffer_batches)):
            if optional is not None and (isinstance(optional, bool) or not isinstance(optional, (int, np.integer)) or optional < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {optional!r}")
        if isinstance(dynamic, Mapping):
            # one preset entry for every student: the choice is made here, from the env's student
            if env is None:
                raise ValueError("dynamic as a per-student mapping needs an env to read the student from")
            student = per_sample_env(env, "MTKDRL").settings.resolved("student")
            if student not in dynamic:
                raise ValueError(f"dynamic has no entry for the env's student {student!r} (entries: {sorted(dynamic)})")
            dynamic = dynamic[student]
        self.dynamic = bool(dynamic)
        self.learning_rate = self._check_positive("learning_rate", learning_rate)
        self.hidden = int(hidden)
        self.warmup = warmup
        self.warmup_epochs = int(warmup_epochs)
        self.agent_step = None if agent_step is None else int(agent_step)
        self.max_buffer_batches = None if max_buffer_batches is None else int(max_buffer_batches)
        if not isinstance(compact_buffer, (bool, np.bool_)):  # not bool(): the string "False" is true
            raise ValueError(f"compact_buffer must be True or False, got {compact_buffer!r}")
        self.compact_buffer = bool(compact_buffer)
        self.kd_env: PerSampleKDVectorEnv | None = None
        if env is not None:
            self.kd_env = per_sample_env(env, "MTKDRL")
        layout = resolve_state_layout(None if self.kd_env is None else state_layout_of(self.kd_env), state_layout, "MTKDRL")
        super().__init__(env, seed, observation_space, action_space)
        if layout["state_dim"] != self.observation_dim or layout["heads"] * layout["num_teachers"] != self.action_dim:
            raise ValueError(
                f"state_layout (state_dim {layout['state_dim']}, {layout['heads']} x {layout['num_teachers']} "
                f"weights) does not fit the spaces ({self.observation_dim}, {self.action_dim})"
            )
        self.state_layout = layout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.policy = MTKDRLNetwork(
                layout["state_dim"],
                PriorColumns.from_dict(layout["columns"]),
                layout["num_teachers"],
                layout["heads"],
                self.dynamic,
                self.hidden,
            )
        self.policy.eval()  # no dropout or norm layers: train/eval only mirrors the official calls
        self.optimizer = torch.optim.SGD(self.policy.parameters(), lr=self.learning_rate)
        self.num_updates = 0
        self._discard_rollout()

    # ------------------------------------------------------------------ BaseAgent hooks
    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "dynamic": self.dynamic,
            "learning_rate": self.learning_rate,
            "hidden": self.hidden,
            "warmup": self.warmup,
            "warmup_epochs": self.warmup_epochs,
            "agent_step": self.agent_step,
            "max_buffer_batches": self.max_buffer_batches,
            "compact_buffer": self.compact_buffer,
            "state_layout": self.state_layout,
        }

    def _discard_rollout(self) -> None:
        self.buffer: deque[tuple[StoredStates, torch.Tensor]] = deque(maxlen=self.max_buffer_batches)
        self._pending_states: StoredStates | None = None
        self._storage = RowStorage()  # what the buffer keeps, in chunks (the module says why)
        self._epoch = 0
        self._batch_in_epoch = 0

    def _in_warmup(self) -> bool:
        return self.warmup != "none" and self._epoch < self.warmup_epochs

    def _collect_action(self, observation: np.ndarray) -> np.ndarray:
        compact = self.kd_env.compact_states(observation) if self.compact_buffer and self.kd_env is not None else None
        if compact is not None:
            keep = self._storage.keep
            self._pending_states = CompactStates(keep(compact.indices), keep(compact.student_columns), compact.digest)
        else:
            self._pending_states = self._storage.keep(torch.from_numpy(np.array(observation, dtype=np.float32)))
        if not self._in_warmup():
            return self._predict(observation, deterministic=True)
        # all-ones for both heads as the official epoch 0 (raw mode applies them as they are)
        fill = 1.0 if self.warmup == "official" else 1.0 / self.state_layout["num_teachers"]
        return np.full((observation.shape[0], self.action_dim), fill, dtype=np.float32)

    def _collect_outcome(
        self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, next_observation: np.ndarray
    ) -> dict[str, float] | None:
        assert self._pending_states is not None
        self.buffer.append((self._pending_states, self._storage.keep(torch.as_tensor(rewards, dtype=torch.float32))))
        self._pending_states = None
        return None  # the update waits for the epoch end, which only the info shows (_one_step)

    def _one_step(self) -> StepRecord:
        record = super()._one_step()
        info = record["info"]
        if bool(np.any(info.get("diverged", False))) and self.buffer:
            self.buffer.pop()  # no loss was computed: the divergence penalty is not the official reward
        epoch_end = "val_acc" in info
        # the official ``batch_idx % agent_step == 0 and batch_idx != 0``, batch_idx counted in the epoch
        step_in_epoch = self._batch_in_epoch
        mid_epoch = self.agent_step is not None and step_in_epoch > 0 and step_in_epoch % self.agent_step == 0
        ended_early = record["done"] and bool(self.buffer)  # a diverged run: its batches still count
        losses = self.train_on_buffer() if epoch_end or mid_epoch or ended_early else None
        self._batch_in_epoch += 1
        if epoch_end:
            self._epoch += 1
            self._batch_in_epoch = 0
        if record["done"]:  # the next step starts a fresh student, with its own warm-up
            self._epoch = 0
            self._batch_in_epoch = 0
        if losses is not None:
            self.last_losses = losses
            record["losses"] = losses
        return record

    # ------------------------------------------------------------------ acting and the update
    def weights(self, observation: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The agent's weights ``[B, heads, K]`` for per-sample states ``[B, state_dim]`` (no gradient)."""
        states = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        if states.dim() != 2 or states.shape[1] != self.observation_dim:
            raise ValueError(f"observation has shape {tuple(states.shape)}, expected (B, {self.observation_dim})")
        with torch.no_grad():
            return self.policy(states)

    def _predict(self, observation: np.ndarray, deterministic: bool) -> np.ndarray:
        # deterministic either way: the official agent never samples
        return self.weights(observation).flatten(1).numpy().astype(np.float32)

    def train_on_buffer(self) -> dict[str, float] | None:
        """The official ``train_agent``: one SGD step per stored batch, in order, then clear the buffer.

        Returns:
            ``{"agent_loss": mean loss over the steps, "agent_steps": steps}``, or None if the
            buffer was empty.
        """
        if not self.buffer:
            return None
        self.policy.train()
        total, steps = 0.0, 0
        for states, rewards in self._buffer_in_order():  # sequential: each step starts from the previous one's result
            loss = reward_weighted_log_loss(self.policy(states), rewards)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            steps += 1
        self.buffer.clear()
        self._storage.release()
        self.policy.eval()
        self.num_updates += 1
        return {"agent_loss": total / steps, "agent_steps": float(steps)}

    def _buffer_in_order(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The stored states and rewards, in order; compact states rebuilt by the env several
        batches per read (:meth:`~kd_env.envs.per_sample_env.PerSampleKDVectorEnv.expand_states_many`)."""
        entries = list(self.buffer)
        compacts = [stored for stored, _ in entries if isinstance(stored, CompactStates)]
        if compacts and self.kd_env is None:
            raise ValueError("the buffer holds compact states, which only their env can rebuild: load the agent with its env")
        rebuilt = self.kd_env.expand_states_many(compacts) if self.kd_env is not None and compacts else iter(())
        for stored, rewards in entries:
            yield (next(rebuilt) if isinstance(stored, CompactStates) else stored), rewards

    # ------------------------------------------------------------------ checkpoints
    def _state_dict(self) -> dict[str, Any]:
        # policy and optimizer: BaseAgent's SAVED_PARTS
        return {
            "num_updates": self.num_updates,
            "epoch": self._epoch,
            "batch_in_epoch": self._batch_in_epoch,
            "buffer_states": [stored if isinstance(stored, torch.Tensor) else stored.state_dict() for stored, _ in self.buffer],
            "buffer_rewards": [rewards for _, rewards in self.buffer],
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        self._epoch = int(state["epoch"])
        self._batch_in_epoch = int(state["batch_in_epoch"])
        stored_states = [
            stored if isinstance(stored, torch.Tensor) else CompactStates.from_state_dict(stored) for stored in state["buffer_states"]
        ]
        compacts = [stored for stored in stored_states if isinstance(stored, CompactStates)]
        if self.kd_env is not None and compacts:  # they must rebuild on this env: fail now, not at the epoch end
            for _ in self.kd_env.expand_states_many(compacts):
                pass
        self.buffer.clear()
        self.buffer.extend(zip(stored_states, state["buffer_rewards"]))
