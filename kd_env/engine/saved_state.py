"""The engine's checkpoint state: what :meth:`state_dict` saves and :meth:`load_state_dict` restores.

:class:`EngineSavedState` is a mixin of :class:`~kd_env.engine.engine.DistillationEngine`: models,
optimizer, schedule, the epoch's data order, the counters, the selection state and the RNG
streams, everything needed to continue a run exactly (the prepared batch is rebuilt as it was).
It names the engine attributes it reads and writes; the engine defines them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kd_env.engine.batch import StepBatch
from kd_env.engine.config import EngineConfig
from kd_env.engine.modes import entry_point
from kd_env.engine.rollback import frozen_batchnorm
from kd_env.models import KDModel

#: the configuration entries a checkpoint must share with the engine that loads it
MATCHING_CONFIG = ("batch_size", "epochs", "feature_kd", "max_steps_per_epoch")


class EngineSavedState:
    """:meth:`state_dict` and :meth:`load_state_dict` of the distillation engine."""

    config: EngineConfig
    teacher_names: list[str]
    device: torch.device
    student: KDModel | None
    adapters: nn.ModuleList | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    generator: torch.Generator
    epoch: int
    global_step: int
    step_in_epoch: int
    best_val_acc: float
    best_score: float
    best_epoch: int
    best_student_state: dict[str, torch.Tensor] | None
    last_val_acc: float | None
    last_test_acc: float | None
    current: StepBatch | None
    _epoch_batches: list[torch.Tensor]
    _generator_state_at_prepare: torch.Tensor

    # defined by the engine
    def reset(self, seed: int) -> StepBatch:
        raise NotImplementedError

    def _prepare(self) -> StepBatch:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: models, optimizer, schedule, data order, RNG."""
        if self.student is None or self.adapters is None:
            raise RuntimeError("nothing to save: call reset(seed) first")
        return {
            "config": self.config.to_dict(),
            "teacher_names": self.teacher_names,
            "student": self.student.state_dict(),
            "adapters": self.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator_state": self._generator_state_at_prepare,
            # one [steps, B] tensor; with a last, partial batch (drop_last=False) the order
            # concatenated and the batch sizes
            **(
                {"epoch_batches": torch.stack(self._epoch_batches).cpu()}
                if len({len(b) for b in self._epoch_batches}) <= 1
                else {
                    "epoch_batches": torch.cat(self._epoch_batches).cpu(),
                    "epoch_batch_sizes": [len(b) for b in self._epoch_batches],
                }
            ),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "best_val_acc": self.best_val_acc,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_student_state": self.best_student_state,
            "last_val_acc": self.last_val_acc,
            "last_test_acc": self.last_test_acc,
            "torch_rng_state": torch.get_rng_state(),
        }

    def check_compatible(self, state: dict[str, Any]) -> None:
        """Refuse a :meth:`state_dict` made by an engine with other teachers or settings."""
        if list(state.get("teacher_names", [])) != self.teacher_names:
            raise ValueError(f"checkpoint was made with teachers {state.get('teacher_names')}, this engine has {self.teacher_names}")
        for key in MATCHING_CONFIG:
            if state["config"].get(key) != getattr(self.config, key):
                raise ValueError(f"checkpoint has {key}={state['config'].get(key)!r}, this engine has {getattr(self.config, key)!r}")
        saved_drop_last = state["config"].get("drop_last", True)  # absent from checkpoints before the option
        if saved_drop_last != self.config.drop_last:
            raise ValueError(f"checkpoint has drop_last={saved_drop_last!r}, this engine has {self.config.drop_last!r}")
        for key, default in (("augment_views", None), ("views_seed", 0)):  # absent from checkpoints before views
            saved = state["config"].get(key, default)
            if saved != getattr(self.config, key):
                raise ValueError(
                    f"checkpoint has {key}={saved!r}, this engine has {getattr(self.config, key)!r}: a run never mixes the views of two stores"
                )
        saved_label_free = state["config"].get("label_free", False)  # absent from checkpoints before the label regimes
        if saved_label_free != self.config.label_free:
            raise ValueError(f"checkpoint has label_free={saved_label_free!r}, this engine has {self.config.label_free!r}")

    @entry_point
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the prepared batch is rebuilt exactly as it was."""
        self.check_compatible(state)
        self.reset(seed=0)  # builds student, adapters, optimizer, schedule of the right shapes
        assert self.student is not None and self.adapters is not None
        self.student.load_state_dict(state["student"])
        self.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_score = float(state.get("best_score", state["best_val_acc"]))  # older checkpoints: val
        self.best_epoch = int(state["best_epoch"])
        self.best_student_state = state["best_student_state"]
        self.last_val_acc, self.last_test_acc = state["last_val_acc"], state["last_test_acc"]
        if "epoch_batch_sizes" in state:  # a last, partial batch (drop_last=False)
            self._epoch_batches = list(state["epoch_batches"].to(self.device).split(list(state["epoch_batch_sizes"])))
        else:
            self._epoch_batches = list(state["epoch_batches"].to(self.device).unbind(0))
        self.generator.set_state(state["generator_state"])
        torch.set_rng_state(state["torch_rng_state"])
        if self.done:
            self.current = None
            return
        # the saved BN statistics already include the prepared batch's forward: keep them as saved
        with frozen_batchnorm(self.student, self.adapters):
            self.current = self._prepare()
