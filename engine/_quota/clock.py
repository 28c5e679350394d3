"""Where the limiter and the sender read the time and wait: the event loop's clock by default,
injectable so that tests of pacing and backoff run on virtual time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Where the limiter reads the time and how it waits out pauses.

    Pauses, backoff and throttle episodes run on it. The token bucket does not: aiolimiter
    always reads the event loop's clock.
    """

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's clock: `loop.time()` and `asyncio.sleep`.

    The default, and the clock aiolimiter reads, so pauses and pacing agree. Under `looptime`
    both run on virtual time, which is how the tests check pacing exactly. Outside a running
    loop it falls back to `time.monotonic()`, which is what the default loops use.
    """

    def monotonic(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
