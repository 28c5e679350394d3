"""Per-stage CPU of the engine, for benchmarks: its stage functions run one after another in
this process on the same input (time.process_time around each stage, one core, no pool).

Stages: read (InputFile.aunits: what the parent reads, quote-free CSV blocks or chunks),
normalize+hash (hash_unit, what a hashing worker does with each: parse a block, normalize,
hash and serialize the rows as payload JSON), encode (Batcher, the payload around the rows
and the multipart body) and send (GraphClient.upload of those bodies to the fake, client
side only). The pipeline runs the same functions; what it adds on top (process pool
hand-offs, queues, process start) is the engine's measured CPU minus the sum.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp
import orjson

from .._graph.client import GraphClient, multipart_body
from .._hashing.pool import hash_unit
from .._hashing.schema import NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._input.files import open_input
from .._input.source import InputFile
from .._pipeline.batcher import Batch, Batcher
from .._pipeline.sender import encode_payload
from .._pipeline.stages import CHUNK_ROWS
from .._rows import EncodedChunk, RawChunk

STAGES = ("read", "normalize_hash", "encode", "send")


@dataclass(frozen=True)
class StageCpu:
    """CPU microseconds per input row, per stage, measured over `rows` rows."""

    rows: int
    us_per_row: dict[str, float]

    def seconds_for(self, rows: int) -> dict[str, float]:
        return {stage: us * rows / 1e6 for stage, us in self.us_per_row.items()}


def profile_stages(path: str, api_base: str, *, limit: int, default_cc: str = "1") -> StageCpu:
    """CPU per stage over the first `limit` rows of `path` (a CSV the engine can read)."""
    spent = dict.fromkeys(STAGES, 0.0)
    started = time.process_time()
    with open_input(path) as source:
        schema = Schema(source.bind(None, {}))
        units = asyncio.run(_read(source, limit))
    spent["read"] = time.process_time() - started

    options = NormalizeOptions(default_country_code=default_cc)
    started = time.process_time()
    hashed: list[EncodedChunk] = [hash_unit(unit, schema, options) for unit in units]
    spent["normalize_hash"] = time.process_time() - started
    rows = sum(chunk.rows_read for chunk in hashed)

    session_id = random.randrange(1, 2**62)  # a fresh session each time, as the engine's
    started = time.process_time()
    batcher = Batcher(10_000)
    batches = [batch for chunk in hashed for batch in batcher.add(chunk)]
    if (rest := batcher.flush()) is not None:
        batches.append(rest)
    payloads = [encode_payload(schema, batch.data) for batch in batches]
    for batch, payload in zip(batches, payloads, strict=True):
        session = orjson.dumps(_session(session_id, batch))
        multipart_body({"payload": payload, "session": session, "access_token": b"x"})
    spent["encode"] = time.process_time() - started

    started = time.process_time()
    asyncio.run(_send(api_base, session_id, batches, payloads))
    spent["send"] = time.process_time() - started
    return StageCpu(rows, {stage: seconds * 1e6 / rows for stage, seconds in spent.items()})


async def _read(source: InputFile, limit: int) -> list[RawChunk | CsvBlock]:
    """The units the pipeline's read stage hands on, until they hold `limit` rows."""
    units: list[RawChunk | CsvBlock] = []
    rows = 0
    async for unit in source.aunits(CHUNK_ROWS):
        units.append(unit)
        rows += unit.rows_read if isinstance(unit, RawChunk) else unit.rows()
        if rows >= limit:
            break
    return units


def _session(session_id: int, batch: Batch) -> dict[str, int | bool]:
    return {"session_id": session_id, "batch_seq": batch.seq, "last_batch_flag": False}


async def _send(
    api_base: str, session_id: int, batches: list[Batch], payloads: list[bytes]
) -> None:
    async with aiohttp.ClientSession() as http:
        client = GraphClient(http, access_token="bench-token", api_base=api_base)
        for batch, payload in zip(batches, payloads, strict=True):
            await client.upload("23850000000000099", "add", payload, _session(session_id, batch))
