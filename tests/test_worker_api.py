"""The worker's job API as a client sees it across restarts and retries: a resumed job's
live state, and `Idempotency-Key` on `POST /jobs`."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from engine._worker.jobs import Job, JobStore
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from .test_worker import (
    ACT_1,
    AUD_1,
    csv_text,
    http,
    poll,
    submit,
    wait_for_states,
    worker_env,
    workers,
    write_config,
)

__all__ = ["http", "workers"]  # the fixtures


async def test_a_resumed_job_shows_its_live_progress_not_the_last_runs_report(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.hang_next(1, 1.0)  # batch 1 in flight when the drain begins
    people = write_sample(tmp_path / "people.csv", 1_000, seed=12)
    config = write_config(tmp_path, fake.base_url)
    worker = await workers(config, worker_env())
    job = await submit(
        http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )

    async def in_flight() -> bool:
        return any(e.outcome == "pending" for e in fake.log)

    await poll("batch 1 in flight", in_flight)
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0

    fake.hold()  # the resumed run stays running while we look
    worker = await workers(config, worker_env())
    url = f"{worker.url}/jobs/{job['id']}"

    async def running_with_progress() -> dict[str, Any] | None:
        async with http.get(url) as resp:
            shown: dict[str, Any] = await resp.json()
        return shown if shown["state"] == "running" and shown["progress"] else None

    shown = await poll("the resumed job's progress", running_with_progress)
    assert shown["report"] is None, "the previous run's report, shown as if current"
    assert shown["progress"]["rows_read"] > 0 and shown["progress"]["batches_sent"] < 10
    fake.release()
    (done,) = await wait_for_states(http, worker.url, [job["id"]])
    assert done["report"]["status"] == "completed" and done["report"]["resumed"] is True
    assert done["progress"] is None


async def post(
    http: aiohttp.ClientSession, url: str, key: str, **request: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key, **request.pop("headers", {})}
    async with http.post(f"{url}/jobs", headers=headers, **request) as resp:
        body: dict[str, Any] = await resp.json()
        if resp.status in (200, 201):
            assert resp.headers["Location"] == f"/jobs/{body['id']}"
        return resp.status, body


async def job_ids(http: aiohttp.ClientSession, url: str) -> list[str]:
    async with http.get(f"{url}/jobs") as resp:
        return [job["id"] for job in (await resp.json())["jobs"]]


async def test_a_retry_with_the_same_idempotency_key_returns_the_first_job(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    people = write_sample(tmp_path / "people.csv", 300, seed=13)
    config = write_config(tmp_path, fake.base_url)
    worker = await workers(config, worker_env())
    job = {"audience": AUD_1, "ad_account": ACT_1, "input": str(people), "batch_size": 100}

    status, first = await post(http, worker.url, "run-2024-06-01", json=job)
    assert status == 201
    status, again = await post(http, worker.url, "run-2024-06-01", json=job)
    assert (status, again["id"]) == (200, first["id"])
    # The same key for another job is a client's mistake, never a silent replay.
    status, refused = await post(http, worker.url, "run-2024-06-01", json={**job, "batch_size": 50})
    assert status == 422 and "different request" in refused["error"]
    status, other = await post(http, worker.url, "run-2024-06-02", json=job)
    assert status == 201 and other["id"] != first["id"]

    # Rows in the body: the query string and the body make the request.
    rows = {"data": csv_text(20, seed=14).encode(), "headers": {"Content-Type": "text/csv"}}
    options = {"audience": AUD_1, "ad_account": ACT_1}
    status, body_job = await post(http, worker.url, "rows-1", params=options, **rows)
    assert status == 201
    status, again = await post(http, worker.url, "rows-1", params=options, **rows)
    assert (status, again["id"]) == (200, body_job["id"])
    status, _ = await post(
        http, worker.url, "rows-1", params={**options, "batch_size": "5"}, **rows
    )
    assert status == 422

    for bad in ("x" * 256, "tab\tin it"):
        status, refused = await post(http, worker.url, bad, json=job)
        assert status == 400 and "Idempotency-Key" in refused["error"], bad
    ids = [first["id"], other["id"], body_job["id"]]
    await wait_for_states(http, worker.url, ids)
    assert sorted(await job_ids(http, worker.url)) == sorted(ids)

    # Kept in the job store: a retry after a restart still finds its job.
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    worker = await workers(config, worker_env())
    status, again = await post(http, worker.url, "run-2024-06-01", json=job)
    assert (status, again["id"], again["state"]) == (200, first["id"], "completed")
    assert sorted(await job_ids(http, worker.url)) == sorted(ids)


async def test_two_requests_with_one_key_at_once_make_one_job(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    rows = {"data": csv_text(2_000, seed=15).encode(), "headers": {"Content-Type": "text/csv"}}
    options = {"audience": AUD_1, "ad_account": ACT_1}
    answers = await asyncio.gather(
        *(post(http, worker.url, "once", params=options, **rows) for _ in range(4))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 409}, answers
    (made,) = [body["id"] for status, body in answers if status == 201]
    assert await job_ids(http, worker.url) == [made]


def test_a_key_is_remembered_for_its_time_only(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    try:
        job = Job("j1", "queued", "path", "/in.csv", {"audience": AUD_1, "ad_account": ACT_1})
        stored = store.add(replace(job, idempotency_key="k", request_digest="d"))
        found = store.by_idempotency_key("k", since=stored.created_at)
        assert found is not None and (found.id, found.request_digest) == ("j1", "d")
        assert store.by_idempotency_key("k", since=stored.created_at + 1) is None
        assert store.by_idempotency_key("other", since=0) is None
    finally:
        store.close()


def test_a_job_table_from_before_idempotency_keys_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " state TEXT NOT NULL, source TEXT NOT NULL, input TEXT NOT NULL, options TEXT NOT NULL,"
        " intake TEXT, report TEXT, error TEXT, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL);"
        "INSERT INTO jobs (id, state, source, input, options, created_at, updated_at) VALUES"
        " ('old', 'queued', 'path', '/in.csv', '{\"audience\": \"1\", \"ad_account\": \"act_1\"}',"
        " 1, 1);"
    )
    old.close()
    store = JobStore(path)
    try:
        assert [job.id for job in store.unfinished()] == ["old"]
        store.add(Job("new", "queued", "path", "/in.csv", {"audience": "1"}, idempotency_key="k"))
        found = store.by_idempotency_key("k", since=0)
        assert found is not None and found.id == "new"
    finally:
        store.close()
