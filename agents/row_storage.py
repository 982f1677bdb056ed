"""Storage for tensors an agent keeps across many steps, written into preallocated chunks.

Why: an agent that keeps something small from every step (MTKD-RL keeps each batch's compact
states and rewards for its epoch-end update) allocates it between the step's large temporaries.
glibc's allocator then cannot reuse the holes the temporaries leave (its mmap threshold adapts
to them, so they come from the same heap as the kept pieces), and the process grows by far more
than it keeps: on the Fashion-MNIST pool, 2 MB of compact states per epoch grew the resident
set by 35 MB over an epoch; copied into chunks allocated 64 rows at a time, not at all
(``benchmarks/bench_speed.py --section agents``). No allocator setting is changed: rows of one
chunk are views of it, and a chunk is freed when no row of it is referenced any more.
"""

from __future__ import annotations

import torch

ROWS_PER_CHUNK = 64


class RowStorage:
    """Copies tensors into rows of chunk tensors, one chunk per shape and dtype being filled.

    :meth:`keep` returns a view that stays valid as long as it is referenced; a chunk is freed
    once no row of it is referenced and it is no longer the one being filled (one per shape and
    dtype, until it is full and the next row needs a new one, or :meth:`release`).

    Args:
        rows_per_chunk: rows allocated at once.
    """

    def __init__(self, rows_per_chunk: int = ROWS_PER_CHUNK) -> None:
        if rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
        self.rows_per_chunk = int(rows_per_chunk)
        self._filling: dict[tuple[tuple[int, ...], torch.dtype, torch.device], tuple[torch.Tensor, int]] = {}

    def keep(self, values: torch.Tensor) -> torch.Tensor:
        """A copy of ``values`` in the next free row of a chunk (a new chunk when none is free)."""
        key = (tuple(values.shape), values.dtype, values.device)
        chunk, used = self._filling.get(key, (None, self.rows_per_chunk))
        if chunk is None or used == self.rows_per_chunk:
            # zeros, not empty: a checkpoint of the rows saves their chunk, unused rows included
            chunk, used = torch.zeros((self.rows_per_chunk, *values.shape), dtype=values.dtype, device=values.device), 0
        row = chunk[used]
        row.copy_(values)
        self._filling[key] = (chunk, used + 1)
        return row

    def release(self) -> None:
        """Forget the chunks being filled (rows handed out stay valid while referenced)."""
        self._filling.clear()
