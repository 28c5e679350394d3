"""The per-account limiter: exact timings on virtual loop time (looptime), no real sleeps.

Rates here are powers of two, so intervals are exact in binary floating point and the
expected times compare exactly (looptime also quantizes loop time to 1e-6 s).
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from engine._graph.usage import Usage, parse_usage
from engine._quota.backoff import Backoff
from engine._quota.clock import LoopClock
from engine._quota.limiter import AccountLimiter, LimiterConfig, LimiterRegistry
from engine.testing.clock import FakeClock

looptime = pytest.mark.looptime


def regain(seconds: float) -> Usage:
    """A throttle's usage figures: a regain estimate, usage below slow_pct (no usage cap)."""
    return Usage(pct=70.0, regain_s=seconds)


def now() -> float:
    return asyncio.get_running_loop().time()


async def pass_times(limiter: AccountLimiter, n: int) -> list[float]:
    """Start n concurrent acquirers; return the virtual time each got through, in order."""
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(now())

    await asyncio.gather(*(one() for _ in range(n)))
    return times


# --- the bucket -------------------------------------------------------------------------


@looptime
async def test_bucket_lets_burst_through_then_paces_at_rate() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=2.0, burst=3))
    times = await pass_times(limiter, 7)
    assert times == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0])


@looptime
async def test_bucket_refills_after_idle() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=2.0, burst=2))
    await pass_times(limiter, 4)  # 0, 0, 0.5, 1.0
    await asyncio.sleep(10)
    assert await pass_times(limiter, 3) == pytest.approx([11, 11, 11.5])


# --- throttles and pauses ---------------------------------------------------------------


@looptime
async def test_throttle_pauses_every_acquirer_for_the_regain_time() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, burst=8))
    await pass_times(limiter, 1)
    pause = limiter.on_throttle(regain(120.0))
    assert pause == 120.0
    assert limiter.rate == 4.0
    # Resumes after the pause, slower: the rebuilt bucket starts empty, 1/4 s apart.
    times = await pass_times(limiter, 3)
    assert times == [120.25, 120.5, 120.75]


@looptime
async def test_throttle_at_full_usage_resumes_at_min_rate_until_usage_falls() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=10.0, min_rate=0.5))
    await pass_times(limiter, 1)
    assert limiter.on_throttle(Usage(pct=100.0, regain_s=60.0)) == 60.0
    assert limiter.rate == 0.5
    assert await pass_times(limiter, 2) == pytest.approx([62.0, 64.0])
    limiter.on_success(Usage(pct=40.0))  # the cap lifts at once; AIMD stays halved
    assert limiter.rate == pytest.approx(5.0 + limiter.config.increase)


@looptime
async def test_throttle_pause_is_capped_by_max_throttle_wait() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, max_throttle_wait_s=300.0))
    await pass_times(limiter, 1)
    assert limiter.on_throttle(regain(3600.0)) == 300.0
    times = await pass_times(limiter, 2)
    assert min(times) >= 300.0
    assert max(times) < 301.0


@looptime
async def test_pause_starting_while_waiting_for_a_token_holds_the_waiter() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=1.0, burst=1))
    await pass_times(limiter, 1)  # bucket now full until t=1
    waiter = asyncio.create_task(pass_times(limiter, 1))
    await asyncio.sleep(0.5)
    limiter.on_throttle(regain(60.0))
    assert await waiter == [0.5 + 60.0 + 1 / 0.5]  # not at t=1, when its token came


def test_backoff_is_full_jitter_bounded_by_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=60.0)
    for attempt in (0, 1, 3, 7, 10, 5000):
        bound = min(60.0, 0.5 * 2**attempt) if attempt < 100 else 60.0
        delays = [backoff.delay(attempt, random.Random(seed)) for seed in range(300)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > 0.9 * bound  # full jitter spans the whole range
        assert min(delays) < 0.1 * bound
    assert backoff.delay(2, random.Random(7)) == random.Random(7).uniform(0, 2.0)


@looptime
async def test_throttles_without_regain_back_off_exponentially_with_jitter() -> None:
    config = LimiterConfig(rate=8.0, min_rate=0.25, backoff=Backoff(base_s=1.0, cap_s=8.0))
    limiter = AccountLimiter(config, rng=random.Random(42))
    replica = random.Random(42)
    pauses = []
    for episode in range(6):
        await limiter.acquire()  # a fresh request after the previous pause
        pause = limiter.on_throttle(None)
        assert pause == pytest.approx(config.backoff.delay(episode, replica))
        assert 0.0 <= pause <= min(8.0, 2.0**episode)
        pauses.append(pause)
    assert limiter.throttles == 6
    # Growth: the bound doubles per consecutive throttle, so across seeds the later pauses
    # are longer on average.
    means = [
        sum(Backoff(1.0, 8.0).delay(k, random.Random(s)) for s in range(200)) / 200
        for k in range(4)
    ]
    assert means == sorted(means)
    assert means[3] > 5 * means[0]


@looptime
async def test_a_success_resets_the_backoff_attempt() -> None:
    config = LimiterConfig(rate=8.0, min_rate=0.25, backoff=Backoff(base_s=1.0, cap_s=64.0))
    limiter = AccountLimiter(config, rng=random.Random(1))
    for _ in range(5):
        await limiter.acquire()
        limiter.on_throttle(None)
    await limiter.acquire()
    limiter.on_success(None)
    await limiter.acquire()
    assert limiter.on_throttle(None) <= 1.0  # attempt 0 again, not 5 (bound 32)


@looptime
async def test_concurrent_throttles_during_one_pause_decrease_once_and_do_not_stack() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, burst=8), rng=random.Random(3))

    async def sender(seconds: float | None) -> float:
        await limiter.acquire()
        await asyncio.sleep(1.0)  # the request is in flight
        return limiter.on_throttle(None if seconds is None else regain(seconds))

    pauses = await asyncio.gather(*(sender(r) for r in (60.0, 90.0, None, 30.0, 60.0)))
    assert limiter.throttles == 5
    assert limiter.rate == 4.0  # halved once, not 5 times
    assert pauses[1] == 90.0
    assert limiter.paused_for == 90.0  # the later end, not the sum
    # The next throttle after the pause, for a request sent after it, is a new episode.
    await limiter.acquire()
    assert now() == 91.25
    limiter.on_throttle(regain(1.0))
    assert limiter.rate == 2.0


@looptime
async def test_stale_throttle_after_a_short_pause_does_not_decrease_again() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0), rng=random.Random(5))

    async def slow_sender() -> None:
        await limiter.acquire()
        await asyncio.sleep(5.0)  # a long request, sent before the throttle below
        limiter.on_throttle(None)

    task = asyncio.create_task(slow_sender())
    await limiter.acquire()
    await asyncio.sleep(0.1)
    first = limiter.on_throttle(None)
    assert first <= 0.5  # backoff attempt 0
    await task  # answers at t=5, long after the short pause ended
    assert limiter.rate == 4.0
    assert limiter.throttles == 2


# --- AIMD -------------------------------------------------------------------------------


@looptime
async def test_aimd_halves_on_throttle_and_climbs_back_additively() -> None:
    config = LimiterConfig(rate=8.0, increase=0.5, decrease=0.5, min_rate=0.25)
    limiter = AccountLimiter(config, rng=random.Random(0))
    await limiter.acquire()
    limiter.on_throttle(regain(2.0))
    assert limiter.rate == 4.0
    for expected in (4.5, 5.0, 5.5):
        limiter.on_success(None)
        assert limiter.rate == expected
    for _ in range(20):
        limiter.on_success(None)
    assert limiter.rate == 8.0  # never above config.rate
    for _ in range(12):
        await limiter.acquire()
        limiter.on_throttle(regain(30.0))
    assert limiter.rate == 0.25  # never below min_rate


@looptime
async def test_paced_rate_follows_aimd_in_steps() -> None:
    config = LimiterConfig(rate=16.0, burst=1, increase=8.0)
    limiter = AccountLimiter(config, rng=random.Random(0))
    await limiter.acquire()
    limiter.on_throttle(regain(10.0))  # rate 8
    times = await pass_times(limiter, 3)
    assert times == [10.125, 10.25, 10.375]
    limiter.on_success(None)  # back to 16: a new bucket, as empty as the old one
    assert limiter.rate == 16.0
    times = await pass_times(limiter, 3)
    assert times == [10.4375, 10.5, 10.5625]


# --- usage feedback ---------------------------------------------------------------------


@looptime
async def test_usage_above_slow_pct_scales_the_rate_down() -> None:
    config = LimiterConfig(rate=10.0, slow_pct=75.0, stop_pct=95.0, increase=0.05)
    limiter = AccountLimiter(config)
    limiter.on_success(Usage(pct=60.0))
    assert limiter.rate == 10.0
    limiter.on_success(Usage(pct=85.0))
    assert limiter.rate == pytest.approx(5.0)  # halfway from slow to stop
    limiter.on_success(Usage(pct=90.0))
    assert limiter.rate == pytest.approx(2.5)
    assert limiter.paused_for == 0.0
    limiter.on_success(Usage(pct=70.0))  # usage fell: the cap lifts at once (no throttle)
    assert limiter.rate == 10.0


@looptime
async def test_usage_at_stop_pct_empties_the_bucket_and_keeps_the_aimd_rate() -> None:
    config = LimiterConfig(rate=8.0, min_rate=0.25, increase=0.5)
    limiter = AccountLimiter(config)
    await limiter.acquire()  # the bucket still holds 9 tokens
    limiter.on_success(Usage(pct=97.0))
    assert limiter.rate == config.min_rate
    assert limiter.throttles == 0 and limiter.paused_for == 0.0
    # No saved burst: the next request is a probe one min_rate interval later.
    await limiter.acquire()
    assert now() == 4.0
    limiter.on_success(Usage(pct=40.0))  # usage fell: the cap lifts, back to full speed
    assert limiter.rate == config.rate


@looptime
async def test_usage_at_stop_pct_with_a_regain_estimate_pauses() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, min_rate=0.25, max_throttle_wait_s=30.0))
    await limiter.acquire()
    limiter.on_success(Usage(pct=100.0, regain_s=120.0))
    assert limiter.paused_for == 30.0
    await limiter.acquire()
    assert now() == 34.0


async def learn_a_16_s_window(limiter: AccountLimiter) -> None:
    """The account's first call at 0 meets a stop; the blind probe at 16 s finds calls gone."""
    await limiter.acquire()
    limiter.on_success(Usage(pct=97.0))  # the window's length is not known: a blind probe
    await limiter.acquire()
    assert now() == 16.0
    limiter.on_success(Usage(pct=40.0))  # calls had left by 16 s: the window is 16 s at most
    assert limiter.rate == 8.0


@looptime
async def test_after_a_fall_the_call_after_a_stop_waits_for_the_oldest_to_leave() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, burst=1, min_rate=0.0625, increase=0.0))
    await learn_a_16_s_window(limiter)
    for _ in range(8):
        await limiter.acquire()
    assert now() == 17.0
    limiter.on_success(Usage(pct=97.0))
    # The call of 16 s leaves the window at 32 s: no blind 16 s from now (33 s).
    await limiter.acquire()
    assert now() == pytest.approx(32.0, abs=1e-3)
    limiter.on_success(Usage(pct=97.0))  # a call left as one came: usage as before
    await limiter.acquire()
    assert now() == pytest.approx(32.125, abs=1e-3)  # the next leaves at 32.125
    # This timed call finds usage higher: nothing had left, so the bound was wrong.
    limiter.on_success(Usage(pct=99.0))
    await limiter.acquire()
    assert now() == pytest.approx(48.125, abs=1e-3)  # blind again


@looptime
async def test_a_throttle_forgets_the_window() -> None:
    config = LimiterConfig(rate=8.0, burst=1, min_rate=0.0625, increase=0.0)
    limiter = AccountLimiter(config)
    await learn_a_16_s_window(limiter)
    await limiter.acquire()
    limiter.on_throttle(regain(1.0))  # pause to 17.125, AIMD down to 4/s
    await limiter.acquire()
    assert now() == 17.375
    limiter.on_success(Usage(pct=97.0))
    await limiter.acquire()
    assert now() == pytest.approx(33.375, abs=1e-3)  # blind: not when the 16 s call leaves


@looptime
async def test_a_rate_that_rises_again_releases_queued_waiters_at_once() -> None:
    config = LimiterConfig(rate=8.0, burst=1, min_rate=0.25, increase=0.0)
    limiter = AccountLimiter(config)
    await limiter.acquire()
    limiter.on_success(Usage(pct=95.0))  # down to 0.25/s: the next token is 4 s away
    waiters = asyncio.create_task(pass_times(limiter, 3))
    await asyncio.sleep(1.0)  # a quarter token earned at 0.25/s
    limiter.on_success(Usage(pct=10.0))  # back up to 8/s: no waiting out 4 s
    # A new bucket at 8/s at once; the quarter token of the old one is forfeited.
    assert await waiters == [1.125, 1.25, 1.375]


@looptime
async def test_a_rate_that_falls_applies_from_the_next_token() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, burst=1, slow_pct=75.0, stop_pct=95.0))
    await limiter.acquire()
    waiters = asyncio.create_task(pass_times(limiter, 3))
    await asyncio.sleep(0.0625)
    limiter.on_success(Usage(pct=85.0))  # capped at 4/s while the head waits at 8/s
    assert await waiters == [0.125, 0.375, 0.625]


@looptime
async def test_a_new_rate_keeps_the_whole_tokens_up_to_its_burst() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, burst=8, slow_pct=75.0, stop_pct=95.0))
    await limiter.acquire()  # 7 tokens left
    limiter.on_success(Usage(pct=90.0))  # capped at 2/s: a burst of 2
    assert await pass_times(limiter, 4) == [0.0, 0.0, 0.5, 1.0]


@looptime
async def test_a_cancelled_waiter_leaves_the_queue_and_the_bucket_as_they_were() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=1.0, burst=1))
    await limiter.acquire()
    gone = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.5)
    gone.cancel()
    assert await pass_times(limiter, 2) == [1.0, 2.0]
    assert gone.cancelled()


@looptime
async def test_the_burst_shrinks_with_the_rate() -> None:
    limiter = AccountLimiter(LimiterConfig(rate=8.0, burst=8, slow_pct=75.0, stop_pct=95.0))
    limiter.on_success(Usage(pct=90.0))  # capped at 2/s: a burst of 2, not 8
    await asyncio.sleep(60)
    assert await pass_times(limiter, 4) == [60.0, 60.0, 60.5, 61.0]


@looptime
async def test_pauses_run_on_an_injected_clock_and_pacing_on_the_loop() -> None:
    clock = FakeClock(100.0)
    limiter = AccountLimiter(LimiterConfig(rate=2.0, burst=2), clock=clock)
    assert await pass_times(limiter, 2) == [0.0, 0.0]  # the burst
    assert limiter.on_throttle(regain(30.0)) == 30.0
    assert limiter.paused_for == 30.0
    await limiter.acquire()
    assert clock.monotonic() == 130.0  # the pause passed on the injected clock ...
    assert now() == 1.0  # ... and the emptied bucket paced one interval at 1/s on the loop's


# --- clocks and registry ----------------------------------------------------------------


async def test_fake_clock_advances_on_sleep_and_lets_others_run() -> None:
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(2.5)
    assert clock.monotonic() == 2.5
    assert ran == ["other"]
    await task


@looptime
async def test_loop_clock_reads_the_loop_time() -> None:
    clock = LoopClock()
    await clock.sleep(3.0)
    assert clock.monotonic() == now() == pytest.approx(3.0)


def test_registry_shares_one_limiter_per_account() -> None:
    registry = LimiterRegistry(LimiterConfig(rate=3.0))
    a = registry.get("act_1")
    assert registry.get("act_1") is a
    assert registry.get("act_2") is not a
    assert a.config.rate == 3.0


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LimiterConfig(rate=1.0, min_rate=2.0)
    with pytest.raises(ValueError):
        LimiterConfig(decrease=1.5)
    with pytest.raises(ValueError, match="rate must be above 0"):
        LimiterConfig(rate=0.0, min_rate=0.0)


# --- parse_usage ------------------------------------------------------------------------

BUC = (
    '{"123456789": [{"type": "custom_audience", "call_count": 28, "total_cputime": 12,'
    ' "total_time": 40, "estimated_time_to_regain_access": 3},'
    ' {"type": "ads_management", "call_count": 99, "total_cputime": 1, "total_time": 1,'
    ' "estimated_time_to_regain_access": 30, "ads_api_access_tier": "standard_access"}]}'
)
AD_ACCOUNT = (
    '{"acc_id_util_pct":9.67,"reset_time_duration":100,"ads_api_access_tier":"standard_access"}'
)
APP = '{"call_count":28,"total_time":25,"total_cputime":25}'


def test_parse_usage_prefers_the_custom_audience_entries() -> None:
    usage = parse_usage({"X-Business-Use-Case-Usage": BUC})
    assert usage == Usage(pct=40.0, regain_s=180.0)  # minutes -> seconds; ads_management ignored


def test_parse_usage_takes_another_buckets_wait_when_ours_names_none() -> None:
    # An 80004 comes from ads_management: its wait holds though custom_audience is calm.
    buc = (
        '{"1": [{"type": "custom_audience", "call_count": 10},'
        ' {"type": "ads_management", "call_count": 100, "estimated_time_to_regain_access": 5}]}'
    )
    assert parse_usage({"X-Business-Use-Case-Usage": buc}) == Usage(pct=10.0, regain_s=300.0)


def test_parse_usage_uses_all_entries_without_custom_audience() -> None:
    buc = '{"1": [{"type": "ads_insights", "call_count": 81, "total_time": 3}]}'
    assert parse_usage({"x-business-use-case-usage": buc}) == Usage(pct=81.0, regain_s=None)


def test_parse_usage_takes_the_highest_of_all_headers_case_insensitively() -> None:
    usage = parse_usage(
        {"x-AD-account-usage": AD_ACCOUNT, "X-APP-USAGE": APP, "Content-Type": "text/json"}
    )
    assert usage == Usage(pct=28.0, regain_s=None)
    high = '{"acc_id_util_pct": 96.5, "reset_time_duration": 100}'
    assert parse_usage({"X-Ad-Account-Usage": high, "x-app-usage": APP}) == Usage(96.5, None)


def test_parse_usage_works_on_aiohttp_headers() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict({"X-Business-Use-Case-Usage": BUC, "X-App-Usage": APP}))
    assert parse_usage(headers) == Usage(pct=40.0, regain_s=180.0)


def test_parse_usage_zero_regain_is_none() -> None:
    buc = (
        '{"1": [{"type": "custom_audience", "call_count": 5,'
        ' "estimated_time_to_regain_access": 0}]}'
    )
    assert parse_usage({"X-Business-Use-Case-Usage": buc}) == Usage(pct=5.0, regain_s=None)


def test_parse_usage_none_without_usage_headers() -> None:
    assert parse_usage({}) is None
    assert parse_usage({"Content-Type": "application/json"}) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not json",
        "{",
        "[1, 2]",
        "null",
        '{"1": "nope"}',
        '{"1": [1, "x", null]}',
        '{"1": [{"type": "custom_audience", "call_count": "lots", "total_time": true}]}',
    ],
)
def test_parse_usage_malformed_buc_is_ignored(value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.limiter")
    assert parse_usage({"X-Business-Use-Case-Usage": value}) is None
    # Partial: a good header next to the bad one still counts.
    assert parse_usage({"X-Business-Use-Case-Usage": value, "X-App-Usage": APP}) == Usage(28.0)
    assert all(value not in r.getMessage() or not value for r in caplog.records)


def test_parse_usage_keeps_good_fields_of_a_partly_bad_entry() -> None:
    buc = (
        '{"1": [{"type": "custom_audience", "call_count": "x", "total_time": 61.5,'
        ' "estimated_time_to_regain_access": "soon"}]}'
    )
    assert parse_usage({"X-Business-Use-Case-Usage": buc}) == Usage(pct=61.5, regain_s=None)


@pytest.mark.parametrize(
    "header", ["X-Business-Use-Case-Usage", "X-Ad-Account-Usage", "X-App-Usage"]
)
@pytest.mark.parametrize("value", ["", "not json", "{", "[1, 2]", "null", "42", '"97"'])
def test_parse_usage_ignores_any_malformed_header_with_a_debug_log(
    header: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.limiter")
    assert parse_usage({header: value}) is None
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG and header in record.getMessage()


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Ad-Account-Usage", '{"acc_id_util_pct": "high", "reset_time_duration": 100}'),
        ("X-App-Usage", '{"call_count": null, "total_time": [1], "total_cputime": NaN}'),
        ("X-App-Usage", '{"call_count": 1e999}'),
    ],
)
def test_parse_usage_skips_fields_that_are_not_numbers(header: str, value: str) -> None:
    assert parse_usage({header: value}) is None
