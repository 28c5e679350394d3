"""What every reader is: `InputFile` binds the input's columns to the schema's keys (by name,
alias or `column_map`) and hands out its rows in chunks. The readers never crash on a bad row
and never drop one silently: every data row ends up exactly once in a chunk's `row_numbers` or
`rejects`. Reasons are stable codes and messages name rows and columns, never raw values.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from .._errors import InputError
from .._rows import RawChunk
from .blocks import CsvBlock
from .opening import FINGERPRINT_SPAN, Opened, Overflow, why

# Column-name aliases per key, compared after squash(). Each key's own name is added below.
ALIASES: dict[str, tuple[str, ...]] = {
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


KNOWN_KEYS = frozenset(ALIASES)


def squash(name: str) -> str:
    """Column name as compared to aliases: case, spaces, '-', '_' and '.' ignored."""
    return name.lower().translate(_SQUASH_TABLE)


_SQUASH_TABLE = str.maketrans("", "", " -_.")


ALIAS_TO_KEY = {squash(alias): key for key, names in ALIASES.items() for alias in (key, *names)}


class InputFile:
    """One input, opened. Call bind(), then iterate chunks(); close() when done."""

    columns: list[str]
    # JSON Lines objects need not all have the same keys, so a --map column need not be in
    # the first object (which is all `columns` shows).
    _map_needs_column = True

    def __init__(self, path: str, opened: Opened | None = None) -> None:
        self.path = path
        self._opened = opened
        self.columns = []
        self._bound: tuple[str, ...] | None = None  # column per bound key, in key order
        self._closed = False

    def bind(self, keys: Sequence[str] | None, column_map: Mapping[str, str]) -> tuple[str, ...]:
        """Choose the column for each key; return the keys in payload order."""
        mapping = {key.strip().upper(): column for key, column in column_map.items()}
        for key in mapping:
            check_key(key)
        if keys is None:
            pairs = [(key, self._find_column(key, column)) for key, column in mapping.items()]
            for column in self.columns:
                implied = ALIAS_TO_KEY.get(squash(column))
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
                check_key(key)
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
            if ALIAS_TO_KEY.get(squash(column)) == key:
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
        async for chunk in in_thread(self.chunks(chunk_rows)):
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
        if self._opened is not None and self._opened.remote is not None:
            return self._opened.remote.fingerprint  # the store's own version marks
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
            for at in (0, st.st_size // 2, st.st_size - FINGERPRINT_SPAN):
                digest.update(os.pread(fd, FINGERPRINT_SPAN, max(0, at)))
        except OSError as exc:
            raise InputError(f"cannot read input {self.path!r}: {why(exc)}") from exc
        return digest.hexdigest()

    def size(self) -> int:
        """The input's size in bytes when it is a file or a stored object, else 0: what
        sizes the hashing pool."""
        opened = self._opened
        if opened is None or opened.raw is None:
            return 0
        if opened.remote is not None:
            return opened.remote.size or 0
        try:
            st = os.fstat(opened.raw.fileno())
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def opened_again(self) -> Opened:
        """The same open file from its start, for reading the input twice (never by path
        again); only for an input whose fingerprint() is a digest (a regular file)."""
        if self._opened is None or self._opened.raw is None:
            raise RuntimeError("only an input read from a file can be read again")
        return self._opened.again()

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


async def in_thread(items: Iterator[Any]) -> AsyncIterator[Any]:
    import asyncio  # here: hashing workers import this module and need no event loop

    while (item := await asyncio.to_thread(next, items, None)) is not None:
        yield item


def check_key(key: str) -> None:
    if key not in KNOWN_KEYS:
        raise InputError(f"unknown key {key!r}; keys are: {', '.join(ALIASES)}")


def unreadable(row: int, exc: BaseException) -> InputError:
    if isinstance(exc, Overflow):
        return InputError(f"input stopped at data row {row + 1}: {exc}")
    return InputError(f"input became unreadable after data row {row}: {why(exc)}")


def cell_text(value: Any) -> str:
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
