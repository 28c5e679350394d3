"""Where a mirror keeps, per audience, the hashed rows it has put there, and its plan.

`MirrorStore` is what the mirror needs of a store; `SqliteStore` keeps it in one local SQLite
file per ad account and audience under the engine's state directory. A shared store (the
fleet's) implements the same protocol; tests/test_mirror_store.py is the contract.

Only payload rows (hashed, as sent, packed: `_hashing/packed.py`) and their digests are
kept: never a raw value.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .._errors import InputError
from .._resume.checkpoint import open_state_db, private_dirs
from .plan import DigestRow, Part, PlanFile

PlanKind = Literal["replace", "diff"]


def default_state_dir() -> Path:
    """The engine's state directory: $XDG_STATE_HOME/audience-engine (~/.local/state/...)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "audience-engine"


@dataclass(frozen=True, slots=True)
class State:
    """What the store holds for an audience: the payload schema of its rows and how many."""

    schema: str
    rows: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A mirror under way: a replace of the input's rows, or a diff (additions, removals).
    Its rows are in its plan file; `batch_size` maps acknowledged batches back to them."""

    plan_id: int
    kind: PlanKind
    schema: str
    batch_size: int
    added: int
    removed: int
    unchanged: int


class MirrorStore(Protocol):
    """A mirror's state for one audience. Every method is atomic: a kill at any instant
    leaves the state as it was before the call or as it is after it."""

    def state(self) -> State | None:
        """The audience's rows as the engine last put them there; None when unknown."""

    def rows(self) -> Iterator[DigestRow]:
        """The state's (digest, packed row) pairs in digest order."""

    def diff(self, plan: PlanFile) -> None:
        """Fill the plan file's additions (input rows the state lacks) and removals (state
        rows the input lacks), each once and in digest order."""

    def plan(self) -> Plan | None:
        """The plan under way, if a mirror started one and has not ended it."""

    def start_plan(self, plan: Plan) -> None:
        """Record `plan` as under way (after its plan file is complete)."""

    def applied(self, plan_id: int, part: Part) -> set[int]:
        """Batches of the plan's part already applied to the state."""

    def apply(self, plan_id: int, part: Part, batch: int, rows: Sequence[DigestRow]) -> None:
        """An acknowledged batch of additions or removals, into the state; a batch already
        applied is not applied again."""

    def establish(self, plan_id: int, schema: str, rows: Iterable[DigestRow]) -> None:
        """A replace is done: the state becomes `rows` (distinct digests), of `schema`, and
        the plan ends, together."""

    def end_plan(self, plan_id: int) -> None:
        """The plan is done with (its batches applied); none is under way."""

    def forget(self) -> None:
        """Drop the state: the next mirror establishes it again."""

    def close(self) -> None: ...


# The layout of the state file; a file of another (an older engine's) holds no state.
FORMAT = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(
    id INTEGER PRIMARY KEY CHECK (id = 1), schema TEXT NOT NULL, rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rows(digest BLOB NOT NULL, row BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS rows_digest ON rows(digest);
CREATE TABLE IF NOT EXISTS plan(
    id INTEGER PRIMARY KEY CHECK (id = 1), plan_id INTEGER NOT NULL, kind TEXT NOT NULL,
    schema TEXT NOT NULL, batch_size INTEGER NOT NULL, added INTEGER NOT NULL,
    removed INTEGER NOT NULL, unchanged INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS applied(
    plan_id INTEGER NOT NULL, part TEXT NOT NULL, batch INTEGER NOT NULL,
    PRIMARY KEY (plan_id, part, batch)
) WITHOUT ROWID;
"""
_TABLES = ("meta", "rows", "plan", "applied")


class SqliteStore:
    """One audience's state in `DIR/mirror/AD_ACCOUNT/AUDIENCE.sqlite`, with its plan files
    beside it. Held by one mirror at a time (an exclusive lock on the file): a second mirror
    of the same audience is refused rather than let the two diffs overwrite each other."""

    def __init__(self, state_dir: str | os.PathLike[str], ad_account: str, audience_id: str):
        # Both are checked by UploadJob; checked again here as they become file names.
        if not re.fullmatch(r"act_\d+", ad_account) or not audience_id.isdigit():
            raise ValueError("ad account and audience id must be act_DIGITS and DIGITS")
        self.dir = Path(state_dir) / "mirror" / ad_account
        self.name = audience_id
        try:
            private_dirs(self.dir)
            self._lock = os.open(
                self.dir / f"{audience_id}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
            )
        except OSError as exc:
            raise InputError(f"mirror state directory {self.dir} cannot be used ({exc})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise InputError(
                f"another mirror of audience {audience_id} is running (its state is locked)"
            ) from None
        self.path = self.dir / f"{audience_id}.sqlite"
        try:
            # FULL: the state must never say a batch was applied that the disk lost.
            self._db = _formatted(open_state_db(self.path, "", "FULL"))
        except (sqlite3.Error, OSError) as exc:
            os.close(self._lock)
            raise InputError(f"mirror state {self.path} cannot be used ({exc})") from None

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)  # releases the lock

    def plan_path(self, plan_id: int) -> Path:
        return self.dir / f"{self.name}.plan-{plan_id}.sqlite"

    def checkpoint_path(self, plan_id: int, part: Part) -> Path:
        return self.dir / f"{self.name}.plan-{plan_id}.{part}.checkpoint"

    def plan_files(self) -> list[Path]:
        """Every file of a plan (plan files and their sub-jobs' checkpoints) in the dir."""
        prefix = f"{self.name}.plan-"
        return [p for p in self.dir.iterdir() if p.name.startswith(prefix)]

    def state(self) -> State | None:
        meta = self._db.execute("SELECT schema, rows FROM meta").fetchone()
        return None if meta is None else State(*meta)

    def rows(self) -> Iterator[DigestRow]:
        yield from self._db.execute("SELECT digest, row FROM rows ORDER BY digest")

    def diff(self, plan: PlanFile) -> None:
        db = plan.db
        db.execute("ATTACH DATABASE ? AS st", (f"file:{self.path}?mode=ro",))
        try:
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO adds(digest, row) SELECT digest, row FROM incoming i "
                "WHERE NOT EXISTS (SELECT 1 FROM st.rows r WHERE r.digest = i.digest) "
                "GROUP BY digest ORDER BY digest"
            )
            db.execute(
                "INSERT INTO removes(digest, row) SELECT digest, row FROM st.rows r "
                "WHERE NOT EXISTS (SELECT 1 FROM incoming i WHERE i.digest = r.digest) "
                "ORDER BY digest"
            )
            db.execute("COMMIT")
        finally:
            db.execute("DETACH DATABASE st")

    def plan(self) -> Plan | None:
        row = self._db.execute(
            "SELECT plan_id, kind, schema, batch_size, added, removed, unchanged FROM plan"
        ).fetchone()
        return None if row is None else Plan(*row)

    def start_plan(self, plan: Plan) -> None:
        self._db.execute(
            "INSERT INTO plan VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (
                plan.plan_id,
                plan.kind,
                plan.schema,
                plan.batch_size,
                plan.added,
                plan.removed,
                plan.unchanged,
            ),
        )

    def applied(self, plan_id: int, part: Part) -> set[int]:
        cursor = self._db.execute(
            "SELECT batch FROM applied WHERE plan_id = ? AND part = ?", (plan_id, part)
        )
        return {b for (b,) in cursor}

    def apply(self, plan_id: int, part: Part, batch: int, rows: Sequence[DigestRow]) -> None:
        with self._transaction() as db:
            done = db.execute(
                "INSERT OR IGNORE INTO applied VALUES (?, ?, ?)", (plan_id, part, batch)
            )
            if not done.rowcount:
                return
            if part == "add":
                changed = db.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?)", rows).rowcount
            else:
                deleted = db.executemany(
                    "DELETE FROM rows WHERE digest = ?", ((d,) for d, _ in rows)
                )
                changed = -deleted.rowcount
            db.execute("UPDATE meta SET rows = rows + ?", (changed,))

    def establish(self, plan_id: int, schema: str, rows: Iterable[DigestRow]) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM rows")
            count = db.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?)", rows).rowcount
            db.execute("INSERT OR REPLACE INTO meta VALUES (1, ?, ?)", (schema, count))
            db.execute("DELETE FROM plan WHERE plan_id = ?", (plan_id,))

    def end_plan(self, plan_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM plan WHERE plan_id = ?", (plan_id,))
            db.execute("DELETE FROM applied WHERE plan_id = ?", (plan_id,))

    def forget(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM meta")
            db.execute("DELETE FROM rows")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE .. COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _formatted(db: sqlite3.Connection) -> sqlite3.Connection:
    """The state file brought to FORMAT: a new file gets its tables, and a file of another
    format loses its own (the next mirror sets the state again with a replace)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version != FORMAT:
        drops = "".join(f"DROP TABLE IF EXISTS {table};" for table in _TABLES)
        db.executescript(f"BEGIN;{drops}{_SCHEMA}PRAGMA user_version = {FORMAT};COMMIT;")
    return db
