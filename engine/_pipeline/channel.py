"""A bounded channel between two stages: the sender closes it when done, and the receiver
sees the end of the stream once it has taken every item (no `None` item marks the end)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class EndOfStream(Exception):
    """The channel is closed and every item sent was received."""


class ClosedChannel(Exception):
    """Something was sent on a channel already closed."""


class _End:
    """Put on the queue by close(), so a receiver waiting on an empty channel wakes up."""


_END = _End()


class Channel(Generic[T]):
    """At most `capacity` items waiting; `send` waits for room. One sender, one receiver.

    `async for item in channel` takes items until the end of the stream.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue(capacity)
        self._closed = False

    async def send(self, item: T) -> None:
        if self._closed:
            raise ClosedChannel("send on a closed channel")
        await self._queue.put(item)

    def close(self) -> None:
        """End the stream after the items already sent. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        # A full queue has no receiver waiting: it sees the end when it finds the queue empty.
        if not self._queue.full():
            self._queue.put_nowait(_END)

    def ready(self) -> bool:
        """Whether `receive` would return (an item, or the end of the stream) without waiting."""
        return self._closed or not self._queue.empty()

    async def receive(self) -> T:
        """The next item; raises EndOfStream when the channel is closed and empty."""
        if self._closed and self._queue.empty():
            raise EndOfStream
        item = await self._queue.get()
        if isinstance(item, _End):
            raise EndOfStream
        return item

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None
