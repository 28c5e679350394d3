"""The worker's job table: one SQLite file (WAL) in its state dir, so jobs outlive the process.

A job row holds what to upload and how (the upload options, the input path), its state and,
once it ends, its report. Never a token and never a raw identifier: body rows are hashed on
arrival and kept in a file of their own, which the row only names.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from .._resume.checkpoint import open_state_db

State = Literal["queued", "running", "interrupted", "completed", "failed", "cancelled"]
STATES: tuple[State, ...] = ("queued", "running", "interrupted", "completed", "failed", "cancelled")
# "running" after a kill -9 and "interrupted" after a drain both mean: resume on start.
UNFINISHED: tuple[State, ...] = ("queued", "running", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    input TEXT NOT NULL,
    options TEXT NOT NULL,
    intake TEXT,
    report TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""
# Added after the first release: a table made before gets them on open.
_ADDED_COLUMNS = {"idempotency_key": "TEXT", "request_digest": "TEXT"}
_ADDED_INDEXES = "CREATE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key);"


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored. `options` are `Uploader.upload` keyword arguments (plain data).

    `source` says where the rows came from ("path", "url", "csv body", "jsonl body"); `intake`
    holds the counts of body rows rejected on arrival, which the engine never sees.
    `idempotency_key` is the client's `Idempotency-Key`, and `request_digest` a digest of
    the request that carried it, so a retry can be told from a different request.
    """

    id: str
    state: State
    source: str
    input: str
    options: dict[str, Any]
    intake: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    idempotency_key: str | None = None
    request_digest: str | None = None

    @property
    def audience_id(self) -> str:
        return str(self.options["audience"])

    @property
    def ad_account(self) -> str:
        return str(self.options["ad_account"])

    def view(self) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id,
            "state": self.state,
            "audience_id": self.audience_id,
            "ad_account": self.ad_account,
            "mode": self.options.get("mode", "add"),
            "source": self.source,
            "options": {
                k: v for k, v in self.options.items() if k not in ("audience", "ad_account")
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            # A running job's stored report is its previous run's (interrupted): its live
            # progress says where it is until this run's report replaces it.
            "report": None if self.state == "running" else self.report,
            "error": self.error,
        }


class JobTable(Protocol):
    """Where a worker keeps its jobs: a SQLite file (`JobStore`) for one host, Redis
    (`engine._fleet.jobs.RedisJobStore`) for a fleet. tests/contracts holds what any must do."""

    def close(self) -> None: ...

    def add(self, job: Job) -> Job:
        """Store a new job; returns it as stored (with its times)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def update(
        self,
        job_id: str,
        state: State,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        """Set the state; a report or error given replaces the stored one."""
        ...

    def jobs(self, state: State | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        ...

    def unfinished(self) -> list[Job]:
        """Jobs to resume, oldest first."""
        ...

    def count(self, states: tuple[State, ...]) -> int: ...

    def by_idempotency_key(self, key: str, since: float) -> Job | None:
        """The newest job accepted at or after `since` (epoch seconds) with this key."""

    def counts(self) -> dict[State, int]:
        """Jobs by state, every state present."""
        ...


class JobStore:
    """The job table. One process writes it; each statement commits on its own (autocommit)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # SQLite gives the -wal and -shm files the table's own mode: create it private
        # first, so they never exist readable by others, whatever the umask.
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        # FULL: an accepted job (201 sent) must survive even a power cut, not only a kill.
        self._db = open_state_db(self.path, _SCHEMA, "FULL")
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._db.executescript(_ADDED_INDEXES)

    def close(self) -> None:
        self._db.close()

    def add(self, job: Job) -> Job:
        now = time.time()
        self._db.execute(
            "INSERT INTO jobs (id, state, source, input, options, intake, created_at, updated_at,"
            " idempotency_key, request_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                job.state,
                job.source,
                job.input,
                _dump(job.options),
                _dump(job.intake),
                now,
                now,
                job.idempotency_key,
                job.request_digest,
            ),
        )
        return self._get(job.id)

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def by_idempotency_key(self, key: str, since: float) -> Job | None:
        """The newest job accepted at or after `since` (epoch seconds) with this key."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ? AND created_at >= ?"
            " ORDER BY seq DESC LIMIT 1",
            (key, since),
        ).fetchone()
        return _job(row) if row else None

    def _get(self, job_id: str) -> Job:
        job = self.get(job_id)
        assert job is not None, job_id
        return job

    def update(
        self,
        job_id: str,
        state: State,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        """Set the state; a report or error given replaces the stored one."""
        self._db.execute(
            "UPDATE jobs SET state = ?, updated_at = ?,"
            " report = coalesce(?, report), error = coalesce(?, error) WHERE id = ?",
            (state, time.time(), _dump(report), error, job_id),
        )
        return self._get(job_id)

    def jobs(self, state: State | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
        )
        return [_job(row) for row in rows]

    def unfinished(self) -> list[Job]:
        """Jobs to resume, oldest first: jobs of one audience then run in submission order."""
        marks = ",".join("?" * len(UNFINISHED))
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY seq", UNFINISHED
        )
        return [_job(row) for row in rows]

    def count(self, states: tuple[State, ...]) -> int:
        """How many jobs are in any of `states`."""
        marks = ",".join("?" * len(states))
        (n,) = self._db.execute(
            f"SELECT count(*) FROM jobs WHERE state IN ({marks})", states
        ).fetchone()
        return int(n)

    def counts(self) -> dict[State, int]:
        """Jobs by state, every state present."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts


_COLUMNS = (
    "id, state, source, input, options, intake, report, error, created_at, updated_at,"
    " idempotency_key, request_digest"
)


def _job(row: tuple[Any, ...]) -> Job:
    job_id, state, source, path, options, intake, report, error, created, updated, key, digest = row
    return Job(
        id=job_id,
        state=state,
        source=source,
        input=path,
        options=orjson.loads(options),
        intake=orjson.loads(intake) if intake else None,
        report=orjson.loads(report) if report else None,
        error=error,
        created_at=created,
        updated_at=updated,
        idempotency_key=key,
        request_digest=digest,
    )


def _dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()
