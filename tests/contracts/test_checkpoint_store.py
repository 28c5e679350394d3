"""What any checkpoint store must do (a SQLite file for one host, Redis for a fleet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine._resume.checkpoint import BatchRecord, Checkpoint, CheckpointStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Iterator[CheckpointStore]:
    checkpoint: CheckpointStore
    if request.param == "sqlite":
        checkpoint = Checkpoint(tmp_path / "ckpt.sqlite", clock=clock)
    else:
        from engine._fleet.checkpoint import RedisCheckpoint
        from engine._fleet.connection import connect

        client = connect(request.getfixturevalue("redis_url"))
        ns = request.getfixturevalue("namespace")
        checkpoint = RedisCheckpoint(client, "job1", namespace=ns, clock=clock)
    try:
        yield checkpoint
    finally:
        checkpoint.close()


def _batch(n: int, session: int = 7) -> BatchRecord:
    return BatchRecord(n, session, 100 + n, f"{n:032x}", 100 + n, 0)


def test_new_store_holds_nothing_even_after_a_bare_write(store: CheckpointStore) -> None:
    assert store.load() is None
    store.acknowledged([])  # the write that shows the store takes writes
    assert store.load() is None
    assert store.label


def test_records_sessions_and_acknowledgements(store: CheckpointStore, clock: Clock) -> None:
    store.start("identity", "fingerprint")
    store.add_session(7, "add", 1)
    clock.now = 1010.0
    assert store.session_started(7) == 1010.0
    clock.now = 1020.0
    assert store.session_started(7) == 1010.0  # once
    store.acknowledged([(_batch(1), False), (_batch(2), False)])
    store.acknowledged([(_batch(3), True)])
    record = store.load()
    assert record is not None
    assert (record.identity, record.fingerprint, record.state) == (
        "identity",
        "fingerprint",
        "running",
    )
    assert record.created_at == 1000.0 and record.updated_at == 1020.0
    assert record.batches == {n: _batch(n) for n in (1, 2, 3)}
    [session] = record.sessions
    assert (session.session_id, session.mode, session.first_batch) == (7, "add", 1)
    assert session.started_at == 1010.0 and session.closed


def test_sessions_in_the_order_opened_and_start_over(store: CheckpointStore, clock: Clock) -> None:
    store.start("i", "f")
    store.add_session(7, "replace", 1)
    store.session_started(7)
    store.acknowledged([(_batch(1), False)])
    clock.now = 1100.0
    store.start_over(9, "replace")
    record = store.load()
    assert record is not None
    assert [s.session_id for s in record.sessions] == [7, 9]
    assert record.sessions[1].started_at is None and record.batches == {}
    store.session_started(9)
    store.add_session(11, "replace", 4)
    store.acknowledged([(_batch(1, 9), False), (_batch(2, 9), False), (_batch(3, 9), True)])
    record = store.load()
    assert record is not None
    assert [(s.session_id, s.closed) for s in record.sessions] == [
        (7, False),
        (9, True),
        (11, False),
    ]


def test_finish_keeps_counts_and_start_forgets_all(store: CheckpointStore) -> None:
    store.start("i", "f")
    store.add_session(7, "add", 1)
    store.acknowledged([(_batch(1), True)])
    store.finish("completed", 3, 2)
    record = store.load()
    assert record is not None
    assert (record.state, record.retries, record.throttled) == ("completed", 3, 2)
    store.start("j", "g")
    record = store.load()
    assert record is not None
    assert (record.identity, record.sessions, record.batches, record.retries) == ("j", [], {}, 0)
