"""The teacher-output store: the teachers' outputs over a training set, computed once, on disk.

When augmentation is off, every training image looks the same to the teachers in every epoch,
so their logits, embeddings and feature maps can be computed once. This module writes them to
the kd-env cache and opens them in every later run, process and test (memory-mapped, see
:attr:`TeacherOutputStore.arrays`; batches are read row by row with ``preadv``, which keeps the
pages out of the process's RSS, see :meth:`TeacherOutputStore._read_rows`); runs that go in
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

Key: the folder name is the SHA-256 (first 32 hex digits) of the canonical JSON of
:func:`store_key_inputs`: the format version, each teacher's class and weight checksum (the
checkpoint's ``sha256`` metadata when the model carries ``teacher_metadata``, else
:func:`kd_env.teachers.state_dict_sha256` of its weights), a SHA-256 of the training images and
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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import random
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

try:  # POSIX only; without it two builders may both build (the loser discards its copy)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "STORE_DTYPES",
    "TeacherOutputStore",
    "TeacherStoreError",
    "TeacherStoreUnavailable",
    "clear_stores",
    "data_checksum",
    "list_stores",
    "store_key",
    "store_key_inputs",
    "stores_dir",
    "teacher_checksum",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the layout or the meaning of a stored array changes: old stores get new keys."""
STORE_DTYPES = ("float16", "float32")
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


# --------------------------------------------------------------------------------------------
# the key


def stores_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds all stores: ``<cache_dir>/teacher_outputs`` (default: the kd-env cache)."""
    if cache_dir is None:
        from kd_env.data import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / "teacher_outputs"


def teacher_checksum(model: nn.Module) -> str:
    """SHA-256 of a teacher's weights: its checkpoint's verified ``sha256`` when it has one.

    :func:`kd_env.teachers.load_teacher` checks that digest against the weights when it loads
    them, so it can stand for them without hashing again; other models are hashed here.
    """
    metadata = getattr(model, "teacher_metadata", None)
    if isinstance(metadata, Mapping) and isinstance(metadata.get("sha256"), str):
        return str(metadata["sha256"])
    from kd_env.teachers import state_dict_sha256

    return state_dict_sha256(model.state_dict())


def data_checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 over the images' and labels' dtypes, shapes and bytes (CPU copies)."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def store_key_inputs(
    teachers: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    feature_maps: bool,
    dtype: str = "float16",
) -> dict[str, Any]:
    """Everything that determines a store's content, as a JSON-serialisable dict."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    return {
        "format_version": FORMAT_VERSION,
        "teachers": [{"class": type(t).__qualname__, "sha256": teacher_checksum(t)} for t in teachers],
        "data_sha256": data_checksum(images, labels),
        "num_samples": int(labels.shape[0]),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "arrays": ["logits", "embeddings", "feature_maps"] if feature_maps else ["logits", "embeddings"],
        "dtype": dtype,
    }


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def store_key(key_inputs: Mapping[str, Any]) -> str:
    """The store's folder name: the first 32 hex digits of SHA-256 over the canonical key inputs."""
    return hashlib.sha256(_canonical(dict(key_inputs))).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# writing


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


def _with_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return {**body, "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()}


# --------------------------------------------------------------------------------------------
# reading and verifying


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
    if store_key(manifest["key_inputs"]) != manifest.get("key") or folder.name != manifest.get("key"):
        raise TeacherStoreError("the manifest's key does not match its contents or the folder name")
    return manifest


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
            raise TeacherStoreError(f"the store holds key {manifest['key']}, expected {expected_key}")
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
    ) -> TeacherOutputStore:
        """The store for ``key_inputs``: opened if a valid one exists, else built from ``compute()``.

        ``compute()`` yields teacher outputs for consecutive chunks of the training set, in order.
        A store that fails verification is removed and rebuilt (one warning log line). A second
        process asking for the same store while it is being built waits for the builder.

        Raises:
            TeacherStoreUnavailable: nothing can be written in the cache folder (read-only, disk
                full, ...); no partial store is left behind.
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
        try:
            temp.mkdir()
            for logits, embeddings, feature_maps in compute():
                if not writers:  # shapes are known from the first chunk
                    specs = _array_specs(
                        logits.shape[0],
                        logits.shape[2],
                        [e.shape[1] for e in embeddings],
                        [tuple(m.shape[1:]) for m in feature_maps] if store_maps else None,
                        key_inputs["dtype"],
                    )
                    writers = [_NpyWriter(temp / spec.file, spec, num_samples) for spec in specs]
                chunk = [logits.transpose(0, 1), *embeddings, *(feature_maps if store_maps else [])]
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

    def batch(self, indices: torch.Tensor | np.ndarray, device: str | torch.device = "cpu") -> TeacherBatch:
        """The rows ``indices`` of every array, as float32 tensors on ``device``."""
        rows = indices.detach().to("cpu").numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        rows = rows.astype(np.int64, copy=False)

        def gather(name: str) -> torch.Tensor:
            return torch.from_numpy(self._read_rows(name, rows)).to(device=device, dtype=torch.float32)

        logits = gather("logits").transpose(0, 1)
        embeddings = [gather(f"embedding.{k}") for k in range(self.num_teachers)]
        feature_maps = [gather(f"feature_map.{k}") for k in range(self.num_teachers)] if self.has_feature_maps else []
        return logits, embeddings, feature_maps

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one array, read with one ``preadv`` per row (a gather from the mapping where
        ``preadv`` is missing).

        Why not gather from the mapping: file pages a process has mapped count in its resident
        memory (RSS, and its peak, VmHWM) until unmapped, and over an epoch of random batches
        that is the whole store. Measured on the float16 Fashion-MNIST store (885 MiB, batch
        128, a loaded 2-core machine): gathering from the mapping took 1.2-1.8 ms per batch but
        RSS grew by the whole 885 MiB; ``MADV_DONTNEED`` after every batch kept RSS flat but
        cost 9.8 ms per batch (the kernel's fault-around maps 16 pages per fault, again each
        batch); ``preadv`` per row took 4.3 ms per batch with RSS flat, the data coming from the
        same shared page cache.
        """
        descriptor = self._descriptors.get(name)
        if descriptor is None:
            return np.take(self.arrays[name], rows, axis=0)
        entry = self.manifest["arrays"][name]
        out = np.empty((len(rows), *entry["shape"][1:]), dtype=entry["dtype"])
        row_bytes = out.itemsize * int(np.prod(entry["shape"][1:]))
        buffer, header = memoryview(out).cast("B"), int(entry["header_bytes"])  # type: ignore[arg-type]  # numpy's stubs omit ndarray's buffer protocol
        for position, row in enumerate(rows.tolist()):
            if not 0 <= row < self.num_samples:
                raise IndexError(f"row {row} is outside the store's {self.num_samples} samples")
            target = buffer[position * row_bytes : (position + 1) * row_bytes]
            if os.preadv(descriptor, [target], header + row * row_bytes) != row_bytes:
                raise TeacherStoreError(f"{entry['file']}: short read at row {row} (the file shrank?)")
        return out

    def close(self) -> None:
        """Drop the mappings (arrays handed out by :attr:`arrays` must not be used afterwards)."""
        self.arrays = {}
        for descriptor in self._descriptors.values():
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._descriptors = {}
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


# --------------------------------------------------------------------------------------------
# list / verify / clear (the ``kd-env store`` commands)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def list_stores(cache_dir: str | os.PathLike | None = None, *, verify: bool = False) -> list[dict[str, Any]]:
    """One dict per store folder: ``path``, ``key``, ``bytes``, ``teachers``, ``num_samples``,
    ``dtype``, ``created``, ``build_seconds`` and ``status`` (``"ok"``, ``"unchecked"``, or the
    problem found). ``verify=True`` hashes every block (slow); otherwise the quick open checks run."""
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
