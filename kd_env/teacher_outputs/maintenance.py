"""Listing, verifying and clearing the stores in a cache (the ``kd-env store`` commands)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kd_env.teacher_outputs.format import TeacherStoreError, _read_manifest
from kd_env.teacher_outputs.key import stores_dir

try:  # POSIX only; without it a store being built is not told apart from a finished one
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no fcntl module on Windows: None stands for it


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def list_stores(cache_dir: str | os.PathLike | None = None, *, verify: bool = False) -> list[dict[str, Any]]:
    """One dict per store folder: ``path``, ``key``, ``bytes``, ``teachers``, ``num_samples``,
    ``dtype``, ``created``, ``build_seconds`` and ``status`` (``"ok"``, ``"unchecked"``, or the
    problem found). ``verify=True`` hashes every block (slow); otherwise the quick open checks run."""
    from kd_env.teacher_outputs import TeacherOutputStore  # the package imports this module

    root = stores_dir(cache_dir)
    entries: list[dict[str, Any]] = []
    if not root.is_dir():
        return entries
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entry: dict[str, Any] = {"path": str(folder), "key": folder.name, "bytes": _folder_bytes(folder)}
        try:
            manifest = _read_manifest(folder)
            entry.update(
                teachers=manifest.get("teacher_names") or [t["sha256"][:12] for t in manifest["key_inputs"]["teachers"]],
                num_samples=manifest["num_samples"],
                dtype=manifest["key_inputs"]["dtype"],
                arrays=manifest["key_inputs"]["arrays"],
                created=manifest.get("created"),
                build_seconds=manifest.get("build_seconds"),
            )
            TeacherOutputStore.open(folder, full=verify).close()
            entry["status"] = "ok"
        except TeacherStoreError as exc:
            entry["status"] = str(exc)
        entries.append(entry)
    return entries


def clear_stores(cache_dir: str | os.PathLike | None = None, keys: Iterable[str] | None = None) -> tuple[int, int]:
    """Delete stores (all, or those whose key starts with one of ``keys``), leftover temp folders
    and lock files; returns ``(stores removed, bytes freed)``. A store being built holds its lock
    and is skipped."""
    root = stores_dir(cache_dir)
    if not root.is_dir():
        return 0, 0
    prefixes = list(keys or [])
    removed = freed = 0
    for folder in sorted(root.iterdir()):
        name = folder.name.lstrip(".")
        if prefixes and not any(name.startswith(prefix) for prefix in prefixes):
            continue
        if folder.is_dir():
            key = name.split(".")[0]
            lock_path = root / f"{key}.lock"
            if _is_locked(lock_path):
                continue  # someone is building it right now
            size = _folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed += 0 if folder.name.startswith(".") else 1
                freed += size
        elif folder.suffix == ".lock" and not _is_locked(folder):
            with contextlib.suppress(OSError):
                folder.unlink()
    return removed, freed


def _is_locked(lock_path: Path) -> bool:
    if fcntl is None or not lock_path.exists():  # pragma: no cover - Windows
        return False
    try:
        with open(lock_path, "a+b") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
