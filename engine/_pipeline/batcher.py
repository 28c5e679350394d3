"""Cuts encoded chunks into numbered batches: the same input always gives the same batches."""

from __future__ import annotations

from dataclasses import dataclass

from .._graph.facts import MAX_BATCH_ROWS
from .._rows import EncodedChunk


@dataclass(slots=True)
class Batch:
    """Up to `batch_size` payload rows. `index` numbers the job's batches from 1 in input
    order; `seq` is the batch's `batch_seq` in its session (the same unless the job needed
    a second session, see journal)."""

    seq: int
    rows: int  # how many payload rows
    data: bytes  # their JSON, joined by commas: the inside of the payload's "data" array
    first_row: int  # input row numbers it covers, for messages
    last_row: int
    index: int = 0


class Batcher:
    """Accumulates rows in input order and hands out full batches; `flush()` gives the rest."""

    def __init__(self, batch_size: int) -> None:
        if not 1 <= batch_size <= MAX_BATCH_ROWS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_ROWS}")
        self._size = batch_size
        self._parts: list[bytes] = []
        self._count = 0
        self._first = self._last = 0
        self._seq = 0

    def add(self, chunk: EncodedChunk) -> list[Batch]:
        numbers, stops, data = chunk.row_numbers, chunk.stops, chunk.data
        full: list[Batch] = []
        start, n = 0, len(numbers)
        while start < n:
            end = min(n, start + self._size - self._count)
            if not self._count:
                self._first = numbers[start]
            whole = start == 0 and end == n
            self._parts.append(
                data if whole else data[stops[start - 1] if start else 0 : stops[end - 1] - 1]
            )
            self._count += end - start
            self._last = numbers[end - 1]
            start = end
            if self._count == self._size:
                full.append(self._cut())
        return full

    def flush(self) -> Batch | None:
        return self._cut() if self._count else None

    def _cut(self) -> Batch:
        self._seq += 1
        # join() hands back a lone part itself: a chunk that is one batch is not copied.
        data = b",".join(self._parts)
        batch = Batch(self._seq, self._count, data, self._first, self._last, self._seq)
        self._parts, self._count = [], 0
        return batch
