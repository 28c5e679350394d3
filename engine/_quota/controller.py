"""A pacing controller for one ad account's quota: pure, no I/O, time passed in as seconds.

Meta counts an ad account's calls in a window (a rolling hour for Custom Audience calls; other
quotas have other shapes) and reports the share used as whole percentages. The controller
keeps a small explicit state (`QuotaState`): the log of its own send times, what it has
learned of the quota (the window length at most, the cap in calls per window within bounds),
the latest reading of the account's usage, and a pause. Two steps act on it:

- estimate (`on_reply`, `on_throttle`): each reply's usage, set against the calls this
  controller made and when, narrows the cap (usage rising by p percent over k calls) and the
  window (usage showing that a call of ours has left it);
- pace (`next_send_at`): the room left is the cap minus the usage last read, minus the calls
  sent since, plus the calls of ours the window has shed since; when there is none, the next
  call goes when the next of ours leaves the window.

See docs/quota.md for the model, its assumptions and its limits. The engine maps its parsed
headers onto `Usage` and calls `on_send` for every request it lets go, then exactly one of
`on_reply`, `on_throttle` or `on_lost` for it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

# Send times kept at most; older ones are dropped in halves (a window this full is long).
_KEEP = 1 << 18
# Once the window's bounds are this close, calls are timed to the upper one without tests.
_NARROW = 1.05
# A call is taken to leave a hair after the window: the quota's clock rounds too.
_EDGE = 1 + 1e-6


@dataclass(frozen=True, slots=True)
class Usage:
    """What one reply's usage headers said.

    `pct` is the highest whole percentage any quota reported (call count, CPU time, total
    time, of the business-use-case, app or ad-account header), None when the reply carried
    none; `regain_min` is `estimated_time_to_regain_access` in minutes, None when absent.
    """

    pct: float | None = None
    regain_min: float | None = None


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """The few settings; the defaults fit every quota shape.

    `max_rate` is a user's own ceiling in calls per second (None: the quota's). `minute_s` is
    how many seconds of the caller's clock one minute of Meta's regain estimate lasts: 60,
    except against a fake whose clock runs faster. `max_pause_s` bounds one pause.
    `first_probe_s` is the first wait of a throttle streak (it doubles per episode) and the
    shortest window tried before any is known.
    """

    max_rate: float | None = None
    minute_s: float = 60.0
    max_pause_s: float = 3600.0
    first_probe_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_rate is not None and not self.max_rate > 0:
            raise ValueError("max_rate must be above 0")
        if not (self.minute_s > 0 and self.max_pause_s >= 0 and self.first_probe_s > 0):
            raise ValueError("minute_s and first_probe_s must be above 0, max_pause_s not below")


@dataclass(slots=True)
class Reading:
    """One usage figure set against our calls: the request sent at `at`, which was our call
    number `index` (from 0), found `pct` percent of the quota used."""

    at: float
    index: int
    pct: float


@dataclass
class QuotaState:
    """Everything the controller knows; small and explicit so it can live elsewhere (Redis).

    `grants` are our send times, oldest first, `base` the number of the first one kept.
    `window_lo` < window <= `window_s` bound the window's length (`window_s` is inf until a
    reading shows a call of ours has left it; `window_lo` assumes no one else spends, and only
    times tests of a shorter window). `cap_lo` < cap <= `cap_hi` bound the calls a window
    holds. `last` is the latest reading; `stretch` the first reading of the current run of
    rising usage, over which the cap is learned. `pause_until` holds every call back;
    `regain_at` is when the latest throttle's regain estimate says room is back (until the
    next call); `streak` counts throttle episodes in a row, the latest at `throttled_at`.
    `resets` says a reading showed a call leave younger than `window_lo`: a fixed window.
    `anchor` is set once a reading fell between whole calls: a token bucket, whose refill is
    at least `refill` calls a second (from the calls and usage since `anchor`).
    `in_flight` and the round-trip spread `jitter_s` (from `rtt_lo`, `rtt_hi`) are this
    process's own.
    """

    grants: list[float] = field(default_factory=list)
    base: int = 0
    window_s: float = math.inf
    window_lo: float = 0.0
    cap_lo: float = 0.0
    cap_hi: float = math.inf
    last: Reading | None = None
    stretch: Reading | None = None
    pause_until: float = -math.inf
    regain_at: float = -math.inf
    streak: int = 0
    throttled_at: float = -math.inf
    resets: bool = False
    in_flight: int = 0
    jitter_s: float = 0.0
    rtt_lo: float = math.inf
    rtt_hi: float = 0.0
    anchor: Reading | None = None
    refill: float = 0.0

    @property
    def sent(self) -> int:
        return self.base + len(self.grants)


class QuotaController:
    """Paces one ad account's calls to its quota; see the module docstring."""

    def __init__(self, config: QuotaConfig | None = None, state: QuotaState | None = None):
        self.config = config or QuotaConfig()
        self.state = state or QuotaState()

    # ---- pace -------------------------------------------------------------------------

    def next_send_at(self, now: float) -> float:
        """The earliest time the next call may go (`now` or later; inf: not before a reply)."""
        s, cfg = self.state, self.config
        t = max(now, s.pause_until)
        if cfg.max_rate is not None and s.grants:
            t = max(t, s.grants[-1] + 1 / cfg.max_rate)
        last = s.last
        if last is None:
            return t if s.in_flight == 0 else math.inf  # one call until the first reading
        if s.anchor is not None and s.refill > 0:
            # A bucket: the tokens the latest reading left, less calls since, plus refill.
            n = self._cap()
            held = (last.pct + 1) * n / 100 + s.sent - last.index - 1
            tokens = n - held + s.refill * max(0.0, t - last.at - s.jitter_s)
            return t if tokens >= 1 else t + (1 - tokens) / s.refill
        room = self._room(last)
        if room + self._departed(last, t) >= 1:
            return t
        due = self._departure(last, math.ceil(1 - room - 1e-9), s.window_s)
        if s.in_flight == 0 and s.window_s > _NARROW * s.window_lo:
            # Nothing under way to learn from: one call tests a shorter window, at the
            # middle of what is known, or at twice the longest seen without a bound.
            guess = (
                (s.window_lo + s.window_s) / 2
                if math.isfinite(s.window_s)
                else 2 * max(s.window_lo, self.config.first_probe_s)
            )
            probe = self._departure(last, 1, guess)
            due = probe if due is None or probe is None else min(due, probe)
        if due is None and s.in_flight == 0:
            # Others' calls fill the window, which ours cannot time: by a window from the
            # latest reading all of them have left.
            span = s.window_s if math.isfinite(s.window_s) else 2 * s.window_lo
            due = last.at + max(span, self.config.first_probe_s)
        if s.in_flight == 0 and s.regain_at >= t and (due is None or due > s.regain_at):
            due = s.regain_at  # Meta's estimate of when room comes back
        return math.inf if due is None else max(t, due)

    def _cap(self) -> int:
        """The cap to pace to: the least whole number of calls the bounds allow."""
        return math.floor(self.state.cap_lo) + 1

    def _counted(self, last: Reading) -> int:
        """The most calls the window may have held at the latest reading."""
        n = self._cap()
        return max(0, math.ceil((min(last.pct, 100.0) + 1) * n / 100 - 1e-9) - 1)

    def _room(self, last: Reading) -> float:
        """Calls the window had room for at the latest reading, less those sent since."""
        return self._cap() - self._counted(last) - (self.state.sent - last.index - 1)

    def _oldest_counted(self, last: Reading) -> int:
        """Where in `grants` the oldest call of ours the latest reading may count is: the
        window holds no more of our calls than it holds calls, and none older than itself."""
        s = self.state
        newest = last.index - s.base - self._counted(last) + 1
        if math.isinf(s.window_s):
            return max(0, newest)
        return max(newest, bisect.bisect_right(s.grants, last.at - s.window_s - s.jitter_s))

    def _departed(self, last: Reading, t: float) -> int:
        """Our calls counted at the latest reading that have left the window by `t`."""
        s = self.state
        w = s.window_s * _EDGE + s.jitter_s
        if not math.isfinite(w):
            return 0
        first = self._oldest_counted(last)
        end = min(bisect.bisect_right(s.grants, t - w), last.index - s.base + 1)
        return max(0, end - first)

    def _departure(self, last: Reading, need: int, window: float) -> float | None:
        """When the `need`-th of our calls counted at the latest reading leaves a window of
        length `window`; None if the window is unknown or our calls cannot make the room."""
        s = self.state
        i = self._oldest_counted(last) + need - 1
        if not math.isfinite(window) or i > last.index - s.base:
            return None
        return s.grants[i] + window * _EDGE + s.jitter_s

    # ---- observe ----------------------------------------------------------------------

    def on_send(self, now: float) -> int:
        """A call goes now; returns its ticket, to name it when its answer comes."""
        s = self.state
        s.grants.append(now)
        s.in_flight += 1
        s.regain_at = -math.inf  # it was for this call
        if len(s.grants) > 2 * _KEEP:
            del s.grants[:_KEEP]
            s.base += _KEEP
        return s.sent - 1

    def on_lost(self, now: float) -> None:
        """A call ended without a usage figure (a transport error, a non-throttle error)."""
        self.state.in_flight = max(0, self.state.in_flight - 1)

    def on_reply(self, now: float, usage: Usage | None, ticket: int | None = None) -> None:
        """The call `ticket` (default: the latest) was admitted; `usage` its headers."""
        s = self.state
        s.in_flight = max(0, s.in_flight - 1)
        reading = self._reading(now, usage, ticket)
        if reading is None:
            return
        s.streak = 0
        if not self._learn_bucket(reading):
            self._learn_cap(reading)
            self._learn_window(reading)
        if s.last is None or reading.index >= s.last.index:
            s.last = reading

    def on_throttle(
        self, now: float, usage: Usage | None, code: int | None = None, ticket: int | None = None
    ) -> float:
        """The call `ticket` (default: the latest) was throttled (80003, 4, 17, 613...);
        returns the seconds to wait before the next call."""
        s, cfg = self.state, self.config
        s.in_flight = max(0, s.in_flight - 1)
        reading = self._reading(now, usage, ticket) or self._reading(now, Usage(100.0), ticket)
        assert reading is not None  # a throttled call was sent
        reading.pct = max(reading.pct, 100.0)
        s.stretch = None
        if not self._learn_bucket(reading):
            self._learn_window(reading, throttled=True)
        if s.last is None or reading.index >= s.last.index:
            s.last = reading
        regain = usage.regain_min if usage is not None else None
        # Whole minutes, likely rounded up: room may come back up to a minute sooner. Each
        # throttle in a row doubles a floor under the wait, in case the model is wrong.
        wait = max(0.0, (regain or 0) - 1) * cfg.minute_s
        if regain is not None and reading.index >= s.last.index:
            s.regain_at = now + regain * cfg.minute_s
        if reading.at > s.throttled_at:  # calls sent before the last throttle add no step
            s.streak += 1
            s.throttled_at = now
        wait = max(wait, cfg.first_probe_s * 2.0 ** min(s.streak - 1, 60))
        s.pause_until = max(s.pause_until, now + min(wait, cfg.max_pause_s))
        return max(0.0, s.pause_until - now)

    def _reading(self, now: float, usage: Usage | None, ticket: int | None) -> Reading | None:
        """The reply's usage as a reading of the call it answers; None without a figure."""
        s = self.state
        index = s.sent - 1 if ticket is None else ticket
        if not s.base <= index < s.sent:
            return None  # a call from before the state was trimmed, or not ours
        at = s.grants[index - s.base]
        rtt = now - at
        s.rtt_lo, s.rtt_hi = min(s.rtt_lo, rtt), max(s.rtt_hi, rtt)
        s.jitter_s = s.rtt_hi - s.rtt_lo
        if usage is None or usage.pct is None:
            return None
        return Reading(at, index, float(usage.pct))

    def _learn_cap(self, r: Reading) -> None:
        """Usage rising by dp percent over k calls of ours puts the cap near 100 k / dp."""
        s = self.state
        ref = s.stretch
        if s.cap_lo <= 0 and math.isinf(s.cap_hi) and r.pct < 100:
            # The first figure: this call alone puts the cap above 100 / (pct + 1) whoever
            # else spends; on an account no one else used, it is also below 100 / (pct - 1).
            # A later run of rising usage that disagrees replaces both.
            s.cap_lo = 100 / (r.pct + 1)
            s.cap_hi = 100 / (r.pct - 1) if r.pct > 1 else math.inf
        elif s.cap_lo <= 0 and math.isinf(s.cap_hi):
            s.cap_lo, s.cap_hi = 100 / (r.pct + 1), 100 / (r.pct - 1)
        if (
            ref is None
            or r.index <= ref.index
            or r.pct < ref.pct
            or r.pct >= 100
            or self._shed_since(ref, r.at)
        ):
            if ref is None or r.index > ref.index:
                s.stretch = r if r.pct < 100 else None
            return
        k, dp = r.index - ref.index, r.pct - ref.pct
        lo = 100 * k / (dp + 1)  # each reading is within a percent of the truth
        hi = 100 * k / (dp - 1) if dp > 1 else math.inf
        if lo >= s.cap_hi or hi <= s.cap_lo:
            # The cap changed: start over from this run, and from what the old cap implied.
            s.cap_lo, s.cap_hi, s.window_lo = lo, hi, 0.0
        else:
            s.cap_lo, s.cap_hi = max(s.cap_lo, lo), min(s.cap_hi, hi)

    def _learn_bucket(self, r: Reading) -> bool:
        """Whether the quota is a token bucket; if so, raise the lower bound on its refill.

        A window counts whole calls, so with a cap of n its usage moves on a grid of 100 / n
        percent; a reading off that grid (beyond a percent either way) shows a fraction of a
        call given back: a bucket's refill. From then on, k calls (throttled ones take a token
        too) over dt seconds with usage rising by dp put the refill above (k - n dp / 100) / dt;
        others' calls or a full bucket only make that lower, so the largest value is safe."""
        s = self.state
        n = self._cap()
        if s.anchor is None:
            pinned = math.floor(s.cap_lo) + 2 > s.cap_hi  # one whole cap fits the bounds
            on_grid = math.ceil((r.pct - 1) * n / 100) <= math.floor((r.pct + 1) * n / 100)
            if s.last is None or not pinned or on_grid:
                return False
            s.anchor = s.last
        a = s.anchor
        if r.index > a.index and r.at > a.at:
            k = r.index - a.index
            s.refill = max(s.refill, (k - (r.pct - a.pct + 1) * n / 100) / (r.at - a.at))
        return True

    def _shed_since(self, ref: Reading, t: float) -> bool:
        """Whether a call of ours in the window at `ref` may have left it by `t`: usage
        compared across that span no longer tells the cap."""
        s = self.state
        if math.isinf(s.window_s) and s.window_lo <= 0:
            return False  # nothing is known of the window yet
        first = self._oldest_counted(ref)
        return first <= ref.index - s.base and s.grants[first] + s.window_lo <= t + 1e-9

    def _learn_window(self, r: Reading, throttled: bool = False) -> None:
        """Bound the window by what a reading counts.

        Counting fewer calls than we sent recently, the window shed some: it is at most the
        age of the newest of ours it cannot be holding (true whoever else spends). Counting
        at least our last c calls, it holds them all if no one else spends: it is longer than
        the oldest of them is old. The second bound only times a test of a shorter window
        (a wrong one costs waiting, not throttles), so it never exceeds the first.

        A call seen to leave younger than the lower bound means a window that resets at a
        boundary (fixed): falling usage then tells nothing of its length, and calls are
        timed to the lower bound plus a margin, which never overfills a fixed window."""
        s = self.state
        i = r.index - s.base
        if math.isfinite(s.cap_hi):
            most = math.ceil((r.pct + 1) * s.cap_hi / 100 - 1e-9) - 1  # calls it may hold
            gone = i - max(most, 0)  # the newest call of ours that must have left
            if most >= 0 and gone >= 0 and (bound := r.at - s.grants[gone]) > 0:
                if not throttled and bound * _NARROW < s.window_lo:
                    s.resets = True
                if not s.resets:
                    s.window_s = min(s.window_s, bound)
        least = min(math.floor(r.pct * max(s.cap_lo, 1.0) / 100 + 1e-9), i + 1)
        if least >= 1:
            s.window_lo = max(s.window_lo, r.at - s.grants[i - least + 1])
        if s.resets:
            s.window_s = _NARROW * s.window_lo
            return
        if s.window_lo > s.window_s:
            if throttled:
                s.window_s = math.inf  # calls do not leave as a window's would: learn again
            else:
                s.window_lo = s.window_s
