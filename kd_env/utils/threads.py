"""CPU threads: the cores this process may use, torch's thread pools in this process, and the
thread variables of a child process's environment. Nothing here writes ``os.environ``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup (v2) CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # ceil
    return max(1, cores)


def threads_per_run(jobs: int = 1) -> int:
    """Torch threads for each of ``jobs`` runs going at once: the available cores divided among them.

    Oversubscription is what hurts: on a loaded 2-core machine an 80-update pilot took 76 s with
    torch's default of 2 threads and 2 s with one.
    """
    return max(1, available_cores() // max(1, int(jobs)))


def set_threads(threads: int) -> int:
    """Use ``threads`` torch CPU threads in this process; returns it.

    Only this process's torch pools change: ``os.environ`` is left alone, so a library call
    leaks no thread setting into the caller's later child processes (a child gets its count
    from :func:`thread_environment`). Call it before torch does any work: the inter-op pool can
    only be sized before its first use (later calls keep its size).
    """
    threads = _checked_threads(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # raised once inter-op work has started
        torch.set_num_interop_threads(threads)
    return threads


#: The variables a child process's math libraries read for their thread counts at start-up:
#: OpenMP's (torch's intra-op pool is sized from it) and MKL's (torch's CPU build links MKL,
#: which otherwise takes its own count: a child that inherits another MKL setting sums in
#: another order and differs in the last bits).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_environment(threads: int, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child process's environment: ``environment`` (default: this process's) with every
    :data:`THREAD_VARIABLES` set to ``threads``. A copy; ``os.environ`` is not changed."""
    threads = _checked_threads(threads)
    return {**(os.environ if environment is None else environment), **{name: str(threads) for name in THREAD_VARIABLES}}


def _checked_threads(threads: int) -> int:
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads
