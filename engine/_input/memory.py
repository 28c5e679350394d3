"""Where rows come from: a path (see readers) or, for the library, objects in memory.

`open_source` (and `aopen_source`, which also takes async iterables) turns each kind into an
InputFile, so the pipeline reads them all alike. In-memory sources follow the readers'
rules: every row keeps its 1-based number and ends up exactly once in a
chunk's rows or rejects, and column binding (aliases, `column_map`) is InputFile.bind's.

An item of an iterable may also be a `Reject` (engine.Reject): a row already rejected
upstream, say by Spark executors that normalized it with the engine's `normalize_chunk`.
It counts as read and rejected with its key and reason, numbered by its place here.

Cells become the text a file would hold: None, NaN and pandas' NA are empty (a missing
value), numbers their digits (94107.0, a zip in a column pandas turned into floats, is
"94107"), booleans "true"/"false", bytes their UTF-8 text. A cell of any other type
(a date, a list...) rejects its row as "unsupported_value", naming the key.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import numbers
import os
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, BinaryIO, TypeGuard, cast

from .._errors import InputError
from .._rows import RawChunk, Reject
from .files import open_input
from .opening import MAX_FIELD
from .remote import is_url
from .source import InputFile

__all__ = ["Rows", "Source", "aopen_source", "open_source"]

_FETCH_ROWS = 1000


@dataclass(frozen=True, slots=True)
class Rows:
    """Tuples or lists (sync or async) with named columns, e.g. a database cursor's rows.

    `Rows(cursor, columns=[d[0] for d in cursor.description])` binds those names like a
    file's header: aliases (email, phone, first_name...) and `column_map` work. Plain
    tuples without `Rows` are taken in `schema` order instead. An item that is a `Reject`
    is a row rejected upstream: it is counted with its key and reason (see the module).
    """

    data: Iterable[Sequence[Any] | Reject] | AsyncIterable[Sequence[Any] | Reject]
    columns: Sequence[str]


Source = str | os.PathLike[str] | Rows | Any
"""What `upload()` reads: a path ("-" for stdin) or a URL (s3://, gs://, az://, http(s)://);
a file opened in binary mode (its name tells the format); an iterable or async iterable of dicts,
or of tuples/lists (in schema order, or named by `Rows`); a pandas or polars DataFrame; a
pyarrow Table, RecordBatch or RecordBatchReader. Any, as DataFrame types are not imported."""


def open_source(source: Source, fmt: str | None = None) -> InputFile:
    """Open any supported source but an async iterable (see `aopen_source`) as an InputFile.

    A plain iterable's first row (past any leading Rejects) is read here, to learn its
    columns; the rest is read later, in a worker thread. A DB-API cursor (an object with
    `fetchmany`) is read on the event loop's thread instead, the caller's: drivers such as
    sqlite3 refuse a cursor used from another thread. A fetch holds the loop while it runs,
    which a cursor over a local or fast database does not notice.
    """
    if isinstance(source, str | os.PathLike):
        return open_input(os.fspath(source), fmt)
    if isinstance(source, io.TextIOBase):
        raise TypeError("open the input file in binary mode ('rb')")
    if isinstance(source, io.IOBase):
        return open_input(file_name(source) or "<file>", fmt, cast(BinaryIO, source))
    _no_format(fmt)
    frame = _open_frame(source)
    if frame is not None:
        return frame
    data, columns = _unwrap(source)
    if isinstance(data, AsyncIterable):
        raise TypeError("an async iterable is opened with `await aopen_source(...)`")
    cursor = _is_cursor(data)
    items = _fetched(data) if cursor else iter(data)
    head: list[object] = []
    while _leads(item := next(items, _END)):
        head.append(item)
    if item is not _END:
        head.append(item)
    return _IterRows(_kind(data), item, columns, itertools.chain(head, items), on_loop=cursor)


async def aopen_source(source: Source, fmt: str | None = None) -> InputFile:
    """`open_source` for the event loop: async iterables too (their first item is awaited).
    A URL is opened in a thread: its store answers over the network."""
    if isinstance(source, str) and is_url(source):
        return await asyncio.to_thread(open_source, source, fmt)
    if not isinstance(source.data if isinstance(source, Rows) else source, AsyncIterable):
        return open_source(source, fmt)
    _no_format(fmt)
    data, columns = _unwrap(source)
    items = aiter(data)
    head: list[object] = []
    while _leads(item := await anext(items, _END)):
        head.append(item)
    head.append(item)
    return _AsyncRows(_kind(data), head, columns, items)


def file_name(source: Source) -> str | None:
    """The path an open file was opened by, if it has one."""
    name = getattr(source, "name", None) if isinstance(source, io.IOBase) else None
    return name if isinstance(name, str) else None


def _no_format(fmt: str | None) -> None:
    if fmt is not None:
        raise InputError(f"format={fmt!r} is for paths; objects in memory have no format")


def _unwrap(source: Source) -> tuple[Any, list[str] | None]:
    """The iterable itself, and its column names when `Rows` gives them."""
    if isinstance(source, Rows):
        return source.data, [str(c) for c in source.columns]
    if isinstance(source, Mapping | bytes | bytearray) or not (
        isinstance(source, Iterable | AsyncIterable) or _is_cursor(source)
    ):
        raise TypeError(
            f"cannot read rows from a {type(source).__name__}: pass a path, an iterable of "
            "rows, a DataFrame or an Arrow table"
        )
    return source, None


def _kind(obj: object) -> str:
    return f"<{type(obj).__name__}>"


def _is_cursor(obj: object) -> bool:
    return callable(getattr(obj, "fetchmany", None))


def _fetched(cursor: Any) -> Iterator[object]:
    """A DB-API cursor's rows, fetched a batch at a time (iterating one is optional)."""
    while rows := cursor.fetchmany(_FETCH_ROWS):
        yield from rows


def _leads(item: object) -> bool:
    """Whether `item` comes before the row that tells what the rows are: Rejects say nothing."""
    return isinstance(item, Reject)


# --- cells ----------------------------------------------------------------------------------


class _Bad(Exception):
    """A row or cell that cannot be read; `reason` is its Reject code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# pandas.NA and pandas.NaT, told by name so pandas is never imported to check.
_MISSING_TYPES = frozenset({"NAType", "NaTType"})


def _text(value: object) -> str:
    """A cell as the text a file would hold (see the module docstring); raises _Bad."""
    if type(value) is str:
        text = value
    elif value is None:
        return ""
    elif isinstance(value, str):
        text = str(value)
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, numbers.Integral):
        return str(int(value))
    elif isinstance(value, numbers.Real):
        f = float(value)
        if math.isnan(f):
            return ""
        # Integral floats lose ".0": pandas stores int columns with gaps as float64.
        return str(int(f)) if f.is_integer() else str(value)
    elif isinstance(value, Decimal):
        if value.is_nan():
            return ""
        integral = value.is_finite() and value == value.to_integral_value()
        return str(int(value)) if integral else str(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        try:
            text = bytes(value).decode()
        except UnicodeDecodeError:
            raise _Bad("bad_encoding") from None
    elif type(value).__name__ in _MISSING_TYPES:
        return ""
    else:
        raise _Bad("unsupported_value")
    if len(text) > MAX_FIELD:
        raise _Bad("field_too_large")
    return text


class _MemoryInput(InputFile):
    """Rows held by the caller. Only bound columns are turned into text."""

    def __init__(self, kind: str, columns: list[str]) -> None:
        super().__init__(kind)
        self.columns = columns
        self._keys: tuple[str, ...] = ()

    def bind(self, keys: Sequence[str] | None, column_map: Mapping[str, str]) -> tuple[str, ...]:
        """InputFile.bind; the keys are kept to name them in rejects."""
        self._keys = super().bind(keys, column_map)
        return self._keys

    def fingerprint(self) -> str:
        """Objects in memory have no identity across runs; resume checks batches instead."""
        return "memory"

    def _add_cells(self, chunk: RawChunk, n: int, raw: Sequence[object]) -> None:
        """Row `n`, its bound cells `raw` in key order, into `chunk` as text or a reject."""
        cells: list[str] = []
        for key, value in zip(self._keys, raw, strict=True):
            try:
                cells.append(_text(value))
            except _Bad as exc:
                chunk.rejects.append(Reject(n, key, exc.reason))
                return
        chunk.row_numbers.append(n)
        chunk.values.append(tuple(cells))


# --- iterables ------------------------------------------------------------------------------


class _END:
    """No first item: the iterable was empty."""


def _is_row(item: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(item, Sequence) and not isinstance(item, str | bytes | bytearray)


class _RowsInput(_MemoryInput):
    """Dicts (columns from the first one), or tuples/lists named by `Rows` or by the schema."""

    def __init__(self, kind: str, first: object, columns: list[str] | None) -> None:
        self._dicts = False
        if columns is None and isinstance(first, Mapping):
            self._dicts = True
            columns = [str(c) for c in first]
            # Later dicts need not have the first one's keys (as with JSON Lines).
            self._map_needs_column = False
        elif columns is None and not (first is _END or _is_row(first)):
            raise TypeError(f"rows must be dicts, tuples or lists, not {type(first).__name__}")
        self._named = columns is not None
        self._at: list[int] = []  # bound column positions, for tuples (set by bind)
        super().__init__(kind, columns or [])

    def bind(self, keys: Sequence[str] | None, column_map: Mapping[str, str]) -> tuple[str, ...]:
        """InputFile.bind; unnamed tuples take their column names from the schema, in order."""
        if not self._named:
            if keys is None:
                raise InputError(
                    "rows without column names (tuples, or no rows at all) need schema= "
                    "(the order of their values) or engine.Rows(rows, columns=[...])"
                )
            self.columns = [key.strip().upper() for key in keys]
        bound = super().bind(keys, column_map)
        if not self._dicts:
            self._at = [self.columns.index(c) for c in self._bound_columns()]
        return bound

    def _add_item(self, chunk: RawChunk, n: int, item: object) -> None:
        if isinstance(item, Reject):  # rejected upstream: its reason, our row number
            chunk.rejects.append(Reject(n, item.key, item.reason))
            return
        try:
            raw = self._pick(item)
        except _Bad as exc:
            chunk.rejects.append(Reject(n, "", exc.reason))
        else:
            self._add_cells(chunk, n, raw)

    def _pick(self, item: object) -> list[object]:
        """The bound cells of one item, in key order."""
        if self._dicts:
            if not isinstance(item, Mapping):
                raise _Bad("invalid_row")
            return [item.get(column) for column in self._bound_columns()]
        if not _is_row(item):
            raise _Bad("invalid_row")
        if len(item) != len(self.columns):
            raise _Bad("ragged_row")
        return [item[i] for i in self._at]


class _IterRows(_RowsInput):
    """A sync iterable: read in a worker thread, or `on_loop` (a cursor) on the loop's."""

    def __init__(
        self,
        kind: str,
        first: object,
        columns: list[str] | None,
        items: Iterator[object],
        *,
        on_loop: bool,
    ) -> None:
        super().__init__(kind, first, columns)
        self._items = items
        self._on_loop = on_loop

    async def achunks(self, chunk_rows: int = 5000) -> AsyncIterator[RawChunk]:
        if not self._on_loop:
            async for chunk in super().achunks(chunk_rows):
                yield chunk
            return
        for chunk in self.chunks(chunk_rows):
            yield chunk
            await asyncio.sleep(0)  # let requests in flight be answered between fetches

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        chunk = RawChunk([], [])
        for n, item in enumerate(self._items, 1):
            self._add_item(chunk, n, item)
            if chunk.rows_read == chunk_rows:
                yield chunk
                chunk = RawChunk([], [])
        if chunk.rows_read:
            yield chunk


class _AsyncRows(_RowsInput):
    """An async iterable, read on the event loop: `achunks()` only."""

    def __init__(
        self, kind: str, head: list[object], columns: list[str] | None, items: AsyncIterator[object]
    ) -> None:
        super().__init__(kind, head[-1], columns)
        self._head = [item for item in head if item is not _END]
        self._items = items  # the items after `head`

    async def achunks(self, chunk_rows: int = 5000) -> AsyncIterator[RawChunk]:
        chunk = RawChunk([], [])
        n = 0
        async for item in _prepend(self._head, self._items):
            n += 1
            self._add_item(chunk, n, item)
            if chunk.rows_read == chunk_rows:
                yield chunk
                chunk = RawChunk([], [])
        if chunk.rows_read:
            yield chunk


async def _prepend(head: list[object], rest: AsyncIterator[object]) -> AsyncIterator[object]:
    for item in head:
        yield item
    async for item in rest:
        yield item


# --- DataFrames and Arrow -------------------------------------------------------------------


class _FrameInput(_MemoryInput):
    """Columnar data, read a slice of at most `chunk_rows` rows at a time, never copied whole.

    Columns are found by position; a repeated name bound to a key is refused, as in a CSV file.
    """

    def __init__(self, frame: Any, columns: list[str]) -> None:
        super().__init__(_kind(frame), columns)
        self._frame = frame

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        positions = [self.columns.index(c) for c in self._bound_columns()]
        wanted = list(dict.fromkeys(positions))  # a column bound to two keys is read once
        chunk = RawChunk([], [])
        n = 0
        for piece in self._slices(wanted, chunk_rows):
            by_position = dict(zip(wanted, piece, strict=True))
            cells = [by_position[p] for p in positions]
            numbers = range(n + 1, n + 1 + len(cells[0]))
            n = numbers.stop - 1
            try:  # column by column: the fast path when every cell converts
                texts = [list(map(_text, column)) for column in cells]
            except _Bad:
                for row, raw in zip(numbers, zip(*cells, strict=True), strict=True):
                    self._add_cells(chunk, row, raw)
            else:
                chunk.row_numbers.extend(numbers)
                chunk.values.extend(zip(*texts, strict=True))
            if chunk.rows_read == chunk_rows:
                yield chunk
                chunk = RawChunk([], [])
        if chunk.rows_read:
            yield chunk

    def _slices(self, wanted: list[int], chunk_rows: int) -> Iterator[list[list[Any]]]:
        """Pieces of rows as Python values, one list per wanted column position.

        No piece crosses a multiple of `chunk_rows`, so pieces add up to whole chunks.
        """
        for start in range(0, len(self._frame), chunk_rows):
            yield self._piece(start, chunk_rows, wanted)

    def _piece(self, start: int, length: int, wanted: list[int]) -> list[list[Any]]:
        raise NotImplementedError


class _PandasInput(_FrameInput):
    def _piece(self, start: int, length: int, wanted: list[int]) -> list[list[Any]]:
        # A row slice of one column by position is a view; tolist() gives Python values.
        return [self._frame.iloc[start : start + length, p].tolist() for p in wanted]


class _PolarsInput(_FrameInput):
    def _piece(self, start: int, length: int, wanted: list[int]) -> list[list[Any]]:
        rows = self._frame.slice(start, length)  # zero-copy
        return [rows.to_series(p).to_list() for p in wanted]


class _ArrowInput(_FrameInput):
    """A pyarrow Table or RecordBatch."""

    def _piece(self, start: int, length: int, wanted: list[int]) -> list[list[Any]]:
        return _arrow_piece(self._frame.slice(start, length), wanted)


class _ArrowStreamInput(_FrameInput):
    """A pyarrow RecordBatchReader: its batches, cut at chunk boundaries, read once."""

    def __init__(self, reader: Any) -> None:
        super().__init__(reader, list(reader.schema.names))

    def _slices(self, wanted: list[int], chunk_rows: int) -> Iterator[list[list[Any]]]:
        n = 0
        for batch in self._frame:
            start = 0
            while start < batch.num_rows:
                length = min(chunk_rows - n % chunk_rows, batch.num_rows - start)
                yield _arrow_piece(batch.slice(start, length), wanted)
                start += length
                n += length

    def _close(self) -> None:
        self._frame.close()


def _arrow_piece(rows: Any, wanted: list[int]) -> list[list[Any]]:
    return [rows.column(p).to_pylist() for p in wanted]


def _open_frame(obj: Any) -> InputFile | None:
    """A DataFrame or Arrow input for `obj`, told by its class (or a base) and module."""
    for cls in type(obj).__mro__:
        library = cls.__module__.partition(".")[0]
        name = cls.__name__
        if library == "pandas" and name == "DataFrame":
            return _PandasInput(obj, [str(c) for c in obj.columns])
        if library == "polars" and name == "DataFrame":
            return _PolarsInput(obj, list(obj.columns))
        if library == "polars" and name == "LazyFrame":
            raise TypeError("collect() a polars LazyFrame first; upload() reads DataFrames")
        if library == "pyarrow" and name in ("Table", "RecordBatch"):
            return _ArrowInput(obj, list(obj.schema.names))
        if library == "pyarrow" and name == "RecordBatchReader":
            return _ArrowStreamInput(obj)
    return None
