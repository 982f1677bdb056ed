"""Classic multi-teacher KD baselines, installed as ``kd_env.baselines``.

The source lives in the repository's top-level ``baselines/`` folder and ``setup.cfg``'s
``package_dir`` installs it under ``kd_env``: import it as ``kd_env.baselines``, never as
``baselines`` (that name resolves only from the repository root, and on PyPI it is OpenAI
Baselines'). Modules:

* ``rules``: the teacher-weighting rules as pure tensor functions;
* ``base``: :class:`BaselinePolicy`, the core that drives a rule through an environment with
  SB3's ``predict`` protocol (reads the env's prepared batch; action modes; checkpoints);
* ``policies``: the rules as policies (``make_baseline("camkd", env)``, ``BASELINE_POLICIES``), plus two
  reference policies: the label-aware ``Oracle`` and ``NoKD`` (no distillation);
* ``mmkd``: MMKD, a learned baseline (meta-learned weight networks trained inside the run, on
  the per-sample env); its weight networks and hard buffer are in ``mmkd_networks``, its meta
  step in ``mmkd_meta``.
"""

from .mmkd import MMKD
from .policies import (
    AEKD,
    AVER,
    BASELINE_POLICIES,
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
    "BASELINE_POLICIES",
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
