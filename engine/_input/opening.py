"""Reading an input file's bytes safely: the file given, stdin, a path opened once or a URL
(remote.py); gzip with a bound on how far it may expand; a bound on one line; UTF-16 told
apart. Errors name rows, never the file's content.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from .._errors import InputError
from .remote import Remote, is_url, open_remote

if TYPE_CHECKING:
    pass


# A cell longer than this is rejected: no identifier is that long, and keeping such
# cells out bounds what later stages hold per row.
MAX_FIELD = 64 * 1024

# The longest line (a CSV line, a JSON Lines record) the readers hold: what one line of a
# hostile or mistaken input (a binary file, /dev/zero, a gzip bomb of NULs) can cost in
# memory. A longer CSV line stops the read (exit 2, naming the row); a longer JSON Lines
# record is rejected and skipped. open_input(max_line=...) sets another.
MAX_LINE = 4 * 1024 * 1024


# gzip input may expand to at most this many times its compressed size (people lists
# compress 3 to 20 times), once past INFLATION_FLOOR: a small bomb cannot keep a
# reader busy for minutes. open_input(max_inflation=...) sets another.
MAX_INFLATION = 200


INFLATION_FLOOR = 16 * 1024 * 1024


FINGERPRINT_SPAN = 64 * 1024


STREAM_ERRORS = (OSError, EOFError, zlib.error)


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Opened:
    """An input's file: the one given, stdin, or the path or URL opened here; what to close."""

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
        self.remote: Remote | None = None
        if file is not None:
            if rewind:
                file.seek(0)
            self.raw: BinaryIO | None = file
        elif path == "-":
            self.raw = None  # stdin: not ours to close, and no file to measure
        elif is_url(path):
            self.raw, self.remote = open_remote(path)
            self.path = self.remote.shown
            self.closing.append(self.raw.close)
        else:
            try:
                self.raw = open(path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise InputError(f"cannot read input {path!r}: {why(exc)}") from exc
            self.closing.append(self.raw.close)

    def again(self) -> Opened:
        """The same file from its start, for reading the input twice (see InputFile.reopen)."""
        assert self.raw is not None
        # The file object is shared, not reopened by path: the path may lead elsewhere now.
        again = Opened(self.path, self.fmt, self.raw, self.max_line, self.max_inflation, True)
        again.remote = self.remote
        return again

    def close(self) -> None:
        while self.closing:
            self.closing.pop()()


def open_stream(opened: Opened, gz: bool) -> BinaryIO:
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


class Overflow(Exception):
    """Input past a reader's bounds (a line too long, gzip expanding too far): `str()` says
    which, and the reader names the row."""


READ_ERRORS = (*STREAM_ERRORS, Overflow)


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
    """gzip data, read and readline only, that stops (Overflow) when it expands more than
    `ratio` times its compressed size past INFLATION_FLOOR."""

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
        if self._out > max(INFLATION_FLOOR, self._ratio * self._compressed.count):
            raise Overflow(
                f"the gzip data expands more than {self._ratio:g} times its size "
                "(a decompression bomb?)"
            )
        return data


def why(exc: BaseException) -> str:
    """Why reading failed, without the exception's own text: gzip's quotes the file's first
    bytes, and other libraries may quote what they could not parse."""
    if isinstance(exc, Overflow):
        return str(exc)  # its own words, which hold no content
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return "not valid gzip data"
    if isinstance(exc, EOFError):
        return "the compressed data ends early"
    return type(exc).__name__


def looks_utf16(head: bytes) -> bool:
    """UTF-16 text: a byte order mark, or ASCII with a NUL beside every character."""
    if head.startswith(_UTF16_BOMS):
        return True
    h = head[:4]
    return len(h) == 4 and (
        (h[1] == h[3] == 0 and h[0] != 0 != h[2]) or (h[0] == h[2] == 0 and h[1] != 0 != h[3])
    )


def not_utf16(head: bytes) -> None:
    if looks_utf16(head):
        raise InputError(
            "the input looks like UTF-16 text; it must be UTF-8 (save it as 'CSV UTF-8')"
        )


def lines_estimate(opened: Opened | None) -> int | None:
    """A plain file's line count, from its size and the lines in its first bytes."""
    if opened is None or opened.raw is None or opened.path.lower().endswith(".gz"):
        return None
    try:
        fd = opened.raw.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        size = st.st_size
        sample = os.pread(fd, FINGERPRINT_SPAN, 0)
    except OSError:
        return None
    lines = sample.count(b"\n") + (len(sample) == size and not sample.endswith(b"\n"))
    return round(size * lines / len(sample)) if sample else 0


BOM = b"\xef\xbb\xbf"


def mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"
