"""Checkpoints: a job's progress in a local SQLite file, so the same command resumes it.

The file keeps the job's identity, a fingerprint of its input, its sessions and, for every
acknowledged batch, the batch's number, row count, the API's counts and a digest of its
hashed payload (which lets a resume notice input that changed under it). Never a raw
identifier, never a token. Every acknowledgement is one transaction in
WAL mode, so a kill at any instant leaves the file consistent: a batch is either recorded
as acknowledged or it is sent again with the same `batch_seq`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .._errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    identity TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    retries INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS session (
    session_id INTEGER PRIMARY KEY,
    mode TEXT NOT NULL,
    first_batch INTEGER NOT NULL,
    started_at REAL,
    closed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batch (
    batch INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    digest TEXT NOT NULL,
    num_received INTEGER,
    num_invalid INTEGER,
    acked_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One upload session of the job: its batches are `first_batch` onwards (job numbering)."""

    session_id: int
    mode: str
    first_batch: int
    started_at: float | None  # wall-clock time its first batch was sent; None: not yet
    closed: bool


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """An acknowledged batch, by its job-wide number."""

    batch: int
    session_id: int
    rows: int
    digest: str
    num_received: int | None
    num_invalid: int | None


Acknowledgement = tuple[BatchRecord, bool]
"""An acknowledged batch and whether it closed its session (it went with the last flag)."""

_REPORT_FIELDS = ("batch", "session_id", "rows", "digest", "num_received", "num_invalid")


def ack_to_report(ack: Acknowledgement) -> dict[str, Any]:
    """An acknowledgement as a report lists it (numbers and a digest of hashes, no identifier)."""
    record, last = ack
    return {**{name: getattr(record, name) for name in _REPORT_FIELDS}, "last": last}


def acks_from_report(items: object) -> list[Acknowledgement]:
    """A report's `unrecorded_batches` back as acknowledgements; ConfigError when malformed
    (a report is input like any other)."""

    def whole(value: object, low: int, optional: bool = False) -> bool:
        if optional and value is None:
            return True
        return type(value) is int and low <= value < 2**63

    if not isinstance(items, list | tuple):
        raise ConfigError("unrecorded_batches must be a list")
    acks = []
    for n, item in enumerate(items, 1):
        ok = isinstance(item, Mapping) and set(item) == {*_REPORT_FIELDS, "last"}
        if not (
            ok
            and whole(item["batch"], 1)
            and whole(item["session_id"], 1)
            and whole(item["rows"], 0)
            and whole(item["num_received"], 0, optional=True)
            and whole(item["num_invalid"], 0, optional=True)
            and isinstance(item["digest"], str)
            and re.fullmatch(r"[0-9a-f]{32}", item["digest"])
            and isinstance(item["last"], bool)
        ):
            raise ConfigError(f"unrecorded_batches: item {n} is not an acknowledged batch")
        record = BatchRecord(*(item[name] for name in _REPORT_FIELDS))
        acks.append((record, item["last"]))
    return acks


@dataclass(frozen=True, slots=True)
class JobRecord:
    """Everything a checkpoint holds."""

    identity: str
    fingerprint: str
    state: str  # "running" or "completed"
    created_at: float
    updated_at: float
    retries: int
    throttled: int
    sessions: list[SessionRecord]
    batches: dict[int, BatchRecord]


def default_path(identity: str) -> Path:
    """Where the CLI keeps a job's checkpoint unless told: the user's state dir, by job."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return Path(base) / "audience-engine" / "checkpoints" / f"{key}.sqlite"


def batch_digest(*payload: bytes) -> str:
    """Digest of a batch's encoded payload (given whole or in parts): hashes of hashes, safe
    to keep on disk."""
    digest = hashlib.sha256()
    for part in payload:
        digest.update(part)
    return digest.hexdigest()[:32]


def private_dirs(path: Path) -> None:
    """Create `path` and its missing parents readable by this user only; existing ones are
    left as they are (they are the user's)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def open_state_db(path: Path, schema: str, synchronous: str) -> sqlite3.Connection:
    """A local state file (checkpoint, job table): autocommit, WAL so a kill at any instant
    leaves it consistent, readable by this user only, with `schema` in place."""
    # SQLite gives the -wal and -shm files the database file's mode: make it 0600 before
    # SQLite first opens it, so none of the three is ever readable by others.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):  # left by an older version
        if stale.exists():
            os.chmod(stale, 0o600)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db


class CheckpointStore(Protocol):
    """Where one job's progress is kept: a local SQLite file (`Checkpoint`) or Redis, shared
    by a fleet (`engine._fleet.checkpoint.RedisCheckpoint`). A write that cannot be made
    raises OSError or sqlite3.Error; tests/contracts holds what any store must do."""

    @property
    def label(self) -> str:
        """Names the store in messages (a path, a job id; never a secret)."""
        ...

    def close(self) -> None: ...

    def load(self) -> JobRecord | None:
        """The job recorded here, or None for a new store."""
        ...

    def start(self, identity: str, fingerprint: str) -> None:
        """Forget whatever was here and record a new job."""
        ...

    def add_session(self, session_id: int, mode: str, first_batch: int) -> None: ...

    def start_over(self, session_id: int, mode: str) -> None:
        """Forget every acknowledged batch and add a session for them all, at once."""
        ...

    def session_started(self, session_id: int) -> float:
        """Record (once) when the session's first batch went out; returns that time."""
        ...

    def acknowledged(self, acks: Sequence[Acknowledgement]) -> None:
        """Record acknowledged batches at once; with none, a write all the same."""
        ...

    def finish(self, state: str, retries: int, throttled: int) -> None: ...


def sessions_in_order(sessions: list[SessionRecord]) -> list[SessionRecord]:
    """Sessions in the order they were opened: sessions of a replace that started over all
    begin at batch 1, and only the newest can be not yet started."""
    return sorted(
        sessions,
        key=lambda s: (s.first_batch, s.started_at is None, s.started_at or 0.0),
    )


class Checkpoint:
    """One job's checkpoint file. Not shared between processes; one writer at a time."""

    def __init__(self, path: str | os.PathLike[str], clock: Any = time.time) -> None:
        self.path = Path(path)
        private_dirs(self.path.parent)
        self._clock = clock
        # NORMAL loses at most the last transactions on power loss, never consistency;
        # a lost acknowledgement only means that batch is sent again, which is allowed.
        self._db = open_state_db(self.path, _SCHEMA, "NORMAL")

    @property
    def label(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._db.close()

    def load(self) -> JobRecord | None:
        """The job recorded here, or None for a new file."""
        row = self._db.execute(
            "SELECT identity, fingerprint, state, created_at, updated_at, retries, throttled "
            "FROM job WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        sessions = [
            SessionRecord(sid, mode, first, started, bool(closed))
            # In the order they were opened: sessions of a replace that started over all
            # begin at batch 1, and only the newest can be not yet started.
            for sid, mode, first, started, closed in self._db.execute(
                "SELECT session_id, mode, first_batch, started_at, closed FROM session "
                "ORDER BY first_batch, started_at IS NULL, started_at"
            )
        ]
        batches = {
            b[0]: BatchRecord(*b)
            for b in self._db.execute(
                "SELECT batch, session_id, rows, digest, num_received, num_invalid FROM batch"
            )
        }
        identity, fingerprint, state, created, updated, retries, throttled = row
        return JobRecord(
            identity, fingerprint, state, created, updated, retries, throttled, sessions, batches
        )

    def start(self, identity: str, fingerprint: str) -> None:
        """Forget whatever was here and record a new job."""
        now = self._clock()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM batch")
            self._db.execute("DELETE FROM session")
            self._db.execute("DELETE FROM job")
            self._db.execute(
                "INSERT INTO job (id, identity, fingerprint, state, created_at, updated_at) "
                "VALUES (1, ?, ?, 'running', ?, ?)",
                (identity, fingerprint, now, now),
            )

    def add_session(self, session_id: int, mode: str, first_batch: int) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO session (session_id, mode, first_batch) VALUES (?, ?, ?)",
                (session_id, mode, first_batch),
            )

    def start_over(self, session_id: int, mode: str) -> None:
        """Forget every acknowledged batch and add a session for them all, in one
        transaction: a replace that starts again from batch 1."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM batch")
            self._db.execute(
                "INSERT INTO session (session_id, mode, first_batch) VALUES (?, ?, 1)",
                (session_id, mode),
            )
            self._db.execute("UPDATE job SET updated_at = ?", (self._clock(),))

    def session_started(self, session_id: int) -> float:
        """Record (once) when the session's first batch went out; returns that time."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE session SET started_at = ? WHERE session_id = ? AND started_at IS NULL",
                (self._clock(), session_id),
            )
            row = self._db.execute(
                "SELECT started_at FROM session WHERE session_id = ?", (session_id,)
            ).fetchone()
        return float(row[0])

    def acknowledged(self, acks: Sequence[Acknowledgement]) -> None:
        """Record acknowledged batches (each with whether it closes its session) in one
        transaction; with none, a write that shows the file takes writes."""
        now = self._clock()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for record, closes_session in acks:
                self._db.execute(
                    "INSERT OR REPLACE INTO batch VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.batch,
                        record.session_id,
                        record.rows,
                        record.digest,
                        record.num_received,
                        record.num_invalid,
                        now,
                    ),
                )
                if closes_session:
                    self._db.execute(
                        "UPDATE session SET closed = 1 WHERE session_id = ?", (record.session_id,)
                    )
            self._db.execute("UPDATE job SET updated_at = ?", (now,))

    def finish(self, state: str, retries: int, throttled: int) -> None:
        """Save the run's retry counts (they add up across runs) and the job's state."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE job SET state = ?, retries = ?, throttled = ?, updated_at = ?",
                (state, retries, throttled, self._clock()),
            )
