"""A teacher-output store's size, known before it is built, and the free-space check (issue #27).

A store of augmented views holds V rows per training image: V x N x (K x C logits + the
embeddings [+ the feature maps]). Its size follows from the teachers' output shapes alone, so it
is stated before the teacher pass (``kd-env store size``) and checked against the free space of
the cache's disk before anything is written.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kd_env.teacher_outputs.format import TeacherStoreUnavailable

HEADER_BYTES = 128
"""An ``.npy`` header (version 1.0, padded to 64 bytes: 128 for every shape a store writes)."""
MANIFEST_BYTES = 1 << 16
"""Room for ``manifest.json`` (its block digests: 65 bytes per MiB of arrays, a few KiB here)."""


@dataclass(frozen=True)
class StoreSize:
    """Bytes of each part of a store: ``logits``, ``embeddings``, ``feature_maps`` (0 where not stored)."""

    rows: int
    logits: int
    embeddings: int
    feature_maps: int
    files: int

    @property
    def total(self) -> int:
        """Bytes on disk: the arrays, their headers and the manifest."""
        return self.logits + self.embeddings + self.feature_maps + self.files * HEADER_BYTES + MANIFEST_BYTES

    def describe(self) -> str:
        """One line: the total and its parts."""
        parts = [f"logits {format_bytes(self.logits)}"]
        if self.embeddings:
            parts.append(f"embeddings {format_bytes(self.embeddings)}")
        if self.feature_maps:
            parts.append(f"feature maps {format_bytes(self.feature_maps)}")
        return f"{format_bytes(self.total)} for {self.rows:,} rows ({', '.join(parts)})"


def store_size(
    rows: int,
    num_classes: int,
    map_shapes: Sequence[Sequence[int]],
    *,
    embeddings: bool = True,
    feature_maps: bool = False,
    dtype: str = "float16",
) -> StoreSize:
    """The size of a store of ``rows`` rows for teachers whose feature maps are ``map_shapes``
    (``(C_k, H_k, W_k)`` each; a teacher's embedding is its map pooled: ``C_k`` numbers)."""
    itemsize = np.dtype(dtype).itemsize
    teachers = len(map_shapes)
    logits = rows * teachers * num_classes * 4  # always float32
    embedding_bytes = rows * sum(int(shape[0]) for shape in map_shapes) * itemsize if embeddings else 0
    map_bytes = rows * sum(int(np.prod(shape)) for shape in map_shapes) * itemsize if feature_maps else 0
    files = 1 + (teachers if embeddings else 0) + (teachers if feature_maps else 0)
    return StoreSize(rows, logits, embedding_bytes, map_bytes, files)


def format_bytes(count: float) -> str:
    """``1.2 GiB``-style."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes for an unprivileged user on the disk that holds ``folder`` (or its nearest
    existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def check_free_space(folder: str | os.PathLike, needed: int, what: str = "the teacher-output store") -> None:
    """Refuse, before writing anything, a store the disk at ``folder`` cannot hold.

    Raises:
        TeacherStoreUnavailable: ``needed`` bytes exceed the free space (``errno.ENOSPC``); the
            message has both numbers.
    """
    free = free_bytes(folder)
    if needed > free:
        raise TeacherStoreUnavailable(
            errno.ENOSPC,
            f"{what} needs {format_bytes(needed)} but the disk at {folder} has {format_bytes(free)} free",
        )
