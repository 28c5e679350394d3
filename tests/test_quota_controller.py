"""The quota controller on virtual time: unit steps, then whole runs against the throttle
models in the discrete-event simulator (same defaults in every cell)."""

from __future__ import annotations

import math

import pytest

from engine._quota import QuotaConfig, QuotaController, Usage
from engine.testing import throttle as th
from tests.quota_sim import SHAPES, Job, run_cell, simulate


def test_one_call_goes_at_first_then_none_until_its_reply() -> None:
    c = QuotaController()
    assert c.next_send_at(3.0) == 3.0
    c.on_send(3.0)
    assert c.next_send_at(3.0) == math.inf


def test_the_cap_is_learned_from_usage_rising_per_call_and_the_window_filled_exactly() -> None:
    c = QuotaController()
    t0 = c.on_send(0.0)
    c.on_reply(0.05, Usage(20), t0)  # one call is 20%: 5 calls a window, if no one else spends
    sent = [c.on_send(0.05)]
    c.on_reply(0.1, Usage(40), sent[0])
    while c.next_send_at(0.1) == 0.1:
        sent.append(c.on_send(0.1))
    assert len(sent) == 4  # the window holds 5: no more than 5 go before any leaves
    assert (c.state.cap_lo, c.state.cap_hi) == pytest.approx((100 / 21, 100 / 19))


def test_the_next_call_goes_when_our_oldest_leaves_a_known_window() -> None:
    c = QuotaController()
    c.state.window_s, c.state.window_lo = 1.0, 1.0  # known: a 1 s window of 5 calls
    c.state.cap_lo, c.state.cap_hi = 4.9, 5.1
    tickets = [c.on_send(t) for t in (0.0, 0.1, 0.2, 0.3, 0.4)]
    for ticket, pct in zip(tickets, (20, 40, 60, 80, 100), strict=True):
        c.on_reply(0.5, Usage(pct), ticket)
    due = c.next_send_at(0.5)
    assert due == pytest.approx(1.0 + c.state.jitter_s)
    assert due > 1.0 + c.state.jitter_s  # not at the very instant: the quota's clock rounds too


def test_a_window_that_resets_is_not_taken_for_a_short_one() -> None:
    c = QuotaController()
    c.state.cap_lo, c.state.cap_hi = 9.5, 10.5  # 10 calls a window
    for t in range(10):  # one a second, each counted: the window is longer than 8 s
        c.on_reply(t + 0.05, Usage(10 * (t + 1)), c.on_send(float(t)))
    assert c.state.window_lo == pytest.approx(8.0)
    # At 10 only the new call counts: a rolling window would be 1 s, below what is known.
    c.on_reply(10.05, Usage(10), c.on_send(10.0))
    assert c.state.window_s == pytest.approx(1.05 * 8.0)
    assert c.state.resets


def test_after_a_throttle_the_next_call_goes_by_the_regain_estimate() -> None:
    c = QuotaController(QuotaConfig(minute_s=0.5))  # a fake running 120 times faster
    c.on_reply(0.05, Usage(100), c.on_send(0.0))
    c.on_throttle(29.65, Usage(200, regain_min=1), 80003, c.on_send(29.6))
    # The window is longer than 29.6 s and not bounded above; Meta says room in a minute.
    assert c.next_send_at(29.7) == pytest.approx(29.65 + 0.5)


def test_the_cap_is_not_learned_over_a_span_in_which_a_call_may_have_left() -> None:
    c = QuotaController()
    c.state.cap_lo, c.state.cap_hi, c.state.window_lo = 9.5, 10.5, 5.0
    c.on_reply(0.05, Usage(10), c.on_send(0.0))
    c.on_reply(6.05, Usage(10), c.on_send(6.0))  # the first may have left: usage tells nothing
    assert (c.state.cap_lo, c.state.cap_hi) == (9.5, 10.5)


def test_an_80003_with_a_regain_estimate_pauses_until_a_minute_before_it() -> None:
    c = QuotaController(QuotaConfig(minute_s=60.0))
    t = c.on_send(0.0)
    wait = c.on_throttle(0.1, Usage(104, regain_min=12), 80003, t)
    assert wait == pytest.approx(11 * 60 - 0.0)  # whole minutes, rounded up by Meta
    assert c.next_send_at(1.0) >= 0.1 + 11 * 60


def test_a_reading_between_whole_calls_marks_a_token_bucket_paced_by_its_refill() -> None:
    c = QuotaController()
    c.state.cap_lo, c.state.cap_hi = 4.9, 5.1  # 5 calls: readings step by 20%
    c.on_reply(0.05, Usage(20), c.on_send(0.0))
    assert c.state.anchor is None  # on the grid: a window would read the same
    c.on_reply(0.15, Usage(30), c.on_send(0.1))  # 1 call, +10%: half a token came back
    assert c.state.anchor is not None
    # Refill at least (1 call - 11% of 5) / 0.1 s = 4.5 tokens/s.
    assert c.state.refill == pytest.approx(4.5)
    # At most 31% of 5 = 1.55 spent at 0.1, and 0.45 back by 0.2: 3.9 tokens, so three calls
    # now and the fourth when 0.1 more came back.
    sent = [c.on_send(0.2) for _ in range(4) if c.next_send_at(0.2) == 0.2]
    assert len(sent) == 3
    assert c.next_send_at(0.2) == pytest.approx(0.2 + 0.1 / 4.5)


def test_a_burst_of_throttles_is_one_episode() -> None:
    c = QuotaController()
    tickets = [c.on_send(0.0) for _ in range(8)]
    waits = [c.on_throttle(0.05, Usage(150), 80003, t) for t in tickets]
    assert max(waits) == pytest.approx(c.config.first_probe_s)


# Cells that miss the aim today, and why (see docs/quota.md, "Limits").
_WHOLE = "refill of one whole token per round trip reads as a cap of 100+, never off the grid"
MISSES = {("token bucket 1s", 20): _WHOLE}
CELLS = [
    pytest.param(
        name,
        rate,
        id=f"{name}-{rate}/s",
        marks=[pytest.mark.xfail(reason=MISSES[name, rate], strict=True)]
        if (name, rate) in MISSES
        else [],
    )
    for name in SHAPES
    for rate in (1, 5, 20)
]


@pytest.mark.parametrize(("name", "rate"), CELLS)
def test_goodput_at_least_90_percent_and_at_most_2_percent_throttled(name: str, rate: int) -> None:
    result = run_cell(name, rate)
    assert result.goodput >= 0.90
    assert result.throttled_share <= 0.02


@pytest.mark.parametrize(("before", "after"), [(5, 20), (20, 5)])
def test_a_cap_changed_mid_run_is_relearned(before: int, after: int) -> None:
    model = th.sliding(before, 10.0)
    c = QuotaController()

    def tier_change() -> None:
        model.limit = after * 10

    result = simulate(c, model, 600.0, events={200.0: tier_change}, count_from=300.0)
    assert result.admitted >= 0.9 * after * 300
    assert result.throttled_share <= 0.02


@pytest.mark.parametrize(
    ("shape", "minute_s"),
    [(th.sliding(5, 60.0), 60.0), (th.sliding(5, 3600.0, time_scale=120.0), 0.5)],
    ids=["sliding 60s", "sliding 1h scaled"],
)
def test_an_account_half_spent_before_the_first_call(
    shape: th.SlidingWindow, minute_s: float
) -> None:
    shape.spend(-shape.window_s / shape.time_scale / 3, shape.limit // 2)
    c = QuotaController(QuotaConfig(minute_s=minute_s))
    result = simulate(c, shape, 900.0)
    assert result.goodput >= 0.90
    assert result.throttled_share <= 0.02


def test_two_jobs_sharing_the_account_get_fair_shares() -> None:
    jobs = [Job(), Job(start=100.0)]
    result = simulate(QuotaController(), th.sliding(5, 10.0), 400.0, jobs=jobs, count_from=100.0)
    first_share = (jobs[0].admitted - 5 * 100) / (5 * 300)  # it ran alone for 100 s
    second_share = jobs[1].admitted / (5 * 300)
    assert first_share >= 0.4 and second_share >= 0.4
    assert result.throttled_share <= 0.02


def test_a_small_job_is_not_starved_by_a_big_one() -> None:
    small = Job(calls=50, start=100.0)
    simulate(QuotaController(), th.sliding(5, 10.0), 400.0, jobs=[Job(), small])
    # Half of 5 calls/s: 50 calls in about 20 s, plus the wait for the window to free room.
    assert small.done_at is not None and small.done_at - small.start <= 35.0
