"""Atomic file writes: a temporary in the target folder, fsync, ``os.replace``, fsync of the folder."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from kd_env.utils.crash_points import crash_point


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that renames into it survive a power loss (where the OS supports it)."""
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


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
