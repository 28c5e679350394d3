"""The sender on its own, against the fake Graph API over loopback, with its waits injected."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from engine._errors import Interrupted
from engine._graph.client import GraphClient
from engine._hashing.digest import hash_value
from engine._hashing.schema import Schema
from engine._pipeline.batcher import Batch
from engine._pipeline.sender import RetryPolicy, Sender
from engine._quota.limiter import AccountLimiter
from engine._report import Tally
from engine._resume.journal import Journal
from engine.testing.fakegraph import FakeGraph

from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN

SESSION_ID = 77


async def test_a_stop_during_a_backoff_wins_over_the_retry(fake: FakeGraph) -> None:
    # A signal is handled on a later turn of the loop than the failure it came with, so the
    # stop may be set only once the sender is already waiting to try again.
    fake.fail_next(1, code=2, http_status=500)
    stop = asyncio.Event()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        stop.set()
        await asyncio.sleep(3600)  # cut short by the stop, or the test times out

    tally = Tally("add", AUDIENCE, AD_ACCOUNT, SESSION_ID)
    row = f'"{hash_value("zoe@example.com")}"'.encode()
    async with aiohttp.ClientSession() as http:
        sender = Sender(
            GraphClient(http, access_token=TOKEN, app_secret=APP_SECRET, api_base=fake.base_url),
            AccountLimiter(),
            tally,
            Journal(None, None),
            audience_id=AUDIENCE,
            mode="add",
            schema=Schema.parse("EMAIL"),
            session_id=SESSION_ID,
            retry=RetryPolicy(),
            sleep=sleep,
            stop=stop,
        )
        with pytest.raises(Interrupted, match="batch 2 of session 77"):
            await asyncio.wait_for(sender(Batch(2, 1, row, 1, 1), last=False), timeout=10)
    assert len(waits) == 1
    assert [e.outcome for e in fake.log] == ["error:2"]  # not re-sent
    assert tally.retries == 0  # a retry that never went out is not counted
