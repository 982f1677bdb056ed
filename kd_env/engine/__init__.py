"""The distillation engine (plain PyTorch): losses, feature adapters and the weighted step."""

from kd_env.engine.adapters import FeatureAdapter, build_adapters
from kd_env.engine.engine import DistillationEngine, EngineConfig, StepBatch, StepResult
from kd_env.engine.losses import (
    feature_cosine,
    per_sample_cross_entropy,
    per_sample_entropy,
    per_sample_feature_mse,
    per_sample_kd_loss,
    weighted_teacher_loss,
    weighted_teacher_sum,
)

__all__ = [
    "DistillationEngine",
    "EngineConfig",
    "FeatureAdapter",
    "StepBatch",
    "StepResult",
    "build_adapters",
    "feature_cosine",
    "per_sample_cross_entropy",
    "per_sample_entropy",
    "per_sample_feature_mse",
    "per_sample_kd_loss",
    "weighted_teacher_loss",
    "weighted_teacher_sum",
]
