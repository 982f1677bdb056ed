"""Benchmark presets: which methods run on which scenarios, students and seeds.

A :class:`Preset` is a grid: scenarios (teacher pools) x students x methods x seeds, all on one
env id with the same budget. Every method trains one student per cell through the same runner
and env as ``kd-env train``; at a given seed every method starts from the same student
initialisation and data order (paired by seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kd_env.teachers.recipes import TeacherRecipe

FMNIST_ID = "MultiTeacherKD-FashionMNIST-v0"
SYNTHETIC_ID = "MultiTeacherKD-Synthetic-v0"


@dataclass(frozen=True)
class Pretrain:
    """The transfer protocol: the method's policy is first trained over ``student_runs`` whole
    student runs at ``seed`` (never an evaluation seed), saved, then evaluated frozen (no
    learning, its deterministic weights) at every seed of the preset.

    ``env_kwargs`` override the evaluation's env arguments for the training (e.g. train with one
    student, evaluate with an architecture the policy never saw).
    """

    student_runs: int = 3
    seed: int = 1000
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    leave_one_pool_out: bool = False
    """Train on every *other* scenario of the preset instead of the evaluated one, in the preset's
    order, ``student_runs`` runs each, the policy carried from one pool to the next; evaluate it
    frozen on the held-out pool (a pool it never saw). Needs a policy that takes any pool (the
    router's shared scorer) and at least two scenarios."""


@dataclass(frozen=True)
class Method:
    """One row of the results table.

    Args:
        label: the name shown in tables and plots.
        agent: a registered policy name (``kd-env train --agent``).
        per_sample: run on the per-sample env.
        env_kwargs: env arguments of this method (on top of the preset's).
        agent_kwargs: the agent's or rule's keyword arguments.
        reference: a reference (oracle, equal weights, best teacher, no KD) rather than a competitor.
        pretrain: evaluate a policy trained beforehand and frozen (:class:`Pretrain`) instead of
            one that learns within the run (online).
        student_env_kwargs: env arguments per student (``{student: {argument: value}}``), over ``env_kwargs``.
    """

    label: str
    agent: str
    per_sample: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    reference: bool = False
    pretrain: Pretrain | None = None
    aggregate: bool = True
    """Part of the normalised-score statistics (False for rows on another student than the
    preset's: their accuracy is on another scale than AVER's and the oracle's)."""
    student_env_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Env arguments per student architecture, on top of ``env_kwargs`` for the runs of that
    student (a setting an author's script chooses per student: the CA-MKD and MMKD scripts train
    MobileNetV2 and ShuffleV2 at lr 0.01). Keys must be students of the preset."""


@dataclass(frozen=True)
class InlinePool:
    """A teacher pool declared by an experiment (a scenario of its own): recipes trained and cached
    like the built-in pools', or checkpoint files. Registered (:func:`kd_env.register_pool`) under
    its scenario name wherever the experiment's runs go."""

    recipes: tuple[TeacherRecipe, ...] | None = None
    paths: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if (self.recipes is None) == (self.paths is None):
            raise ValueError("an inline pool needs exactly one of recipes or paths")
        if not (self.recipes or self.paths):
            raise ValueError("an inline pool needs at least one teacher")


@dataclass(frozen=True)
class Tuning:
    """An experiment's ``tune:`` section (issue #28): what ``kd-env tune --spec FILE`` (or
    ``--preset NAME``) runs when no flag says otherwise, so a study is reproduced from its file.

    Args:
        methods: labels of the methods to tune (each gets ``trials`` trials).
        trials: the budget per method, the untuned trial included.
        tuning_seeds: the tuning runs' seeds; never evaluation seeds of the experiment.
        scenarios: the pools to tune on (empty: every scenario of the experiment).
        startup_trials: random trials before TPE, finished trials before the pruner prunes.
        sampler_seed: TPE's seed.
    """

    methods: list[str]
    trials: int
    tuning_seeds: list[int]
    scenarios: list[str | None] = field(default_factory=list)
    startup_trials: int = 5
    sampler_seed: int = 0


@dataclass
class Preset:
    """A sweep: ``scenarios x students x methods x seeds`` on ``env_id``.

    ``scenarios`` are teacher pool names (``None``: the env's default pool): built-in or registered
    ones, or ones the preset declares in ``pools``. With more than one scenario and the
    ``baseline`` / ``oracle`` methods present, the report adds the normalised score
    ``(acc - baseline) / (oracle - baseline)`` and its interval estimates.

    The same fields make an experiment file (:mod:`kd_env.comparison.spec`, ``kd-env bench
    --spec FILE``); every built-in preset is one (``kd_env/comparison/preset_specs/*.yaml``).
    """

    env_id: str
    methods: list[Method]
    seeds: list[int]
    env_kwargs: dict[str, Any]
    students: list[str | None] = field(default_factory=lambda: [None])
    scenarios: list[str | None] = field(default_factory=lambda: [None])
    description: str = ""
    baseline: str = "AVER"
    """Label of the method that scores 0 in the normalised score."""
    oracle: str = "Oracle"
    """Label of the method that scores 1 in the normalised score."""
    train_teachers: bool = True
    """Train the scenarios' missing teachers before the sweep (cheap pools only)."""
    control_scenarios: list[str] = field(default_factory=list)
    """Scenarios without a known best weighting (the oracle is no upper bound there): reported
    in accuracy and paired difference to the baseline, left out of the normalised score."""
    contrasts: list[tuple[str, str]] = field(default_factory=list)
    """``(method, compared_with)`` label pairs the report compares paired by seed, per scenario and
    in normalised score (``contrasts.md``, :mod:`kd_env.comparison.contrasts`): ablations."""
    name: str = ""
    """Shown in the report (``Preset `name```); a file's name when loaded from one, else ``custom``."""
    imports: list[str] = field(default_factory=list)
    """Modules (or ``.py`` files) every run imports first: ones that call ``kd_env.register_policy``
    or ``kd_env.register_pool`` (``kd-env bench --import``)."""
    pools: dict[str, InlinePool] = field(default_factory=dict)
    """Teacher pools the preset declares itself, by scenario name."""
    tune: Tuning | None = None
    """How ``kd-env tune`` tunes this experiment's methods by default (its runs are not the sweep's)."""

    def __post_init__(self) -> None:
        labels = {method.label for method in self.methods}
        for method, compared_with in self.contrasts:
            missing = [label for label in (method, compared_with) if label not in labels]
            if missing:
                raise ValueError(f"contrast ({method!r}, {compared_with!r}) names {missing}, not methods of the preset: {sorted(labels)}")
            if method == compared_with:
                raise ValueError(f"contrast ({method!r}, {compared_with!r}) compares a method with itself")

    def references(self) -> set[str]:
        return {method.label for method in self.methods if method.reference}


# ------------------------------------------------------------------ the built-in presets
# Each is a file, kd_env/comparison/preset_specs/<name>.yaml, read as `kd-env bench --spec` reads any
# (kd_env.comparison.spec); `kd-env bench --show-preset NAME` prints one. Their comments say where
# each setting comes from.

FMNIST_ID = "MultiTeacherKD-FashionMNIST-v0"
SYNTHETIC_ID = "MultiTeacherKD-Synthetic-v0"

# cifar100-paper: MTKD-RL's CIFAR-100 comparison, every method as its authors ran it
PAPER_STUDENTS: list[str | None] = ["RegNetX_200MF", "MobileNetV2", "ShuffleV2", "resnet56"]
PAPER_POOL_SIZE = 4
"""K of MTKD-RL's CIFAR-100 pool (RegNetY_400MF, RegNetX_400MF, resnet32x4, wrn_28_4): the
published KD magnitudes of ``cifar100-paper.yaml`` are written for it."""
PAPER_DYNAMIC: dict[str, bool] = {"RegNetX_200MF": False, "MobileNetV2": True, "ShuffleV2": True, "resnet56": False}
"""MTKD-RL's ``--dynamic`` per student, as the official README chooses it (the better of its
two columns): on for MobileNetV2 (74.77 vs 74.29) and ShuffleNetV2 (78.74 vs 78.35), off for
RegNetX-200MF (80.58 vs 79.93) and ResNet-56 (75.51 vs 74.95)."""
