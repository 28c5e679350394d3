"""Cutting parsed CSV records into chunks: rows kept with their numbers, ragged or oversized
rows rejected with a reason, and chunks of a fixed number of rows read.
"""

from __future__ import annotations

import csv
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._rows import RawChunk, Reject
from .opening import MAX_FIELD, MAX_LINE

if TYPE_CHECKING:
    import _csv

# csv's own per-field cap (its default is 128 Ki). Fields between MAX_FIELD and this are
# read whole and rejected cleanly; the cap bounds memory when a stray quote swallows the
# rest of a file. Past it csv raises and skips the rest of that physical line, which keeps
# numbering right unless the field is quoted and spans lines (then the file is beyond repair).
CSV_FIELD_LIMIT = MAX_LINE


def getter(indices: tuple[int, ...]) -> Callable[[list[str]], tuple[str, ...]]:
    """The bound cells of a csv.reader row, always as a tuple."""
    if len(indices) == 1:
        only = indices[0]
        return lambda row: (row[only],)
    return operator.itemgetter(*indices)


class ChunkCutter:
    """Gathers rows and rejects into chunks of exactly `size` rows read (the last may be less)."""

    def __init__(self, rows_seen: int, size: int) -> None:
        self.n = rows_seen
        self._size = size
        self._cut = rows_seen + size
        self._rows: list[int] = []
        self._values: list[tuple[str, ...]] = []
        self._rejects: list[Reject] = []

    def _take(self) -> RawChunk:
        chunk = RawChunk(self._rows, self._values, self._rejects)
        self._rows, self._values, self._rejects = [], [], []
        self._cut = self.n + self._size
        return chunk

    def flush(self) -> Iterator[RawChunk]:
        if self._rows or self._rejects:
            yield self._take()

    def skip(self, rows: int) -> None:
        """Count `rows` rows read elsewhere (call it with nothing gathered: after flush())."""
        self.n += rows
        self._cut = self.n + self._size

    def add_plain(self, values: list[tuple[str, ...] | None]) -> Iterator[RawChunk]:
        """The rows of a plain block, in order; None is a ragged line."""
        start = 0
        while start < len(values):
            part = values[start : start + self._cut - self.n]
            first = self.n + 1
            self.n += len(part)
            start += len(part)
            if None not in part:
                self._rows.extend(range(first, self.n + 1))
                self._values.extend(part)  # type: ignore[arg-type]  # no None in it
            else:
                for number, cells in enumerate(part, first):
                    if cells is None:
                        self._rejects.append(Reject(number, "", "ragged_row"))
                    else:
                        self._rows.append(number)
                        self._values.append(cells)
            if self.n == self._cut:
                yield self._take()

    def add_records(
        self, records: Records, width: int, get: Callable[[list[str]], tuple[str, ...]]
    ) -> Iterator[RawChunk]:
        """csv.reader's records up to the end of a block."""
        reader = records.reader
        n = self.n
        rows, values, rejects = self._rows, self._values, self._rejects
        while not records.at_block_end():
            # The for loop is the fast path; a csv.Error ends it, and the while resumes
            # the same reader after the bad record.
            try:
                for row in reader:
                    n += 1
                    if len(row) == width:
                        # One join per row tells both checks apart from the common case.
                        joined = "".join(row)
                        if joined.isascii() and len(joined) <= MAX_FIELD:
                            rows.append(n)
                            values.append(get(row))
                        else:
                            reason = row_problem(row, joined)
                            if reason is None:
                                rows.append(n)
                                values.append(get(row))
                            else:
                                rejects.append(Reject(n, "", reason))
                    elif row:
                        rejects.append(Reject(n, "", "ragged_row"))
                    else:
                        rejects.append(Reject(n, "", "blank_line"))
                    if n == self._cut:
                        self.n = n
                        yield self._take()
                        rows, values, rejects = self._rows, self._values, self._rejects
                    if reader.line_num >= records.ends[0]:
                        break
                else:
                    break  # the end of the input
            except csv.Error as exc:
                n += 1
                too_big = "field larger than field limit" in str(exc)
                rejects.append(Reject(n, "", "field_too_large" if too_big else "malformed_csv"))
                if n == self._cut:
                    self.n = n
                    yield self._take()
                    rows, values, rejects = self._rows, self._values, self._rejects
            finally:
                self.n = n


@dataclass
class Records:
    """csv.reader over the rest of a block, and where that block ends: `ends[0]` is the line
    count at its end, raised as a record running past it pulls in the next blocks."""

    reader: _csv.Reader
    ends: list[int]

    def at_block_end(self) -> bool:
        return self.reader.line_num >= self.ends[0]


def row_problem(row: list[str], joined: str) -> str | None:
    """Why a row that is not short plain ASCII cannot be used, if it cannot."""
    if not joined.isascii():
        try:
            joined.encode("utf-8")  # lone surrogates: bytes that were not UTF-8
        except UnicodeEncodeError:
            return "bad_encoding"
    if len(joined) > MAX_FIELD and any(len(cell) > MAX_FIELD for cell in row):
        return "field_too_large"
    return None
