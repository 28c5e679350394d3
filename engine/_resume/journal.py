"""The job's journal: its sessions and acknowledged batches, mirrored to the checkpoint.

A job's batches are numbered 1..N over the whole input (`Batch.index`); a job normally
runs in one session, where `batch_seq` equals that number. A job gets a further session
when its session can no longer take batches (Meta's 90-minute window, or a replace that
had to close early): the new session numbers the batches still unacknowledged from 1,
in input order. That numbering depends only on what earlier sessions acknowledged, so a
resumed job sends every batch with the same `batch_seq` as before (docs/protocol.md).
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from .._errors import CheckpointError
from .._pipeline.batcher import Batch
from .checkpoint import (
    Acknowledgement,
    BatchRecord,
    CheckpointStore,
    JobRecord,
    SessionRecord,
    batch_digest,
)

T = TypeVar("T")

# Meta discards batches that arrive 90 minutes after a session's first batch.


class Journal:
    """Sessions and acknowledgements of one job; `checkpoint` (optional) makes them durable."""

    def __init__(
        self,
        checkpoint: CheckpointStore | None,
        record: JobRecord | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._checkpoint = checkpoint
        self._clock = clock
        self.sessions: list[SessionRecord] = list(record.sessions) if record else []
        # A resumed run: the checkpoint had sessions when this run began.
        self.resumed_run = bool(self.sessions)
        self.acked: dict[int, BatchRecord] = dict(record.batches) if record else {}
        self.retries = record.retries if record else 0
        self.throttled = record.throttled if record else 0
        # What this process did to the job's sessions, in words, for the report.
        self.notes: list[str] = []
        # Acknowledgements the checkpoint failed to record: kept here, and written first by
        # every later write, so a checkpoint that takes writes again gets them all.
        self.unrecorded: dict[int, Acknowledgement] = {}

    @property
    def current(self) -> SessionRecord:
        return self.sessions[-1]

    def open_session(self, session_id: int, mode: str) -> SessionRecord:
        """Start a new session for every batch not yet acknowledged."""
        first = 1
        while first in self.acked:
            first += 1
        record = SessionRecord(session_id, mode, first, None, False)
        self._write(lambda c: c.add_session(session_id, mode, first))
        self.sessions.append(record)
        return record

    def start_over(self, session_id: int, mode: str) -> SessionRecord:
        """Forget every acknowledged batch and start a session for all of them (a replace
        that Meta failed runs again from batch 1). The sessions before stay on record."""
        record = SessionRecord(session_id, mode, 1, None, False)
        self._write(lambda c: c.start_over(session_id, mode))
        self.sessions.append(record)
        self.acked.clear()
        return record

    def first_acknowledged(self) -> bool:
        """Whether the current session's first batch is recorded as acknowledged."""
        session = self.current
        record = self.acked.get(session.first_batch)
        return record is not None and record.session_id == session.session_id

    def expired(self, window_s: float) -> bool:
        """Whether the current session is past the window in which Meta takes its batches."""
        started = self.current.started_at
        return started is not None and self._clock() - started >= window_s

    def numbering(self) -> Callable[[Batch], Batch]:
        """Gives a job batch its `batch_seq` in the current session."""
        session = self.current
        first = session.first_batch
        earlier = sorted(
            index
            for index, rec in self.acked.items()
            if rec.session_id != session.session_id and index >= first
        )

        def number(batch: Batch) -> Batch:
            skipped = bisect.bisect_left(earlier, batch.index)
            return replace(batch, seq=batch.index - first + 1 - skipped)

        return number

    def started(self) -> float:
        """Note that the current session's first batch is going out; returns when it did."""
        session = self.current
        if session.started_at is None:
            written = self._write(lambda c: c.session_started(session.session_id))
            now = self._clock() if written is None else written
            self.sessions[-1] = session = replace(session, started_at=now)
        assert session.started_at is not None
        return session.started_at

    def acknowledged(
        self, batch: Batch, payload: Sequence[bytes], body: dict[str, Any], *, last: bool
    ) -> None:
        """Record an acknowledged batch; `payload` is its payload field (in parts), whose
        digest a resumed run checks the batch against (only a checkpoint needs it).
        Raises CheckpointError when the checkpoint cannot record it: it stays acknowledged
        here, and in `unrecorded` until a later write records it."""
        received, invalid = body.get("num_received"), body.get("num_invalid_entries")
        record = BatchRecord(
            batch.index,
            self.current.session_id,
            batch.rows,
            batch_digest(*payload) if self._checkpoint is not None else "",
            received if isinstance(received, int) else None,
            invalid if isinstance(invalid, int) else None,
        )
        self.acked[batch.index] = record
        if last:
            self.sessions[-1] = replace(self.current, closed=True)
        if self._checkpoint is not None:
            self.unrecorded[batch.index] = (record, last)
            self.flush()

    def finish(self, state: str, retries: int, throttled: int) -> None:
        """Record the job's state and its retry and throttle counts over every run so far."""
        self._write(lambda c: c.finish(state, retries, throttled))

    def flush(self) -> None:
        """Record the acknowledgements still unrecorded; with none, write all the same, to
        learn whether the checkpoint takes writes. Raises CheckpointError."""
        self._write(None)

    def _write(self, then: Callable[[CheckpointStore], T] | None) -> T | None:
        """Record the unrecorded acknowledgements, then do `then` on the checkpoint (with
        none: nothing). CheckpointError, naming the store and its reason, if either fails."""
        checkpoint = self._checkpoint
        if checkpoint is None:
            return None
        try:
            if self.unrecorded or then is None:
                checkpoint.acknowledged(list(self.unrecorded.values()))
                self.unrecorded.clear()
            return None if then is None else then(checkpoint)
        except (sqlite3.Error, OSError) as exc:
            raise CheckpointError(
                f"checkpoint {checkpoint.label} cannot be written ({exc})"
            ) from None
