"""Small shared helpers, the lowest layer of kd-env (imports nothing else of it).

- :mod:`kd_env.utils.atomic`: atomic file writes (temporary, fsync, ``os.replace``);
- :mod:`kd_env.utils.crash_points`: crash points for the reliability tests (``$KD_ENV_CRASH_AT``);
- :mod:`kd_env.utils.threads`: CPU cores, this process's torch threads, a child's thread variables.

Importing it changes no process state (no thread count, no environment variable, no signal handler).
"""

from __future__ import annotations

from kd_env.utils.atomic import atomic_torch_save, atomic_write, fsync_dir, remove_stale_temporaries
from kd_env.utils.crash_points import CRASH_ENV, crash_point, crash_point_counts, reset_crash_points
from kd_env.utils.threads import (
    THREAD_VARIABLES,
    available_cores,
    set_threads,
    thread_environment,
    threads_per_run,
)

__all__ = [
    "CRASH_ENV",
    "THREAD_VARIABLES",
    "atomic_torch_save",
    "atomic_write",
    "available_cores",
    "crash_point",
    "crash_point_counts",
    "fsync_dir",
    "remove_stale_temporaries",
    "reset_crash_points",
    "set_threads",
    "thread_environment",
    "threads_per_run",
]
