"""One writer and one reader for kd-env's ``torch.save`` checkpoints (env, agent, baseline, teacher).

Every kd-env checkpoint is a dict of plain types and tensors whose ``"format"`` entry names
what it is and its version, ``"kd_env.<what>/<version>"`` (e.g. ``"kd_env.agent/1"``), so that
it loads with ``torch.load(..., weights_only=True)``: nothing in it is unpickled as code.

* :func:`write_checkpoint` stamps the format and writes the file atomically (temporary file in
  the same folder, ``fsync``, ``os.replace``): a crash or a failing ``torch.save`` leaves the old
  file (or none), never a truncated one under the final name.
* :func:`read_checkpoint` checks, in this order, that the file exists, that it can be read,
  that it is a complete ``torch.save`` file of plain types, that its format is the expected one
  (a foreign file and a file of another version get different messages), that it is the kind
  asked for (e.g. the agent class) and that the entries the caller needs are there. Every
  failure raises :class:`CheckpointReadError` (a ``ValueError``), or one of its two subclasses
  that are also the built-in errors callers expect (``FileNotFoundError``,
  ``PermissionError``); the message names the file, what is wrong and the fix.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kd_env.utils import atomic_torch_save

__all__ = [
    "CheckpointNotFoundError",
    "CheckpointPermissionError",
    "CheckpointReadError",
    "read_checkpoint",
    "write_checkpoint",
]


class CheckpointReadError(ValueError):
    """A checkpoint cannot be used: damaged, foreign, another version or another kind.

    Attributes:
        path: the file.
    """

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
    """No file at the checkpoint's path."""


class CheckpointPermissionError(CheckpointReadError, PermissionError):
    """The file exists but this user may not read it: not a damaged file, so never delete it."""


def write_checkpoint(path: str | os.PathLike[str], format: str, payload: Mapping[str, Any]) -> Path:
    """Write ``{"format": format, **payload}`` to ``path`` atomically; returns the path.

    Args:
        path: the file (its folder is created).
        format: ``"kd_env.<what>/<version>"``, what :func:`read_checkpoint` will expect.
        payload: plain types and tensors only (``torch.load(weights_only=True)`` must read them).
    """
    if "format" in payload:
        raise ValueError("the payload must not carry its own 'format' entry: pass it as format=")
    _split_format(format)  # refuse a malformed format before anything is written
    return atomic_torch_save({"format": format, **payload}, path)


def read_checkpoint(
    path: str | os.PathLike[str],
    format: str,
    *,
    what: str,
    fix: str,
    missing_fix: str | None = None,
    kind_key: str | None = None,
    kind: str | None = None,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    mmap: bool = False,
) -> dict[str, Any]:
    """Read a :func:`write_checkpoint` file and check it is the checkpoint asked for.

    Args:
        path: the file.
        format: the expected ``"kd_env.<what>/<version>"``.
        what: how messages name the file, e.g. ``"kd-env agent checkpoint"``.
        fix: what the user should do about a missing or damaged file (e.g. ``"save it again"``,
            or the command that retrains it); it ends every message but the wrong-kind one.
        missing_fix: what to do about a missing file, when that differs from ``fix``.
        kind_key, kind: the entry that names the kind of checkpoint (``"agent_class"``) and the
            value this caller needs (``"Reinforce"``); both or neither.
        required: entries that must be present, with their types (e.g. ``{"state_dict": dict}``).
        mmap: memory-map the tensors instead of reading them (``torch.load``'s ``mmap``).

    Returns:
        The checkpoint's dict.

    Raises:
        CheckpointNotFoundError: no file (also a ``FileNotFoundError``).
        CheckpointPermissionError: the file cannot be read by this user (also a ``PermissionError``).
        CheckpointReadError: the file is truncated or corrupt, not a kd-env checkpoint of this
            format, of another format version, of another kind, or lacks a required entry.
    """
    if (kind_key is None) != (kind is None):
        raise ValueError("pass kind_key and kind together (the entry to check and the value it must have)")
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(path, f"{what} {str(path)!r} does not exist. Fix: {missing_fix or fix}")
    checkpoint = _load(path, format, what, fix, mmap)
    _check_format(path, checkpoint, format, what, fix)
    if kind_key is not None and checkpoint.get(kind_key) != kind:
        found = checkpoint.get(kind_key)
        raise CheckpointReadError(
            path, f"{str(path)!r} holds a {found} checkpoint, not a {kind}. Fix: load it as a {found}, or pass a {kind} checkpoint"
        )
    for key, expected_type in (required or {}).items():
        if not isinstance(checkpoint.get(key), expected_type):
            raise CheckpointReadError(
                path, f"{str(path)!r} is a damaged {what}: its {key!r} entry is missing or of the wrong type. Fix: {fix}"
            )
    return checkpoint


def _load(path: Path, format: str, what: str, fix: str, mmap: bool) -> dict[str, Any]:
    """``torch.load`` with plain types only; read errors become :class:`CheckpointReadError`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except PermissionError as exc:  # the file may be fine: it must not be called corrupt
        raise CheckpointPermissionError(
            path,
            f"{what} {str(path)!r} cannot be read: permission denied for this user (uid {os.getuid()}). "
            f"Fix: make it readable (chmod a+r {shlex.quote(str(path))}, or ask its owner)",
        ) from exc
    except Exception as exc:  # zip, pickle, EOF errors: the bytes are not a complete checkpoint
        if "Unsupported global" in str(exc):  # a complete pickle that names classes: foreign, not damaged
            raise CheckpointReadError(
                path,
                f"{str(path)!r} holds objects other than tensors and plain Python types, so it is not a "
                f"{format!r} {what} (refusing to unpickle it). Fix: {fix}",
            ) from exc
        # torch's weights-only message is pages long; its last informative line names the problem
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        unpickler = [line for line in lines if line.startswith("Unsupported") or "WeightsUnpickler" in line]
        reason = (unpickler[-1] if unpickler else lines[0]) if lines else ""
        raise CheckpointReadError(
            path, f"{what} {str(path)!r} is corrupt or truncated and cannot be read ({type(exc).__name__}: {reason}). Fix: {fix}"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(
            path, f"{str(path)!r} is not a {what} (it holds a {type(checkpoint).__name__}, expected format {format!r}). Fix: {fix}"
        )
    return checkpoint


def _check_format(path: Path, checkpoint: dict[str, Any], format: str, what: str, fix: str) -> None:
    """The format entry: the expected one, else say whether the file is another version of it."""
    found = checkpoint.get("format")
    if found == format:
        return
    family, version = _split_format(format)
    if isinstance(found, str) and "/" in found and _split_format(found)[0] == family:
        raise CheckpointReadError(
            path,
            f"{what} {str(path)!r} has format version {_split_format(found)[1]} ({found!r}); this kd-env reads version "
            f"{version} ({format!r}). Fix: open it with the kd-env release that wrote it, or {fix[:1].lower()}{fix[1:]}",
        )
    raise CheckpointReadError(path, f"{str(path)!r} is not a {what} (format {found!r}, expected {format!r}). Fix: {fix}")


def _split_format(format: str) -> tuple[str, str]:
    """``"kd_env.agent/1"`` -> ``("kd_env.agent", "1")``."""
    family, slash, version = format.rpartition("/")
    if not slash or not family or not version:
        raise ValueError(f"checkpoint format {format!r} must read '<name>/<version>', e.g. 'kd_env.agent/1'")
    return family, version
