"""CSV (and TSV) input: the header, the delimiter, and rows cut into chunks, with awkward files
(quotes, embedded newlines, BOM, CRLF, ragged rows) handled row by row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO

from .._errors import InputError
from .._rows import RawChunk
from .blocks import Blocks, CsvBlock, decode
from .chunking import CSV_FIELD_LIMIT, ChunkCutter, Records, getter
from .opening import READ_ERRORS, Opened, lines_estimate, why
from .source import InputFile, in_thread, unreadable

DELIMITERS = (",", ";", "\t", "|")


class CsvInput(InputFile):
    def estimated_rows(self) -> int | None:
        lines = lines_estimate(self._opened)
        return None if lines is None else max(0, lines - 1)  # the header is no data row

    def __init__(self, opened: Opened, stream: BinaryIO, delimiter: str | None) -> None:
        path = opened.path
        super().__init__(path, opened)
        self._blocks = Blocks(stream, opened.max_line)
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        try:
            if not self._blocks.load():
                raise InputError(f"input {path!r} is empty: a header row is required")
        except READ_ERRORS as exc:
            raise InputError(f"cannot read the header row of {path!r}: {why(exc)}") from exc
        if delimiter is None:
            first = io.StringIO(self._blocks.text, newline="").readline()
            # The most frequent candidate in the header; ties go to the earlier one.
            delimiter = max(DELIMITERS, key=first.count)
        self._delimiter = delimiter
        # The header goes through csv.reader, which may need the lines after it too; the
        # records left in its block stay with that reader (`_records` goes on with it).
        self._records: Records | None = self._blocks.records(delimiter)
        try:
            self.columns = next(self._records.reader)
        except (csv.Error, StopIteration) as exc:
            raise InputError(f"cannot parse the header row of {path!r}") from exc
        except READ_ERRORS as exc:
            raise InputError(f"cannot read the header row of {path!r}: {why(exc)}") from exc
        if not self.columns:
            raise InputError(f"the first line of {path!r} is blank: a header row is required")
        self._rows_seen = 0

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        for unit in self._units(chunk_rows, parse=True):
            assert isinstance(unit, RawChunk)
            yield unit

    def aunits(self, chunk_rows: int = 5000) -> AsyncIterator[RawChunk | CsvBlock]:
        return in_thread(self._units(chunk_rows, parse=False))

    def _units(self, chunk_rows: int, *, parse: bool) -> Iterator[RawChunk | CsvBlock]:
        """Chunks; without `parse`, blocks with no quote go out whole as CsvBlocks instead."""
        indices = tuple(self.columns.index(c) for c in self._bound_columns())
        out = ChunkCutter(self._rows_seen, chunk_rows)
        width = len(self.columns)
        blocks = self._blocks
        try:
            while True:
                if self._records is not None:
                    yield from out.add_records(self._records, width, getter(indices))
                    self._records = None
                data = blocks.read()
                if not data:
                    break
                # A record spans lines only inside quotes, and csv.reader ends lines at a lone
                # CR too: other blocks parse alone, and their rows are their lines.
                if b'"' in data or (line_ends := _line_ends(data)) is None:
                    blocks.text = decode(data)[0]
                    self._records = blocks.records(self._delimiter)
                    continue
                block = CsvBlock(data, out.n, self._delimiter, width, indices)
                if parse:
                    yield from block.parse_into(out)
                else:
                    yield from out.flush()
                    out.skip(line_ends + (not data.endswith(b"\n")))
                    yield block
        except READ_ERRORS as exc:
            raise unreadable(out.n, exc) from exc
        finally:
            self._rows_seen = out.n
        yield from out.flush()


def _line_ends(data: bytes) -> int | None:
    """How many LFs `data` holds, or None when it holds a lone CR (a line end to csv.reader).
    Every block comes here: a file with LF ends skips the two CR counts (memchr finds none)."""
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None
    return data.count(b"\n")
