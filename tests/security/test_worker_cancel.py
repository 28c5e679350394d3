"""DELETE of a running replace: the replace is closed, and Meta done with it, before the
audience is released; the job says what was sent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from engine.testing.fakegraph import FakeGraph, LogEntry
from engine.testing.sample import write_sample

from ..test_worker import (
    ACT_1,
    AUD_1,
    DEADLINE_S,
    csv_text,
    submit,
    wait_for_states,
    worker_env,
    write_config,
)


async def test_cancelling_a_running_replace_closes_it_before_the_next_job(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    # Meta keeps the audience in replace_in_progress a while after the last flag.
    fake.configure(replace_settle_s=0.3)
    third = asyncio.Event()

    def on_arrival(entry: LogEntry) -> bool:
        if entry.mode == "replace" and entry.batch_seq == 3:
            fake.hold()  # batch 3 (and all after it) wait until the cancel is in
            third.set()
        return True

    fake.on_arrival = on_arrival
    people = write_sample(tmp_path / "people.csv", 1_000, seed=12)
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    replace = await submit(
        http,
        worker.url,
        audience=AUD_1,
        ad_account=ACT_1,
        input=str(people),
        mode="replace",
        batch_size=100,
    )
    # Waits for the audience behind the replace.
    add = await submit(
        http, worker.url, rows=csv_text(50, seed=13), audience=AUD_1, ad_account=ACT_1
    )
    await asyncio.wait_for(third.wait(), DEADLINE_S)
    async with http.delete(f"{worker.url}/jobs/{replace['id']}") as resp:
        assert resp.status == 202
    fake.release()
    (cancelled,) = await wait_for_states(http, worker.url, [replace["id"]], ("cancelled",))
    (added,) = await wait_for_states(http, worker.url, [add["id"]])

    # The replace session was closed: its batches 1..N in order, the last flag on N alone,
    # acknowledged, and N short of the 10 batches of the input.
    session = cancelled["report"]["session_id"]
    entries = [e for e in fake.log if e.session_id == session]
    acked = sorted(e.batch_seq for e in entries if e.outcome == "ok")
    last = [e for e in entries if e.last_batch_flag]
    assert len(last) == 1 and last[0].outcome == "ok", last
    n = last[0].batch_seq
    assert acked == list(range(1, n + 1)) and 3 <= n < 10, acked
    # No /users write of the next job while the audience was replace_in_progress.
    assert fake.violations == []
    assert added["report"]["rows_read"] == 50 and added["report"]["rows_sent"] > 0
    error = cancelled["error"]
    assert f"replace session {session} was closed with batch {n} as its last" in error
    assert f"{n} of the" in error and "resume" not in error
    assert any(
        error in line and "job cancelled after" in line for line in worker.log_text().splitlines()
    )
    assert not list((tmp_path / "state" / "checkpoints").iterdir())


async def test_a_cancelled_add_says_what_was_sent_not_that_it_can_be_resumed(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    second = asyncio.Event()

    def on_arrival(entry: LogEntry) -> bool:
        if entry.batch_seq == 2:
            fake.hold()
            second.set()
        return True

    fake.on_arrival = on_arrival
    people = write_sample(tmp_path / "people.csv", 500, seed=14)
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    running = await submit(
        http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )
    waiting = await submit(
        http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )
    await asyncio.wait_for(second.wait(), DEADLINE_S)
    for job in (waiting, running):
        async with http.delete(f"{worker.url}/jobs/{job['id']}") as resp:
            assert resp.status == 202
    fake.release()
    jobs = await wait_for_states(http, worker.url, [waiting["id"], running["id"]], ("cancelled",))
    assert jobs[0]["error"] == "cancelled before it started; nothing was sent"
    sent = jobs[1]["report"]["batches_sent"]
    assert jobs[1]["error"].startswith(f"cancelled after {sent} of the 5 batches cut so far")
    assert "resume" not in jobs[1]["error"] + (jobs[1]["report"]["message"] or "")
