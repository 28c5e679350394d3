"""The worker's telemetry: JSON log lines stamped with their job, and Prometheus metrics.

A job's task sets the job context (`job_context`); everything logged inside it, by the
worker or by the engine, and every API request it makes, is attributed to that job's id
and ad account. Neither logs nor metrics ever hold a token or an identifier.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import prometheus_client
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .._hashing.schema import KEYS
from .._input.remote import STORE_LOGGERS
from .._report import Progress
from .jobs import Job, State

__all__ = [
    "OTHER_ACCOUNTS",
    "AccessLog",
    "JobGauges",
    "Metrics",
    "job_context",
    "redact",
    "setup_logging",
]

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


_REDACTED = "[redacted]"
# A secret's name, then its value up to the next separator: in a query string, a form, JSON
# or a header dump. Authorization keeps its scheme word (Bearer, Basic) and loses the rest.
_SECRET_VALUE = re.compile(
    r"""(?P<name>access_token|appsecret_proof|authorization)(?P<sep>["']?\s*[=:]\s*["']?)"""
    r"""(?P<scheme>(?:bearer|basic|oauth)\s+)?[^\s"'&,;]+""",
    re.IGNORECASE,
)
# A URL's query string, whatever its parameters are called.
_QUERY = re.compile(r"""(?P<path>(?:https?://|/)[^\s?#"']*)\?[^\s#"']+""")
# A URL's user info (user:password@), in any scheme.
_USERINFO = re.compile(r"""(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^\s/?#@"']+@""", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URLs' query strings and user info, and the values of access_token,
    appsecret_proof and Authorization replaced: every log line passes here, whoever wrote
    it and however."""
    text = _SECRET_VALUE.sub(lambda m: f"{m['name']}{m['sep']}{m['scheme'] or ''}{_REDACTED}", text)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{_REDACTED}@", text)
    return _QUERY.sub(lambda m: f"{m['path']}?{_REDACTED}", text)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "job_id": getattr(record, "job_id", None),
            "ad_account": getattr(record, "ad_account", None),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class AccessLog(AbstractAccessLogger):
    """One line per request: who, the method and the path without its query string (where a
    client may have put a token), the status, the size and the time taken. Never a header."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %s B %.3f s",
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


def setup_logging(level: str) -> None:
    """The worker owns the process, so it configures logging (the library never does)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobContext())
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in STORE_LOGGERS:  # their debug lines print request headers: signatures, tokens
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


# Progress field -> metric (a counter per ad account) and its help text.
_PROGRESS_METRICS = {
    "rows_read": ("rows_read", "Data rows read from job inputs"),
    "rows_sent": ("rows_sent", "Rows in batches the API acknowledged"),
    "batches_total": ("batches_planned", "Batches cut from job inputs"),
    "batches_sent": ("batches_sent", "Batches the API acknowledged"),
    "retries": ("retries", "Requests retried after a transient failure or a throttle"),
    "throttled": ("throttled", "Throttling answers from the API"),
}
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# The reason label of rejected rows: the codes of the readers and the normalizer
# (docs/normalization.md). Any other (a caller's own engine.Reject reason) is OTHER_REASON,
# so the label's values stay a fixed, small set.
OTHER_REASON = "other"
_REASONS = frozenset(
    {
        "blank_line",
        "ragged_row",
        "malformed_csv",
        "field_too_large",
        "bad_encoding",
        "invalid_json",
        "invalid_row",
        "unsupported_value",
        "empty_row",
        "invalid_hash",
        "no_identifying_key",
        *(f"invalid_{key.lower()}" for key in KEYS),
    }
)


def _reason_label(reason: str) -> str:
    return reason if reason in _REASONS else OTHER_REASON


def _version() -> str:
    try:
        return importlib.metadata.version("audience-engine")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


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
        # The process's own: CPU, memory, open files, GC, the Python version.
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        prometheus_client.Info(
            "audience_engine_build", "The running audience-engine", registry=self.registry
        ).info({"version": _version()})
        self._progress = {
            attr: prometheus_client.Counter(
                f"audience_engine_{name}", doc, ["ad_account"], registry=self.registry
            )
            for attr, (name, doc) in _PROGRESS_METRICS.items()
        }
        self._rejected = prometheus_client.Counter(
            "audience_engine_rows_rejected",
            "Rows rejected as invalid or unreadable, by reason",
            ["ad_account", "reason"],
            registry=self.registry,
        )
        self._requests = prometheus_client.Counter(
            "audience_engine_requests",
            "Graph API requests by outcome (ok, throttled, transient, permanent, transport)",
            ["ad_account", "outcome"],
            registry=self.registry,
        )
        self._latency = prometheus_client.Histogram(
            "audience_engine_request_duration_seconds",
            "Graph API request latency by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, gauges: JobGauges) -> None:
        gauges.label = self._label
        self.registry.register(gauges)

    def on_request(self, outcome: str, seconds: float) -> None:
        """`Uploader(on_request=...)`: runs inside the job's task, so it knows the account."""
        self._requests.labels(self._label(_ad_account.get() or ""), outcome).inc()
        self._latency.labels(outcome).observe(seconds)

    def progressed(self, ad_account: str, before: Progress | None, after: Progress) -> None:
        """Counter increments from a job's cumulative progress events."""
        for attr, counter in self._progress.items():
            delta = getattr(after, attr) - (getattr(before, attr) if before else 0)
            if delta > 0:
                counter.labels(self._label(ad_account)).inc(delta)
        earlier = before.rejected_by_reason if before else {}
        self._count_rejected(
            ad_account, {r: n - earlier.get(r, 0) for r, n in after.rejected_by_reason.items()}
        )

    def rejected_on_arrival(self, ad_account: str, by_reason: Mapping[str, int]) -> None:
        """Body rows rejected while hashing on arrival: read and rejected, never in a job run."""
        rows = sum(by_reason.values())
        if rows:
            self._progress["rows_read"].labels(self._label(ad_account)).inc(rows)
            self._count_rejected(ad_account, by_reason)

    def _count_rejected(self, ad_account: str, by_reason: Mapping[str, int]) -> None:
        for reason, rows in by_reason.items():
            if rows > 0:
                self._rejected.labels(self._label(ad_account), _reason_label(reason)).inc(rows)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
