"""The teacher-output store: format, key, verification, faults, concurrency, engine and CLI."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from processes import child_environment

from kd_env import teacher_outputs as store_module
from kd_env.engine import per_sample_kd_loss
from kd_env.teacher_outputs import (
    TeacherOutputStore,
    TeacherStoreError,
    TeacherStoreUnavailable,
    list_stores,
    reading,
    store_key,
    store_key_inputs,
)

WEIGHTS = torch.tensor([0.6, 0.4])


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _losses(engine, steps: int) -> list[float]:
    return [engine.step(WEIGHTS).loss for _ in range(steps)]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("kd_env")]


def _store_files(engine) -> dict[str, np.ndarray]:
    return {name: np.array(array) for name, array in engine.teacher_source.store.arrays.items()}


def test_build_then_reopen_gives_the_outputs_computed_in_memory(make_engine, cache, monkeypatch):
    built = make_engine(store_dtype="float32", cache_dir=str(cache))
    memory = make_engine(teacher_store=False)
    assert built.teacher_source.store is not None and built.teacher_source.memory is None
    arrays = _store_files(built)
    reference = memory.teacher_source.memory
    np.testing.assert_array_equal(arrays["logits"], reference["logits"].transpose(0, 1).numpy())
    for k in range(2):
        np.testing.assert_array_equal(arrays[f"embedding.{k}"], reference["embeddings"][k].numpy())
        np.testing.assert_array_equal(arrays[f"feature_map.{k}"], reference["feature_maps"][k].contiguous().numpy())
    # a second engine opens the store instead of running the teachers
    from kd_env.engine import TeacherOutputSource

    def no_teacher_pass(self):
        raise AssertionError("the teachers ran again although the store exists")

    monkeypatch.setattr(TeacherOutputSource, "training_set_chunks", no_teacher_pass)
    again = make_engine(store_dtype="float32", cache_dir=str(cache))
    assert again.teacher_source.store.path == built.teacher_source.store.path
    for name, array in _store_files(again).items():
        np.testing.assert_array_equal(array, arrays[name])
    assert len(list_stores(cache)) == 1


def test_float32_store_gives_the_same_run_and_resume_is_exact(make_engine, cache, tmp_path):
    stored = make_engine(store_dtype="float32", cache_dir=str(cache))
    memory = make_engine(teacher_store=False)
    stored.reset(seed=3)
    memory.reset(seed=3)
    assert _losses(stored, 20) == _losses(memory, 20)

    reference = make_engine(cache_dir=str(cache))  # the float16 default
    reference.reset(seed=5)
    expected = _losses(reference, 2 * reference.steps_per_epoch)
    interrupted = make_engine(cache_dir=str(cache))
    interrupted.reset(seed=5)
    cut = reference.steps_per_epoch + 3
    first = _losses(interrupted, cut)
    torch.save(interrupted.state_dict(), tmp_path / "engine.pt")
    resumed = make_engine(cache_dir=str(cache))
    resumed.load_state_dict(torch.load(tmp_path / "engine.pt", weights_only=True))
    assert first + _losses(resumed, 2 * reference.steps_per_epoch - cut) == expected


def test_float16_store_kd_loss_error_is_below_1e_3(make_engine, cache):
    half = make_engine(cache_dir=str(cache))
    full = make_engine(store_dtype="float32", cache_dir=str(cache))
    assert half.teacher_source.store.path != full.teacher_source.store.path
    assert half.teacher_source.store.arrays["feature_map.1"].dtype == np.float16
    half_batch, full_batch = half.reset(seed=1), full.reset(seed=1)
    kd_half = per_sample_kd_loss(half_batch.student_logits.detach(), half_batch.teacher_logits, 4.0).mean()
    kd_full = per_sample_kd_loss(full_batch.student_logits.detach(), full_batch.teacher_logits, 4.0).mean()
    assert abs(float(kd_half) / float(kd_full) - 1) <= 1e-3
    mse_half, mse_full = half_batch.feature_mse.detach().mean(), full_batch.feature_mse.detach().mean()
    assert abs(float(mse_half) / float(mse_full) - 1) <= 1e-3


def test_key_follows_teacher_weights_data_and_dtype(synthetic_data, synthetic_teachers):
    data = synthetic_data

    def key(teachers=synthetic_teachers, images=data.train_images, dtype="float16", maps=True):
        return store_key(store_key_inputs(teachers, images, data.train_labels, data.mean, data.std, feature_maps=maps, dtype=dtype))

    base = key()
    assert key() == base
    changed = [synthetic_teachers[0], __import__("copy").deepcopy(synthetic_teachers[1])]
    with torch.no_grad():
        next(changed[1].parameters()).view(-1)[0] += 1e-3
    images = data.train_images.clone()
    images[0, 0, 0, 0] ^= 1
    assert len({base, key(teachers=changed), key(images=images), key(dtype="float32"), key(maps=False)}) == 5
    with pytest.raises(ValueError, match="dtype"):
        key(dtype="bfloat16")


def _corrupt_truncate(folder: Path) -> None:
    path = folder / "feature_map_1.npy"
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 100)


def _corrupt_edit(folder: Path) -> None:
    path = folder / "embedding_0.npy"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_edit_keeping_mtime(folder: Path) -> None:
    # block 0 (the header and first rows) is checked on every open, whatever the mtime says
    path = folder / "feature_map_0.npy"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _corrupt_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"]["logits"]["shape"][0] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _remove_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (_corrupt_truncate, "truncated"),
        (_corrupt_edit, "modified"),
        (_corrupt_edit_keeping_mtime, "modified"),
        (_corrupt_manifest, "manifest.json was modified"),
        (_remove_manifest, "no manifest.json"),
    ],
)
def test_damaged_store_is_detected_and_rebuilt_with_one_warning(make_engine, cache, caplog, corrupt, problem):
    original = make_engine(store_dtype="float32", cache_dir=str(cache))
    expected = _store_files(original)
    folder = original.teacher_source.store.path
    original.teacher_source.store.close()
    corrupt(folder)
    with pytest.raises(TeacherStoreError, match=problem):
        TeacherOutputStore.open(folder)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kd_env"):
        rebuilt = make_engine(store_dtype="float32", cache_dir=str(cache))
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "invalid" in warnings[0] and "rebuilding" in warnings[0]
    assert rebuilt.teacher_source.store.path == folder
    for name, array in _store_files(rebuilt).items():
        np.testing.assert_array_equal(array, expected[name])
    TeacherOutputStore.open(folder, full=True).close()


def test_copy_with_new_mtimes_is_hashed_in_full_and_accepted(make_engine, cache, monkeypatch):
    from kd_env.teacher_outputs import format as store_format

    # 4 KiB blocks: every array file spans several, so "all blocks" and "a sample" differ
    for module in (store_module, store_format):
        monkeypatch.setattr(module, "BLOCK_SIZE", 4096)
    folder = make_engine(cache_dir=str(cache)).teacher_source.store.path
    expected = {path.name: np.load(path) for path in folder.glob("*.npy")}
    manifest = json.loads((folder / "manifest.json").read_text())
    blocks = {entry["file"]: len(entry["block_sha256"]) for entry in manifest["arrays"].values()}
    assert min(blocks.values()) > 3
    hashed: dict[str, set[int]] = {}
    real_hash_block = store_format._hash_block

    def spy(file, index, block_size):
        hashed.setdefault(Path(file.name).name, set()).add(index)
        return real_hash_block(file, index, block_size)

    monkeypatch.setattr(store_format, "_hash_block", spy)
    TeacherOutputStore.open(folder).close()
    assert set(hashed) == set(blocks) and all(len(indices) <= 3 for indices in hashed.values())  # untouched: a sample
    for path in folder.glob("*.npy"):
        os.utime(path, ns=(1, 1))
    hashed.clear()
    with TeacherOutputStore.open(folder) as store:  # accepted: the content is the built one
        assert store.path == folder
    assert hashed == {name: set(range(count)) for name, count in blocks.items()}  # every block of every file
    for path in folder.glob("*.npy"):
        np.testing.assert_array_equal(np.load(path), expected[path.name])


def _read_only_open(monkeypatch) -> None:
    """Writes fail as on a read-only mount (tests run as root here, where chmod does not stop writes)."""
    real_open = open

    def read_only(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", read_only, raising=False)


def test_read_only_cache_runs_in_memory_with_one_warning(make_engine, cache, caplog, monkeypatch):
    cache.mkdir()
    _read_only_open(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kd_env"):
        engine = make_engine(store_dtype="float32", cache_dir=str(cache))
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "Read-only" in warnings[0] and "in memory" in warnings[0]
    assert engine.teacher_source.store is None and engine.teacher_source.memory is not None
    memory = make_engine(teacher_store=False)
    engine.reset(seed=2)
    memory.reset(seed=2)
    assert _losses(engine, 5) == _losses(memory, 5)


def test_read_only_cache_still_reads_an_existing_store(make_engine, cache, caplog, monkeypatch):
    folder = make_engine(cache_dir=str(cache)).teacher_source.store.path
    _read_only_open(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kd_env"):
        engine = make_engine(cache_dir=str(cache))
    assert engine.teacher_source.store is not None and engine.teacher_source.store.path == folder
    assert _warnings(caplog) == []


def test_disk_full_leaves_no_store_and_the_run_continues_in_memory(make_engine, cache, caplog, monkeypatch):
    written = {"bytes": 0}
    real_write = store_module._write_bytes

    def fills_up(file, data):
        if written["bytes"] + len(data) > 20_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["bytes"] += len(data)
        real_write(file, data)

    monkeypatch.setattr(store_module, "_write_bytes", fills_up)
    with caplog.at_level(logging.WARNING, logger="kd_env"):
        engine = make_engine(store_dtype="float32", cache_dir=str(cache))
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "No space left" in warnings[0]
    assert engine.teacher_source.store is None
    root = cache / "teacher_outputs"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # no half-written store
    memory = make_engine(teacher_store=False)
    engine.reset(seed=2)
    memory.reset(seed=2)
    assert _losses(engine, 5) == _losses(memory, 5)
    monkeypatch.setattr(store_module, "_write_bytes", real_write)
    assert make_engine(store_dtype="float32", cache_dir=str(cache)).teacher_source.store is not None  # space again


_BUILDER = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    import torch
    from kd_env.teacher_outputs import TeacherOutputStore

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cache, marker, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    key_inputs = {"format_version": 1, "teachers": [{"class": "Fake", "sha256": "0"}], "data_sha256": "0",
                  "num_samples": 40, "mean": [0.5], "std": [0.5], "arrays": ["logits", "embeddings"], "dtype": "float16"}

    def compute():
        with open(marker, "a") as file:
            file.write("built\\n")
        deadline = time.monotonic() + 120  # a fail-safe only: the test creates `go` once the other process waits
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for start in range(0, 40, 10):
            rows = torch.arange(start, start + 10, dtype=torch.float32)
            yield rows.view(1, 10, 1).expand(1, 10, 3), [rows.view(10, 1).expand(10, 4)], []

    with TeacherOutputStore.open_or_build(key_inputs, compute, cache_dir=cache) as store:
        print(float(store.arrays["embedding.0"].sum()))
    """
)


def test_two_processes_building_at_once_build_once(tmp_path):
    """The second process arrives while the first builds (ordered by events, not by sleeps): it
    waits for the first, then opens the store the first built."""
    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    marker, go = tmp_path / "builds.txt", tmp_path / "go"

    def start() -> subprocess.Popen[str]:
        argv = [sys.executable, str(script), str(tmp_path / "cache"), str(marker), str(go)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_environment())

    builder = start()
    deadline = time.monotonic() + 120  # fail-safe: the builder writes the marker once it holds the lock
    while not marker.exists() and builder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), builder.communicate()
    waiter = start()
    assert waiter.stderr is not None
    first_line = waiter.stderr.readline()  # blocks until the waiter logs that it waits on the lock
    go.touch()
    outputs = [process.communicate(timeout=120) for process in (builder, waiter)]
    assert [process.returncode for process in (builder, waiter)] == [0, 0], outputs
    assert marker.read_text().count("built") == 1
    assert [out.strip() for out, _ in outputs] == [str(float(4 * sum(range(40))))] * 2
    assert "another process is building" in first_line and "waiting" in first_line
    assert "waiting" not in outputs[0][1]  # the builder never waited


def test_open_or_build_raises_unavailable_without_a_writable_cache(tmp_path, monkeypatch):
    _read_only_open(monkeypatch)
    inputs = {"format_version": 1, "num_samples": 1, "arrays": ["logits", "embeddings"], "dtype": "float16"}
    with pytest.raises(TeacherStoreUnavailable, match="cannot write a teacher-output store"):
        TeacherOutputStore.open_or_build(inputs, lambda: iter(()), cache_dir=tmp_path)


def test_cli_store_list_verify_clear(make_engine, cache, capsys):
    from kd_env.cli import main

    folder = make_engine(cache_dir=str(cache)).teacher_source.store.path
    make_engine(store_dtype="float32", cache_dir=str(cache)).teacher_source.store.close()
    assert main(["store", "list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert folder.name in listing and "float16" in listing and "float32" in listing and "ok" in listing
    assert main(["store", "list", "--json", "--cache-dir", str(cache)]) == 0
    assert {entry["status"] for entry in json.loads(capsys.readouterr().out)} == {"ok"}
    assert main(["store", "verify", "--cache-dir", str(cache)]) == 0
    _corrupt_edit_keeping_mtime(folder)
    assert main(["store", "verify", folder.name[:8], "--cache-dir", str(cache)]) == 1
    assert "modified" in capsys.readouterr().out
    assert main(["store", "clear", folder.name[:8], "--cache-dir", str(cache)]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert len(list_stores(cache)) == 1
    assert main(["store", "clear", "--cache-dir", str(cache)]) == 0
    assert list_stores(cache) == []


def test_threads_helpers_change_no_environment_variable():
    from kd_env.utils import THREAD_VARIABLES, available_cores, set_threads, thread_environment, threads_per_run

    cores = available_cores()
    assert threads_per_run(1) == cores and threads_per_run(cores * 4) == 1
    before = dict(os.environ)
    assert set_threads(2) == 2 and torch.get_num_threads() == 2  # conftest puts one thread back
    child = thread_environment(3, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert child == {"PATH": "/bin", **{name: "3" for name in THREAD_VARIABLES}}
    assert thread_environment(1)["MKL_NUM_THREADS"] == "1"
    assert dict(os.environ) == before  # a library call leaks no setting into later child processes
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threads must be >= 1"):
            set_threads(bad)
        with pytest.raises(ValueError, match="threads must be >= 1"):
            thread_environment(bad)
    assert torch.get_num_threads() == 2  # a refused call changed nothing


def test_a_store_dropped_without_close_releases_its_descriptors(make_engine, cache):
    """An env or engine nobody closed must not keep the store's read descriptors: unlike the
    mmaps they are not closed with the object, and with a non-root user's default limit of 1024
    descriptors the test suite ran out of them."""
    import gc

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts descriptors through /proc (Linux)")
    folder = make_engine(cache_dir=str(cache)).teacher_source.store.path

    def open_descriptors() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    for _ in range(20):
        store = TeacherOutputStore.open(folder)
        assert store.batch(torch.arange(4))[0].shape[1] == 4  # logits [K, B, C], read through the descriptors
        del store
    assert open_descriptors() <= before + 2, "dropped stores kept their descriptors open"


@pytest.mark.parametrize("block_bytes", [1024, 4096, 1 << 20])
def test_block_reads_give_the_rows_a_read_per_row_gives(make_engine, cache, monkeypatch, block_bytes):
    engine = make_engine(cache_dir=str(cache))
    store = engine.teacher_source.store
    arrays = _store_files(engine)
    rng = np.random.default_rng(0)
    num = store.num_samples
    # unsorted, with repeats, the last row (a short last block) and the first
    rows = np.concatenate([rng.integers(0, num, 3 * num), [num - 1, 0, num - 1]])
    monkeypatch.setattr(reading, "READ_BLOCK_BYTES", block_bytes)
    block_reads = []
    original = reading.read_blocks
    monkeypatch.setattr(reading, "read_blocks", lambda *args: block_reads.append(1) or original(*args))
    for name, expected in arrays.items():
        np.testing.assert_array_equal(store._read_rows(name, rows), expected[rows], err_msg=name)
    if block_bytes == 1 << 20:  # one block holds each array: dense, every array read in blocks
        assert len(block_reads) == len(arrays)
    block_reads.clear()
    few = rng.integers(0, num, 3)
    for name, expected in arrays.items():
        np.testing.assert_array_equal(store._read_rows(name, few), expected[few], err_msg=name)
    assert not block_reads  # sparse: a read per row
    with pytest.raises(IndexError, match="outside"):
        store._read_rows("logits", np.append(rows, num))
