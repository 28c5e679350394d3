"""A virtual clock for tests."""

from __future__ import annotations

import asyncio


class FakeClock:
    """A virtual clock for tests: `sleep(s)` moves `monotonic()` forward by `s` at once.

    It still yields to the event loop (`asyncio.sleep(0)`) so other tasks run. An
    `AccountLimiter` on it pauses, backs off and tells throttle episodes apart on virtual time,
    but its bucket still paces on the loop's real clock: use it for tests that stay within the
    burst, and `LoopClock` under `looptime` for tests of pacing.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)
