"""Classic multi-teacher KD baselines (installed as ``kd_env.baselines``).

``rules`` holds the teacher-weighting rules as pure tensor functions; ``policies`` wraps them
as policies with SB3's ``predict`` protocol, driven through the environments like the agents
(``make_baseline("camkd", env)``, ``BASELINES``), plus two reference policies: the label-aware
``Oracle`` and ``NoKD`` (no distillation). ``mmkd`` holds MMKD, a learned baseline (meta-learned
weight networks trained inside the run, on the per-sample env).
"""

from .mmkd import MMKD
from .policies import (
    AEKD,
    AVER,
    BASELINES,
    CAMKD,
    EBKD,
    BaselinePolicy,
    BestTeacher,
    NoKD,
    Oracle,
    RandomDirichlet,
    load_baseline,
    make_baseline,
    published_kd_scale,
)
from .rules import (
    aekd_weights,
    aver_weights,
    best_teacher_weights,
    camkd_weights,
    camkd_weights_from_ce,
    capped_simplex_min_norm,
    class_accuracies,
    ebkd_weights,
    kd_scale_for,
    no_kd_weights,
    oracle_weights,
    project_capped_simplex,
    random_dirichlet_weights,
)

__all__ = [
    "AEKD",
    "AVER",
    "BASELINES",
    "CAMKD",
    "EBKD",
    "MMKD",
    "BaselinePolicy",
    "BestTeacher",
    "NoKD",
    "Oracle",
    "RandomDirichlet",
    "aekd_weights",
    "aver_weights",
    "best_teacher_weights",
    "camkd_weights",
    "camkd_weights_from_ce",
    "capped_simplex_min_norm",
    "class_accuracies",
    "ebkd_weights",
    "kd_scale_for",
    "load_baseline",
    "make_baseline",
    "no_kd_weights",
    "oracle_weights",
    "project_capped_simplex",
    "published_kd_scale",
    "random_dirichlet_weights",
]
