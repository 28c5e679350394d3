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
    `window_s` is the window's length at most (inf until a reading shows a call of ours has
    left it); `cap_lo` < cap <= `cap_hi` bound the calls a window holds. `last` is the latest
    reading, `stretch` the first reading of the current run of rising usage (the cap is
    learned over it). `pause_until` holds every call back; `probe_s` is the wait before a
    call that nothing predicts room for.
    """

    grants: list[float] = field(default_factory=list)
    base: int = 0
    window_s: float = math.inf
    cap_lo: float = 0.0
    cap_hi: float = math.inf
    last: Reading | None = None
    stretch: Reading | None = None
    pause_until: float = -math.inf
    probe_s: float = 0.0
    in_flight: int = 0
    jitter_s: float = 0.0
    rtt_lo: float = math.inf
    rtt_hi: float = 0.0

    @property
    def sent(self) -> int:
        return self.base + len(self.grants)


class QuotaController:
    """Paces one ad account's calls to its quota; see the module docstring."""

    def __init__(self, config: QuotaConfig | None = None, state: QuotaState | None = None):
        self.config = config or QuotaConfig()
        self.state = state or QuotaState(probe_s=self.config.first_probe_s)

    # ---- pace -------------------------------------------------------------------------

    def next_send_at(self, now: float) -> float:
        """The earliest time the next call may go (`now` or later; inf: not before a reply)."""
        s, cfg = self.state, self.config
        t = max(now, s.pause_until)
        if cfg.max_rate is not None and s.grants:
            t = max(t, s.grants[-1] + 1 / cfg.max_rate)
        last = s.last
        if last is None or s.cap_lo <= 0:
            return t if s.in_flight == 0 else math.inf  # one call at a time until a slope
        room = self._room(last)
        if room + self._departed(last, t) >= 1:
            return t
        due = self._departure(last, math.ceil(1 - room - 1e-9))
        if due is not None:
            return max(t, due)
        if s.in_flight:
            return math.inf
        return max(t, (s.grants[-1] if s.grants else now) + s.probe_s)

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
        window holds no more of our calls than it holds calls."""
        return max(0, last.index - self.state.base - self._counted(last) + 1)

    def _departed(self, last: Reading, t: float) -> int:
        """Our calls counted at the latest reading that have left the window by `t`."""
        s = self.state
        w = s.window_s + s.jitter_s
        if not math.isfinite(w):
            return 0
        first = self._oldest_counted(last)
        end = min(bisect.bisect_right(s.grants, t - w), last.index - s.base + 1)
        return max(0, end - first)

    def _departure(self, last: Reading, need: int) -> float | None:
        """When the `need`-th of our calls counted at the latest reading leaves the window."""
        s = self.state
        w = s.window_s + s.jitter_s
        i = self._oldest_counted(last) + need - 1
        if not math.isfinite(w) or i > last.index - s.base:
            return None
        return s.grants[i] + w

    # ---- observe ----------------------------------------------------------------------

    def on_send(self, now: float) -> int:
        """A call goes now; returns its ticket, to name it when its answer comes."""
        s = self.state
        s.grants.append(now)
        s.in_flight += 1
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
        s.probe_s = self.config.first_probe_s
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
        # The quota was fuller than believed: the cap is lower, or our window too short.
        known = s.cap_lo > 0
        if known and math.isfinite(s.window_s):
            s.window_s *= 1.25
        s.stretch = None
        if s.last is None or reading.index >= s.last.index:
            s.last = reading
        regain = usage.regain_min if usage is not None else None
        wait = 0.0
        if regain:
            # Whole minutes, likely rounded up: room may come back up to a minute sooner.
            wait = max(0.0, regain - 1) * cfg.minute_s
        if self._departure(reading, 1) is None:
            wait = max(wait, s.probe_s)
            s.probe_s = min(2 * s.probe_s, cfg.max_pause_s)
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
        if ref is None or r.index <= ref.index or r.pct < ref.pct or r.pct >= 100:
            if ref is None or r.pct < ref.pct or r.pct >= 100:
                s.stretch = r if r.pct < 100 else None
            return
        k, dp = r.index - ref.index, r.pct - ref.pct
        lo = 100 * k / (dp + 1)  # each reading is within a percent of the truth
        hi = 100 * k / (dp - 1) if dp > 1 else math.inf
        if lo >= s.cap_hi or hi <= s.cap_lo:
            s.cap_lo, s.cap_hi = lo, hi  # the cap changed: start over from this run
        else:
            s.cap_lo, s.cap_hi = max(s.cap_lo, lo), min(s.cap_hi, hi)

    def _learn_window(self, r: Reading) -> None:
        """A reading counting fewer calls than we sent recently shows the window shed some:
        the window is at most the age of the newest of ours it cannot be holding."""
        s = self.state
        if not math.isfinite(s.cap_hi):
            return
        most = math.ceil((r.pct + 1) * s.cap_hi / 100 - 1e-9) - 1  # calls it may be holding
        gone = r.index - max(most, 0)  # the newest call of ours that must have left
        if most < 0 or gone < s.base:
            return
        bound = r.at - s.grants[gone - s.base]
        if bound > 0:
            s.window_s = min(s.window_s, bound)
