"""The teacher-output store: the teachers' outputs over a training set, computed once, on disk.

When augmentation is off, every training image looks the same to the teachers in every epoch,
so their logits, embeddings and feature maps can be computed once. This module writes them to
the kd-env cache and opens them in every later run, process and test (memory-mapped, see
:attr:`TeacherOutputStore.arrays`; batches are read row by row with ``preadv``, which keeps the
pages out of the process's RSS, see :mod:`~kd_env.teacher_outputs.reading`); runs that go in
parallel share the file pages through the OS page cache. The store is a cache, never a source of
truth: deleting it only costs the time of one teacher pass.

Layout: ``<cache>/teacher_outputs/<key>/`` holds one ``.npy`` file per array and a
``manifest.json``:

* ``logits.npy``: ``[N, K, C]``, always float32. Logits are small (40 bytes per teacher and sample
  for 10 classes) and the KD loss divides them by the temperature inside a softmax, where
  float16's 3-digit precision would show; keeping them exact costs nothing.
* ``embedding_<k>.npy``: ``[N, D_k]`` and ``feature_map_<k>.npy``: ``[N, C_k, H_k, W_k]`` (only
  with feature KD), in the store's dtype: float16 by default (half the disk, page cache and read
  bandwidth of float32), float32 on request. They are converted to float32 per batch, so the
  loss arithmetic is the same as with outputs computed in memory.

Rows are in the order of the engine's training set (after the validation split), so a batch is
a row gather.

Augmented views (issue #27, ``augment_views=V``): a store of the teachers' outputs on V fixed
augmented views of every training image has ``V x N`` rows, row ``image * V + view``; the views'
count, seed, augmentation and the SHA-256 of their table are in the key (``key_inputs["views"]``),
so a run never opens a store of other views (one found under its key, a copy, is rebuilt with one
warning line naming the views it was built for). Such a store may keep the logits only, or the
logits and embeddings (``arrays``). Its size is known before the build
(:mod:`~kd_env.teacher_outputs.size`) and checked against the disk's free space.

Key: the folder name is the SHA-256 (first 32 hex digits) of the canonical JSON of
:func:`store_key_inputs`: the format version, each teacher's class and weight checksum (the
checkpoint's ``sha256`` metadata when the model carries ``teacher_metadata``, else
:func:`kd_env.models.digest.state_dict_sha256` of its weights), a SHA-256 of the training images and
labels, the normalisation (mean/std), which arrays are stored and their dtype. Anything that
changes the content changes the key; stale stores are simply never opened again (``kd-env
store clear`` removes them).

Writing is atomic: a builder holds an exclusive ``fcntl.flock`` on ``<key>.lock`` (a second
process wanting the same store waits, then reads the first one's result), writes into a hidden
temp folder, streams per-block SHA-256 digests as it writes, fsyncs, writes ``manifest.json``
last, and renames the folder into place. A half-written store is never visible under its key.

Verification: every open checks the manifest (its own digest, format version, key), each file's
size and ``.npy`` header against the manifest (this catches truncation and a mismatched store),
its modification time, and the digests of its first, last and one random 1 MiB block. A file
whose mtime differs from the recorded one (edited, or copied without ``-p``) is hashed in full:
an edit is caught, a faithful copy is accepted. Hashing a whole store takes seconds (SHA-256 runs
at 200-500 MB/s on our CPUs, a float16 Fashion-MNIST store is ~0.9 GB) and would break the
"open in well under 2 s" goal, so the full check is ``kd-env store verify``. A corrupt store is
removed and rebuilt, with one warning log line; it is never used silently. Where no store can be
written (read-only cache folder, disk full), :class:`TeacherStoreUnavailable` is raised and the
engine computes the outputs in memory as before.

The package: :mod:`~kd_env.teacher_outputs.key` (the key), :mod:`~kd_env.teacher_outputs.format`
(errors, array files, manifest and verification), :mod:`~kd_env.teacher_outputs.maintenance`
(list / verify / clear), :mod:`~kd_env.teacher_outputs.size` (a store's size, the free-space
check); the store itself, its builder and reader, here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import random
import secrets
import shutil
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from kd_env.teacher_outputs.format import (
    _FORMAT_NAME,
    BLOCK_SIZE,
    MANIFEST,
    ArraySpec,
    TeacherBatch,
    TeacherStoreError,
    TeacherStoreUnavailable,
    _array_specs,
    _BlockHasher,
    _check_file,
    _read_manifest,
    _with_digest,
    describe_views,
)
from kd_env.teacher_outputs.key import (
    FORMAT_VERSION,
    STORE_DTYPES,
    data_checksum,
    store_key,
    store_key_inputs,
    stores_dir,
    teacher_checksum,
)
from kd_env.teacher_outputs.maintenance import clear_stores, list_stores
from kd_env.teacher_outputs.reading import read_rows
from kd_env.teacher_outputs.size import StoreSize, check_free_space, format_bytes, store_size

try:  # POSIX only; without it two builders may both build (the loser discards its copy)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no fcntl module on Windows: None stands for it

__all__ = [
    "FORMAT_VERSION",
    "STORE_DTYPES",
    "StoreSize",
    "TeacherBatch",
    "TeacherOutputStore",
    "TeacherStoreError",
    "TeacherStoreUnavailable",
    "check_free_space",
    "clear_stores",
    "data_checksum",
    "format_bytes",
    "list_stores",
    "store_key",
    "store_key_inputs",
    "store_size",
    "stores_dir",
    "teacher_checksum",
]

logger = logging.getLogger(__name__)


def _write_bytes(file: IO[bytes], data: memoryview) -> None:
    """The one place that writes store data (tests replace it to simulate a full disk)."""
    file.write(data)


class _NpyWriter:
    """Streams rows into a ``.npy`` file and checksums it block by block on the way."""

    def __init__(self, path: Path, spec: ArraySpec, num_samples: int) -> None:
        self.path, self.spec, self.num_samples = path, spec, num_samples
        self.rows_written = 0
        self.hasher = _BlockHasher()
        self.file = open(path, "xb")
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(spec.dtype)),
            "fortran_order": False,
            "shape": (num_samples, *spec.row_shape),
        }
        buffer = _BytesSink()
        np.lib.format.write_array_header_1_0(buffer, header)
        self.header_bytes = len(buffer.data)
        self._write(memoryview(bytes(buffer.data)))

    def _write(self, data: memoryview) -> None:
        _write_bytes(self.file, data)
        self.hasher.update(data)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.spec.dtype)
        if rows.shape[1:] != self.spec.row_shape:
            raise ValueError(f"{self.spec.name}: rows of shape {rows.shape[1:]}, expected {self.spec.row_shape}")
        self._write(memoryview(rows).cast("B"))  # type: ignore[arg-type]  # numpy's stubs omit ndarray's buffer protocol
        self.rows_written += rows.shape[0]

    def close(self) -> dict[str, Any]:
        """Flush, fsync and close; the manifest entry of the file."""
        if self.rows_written != self.num_samples:
            raise TeacherStoreError(f"{self.spec.name}: {self.rows_written} rows written, expected {self.num_samples}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        stat = self.path.stat()
        return {
            "file": self.spec.file,
            "shape": [self.num_samples, *self.spec.row_shape],
            "dtype": self.spec.dtype,
            "header_bytes": self.header_bytes,
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "block_size": BLOCK_SIZE,
            "block_sha256": self.hasher.finish(),
        }

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


class _BytesSink:
    """A write-only file object that keeps what is written (for the ``.npy`` header)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _close_descriptors(descriptors: dict[str, int]) -> None:
    """Close a store's read descriptors and empty the dict in place (its finalizer holds it)."""
    for descriptor in descriptors.values():
        with contextlib.suppress(OSError):
            os.close(descriptor)
    descriptors.clear()


class TeacherOutputStore:
    """A verified, memory-mapped store of teacher outputs. Open with :meth:`open` or :meth:`open_or_build`.

    Attributes:
        path: the store's folder.
        manifest: the parsed ``manifest.json``.
        arrays: name -> read-only ``numpy`` array over the mapped file
            (``logits``, ``embedding.<k>``, ``feature_map.<k>``).
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.arrays: dict[str, np.ndarray] = {}
        self._maps: list[mmap.mmap] = []
        self._descriptors: dict[str, int] = {}
        # raw descriptors, unlike the mmaps, are not closed when the store is garbage collected: a
        # store dropped without close() (an env nobody closed) would leak one per array, and a
        # process with the usual 1024-descriptor limit ran out of them
        weakref.finalize(self, _close_descriptors, self._descriptors)
        try:
            for name, entry in manifest["arrays"].items():
                with open(path / entry["file"], "rb") as file:
                    mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
                self._maps.append(mapped)
                if hasattr(os, "preadv"):
                    self._descriptors[name] = os.open(path / entry["file"], os.O_RDONLY)
                count = int(np.prod(entry["shape"]))
                array = np.frombuffer(mapped, dtype=entry["dtype"], count=count, offset=entry["header_bytes"])
                self.arrays[name] = array.reshape(entry["shape"])
        except (OSError, ValueError) as exc:
            self.close()
            raise TeacherStoreError(f"cannot map {path}: {exc}") from exc
        self.num_teachers = int(manifest["arrays"]["logits"]["shape"][1])
        self.has_embeddings = "embedding.0" in self.arrays
        self.has_feature_maps = "feature_map.0" in self.arrays

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, full: bool = False, expected_key: str | None = None) -> TeacherOutputStore:
        """Open and verify a store (quick checks; ``full=True`` hashes every block).

        Raises:
            TeacherStoreError: the store is missing, truncated, mismatched or corrupt.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise TeacherStoreError(f"no store at {folder}")
        manifest = _read_manifest(folder)
        if expected_key is not None and manifest["key"] != expected_key:
            raise TeacherStoreError(
                f"the store holds key {manifest['key']} (built for {describe_views(manifest['key_inputs'])}), expected {expected_key}"
            )
        rng = random.Random(secrets.randbits(64))  # a different sampled block on every open
        for entry in manifest["arrays"].values():
            _check_file(folder, entry, full, rng)
        return cls(folder, manifest)

    @classmethod
    def open_or_build(
        cls,
        key_inputs: dict[str, Any],
        compute: Callable[[], Iterator[TeacherBatch]],
        *,
        cache_dir: str | os.PathLike | None = None,
        teacher_names: Sequence[str] | None = None,
        build_info: Mapping[str, Any] | None = None,
        expected_bytes: int | None = None,
    ) -> TeacherOutputStore:
        """The store for ``key_inputs``: opened if a valid one exists, else built from ``compute()``.

        ``compute()`` yields teacher outputs for consecutive chunks of the training set, in order.
        A store that fails verification is removed and rebuilt (one warning log line). A second
        process asking for the same store while it is being built waits for the builder.
        ``expected_bytes`` (:func:`~kd_env.teacher_outputs.size.store_size`): checked against the
        disk's free space before the build starts.

        Raises:
            TeacherStoreUnavailable: nothing can be written in the cache folder (read-only, disk
                full, too little free space for ``expected_bytes``, ...); no partial store is
                left behind.
        """
        root = stores_dir(cache_dir)
        key = store_key(key_inputs)
        folder = root / key
        problem: str | None = None
        if folder.exists():
            try:
                return cls.open(folder, expected_key=key)
            except TeacherStoreError as exc:
                problem = str(exc)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_file = open(root / f"{key}.lock", "a+b")
        except OSError as exc:
            raise TeacherStoreUnavailable(exc.errno, f"cannot write a teacher-output store in {root}: {exc.strerror or exc}") from exc
        with lock_file, _exclusive(lock_file, folder):
            if folder.exists():
                try:  # another process may have finished (or repaired) it while we waited
                    return cls.open(folder, expected_key=key)
                except TeacherStoreError as exc:
                    problem = str(exc)
                logger.warning("teacher-output store %s is invalid (%s); rebuilding it", folder, problem)
                try:
                    _remove_folder(folder)
                except OSError as exc:
                    raise TeacherStoreUnavailable(exc.errno, f"cannot replace the invalid store {folder}: {exc.strerror or exc}") from exc
            if expected_bytes is not None:
                check_free_space(root, expected_bytes)
            return cls._build(folder, key, key_inputs, compute, teacher_names, build_info)

    @classmethod
    def _build(
        cls,
        folder: Path,
        key: str,
        key_inputs: dict[str, Any],
        compute: Callable[[], Iterator[TeacherBatch]],
        teacher_names: Sequence[str] | None,
        build_info: Mapping[str, Any] | None,
    ) -> TeacherOutputStore:
        """Write into a hidden temp folder, manifest last, then rename it to ``folder``."""
        num_samples = int(key_inputs["num_samples"])
        started = time.perf_counter()
        temp = folder.parent / f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        writers: list[_NpyWriter] = []
        store_maps = "feature_maps" in key_inputs["arrays"]
        store_embeddings = "embeddings" in key_inputs["arrays"]
        try:
            temp.mkdir()
            for logits, embeddings, feature_maps in compute():
                if not writers:  # shapes are known from the first chunk
                    specs = _array_specs(
                        logits.shape[0],
                        logits.shape[2],
                        [e.shape[1] for e in embeddings] if store_embeddings else [],
                        [tuple(m.shape[1:]) for m in feature_maps] if store_maps else None,
                        key_inputs["dtype"],
                    )
                    writers = [_NpyWriter(temp / spec.file, spec, num_samples) for spec in specs]
                chunk = [logits.transpose(0, 1), *(embeddings if store_embeddings else []), *(feature_maps if store_maps else [])]
                for writer, tensor in zip(writers, chunk):
                    # .contiguous(): channels-last feature maps are stored in NCHW order
                    writer.append(tensor.detach().to("cpu").contiguous().numpy())
            if not writers:
                raise TeacherStoreError("no teacher outputs to store (empty training set)")
            arrays = {writer.spec.name: writer.close() for writer in writers}
            manifest = _with_digest(
                {
                    "format": _FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "key": key,
                    "key_inputs": key_inputs,
                    "teacher_names": list(teacher_names or []),
                    "num_samples": num_samples,
                    "arrays": arrays,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "build_seconds": round(time.perf_counter() - started, 3),
                    "built_with": {"torch": str(torch.__version__), "numpy": str(np.__version__), **dict(build_info or {})},
                }
            )
            with open(temp / MANIFEST, "xb") as file:
                _write_bytes(file, memoryview(json.dumps(manifest, indent=1).encode()))
                file.flush()
                os.fsync(file.fileno())
            _fsync_dir(temp)
            os.replace(temp, folder)
            _fsync_dir(folder.parent)
        except BaseException as exc:
            for writer in writers:
                writer.abort()
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise TeacherStoreUnavailable(
                    exc.errno, f"cannot write a teacher-output store in {folder.parent}: {exc.strerror or exc}"
                ) from exc
            raise
        logger.info("built teacher-output store %s in %.1f s", folder, time.perf_counter() - started)
        return cls.open(folder, expected_key=key)

    # ------------------------------------------------------------------ reading
    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def nbytes(self) -> int:
        """Bytes on disk (array files)."""
        return sum(int(entry["bytes"]) for entry in self.manifest["arrays"].values())

    def batch(self, indices: torch.Tensor | np.ndarray, device: str | torch.device = "cpu", *, feature_maps: bool = True) -> TeacherBatch:
        """The rows ``indices`` of every array, as float32 tensors on ``device`` (without the
        feature maps, the largest arrays, where ``feature_maps`` is False; the embeddings an empty
        list where the store keeps logits only)."""
        rows = indices.detach().to("cpu").numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        rows = rows.astype(np.int64, copy=False)

        def gather(name: str) -> torch.Tensor:
            return torch.from_numpy(self._read_rows(name, rows)).to(device=device, dtype=torch.float32)

        logits = gather("logits").transpose(0, 1)
        embeddings = [gather(f"embedding.{k}") for k in range(self.num_teachers)] if self.has_embeddings else []
        maps = [gather(f"feature_map.{k}") for k in range(self.num_teachers)] if feature_maps and self.has_feature_maps else []
        return logits, embeddings, maps

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one array: :func:`~kd_env.teacher_outputs.reading.read_rows` from its file
        (a gather from the mapping where ``preadv`` is missing)."""
        descriptor = self._descriptors.get(name)
        if descriptor is None:
            return np.take(self.arrays[name], rows, axis=0)
        return read_rows(descriptor, self.manifest["arrays"][name], rows, self.num_samples)

    def close(self) -> None:
        """Drop the mappings (arrays handed out by :attr:`arrays` must not be used afterwards)."""
        self.arrays = {}
        _close_descriptors(self._descriptors)
        for mapped in self._maps:
            with contextlib.suppress(BufferError):  # a view still alive elsewhere keeps it mapped
                mapped.close()
        self._maps = []

    def __enter__(self) -> TeacherOutputStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _exclusive(lock_file: IO[bytes], folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``; if another process holds it, say so and wait."""
    if fcntl is None:  # pragma: no cover - Windows: builds stay atomic, but may be duplicated
        yield
        return
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.warning("another process is building teacher-output store %s; waiting for it", folder)
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _remove_folder(folder: Path) -> None:
    """Move aside, then delete: readers never see a half-deleted store under its key."""
    trash = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.trash"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
