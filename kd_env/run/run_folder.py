"""A run folder's checkpoints, written and read as units, and the lock that keeps one process
on a run folder.

A checkpoint is one unit: its files (the policy's, env.pt, state.json) are written into a
staging folder, then manifest.json (each file's size and SHA-256) is written last, then the
staging folder is renamed into place. A kill at any instant leaves either the previous complete
checkpoint or the new one (recovered on the next start, see ``_recover_checkpoints``), never
a mix. The process-wide RNG states go with it (``rng.pt``), so that a resumed policy draws what
the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_env.checkpoint_format import CheckpointNotFoundError, read_checkpoint, write_checkpoint
from kd_env.run.config import RunConfig
from kd_env.utils import atomic_write, crash_point, fsync_dir, remove_stale_temporaries

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
ENV_CHECKPOINT = "env.pt"
RNG_FILE = "rng.pt"
RNG_FORMAT = "kd_env.rng/1"
CHECKPOINTS = "checkpoints"
STAGING = ".checkpoints.incoming"
RETIRED = ".checkpoints.old"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "kd_env.checkpoint/1"
LOCK_FILE = ".lock"


class CheckpointError(ValueError):
    """A run's checkpoint is damaged (a file differs from its manifest) and cannot be resumed."""


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder's lock (a run, or a sweep's child, is using it)."""


def _checkpoint_dir(config: RunConfig) -> Path:
    return Path(config.run_dir) / CHECKPOINTS


def _write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda file: file.write(json.dumps(payload, indent=1).encode()))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, env_steps: int) -> None:
    """Seal a staged checkpoint: every file's size and SHA-256, written last."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST_FILE
    }
    _write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "env_steps": env_steps, "files": files})


def _manifest_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` is not a complete, intact unit (``None``: it is)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {MANIFEST_FILE} (it was never completed)"
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST_FILE} cannot be read ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        return f"its {MANIFEST_FILE} is not a {MANIFEST_FORMAT} manifest"
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
            return f"{name} differs from the size and SHA-256 its manifest records (modified, or damaged on disk)"
    return None


def verify_checkpoint(folder: str | os.PathLike) -> None:
    """Check a run's checkpoint folder against its manifest.

    A folder without a manifest but with ``state.json`` is a checkpoint written before manifests
    existed and is accepted as it is.

    Raises:
        CheckpointError: a file is missing or differs from the manifest, or the manifest is unreadable.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).exists() and (folder / STATE_FILE).exists():
        return  # pre-manifest checkpoint
    problem = _manifest_problem(folder)
    if problem is not None:
        raise CheckpointError(
            f"the checkpoint in {folder} cannot be resumed: {problem}. Start the run again in a new --run-dir (or delete this run folder)"
        )


def _recover_checkpoints(run_dir: Path) -> None:
    """Finish or undo a checkpoint swap a kill interrupted, and delete stale temporaries.

    Called under the run folder's lock. ``checkpoints`` missing means the kill fell between the two
    renames: the sealed staging folder (newer) is put in place, else the retired one (older).
    """
    current, staging, retired = run_dir / CHECKPOINTS, run_dir / STAGING, run_dir / RETIRED
    if not current.exists():
        if staging.is_dir() and _manifest_problem(staging) is None:
            os.replace(staging, current)
        elif retired.is_dir():
            os.replace(retired, current)
    for leftover in (staging, retired):
        if leftover.exists():
            shutil.rmtree(leftover)
    for folder in (run_dir, current):
        if folder.is_dir():
            for path in remove_stale_temporaries(folder):
                logger.info("removed the stale temporary %s (a write a kill interrupted)", path)


def _commit_checkpoint(run_dir: Path, write: Callable[[Path], None], env_steps: int) -> None:
    """Write one checkpoint as a unit: ``write(staging)`` fills the staging folder, the manifest
    seals it, and renames put it in place of the previous one (which is deleted last)."""
    staging, current, retired = run_dir / STAGING, run_dir / CHECKPOINTS, run_dir / RETIRED
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        write(staging)
        _write_manifest(staging, env_steps)
        crash_point("checkpoint:sealed")
        fsync_dir(staging)
        if current.exists():
            os.replace(current, retired)
        crash_point("checkpoint:swap")  # between the renames: no checkpoints/ at all
        os.replace(staging, current)
        fsync_dir(run_dir)
    except BaseException:
        # a full disk or an error mid-write: the previous checkpoint stays the current one
        if not current.exists() and retired.exists():
            os.replace(retired, current)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if retired.exists():
        shutil.rmtree(retired)


def _save_global_rng(path: Path) -> None:
    """The process-wide RNG states (torch's, NumPy's legacy global one, Python's) that policies
    draw from without owning a generator (SB3 samples actions with torch's, its replay buffers
    and action noise with NumPy's)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],  # type: ignore[attr-defined]  # numpy's stubs give get_state() the dict of legacy=False
        "python": random.getstate(),
    }
    write_checkpoint(path, RNG_FORMAT, state)


def _restore_global_rng(path: Path) -> None:
    """Put back the states :func:`_save_global_rng` wrote (read with the one checkpoint reader:
    a damaged or foreign file raises :class:`~kd_env.checkpoint_format.CheckpointReadError`)."""
    try:
        state = read_checkpoint(
            path,
            RNG_FORMAT,
            what="run's global RNG states",
            fix="resume from an intact checkpoint, or start the run again in a new folder",
            required={"torch": torch.Tensor, "numpy": list, "python": tuple},
        )
    except CheckpointNotFoundError:
        return  # a checkpoint written before rng.pt existed: the env's torch state is all there is
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for a run's lifetime (``flock`` on ``run_dir/.lock``).

    Two processes on one run folder (a rerun sweep while the last one's child is still going, two
    ``kd-env train --resume``) would write interleaved checkpoints and duplicate TensorBoard points;
    the second one is refused instead. The kernel drops the lock when the holder dies, kill -9
    included, so a stale lock file never blocks anyone.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
        yield
        return
    descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "?"
            raise RunFolderBusyError(
                f"run folder {run_dir} is in use by another process (pid {holder}); wait for it to end or stop it, or use another --run-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
