"""Hash rows where they live, without uploading them: for work split across machines.

A Spark executor (or any worker) calls `hash_rows` on its part of the data, so raw identifiers
never leave it; the driver then uploads what comes back with `prehashed=True`, and the rows
rejected here travel as `Reject` items, so its report still counts them with their reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._input.memory import Source, open_source
from .._rows import Reject
from .encode import normalize_chunk
from .schema import NormalizeOptions, Schema


def hash_rows(
    rows: Source,
    schema: str | Sequence[str],
    *,
    column_map: Mapping[str, str] | None = None,
    default_country_code: str | None = None,
) -> list[tuple[str, ...] | Reject]:
    """Normalize and hash `rows` (dicts, tuples in schema order, `Rows`, a DataFrame...) by
    Meta's rules: a tuple of payload cells in `schema` order for each usable row, the
    `Reject` saying why for each other, in input order within each kind."""
    keys = Schema.parse(schema)
    options = NormalizeOptions(default_country_code=default_country_code)
    out: list[tuple[str, ...] | Reject] = []
    with open_source(rows) as source:
        source.bind(keys.keys, dict(column_map or {}))
        for chunk in source.chunks():
            hashed = normalize_chunk(chunk, keys, options)
            out.extend(tuple(map(str, row)) for row in hashed.data)
            out.extend(hashed.rejects)
    return out
