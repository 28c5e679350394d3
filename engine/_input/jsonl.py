"""JSON Lines input: one object per line, every line bounded; a line that is no object is a
reject naming its row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import BinaryIO

import orjson

from .._errors import InputError
from .._rows import RawChunk, Reject
from .opening import BOM, MAX_FIELD, READ_ERRORS, Opened, lines_estimate, not_utf16, why
from .source import InputFile, cell_text, unreadable


class JsonlInput(InputFile):
    _map_needs_column = False

    def estimated_rows(self) -> int | None:
        return lines_estimate(self._opened)

    def __init__(self, opened: Opened, stream: BinaryIO) -> None:
        path = opened.path
        super().__init__(path, opened)
        self._stream = stream
        self._max_line = opened.max_line
        # Lines read while looking for the first object; chunks() reads them again first.
        self._pending: list[bytes] = []
        try:
            while len(self._pending) < 1000:  # no object near the top: chunks() rejects lines
                line = self._read_line()
                if not line:
                    break
                if not self._pending:
                    not_utf16(line)
                    line = line.removeprefix(BOM)
                self._pending.append(line)
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    self.columns = [str(k) for k in obj]
                    break
        except READ_ERRORS as exc:
            raise InputError(f"cannot read input {path!r}: {why(exc)}") from exc
        if not self._pending:
            raise InputError(f"input {path!r} is empty")

    def _read_line(self) -> bytes:
        """The next line, or its first max_line bytes when it is longer (rest skipped)."""
        line = self._stream.readline(self._max_line)
        if len(line) >= self._max_line and not line.endswith(b"\n"):
            # Skip the rest in pieces, so memory stays bounded and it counts as one row.
            while (more := self._stream.readline(self._max_line)) and not more.endswith(b"\n"):
                pass
        return line

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        columns = self._bound_columns()
        n = 0
        rows: list[int] = []
        values: list[tuple[str, ...]] = []
        rejects: list[Reject] = []
        try:
            for line in itertools.chain(self._pending, iter(self._read_line, b"")):
                n += 1
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    obj = None
                if not isinstance(obj, dict):
                    too_long = len(line) >= self._max_line
                    rejects.append(Reject(n, "", "field_too_large" if too_long else _bad(line)))
                else:
                    cells = tuple(cell_text(obj.get(c)) for c in columns)
                    if len(line) > MAX_FIELD and any(len(c) > MAX_FIELD for c in cells):
                        rejects.append(Reject(n, "", "field_too_large"))
                    else:
                        rows.append(n)
                        values.append(cells)
                if len(rows) + len(rejects) == chunk_rows:
                    yield RawChunk(rows, values, rejects)
                    rows, values, rejects = [], [], []
        except READ_ERRORS as exc:
            raise unreadable(n, exc) from exc
        self._pending = []
        if rows or rejects:
            yield RawChunk(rows, values, rejects)


def _bad(line: bytes) -> str:
    """Why a line is not a usable JSON object."""
    if not line.strip():
        return "blank_line"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "bad_encoding"
    return "invalid_json"
