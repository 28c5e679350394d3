"""What a hashing worker does with one unit of input: parse it when it is a raw CSV block,
normalize and hash it, and serialize its rows as they go in the payload.

Kept apart from the pipeline so worker processes import only what this needs.
"""

from __future__ import annotations

from .._input.blocks import CsvBlock
from .._rows import EncodedChunk, RawChunk
from .encode import encode_chunk
from .fast_email import encode_email_lines
from .schema import NormalizeOptions, Schema


def hash_unit(unit: RawChunk | CsvBlock, schema: Schema, options: NormalizeOptions) -> EncodedChunk:
    if isinstance(unit, RawChunk):
        return encode_chunk(unit, schema, options)
    # EMAIL alone from a one-column file, the common case, is read and hashed as bytes.
    if (
        schema.keys == ("EMAIL",)
        and not options.prehashed
        and (lines := unit.cell_lines()) is not None
        and (done := encode_email_lines(lines, unit.rows_before + 1, schema, packed=options.packed))
        is not None
    ):
        return done
    return encode_chunk(unit.parse(), schema, options)


def hash_units(
    units: list[RawChunk | CsvBlock], schema: Schema, options: NormalizeOptions
) -> list[EncodedChunk]:
    """Several units in one task: a hand-off to a worker process costs more than a loop."""
    return [hash_unit(unit, schema, options) for unit in units]
