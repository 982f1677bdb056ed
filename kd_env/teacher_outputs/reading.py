"""Reading rows of a store's array files without mapping them into the process.

Why not gather from the memory mapping: file pages a process has mapped count in its resident
memory (RSS, and its peak, VmHWM) until unmapped, and over an epoch of random batches that is
the whole store. Measured on the float16 Fashion-MNIST store (885 MiB, batch 128, a loaded
2-core machine): gathering from the mapping took 1.2-1.8 ms per batch but RSS grew by the whole
885 MiB; ``MADV_DONTNEED`` after every batch kept RSS flat but cost 9.8 ms per batch (the
kernel's fault-around maps 16 pages per fault, again each batch); ``preadv`` per row took 4.3 ms
per batch with RSS flat, the data coming from the same shared page cache.

A read per row costs a system call (about 2 us here), so rows that are dense in a file
(MTKD-RL's update re-reads a sixteenth of the training set at a time) are read as whole blocks
into one reused buffer instead: RSS does not grow either.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kd_env.teacher_outputs.format import TeacherStoreError

READ_BLOCK_BYTES = 256 * 1024
"""Size of the block reads that serve many rows at once (:func:`read_blocks`)."""
DENSE_ROWS_PER_BLOCK = 16
"""Read whole blocks when the rows ask for at least this many per block touched: a block read
costs about as much as 16 reads of one row (a system call each) on our machines."""


def read_rows(descriptor: int, entry: dict[str, Any], rows: np.ndarray, num_samples: int) -> np.ndarray:
    """Rows ``rows`` (any order, repeats allowed) of the array a manifest ``entry`` describes,
    from its open file: a ``preadv`` per row, or :func:`read_blocks` where the rows are dense.

    Raises:
        IndexError: a row outside ``[0, num_samples)``.
        TeacherStoreError: the file is shorter than its manifest says.
    """
    if len(rows) and (rows.min() < 0 or rows.max() >= num_samples):
        bad = int(rows[(rows < 0) | (rows >= num_samples)][0])
        raise IndexError(f"row {bad} is outside the store's {num_samples} samples")
    out = np.empty((len(rows), *entry["shape"][1:]), dtype=entry["dtype"])
    row_bytes = out.itemsize * int(np.prod(entry["shape"][1:]))
    rows_per_block = max(1, READ_BLOCK_BYTES // row_bytes)
    blocks = np.unique(rows // rows_per_block)
    if len(rows) >= DENSE_ROWS_PER_BLOCK * len(blocks):
        return read_blocks(descriptor, entry, rows, blocks, rows_per_block, num_samples, out)
    header = int(entry["header_bytes"])
    buffer = memoryview(out).cast("B")  # type: ignore[arg-type]  # numpy's stubs omit ndarray's buffer protocol
    for position, row in enumerate(rows.tolist()):
        target = buffer[position * row_bytes : (position + 1) * row_bytes]
        if os.preadv(descriptor, [target], header + row * row_bytes) != row_bytes:
            raise TeacherStoreError(f"{entry['file']}: short read at row {row} (the file shrank?)")
    return out


def read_blocks(
    descriptor: int,
    entry: dict[str, Any],
    rows: np.ndarray,
    blocks: np.ndarray,
    rows_per_block: int,
    num_samples: int,
    out: np.ndarray,
) -> np.ndarray:
    """Fill ``out`` with ``rows``: each block (``rows_per_block`` rows) in ``blocks`` read whole,
    in one ``preadv``, into one reused buffer, and its wanted rows copied out."""
    row_shape = tuple(entry["shape"][1:])
    block = np.empty((rows_per_block, *row_shape), dtype=entry["dtype"])
    block_bytes = memoryview(block).cast("B")  # type: ignore[arg-type]  # numpy's stubs omit ndarray's buffer protocol
    row_bytes = block.itemsize * int(np.prod(row_shape))
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for block_index in blocks.tolist():
        first = block_index * rows_per_block
        count = min(rows_per_block, num_samples - first)
        wanted = count * row_bytes
        if os.preadv(descriptor, [block_bytes[:wanted]], int(entry["header_bytes"]) + first * row_bytes) != wanted:
            raise TeacherStoreError(f"{entry['file']}: short read at row {first} (the file shrank?)")
        start, stop = np.searchsorted(sorted_rows, [first, first + count])
        out[order[start:stop]] = block[sorted_rows[start:stop] - first]
    return out
