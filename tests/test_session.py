"""The session coordinator's ordering guarantees, with a scripted send (no network)."""

from __future__ import annotations

import asyncio
import random

import pytest

from engine._errors import Interrupted
from engine._pipeline.batcher import Batch
from engine._pipeline.coordinator import SessionCoordinator


class Recorder:
    """A send that logs starts and acks; each send yields a random number of times first."""

    def __init__(self, seed: int = 0, fail_on: int | None = None) -> None:
        self.events: list[tuple[str, int, bool]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.rng = random.Random(seed)
        self.fail_on = fail_on

    async def __call__(self, batch: Batch, last: bool) -> None:
        self.events.append(("start", batch.seq, last))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            for _ in range(self.rng.randrange(20)):
                await asyncio.sleep(0)
            if batch.seq == self.fail_on:
                raise RuntimeError(f"batch {batch.seq} refused")
            self.events.append(("ack", batch.seq, last))
        finally:
            self.inflight -= 1


async def feed(n: int) -> asyncio.Queue[Batch | None]:
    queue: asyncio.Queue[Batch | None] = asyncio.Queue()
    for seq in range(1, n + 1):
        queue.put_nowait(Batch(seq, 1, b'["x"]', seq, seq))
    queue.put_nowait(None)
    return queue


def check_invariants(events: list[tuple[str, int, bool]], n: int) -> None:
    starts = [seq for kind, seq, _ in events if kind == "start"]
    acks = [seq for kind, seq, _ in events if kind == "ack"]
    assert sorted(starts) == list(range(1, n + 1))  # each batch once
    assert starts == sorted(starts)  # started in order
    assert sorted(acks) == list(range(1, n + 1))
    flagged = [seq for kind, seq, last in events if kind == "start" and last]
    assert flagged == [n]  # last flag on batch N alone
    last_start = events.index(("start", n, True))
    assert set(acks[: n - 1]) == set(range(1, n))
    assert all(events.index(("ack", s, False)) < last_start for s in range(1, n))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_add_invariants_hold_under_concurrency(seed: int, concurrency: int) -> None:
    send = Recorder(seed)
    sent = await SessionCoordinator(send, concurrency=concurrency, first_alone=False).run(
        (await feed(25)).get
    )
    assert sent.last == 25 and not sent.cut
    check_invariants(send.events, 25)
    assert send.max_inflight <= concurrency
    if concurrency > 1:
        assert send.max_inflight > 1  # really concurrent


@pytest.mark.parametrize("seed", range(5))
async def test_replace_acknowledges_batch_one_before_any_other(seed: int) -> None:
    send = Recorder(seed)
    await SessionCoordinator(send, concurrency=8, first_alone=True).run((await feed(12)).get)
    check_invariants(send.events, 12)
    assert send.events[:2] == [("start", 1, False), ("ack", 1, False)]


@pytest.mark.parametrize("first_alone", [False, True])
async def test_single_batch_is_sent_once_as_last(first_alone: bool) -> None:
    send = Recorder()
    await SessionCoordinator(send, concurrency=4, first_alone=first_alone).run((await feed(1)).get)
    assert send.events == [("start", 1, True), ("ack", 1, True)]


async def test_no_batches_sends_nothing() -> None:
    send = Recorder()
    outcome = await SessionCoordinator(send, concurrency=4, first_alone=False).run(
        (await feed(0)).get
    )
    assert outcome.last == 0
    assert send.events == []


async def test_failure_stops_new_sends_lets_inflight_finish_and_raises() -> None:
    send = Recorder(seed=3, fail_on=5)
    with pytest.raises(RuntimeError, match="batch 5 refused"):
        await SessionCoordinator(send, concurrency=4, first_alone=False).run((await feed(40)).get)
    started = {seq for kind, seq, _ in send.events if kind == "start"}
    acked = {seq for kind, seq, _ in send.events if kind == "ack"}
    assert max(started) < 5 + 4 + 1  # at most one window past the failure
    assert started - acked == {5}  # everything else that started was acknowledged
    assert not any(last for _, _, last in send.events)  # the last batch never went out
    assert send.inflight == 0


async def test_failure_surfaces_while_input_is_still_coming() -> None:
    send = Recorder(fail_on=1)
    queue: asyncio.Queue[Batch | None] = asyncio.Queue()
    queue.put_nowait(Batch(1, 1, b'["x"]', 1, 1))
    queue.put_nowait(Batch(2, 1, b'["x"]', 2, 2))
    # No end marker: the producer is "slow"; the error must not wait for it.
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(
            SessionCoordinator(send, concurrency=2, first_alone=False).run(queue.get), timeout=5
        )


async def test_stop_lets_inflight_finish_and_never_sends_the_last_batch() -> None:
    stop = asyncio.Event()
    send = Recorder(seed=1)
    queue = await feed(30)

    async def stopping_send(batch: Batch, last: bool) -> None:
        if batch.seq == 6:
            stop.set()
        await send(batch, last)

    coordinator = SessionCoordinator(stopping_send, concurrency=4, first_alone=False, stop=stop)
    with pytest.raises(Interrupted):
        await coordinator.run(queue.get)
    started = {seq for kind, seq, _ in send.events if kind == "start"}
    acked = {seq for kind, seq, _ in send.events if kind == "ack"}
    assert started == acked  # everything in flight finished
    assert max(started) <= 6 + 4
    assert not any(last for _, _, last in send.events)


async def test_cut_closes_the_session_early_and_hands_back_the_rest() -> None:
    send = Recorder(seed=2)
    started: list[int] = []

    async def counting_send(batch: Batch, last: bool) -> None:
        started.append(batch.seq)
        await send(batch, last)

    coordinator = SessionCoordinator(
        counting_send, concurrency=4, first_alone=True, cut=lambda in_flight: len(started) >= 7
    )
    outcome = await coordinator.run((await feed(20)).get)
    assert outcome.cut and outcome.last == 8
    check_invariants(send.events, 8)  # 1..8 once each, 8 last and after all others
    assert [b.seq for b in outcome.leftovers] == [9]  # taken from the feed, not sent


async def test_failure_leaves_unacknowledged_batches_for_a_retry() -> None:
    send = Recorder(seed=3, fail_on=5)
    coordinator = SessionCoordinator(send, concurrency=4, first_alone=False)
    with pytest.raises(RuntimeError):
        await coordinator.run((await feed(40)).get)
    acked = {seq for kind, seq, _ in send.events if kind == "ack"}
    left = [b.seq for b in coordinator.leftovers()]
    assert 5 in left and not acked & set(left)
    assert left == sorted(left)


class BytesInFlight(Recorder):
    """A Recorder that also notes the payload bytes in flight as each send starts."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.bytes = 0
        self.at_start: list[int] = []

    async def __call__(self, batch: Batch, last: bool) -> None:
        self.bytes += len(batch.data)
        self.at_start.append(self.bytes)
        try:
            await super().__call__(batch, last)
        finally:
            self.bytes -= len(batch.data)


@pytest.mark.parametrize("seed", range(3))
async def test_a_byte_budget_bounds_the_data_in_flight(seed: int) -> None:
    # Wide rows: 100-byte batches and one of 1,000 bytes, against a 350-byte budget and a
    # concurrency that alone would let 8 go at once.
    queue: asyncio.Queue[Batch | None] = asyncio.Queue()
    for seq in range(1, 31):
        queue.put_nowait(Batch(seq, 1, b"x" * (1000 if seq == 12 else 100), seq, seq))
    queue.put_nowait(None)
    send = BytesInFlight(seed)
    await SessionCoordinator(send, concurrency=8, first_alone=False, max_bytes=350).run(queue.get)
    check_invariants(send.events, 30)
    assert 1000 in send.at_start  # the oversized batch went, and alone
    assert all(b <= 350 for b in send.at_start if b != 1000)
    assert max(send.at_start) == 1000
    assert send.max_inflight == 3  # the budget, not the concurrency, was the bound
