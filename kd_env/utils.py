"""Small shared helpers: atomic file writes, crash points for the reliability tests, CPU thread counts."""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that renames into it survive a power loss (where the OS supports it)."""
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


#: Environment variable naming the crash points at which this process kills itself (tests only).
CRASH_ENV = "KD_ENV_CRASH_AT"
_crash_counts: collections.Counter[str] = collections.Counter()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL here if ``$KD_ENV_CRASH_AT`` names this point.

    ``KD_ENV_CRASH_AT="checkpoint:env@2,step@7"`` kills the process the 2nd time it reaches
    ``checkpoint:env`` or the 7th time it reaches ``step`` (``@1`` when no count is given). The
    reliability tests use it to stop a run at a chosen instruction, as ``kill -9`` would, but
    deterministically; unset (always, outside those tests) it costs one dict lookup.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    for item in spec.split(","):
        point, _, count = item.strip().partition("@")
        if point == name:
            _crash_counts[name] += 1
            if _crash_counts[name] == int(count or 1):
                os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves behind when its process is killed
    mid-write (``.<name>.<pid>.<hex>.tmp`` and the older ``.<name>.tmp``) in ``folder``.

    Only call it while no other process can be writing there (e.g. under the run folder's lock).
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file through ``write(file)`` into a temp file in the target folder, fsync, then
    ``os.replace``: a crash mid-write leaves the old file (or none), never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # like mkstemp, but with the usual umask-governed permissions rather than 0600
    temp_name = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        crash_point(f"atomic_write:{path.name}")  # a kill here leaves the temporary behind
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda file: torch.save(obj, file))


# --------------------------------------------------------------------------------------------
# CPU threads


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
