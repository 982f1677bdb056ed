"""The reward modes, over one engine, with the state they carry between steps."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kd_env.engine import DistillationEngine, StepBatch, StepResult
from kd_env.engine.losses import mixture_label_logprob
from kd_env.envs.settings import TRAINING_LABEL_REWARDS

if TYPE_CHECKING:
    from kd_env.envs.probe import ValidationProbe


class RewardTracker:
    """The reward modes over one engine, with the state they carry between steps.

    * ``"neg_loss"``: the negative weighted training loss of the updated batch (MTKD-RL's
      reward), divided by ``log(C)`` so that a chance-level student scores about -1.
    * ``"val_loss_delta"``: the drop of the student's CE on a fixed held-out validation batch
      across the update, divided by ``log(C)``.
    * ``"val_acc"``: sparse; at each epoch end the change of validation accuracy since the last
      epoch end (the first epoch counts from chance, 1/C), so an episode's return is the final
      validation accuracy above chance.
    * ``"label_logprob"``: per sample, the log-probability that the *weighted teacher mixture*
      gives the sample's true label, ``log sum_k w_ik softmax(z_ik / T)[y_i]`` (each weight row
      renormalised to sum to one; an all-zero row, no teacher, scores chance ``1/C``), divided
      by ``log(C)``. The batch-level reward is its batch mean.
    * ``"val_label_logprob"``: the same log-probability on the validation probe's images
      (:class:`kd_env.envs.probe.ValidationProbe`, ``probe_rows`` per step), whose labels the
      policy never sees and the student never trains on: the reward of the label-free regime.
      The per-sample env adds the probe images as extra rows the policy weights; the batch env
      applies the batch's weight vector to them and pays the mean.

    Why ``"label_logprob"`` pays for teaching rather than for agreeing: ``"neg_loss"`` is the
    weighted KD loss, smallest for the teacher the student already matches, so an agent trained
    on it learns to trust that teacher whatever its quality (measured on Fashion-MNIST: the
    weakest one). ``"label_logprob"`` never looks at the student: it is largest when the weight
    sits on the teachers whose softened distribution (the target the student is distilled
    toward, at the KD temperature ``T``) puts the most mass on the correct class, so it credits
    each teacher for being right on that sample, per sample and per teacher. It is immediate
    and costs nothing extra (the teacher logits of the batch are already computed). Its limit:
    it rewards correct targets, not what the student gains from them (a teacher that is right
    but unlearnable is still trusted); the training labels it reads are the ones the student's
    own CE term uses, never the validation or test labels.

    Label regimes: ``"label_logprob"`` reads the training labels (:data:`TRAINING_LABEL_REWARDS`),
    so it is refused under ``labels="none"`` and, under ``labels="noisy"``, pays for the noisy
    labels the student is given. ``"neg_loss"`` has no CE term without labels (it is then the
    negative weighted distillation loss); the validation rewards read the validation split,
    which keeps its true labels in every regime.
    """

    def __init__(self, engine: DistillationEngine, mode: str, probe_size: int, scale: float, probe: ValidationProbe | None = None) -> None:
        if engine.config.label_free and mode in TRAINING_LABEL_REWARDS:
            raise ValueError(f"reward_mode={mode!r} reads the training labels, which the label-free regime (labels='none') withholds")
        if (mode == "val_label_logprob") != (probe is not None):
            raise ValueError("reward_mode='val_label_logprob' and the validation probe (probe_rows > 0) go together")
        self.engine = engine
        self.probe = probe
        self.mode = mode
        self.probe_size = probe_size
        self.scale = scale
        self.normaliser = math.log(engine.num_classes)
        self.last_probe_loss: float | None = None
        self.last_val_acc = 1.0 / engine.num_classes
        self._updated_batch: StepBatch | None = None

    def reset(self, episode_seed: int = 0) -> None:
        if self.probe is not None:
            self.probe.reset(episode_seed)
        self.last_val_acc = 1.0 / self.engine.num_classes
        self.last_probe_loss = self.engine.probe_loss(self.probe_size) if self.mode == "val_loss_delta" else None
        self._track_batch()

    def _track_batch(self) -> None:
        """Remember the batch the next update will train on (``"label_logprob"`` reads its labels
        and teacher logits). The engine prepares the following batch inside ``step``, before the
        reward is asked for, so the tracker keeps a reference to the prepared one: after each
        reset, after each reward, and after a checkpoint is restored."""
        self._updated_batch = self.engine.current if self.mode == "label_logprob" else None

    def batch_reward(self, result: StepResult) -> float:
        """One scalar reward for a whole update."""
        if self.mode == "neg_loss":
            return -result.loss / self.normaliser * self.scale
        if self.mode == "label_logprob":
            return float(self._label_logprob(result).mean())
        if self.mode == "val_label_logprob":
            # one weight vector for the whole update (the batch env's action), applied to the probe's images
            assert self.probe is not None
            weights = result.logit_weights[:1].expand(self.probe.rows, -1)
            return float(self.probe_rewards(weights).mean())
        return self._shared_reward(result)

    def probe_rewards(self, weights: torch.Tensor) -> torch.Tensor:
        """``[probe_rows]``: the rewards of weights ``[probe_rows, K]`` on the current probe
        images; the probe then draws the next step's images."""
        assert self.probe is not None
        rewards = self.probe.rewards(weights, self.scale)
        self.probe.draw()
        return rewards

    def sample_rewards(self, result: StepResult) -> np.ndarray:
        """One reward per sample. ``neg_loss`` uses MTKD-RL's batch normalisation: z-score within
        the batch, then clip to [0, 1]; the other modes give every sample the update's reward."""
        if self.mode == "neg_loss":
            reward = -result.per_sample_loss
            normalised = (reward - reward.mean()) / (reward.std() + 1e-8)
            return (normalised.clamp(0.0, 1.0) * self.scale).double().cpu().numpy()
        if self.mode == "label_logprob":
            return self._label_logprob(result).double().cpu().numpy()
        if self.mode == "val_label_logprob":
            raise RuntimeError("val_label_logprob pays the probe rows (probe_rewards); the per-sample env asks for those")
        return np.full(result.per_sample_loss.shape[0], self._shared_reward(result), dtype=np.float64)

    def _label_logprob(self, result: StepResult) -> torch.Tensor:
        """``[B]``: log-probability of the true label under the weighted teacher mixture, / log(C)."""
        batch = self._updated_batch
        if batch is None or batch.labels.shape[0] != result.logit_weights.shape[0]:
            raise RuntimeError("label_logprob has no record of the updated batch; reset() the env first")
        self._track_batch()  # the engine has prepared the next batch already
        mixture = mixture_label_logprob(
            result.logit_weights, batch.teacher_logits, batch.labels, self.engine.config.temperature, self.normaliser
        )
        return mixture * self.scale

    def _shared_reward(self, result: StepResult) -> float:
        if self.mode == "val_loss_delta":
            probe = self.engine.probe_loss(self.probe_size)
            assert self.last_probe_loss is not None
            reward = (self.last_probe_loss - probe) / self.normaliser
            self.last_probe_loss = probe
            return reward * self.scale
        if result.epoch_end and result.val_acc is not None:
            reward = result.val_acc - self.last_val_acc
            self.last_val_acc = result.val_acc
            return reward * self.scale
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_probe_loss": self.last_probe_loss, "last_val_acc": self.last_val_acc}
        if self.probe is not None:
            state["probe"] = self.probe.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_probe_loss = state["last_probe_loss"]
        self.last_val_acc = state["last_val_acc"]
        if self.probe is not None:
            self.probe.load_state_dict(state["probe"])
        self._track_batch()  # the env restores the engine (and its prepared batch) first
