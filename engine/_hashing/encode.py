"""Normalize and hash a chunk of rows a column at a time, and serialize its payload rows.

This is the hot path: it runs once per chunk in the hashing workers. Per-cell work is C-level
`map`s over str methods, distinct values of low-cardinality keys are normalized once per
chunk, EMAIL goes through `fast_email` and PHONE through `rules.phone_column`. Every input row
ends up sent or rejected, once. The inspection takes the same columns unhashed.
"""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, compress, count, repeat
from operator import add, itemgetter, le, not_
from typing import cast

import orjson

from .._rows import Blanked, EncodedChunk, HashedChunk, RawChunk, Reject
from .digest import sha256
from .fast_email import email_column, email_texts
from .packed import Packer
from .rules import calling_code, is_digest, lookalike, normalizers, phone_column
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


# (a key's cells, every column of the chunk) -> its values. The other columns are for PHONE,
# whose calling code may come from the row's COUNTRY.
ColumnFn = Callable[[Sequence[str], Sequence[Sequence[str]]], list[Cell | None]]


def _passthrough(raw: str) -> str | None:
    """The lowercased digest when a cell already holds one, else None."""
    s = raw.strip()
    return s.lower() if is_digest(s) else None


def _hashed_key(norm: Normalizer, hashed: bool) -> CellFn:
    """A hashed key's cell: its digest, or (not `hashed`) the text the digest is of."""
    sha = sha256

    def cell(raw: str) -> str | None:
        if len(raw) >= 64 and (digest := _passthrough(raw)) is not None:
            return digest
        v = norm(raw)
        return sha(v.encode()).hexdigest() if v else v

    def text(raw: str) -> str | None:
        if len(raw) >= 64 and (digest := _passthrough(raw)) is not None:
            return digest
        return norm(raw)

    return cell if hashed else text


def _phone(default_cc: str | None, hashed: bool, country_at: int) -> ColumnFn:
    """PHONE; with a COUNTRY column (at `country_at`, else -1), each row's country gives the
    calling code of a number written without one."""
    digits_of = phone_column(default_cc)
    sha = sha256

    def column(raws: Sequence[str], columns: Sequence[Sequence[str]]) -> list[Cell | None]:
        ccs = None
        if country_at >= 0:
            countries = columns[country_at]
            codes = dict.fromkeys(countries)  # a few distinct countries per chunk
            for country in codes:
                codes[country] = _safe_code(country)
            ccs = list(map(codes.__getitem__, countries))
        # Cells that already hold a digest pass as it; the others are numbers to read.
        digests = {}
        if max(map(len, raws), default=0) >= 64:
            long = compress(range(len(raws)), map(le, repeat(64), map(len, raws)))
            digests = {i: d for i in long if (d := _passthrough(raws[i])) is not None}
        if digests:
            raws = list(raws)
            for i in digests:
                raws[i] = ""
        digits = digits_of(raws, ccs)
        out: list[Cell | None]
        if hashed:  # the digits are hashed as the bytes they were cut from
            out = [sha(d).hexdigest() if d else d if d is None else "" for d in digits]
        else:
            out = [d if d is None else d.decode() for d in digits]
        for i, digest in digests.items():
            out[i] = digest
        return out

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
    def column(raws: Sequence[str], columns: object) -> list[Cell | None]:
        try:
            return list(map(fn, raws))
        except ValueError:
            return [_safe(fn, raw) for raw in raws]

    return column


def _by_distinct(fn: CellFn) -> ColumnFn:
    # One call per distinct value, kept for this chunk only so it stays as small as the chunk.
    def column(raws: Sequence[str], columns: object) -> list[Cell | None]:
        results: dict[str, Cell | None] = dict.fromkeys(raws)
        try:
            for raw in results:
                results[raw] = fn(raw)
        except ValueError:
            for raw in results:
                results[raw] = _safe(fn, raw)
        return list(map(results.__getitem__, raws))

    return column


def _email(hashed: bool) -> ColumnFn:
    email = email_column if hashed else email_texts
    return lambda raws, columns: email(raws)


def column_functions(
    schema: Schema, options: NormalizeOptions, *, hashed: bool = True
) -> list[ColumnFn]:
    """A function per key from its raw cells to its payload cells; with `hashed` False, to
    the texts those hash (what the inspection counts: no digest needed)."""
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
            columns.append(_email(hashed))
            continue
        elif key == "PHONE":
            country_at = schema.keys.index("COUNTRY") if "COUNTRY" in schema.keys else -1
            columns.append(_phone(cc, hashed, country_at))
            continue
        else:
            fn = _hashed_key(norms[key], hashed)
        columns.append(_by_distinct(fn) if key in CACHED_KEYS else _by_cell(fn))
    return columns


def normalize_chunk(chunk: RawChunk, schema: Schema, options: NormalizeOptions) -> HashedChunk:
    """Normalize and hash one chunk; every input row ends up in `data` or in `rejects`, once."""
    numbers, columns, rejects, blanked = _normalized(chunk, schema, options)
    data: list[list[Cell]] = list(map(list, zip(*columns, strict=True)))
    return HashedChunk(numbers, data, rejects, chunk.rows_read, blanked)


def encode_chunk(chunk: RawChunk, schema: Schema, options: NormalizeOptions) -> EncodedChunk:
    """`normalize_chunk`, with each row already serialized as it goes in the payload (and
    packed, when `options` ask)."""
    numbers, columns, rejects, blanked = _normalized(chunk, schema, options)
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
    chunk: RawChunk, schema: Schema, options: NormalizeOptions
) -> tuple[list[int], list[list[Cell]], list[Reject], Blanked]:
    """The row numbers of the rows sent, their payload cells column by column, the rejects
    (the reader's and this chunk's, in input order) and the invalid cells sent as ""."""
    keys = schema.keys
    numbers = chunk.row_numbers
    rejects = list(chunk.rejects)
    if not chunk.values:
        return [], [[] for _ in keys], rejects, ()
    raws, dropped = raw_columns(chunk, len(keys))
    columns = [fn(raws[k], raws) for k, fn in enumerate(column_functions(schema, options))]
    reject_rows(columns, numbers, schema, options, dropped)

    # An invalid cell of a row that is sent goes as "" (unknown), never as a hash; it is
    # counted by key and reason.
    reasons = _reasons(schema, options)
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
    keep = [True] * len(numbers)
    for i in dropped:
        keep[i] = False
    rejects.extend(dropped[i] for i in sorted(dropped))
    return (
        list(compress(numbers, keep)),
        [list(compress(column, keep)) for column in cells],
        rejects,
        blanked,
    )


def raw_columns(chunk: RawChunk, width: int) -> tuple[list[list[str]], dict[int, Reject]]:
    """The chunk's cells column by column, and its rows of the wrong width rejected by
    position (a reader bug: rejected rather than sent misaligned; a blank stand-in keeps
    the other rows' positions)."""
    values, numbers = chunk.values, chunk.row_numbers
    dropped: dict[int, Reject] = {}
    if set(map(len, values)) != {width}:
        blank = ("",) * width
        values = values.copy()
        for i, row in enumerate(values):
            if len(row) != width:
                dropped[i] = Reject(numbers[i], "", "ragged_row")
                values[i] = blank
    # One pass per key: zip(*values) would advance an iterator per row for every cell.
    return [list(map(itemgetter(k), values)) for k in range(width)], dropped


def reject_rows(
    columns: Sequence[Sequence[Cell | None]],
    numbers: Sequence[int],
    schema: Schema,
    options: NormalizeOptions,
    dropped: dict[int, Reject],
) -> None:
    """Adds to `dropped` (rejects by row position, so they come out in input order whichever
    check found them) the rows of these normalized columns that cannot be sent."""
    keys = schema.keys
    reasons = _reasons(schema, options)
    value_at = keys.index(VALUE_KEY) if VALUE_KEY in keys else -1
    id_at = [i for i in range(len(keys)) if i != value_at]
    ident_at = [i for i in id_at if keys[i] in IDENTIFYING_KEYS]
    # A row is sent when one identifying key is valid and not empty, so only rows whose
    # first identifying key is not can be rejected.
    first = columns[ident_at[0]] if ident_at else [None] * len(numbers)
    others = [columns[i] for i in ident_at[1:]]
    for i in compress(range(len(numbers)), map(not_, first)):
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


def _reasons(schema: Schema, options: NormalizeOptions) -> list[str]:
    """Each key's reason for an invalid cell."""
    return [
        "invalid_hash" if options.prehashed and k not in PLAIN_KEYS else f"invalid_{k.lower()}"
        for k in schema.keys
    ]
