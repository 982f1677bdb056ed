"""What a sweep's parts share, below the sweep itself: a planned run (:class:`PlannedRun`), the
executors' protocol and retry rule, and the death signal that takes runs down with the sweep.
The sweep (:mod:`~kd_env.comparison.sweep`) plans and runs; the report, the contrasts and the Ray
executor read these without importing the sweep."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kd_env.comparison.presets import Method
from kd_env.run import RunConfig

__all__ = ["DEFAULT_RETRIES", "Executor", "PlannedRun", "RetryPolicy", "die_with_parent"]

#: Times a failed run is tried again in one sweep (``kd-env bench --retries``) before it is
#: reported as failed; every new attempt continues from the run's last checkpoint.
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class PlannedRun:
    """One cell of a sweep: which method, scenario and student, and the run's full config."""

    method: Method
    scenario: str | None
    student: str | None
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def done(self) -> bool:
        return (self.run_dir / "result.json").exists()


class Executor(Protocol):
    """Runs a sweep's planned runs somewhere (:class:`LocalExecutor`, or
    :class:`~kd_env.comparison.ray_executor.RayExecutor` on a Ray cluster)."""

    def run(self, runs: list[PlannedRun], progress: bool = True, description: str = "bench") -> list[tuple[PlannedRun, str]]:
        """Run every run that is not done; returns ``(run, error)`` for the runs that failed every attempt."""
        ...


class RetryPolicy:
    """The retry rule every executor applies.

    A run whose attempt fails (non-zero exit, no ``result.json``, a lost worker) is tried again up
    to ``retries`` times; a new attempt continues from the run's last checkpoint. A run that fails
    them all is reported as failed with its last error (in the tables: never silently dropped).
    """

    def __init__(self, retries: int = DEFAULT_RETRIES) -> None:
        if int(retries) < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries = int(retries)
        self.attempts: dict[Path, int] = {}

    def failed(self, run: PlannedRun, error: str) -> tuple[PlannedRun, str] | None:
        """Record a failed attempt of ``run``: ``None`` when it is to be tried again, else the
        ``(run, error)`` to report."""
        from tqdm.auto import tqdm

        attempts = self.attempts[run.run_dir] = self.attempts.get(run.run_dir, 0) + 1
        if attempts <= self.retries:
            first_line = (error.splitlines() or [""])[0]
            tqdm.write(f"{run.run_dir.name}: attempt {attempts} failed ({first_line}); trying again", file=sys.stderr)
            return None
        return run, f"failed {attempts} attempt(s); the last: {error}"


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the sweep process dies, however it
    dies (``kill -9`` included), so that no run goes on orphaned; ``None`` off Linux, where only
    an interrupted sweep takes its children down (``LocalExecutor.run``'s ``finally``)."""
    if not sys.platform.startswith("linux"):
        return None

    def set_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the sweep died before prctl took effect
            os._exit(1)

    return set_death_signal


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
