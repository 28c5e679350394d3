"""A discrete-event simulator: a quota controller against a throttle model, on virtual time.

Jobs (consumers) each keep up to `concurrency` requests in flight and take their sends from
one shared controller in arrival order (as the engine's limiter queues its waiters). A
request reaches the model `latency / 2` after it goes and its reply comes back `latency`
after it went.

Run as a script, it prints the matrix of window shapes and caps (`python -m tests.quota_sim`).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from engine._quota import QuotaConfig, QuotaController, Usage
from engine.testing import throttle as th
from engine.testing.throttle import BUC_HEADER, ThrottleModel, Verdict


def usage_of(v: Verdict) -> Usage:
    """The controller's view of a verdict's headers (what the engine's parser will map)."""
    regain = None
    raw = v.headers.get(BUC_HEADER)
    if raw is not None:
        entries = [e for group in json.loads(raw).values() for e in group]
        regain = max(e["estimated_time_to_regain_access"] for e in entries)
    return Usage(pct=v.usage_pct, regain_min=regain)


@dataclass
class Job:
    calls: float = math.inf  # calls it needs admitted
    concurrency: int = 32
    start: float = 0.0
    admitted: int = 0
    throttled: int = 0
    in_flight: int = 0
    done_at: float | None = None


@dataclass
class Result:
    duration: float
    admitted: int
    throttled: int
    rate: float  # the model's sustainable calls/s
    jobs: list[Job] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        return self.admitted / (self.rate * self.duration)

    @property
    def throttled_share(self) -> float:
        sent = self.admitted + self.throttled
        return self.throttled / sent if sent else 0.0


def simulate(
    controller: QuotaController,
    model: ThrottleModel,
    duration: float,
    latency: float = 0.05,
    jobs: list[Job] | None = None,
    events: dict[float, Callable[[], None]] | None = None,
    count_from: float = 0.0,
) -> Result:
    """Run until `duration`; calls admitted after `count_from` count towards goodput."""
    jobs = jobs if jobs is not None else [Job()]
    heap: list[tuple[float, int, str, int, float]] = []  # (time, seq, kind, job, ticket)
    verdicts: dict[int, Verdict] = {}
    sent_at: dict[int, float] = {}
    seq = 0

    def push(t: float, kind: str, job: int = -1, sent: float = 0.0) -> int:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, job, sent))
        return seq

    for t in sorted(events or {}):
        push(t, "event")
    for job in jobs:
        push(job.start, "wake")
    admitted = throttled = 0
    wake_at = math.inf
    queue: list[int] = []  # jobs waiting for a send, in arrival order
    while heap:
        now, n, kind, j, ticket_f = heapq.heappop(heap)
        sent = int(ticket_f)
        if now > duration:
            break
        if kind == "event":
            assert events is not None
            events[now]()
        elif kind == "arrive":
            verdicts[push(sent_at[sent] + latency, "reply", j, sent)] = model.admit(now)
            continue
        elif kind == "reply":
            verdict = verdicts.pop(n)
            job = jobs[j]
            job.in_flight -= 1
            if verdict.error is None:
                controller.on_reply(now, usage_of(verdict), sent)
                job.admitted += 1
                if sent_at.pop(sent) >= count_from:
                    admitted += 1
                if job.admitted >= job.calls and job.done_at is None:
                    job.done_at = now
            else:
                controller.on_throttle(now, usage_of(verdict), verdict.error.code, sent)
                job.throttled += 1
                if sent_at.pop(sent) >= count_from:
                    throttled += 1
        elif kind == "wake" and now == wake_at:
            wake_at = math.inf
        for i, job in enumerate(jobs):
            if i not in queue and now >= job.start and _wants(job):
                queue.append(i)
        while queue:
            at = controller.next_send_at(now)
            if at > now:
                if math.isfinite(at) and at != wake_at:
                    wake_at = at
                    push(at, "wake")
                break
            i = queue.pop(0)
            job = jobs[i]
            ticket = controller.on_send(now)
            job.in_flight += 1
            sent_at[ticket] = now
            push(now + latency / 2, "arrive", i, ticket)
            if _wants(job):
                queue.append(i)
    return Result(duration - count_from, admitted, throttled, model.rate(), jobs)


def _wants(job: Job) -> bool:
    return job.admitted + job.in_flight < job.calls and job.in_flight < job.concurrency


Shape = Callable[[float], th.ThrottleModel]

# (shape, seconds of one minute of the regain estimate, run length in seconds)
SHAPES: dict[str, tuple[Shape, float, float]] = {
    "sliding 1s": (lambda r: th.sliding(r, 1.0), 60.0, 300.0),
    "sliding 10s": (lambda r: th.sliding(r, 10.0), 60.0, 600.0),
    "sliding 60s": (lambda r: th.sliding(r, 60.0), 60.0, 1800.0),
    "sliding 1h scaled": (lambda r: th.sliding(r, 3600.0, time_scale=120.0), 0.5, 900.0),
    "fixed 1h scaled": (lambda r: th.fixed(r, 3600.0, time_scale=120.0), 0.5, 900.0),
    "token bucket 1s": (lambda r: th.bucket(r, 1.0), 60.0, 300.0),
}
RATES = (1, 5, 20)


def run_cell(name: str, rate: int) -> Result:
    """One cell of the matrix: the controller with its defaults, 32 in flight, 50 ms away."""
    shape, minute_s, duration = SHAPES[name]
    c = QuotaController(QuotaConfig(minute_s=minute_s))
    return simulate(c, shape(rate), duration, latency=0.05, jobs=[Job(concurrency=32)])


if __name__ == "__main__":
    print("| window \\ cap | " + " | ".join(f"{r} call/s" for r in RATES) + " |")
    print("|---" * (len(RATES) + 1) + "|")
    for name in SHAPES:
        cells = [run_cell(name, r) for r in RATES]
        row = [f"{100 * c.goodput:.1f}% / {100 * c.throttled_share:.1f}%" for c in cells]
        print(f"| {name} | " + " | ".join(row) + " |")
