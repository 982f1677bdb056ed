"""Teacher checkpoints: where they live, how they are written, verified and loaded.

A teacher checkpoint lives under the cache::

    default_cache_dir()/teachers/<dataset>/<name>-s<seed>.pt

where ``<name>`` is the architecture, followed by the recipe's tag when the teacher was trained
on a class subset or on relabelled data (:class:`kd_env.teachers.recipes.TeacherRecipe`).

Checkpoint format (``"kd_env.teacher/1"``), one ``torch.save`` file holding a dict of plain
types and tensors, so that it loads with ``torch.load(..., weights_only=True)``::

    {"format": "kd_env.teacher/1",
     "metadata": {"arch", "dataset", "num_classes", "in_channels", "epochs", "seed",
                  "val_acc", "test_acc", "recipe", "versions": {...}, "created", "sha256", ...},
     "state_dict": {name: tensor, ...}}

``metadata["sha256"]`` is :func:`state_dict_sha256` of ``state_dict``: a SHA-256 over a canonical
serialisation of the tensors (for every entry in sorted name order: the UTF-8 name, the dtype
name, the shape and the raw contiguous CPU bytes of the values, each part length-prefixed). It
does not depend on the pickle/zip layout of ``torch.save``, so it stays valid across torch
versions, and any change to a stored value is caught on load.

Files are written atomically (temporary file in the same folder, ``fsync``, ``os.replace``), so a
crash never leaves a half-written ``.pt`` under the final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kd_env.checkpoint_format import (
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointReadError,
    read_checkpoint,
    write_checkpoint,
)
from kd_env.models.digest import SHA_SCHEME, state_dict_sha256
from kd_env.version import __version__

if TYPE_CHECKING:
    from kd_env.models.base import KDModel

TEACHER_FORMAT = "kd_env.teacher/1"

# --------------------------------------------------------------------------------------------
# errors


class TeacherCheckpointError(RuntimeError):
    """A teacher checkpoint is missing, unreadable, corrupt or not the teacher asked for."""


class TeacherNotFoundError(TeacherCheckpointError, FileNotFoundError):
    """The teacher checkpoint file does not exist."""


class TeacherChecksumError(TeacherCheckpointError):
    """The stored weights do not match the checksum written with them."""


class TeacherMismatchError(TeacherCheckpointError, ValueError):
    """The checkpoint holds another architecture or dataset than expected."""


class TeacherPermissionError(TeacherCheckpointError, PermissionError):
    """The checkpoint exists but this user may not read it (not a damaged file: do not delete it)."""


# --------------------------------------------------------------------------------------------
# paths and recipe


def _default_cache_dir() -> Path:
    from kd_env.data import default_cache_dir

    return Path(default_cache_dir())


def teachers_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds all teacher checkpoints: ``<cache_dir>/teachers``."""
    return (Path(cache_dir) if cache_dir is not None else _default_cache_dir()) / "teachers"


def teacher_path(name: str, dataset: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the checkpoint of teacher ``name`` (an architecture, or a recipe's
    :attr:`~kd_env.teachers.recipes.TeacherRecipe.name`) trained on ``dataset`` with ``seed`` lives."""
    return teachers_dir(cache_dir) / dataset / f"{name}-s{int(seed)}.pt"


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".pt")] + ".partial.pt" if path.name.endswith(".pt") else path.name + ".partial.pt")


def train_command(
    dataset: str,
    archs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> str:
    """The shell command that trains ``archs`` (default: the pool) of ``dataset``; ``force`` adds
    ``--force``, needed to replace a checkpoint file that exists (a damaged one included)."""
    parts = ["kd-env", "teachers", "train", "--dataset", dataset]
    for arch in archs or ():
        parts += ["--arch", arch]
    if seed != 0:
        parts += ["--seed", str(seed)]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    if force:
        parts.append("--force")
    return shlex.join(parts)


# --------------------------------------------------------------------------------------------
# atomic files and checksums


def _versions() -> dict[str, str]:
    versions = {"torch": str(torch.__version__)}
    try:
        import torchvision

        versions["torchvision"] = str(torchvision.__version__)
    except Exception:  # pragma: no cover - torchvision is a dependency
        versions["torchvision"] = "unavailable"
    versions["kd_env"] = __version__
    return versions


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # contiguous (not channels_last) CPU copies: the saved layout is independent of training
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# save / load


def save_teacher(
    state_dict: dict[str, torch.Tensor] | nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any],
) -> Path:
    """Write a teacher checkpoint atomically, adding checksum, versions and creation time.

    ``metadata`` must hold at least ``arch``, ``dataset``, ``num_classes`` and ``in_channels``
    and only plain Python types (it is read back with ``weights_only=True``).
    """
    if isinstance(state_dict, nn.Module):
        state_dict = _cpu_state_dict(state_dict)
    else:
        state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    missing = [k for k in ("arch", "dataset", "num_classes", "in_channels") if k not in metadata]
    if missing:
        raise ValueError(f"teacher metadata lacks {missing}")
    meta = dict(metadata)
    meta.setdefault("versions", _versions())
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["sha256"] = state_dict_sha256(state_dict)
    meta["sha256_scheme"] = SHA_SCHEME
    path = Path(path)
    write_checkpoint(path, TEACHER_FORMAT, {"metadata": meta, "state_dict": state_dict})
    return path


def _guess_train_command(path: Path, expected_arch: str | None, expected_dataset: str | None) -> str:
    """Best guess of the command that creates ``path`` (uses the cache layout); with ``--force``
    when the file exists, since the command skips existing checkpoints otherwise."""
    arch, seed, dataset, cache_dir = expected_arch, 0, expected_dataset, None
    stem = path.name[:-3] if path.name.endswith(".pt") else path.stem
    if "-s" in stem:
        name, _, seed_text = stem.rpartition("-s")
        if seed_text.isdigit():
            arch = arch or name
            seed = int(seed_text)
    if path.parent.parent.name == "teachers":
        dataset = dataset or path.parent.name
        cache_dir = path.parent.parent.parent
        with contextlib.suppress(Exception):
            if cache_dir.resolve() == _default_cache_dir().resolve():
                cache_dir = None
    return train_command(dataset or "<dataset>", [arch or "<arch>"], seed=seed, cache_dir=cache_dir, force=path.exists())


def _read_checkpoint(
    path: Path, expected_arch: str | None = None, expected_dataset: str | None = None, *, mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint's dict, read by :func:`kd_env.checkpoint_format.read_checkpoint`; its errors
    become the teacher error classes callers catch, each naming the command that replaces the file."""
    command = _guess_train_command(path, expected_arch, expected_dataset)
    try:
        return read_checkpoint(
            path,
            TEACHER_FORMAT,
            what="kd_env teacher checkpoint",
            fix=f"retrain it ({command}) or re-download it",
            missing_fix=f"train it with:\n  {command}",
            required={"metadata": dict, "state_dict": dict},
            mmap=mmap,
        )
    except CheckpointNotFoundError as exc:
        raise TeacherNotFoundError(str(exc)) from exc
    except CheckpointPermissionError as exc:
        raise TeacherPermissionError(errno.EACCES, f"{exc}, or use a cache folder of your own (--cache-dir or $KD_ENV_CACHE)") from exc
    except CheckpointReadError as exc:
        raise TeacherCheckpointError(str(exc)) from exc


def read_teacher_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a teacher checkpoint (the weights are not verified)."""
    checkpoint = _read_checkpoint(Path(path), mmap=True)
    return dict(checkpoint["metadata"])


def verify_teacher(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a teacher checkpoint whose weights match their stored SHA-256.

    Raises:
        TeacherCheckpointError: as :func:`load_teacher` (unreadable, damaged, not a checkpoint,
            checksum mismatch); the message gives the fix.
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path, mmap=True)
    meta = checkpoint["metadata"]
    _check_digest(path, meta, checkpoint["state_dict"], None, None)
    return dict(meta)


def _check_digest(
    path: Path, meta: dict[str, Any], state_dict: dict[str, Any], expected_arch: str | None, expected_dataset: str | None
) -> None:
    if "sha256" not in meta:
        raise TeacherCheckpointError(
            f"teacher checkpoint {str(path)!r} lacks metadata field 'sha256'; retrain it "
            f"({_guess_train_command(path, expected_arch, expected_dataset)})"
        )
    try:
        digest = state_dict_sha256(state_dict)
    except TypeError as exc:
        raise TeacherCheckpointError(f"teacher checkpoint {str(path)!r} is corrupt: {exc}") from exc
    if digest != meta["sha256"]:
        raise TeacherChecksumError(
            f"checksum mismatch in teacher checkpoint {str(path)!r}: the weights hash to {digest[:16]}..., "
            f"the file records {str(meta['sha256'])[:16]}...; the file is corrupt or was modified. "
            f"To replace it, retrain it ({_guess_train_command(path, expected_arch, expected_dataset)}) "
            "or re-download it."
        )


def load_teacher(
    path: str | os.PathLike,
    *,
    expected_arch: str | None = None,
    expected_dataset: str | None = None,
    device: str | torch.device = "cpu",
) -> KDModel:
    """Load a verified teacher checkpoint as a frozen zoo model in eval mode.

    The returned :class:`~kd_env.models.base.KDModel` has ``requires_grad=False`` everywhere and
    carries the checkpoint's metadata as ``model.teacher_metadata``.

    Raises:
        TeacherNotFoundError: the file does not exist (the message gives the train command).
        TeacherCheckpointError: the file is truncated, corrupt or not a teacher checkpoint.
        TeacherChecksumError: the weights do not match the stored SHA-256.
        TeacherMismatchError: ``expected_arch``/``expected_dataset`` differ from the checkpoint's.
    """
    from kd_env.models import create_model

    path = Path(path)
    checkpoint = _read_checkpoint(path, expected_arch, expected_dataset)
    meta, state_dict = checkpoint["metadata"], checkpoint["state_dict"]
    for key in ("arch", "dataset", "num_classes", "in_channels", "sha256"):
        if key not in meta:
            raise TeacherCheckpointError(
                f"teacher checkpoint {str(path)!r} lacks metadata field {key!r}; retrain it "
                f"({_guess_train_command(path, expected_arch, expected_dataset)})"
            )
    _check_digest(path, meta, state_dict, expected_arch, expected_dataset)
    if expected_arch is not None and meta["arch"] != expected_arch:
        raise TeacherMismatchError(f"teacher checkpoint {str(path)!r} holds arch {meta['arch']!r}, expected arch {expected_arch!r}")
    if expected_dataset is not None and meta["dataset"] != expected_dataset:
        raise TeacherMismatchError(
            f"teacher checkpoint {str(path)!r} was trained on dataset {meta['dataset']!r}, expected dataset {expected_dataset!r}"
        )
    try:
        model = create_model(
            meta["arch"],
            num_classes=int(meta["num_classes"]),
            in_channels=int(meta["in_channels"]),
            **dict(meta.get("model_kwargs") or {}),
        )
    except ValueError as exc:
        raise TeacherCheckpointError(f"cannot build the model of teacher checkpoint {str(path)!r}: {exc}") from exc
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise TeacherCheckpointError(
            f"teacher checkpoint {str(path)!r} does not fit the current {meta['arch']!r} model "
            f"(saved with kd_env {meta.get('versions', {}).get('kd_env', '?')}): {exc}. Retrain it."
        ) from exc
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    model.teacher_metadata = dict(meta)  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    return model
