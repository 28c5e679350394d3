"""The session coordinator: concurrent sends that still honour the session invariants."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .._aio import first_done
from .._errors import Interrupted
from .batcher import Batch

SendFn = Callable[[Batch, bool], Awaitable[None]]
"""Sends one batch (the flag says whether it is the last) and returns once it is acknowledged."""

NextFn = Callable[[], Awaitable[Batch | None]]
"""The session's next batch in `seq` order, or None when there are no more."""

# Payload bytes a job keeps in flight at most: requests hold their batch until acknowledged
# (a retry sends it again), so this, not the request count, bounds memory for wide rows.
# 40 MB is seven 10,000 x 8-key batches, which hide a 200 ms round trip at full hashing speed.
MAX_INFLIGHT_BYTES = 40 << 20


class _ByteBudget:
    """At most `limit` bytes taken at once; a single take bigger than that waits until
    nothing else is taken, then goes alone."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._taken = 0
        self._changed = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._taken or self._taken + n <= self._limit)
            self._taken += n

    async def give(self, n: int) -> None:
        async with self._changed:
            self._taken -= n
            self._changed.notify_all()


@dataclass
class Outcome:
    """How a session's run ended: `last` is the seq sent with the last flag (0: none);
    `cut` says the session was closed early and `leftovers` holds batches still to send."""

    last: int = 0
    cut: bool = False
    leftovers: list[Batch] = field(default_factory=list)


class SessionCoordinator:
    """Feeds one session's batches, in `seq` order, to at most `concurrency` concurrent sends.

    At most `concurrency` sends run at once, holding at most `max_bytes` of batch data
    between them (a bigger batch goes alone).

    Contract (docs/protocol.md): the newest batch is always held back until the next one
    arrives, so the coordinator knows which batch is last; the last batch is sent, with
    `last_batch_flag`, only after every other batch is acknowledged. With `first_alone`
    (replace), batch 1 is acknowledged before any other batch starts. When a send fails,
    no new batch starts, the sends in flight finish, and the first error is raised; the
    batches not acknowledged are in `leftovers()`. When `stop` is set, the same happens and
    `Interrupted` is raised: the session stays open (no last flag) so it can be resumed.
    When `cut(in_flight)` turns true (checked before each batch starts), the session is closed
    early: the batches in flight finish, the batch due next goes out as the last, and the
    rest is handed back in the outcome's `leftovers`.
    """

    def __init__(
        self,
        send: SendFn,
        *,
        concurrency: int,
        first_alone: bool,
        stop: asyncio.Event | None = None,
        cut: Callable[[int], bool] | None = None,
        max_bytes: int = MAX_INFLIGHT_BYTES,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._send = send
        self._slots = asyncio.Semaphore(concurrency)
        self._bytes = _ByteBudget(max_bytes)
        self._first_alone = first_alone
        self._stop = stop or asyncio.Event()
        self._cut = cut or (lambda in_flight: False)
        self._failed = asyncio.Event()
        self._errors: list[Exception] = []
        self._unacked: list[Batch] = []
        self._inflight: set[asyncio.Task[None]] = set()

    def leftovers(self) -> list[Batch]:
        """Batches taken from the feed and not acknowledged, in `seq` order."""
        return sorted(self._unacked, key=lambda b: b.seq)

    async def run(self, next_batch: NextFn) -> Outcome:
        """Send every batch the feed gives; returns how the session ended."""
        held: Batch | None = None
        try:
            while (batch := await self._next(next_batch)) is not None:
                self._unacked.append(batch)
                if held is not None:
                    if held.seq > 1 and self._cut(len(self._inflight)):
                        await self._drain()
                        await self._send(held, True)
                        self._unacked.remove(held)
                        return Outcome(held.seq, cut=True, leftovers=self.leftovers())
                    await self._start(held)
                held = batch
            await self._drain()
            if self._stop.is_set():
                await self._wind_down()
            if held is not None:
                await self._send(held, True)
                self._unacked.remove(held)
            return Outcome(held.seq if held else 0)
        finally:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _next(self, next_batch: NextFn) -> Batch | None:
        # Wait for the next batch or a failed send, whichever comes first, so an error
        # surfaces at once even when the input is slow.
        get = await first_done(next_batch(), self._failed, self._stop)
        if get.done() and not get.cancelled():
            batch = get.result()
            if not self._halted():
                return batch
            if batch is not None:
                self._unacked.append(batch)
        await self._wind_down()
        raise AssertionError("unreachable")

    def _halted(self) -> bool:
        return self._failed.is_set() or self._stop.is_set()

    async def _drain(self) -> None:
        """Wait for the sends in flight; raise the first error if any failed."""
        await asyncio.gather(*self._inflight)
        if self._errors:
            raise self._errors[0]

    async def _wind_down(self) -> None:
        """Let the sends in flight finish, then raise why we stopped."""
        await self._drain()
        raise Interrupted("stopped before the session ended; it can be resumed")

    async def _start(self, batch: Batch) -> None:
        await self._slots.acquire()
        await self._bytes.take(len(batch.data))
        if self._halted():
            await self._release(batch)
            await self._wind_down()
        if self._first_alone and batch.seq == 1:
            try:
                await self._send(batch, False)
                self._unacked.remove(batch)
            finally:
                await self._release(batch)
            return
        task = asyncio.create_task(self._guarded(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _release(self, batch: Batch) -> None:
        await self._bytes.give(len(batch.data))
        self._slots.release()

    async def _guarded(self, batch: Batch) -> None:
        try:
            await self._send(batch, False)
            self._unacked.remove(batch)
        except Exception as exc:
            self._errors.append(exc)
            self._failed.set()
        finally:
            await self._release(batch)
