"""The job's report: one immutable result built from one accumulator the stages feed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from ._errors import ErrorInfo
from ._rows import Blanked, Reject

Status = Literal["completed", "failed", "interrupted", "dry_run"]

MAX_INVALID_SAMPLES = 100


@dataclass(frozen=True, slots=True)
class Report:
    """What happened to a job (docs/report.md). `to_dict()` is the JSON report.

    Immutable all through: the mappings are read-only views of the report's own copies and
    `sessions` a tuple, so a report handed around (to a callback, a cache, XCom) stays what
    the job said. `to_dict()` returns fresh plain dicts and lists; the report pickles.
    """

    status: Status
    mode: str
    audience_id: str
    ad_account_id: str
    session_id: int
    rows_read: int
    rows_valid: int
    rows_rejected: int
    rejected_by_reason: Mapping[str, int]
    rows_sent: int
    batches_total: int
    batches_sent: int
    num_received: int
    num_invalid_entries: int
    invalid_entry_samples: Mapping[str, str]
    retries: int
    throttled: int
    elapsed_s: float
    rows_per_s: float
    error: Mapping[str, Any] | None = None
    message: str | None = None
    sessions: tuple[Mapping[str, Any], ...] = ()
    resumed: bool = False
    # Batches the API acknowledged that the checkpoint could not record (see the README).
    unrecorded_batches: tuple[Mapping[str, Any], ...] = ()
    # A dry run's inspection of the list (docs/inspect.md); None for uploads.
    inspection: Mapping[str, Any] | None = None
    # Mirror only (docs/mirror.md): rows in each part of the diff; None for the other modes.
    added: int | None = None
    removed: int | None = None
    unchanged: int | None = None
    # {key: {reason: count}}: invalid cells of rows that were sent, which went as "".
    blanked_by_key_and_reason: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "rejected_by_reason",
            "invalid_entry_samples",
            "error",
            "sessions",
            "unrecorded_batches",
            "inspection",
            "blanked_by_key_and_reason",
        ):
            # The fields are frozen; this is how a frozen dataclass sets its own in __init__.
            object.__setattr__(self, name, _read_only(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON report, as plain data (dicts, lists and scalars), a fresh copy each call."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def __reduce__(self) -> tuple[type[Report], tuple[Any, ...]]:
        # Read-only views do not pickle; the plain values do, and __init__ freezes them again.
        return (type(self), tuple(_plain(getattr(self, f.name)) for f in fields(self)))


def _read_only(value: Any) -> Any:
    """`value` with every mapping a read-only copy and every list a tuple, all the way down."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _read_only(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_read_only(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """`_read_only` undone: dicts and lists, as JSON has them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress event: the job's running counts (they add up to the final report's)."""

    rows_read: int
    rows_rejected: int
    rows_sent: int
    batches_total: int
    batches_sent: int
    retries: int
    throttled: int
    # {reason: count} of the rejected rows so far; its values add up to rows_rejected.
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


@dataclass
class Tally:
    """Counts gathered while the job runs; every stage writes here, `report()` reads it once."""

    mode: str
    audience_id: str
    ad_account_id: str
    session_id: int
    started: float = field(default_factory=time.monotonic)
    rows_read: int = 0
    rows_rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    blanked: Counter[tuple[str, str]] = field(default_factory=Counter)
    rows_sent: int = 0
    batches_total: int = 0
    batches_sent: int = 0
    received: dict[int, int] = field(default_factory=dict)  # highest num_received per session
    num_invalid_entries: int = 0
    invalid_entry_samples: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    throttled: int = 0
    listener: ProgressFn | None = None

    def progress(self) -> Progress:
        return Progress(
            self.rows_read,
            self.rows_rejected,
            self.rows_sent,
            self.batches_total,
            self.batches_sent,
            self.retries,
            self.throttled,
            dict(self.rejected_by_reason),
        )

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener(self.progress())

    def chunk(
        self, rows_read: int, rejects: list[Reject], new_batches: int, blanked: Blanked = ()
    ) -> None:
        self.rows_read += rows_read
        self.rows_rejected += len(rejects)
        self.rejected_by_reason.update(r.reason for r in rejects)
        for key, reason, n in blanked:
            self.blanked[key, reason] += n
        self.batches_total += new_batches
        self._changed()

    def retry(self) -> None:
        """A request failed and will be tried again."""
        self.retries += 1
        self._changed()

    def throttle(self) -> None:
        """The API answered a request with a throttle: the ad account pauses."""
        self.throttled += 1
        self._changed()

    def acknowledged(self, rows: int, body: dict[str, Any], session_id: int) -> None:
        self.rows_sent += rows
        self.batches_sent += 1
        # num_received is cumulative per session on Meta's side: keep the highest seen.
        received = body.get("num_received")
        if isinstance(received, int):
            self.received[session_id] = max(self.received.get(session_id, 0), received)
        invalid = body.get("num_invalid_entries")
        if isinstance(invalid, int):
            self.num_invalid_entries += invalid
        samples = body.get("invalid_entry_samples")
        if isinstance(samples, dict):
            for k, v in samples.items():
                if len(self.invalid_entry_samples) >= MAX_INVALID_SAMPLES:
                    break
                self.invalid_entry_samples[str(k)] = str(v)
        self._changed()

    def report(
        self,
        status: Status,
        error: ErrorInfo | None = None,
        message: str | None = None,
        sessions: list[dict[str, Any]] | None = None,
        resumed: bool = False,
        unrecorded_batches: list[dict[str, Any]] | None = None,
        inspection: dict[str, Any] | None = None,
    ) -> Report:
        elapsed = time.monotonic() - self.started
        return Report(
            status=status,
            mode=self.mode,
            audience_id=self.audience_id,
            ad_account_id=self.ad_account_id,
            session_id=self.session_id,
            rows_read=self.rows_read,
            rows_valid=self.rows_read - self.rows_rejected,
            rows_rejected=self.rows_rejected,
            rejected_by_reason=dict(sorted(self.rejected_by_reason.items())),
            rows_sent=self.rows_sent,
            batches_total=self.batches_total,
            batches_sent=self.batches_sent,
            num_received=sum(self.received.values()),
            num_invalid_entries=self.num_invalid_entries,
            invalid_entry_samples=dict(self.invalid_entry_samples),
            retries=self.retries,
            throttled=self.throttled,
            elapsed_s=round(elapsed, 3),
            rows_per_s=round(self.rows_read / elapsed, 1) if elapsed > 0 else 0.0,
            error=error.to_dict() if error else None,
            message=message,
            sessions=tuple(sessions or ()),
            resumed=resumed,
            unrecorded_batches=tuple(unrecorded_batches or ()),
            inspection=inspection,
            blanked_by_key_and_reason=_by_key(self.blanked),
        )


def _by_key(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (key, reason), n in sorted(counts.items()):
        nested.setdefault(key, {})[reason] = n
    return nested
