"""Cuts hashed chunks into numbered batches: the same input always gives the same batches."""

from __future__ import annotations

from dataclasses import dataclass

from .rows import HashedChunk


@dataclass(slots=True)
class Batch:
    """Up to `batch_size` payload rows. `index` numbers the job's batches from 1 in input
    order; `seq` is the batch's `batch_seq` in its session (the same unless the job needed
    a second session, see journal)."""

    seq: int
    rows: list[list[str | float | int]]
    first_row: int  # input row numbers it covers, for messages
    last_row: int
    index: int = 0


class Batcher:
    """Accumulates rows in input order and hands out full batches; `flush()` gives the rest."""

    def __init__(self, batch_size: int) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        self._size = batch_size
        self._rows: list[list[str | float | int]] = []
        self._numbers: list[int] = []
        self._seq = 0

    def add(self, chunk: HashedChunk) -> list[Batch]:
        self._rows.extend(chunk.data)
        self._numbers.extend(chunk.row_numbers)
        full: list[Batch] = []
        while len(self._rows) >= self._size:
            full.append(self._cut(self._size))
        return full

    def flush(self) -> Batch | None:
        return self._cut(len(self._rows)) if self._rows else None

    def _cut(self, n: int) -> Batch:
        self._seq += 1
        rows, self._rows = self._rows[:n], self._rows[n:]
        numbers, self._numbers = self._numbers[:n], self._numbers[n:]
        return Batch(self._seq, rows, numbers[0], numbers[-1], self._seq)
