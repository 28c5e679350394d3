"""One ad account's budget shared through Redis by every process given the same URL.

Workers of a fleet, CLI runs and embedded uploads on many hosts draw each call from the same
per-account state, so together they send no more than one process would, an 80003 seen by one
pauses all, and the usage one sees slows all. The state is one Redis hash per ad account,
changed only by the Lua scripts below (atomic): a GCRA bucket (`tat`, the theoretical arrival
time of the next call), the AIMD rate, the ceiling the latest usage figures set, the pause,
and the start of the current throttle episode. Time is the callers' wall clock (hosts keep it
in step with NTP); a skew of a few milliseconds only shifts a call by as much.

The policy is the in-process limiter's (`LimiterConfig`: rate, burst, AIMD, `slow_pct` and
`stop_pct`, the regain estimate capped by `max_throttle_wait_s`, else backoff with jitter).
When Redis cannot be reached, calls of that account wait (bounded by `unreachable_s`, with a
warning) rather than spend the quota blind; past the bound the upload fails with a
`QuotaUnavailable`, and its checkpoint lets it resume without sending a batch twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextvars import ContextVar
from typing import Any

import redis
import redis.asyncio as aioredis

from .._errors import QuotaUnavailable
from .._graph.usage import Usage
from .._quota.clock import Clock
from .._quota.limiter import LimiterConfig
from .connection import DEFAULT_NAMESPACE

log = logging.getLogger("engine.limiter")

# Fields of the account's hash: tat (next call's theoretical arrival), aimd (rate), ceiling
# (rate the latest usage allows), pause (no call before it), episode (start of the latest
# throttle episode), streak (throttle episodes since the last success).

# ARGV: now, rate cap, burst. Returns {wait seconds (0: granted), current rate}.
_ACQUIRE = """
local h = redis.call('HMGET', KEYS[1], 'tat', 'aimd', 'ceiling', 'pause')
local now, cap, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rate = math.min(tonumber(h[2]) or cap, tonumber(h[3]) or cap, cap)
local pause = tonumber(h[4]) or 0
if now < pause then return {tostring(pause - now), tostring(rate)} end
local interval = 1 / rate
local tolerance = (math.max(1, burst * rate / cap) - 1) * interval
local tat = math.max(tonumber(h[1]) or now, now, pause)
if tat - now > tolerance then return {tostring(tat - tolerance - now), tostring(rate)} end
redis.call('HSET', KEYS[1], 'tat', tostring(tat + interval))
redis.call('EXPIRE', KEYS[1], 86400)
return {'0', tostring(rate)}
"""

# ARGV: now, rate cap, increase, min rate, ceiling (from usage, or ''), stop (1: usage at
# stop_pct: no burst), pause seconds (a regain estimate at stop_pct, or 0).
_SUCCESS = """
local h = redis.call('HMGET', KEYS[1], 'aimd', 'tat', 'pause')
local now, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local aimd = tonumber(h[1]) or cap
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'tat', tostring(math.max(tonumber(h[2]) or now, now)))
else
  aimd = math.min(cap, aimd + tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'aimd', tostring(aimd), 'streak', '0')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'ceiling', ARGV[5]) end
local wait = tonumber(ARGV[7])
if wait > 0 then
  local pause = math.max(tonumber(h[3]) or 0, now + wait)
  redis.call('HSET', KEYS[1], 'pause', tostring(pause), 'tat', tostring(pause))
end
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(aimd)
"""

# ARGV: now, rate cap, decrease, min rate, sent (when the throttled call went, or ''),
# wait (the regain estimate capped, or '' for backoff), backoff base, backoff cap, a uniform
# random number in [0, 1), ceiling (from usage, or ''). Returns the pause's seconds left.
_THROTTLE = """
local h = redis.call('HMGET', KEYS[1], 'aimd', 'pause', 'episode', 'streak')
local now, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local aimd = tonumber(h[1]) or cap
local pause = tonumber(h[2]) or 0
local episode = tonumber(h[3]) or -1
local streak = tonumber(h[4]) or 0
local sent = tonumber(ARGV[5])
if now >= pause and (sent == nil or sent > episode) then
  streak = streak + 1
  episode = now
  aimd = math.max(tonumber(ARGV[4]), math.min(aimd, cap) * tonumber(ARGV[3]))
end
local wait = tonumber(ARGV[6])
if wait == nil then
  local bound = math.min(tonumber(ARGV[8]), tonumber(ARGV[7]) * 2 ^ math.min(streak - 1, 60))
  wait = tonumber(ARGV[9]) * bound
end
pause = math.max(pause, now + wait)
redis.call('HSET', KEYS[1], 'aimd', tostring(aimd), 'pause', tostring(pause),
  'episode', tostring(episode), 'streak', tostring(streak), 'tat', tostring(pause))
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'ceiling', ARGV[10]) end
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(pause - now)
"""

# When the calling task's last call was let through, per limiter: a throttle answering a call
# sent before the current episode began does not start another.
_SENT: ContextVar[tuple[SharedLimiter, float] | None] = ContextVar("shared_sent", default=None)


class WallClock:
    """The hosts' common clock: wall time, and asyncio's sleep."""

    def monotonic(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SharedLimiter:
    """`AccountQuota` for one ad account, its state in Redis (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        config: LimiterConfig,
        clock: Clock | None = None,
        unreachable_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._key = key
        self._clock: Clock = clock or WallClock()
        self._unreachable_s = unreachable_s  # how long calls wait for Redis to come back
        self._rng = rng or random.Random()
        self._acquire = client.register_script(_ACQUIRE)
        self._success = client.register_script(_SUCCESS)
        self._throttle = client.register_script(_THROTTLE)
        self._rate = config.rate  # as of the latest script's answer
        self._throttles = 0
        self._local_pause = 0.0  # a pause decided here, honoured before Redis has it
        self.pending: set[asyncio.Future[Any]] = set()  # state updates on their way
        # FIFO: this process's callers take turns, and one asks Redis at a time.
        self._queue = asyncio.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def throttles(self) -> int:
        return self._throttles

    async def acquire(self) -> None:
        """Wait for the account's shared bucket; while Redis is unreachable, wait for it."""
        async with self._queue:
            await self._take()

    async def _take(self) -> None:
        cfg = self.config
        lost_at: float | None = None
        while True:
            now = self._clock.monotonic()
            if now < self._local_pause:
                await self._clock.sleep(self._local_pause - now)
                continue
            try:
                wait, rate = await self._acquire(
                    keys=[self._key], args=[repr(now), repr(cfg.rate), cfg.burst]
                )
            except (redis.RedisError, OSError) as exc:
                lost_at = self._unreachable(lost_at, now, exc)
                await self._clock.sleep(min(1.0, self._unreachable_s / 10))
                continue
            if lost_at is not None:
                log.warning("redis is back: calls of the ad account resume")
                lost_at = None
            self._rate = float(rate)
            if float(wait) <= 0:
                _SENT.set((self, now))
                return
            await self._clock.sleep(float(wait))

    def _unreachable(self, since: float | None, now: float, exc: BaseException) -> float:
        if since is None:
            log.warning(
                "redis unreachable (%s): calls of the ad account wait up to %gs for it",
                type(exc).__name__,
                self._unreachable_s,
            )
            return now
        if now - since >= self._unreachable_s:
            raise QuotaUnavailable(
                f"the shared quota's redis was unreachable for {self._unreachable_s:g}s; "
                "nothing more was sent, and a run again resumes from the checkpoint"
            )
        return since

    def on_success(self, usage: Usage | None) -> None:
        cfg = self.config
        stop = usage is not None and usage.pct >= cfg.stop_pct
        wait = 0.0
        if stop and usage is not None and usage.regain_s:
            wait = min(usage.regain_s, cfg.max_throttle_wait_s)
        args: list[Any] = [
            repr(self._clock.monotonic()),
            repr(cfg.rate),
            repr(cfg.increase),
            repr(cfg.min_rate),
            self._ceiling(usage),
            "1" if stop else "0",
            repr(wait),
        ]
        self._fire(self._success(keys=[self._key], args=args))

    def on_throttle(self, usage: Usage | None) -> float:
        """Pause every process's calls of the account; the pause in seconds (as far as this
        process can tell at once: Redis answers after)."""
        cfg = self.config
        self._throttles += 1
        now = self._clock.monotonic()
        grant = _SENT.get()
        sent = repr(grant[1]) if grant is not None and grant[0] is self else ""
        if usage is not None and usage.regain_s:
            wait: float | None = min(usage.regain_s, cfg.max_throttle_wait_s)
        else:
            wait = None
        args: list[Any] = [
            repr(now),
            repr(cfg.rate),
            repr(cfg.decrease),
            repr(cfg.min_rate),
            sent,
            "" if wait is None else repr(wait),
            repr(cfg.backoff.base_s),
            repr(cfg.backoff.cap_s),
            repr(self._rng.random()),
            self._ceiling(usage),
        ]
        self._fire(self._throttle(keys=[self._key], args=args))
        # The pause is known here at once: this process honours it even before Redis does,
        # and even if Redis never hears of it.
        local = wait if wait is not None else cfg.backoff.delay(0, self._rng)
        self._local_pause = max(self._local_pause, now + local)
        return local

    def _ceiling(self, usage: Usage | None) -> str:
        """The rate the usage allows, as a script argument ('' without usage figures)."""
        return "" if usage is None else repr(self.config.ceiling_for(usage.pct))

    def _fire(self, call: Any) -> None:
        """Run a state update without holding the sender up; a failure only loses the update
        (the next acquire waits for Redis)."""
        task = asyncio.ensure_future(call)
        task.add_done_callback(_quiet)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("shared quota update lost: %s", type(exc).__name__)


class SharedRegistry:
    """One `SharedLimiter` per ad account, over one Redis client."""

    def __init__(
        self,
        url: str,
        config: LimiterConfig | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        clock: Clock | None = None,
        unreachable_s: float = 60.0,
        timeout_s: float | None = 5.0,
    ) -> None:
        self.config = config or LimiterConfig()
        # The timeout keeps a cut connection from holding a call longer than it (None: none,
        # for a virtual clock, which would run it out while Redis answers).
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._namespace = namespace
        self._clock = clock
        self._unreachable_s = unreachable_s
        self._limiters: dict[str, SharedLimiter] = {}

    def get(self, ad_account: str) -> SharedLimiter:
        limiter = self._limiters.get(ad_account)
        if limiter is None:
            key = f"{self._namespace}quota:{ad_account}"
            limiter = SharedLimiter(
                self._client, key, self.config, self._clock, self._unreachable_s
            )
            self._limiters[ad_account] = limiter
        return limiter

    async def close(self) -> None:
        await self._client.aclose()
