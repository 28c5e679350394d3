"""Per ad account rate limiting: an aiolimiter token bucket with AIMD, usage feedback and pauses.

Meta counts Custom Audience calls per ad account, so every job and audience of one account
shares one `AccountLimiter`, handed out by `LimiterRegistry`. Senders call `acquire()` before
every attempt and report each outcome with `on_success()` or `on_throttle()`, passing the
usage figures `parse_usage()` read from the reply.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from .._aio import first_done
from .._graph.usage import Usage
from .backoff import Backoff
from .clock import Clock, LoopClock

log = logging.getLogger("engine.limiter")


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """How fast one ad account may be called, and how to slow down.

    `rate` defaults to 10 requests/s with a bucket of 10. Meta's Custom Audience quota is
    5000 + 40 x audiences calls/hour on the Limited (standard) tier, about 1.4/s, and 190000 +
    40 x audiences on the Full tier, about 53/s; with 10000-row payloads the CPU and time
    quotas tend to bite before the call count. 10/s stays well under a Full-tier account's
    quota and far exceeds what a single upload needs, while a Limited-tier account is held
    back by the usage headers (`slow_pct`, `stop_pct`) and by 80003 pauses rather than by
    a guess here. Raise `rate` for Full-tier accounts running many jobs at once.

    `increase` is added to the AIMD rate per success: after a halving from 10/s it takes
    100 successes to recover. Above `slow_pct` usage the rate is capped in proportion,
    from `rate` at `slow_pct` down to `min_rate` at `stop_pct`. Above `stop_pct` the bucket
    is emptied (the next request is a probe, one `min_rate` interval later) and a regain
    estimate, if given, pauses the account. The AIMD rate is left alone there: the cap already
    holds the account back for as long as usage stays high, and halving as well made it crawl
    once usage fell (a benchmark against a sliding-window cap lost a tenth of its goodput so).
    Once a fall of usage has shown how long the account's window is at most, the call after a
    stop goes when the oldest call in the window leaves it, if that is sooner (see `_Window`).
    Throttles pause for `estimated_time_to_regain_access` capped at `max_throttle_wait_s`,
    else for `backoff`.
    """

    rate: float = 10.0
    burst: int = 10
    min_rate: float = 0.2
    increase: float = 0.05
    decrease: float = 0.5
    slow_pct: float = 75.0
    stop_pct: float = 95.0
    max_throttle_wait_s: float = 300.0
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be above 0 requests/s")
        if not 0 < self.min_rate <= self.rate:
            raise ValueError("need 0 < min_rate <= rate")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if self.increase < 0 or self.max_throttle_wait_s < 0:
            raise ValueError("increase and max_throttle_wait_s must not be negative")
        if not self.slow_pct < self.stop_pct:
            raise ValueError("slow_pct must be below stop_pct")

    def ceiling_for(self, pct: float) -> float:
        """The rate a usage of `pct` percent allows: `rate` up to `slow_pct`, falling in
        proportion to `min_rate` at `stop_pct`."""
        if pct <= self.slow_pct:
            return self.rate
        share = (self.stop_pct - pct) / (self.stop_pct - self.slow_pct)
        return max(self.min_rate, self.rate * share)


# When the calling task was last let through, per limiter. The sender acquires and reports
# the outcome in one task, so a reply to a request sent before the current slow-down episode
# began (which must not count as a new one) can be told from a fresh one.
_GRANT: ContextVar[tuple[AccountLimiter, float] | None] = ContextVar("limiter_grant", default=None)


# Grant times a _Window keeps at most; beyond them it times calls to a later leaving, still
# no later than the blind interval.
_KEEP_GRANTS = 1 << 16


class _Window:
    """What the usage figures tell of the account's rolling quota window, to time the call
    after a usage stop to the room coming back.

    A rolling window frees a call's room when the call ages out of it. Once usage has reached
    `stop_pct`, a later reply at or under `slow_pct` shows that calls had left by the time its
    request went out, and the account's first call was among them or came after older ones
    that left: the window is at most the time from that first call to that request. With the
    bound known, the call after a stop need not wait a blind 1/`min_rate`: room comes back when
    the oldest of our calls still in the window leaves it. A call so timed whose reply shows
    usage above that of the stop found no room (the bound was wrong: other clients' calls
    had left), and so does one met with a throttle: the bound is forgotten. When the first
    call came long before the first stop the bound is too long to help, and harmless: a
    timed call never goes later than the blind one would.
    """

    def __init__(self, config: LimiterConfig) -> None:
        self._config = config
        self._grants: list[float] = []  # when our calls went out, oldest first
        self._first: float | None = None
        self._top: float | None = None  # usage at the latest stop; None once usage fell
        self._timed_after: float | None = None  # calls after this were timed to a leaving
        self.length: float | None = None  # the window's length at most, once a fall showed it

    def granted(self, when: float) -> None:
        if self._first is None:
            self._first = when
        self._grants.append(when)
        if len(self._grants) > 2 * _KEEP_GRANTS:
            del self._grants[:_KEEP_GRANTS]

    def forget(self) -> None:
        self.length = None

    def after_reply(self, pct: float, sent: float | None, now: float) -> float | None:
        """Take in a reply's usage (`sent`: when its request went out, if known); return when
        the next call may go after a stop, None to leave that to the rate."""
        cfg = self._config
        if pct < cfg.stop_pct:
            if pct <= cfg.slow_pct and self._top is not None:
                if self.length is None and sent is not None and self._first is not None:
                    self.length = sent - self._first
                self._top = None
            return None
        timed = self._timed_after is not None and sent is not None and sent > self._timed_after
        if timed and self._top is not None and pct > self._top:
            self.forget()
        self._top = pct
        due = self._leaving(now)
        self._timed_after = now if due is not None else None
        return due

    def _leaving(self, now: float) -> float | None:
        """When the oldest of our calls in the window leaves it, if sooner than 1/min_rate."""
        if self.length is None:
            return None
        grants = self._grants
        i = bisect.bisect_right(grants, now - self.length)
        if i > 1024:
            del grants[:i]  # gone from the window for good
            i = 0
        if i == len(grants) or grants[i] + self.length - now >= 1 / self._config.min_rate:
            return None
        return grants[i] + self.length


# A rising rate is applied once it is this much above the bucket's (or back at full rate), so
# that AIMD's small additive steps rebuild the bucket a handful of times rather than per reply.
_STEP_UP = 1.1


class AccountLimiter:
    """Token bucket for one ad account (an `aiolimiter.AsyncLimiter`), with AIMD and
    account-wide pauses.

    `acquire()` returns once no pause is in force and the bucket has a token at the current
    rate; every sender of the account calls it before every attempt, so a pause stops them
    all. `on_success()` raises the rate additively toward `config.rate` (capped by the usage
    figures); `on_throttle()` halves it and pauses the account. Throttles that belong to an
    episode already under way (they arrive during its pause, or answer requests sent before
    it began) only extend the pause to the later end: they neither stack pauses nor decrease
    the rate again.

    The bucket holds up to `burst` tokens at full rate (fewer in proportion at a lower rate,
    so a burst never lasts longer than at full speed) and none during a pause: an account
    resumes one interval after the pause, never with a saved-up burst. An `AsyncLimiter` has
    one rate for life, so a new rate means a new bucket, which keeps the whole tokens of the
    old one. Waiters queue in order and only the one at the head waits on the bucket. A lower
    rate applies from the waiter after it. A rate that rises by `_STEP_UP` or back to
    `config.rate` applies at once, to the head too (which forfeits the fraction of a token it
    earned at the old rate), so waiters do not wait out a slow interval.

    The bucket paces on the event loop's clock, which aiolimiter reads; pauses and throttle
    episodes run on `clock`, by default that same loop clock.
    """

    def __init__(
        self,
        config: LimiterConfig | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or LimiterConfig()
        self._clock: Clock = clock or LoopClock()
        self._rng = rng or random.Random()
        # The allowed rate is the AIMD rate (errors, near-limit usage) capped by the usage
        # ceiling (latest headers); kept apart so that usage falling again lifts the cap at once.
        self._aimd = self.config.rate
        self._ceiling = self.config.rate
        self._window = _Window(self.config)
        self._pause_until = -math.inf
        self._episode_start = -math.inf  # first signal of the latest slow-down episode
        self._streak = 0  # throttle episodes since the last success
        self._throttles = 0
        self._bucket: AsyncLimiter | None = None  # built by the first acquire()
        self._bucket_rate = 0.0
        # When set, the bucket is stale and the next one holds only the tokens earned since
        # this time on `clock`: a pause's end, or a usage stop. -inf: the first starts full.
        self._empty_since: float | None = -math.inf
        self._queue = asyncio.Lock()  # FIFO: only the head waiter waits on the bucket
        self._changed = asyncio.Event()  # set (and replaced) to send the head waiter round

    @property
    def rate(self) -> float:
        """The rate currently allowed, in requests per second."""
        cfg = self.config
        return max(cfg.min_rate, min(self._aimd, self._ceiling, cfg.rate))

    @property
    def throttles(self) -> int:
        """How many throttling replies were reported."""
        return self._throttles

    @property
    def paused_for(self) -> float:
        """Seconds left of the pause in force, 0 when none."""
        return max(0.0, self._pause_until - self._clock.monotonic())

    async def acquire(self) -> None:
        """Wait until no pause is in force and a token is available at the current rate."""
        async with self._queue:
            while True:
                now = self._clock.monotonic()
                if now < self._pause_until:
                    await self._clock.sleep(self._pause_until - now)  # a pause only grows
                    continue
                # A pause may have begun just as the token came: then it does not count.
                if await self._take() and self._clock.monotonic() >= self._pause_until:
                    now = self._clock.monotonic()
                    _GRANT.set((self, now))
                    self._window.granted(now)
                    return

    def on_success(self, usage: Usage | None) -> None:
        """Raise the rate additively; apply the usage cap; above `stop_pct`, stop the burst."""
        cfg = self.config
        fresh = self._fresh()
        if fresh:
            self._streak = 0
        now = self._clock.monotonic()
        if usage is not None and usage.pct >= cfg.stop_pct:
            # One step short of a throttle: no more burst, and a pause only if Meta names one.
            self._empty_from(now)
            if usage.regain_s:
                self._extend_pause(min(usage.regain_s, cfg.max_throttle_wait_s))
            log.info("ad account usage at %.0f%%, slowing to %.2f/s", usage.pct, self.rate)
        else:
            self._aimd = min(cfg.rate, self._aimd + cfg.increase)
        if usage is not None:
            self._ceiling = self.config.ceiling_for(usage.pct)
            due = self._window.after_reply(usage.pct, self._sent(), now)
            if due is not None:
                # The bucket was emptied just now: its first token comes at `due`.
                self._ceiling = min(cfg.rate, 1.0 / max(due - now, 1.0 / cfg.rate))
        self._notify()

    def on_throttle(self, usage: Usage | None) -> float:
        """Decrease the rate and pause the account; return the seconds left of the pause."""
        cfg = self.config
        now = self._clock.monotonic()
        self._throttles += 1
        self._window.forget()
        if now >= self._pause_until and self._fresh():
            self._streak += 1
            self._decrease()
        if usage is not None:
            self._ceiling = self.config.ceiling_for(usage.pct)
        if usage is not None and usage.regain_s:
            wait = min(usage.regain_s, cfg.max_throttle_wait_s)
        else:
            wait = cfg.backoff.delay(max(self._streak - 1, 0), self._rng)
        self._extend_pause(wait)
        self._notify()
        return self._pause_until - now

    def _decrease(self) -> None:
        """Start a new slow-down episode: the multiplicative decrease of AIMD."""
        self._episode_start = self._clock.monotonic()
        self._aimd = max(
            self.config.min_rate, min(self._aimd, self.config.rate) * self.config.decrease
        )

    def _fresh(self) -> bool:
        """Whether the calling task's last request was sent after the latest episode began."""
        sent = self._sent()
        return True if sent is None else sent > self._episode_start  # not known: count it

    def _sent(self) -> float | None:
        """When the calling task's last request went out, if it was let through here."""
        grant = _GRANT.get()
        return grant[1] if grant is not None and grant[0] is self else None

    def _extend_pause(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, self._clock.monotonic() + seconds)
        self._empty_from(self._pause_until)  # nothing accrues during a pause

    def _empty_from(self, when: float) -> None:
        """Have the next bucket hold only the tokens earned since `when`."""
        self._empty_since = when if self._empty_since is None else max(self._empty_since, when)

    def _stale(self) -> bool:
        """Whether the bucket must be rebuilt: emptied, or the rate fell or rose by a step."""
        rate, old = self.rate, self._bucket_rate
        return (
            self._empty_since is not None
            or rate < old
            or (rate > old and (rate >= old * _STEP_UP or rate >= self.config.rate))
        )

    def _notify(self) -> None:
        """Send the head waiter round if a pause or a usage stop emptied the bucket, or the
        rate rose by a step. A lower rate lets it have the token it is waiting for."""
        if self._empty_since is not None or (self.rate > self._bucket_rate and self._stale()):
            self._changed.set()
            self._changed = asyncio.Event()

    async def _take(self) -> bool:
        """Take a token from the current bucket; False if sent round first (see `_notify`)."""
        bucket = self._bucket
        if bucket is None or self._stale():
            bucket = await self._rebuild()
        # A cancelled aiolimiter waiter leaves no trace: its future is dropped from the heap.
        take = await first_done(bucket.acquire(), self._changed)
        if not take.done():
            return False
        take.result()
        return True

    async def _rebuild(self) -> AsyncLimiter:
        """Replace the bucket with one at the current rate, holding the tokens it should."""
        cfg, rate = self.config, self.rate
        capacity = max(1.0, cfg.burst * rate / cfg.rate)
        tokens = 0.0
        if self._empty_since is not None:
            tokens = min(capacity, (self._clock.monotonic() - self._empty_since) * rate)
        elif (old := self._bucket) is not None:
            while tokens + 1.0 <= capacity and old.has_capacity(tokens + 1.0):
                tokens += 1.0
        bucket = AsyncLimiter(capacity, capacity / rate)
        # A new AsyncLimiter holds `capacity` tokens; spending the excess does not wait.
        await bucket.acquire(capacity - tokens)
        self._bucket, self._bucket_rate, self._empty_since = bucket, rate, None
        return bucket


class LimiterRegistry:
    """One AccountLimiter per ad account id, shared by every job and audience of that account
    in the process."""

    def __init__(self, config: LimiterConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or LimiterConfig()
        self._clock = clock
        self._limiters: dict[str, AccountLimiter] = {}

    def get(self, ad_account: str) -> AccountLimiter:
        limiter = self._limiters.get(ad_account)
        if limiter is None:
            limiter = self._limiters[ad_account] = AccountLimiter(self.config, self._clock)
        return limiter
