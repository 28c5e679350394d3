"""What any job table must do (SQLite for one host, Redis for a fleet)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine._worker.jobs import STATES, Job, JobStore, JobTable


@pytest.fixture(params=["sqlite", "redis"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobTable]:
    store: JobTable
    if request.param == "sqlite":
        store = JobStore(tmp_path / "jobs.sqlite")
    else:
        from engine._fleet.connection import connect
        from engine._fleet.jobs import RedisJobStore

        url = request.getfixturevalue("redis_url")
        store = RedisJobStore(connect(url), request.getfixturevalue("namespace"))
    try:
        yield store
    finally:
        store.close()


def _job(n: int, audience: str = "a1") -> Job:
    return Job(
        id=f"job{n}",
        state="queued",
        source="path",
        input=f"/in/{n}.csv",
        options={"audience": audience, "ad_account": "act_1", "mode": "add", "batch_size": 10},
        intake={"rejected": n} if n % 2 else None,
    )


def test_add_then_get_gives_the_job_back(table: JobTable) -> None:
    stored = table.add(_job(1))
    got = table.get("job1")
    assert got == stored
    assert (got.state, got.source, got.input, got.intake) == (
        "queued",
        "path",
        "/in/1.csv",
        {"rejected": 1},
    )
    assert got.options["batch_size"] == 10 and got.audience_id == "a1"
    assert got.created_at > 0 and got.created_at == got.updated_at
    assert got.report is None and got.error is None
    assert table.get("nope") is None


def test_update_moves_the_state_and_keeps_report_and_error(table: JobTable) -> None:
    table.add(_job(1))
    running = table.update("job1", "running")
    assert running.state == "running" and running.updated_at >= running.created_at
    failed = table.update("job1", "failed", report={"rows": 3}, error="it broke")
    assert (failed.report, failed.error) == ({"rows": 3}, "it broke")
    # Neither given: both kept.
    again = table.update("job1", "interrupted")
    assert (again.state, again.report, again.error) == ("interrupted", {"rows": 3}, "it broke")
    assert table.get("job1") == again


def test_lists_newest_first_and_resumes_oldest_first(table: JobTable) -> None:
    for n in range(1, 6):
        table.add(_job(n))
    table.update("job2", "completed")
    table.update("job3", "running")
    table.update("job4", "interrupted")
    assert [j.id for j in table.jobs()] == ["job5", "job4", "job3", "job2", "job1"]
    assert [j.id for j in table.jobs(limit=2)] == ["job5", "job4"]
    assert [j.id for j in table.jobs("completed")] == ["job2"]
    assert [j.id for j in table.unfinished()] == ["job1", "job3", "job4", "job5"]


def test_counts_every_state(table: JobTable) -> None:
    for n in range(1, 4):
        table.add(_job(n))
    table.update("job1", "cancelled")
    counts = table.counts()
    assert set(counts) == set(STATES)
    assert counts["queued"] == 2 and counts["cancelled"] == 1 and counts["running"] == 0
    assert table.count(("queued", "cancelled")) == 3
    assert table.count(("completed",)) == 0


def test_a_job_is_found_by_its_idempotency_key_while_it_is_remembered(table: JobTable) -> None:
    keyed = dataclasses.replace(_job(7), idempotency_key="order-42", request_digest="d" * 64)
    stored = table.add(keyed)
    assert (stored.idempotency_key, stored.request_digest) == ("order-42", "d" * 64)
    assert table.by_idempotency_key("order-42", since=stored.created_at - 1) == stored
    assert table.by_idempotency_key("order-42", since=stored.created_at + 1) is None
    assert table.by_idempotency_key("order-43", since=0) is None
    plain = table.add(_job(8))
    assert (plain.idempotency_key, plain.request_digest) == (None, None)
