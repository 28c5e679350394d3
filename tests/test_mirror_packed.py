"""Packed rows, the form the mirror keeps rows in: each unpacks to its payload row as sent,
whatever the schema and whichever hashing path made it, and equal rows get equal digests."""

from __future__ import annotations

import orjson
import pytest

from engine._hashing.encode import encode_chunk
from engine._hashing.fast_email import encode_email_lines
from engine._hashing.packed import Packer
from engine._hashing.pool import hash_unit
from engine._hashing.schema import NormalizeOptions, Schema
from engine._input.blocks import CsvBlock
from engine._rows import EncodedChunk, RawChunk
from engine.testing.sample import sample_rows

PACKED = NormalizeOptions(default_country_code="1", packed=True)


def payload_rows(chunk: EncodedChunk) -> list[tuple[str, ...]]:
    """The chunk's payload rows as the API gets them (numbers as their text)."""
    out = []
    start = 0
    for stop in chunk.stops:
        value = orjson.loads(chunk.data[start : stop - 1])
        cells = value if isinstance(value, list) else [value]
        out.append(tuple(c if isinstance(c, str) else orjson.dumps(c).decode() for c in cells))
        start = stop
    return out


def raw(rows: list[tuple[str, ...]]) -> RawChunk:
    return RawChunk(list(range(1, len(rows) + 1)), rows)


@pytest.mark.parametrize(
    ("schema", "rows"),
    [
        (
            "EMAIL,PHONE,FN,LN,ZIP,CT,ST,COUNTRY",
            [tuple(r) for r in sample_rows(300, 3)],
        ),
        (
            "EXTERN_ID,EMAIL,LOOKALIKE_VALUE,MADID",
            [
                ("id-1", "a@x.com", "12.5", ""),
                ('a "quoted", id', "", "3", "6c7b1f0c-0e4b-4a8c-9d3e-2f1a8c9b7d6e"),
                ("", "b@x.com", "0", "é"),
            ],
        ),
        ("EMAIL", [("a@x.com",), ("B@X.com ",), ("not an email",), ("c@y.org",)]),
        ("MADID", [("6c7b1f0c-0e4b-4a8c-9d3e-2f1a8c9b7d6e",), ("abc",)]),
    ],
)
def test_packed_rows_unpack_to_the_payload_rows(schema: str, rows: list[tuple[str, ...]]) -> None:
    keys = Schema.parse(schema)
    chunk = encode_chunk(raw(rows), keys, PACKED)
    assert chunk.packed is not None and len(chunk.packed.rows) == len(chunk.stops) > 0
    packer = Packer(keys.keys)
    assert [packer.unpack(r) for r in chunk.packed.rows] == payload_rows(chunk)
    # Equal rows, equal digests; another row, another digest.
    distinct = set(chunk.packed.rows)
    assert len(set(chunk.packed.digests)) == len(distinct)
    again = encode_chunk(raw(rows), keys, PACKED).packed
    assert again is not None and again.digests == chunk.packed.digests


def test_eight_hashed_keys_take_under_half_their_json() -> None:
    keys = Schema.parse("EMAIL,PHONE,FN,LN,ZIP,CT,ST,COUNTRY")
    chunk = encode_chunk(raw([tuple(r) for r in sample_rows(100, 5)]), keys, PACKED)
    assert chunk.packed is not None
    full = [r for r in chunk.packed.rows if len(r) == 1 + 8 * 32]
    assert full, "rows with every key set pack to a bitmap and 8 digests"
    assert sum(map(len, chunk.packed.rows)) < len(chunk.data) / 2


def test_spellings_of_one_row_pack_alike() -> None:
    keys = Schema.parse("EMAIL,FN")
    chunk = encode_chunk(raw([("JOHN@x.com ", "Ann"), ("john@x.com", " ann")]), keys, PACKED)
    assert chunk.packed is not None
    first, second = chunk.packed.digests
    assert first == second


def test_the_fast_email_path_packs_as_the_general_one() -> None:
    cells = ["ann@example.com", "Bob@Example.COM ", "not an email", "cy@example.org"]
    block = CsvBlock("\n".join(cells).encode() + b"\n", 0, ",", 1, (0,))
    lines = block.cell_lines()
    keys = Schema.parse("EMAIL")
    assert lines is not None
    fast = encode_email_lines(lines, 1, keys, packed=True)
    general = encode_chunk(block.parse(), keys, NormalizeOptions(packed=True))
    assert fast is not None and fast.packed is not None and fast.packed == general.packed
    assert hash_unit(block, keys, NormalizeOptions(packed=True)) == fast
    assert len(fast.packed.rows) == 3


def test_rows_are_packed_only_when_asked() -> None:
    keys = Schema.parse("EMAIL")
    assert encode_chunk(raw([("a@x.com",)]), keys, NormalizeOptions()).packed is None
