"""A teacher-output store's on-disk format: the errors, the arrays and their ``.npy`` files, the
block digests, and the verification of a manifest and of each file against it."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from kd_env.teacher_outputs.key import FORMAT_VERSION, _canonical, store_key

BLOCK_SIZE = 1 << 20
"""Bytes per checksummed block: small enough that the per-open sampled check costs milliseconds."""
MANIFEST = "manifest.json"
_FORMAT_NAME = "kd_env.teacher_outputs"

TeacherBatch = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]
"""``(logits [K, B, C], K x embeddings [B, D_k], K x feature maps [B, C_k, H_k, W_k])``, float32."""


class TeacherStoreError(RuntimeError):
    """A store on disk is missing, truncated, mismatched or corrupt (the message says which)."""


class TeacherStoreUnavailable(OSError):
    """No store can be written here (read-only cache folder, disk full, ...); use memory instead."""


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: file name, per-sample shape and dtype."""

    name: str
    file: str
    row_shape: tuple[int, ...]
    dtype: str


def _array_specs(
    num_teachers: int,
    num_classes: int,
    embedding_dims: Sequence[int],
    feature_map_shapes: Sequence[tuple[int, ...]] | None,
    dtype: str,
) -> list[ArraySpec]:
    specs = [ArraySpec("logits", "logits.npy", (num_teachers, num_classes), "float32")]
    specs += [ArraySpec(f"embedding.{k}", f"embedding_{k}.npy", (int(d),), dtype) for k, d in enumerate(embedding_dims)]
    for k, shape in enumerate(feature_map_shapes or ()):
        specs.append(ArraySpec(f"feature_map.{k}", f"feature_map_{k}.npy", tuple(int(s) for s in shape), dtype))
    return specs


class _BlockHasher:
    """SHA-256 of every ``BLOCK_SIZE`` block of a byte stream, fed in pieces of any size."""

    def __init__(self) -> None:
        self.digests: list[str] = []
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: memoryview) -> None:
        while len(data):
            take = min(BLOCK_SIZE - self._filled, len(data))
            self._current.update(data[:take])
            self._filled += take
            data = data[take:]
            if self._filled == BLOCK_SIZE:
                self.digests.append(self._current.hexdigest())
                self._current, self._filled = hashlib.sha256(), 0

    def finish(self) -> list[str]:
        if self._filled:
            self.digests.append(self._current.hexdigest())
            self._current, self._filled = hashlib.sha256(), 0
        return self.digests


def _with_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return {**body, "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()}


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise TeacherStoreError(f"no {MANIFEST} (an unfinished or damaged store)") from exc
    except (OSError, ValueError) as exc:
        raise TeacherStoreError(f"unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        raise TeacherStoreError(f"{MANIFEST} is not a teacher-output store manifest")
    if _with_digest(manifest).get("manifest_sha256") != manifest.get("manifest_sha256"):
        raise TeacherStoreError(f"{MANIFEST} was modified after it was written (its digest does not match)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TeacherStoreError(f"format version {manifest.get('format_version')}, this kd-env reads {FORMAT_VERSION}")
    if store_key(manifest["key_inputs"]) != manifest.get("key"):
        raise TeacherStoreError("the manifest's key does not match its contents")
    if folder.name != manifest.get("key"):
        raise TeacherStoreError(
            f"the folder {folder.name} holds the store of key {manifest.get('key')}, built for {describe_views(manifest['key_inputs'])}"
        )
    return manifest


def describe_views(key_inputs: Mapping[str, Any]) -> str:
    """What a store's rows are, in words: ``"the un-augmented images"`` or its views' count, seed
    and augmentation (issue #27)."""
    views = key_inputs.get("views")
    if not views:
        return "the un-augmented images"
    flip = ", horizontal flip" if views.get("horizontal_flip") else ""
    return f"{views['count']} augmented views per image (seed {views['seed']}, crop padding {views['crop_padding']}{flip})"


def _hash_block(file: IO[bytes], index: int, block_size: int) -> str:
    file.seek(index * block_size)
    return hashlib.sha256(file.read(block_size)).hexdigest()


def _check_file(folder: Path, entry: Mapping[str, Any], full: bool, rng: random.Random) -> None:
    """Size, header, and all or a sample of the block digests of one array file."""
    path = folder / entry["file"]
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise TeacherStoreError(f"{entry['file']} is missing") from exc
    if stat.st_size != entry["bytes"]:
        raise TeacherStoreError(f"{entry['file']} has {stat.st_size} bytes, the manifest says {entry['bytes']} (truncated?)")
    digests: list[str] = entry["block_sha256"]
    block_size = int(entry["block_size"])
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
        if list(shape) != list(entry["shape"]) or fortran_order or str(dtype) != entry["dtype"] or file.tell() != entry["header_bytes"]:
            raise TeacherStoreError(f"{entry['file']}: header {shape} {dtype} does not match the manifest")
        # an mtime other than the recorded one means written after the build, or copied: hash
        # it all, so an edit is caught and a faithful copy is still accepted
        blocks: Iterable[int]
        if full or stat.st_mtime_ns != entry["mtime_ns"]:
            blocks = range(len(digests))
        else:
            blocks = sorted({0, len(digests) - 1, rng.randrange(len(digests))})
        for index in blocks:
            if _hash_block(file, index, block_size) != digests[index]:
                raise TeacherStoreError(f"{entry['file']}: block {index} does not match its checksum (the file was modified)")
