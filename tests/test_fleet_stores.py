"""The Redis stores beyond the shared contract: fencing and an unreachable server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine._fleet.checkpoint import Fence, Fenced, RedisCheckpoint
from engine._fleet.connection import connect
from engine._resume.checkpoint import BatchRecord
from tests.redis_server import RedisServer, free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def _ack(n: int) -> tuple[BatchRecord, bool]:
    return BatchRecord(n, 7, 10, f"{n:032x}", 10, 0), False


def test_only_the_current_token_records(server: RedisServer) -> None:
    client = connect(server.url)
    client.set("lease", 1)
    first = RedisCheckpoint(client, "j", fence=Fence("lease", 1))
    first.start("i", "f")
    first.add_session(7, "add", 1)
    first.acknowledged([_ack(1)])
    client.set("lease", 2)  # another replica took the job over
    with pytest.raises(Fenced):
        first.acknowledged([_ack(2)])
    with pytest.raises(Fenced):
        first.session_started(7)
    second = RedisCheckpoint(client, "j", fence=Fence("lease", 2))
    record = second.load()
    assert record is not None and set(record.batches) == {1}
    assert record.sessions[0].started_at is None
    second.acknowledged([_ack(2)])
    assert set(client.hkeys("audience-engine:ckpt:j:batches")) == {b"1", b"2"}


def test_unreachable_redis_is_an_os_error() -> None:
    checkpoint = RedisCheckpoint(connect(f"redis://127.0.0.1:{free_port()}/0"), "j")
    with pytest.raises(OSError, match="redis"):
        checkpoint.acknowledged([])


def test_checkpoint_survives_a_redis_restart(server: RedisServer) -> None:
    checkpoint = RedisCheckpoint(connect(server.url), "j")
    checkpoint.start("i", "f")
    checkpoint.add_session(7, "add", 1)
    checkpoint.acknowledged([_ack(1)])
    server.stop()  # SIGKILL; appendfsync always: every acknowledged write is on disk
    server.start()
    record = RedisCheckpoint(connect(server.url), "j").load()
    assert record is not None and set(record.batches) == {1}


def test_a_job_state_is_written_only_under_the_current_token(server: RedisServer) -> None:
    from engine._fleet.jobs import RedisJobStore
    from engine._worker.jobs import Job

    client = connect(server.url)
    store = RedisJobStore(client)
    options = {"audience": "a", "ad_account": "act_1"}
    store.add(Job("j", "queued", "path", "/in.csv", options))
    client.set("lease", 2)
    assert store.update_if("j", "interrupted", fence=("lease", 1)) is None
    assert store.update_if("j", "running", fence=("lease", 2)) is not None
    assert store.update_if("j", "cancelled", from_states=("queued",)) is None
    done = store.update_if("j", "completed", report={"rows": 1}, fence=("lease", 2))
    assert done is not None and done.report == {"rows": 1}
    assert store.counts()["completed"] == 1 and store.counts()["running"] == 0
