"""RowStorage: kept rows are copies, chunks are shared and freed with their last row."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from kd_env.agents.row_storage import RowStorage


def test_rows_are_copies_in_shared_chunks():
    storage = RowStorage(rows_per_chunk=3)
    sources = [torch.full((2, 4), float(i)) for i in range(5)]
    rows = [storage.keep(source) for source in sources]
    for source in sources:
        source.add_(100.0)  # the kept rows are copies
    for i, row in enumerate(rows):
        assert torch.equal(row, torch.full((2, 4), float(i)))
    base = [row.untyped_storage().data_ptr() for row in rows]
    assert base[0] == base[1] == base[2] != base[3] == base[4]  # 3 rows a chunk
    other = storage.keep(torch.arange(3))  # another shape and dtype: its own chunk
    assert other.dtype == torch.int64 and other.untyped_storage().data_ptr() not in base


def test_a_chunk_is_freed_with_its_last_row():
    storage = RowStorage(rows_per_chunk=2)
    rows = [storage.keep(torch.ones(8)) for _ in range(2)]
    chunk = weakref.ref(rows[0]._base)  # the chunk the rows are views of
    storage.release()
    del rows[0]
    gc.collect()
    assert chunk() is not None  # one row still holds it
    rows.clear()
    gc.collect()
    assert chunk() is None


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="rows_per_chunk"):
        RowStorage(rows_per_chunk=0)
