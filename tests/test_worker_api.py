"""The worker's job API as a client sees it across restarts and retries: a resumed job's
live state, and `Idempotency-Key` on `POST /jobs`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp

from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from .test_worker import (
    ACT_1,
    AUD_1,
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
    assert shown["progress"]["rows_read"] > 0 and shown["progress"]["batches_total"] == 10
    fake.release()
    (done,) = await wait_for_states(http, worker.url, [job["id"]])
    assert done["report"]["status"] == "completed" and done["report"]["resumed"] is True
    assert done["progress"] is None
