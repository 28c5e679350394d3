"""Plain CSV read as blocks of whole lines: a quote-free, one-byte-delimited file goes to the
hashing workers as raw blocks, parsed there, which spares the parent the per-row work.
"""

from __future__ import annotations

import csv
import io
import itertools
import operator
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from .._rows import RawChunk
from .chunking import CSV_FIELD_LIMIT, ChunkCutter, Records, getter
from .opening import BOM, MAX_FIELD, Overflow, mib, not_utf16


class CsvBlock(NamedTuple):
    """Whole lines of a CSV file with no quote and no lone CR, so they parse without the
    lines around them and each line is one row: the reader only counts them, and a hashing
    worker parses them (`parse()`), so parsing runs on every core."""

    data: bytes
    rows_before: int  # data rows of the input before this block
    delimiter: str
    width: int  # columns in the header
    indices: tuple[int, ...]  # the bound columns

    def rows(self) -> int:
        return self.data.count(b"\n") + (not self.data.endswith(b"\n"))

    def parse(self) -> RawChunk:
        """The block's rows as one chunk."""
        out = ChunkCutter(self.rows_before, len(self.data) + 1)  # never cut inside
        (chunk,) = [*self.parse_into(out), *out.flush()]
        return chunk

    def parse_into(self, out: ChunkCutter) -> Iterator[RawChunk]:
        # The field cap is per process, and this may be a worker's first csv.reader.
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        text, plain = decode(self.data)
        values = plain and split_block(text, self.delimiter, self.width, self.indices)
        if values:
            yield from out.add_plain(values)
            return
        lines = io.StringIO(text, newline="").readlines()
        reader = csv.reader(lines, delimiter=self.delimiter)
        records = Records(reader, [len(lines)])
        yield from out.add_records(records, self.width, getter(self.indices))

    def cell_lines(self) -> list[bytes] | None:
        """The block's lines as UTF-8 bytes when it has one column and `parse()` would read
        each line as one cell (by `split_block`, with no reject), else None: lets a worker read a
        block without decoding it. A cell is its line without the "\r" of a CRLF end (which
        normalizers that trim ignore)."""
        data = self.data
        # Single bytes are found at memchr speed. The class holds no quote and no lone CR.
        if self.width != 1 or self.delimiter.encode() in data or b"\x00" in data:
            return None
        if not data.isascii():
            try:
                data.decode()
            except UnicodeDecodeError:
                return None
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        # Blank lines ("\n\n", "\n\r", a block starting with either) make csv.reader's rejects.
        if b"" in lines or b"\r" in lines:
            return None
        # Bytes count at least the characters split_block measures: long lines go its way.
        if long_line_may_be_in(data) and max(map(len, lines)) > MAX_FIELD:
            return None
        return lines


def long_line_may_be_in(data: bytes) -> bool:
    """False when no line of `data` is longer than MAX_FIELD. A line that long covers one of
    the aligned windows of half that size whole, so a newline in each (memchr, from the
    window's start) rules it out without measuring every line."""
    half = MAX_FIELD // 2
    return any(data.find(b"\n", at, at + half) < 0 for at in range(0, len(data) - half, half))


def split_block(
    text: str, delimiter: str, width: int, indices: tuple[int, ...]
) -> list[tuple[str, ...] | None]:
    """A plain block's rows by str.split: the bound cells, None for a ragged line; empty
    when a line is too long for this path (csv.reader rejects its long field then)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if len(text) > MAX_FIELD and max(map(len, lines)) > MAX_FIELD:
        return []
    if width == 1 and delimiter not in text:
        return list(zip(lines))
    rows = list(map(str.split, lines, itertools.repeat(delimiter)))
    pick = operator.itemgetter(*indices)
    if set(map(len, rows)) != {width}:
        # Rare, so per row; a single index's itemgetter gives a cell, not a tuple.
        one = len(indices) == 1
        return [((pick(r),) if one else pick(r)) if len(r) == width else None for r in rows]
    if len(indices) == 1:
        return list(zip(map(pick, rows)))
    return list(map(pick, rows))


# The CSV is read in blocks of whole lines. A block with no quote, lone carriage return, NUL,
# blank line or bad byte reads exactly as csv.reader would by splitting lines and cells
# with str.split, several times faster; other blocks go through csv.reader. A block is also
# what a hashing worker gets: 128 KB keeps the parent's queues and each worker's working set
# small (peak RSS of an 8-key upload fell from ~210 to ~165 MB against 512 KB) at no cost in
# throughput.
BLOCK_BYTES = 128 * 1024


PLAIN_BREAKERS = ('"', "\x00", "\n\n", "\n\r")


class Blocks:
    """The input a block of whole lines at a time; `text` is the part not yet parsed."""

    def __init__(self, stream: BinaryIO, max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self._carry = b""
        self._eof = False
        self._first = True
        self.text = ""

    def read(self) -> bytes:
        """The next block's bytes; empty at the end of the input. Overflow when a line runs
        past the line cap (give or take a block)."""
        # The carry holds no LF, so each read is searched alone; pieces are joined once.
        pieces = [self._carry]
        size = len(self._carry)
        self._carry = b""
        while not self._eof:
            more = self._stream.read(BLOCK_BYTES)
            if not more:
                self._eof = True
                break
            cut = more.rfind(b"\n") + 1
            if cut:
                pieces.append(more[:cut])
                self._carry = more[cut:]
                break
            pieces.append(more)
            size += len(more)
            if size > self._max_line:
                raise Overflow(f"a line is longer than {mib(self._max_line)} (the cap on one line)")
        data = b"".join(pieces)
        if self._first:
            self._first = False
            not_utf16(data)
            data = data.removeprefix(BOM)
        return data

    def load(self) -> bool:
        """Make the next block current as text; False at the end of the input."""
        data = self.read()
        self.text = decode(data)[0]
        return bool(data)

    def records(self, delimiter: str) -> Records:
        """csv.reader over the rest of this block, and over the next ones as it needs them."""
        # StringIO splits lines where TextIOWrapper(newline="") would: at \n, \r and \r\n.
        lines = io.StringIO(self.text, newline="").readlines()
        self.text = ""
        ends = [len(lines)]
        reader = csv.reader(itertools.chain(lines, self._more_lines(ends)), delimiter=delimiter)
        return Records(reader, ends)

    def _more_lines(self, ends: list[int]) -> Iterator[str]:
        while self.load():
            lines = io.StringIO(self.text, newline="").readlines()
            self.text = ""
            ends[0] += len(lines)
            yield from lines


def decode(data: bytes) -> tuple[str, bool]:
    """A block's text, and whether the split path may read it: valid UTF-8 (bad bytes become
    lone surrogates for csv.reader to find per row) and none of `PLAIN_BREAKERS`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), False
    plain = (
        bool(text)
        and not text.startswith(("\n", "\r"))
        and not any(b in text for b in PLAIN_BREAKERS)
        # CRLF line ends (csv.writer's, Excel's) end records just as LF does.
        and ("\r" not in text or text.count("\r") == text.count("\r\n"))
    )
    return text, plain
