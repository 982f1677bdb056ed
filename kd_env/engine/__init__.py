"""The distillation engine (plain PyTorch): losses, feature adapters and the weighted step.

* :mod:`~kd_env.engine.engine`: :class:`DistillationEngine`, the episode, one weighted step at a time;
* :mod:`~kd_env.engine.teacher_source`: :class:`TeacherOutputSource`, the teachers' outputs (per
  batch, or once: store / memory);
* :mod:`~kd_env.engine.step`: the step's arithmetic (the prepared batch, the weighted loss);
* :mod:`~kd_env.engine.saved_state`: the engine's checkpoint state (``state_dict`` / ``load_state_dict``);
* :mod:`~kd_env.engine.config`: :class:`EngineConfig`, the student's hyperparameters;
* :mod:`~kd_env.engine.batch`: :class:`StepBatch` (the prepared batch), :class:`StepResult`;
* :mod:`~kd_env.engine.losses`, :mod:`~kd_env.engine.adapters`: the per-sample losses, the
  feature adapters;
* :mod:`~kd_env.engine.rollback`: snapshot and rollback of an update, finiteness checks;
* :mod:`~kd_env.engine.modes`: the torch modes the student trains in, whatever the caller's;
* :mod:`~kd_env.engine.evaluation`: accuracy and loss on a split.
"""

from kd_env.engine.adapters import FeatureAdapter, build_adapters
from kd_env.engine.batch import LABEL_FIELDS, StepBatch, StepResult, TrainingLabelsHidden
from kd_env.engine.config import EngineConfig
from kd_env.engine.engine import DistillationEngine
from kd_env.engine.losses import (
    feature_cosine,
    per_sample_cross_entropy,
    per_sample_entropy,
    per_sample_feature_mse,
    per_sample_kd_loss,
    weighted_teacher_loss,
    weighted_teacher_sum,
)
from kd_env.engine.teacher_source import TeacherOutputSource

__all__ = [
    "DistillationEngine",
    "EngineConfig",
    "LABEL_FIELDS",
    "FeatureAdapter",
    "StepBatch",
    "StepResult",
    "TeacherOutputSource",
    "TrainingLabelsHidden",
    "build_adapters",
    "feature_cosine",
    "per_sample_cross_entropy",
    "per_sample_entropy",
    "per_sample_feature_mse",
    "per_sample_kd_loss",
    "weighted_teacher_loss",
    "weighted_teacher_sum",
]
