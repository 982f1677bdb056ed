"""Classic multi-teacher KD baselines (installed as ``kd_env.baselines``).

``rules`` holds the teacher-weighting rules as pure tensor functions; policy classes that wrap
them in the ``predict`` protocol live in sibling modules.
"""

from .rules import (
    aekd_weights,
    aver_weights,
    best_teacher_weights,
    camkd_weights,
    capped_simplex_min_norm,
    ebkd_weights,
    kd_scale_for,
    project_capped_simplex,
    random_dirichlet_weights,
)

__all__ = [
    "aekd_weights",
    "aver_weights",
    "best_teacher_weights",
    "camkd_weights",
    "capped_simplex_min_norm",
    "ebkd_weights",
    "kd_scale_for",
    "project_capped_simplex",
    "random_dirichlet_weights",
]
