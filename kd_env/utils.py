"""Small shared helpers: atomic file writes, CPU thread counts."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
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
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)
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
    """Use ``threads`` CPU threads in this process and in the processes it starts; returns it.

    Call it before torch does any work: the inter-op pool can only be sized before its first use
    (later calls keep its size), and child processes read ``OMP_NUM_THREADS`` when they start.
    """
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # raised once inter-op work has started
        torch.set_num_interop_threads(threads)
    return threads
