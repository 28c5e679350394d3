"""The session coordinator: concurrent sends that still honour the session invariants."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .batcher import Batch
from .errors import Interrupted

SendFn = Callable[[Batch, bool], Awaitable[None]]
"""Sends one batch (the flag says whether it is the last) and returns once it is acknowledged."""


class SessionCoordinator:
    """Feeds one session's batches, in `seq` order, to at most `concurrency` concurrent sends.

    Contract (SPEC section 2): the newest batch is always held back until the next one
    arrives, so the coordinator knows which batch is last; the last batch is sent, with
    `last_batch_flag`, only after every other batch is acknowledged. With `first_alone`
    (replace), batch 1 is acknowledged before any other batch starts. When a send fails,
    no new batch starts, the sends in flight finish, and the first error is raised. When
    `stop` is set, the same happens and `Interrupted` is raised: the session stays open
    (no last flag) so it can be resumed.
    """

    def __init__(
        self,
        send: SendFn,
        *,
        concurrency: int,
        first_alone: bool,
        stop: asyncio.Event | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._send = send
        self._slots = asyncio.Semaphore(concurrency)
        self._first_alone = first_alone
        self._stop = stop or asyncio.Event()
        self._failed = asyncio.Event()
        self._errors: list[Exception] = []
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self, batches: asyncio.Queue[Batch | None]) -> int:
        """Send every batch from the queue (None ends it); returns how many were sent."""
        held: Batch | None = None
        try:
            while (batch := await self._next(batches)) is not None:
                if held is not None:
                    await self._start(held)
                held = batch
            await asyncio.gather(*self._inflight)
            self._raise_first_error()
            if self._stop.is_set():
                await self._wind_down()
            if held is not None:
                await self._send(held, True)
            return held.seq if held else 0
        finally:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _next(self, batches: asyncio.Queue[Batch | None]) -> Batch | None:
        # Wait for the next batch or a failed send, whichever comes first, so an error
        # surfaces at once even when the input is slow.
        get = asyncio.ensure_future(batches.get())
        failed = asyncio.ensure_future(self._failed.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({get, failed, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            stop.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            batch = get.result()
            if not self._halted():
                return batch
        await self._wind_down()
        raise AssertionError("unreachable")

    def _halted(self) -> bool:
        return self._failed.is_set() or self._stop.is_set()

    async def _wind_down(self) -> None:
        """Let the sends in flight finish, then raise why we stopped."""
        await asyncio.gather(*self._inflight)
        self._raise_first_error()
        raise Interrupted("stopped before the session ended; it can be resumed")

    async def _start(self, batch: Batch) -> None:
        await self._slots.acquire()
        if self._halted():
            self._slots.release()
            await self._wind_down()
        if self._first_alone and batch.seq == 1:
            try:
                await self._send(batch, False)
            finally:
                self._slots.release()
            return
        task = asyncio.create_task(self._guarded(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _guarded(self, batch: Batch) -> None:
        try:
            await self._send(batch, False)
        except Exception as exc:
            self._errors.append(exc)
            self._failed.set()
        finally:
            self._slots.release()

    def _raise_first_error(self) -> None:
        if self._errors:
            raise self._errors[0]
