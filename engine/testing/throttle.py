"""Throttle models for the fake Graph API: how a quota admits or refuses one call.

Pure classes with no engine imports, so the fake never shares the engine's beliefs about
quotas. Each model answers `admit(t)` for a call arriving at `t` (the caller's clock, in
seconds) with a `Verdict`: admitted or throttled, the usage header Meta would send, and on a
throttle the error Meta would answer with.

The shapes: `SlidingWindow` (a rolling window of any length, Meta's hour for Custom Audience
calls), `FixedWindow` (the count resets on each boundary), `TokenBucket` (a steady refill up to a
burst). A model runs on its own clock, `time_scale` times faster than the caller's: a one-hour
window with `time_scale=360` passes in ten seconds of the caller's time. Window lengths,
regain estimates and `reset_time_duration` are in model time; `rate()` is in calls per second
of the caller's clock.

The header family (`HeaderKind`) decides what a reply carries:
- `BUC`: `X-Business-Use-Case-Usage`, a `custom_audience` entry with integer `call_count`,
  `total_cputime`, `total_time` percentages and `estimated_time_to_regain_access` in whole
  minutes (rounded up: zero only when nothing needs waiting); throttled with 80003/2446079.
- `APP`: `X-App-Usage` with integer percentages; throttled with code 4.
- `AD_ACCOUNT`: `X-Ad-Account-Usage` with `acc_id_util_pct` (two decimals, as Meta shows it)
  and `reset_time_duration` in seconds; throttled with 17/2446079.

Throttled calls count against the quota by default, as Meta says they do ("continuing to
make calls will continue to increase your call count").
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

BUC_HEADER = "X-Business-Use-Case-Usage"
APP_HEADER = "X-App-Usage"
AD_ACCOUNT_HEADER = "X-Ad-Account-Usage"


class HeaderKind(Enum):
    """Which of Meta's quotas a model stands for: its header and its throttle error."""

    BUC = "buc"
    APP = "app"
    AD_ACCOUNT = "ad_account"


@dataclass(frozen=True, slots=True)
class ThrottleError:
    """The Graph error a throttled call gets."""

    code: int
    subcode: int | None
    message: str


# What Meta answers a call over each quota with.
ERRORS = {
    HeaderKind.BUC: ThrottleError(
        80003,
        2446079,
        "(#80003) There have been too many calls to this ad-account. Wait a bit and try again. "
        "For more info, please refer to "
        "https://developers.facebook.com/docs/graph-api/overview/rate-limiting#custom-audience.",
    ),
    HeaderKind.APP: ThrottleError(4, None, "(#4) Application request limit reached"),
    HeaderKind.AD_ACCOUNT: ThrottleError(17, 2446079, "(#17) User request limit reached"),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """A model's answer to one call: `error` is None when admitted."""

    headers: dict[str, str]
    error: ThrottleError | None = None
    usage_pct: int = 0  # the integer percentage the header carries
    regain_min: int = 0  # the whole minutes the BUC header carries
    wait_s: float = 0.0  # exact seconds of the caller's clock until room for one more call

    @property
    def admitted(self) -> bool:
        return self.error is None


@dataclass
class _Base:
    """What every shape shares: the clock scale, the account and the header family."""

    time_scale: float = 1.0
    account: str = "1"
    kind: HeaderKind = HeaderKind.BUC
    count_throttled: bool = True

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError("time_scale must be above 0")

    def _verdict(self, pct_exact: float, wait_model_s: float, over: bool) -> Verdict:
        """The header (and error) for usage `pct_exact` and `wait_model_s` until room."""
        pct = math.floor(pct_exact + 1e-9)
        minutes = math.ceil(wait_model_s / 60 - 1e-9) if wait_model_s > 0 else 0
        if self.kind is HeaderKind.BUC:
            entry = {
                "type": "custom_audience",
                "call_count": pct,
                "total_cputime": pct,
                "total_time": pct,
                "estimated_time_to_regain_access": minutes,
            }
            headers = {BUC_HEADER: json.dumps({self.account: [entry]})}
        elif self.kind is HeaderKind.APP:
            counts = {"call_count": pct, "total_time": pct, "total_cputime": pct}
            headers = {APP_HEADER: json.dumps(counts)}
        else:
            body: dict[str, object] = {
                "acc_id_util_pct": round(pct_exact, 2),
                "reset_time_duration": math.ceil(wait_model_s),
                "ads_api_access_tier": "standard_access",
            }
            headers = {AD_ACCOUNT_HEADER: json.dumps(body)}
        error = ERRORS[self.kind] if over else None
        return Verdict(headers, error, pct, minutes, wait_model_s / self.time_scale)


@dataclass
class SlidingWindow(_Base):
    """At most `limit` calls in any `window_s` (model seconds) ending at a call's arrival."""

    limit: int = 1
    window_s: float = 1.0
    _calls: deque[float] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit < 1 or not self.window_s > 0:
            raise ValueError("need limit >= 1 and window_s > 0")

    def rate(self) -> float:
        """The sustainable rate, calls per second of the caller's clock."""
        return self.limit * self.time_scale / self.window_s

    def spend(self, t: float, calls: int) -> None:
        """Count `calls` made by someone else at `t` (an account already partly spent)."""
        self._calls.extend([t * self.time_scale] * calls)

    def admit(self, t: float) -> Verdict:
        now = t * self.time_scale
        calls = self._calls
        while calls and calls[0] <= now - self.window_s:
            calls.popleft()
        over = len(calls) + 1 > self.limit
        if not over or self.count_throttled:
            calls.append(now)
        count = len(calls) if not over or self.count_throttled else len(calls) + 1
        # Room for one more comes when all but limit - 1 of the counted calls have left.
        excess = len(calls) - self.limit
        wait = calls[excess] + self.window_s - now if excess >= 0 else 0.0
        return self._verdict(100 * count / self.limit, max(0.0, wait), over)


@dataclass
class FixedWindow(_Base):
    """At most `limit` calls per window; windows start at multiples of `window_s` (model
    seconds) after `origin` and the count resets at each boundary."""

    limit: int = 1
    window_s: float = 1.0
    origin: float = 0.0
    _start: float = field(default=-math.inf, repr=False)
    _count: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit < 1 or not self.window_s > 0:
            raise ValueError("need limit >= 1 and window_s > 0")

    def rate(self) -> float:
        return self.limit * self.time_scale / self.window_s

    def _roll(self, now: float) -> None:
        start = self.origin + math.floor((now - self.origin) / self.window_s) * self.window_s
        if start != self._start:
            self._start, self._count = start, 0

    def spend(self, t: float, calls: int) -> None:
        self._roll(t * self.time_scale)
        self._count += calls

    def admit(self, t: float) -> Verdict:
        now = t * self.time_scale
        self._roll(now)
        over = self._count + 1 > self.limit
        if not over or self.count_throttled:
            self._count += 1
        count = self._count if not over or self.count_throttled else self._count + 1
        wait = self._start + self.window_s - now if self._count >= self.limit else 0.0
        return self._verdict(100 * count / self.limit, wait, over)


@dataclass
class TokenBucket(_Base):
    """A bucket of `capacity` tokens, refilled at `refill_per_s` (per model second), full at
    first; a call takes one token or is throttled. Usage is the share of the bucket spent."""

    capacity: int = 1
    refill_per_s: float = 1.0
    _tokens: float = field(default=math.nan, repr=False)
    _at: float = field(default=-math.inf, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity < 1 or not self.refill_per_s > 0:
            raise ValueError("need capacity >= 1 and refill_per_s > 0")
        self._tokens = float(self.capacity)

    def rate(self) -> float:
        return self.refill_per_s * self.time_scale

    def _refill(self, now: float) -> None:
        if self._at > -math.inf:
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.refill_per_s)
        self._at = now

    def spend(self, t: float, calls: int) -> None:
        self._refill(t * self.time_scale)
        self._tokens -= calls

    def admit(self, t: float) -> Verdict:
        now = t * self.time_scale
        self._refill(now)
        over = self._tokens < 1 - 1e-9
        if not over or self.count_throttled:
            self._tokens -= 1
        spent = self.capacity - self._tokens
        wait = max(0.0, (1 - self._tokens) / self.refill_per_s)
        return self._verdict(100 * spent / self.capacity, wait if self._tokens < 1 else 0.0, over)


ThrottleModel = SlidingWindow | FixedWindow | TokenBucket


def sliding(
    rate: float, window_s: float, time_scale: float = 1.0, kind: HeaderKind = HeaderKind.BUC
) -> SlidingWindow:
    """A sliding window of `window_s` model seconds holding `rate` calls per second of the
    caller's clock."""
    limit = max(1, round(rate * window_s / time_scale))
    return SlidingWindow(time_scale=time_scale, kind=kind, limit=limit, window_s=window_s)


def fixed(
    rate: float, window_s: float, time_scale: float = 1.0, kind: HeaderKind = HeaderKind.BUC
) -> FixedWindow:
    """A fixed window of `window_s` model seconds holding `rate` calls per second of the
    caller's clock."""
    limit = max(1, round(rate * window_s / time_scale))
    return FixedWindow(time_scale=time_scale, kind=kind, limit=limit, window_s=window_s)


def bucket(
    rate: float, burst_s: float = 1.0, time_scale: float = 1.0, kind: HeaderKind = HeaderKind.BUC
) -> TokenBucket:
    """A token bucket refilling `rate` calls per second of the caller's clock and holding
    `burst_s` seconds' worth of them (at least one call)."""
    capacity = max(1, round(rate * burst_s))
    return TokenBucket(
        time_scale=time_scale, kind=kind, capacity=capacity, refill_per_s=rate / time_scale
    )


SHAPES = ("sliding", "fixed", "bucket")


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """A quota to build for each ad account on its first call: the `shape`, the `rate` it
    sustains (calls per second of the caller's clock), its window in model seconds (a bucket
    holds one window's worth of calls), its `time_scale`, its header `kind`, and the share of
    the cap already `spent` when the account is first called (a worker restarted in the
    middle of an hour meets a spent account)."""

    shape: str = "sliding"
    rate: float = 1.0
    window_s: float = 3600.0
    time_scale: float = 1.0
    kind: HeaderKind = HeaderKind.BUC
    spent: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"throttle shape must be one of {', '.join(SHAPES)}")
        if not (self.rate > 0 and self.window_s > 0 and self.time_scale > 0):
            raise ValueError("throttle rate, window_s and time_scale must be above 0")
        if not self.spent >= 0:
            raise ValueError("throttle spent must not be below 0")

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> ThrottleSpec:
        """From named fields, as JSON or the command line gives them."""
        if not isinstance(value, Mapping):
            raise ValueError("a throttle is an object of shape, rate, window_s, time_scale...")
        names = {f.name for f in fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"unknown throttle settings: {', '.join(sorted(unknown))}")
        kinds = {k.value: k for k in HeaderKind}
        kind = kinds.get(str(value.get("kind", "buc")).lower())
        if kind is None:
            raise ValueError(f"throttle kind must be one of {', '.join(kinds)}")
        numbers: dict[str, float] = {}
        for name in ("rate", "window_s", "time_scale", "spent"):
            if name in value:
                try:
                    numbers[name] = float(value[name])
                except (TypeError, ValueError):
                    raise ValueError(f"throttle {name} must be a number") from None
        return cls(shape=str(value.get("shape", "sliding")), kind=kind, **numbers)

    @classmethod
    def parse(cls, text: str) -> ThrottleSpec:
        """From `shape=sliding,rate=5,window_s=10,...`."""
        pairs: dict[str, str] = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"expected NAME=VALUE, got {part.strip()!r}")
            pairs[name.strip()] = value.strip()
        return cls.of(pairs)

    def shown(self) -> dict[str, Any]:
        return asdict(self) | {"kind": self.kind.value}

    def build(self, t: float, account: str) -> ThrottleModel:
        """A fresh model for `account` (its id in the BUC header) first called at `t`."""
        model: ThrottleModel
        if self.shape == "bucket":
            model = bucket(self.rate, self.window_s / self.time_scale, self.time_scale, self.kind)
            cap = model.capacity
        else:
            make = sliding if self.shape == "sliding" else fixed
            model = make(self.rate, self.window_s, self.time_scale, self.kind)
            cap = model.limit
        model.account = account
        if self.spent:
            model.spend(t, round(self.spent * cap))
        return model
