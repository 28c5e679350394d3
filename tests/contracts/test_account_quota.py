"""What any ad-account limiter must do for the sender, in-process or shared through Redis, on
virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from engine._graph.usage import Usage
from engine._quota.account import AccountQuota
from engine._quota.clock import LoopClock
from engine._quota.limiter import AccountLimiter, LimiterConfig

Make = Callable[[LimiterConfig], AccountQuota]

pytestmark = pytest.mark.looptime


@pytest.fixture(params=["in-process", "shared"])
async def make(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Make]:
    if request.param == "in-process":
        yield AccountLimiter
        return
    from engine._fleet.quota import SharedRegistry

    url = request.getfixturevalue("redis_url")
    registries: list[SharedRegistry] = []

    def shared(config: LimiterConfig) -> AccountQuota:
        # The loop's clock, which looptime runs virtually, stands in for the hosts' clock.
        registries.append(SharedRegistry(url, config, namespace, clock=LoopClock(), timeout_s=None))
        return registries[-1].get("act_1")

    yield shared
    for registry in registries:
        await registry.close()


async def passes(quota: AccountQuota, n: int) -> list[float]:
    """n acquirers at once: the virtual time each got through, in order."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await quota.acquire()
        times.append(loop.time())

    await asyncio.gather(*(one() for _ in range(n)))
    return times


async def test_a_burst_goes_at_once_then_calls_are_paced(make: Make) -> None:
    quota = make(LimiterConfig(rate=2.0, burst=2))
    times = await passes(quota, 6)
    assert times[:2] == [0.0, 0.0]
    assert times[-1] >= 1.9  # 4 more at 2/s


async def test_a_throttle_pauses_every_caller_for_the_regain_estimate(make: Make) -> None:
    quota = make(LimiterConfig(rate=8.0, burst=8))
    await passes(quota, 1)
    assert quota.on_throttle(Usage(pct=70.0, regain_s=120.0)) == 120.0
    assert quota.throttles == 1
    assert min(await passes(quota, 3)) >= 120.0


async def test_a_pause_is_capped_by_max_throttle_wait(make: Make) -> None:
    quota = make(LimiterConfig(rate=8.0, max_throttle_wait_s=30.0))
    await passes(quota, 1)
    assert quota.on_throttle(Usage(pct=70.0, regain_s=3600.0)) == 30.0
    times = await passes(quota, 2)
    assert min(times) >= 30.0 and max(times) < 31.0


async def test_successes_keep_the_pace_within_the_configured_rate(make: Make) -> None:
    quota = make(LimiterConfig(rate=4.0, burst=1))
    for _ in range(5):
        await quota.acquire()
        quota.on_success(Usage(pct=10.0))
    assert 0 < quota.rate <= 4.0
    assert quota.throttles == 0
