"""The reward modes, over one engine, with the state they carry between steps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kd_env.engine import DistillationEngine, StepResult


class RewardTracker:
    """The three reward modes over one engine, with the state they carry between steps.

    * ``"neg_loss"``: the negative weighted training loss of the updated batch (MTKD-RL's
      reward), divided by ``log(C)`` so that a chance-level student scores about -1.
    * ``"val_loss_delta"``: the drop of the student's CE on a fixed held-out validation batch
      across the update, divided by ``log(C)``.
    * ``"val_acc"``: sparse; at each epoch end the change of validation accuracy since the last
      epoch end (the first epoch counts from chance, 1/C), so an episode's return is the final
      validation accuracy above chance.
    """

    def __init__(self, engine: DistillationEngine, mode: str, probe_size: int, scale: float) -> None:
        self.engine = engine
        self.mode = mode
        self.probe_size = probe_size
        self.scale = scale
        self.normaliser = math.log(engine.num_classes)
        self.last_probe_loss: float | None = None
        self.last_val_acc = 1.0 / engine.num_classes

    def reset(self) -> None:
        self.last_val_acc = 1.0 / self.engine.num_classes
        self.last_probe_loss = self.engine.probe_loss(self.probe_size) if self.mode == "val_loss_delta" else None

    def batch_reward(self, result: StepResult) -> float:
        """One scalar reward for a whole update."""
        if self.mode == "neg_loss":
            return -result.loss / self.normaliser * self.scale
        return self._shared_reward(result)

    def sample_rewards(self, result: StepResult) -> np.ndarray:
        """One reward per sample. ``neg_loss`` uses MTKD-RL's batch normalisation: z-score within
        the batch, then clip to [0, 1]; the other modes give every sample the update's reward."""
        if self.mode == "neg_loss":
            reward = -result.per_sample_loss
            normalised = (reward - reward.mean()) / (reward.std() + 1e-8)
            return (normalised.clamp(0.0, 1.0) * self.scale).double().cpu().numpy()
        return np.full(result.per_sample_loss.shape[0], self._shared_reward(result), dtype=np.float64)

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
        return {"last_probe_loss": self.last_probe_loss, "last_val_acc": self.last_val_acc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_probe_loss = state["last_probe_loss"]
        self.last_val_acc = state["last_val_acc"]
