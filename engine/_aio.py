"""One asyncio pattern the stages share: wait for a piece of work or an event, whichever
comes first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


async def first_done(work: Awaitable[_T], *events: asyncio.Event) -> asyncio.Future[_T]:
    """Await `work` until it finishes or one of `events` is set. Returns the future of `work`:
    done when it finished first (or at the same time), otherwise cancelled and not yet done.
    Nothing is left waiting on the events."""
    future = asyncio.ensure_future(work)
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait({future, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        future.cancel()  # a finished future stays as it is
    return future
