"""A mirror's plan file: the input's packed rows keyed by digest, and the diff cut from them.

The diff pass appends every valid input row (its digest and its packed form, computed by the
hashing workers: `_hashing/packed.py`) in input order, then indexes the digests, so that set
differences against the state run in SQLite in bounded memory whatever the input's size. The
additions and removals are numbered (`pos`, from 1, in digest order) so that batch N of a
part's upload holds positions (N-1)*batch_size+1 .. N*batch_size: that is how an
acknowledged batch maps back to rows. The file lives beside the state until the plan is
done, so a killed mirror finds it again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from .._rows import EncodedChunk

Part = Literal["add", "remove", "replace"]
DigestRow = tuple[bytes, bytes]

# A page cache big enough for the index build and the set differences to run in memory
# where they fit, small enough to keep the process's peak well under its budget.
CACHE_KIB = 32 << 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incoming(digest BLOB NOT NULL, row BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS adds(pos INTEGER PRIMARY KEY, digest BLOB NOT NULL, row BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS removes(
    pos INTEGER PRIMARY KEY, digest BLOB NOT NULL, row BLOB NOT NULL
);
"""
_TABLES: dict[Part, str] = {"add": "adds", "remove": "removes"}


class PlanFile:
    """One plan's SQLite file. Built once by the diff pass (`add_rows`, `seal`, the store's
    diff, `sync`), read after."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        elif not path.exists():
            raise FileNotFoundError(path)
        # Read from the pipeline's threads too (a sub-job's rows), never at once.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if create:
            # Built in one go, and made durable once (`sync`) before the state names it as a
            # plan; a file left half built is never taken for one and is removed next run.
            self.db.execute("PRAGMA journal_mode=OFF")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.executescript(_SCHEMA)
            self.db.execute("BEGIN")
        self._distinct: int | None = None

    def close(self) -> None:
        self.db.close()

    def add_rows(self, chunk: EncodedChunk) -> None:
        """Append a chunk's packed rows with their digests (duplicates too)."""
        assert chunk.packed is not None, "the diff pass hashes with packed=True"
        self.db.executemany("INSERT INTO incoming VALUES (?, ?)", zip(*chunk.packed, strict=True))

    def seal(self) -> None:
        """Index the digests: the rows are all in."""
        self.db.execute("CREATE INDEX IF NOT EXISTS incoming_digest ON incoming(digest)")
        self.db.execute("COMMIT")

    def sync(self) -> None:
        """Make the file durable: from here on it may become a plan."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def distinct(self) -> int:
        """Distinct rows of the input (duplicates and spellings of one row count once)."""
        if self._distinct is None:
            row = self.db.execute("SELECT count(DISTINCT digest) FROM incoming").fetchone()
            self._distinct = int(row[0])
        return self._distinct

    def count(self, part: Part) -> int:
        if part == "replace":
            return self.distinct()
        return int(self.db.execute(f"SELECT count(*) FROM {_TABLES[part]}").fetchone()[0])

    def rows(self, part: Part) -> Iterator[DigestRow]:
        """A part's rows in upload order (for replace: the input's distinct rows)."""
        if part == "replace":
            query = "SELECT digest, row FROM incoming GROUP BY digest ORDER BY digest"
        else:
            query = f"SELECT digest, row FROM {_TABLES[part]} ORDER BY pos"
        yield from self.db.execute(query)

    def span(self, part: Part, first: int, last: int) -> list[DigestRow]:
        """Positions first..last of an addition or removal part."""
        cursor = self.db.execute(
            f"SELECT digest, row FROM {_TABLES[part]} WHERE pos BETWEEN ? AND ? ORDER BY pos",
            (first, last),
        )
        return cursor.fetchall()
