"""The worker's telemetry: JSON log lines stamped with their job, and Prometheus metrics.

A job's task sets the job context (`job_context`); everything logged inside it, by the
worker or by the engine, and every API request it makes, is attributed to that job's id
and ad account. Neither logs nor metrics ever hold a token or an identifier.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import prometheus_client
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .._report import Progress
from .jobs import Job, State

__all__ = ["OTHER_ACCOUNTS", "JobGauges", "Metrics", "job_context", "setup_logging"]

# The ad_account label of every account past the cap on distinct labels.
OTHER_ACCOUNTS = "other"

# The job context of the running task; log lines and request metrics read it.
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_ad_account: contextvars.ContextVar[str | None] = contextvars.ContextVar("ad_account", default=None)


@contextlib.contextmanager
def job_context(job: Job) -> Iterator[None]:
    """Log lines written inside carry this job's id and ad account."""
    tokens = _job_id.set(job.id), _ad_account.set(job.ad_account)
    try:
        yield
    finally:
        _job_id.reset(tokens[0])
        _ad_account.reset(tokens[1])


class _JobContext(logging.Filter):
    """Stamps every record with the job id and ad account of the task that logs it, so the
    engine's own log lines inside a job carry them too."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _job_id.get()
        record.ad_account = _ad_account.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "ad_account": getattr(record, "ad_account", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str) -> None:
    """The worker owns the process, so it configures logging (the library never does)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobContext())
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())


# Progress field -> metric (a counter per ad account) and its help text.
_PROGRESS_METRICS = {
    "rows_read": ("rows_read", "Data rows read from job inputs"),
    "rows_rejected": ("rows_rejected", "Rows rejected as invalid or unreadable"),
    "rows_sent": ("rows_sent", "Rows in batches the API acknowledged"),
    "batches_total": ("batches_planned", "Batches cut from job inputs"),
    "batches_sent": ("batches_sent", "Batches the API acknowledged"),
    "retries": ("retries", "Requests retried after a transient failure or a throttle"),
    "throttled": ("throttled", "Throttling answers from the API"),
}
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _AccountLabels:
    """The ad_account label of an account: its id for the first `limit` accounts seen,
    OTHER_ACCOUNTS after that, so a stream of new accounts cannot grow /metrics without end."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, ad_account: str) -> str:
        if ad_account in self._seen:
            return ad_account
        if len(self._seen) >= self._limit:
            return OTHER_ACCOUNTS
        self._seen.add(ad_account)
        return ad_account


class JobGauges(Collector):
    """Jobs by state (from the table) and the live queue depths (jobs waiting, batches not yet
    acknowledged per ad account), read at scrape time."""

    def __init__(
        self,
        counts: Callable[[], Mapping[State, int]],
        waiting: Callable[[], int],
        running: Callable[[], int],
        pending: Callable[[], Mapping[str, int]],
    ) -> None:
        self._counts, self._waiting, self._running = counts, waiting, running
        self._pending = pending
        self.label: Callable[[str], str] = str

    def collect(self) -> Iterable[Metric]:
        states = GaugeMetricFamily("audience_engine_jobs", "Jobs by state", labels=["state"])
        for state, n in self._counts().items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "audience_engine_jobs_waiting",
            "Jobs waiting for a slot or for their audience's previous job",
            value=self._waiting(),
        )
        yield GaugeMetricFamily(
            "audience_engine_jobs_running", "Jobs uploading now", value=self._running()
        )
        pending = GaugeMetricFamily(
            "audience_engine_batches_pending",
            "Batches cut from running jobs' inputs and not yet acknowledged: queued or in flight",
            labels=["ad_account"],
        )
        by_label: dict[str, int] = {}
        for account, n in self._pending().items():
            label = self.label(account)
            by_label[label] = by_label.get(label, 0) + n
        for label, n in by_label.items():
            pending.add_metric([label], n)
        yield pending


class Metrics:
    """The worker's Prometheus metrics, in a registry of its own (not the global one), with
    at most `max_accounts` distinct ad_account labels (the rest are OTHER_ACCOUNTS)."""

    def __init__(self, max_accounts: int, replica: str | None = None) -> None:
        self.registry = CollectorRegistry()
        if replica is not None:
            # A fleet: target_info{replica=...} names the replica every series here is from.
            self.registry.set_target_info({"replica": replica})
        self._label = _AccountLabels(max_accounts)
        self._progress = {
            attr: prometheus_client.Counter(
                f"audience_engine_{name}", doc, ["ad_account"], registry=self.registry
            )
            for attr, (name, doc) in _PROGRESS_METRICS.items()
        }
        self._requests = prometheus_client.Counter(
            "audience_engine_requests",
            "Graph API requests by outcome (ok, throttled, transient, permanent, transport)",
            ["ad_account", "outcome"],
            registry=self.registry,
        )
        self._latency = prometheus_client.Histogram(
            "audience_engine_request_duration_seconds",
            "Graph API request latency",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, gauges: JobGauges) -> None:
        gauges.label = self._label
        self.registry.register(gauges)

    def on_request(self, outcome: str, seconds: float) -> None:
        """`Uploader(on_request=...)`: runs inside the job's task, so it knows the account."""
        self._requests.labels(self._label(_ad_account.get() or ""), outcome).inc()
        self._latency.observe(seconds)

    def progressed(self, ad_account: str, before: Progress | None, after: Progress) -> None:
        """Counter increments from a job's cumulative progress events."""
        for attr, counter in self._progress.items():
            delta = getattr(after, attr) - (getattr(before, attr) if before else 0)
            if delta > 0:
                counter.labels(self._label(ad_account)).inc(delta)

    def rejected_on_arrival(self, ad_account: str, rows: int) -> None:
        """Body rows rejected while hashing on arrival: read and rejected, never in a job run."""
        if rows:
            label = self._label(ad_account)
            self._progress["rows_read"].labels(label).inc(rows)
            self._progress["rows_rejected"].labels(label).inc(rows)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
