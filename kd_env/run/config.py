"""A run's definition and its result: :class:`RunConfig` (saved as ``run.json``),
:class:`RunResult` (``result.json``) and :func:`make_env`, the env a config names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.registry import PolicySpec, get_policy, import_policy_modules

RUN_FILE = "run.json"


@dataclass
class RunConfig:
    """Everything that defines a run (saved as ``run.json``; ``resume`` re-reads it).

    ``imports`` are imported first (here, and again wherever the config is re-created, e.g. in
    the benchmark's child processes), so that a module calling :func:`kd_env.register_policy`
    is loaded; then ``agent`` must be a registered name (:func:`kd_env.policy_names`).
    """

    env_id: str
    agent: str
    run_dir: str
    per_sample: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    total_steps: int | None = None
    """Env steps to run; ``None`` = ``student_runs`` whole student training runs (episodes)."""
    student_runs: int = 1
    """Whole student runs to train when ``total_steps`` is ``None`` (e.g. a policy learned over
    several runs, then evaluated frozen: the benchmark's transfer protocol)."""
    seed: int = 0
    checkpoint_every: int = 0
    """Env steps between checkpoints (0: only at the end)."""
    tensorboard: bool = True
    progress: bool = True
    imports: list[str] = field(default_factory=list)
    """Modules to import before the policy is looked up (``kd-env train --import``)."""

    def __post_init__(self) -> None:
        self.imports = list(self.imports)
        if isinstance(self.student_runs, bool) or not isinstance(self.student_runs, int) or self.student_runs < 1:
            raise ValueError(f"student_runs must be an integer >= 1, got {self.student_runs!r}")
        import_policy_modules(self.imports)
        spec = get_policy(self.agent)  # ValueError listing the known names
        if spec.per_sample is True and not self.per_sample:
            self.per_sample = True  # e.g. the published MTKD-RL agent is defined on the per-sample state
        elif spec.per_sample is False and self.per_sample:
            raise ValueError(f"policy {self.agent!r} is registered for the batch-level env only (per_sample=False)")

    @property
    def spec(self) -> PolicySpec:
        """The policy's registry entry."""
        return get_policy(self.agent)


@dataclass
class RunResult:
    """What one run measured (also written as ``result.json`` in the run folder)."""

    env_id: str
    agent: str
    seed: int
    per_sample: bool
    env_steps: int
    episodes: list[dict[str, float]]
    """One entry per finished student run: best_val_acc, best_epoch, final_test_acc."""
    val_curve: list[tuple[int, float]]
    """(env step, validation accuracy) at each epoch end."""
    weight_trajectory: list[tuple[int, list[float]]]
    """(env step, batch-mean logit weights) per step (strided for long runs)."""
    teacher_names: list[str]
    wall_time_s: float
    peak_memory_mib: float

    @property
    def test_acc(self) -> float:
        return self.episodes[-1]["final_test_acc"] if self.episodes else float("nan")

    @property
    def best_val_acc(self) -> float:
        return self.episodes[-1]["best_val_acc"] if self.episodes else float("nan")


def _env_kwargs(config: RunConfig) -> dict[str, Any]:
    kwargs = dict(config.env_kwargs)
    action_mode = config.spec.action_mode
    if action_mode is not None:
        kwargs.setdefault("action_mode", action_mode)  # e.g. "simplex" for the rules, "raw" for no-kd
    return kwargs


def make_env(config: RunConfig) -> Any:
    """The env of a run: batch-level ``gym.make`` or the per-sample ``gym.make_vec``."""
    kwargs = _env_kwargs(config)
    if config.per_sample:
        return gym.make_vec(config.env_id, vectorization_mode="vector_entry_point", **kwargs)
    # no passive checker: it refuses a step that follows a restore instead of a reset (resume);
    # the env itself is checked by Gymnasium's and SB3's checkers in the tests
    return gym.make(config.env_id, disable_env_checker=True, **kwargs)
