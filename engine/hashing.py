"""What a hashing worker does with one unit of input: parse it when it is a raw CSV block,
normalize and hash it, and serialize its rows as they go in the payload.

Kept apart from the pipeline so worker processes import only what this needs.
"""

from __future__ import annotations

from .normalize import NormalizeOptions, Schema, encode_chunk
from .readers import CsvBlock
from .rows import EncodedChunk, RawChunk


def hash_unit(unit: RawChunk | CsvBlock, schema: Schema, options: NormalizeOptions) -> EncodedChunk:
    chunk = unit if isinstance(unit, RawChunk) else unit.parse()
    return encode_chunk(chunk, schema, options)
