"""The send stage on its own, fed by a channel, against the fake Graph API over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from engine._errors import InputError
from engine._graph.client import GraphClient
from engine._hashing.digest import hash_value
from engine._hashing.schema import Schema
from engine._options import UploadJob
from engine._pipeline.batcher import Batch
from engine._pipeline.channel import Channel
from engine._pipeline.send_stage import SendContext, SendStage
from engine._pipeline.sender import RetryPolicy, payload_parts
from engine._quota.limiter import AccountLimiter, LimiterConfig
from engine._report import Tally
from engine._resume.checkpoint import BatchRecord, JobRecord, SessionRecord, batch_digest
from engine._resume.journal import Journal
from engine.testing.fakegraph import FakeGraph

from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN

SCHEMA = Schema.parse("EMAIL")
SESSION_ID = 4242


def batch(index: int, rows: int = 3) -> Batch:
    first = (index - 1) * rows + 1
    data = b",".join(
        f'["{hash_value(f"u{n}@example.com")}"]'.encode() for n in range(first, first + rows)
    )
    return Batch(index, rows, data, first, first + rows - 1, index)


@pytest.fixture
async def client(fake: FakeGraph) -> AsyncIterator[GraphClient]:
    async with aiohttp.ClientSession() as http:
        yield GraphClient(http, access_token=TOKEN, app_secret=APP_SECRET, api_base=fake.base_url)


def stage(
    client: GraphClient, journal: Journal, *, mode: str = "add", concurrency: int = 4
) -> tuple[SendStage, Tally]:
    job = UploadJob(
        source="memory",
        audience_id=AUDIENCE,
        ad_account=AD_ACCOUNT,
        mode=mode,  # type: ignore[arg-type]
        concurrency=concurrency,
    )
    tally = Tally(mode, AUDIENCE, AD_ACCOUNT, journal.sessions[0].session_id)
    ctx = SendContext(
        job,
        client,
        AccountLimiter(LimiterConfig(rate=1000.0, burst=100)),  # no pacing to wait for
        tally,
        journal,
        SCHEMA,
        RetryPolicy(),
        asyncio.Event(),
    )
    return SendStage(ctx), tally


def new_journal() -> Journal:
    journal = Journal(None, None)
    journal.open_session(SESSION_ID, "add")
    return journal


async def feed(batches: list[Batch]) -> Channel[Batch]:
    channel: Channel[Batch] = Channel(len(batches) + 1)
    for one in batches:
        await channel.send(one)
    channel.close()
    return channel


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_every_batch_goes_in_one_session_in_order_with_the_last_flag_on_the_last(
    fake: FakeGraph, client: GraphClient, concurrency: int
) -> None:
    journal = new_journal()
    sending, tally = stage(client, journal, concurrency=concurrency)
    await sending.run(await feed([batch(i) for i in range(1, 8)]))

    log = fake.log
    assert {e.session_id for e in log} == {SESSION_ID}
    assert sorted(e.batch_seq or 0 for e in log) == list(range(1, 8))
    if concurrency == 1:
        assert [e.batch_seq for e in log] == list(range(1, 8))
    assert [e.batch_seq for e in log if e.last_batch_flag] == [7]
    assert log[-1].batch_seq == 7 and log[-1].acked_after == 6  # after all the others
    assert all(e.outcome == "ok" for e in log) and fake.violations == []
    assert tally.batches_sent == 7 and sorted(journal.acked) == list(range(1, 8))
    assert journal.current.closed


async def test_a_closed_empty_channel_sends_nothing_in_add_mode(
    fake: FakeGraph, client: GraphClient
) -> None:
    sending, tally = stage(client, new_journal())
    await sending.run(await feed([]))
    assert fake.log == [] and tally.batches_sent == 0


async def test_a_replace_sends_batch_1_alone_before_the_rest(
    fake: FakeGraph, client: GraphClient
) -> None:
    journal = Journal(None, None)
    journal.open_session(SESSION_ID, "replace")
    sending, _ = stage(client, journal, mode="replace")
    await sending.run(await feed([batch(i) for i in range(1, 5)]))
    log = fake.log
    assert log[0].batch_seq == 1
    assert all(e.acked_after >= 1 for e in log[1:])  # none arrived before batch 1's answer
    assert [e.batch_seq for e in log if e.last_batch_flag] == [4]
    assert fake.violations == []


def resumed(acked: dict[int, BatchRecord]) -> Journal:
    session = SessionRecord(SESSION_ID, "add", 1, 1.0, False)
    record = JobRecord("job", "input", "running", 0.0, 0.0, 0, 0, [session], acked)
    return Journal(None, record)


def record_of(one: Batch) -> BatchRecord:
    digest = batch_digest(*payload_parts(SCHEMA, one.data))
    return BatchRecord(one.index, SESSION_ID, one.rows, digest, one.rows, 0)


async def test_a_batch_acknowledged_before_counts_as_sent_and_is_skipped(
    client: GraphClient,
) -> None:
    first = batch(1)
    sending, tally = stage(client, resumed({1: record_of(first)}))
    assert sending.already_sent(first)
    assert not sending.already_sent(batch(2))
    assert tally.batches_sent == 1 and tally.rows_sent == first.rows


async def test_a_batch_that_differs_from_the_one_acknowledged_is_refused(
    client: GraphClient,
) -> None:
    sending, _ = stage(client, resumed({1: record_of(batch(1))}))
    changed = batch(1, rows=2)
    with pytest.raises(InputError, match=r"batch 1 \(rows 1\.\.2\) differs"):
        sending.already_sent(changed)
