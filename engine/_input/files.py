"""Input readers: CSV, JSON Lines and Parquet, from a file, a .gz file or stdin, as RawChunks.

The readers never crash on a bad row and never drop one silently: every data row ends up
exactly once in a chunk's `row_numbers` or `rejects` (SPEC section 4). Reasons are stable
codes and messages name rows and columns, never raw values (SPEC section 5).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import operator
import os
import stat
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast

import orjson

from .._errors import InputError
from .._rows import RawChunk, Reject

if TYPE_CHECKING:
    import _csv

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

# A cell longer than this is rejected: no identifier is that long, and keeping such
# cells out bounds what later stages hold per row.
MAX_FIELD = 64 * 1024
# The longest line (a CSV line, a JSON Lines record) the readers hold: what one line of a
# hostile or mistaken input (a binary file, /dev/zero, a gzip bomb of NULs) can cost in
# memory. A longer CSV line stops the read (exit 2, naming the row); a longer JSON Lines
# record is rejected and skipped. open_input(max_line=...) sets another.
MAX_LINE = 4 * 1024 * 1024
# csv's own per-field cap (its default is 128 Ki). Fields between MAX_FIELD and this are
# read whole and rejected cleanly; the cap bounds memory when a stray quote swallows the
# rest of a file. Past it csv raises and skips the rest of that physical line, which keeps
# numbering right unless the field is quoted and spans lines (then the file is beyond repair).
CSV_FIELD_LIMIT = MAX_LINE
# gzip input may expand to at most this many times its compressed size (people lists
# compress 3 to 20 times), once past _INFLATION_FLOOR: a small bomb cannot keep a
# reader busy for minutes. open_input(max_inflation=...) sets another.
MAX_INFLATION = 200
_INFLATION_FLOOR = 16 * 1024 * 1024
_FINGERPRINT_SPAN = 64 * 1024
_DELIMITERS = (",", ";", "\t", "|")
_STREAM_ERRORS = (OSError, EOFError, zlib.error)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# Column-name aliases per key, compared after _squash(). Each key's own name is added below.
_ALIASES: dict[str, tuple[str, ...]] = {
    "EXTERN_ID": ("external_id", "externalid", "customer_id"),
    "EMAIL": ("email", "e-mail", "email_address", "mail"),
    "PHONE": ("phone", "phone_number", "mobile", "telephone", "tel", "cell"),
    "GEN": ("gender", "sex"),
    "DOBY": ("birth_year", "dob_year", "year_of_birth"),
    "DOBM": ("birth_month", "dob_month"),
    "DOBD": ("birth_day", "dob_day"),
    "LN": ("last_name", "lastname", "surname", "family_name"),
    "FN": ("first_name", "firstname", "given_name"),
    "FI": ("first_initial",),
    "CT": ("city", "town"),
    "ST": ("state", "region", "province"),
    "ZIP": ("zipcode", "zip_code", "postal_code", "postcode", "postal"),
    "MADID": ("maid", "mobile_advertiser_id", "idfa", "gaid", "aaid", "advertising_id"),
    "COUNTRY": ("country_code",),
    "LOOKALIKE_VALUE": ("value", "ltv", "customer_value"),
}
KNOWN_KEYS = frozenset(_ALIASES)


def _squash(name: str) -> str:
    """Column name as compared to aliases: case, spaces, '-', '_' and '.' ignored."""
    return name.lower().translate(_SQUASH_TABLE)


_SQUASH_TABLE = str.maketrans("", "", " -_.")
_ALIAS_TO_KEY = {_squash(alias): key for key, names in _ALIASES.items() for alias in (key, *names)}


def open_input(
    path: str,
    fmt: str | None = None,
    file: BinaryIO | None = None,
    *,
    max_line: int = MAX_LINE,
    max_inflation: float = MAX_INFLATION,
) -> InputFile:
    """Open `path` ("-" is stdin) as the given format, or the one its name implies.

    With `file` (a binary file opened for reading), that is what is read: `path` only names
    it (its format, and messages), and closing the file stays the caller's. Reads the header
    (CSV), the first object (JSON Lines) or the schema (Parquet) at once, so an unreadable
    or empty input fails here, before anything is sent.
    """
    if "\x00" in path:
        raise InputError("the input path holds a NUL byte")
    name = path.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    if fmt is None:
        implied = "csv" if path == "-" else _SUFFIXES.get(os.path.splitext(name)[1])
        if implied is None:
            raise InputError(
                f"cannot tell the format of {path!r} from its name; use --format csv|jsonl|parquet"
            )
        fmt = implied
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; use csv, jsonl or parquet")
    opened = _Opened(path, fmt, file, max_line, max_inflation)
    if fmt == "parquet":
        if gz or (path == "-" and file is None):
            raise InputError("parquet is read from an uncompressed file, not gzip or stdin")
        return _ParquetInput(opened)
    try:
        if fmt == "csv":
            tab = name.endswith(".tsv")
            return _CsvInput(opened, _stream(opened, gz), "\t" if tab else None)
        return _JsonlInput(opened, _stream(opened, gz))
    except BaseException:
        opened.close()
        raise


class _Opened:
    """An input's file: the one given, stdin, or the path opened here; and what to close."""

    def __init__(
        self,
        path: str,
        fmt: str,
        file: BinaryIO | None,
        max_line: int,
        max_inflation: float,
        rewind: bool = False,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.max_line = max_line
        self.max_inflation = max_inflation
        self.given = file is not None
        self.closing: list[Callable[[], None]] = []  # closed in reverse order
        if file is not None:
            if rewind:
                file.seek(0)
            self.raw: BinaryIO | None = file
        elif path == "-":
            self.raw = None  # stdin: not ours to close, and no file to measure
        else:
            try:
                self.raw = open(path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise InputError(f"cannot read input {path!r}: {_why(exc)}") from exc
            self.closing.append(self.raw.close)

    def again(self) -> _Opened:
        """The same file from its start, for reading the input twice (see InputFile.reopen)."""
        assert self.raw is not None
        # The file object is shared, not reopened by path: the path may lead elsewhere now.
        return _Opened(self.path, self.fmt, self.raw, self.max_line, self.max_inflation, True)

    def close(self) -> None:
        while self.closing:
            self.closing.pop()()


def _stream(opened: _Opened, gz: bool) -> BinaryIO:
    """The bytes to parse: the file, or what its gzip data expands to."""
    raw = opened.raw
    if raw is None:
        raw = sys.stdin.buffer
        peek = getattr(raw, "peek", None)
        # stdin has no name to end in .gz, so look for gzip's magic number instead.
        gz = gz or (peek is not None and peek(2)[:2] == b"\x1f\x8b")
    if not gz:
        return raw
    inflating = _Inflating(raw, opened.max_inflation)
    opened.closing.append(inflating.close)
    return cast(BinaryIO, inflating)


class _Overflow(Exception):
    """Input past a reader's bounds (a line too long, gzip expanding too far): `str()` says
    which, and the reader names the row."""


_READ_ERRORS = (*_STREAM_ERRORS, _Overflow)


class _Counted(io.RawIOBase):
    """A stream that counts the bytes read from it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


class _Inflating(gzip.GzipFile):
    """gzip data, read and readline only, that stops (_Overflow) when it expands more than
    `ratio` times its compressed size past _INFLATION_FLOOR."""

    def __init__(self, raw: BinaryIO, ratio: float) -> None:
        self._compressed = _Counted(raw)
        self._ratio = ratio
        self._out = 0
        super().__init__(fileobj=self._compressed, mode="rb")

    def read(self, size: int | None = -1) -> bytes:
        return self._counted(super().read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._counted(super().readline(size))

    def _counted(self, data: bytes) -> bytes:
        self._out += len(data)
        if self._out > max(_INFLATION_FLOOR, self._ratio * self._compressed.count):
            raise _Overflow(
                f"the gzip data expands more than {self._ratio:g} times its size "
                "(a decompression bomb?)"
            )
        return data


def _why(exc: BaseException) -> str:
    """Why reading failed, without the exception's own text: gzip's quotes the file's first
    bytes, and other libraries may quote what they could not parse."""
    if isinstance(exc, _Overflow):
        return str(exc)  # its own words, which hold no content
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return "not valid gzip data"
    if isinstance(exc, EOFError):
        return "the compressed data ends early"
    return type(exc).__name__


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 text: a byte order mark, or ASCII with a NUL beside every character."""
    if head.startswith(_UTF16_BOMS):
        return True
    h = head[:4]
    return len(h) == 4 and (
        (h[1] == h[3] == 0 and h[0] != 0 != h[2]) or (h[0] == h[2] == 0 and h[1] != 0 != h[3])
    )


def _not_utf16(head: bytes) -> None:
    if _looks_utf16(head):
        raise InputError(
            "the input looks like UTF-16 text; it must be UTF-8 (save it as 'CSV UTF-8')"
        )


class InputFile:
    """One input, opened. Call bind(), then iterate chunks(); close() when done."""

    columns: list[str]
    # JSON Lines objects need not all have the same keys, so a --map column need not be in
    # the first object (which is all `columns` shows).
    _map_needs_column = True

    def __init__(self, path: str, opened: _Opened | None = None) -> None:
        self.path = path
        self._opened = opened
        self.columns = []
        self._bound: tuple[str, ...] | None = None  # column per bound key, in key order
        self._closed = False

    def bind(self, keys: Sequence[str] | None, column_map: Mapping[str, str]) -> tuple[str, ...]:
        """Choose the column for each key; return the keys in payload order."""
        mapping = {key.strip().upper(): column for key, column in column_map.items()}
        for key in mapping:
            _check_key(key)
        if keys is None:
            pairs = [(key, self._find_column(key, column)) for key, column in mapping.items()]
            for column in self.columns:
                implied = _ALIAS_TO_KEY.get(_squash(column))
                if implied is not None and all(implied != k for k, _ in pairs):
                    pairs.append((implied, column))  # the first column for a key wins
            if not pairs:
                raise InputError(f"no column maps to a key; use --schema/--map. {self._listing()}")
            # Payload order follows the file's column order, so it is stable for a file.
            order = {column: i for i, column in reversed(list(enumerate(self.columns)))}
            pairs.sort(key=lambda kc: order.get(kc[1], len(order)))
        else:
            wanted = [key.strip().upper() for key in keys]
            for key in wanted:
                _check_key(key)
                if wanted.count(key) > 1:
                    raise InputError(f"key {key} appears twice in the schema")
            extra = sorted(set(mapping) - set(wanted))
            if extra:
                raise InputError(f"--map names {', '.join(extra)}, which the schema does not list")
            pairs = [
                (key, self._find_column(key, mapping[key]) if key in mapping else self._alias(key))
                for key in wanted
            ]
        self._bound = tuple(column for _, column in pairs)
        for column in dict.fromkeys(self._bound):
            at = [str(i) for i, name in enumerate(self.columns, 1) if name == column]
            if len(at) > 1:
                # Which one was meant cannot be told: the upload would read only the first.
                raise InputError(
                    f"columns {', '.join(at[:-1])} and {at[-1]} of the header have the same "
                    "name, and a key is bound to it; rename all but one"
                )
        return tuple(key for key, _ in pairs)

    def _alias(self, key: str) -> str:
        for column in self.columns:
            if _ALIAS_TO_KEY.get(_squash(column)) == key:
                return column
        raise InputError(f"no column for {key}; use --map {key}=COLUMN. {self._listing()}")

    def _find_column(self, key: str, column: str) -> str:
        """The file's column for a --map value."""
        if column in self.columns:
            return column
        # Forgive case and surrounding spaces in --map, when that is unambiguous.
        near = [c for c in self.columns if c.strip().lower() == column.strip().lower()]
        if len(near) == 1:
            return near[0]
        if not self._map_needs_column:
            return column
        # The name asked for is the caller's own, so it may be quoted; the header's may not.
        raise InputError(f"column {column!r} for {key} not found; {self._listing()}")

    def _listing(self) -> str:
        # Counts only, never names: when the first row is data (no header), or the input is
        # not a people list at all, its "names" are identifiers or file content.
        n = len(self.columns)
        return f"the header has {n} column{'s' if n != 1 else ''}"

    def _bound_columns(self) -> tuple[str, ...]:
        if self._bound is None:
            raise RuntimeError("InputFile.bind() must be called before chunks()")
        return self._bound

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        """Rows in chunks of at most `chunk_rows` (accepted plus rejected)."""
        raise NotImplementedError

    async def achunks(self, chunk_rows: int = 5000) -> AsyncIterator[RawChunk]:
        """`chunks()` for the event loop: parsing is blocking work, so it runs in a thread.

        Sources fed by an async iterable override this and leave `chunks()` unused.
        """
        async for chunk in _in_thread(self.chunks(chunk_rows)):
            yield chunk

    def aunits(self, chunk_rows: int = 5000) -> AsyncIterator[RawChunk | CsvBlock]:
        """What the pipeline hands to its hashing workers, in input order: chunks, or blocks
        of a CSV file for the workers to parse themselves (`CsvBlock.parse()`)."""
        return self.achunks(chunk_rows)

    def estimated_rows(self) -> int | None:
        """About how many data rows the input holds, for Meta's `estimated_num_total`; None
        when that cannot be told without reading it all (stdin, gzip, iterators)."""
        return None

    def fingerprint(self) -> str:
        """Cheap identity of the input, to tell on resume whether it is the same file.

        Its size and the bytes at its start, middle and end: a copy or a `touch` of the same
        file matches, an edit almost always shows. The batches already acknowledged are
        checked one by one on resume as well (their digests), so an edit this misses
        cannot change what was sent."""
        raw = self._opened.raw if self._opened is not None else None
        if raw is None:
            return "stdin"
        try:
            fd = raw.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return "stream"  # a pipe or device: reading it here would consume it
            digest = hashlib.sha256(f"{st.st_size}:".encode())
            # pread: the file's own offset is where parsing is, and stays there.
            for at in (0, st.st_size // 2, st.st_size - _FINGERPRINT_SPAN):
                digest.update(os.pread(fd, _FINGERPRINT_SPAN, max(0, at)))
        except OSError as exc:
            raise InputError(f"cannot read input {self.path!r}: {_why(exc)}") from exc
        return digest.hexdigest()

    def reopen(self) -> InputFile:
        """The input again from its start, unbound, read from the same open file (never by
        path again); only for an input whose fingerprint() is a digest (a regular file)."""
        if self._opened is None or self._opened.raw is None:
            raise RuntimeError("only an input read from a file can be read again")
        again = self._opened.again()
        if again.fmt == "parquet":
            return _ParquetInput(again)
        gz = self.path.lower().endswith(".gz")
        if again.fmt == "csv":
            tab = self.path.lower().removesuffix(".gz").endswith(".tsv")
            return _CsvInput(again, _stream(again, gz), "\t" if tab else None)
        return _JsonlInput(again, _stream(again, gz))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def __enter__(self) -> InputFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _in_thread(items: Iterator[Any]) -> AsyncIterator[Any]:
    import asyncio  # here: hashing workers import this module and need no event loop

    while (item := await asyncio.to_thread(next, items, None)) is not None:
        yield item


def _check_key(key: str) -> None:
    if key not in KNOWN_KEYS:
        raise InputError(f"unknown key {key!r}; keys are: {', '.join(_ALIASES)}")


def _unreadable(row: int, exc: BaseException) -> InputError:
    if isinstance(exc, _Overflow):
        return InputError(f"input stopped at data row {row + 1}: {exc}")
    return InputError(f"input became unreadable after data row {row}: {_why(exc)}")


def _lines_estimate(opened: _Opened | None) -> int | None:
    """A plain file's line count, from its size and the lines in its first bytes."""
    if opened is None or opened.raw is None or opened.path.lower().endswith(".gz"):
        return None
    try:
        fd = opened.raw.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        size = st.st_size
        sample = os.pread(fd, _FINGERPRINT_SPAN, 0)
    except OSError:
        return None
    lines = sample.count(b"\n") + (len(sample) == size and not sample.endswith(b"\n"))
    return round(size * lines / len(sample)) if sample else 0


class _CsvInput(InputFile):
    def estimated_rows(self) -> int | None:
        lines = _lines_estimate(self._opened)
        return None if lines is None else max(0, lines - 1)  # the header is no data row

    def __init__(self, opened: _Opened, stream: BinaryIO, delimiter: str | None) -> None:
        path = opened.path
        super().__init__(path, opened)
        self._blocks = _Blocks(stream, opened.max_line)
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        try:
            if not self._blocks.load():
                raise InputError(f"input {path!r} is empty: a header row is required")
        except _READ_ERRORS as exc:
            raise InputError(f"cannot read the header row of {path!r}: {_why(exc)}") from exc
        if delimiter is None:
            first = io.StringIO(self._blocks.text, newline="").readline()
            # The most frequent candidate in the header; ties go to the earlier one.
            delimiter = max(_DELIMITERS, key=first.count)
        self._delimiter = delimiter
        # The header goes through csv.reader, which may need the lines after it too; the
        # records left in its block stay with that reader (`_records` goes on with it).
        self._records: _Records | None = self._blocks.records(delimiter)
        try:
            self.columns = next(self._records.reader)
        except (csv.Error, StopIteration) as exc:
            raise InputError(f"cannot parse the header row of {path!r}") from exc
        except _READ_ERRORS as exc:
            raise InputError(f"cannot read the header row of {path!r}: {_why(exc)}") from exc
        if not self.columns:
            raise InputError(f"the first line of {path!r} is blank: a header row is required")
        self._rows_seen = 0

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        for unit in self._units(chunk_rows, parse=True):
            assert isinstance(unit, RawChunk)
            yield unit

    def aunits(self, chunk_rows: int = 5000) -> AsyncIterator[RawChunk | CsvBlock]:
        return _in_thread(self._units(chunk_rows, parse=False))

    def _units(self, chunk_rows: int, *, parse: bool) -> Iterator[RawChunk | CsvBlock]:
        """Chunks; without `parse`, blocks with no quote go out whole as CsvBlocks instead."""
        indices = tuple(self.columns.index(c) for c in self._bound_columns())
        out = _ChunkCutter(self._rows_seen, chunk_rows)
        width = len(self.columns)
        blocks = self._blocks
        try:
            while True:
                if self._records is not None:
                    yield from out.add_records(self._records, width, _getter(indices))
                    self._records = None
                data = blocks.read()
                if not data:
                    break
                # A record spans lines only inside quotes, and csv.reader ends lines at a lone
                # CR too: other blocks parse alone, and their rows are their lines.
                if b'"' in data or (line_ends := _line_ends(data)) is None:
                    blocks.text = _decode(data)[0]
                    self._records = blocks.records(self._delimiter)
                    continue
                block = CsvBlock(data, out.n, self._delimiter, width, indices)
                if parse:
                    yield from block.parse_into(out)
                else:
                    yield from out.flush()
                    out.skip(line_ends + (not data.endswith(b"\n")))
                    yield block
        except _READ_ERRORS as exc:
            raise _unreadable(out.n, exc) from exc
        finally:
            self._rows_seen = out.n
        yield from out.flush()


def _line_ends(data: bytes) -> int | None:
    """How many LFs `data` holds, or None when it holds a lone CR (a line end to csv.reader).
    Every block comes here: a file with LF ends skips the two CR counts (memchr finds none)."""
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None
    return data.count(b"\n")


def _getter(indices: tuple[int, ...]) -> Callable[[list[str]], tuple[str, ...]]:
    """The bound cells of a csv.reader row, always as a tuple."""
    if len(indices) == 1:
        only = indices[0]
        return lambda row: (row[only],)
    return operator.itemgetter(*indices)


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
        out = _ChunkCutter(self.rows_before, len(self.data) + 1)  # never cut inside
        (chunk,) = [*self.parse_into(out), *out.flush()]
        return chunk

    def parse_into(self, out: _ChunkCutter) -> Iterator[RawChunk]:
        # The field cap is per process, and this may be a worker's first csv.reader.
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        text, plain = _decode(self.data)
        values = plain and _split(text, self.delimiter, self.width, self.indices)
        if values:
            yield from out.add_plain(values)
            return
        lines = io.StringIO(text, newline="").readlines()
        reader = csv.reader(lines, delimiter=self.delimiter)
        records = _Records(reader, [len(lines)])
        yield from out.add_records(records, self.width, _getter(self.indices))

    def cell_lines(self) -> list[bytes] | None:
        """The block's lines as UTF-8 bytes when it has one column and `parse()` would read
        each line as one cell (by `_split`, with no reject), else None: lets a worker read a
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
        # Bytes count at least the characters _split measures: long lines go its way.
        if _long_line_may_be_in(data) and max(map(len, lines)) > MAX_FIELD:
            return None
        return lines


def _long_line_may_be_in(data: bytes) -> bool:
    """False when no line of `data` is longer than MAX_FIELD. A line that long covers one of
    the aligned windows of half that size whole, so a newline in each (memchr, from the
    window's start) rules it out without measuring every line."""
    half = MAX_FIELD // 2
    return any(data.find(b"\n", at, at + half) < 0 for at in range(0, len(data) - half, half))


def _split(
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
_PLAIN_BREAKERS = ('"', "\x00", "\n\n", "\n\r")


@dataclass
class _Records:
    """csv.reader over the rest of a block, and where that block ends: `ends[0]` is the line
    count at its end, raised as a record running past it pulls in the next blocks."""

    reader: _csv.Reader
    ends: list[int]

    def at_block_end(self) -> bool:
        return self.reader.line_num >= self.ends[0]


class _Blocks:
    """The input a block of whole lines at a time; `text` is the part not yet parsed."""

    def __init__(self, stream: BinaryIO, max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self._carry = b""
        self._eof = False
        self._first = True
        self.text = ""

    def read(self) -> bytes:
        """The next block's bytes; empty at the end of the input. _Overflow when a line runs
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
                raise _Overflow(
                    f"a line is longer than {_mib(self._max_line)} (the cap on one line)"
                )
        data = b"".join(pieces)
        if self._first:
            self._first = False
            _not_utf16(data)
            data = data.removeprefix(_BOM)
        return data

    def load(self) -> bool:
        """Make the next block current as text; False at the end of the input."""
        data = self.read()
        self.text = _decode(data)[0]
        return bool(data)

    def records(self, delimiter: str) -> _Records:
        """csv.reader over the rest of this block, and over the next ones as it needs them."""
        # StringIO splits lines where TextIOWrapper(newline="") would: at \n, \r and \r\n.
        lines = io.StringIO(self.text, newline="").readlines()
        self.text = ""
        ends = [len(lines)]
        reader = csv.reader(itertools.chain(lines, self._more_lines(ends)), delimiter=delimiter)
        return _Records(reader, ends)

    def _more_lines(self, ends: list[int]) -> Iterator[str]:
        while self.load():
            lines = io.StringIO(self.text, newline="").readlines()
            self.text = ""
            ends[0] += len(lines)
            yield from lines


def _decode(data: bytes) -> tuple[str, bool]:
    """A block's text, and whether the split path may read it: valid UTF-8 (bad bytes become
    lone surrogates for csv.reader to find per row) and none of `_PLAIN_BREAKERS`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), False
    plain = (
        bool(text)
        and not text.startswith(("\n", "\r"))
        and not any(b in text for b in _PLAIN_BREAKERS)
        # CRLF line ends (csv.writer's, Excel's) end records just as LF does.
        and ("\r" not in text or text.count("\r") == text.count("\r\n"))
    )
    return text, plain


class _ChunkCutter:
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
        self, records: _Records, width: int, get: Callable[[list[str]], tuple[str, ...]]
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
                            reason = _row_problem(row, joined)
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


def _row_problem(row: list[str], joined: str) -> str | None:
    """Why a row that is not short plain ASCII cannot be used, if it cannot."""
    if not joined.isascii():
        try:
            joined.encode("utf-8")  # lone surrogates: bytes that were not UTF-8
        except UnicodeEncodeError:
            return "bad_encoding"
    if len(joined) > MAX_FIELD and any(len(cell) > MAX_FIELD for cell in row):
        return "field_too_large"
    return None


_BOM = b"\xef\xbb\xbf"


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


class _JsonlInput(InputFile):
    _map_needs_column = False

    def estimated_rows(self) -> int | None:
        return _lines_estimate(self._opened)

    def __init__(self, opened: _Opened, stream: BinaryIO) -> None:
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
                    _not_utf16(line)
                    line = line.removeprefix(_BOM)
                self._pending.append(line)
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    self.columns = [str(k) for k in obj]
                    break
        except _READ_ERRORS as exc:
            raise InputError(f"cannot read input {path!r}: {_why(exc)}") from exc
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
                    cells = tuple(_cell(obj.get(c)) for c in columns)
                    if len(line) > MAX_FIELD and any(len(c) > MAX_FIELD for c in cells):
                        rejects.append(Reject(n, "", "field_too_large"))
                    else:
                        rows.append(n)
                        values.append(cells)
                if len(rows) + len(rejects) == chunk_rows:
                    yield RawChunk(rows, values, rejects)
                    rows, values, rejects = [], [], []
        except _READ_ERRORS as exc:
            raise _unreadable(n, exc) from exc
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


def _cell(value: Any) -> str:
    """A JSON or Parquet value as cell text: null and nested values are unknown ("")."""
    if value.__class__ is str:
        return value
    if value is None or isinstance(value, dict | list | tuple):
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


class _ParquetInput(InputFile):
    def __init__(self, opened: _Opened) -> None:
        path = opened.path
        super().__init__(path, opened)
        try:
            import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]  # lazily: parquet is optional
        except ImportError as exc:
            raise InputError(
                "reading parquet needs pyarrow: install audience-engine[parquet]"
            ) from exc
        try:
            self._file = pq.ParquetFile(opened.raw)
        except Exception as exc:  # pyarrow raises several types for a file it cannot open
            raise InputError(f"cannot read parquet file {path!r}: {_why(exc)}") from exc
        self.columns = list(self._file.schema_arrow.names)

    def estimated_rows(self) -> int | None:
        return int(self._file.metadata.num_rows)

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

        columns = self._bound_columns()
        wanted = list(dict.fromkeys(columns))  # read each column once
        n = 0
        try:
            for batch in self._file.iter_batches(batch_size=chunk_rows, columns=wanted):
                texts = {name: _texts(batch.column(name)) for name in wanted}
                numbers = range(n + 1, n + 1 + batch.num_rows)
                n += batch.num_rows
                values = list(zip(*(texts[c][0] for c in columns), strict=True))
                if not any(texts[c][1] for c in columns):
                    yield RawChunk(list(numbers), values)
                    continue
                # Some binary cells were not UTF-8: find their rows (the rare, slow path).
                chunk = RawChunk([], [])
                for row, cells in zip(numbers, values, strict=True):
                    if _utf8(cells):
                        chunk.row_numbers.append(row)
                        chunk.values.append(cells)
                    else:
                        chunk.rejects.append(Reject(row, "", "bad_encoding"))
                yield chunk
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(n, exc) from exc

    def _close(self) -> None:
        self._file.close()
        super()._close()


def _texts(array: Any) -> tuple[list[str], bool]:
    """One Parquet column as cell texts, and whether any may hold bytes that were not UTF-8."""
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
    import pyarrow.compute as pc  # type: ignore[import-untyped, unused-ignore]

    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return [v if v is not None else "" for v in array.to_pylist()], False
    try:
        # Arrow's own cast turns numbers, dates and dictionary columns into text in C.
        texts = pc.fill_null(pc.cast(array, pa.string()), "").to_pylist()
        return texts, False
    except pa.ArrowException:
        # Nested values (-> ""), or binary that is not UTF-8 (-> surrogates, found by _utf8).
        return [_cell(v) for v in array.to_pylist()], True


def _utf8(cells: tuple[str, ...]) -> bool:
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
