"""The stages before the send stage over a small in-memory input: what they hand on, how the
stream ends, and how a failure in one stage ends them all."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import orjson
import pytest

from engine._errors import InputError
from engine._hashing.schema import NormalizeOptions, Schema
from engine._input.memory import Rows, open_source
from engine._input.source import InputFile
from engine._options import UploadJob
from engine._pipeline.batcher import Batch
from engine._pipeline.channel import Channel, EndOfStream
from engine._pipeline.stages import (
    Unit,
    batch,
    drain,
    normalize,
    read,
    rejects_writer,
    run_together,
)
from engine._report import Tally
from engine._rows import EncodedChunk, RawChunk, Reject

from . import refnorm

EMAILS = ["ann@example.com", "not an email", "Bob@Example.com", "", "cy@example.com"]


def job(batch_size: int) -> UploadJob:
    return UploadJob(source="memory", audience_id="1", ad_account="act_1", batch_size=batch_size)


async def run_stages(
    source: InputFile, batch_size: int, sink: list[Batch], rejects: list[Reject]
) -> Tally:
    """read -> normalize -> batch, with the batches collected into `sink`."""
    schema = Schema(source.bind(None, {}))
    tally = Tally("add", "1", "act_1", 1)
    raw: Channel[Unit] = Channel(2)
    hashed: Channel[EncodedChunk] = Channel(2)
    batches: Channel[Batch] = Channel(2)

    async def collect() -> None:
        sink.extend([b async for b in batches])

    await run_together(
        [
            read(source, raw, None),
            normalize(raw, hashed, schema, NormalizeOptions(), None),
            batch(hashed, batches, job(batch_size), tally, rejects.extend, None),
            collect(),
        ]
    )
    return tally


async def test_the_stages_hand_on_every_row_in_order_and_end_with_the_input() -> None:
    batches: list[Batch] = []
    rejects: list[Reject] = []
    tally = await run_stages(open_source([{"email": e} for e in EMAILS]), 2, batches, rejects)

    expected = [refnorm.payload_cell("EMAIL", e) for e in EMAILS]
    sent = [[cell] for cell in expected if cell not in ("", None)]  # rows of one key
    assert [b.seq for b in batches] == [1, 2]  # two full of 2, none after: 3 rows are sent
    assert [(b.rows, b.first_row, b.last_row) for b in batches] == [(2, 1, 3), (1, 5, 5)]
    assert [cell for b in batches for cell in orjson.loads(b"[" + b.data + b"]")] == sent
    assert rejects == [Reject(2, "EMAIL", "invalid_email"), Reject(4, "", "empty_row")]
    assert (tally.rows_read, tally.rows_rejected, tally.batches_total) == (5, 2, 2)


async def test_an_empty_input_ends_every_stage_with_no_batch() -> None:
    batches: list[Batch] = []
    tally = await run_stages(open_source(Rows([], columns=["email"])), 2, batches, [])
    assert batches == [] and tally.rows_read == 0


class BreaksAfter:
    """An input whose read fails after its first unit, as a truncated file's does."""

    async def aunits(self, rows: int) -> AsyncIterator[Unit]:
        yield RawChunk([1], [("a@x.com",)])
        raise InputError("data row 2: the file ends in the middle of a row")


async def test_input_that_breaks_is_kept_and_halts_with_the_stream_left_open() -> None:
    # After requests went out, the send stage is halted instead: no batch after the break
    # may be cut, let alone sent as the last, so the channel is not closed.
    out: Channel[Unit] = Channel(4)
    errors: list[InputError] = []
    halt = asyncio.Event()
    await read(cast(InputFile, BreaksAfter()), out, (errors, halt))
    assert halt.is_set()
    assert [str(e) for e in errors] == ["data row 2: the file ends in the middle of a row"]
    assert isinstance(await out.receive(), RawChunk)
    assert not out.ready()  # nothing more, and no end of the stream either


async def test_input_that_breaks_raises_without_a_place_to_keep_it() -> None:
    with pytest.raises(InputError, match="data row 2"):
        await read(cast(InputFile, BreaksAfter()), Channel(4), None)


async def test_the_first_failure_cancels_the_other_stages_and_is_raised_alone() -> None:
    cancelled: list[str] = []
    never = asyncio.Event()

    async def waits(name: str) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def fails() -> None:
        raise InputError("row 7: bad")

    with pytest.raises(InputError, match="row 7") as raised:
        await run_together([waits("reader"), fails(), waits("sender")])
    assert type(raised.value) is InputError  # not wrapped in an ExceptionGroup
    assert sorted(cancelled) == ["reader", "sender"]


async def test_a_batch_stage_failure_stops_a_reader_held_back_by_a_full_channel() -> None:
    # already_sent refuses batch 2 (the input changed since the checkpoint): the reader and
    # the normalizer, blocked on full channels with rows still to come, are cancelled.
    rows = [{"email": f"u{n}@example.com"} for n in range(1, 10_001)]
    source = open_source(rows)
    schema = Schema(source.bind(None, {}))
    raw: Channel[Unit] = Channel(1)
    hashed: Channel[EncodedChunk] = Channel(1)
    batches: Channel[Batch] = Channel(100)
    seen: list[int] = []

    def already_sent(one: Batch) -> bool:
        seen.append(one.index)
        if one.index == 2:
            raise InputError("the input changed since the checkpoint: batch 2")
        return False

    tally = Tally("add", "1", "act_1", 1)
    stages = [
        read(source, raw, None),
        normalize(raw, hashed, schema, NormalizeOptions(), None),
        batch(hashed, batches, job(1), tally, lambda rejects: None, already_sent),
    ]
    with pytest.raises(InputError, match="batch 2"):
        await asyncio.wait_for(run_together(stages), timeout=60)
    assert seen == [1, 2]
    assert tally.rows_read < len(rows)  # the rest was never read


async def test_drain_takes_every_batch_until_the_end() -> None:
    batches: Channel[Batch] = Channel(3)
    for seq in (1, 2, 3):
        await batches.send(Batch(seq, 1, b'"x"', seq, seq, seq))
    batches.close()
    await drain(batches)
    with pytest.raises(EndOfStream):
        await batches.receive()  # all three taken, and the end seen


def test_the_rejects_file_names_rows_keys_and_reasons_never_values(tmp_path: Path) -> None:
    path = tmp_path / "rejects.csv"
    with rejects_writer(str(path)) as write:
        write([Reject(2, "EMAIL", "invalid_email"), Reject(4, "", "empty_row")])
    with open(path, newline="", encoding="utf-8") as file:
        assert list(csv.reader(file)) == [
            ["row", "key", "reason"],
            ["2", "EMAIL", "invalid_email"],
            ["4", "", "empty_row"],
        ]
    with rejects_writer(None) as write:
        write([Reject(1, "", "empty_row")])  # no file asked for: nothing written anywhere
