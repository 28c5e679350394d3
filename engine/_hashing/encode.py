"""Normalize and hash a chunk of rows a column at a time, and serialize its payload rows.

This is the hot path: it runs once per chunk in the hashing workers. Per-cell work is C-level
`map`s over str methods, distinct values of low-cardinality keys are normalized once per
chunk, and EMAIL goes through `fast_email`. Every input row ends up sent or rejected, once.
"""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, compress, count, repeat
from operator import add, itemgetter, not_
from typing import Protocol, cast

import orjson

from .._rows import Blanked, EncodedChunk, HashedChunk, RawChunk, Reject
from .digest import sha256
from .fast_email import email_column
from .packed import Packer
from .rules import calling_code, is_digest, lookalike, normalizers, phone_digits
from .schema import (
    CACHED_KEYS,
    IDENTIFYING_KEYS,
    PLAIN_KEYS,
    VALUE_KEY,
    Cell,
    NormalizeOptions,
    Normalizer,
    Schema,
)

CellFn = Callable[[str], Cell | None]

Observer = Callable[[Sequence[tuple[str, ...]], list[list[Cell | None]]], None]
"""Sees a chunk's raw rows and its columns as normalized (None where a cell is invalid)."""


# (a key's cells, the rows they are from) -> its values. The rows are for PHONE, whose
# calling code may come from the row's COUNTRY.
ColumnFn = Callable[[Sequence[str], Sequence[tuple[str, ...]]], list[Cell | None]]


def _passthrough(raw: str) -> str | None:
    """The lowercased digest when a cell already holds one, else None."""
    s = raw.strip()
    return s.lower() if is_digest(s) else None


def _hashed(norm: Normalizer) -> CellFn:
    sha = sha256

    def cell(raw: str) -> str | None:
        if len(raw) >= 64 and (digest := _passthrough(raw)) is not None:
            return digest
        v = norm(raw)
        return sha(v.encode()).hexdigest() if v else v

    return cell


class _PhoneCell(Protocol):
    def __call__(self, raw: str, row_cc: bytes | None = None, /) -> str | None: ...


def _hashed_phone(default_cc: str | None) -> _PhoneCell:
    """PHONE's cell, given the row's calling code (None: the default one)."""
    # The digits are hashed as the bytes they were cut from: no str round trip per cell.
    digits_of = phone_digits(default_cc)
    sha = sha256

    def cell(raw: str, row_cc: bytes | None = None, /) -> str | None:
        if len(raw) >= 64 and (digest := _passthrough(raw)) is not None:
            return digest
        digits = digits_of(raw, row_cc)
        if digits:
            return sha(digits).hexdigest()
        return None if digits is None else ""

    return cell


def _phone_by_country(default_cc: str | None, country_at: int) -> ColumnFn:
    """PHONE, where each row's COUNTRY gives the calling code of a number written without one."""
    cell = _hashed_phone(default_cc)

    def column(raws: Sequence[str], rows: Sequence[tuple[str, ...]]) -> list[Cell | None]:
        countries = list(map(itemgetter(country_at), rows))
        codes = dict.fromkeys(countries)  # a few distinct countries per chunk
        for country in codes:
            codes[country] = _safe_code(country)
        return list(map(cell, raws, map(codes.__getitem__, countries)))

    return column


def _safe_code(country: str) -> bytes | None:
    try:
        return calling_code(country)
    except ValueError:  # text that cannot be encoded names no country
        return None


def _prehashed_cell(raw: str) -> str | None:
    s = raw.strip()
    if not s:
        return ""
    return s.lower() if is_digest(s) else None


def _lookalike_cell(raw: str) -> Cell | None:
    return "" if not raw.strip() else lookalike(raw)


def _safe(fn: CellFn, raw: str) -> Cell | None:
    """One cell, where a value no normalizer can take (lone surrogates...) is only invalid."""
    try:
        return fn(raw)
    except ValueError:  # UnicodeEncodeError is one
        return None


def _by_cell(fn: CellFn) -> ColumnFn:
    def column(raws: Sequence[str], rows: object) -> list[Cell | None]:
        try:
            return list(map(fn, raws))
        except ValueError:
            return [_safe(fn, raw) for raw in raws]

    return column


def _by_distinct(fn: CellFn) -> ColumnFn:
    # One call per distinct value, kept for this chunk only so it stays as small as the chunk.
    def column(raws: Sequence[str], rows: object) -> list[Cell | None]:
        results: dict[str, Cell | None] = dict.fromkeys(raws)
        try:
            for raw in results:
                results[raw] = fn(raw)
        except ValueError:
            for raw in results:
                results[raw] = _safe(fn, raw)
        return list(map(results.__getitem__, raws))

    return column


def _column_functions(schema: Schema, options: NormalizeOptions) -> list[ColumnFn]:
    cc = options.default_country_code
    norms = normalizers(cc, datetime.date.today().year)
    columns: list[ColumnFn] = []
    for key in schema.keys:
        fn: CellFn
        if key == VALUE_KEY:
            fn = _lookalike_cell
        elif key in PLAIN_KEYS:
            fn = norms[key]
        elif options.prehashed:
            fn = _prehashed_cell
        elif key == "EMAIL":
            columns.append(lambda raws, rows: email_column(raws))
            continue
        elif key == "PHONE" and "COUNTRY" in schema.keys:
            columns.append(_phone_by_country(cc, schema.keys.index("COUNTRY")))
            continue
        elif key == "PHONE":
            fn = _hashed_phone(cc)
        else:
            fn = _hashed(norms[key])
        columns.append(_by_distinct(fn) if key in CACHED_KEYS else _by_cell(fn))
    return columns


def normalize_chunk(chunk: RawChunk, schema: Schema, options: NormalizeOptions) -> HashedChunk:
    """Normalize and hash one chunk; every input row ends up in `data` or in `rejects`, once."""
    numbers, columns, rejects, blanked = _normalized(chunk, schema, options)
    data: list[list[Cell]] = list(map(list, zip(*columns, strict=True)))
    return HashedChunk(numbers, data, rejects, chunk.rows_read, blanked)


def encode_chunk(
    chunk: RawChunk, schema: Schema, options: NormalizeOptions, observe: Observer | None = None
) -> EncodedChunk:
    """`normalize_chunk`, with each row already serialized as it goes in the payload (and
    packed, when `options` ask); `observe` sees the chunk's cells before invalid ones are
    blanked (the inspection)."""
    numbers, columns, rejects, blanked = _normalized(chunk, schema, options, observe)
    rows: Sequence[object] = columns[0] if schema.single_key else list(zip(*columns, strict=True))
    if PLAIN_KEYS.isdisjoint(schema.keys):
        # Every cell is a hex digest or "", which JSON writes as its text in quotes: one dump
        # of the whole list, and each row's length from its cells' lengths.
        data = orjson.dumps(rows)[1:-1]
        texts = cast(list[list[str]], columns)
        if schema.single_key:
            lengths = map(len, texts[0])
            extra = 3  # the quotes and the comma after
        else:
            lengths = map(sum, zip(*[map(len, column) for column in texts], strict=True))
            extra = 3 * len(columns) + 2  # quotes, commas between and after, brackets
        stops = array("q", accumulate(map(add, lengths, repeat(extra))))
    else:
        fragments = list(map(orjson.dumps, rows))
        data = b",".join(fragments)
        # Where each row's comma falls, plus one: the running length of rows and commas.
        stops = array("q", map(add, accumulate(map(len, fragments)), count(1)))
    packed = Packer(schema.keys).pack(columns) if options.packed else None
    return EncodedChunk(array("q", numbers), data, stops, rejects, chunk.rows_read, blanked, packed)


def _normalized(
    chunk: RawChunk, schema: Schema, options: NormalizeOptions, observe: Observer | None = None
) -> tuple[list[int], list[list[Cell]], list[Reject], Blanked]:
    """The row numbers of the rows sent, their payload cells column by column, the rejects
    (the reader's and this chunk's, in input order) and the invalid cells sent as ""."""
    keys = schema.keys
    width = len(keys)
    reasons = [
        "invalid_hash" if options.prehashed and k not in PLAIN_KEYS else f"invalid_{k.lower()}"
        for k in keys
    ]
    value_at = keys.index(VALUE_KEY) if VALUE_KEY in keys else -1
    id_at = [i for i in range(width) if i != value_at]
    ident_at = [i for i in id_at if keys[i] in IDENTIFYING_KEYS]
    numbers, values = chunk.row_numbers, chunk.values
    rejects = list(chunk.rejects)
    if not values:
        return [], [[] for _ in keys], rejects, ()

    # Reasons by row position, so rejects come out in input order whichever check found them.
    dropped: dict[int, Reject] = {}
    if set(map(len, values)) != {width}:
        # A reader bug; reject rather than send misaligned columns. A blank stand-in keeps
        # the other rows' positions.
        blank = ("",) * width
        values = values.copy()
        for i, row in enumerate(values):
            if len(row) != width:
                dropped[i] = Reject(numbers[i], "", "ragged_row")
                values[i] = blank
    # One pass per key: zip(*values) would advance an iterator per row for every cell.
    columns = [
        fn(list(map(itemgetter(k), values)), values)
        for k, fn in enumerate(_column_functions(schema, options))
    ]
    if observe is not None:
        observe(values, columns)

    # A row is sent when one identifying key is valid and not empty, so only rows whose
    # first identifying key is not can be rejected.
    first = columns[ident_at[0]] if ident_at else [None] * len(values)
    others = [columns[i] for i in ident_at[1:]]
    for i in compress(range(len(values)), map(not_, first)):
        if i in dropped or any(column[i] for column in others):
            continue
        bad = next((k for k in ident_at if columns[k][i] is None), -1)
        if bad >= 0:
            dropped[i] = Reject(numbers[i], keys[bad], reasons[bad])
        elif any(columns[k][i] != "" for k in id_at):  # gender, a birth date, places...
            dropped[i] = Reject(numbers[i], "", "no_identifying_key")
        else:
            dropped[i] = Reject(numbers[i], "", "empty_row")
    if value_at >= 0:
        for i, v in enumerate(columns[value_at]):
            if (v is None or v == "") and i not in dropped:
                dropped[i] = Reject(numbers[i], VALUE_KEY, "invalid_lookalike_value")

    # An invalid cell of a row that is sent goes as "" (unknown), never as a hash; it is
    # counted by key and reason.
    invalid = [None in column for column in columns]
    blanked = tuple(
        (keys[k], reasons[k], n)
        for k, column in enumerate(columns)
        if invalid[k] and (n := column.count(None) - sum(column[i] is None for i in dropped))
    )
    cells: list[list[Cell]] = [
        [("" if c is None else c) for c in column] if bad else column  # type: ignore[misc]
        for column, bad in zip(columns, invalid, strict=True)
    ]
    if not dropped:
        return list(numbers), cells, rejects, blanked
    keep = [True] * len(values)
    for i in dropped:
        keep[i] = False
    rejects.extend(dropped[i] for i in sorted(dropped))
    return (
        list(compress(numbers, keep)),
        [list(compress(column, keep)) for column in cells],
        rejects,
        blanked,
    )
