"""The fleet: three worker replicas on one Redis, as real processes, against the fake.

Kills land from the fake's arrival hook on the replica Redis names as the job's runner, so
they hit a job mid-session rather than a moment in time.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import redis

from engine.testing.fakegraph import FakeGraph, LogEntry
from engine.testing.sample import write_sample

from .checks import check_counts, expected_rows
from .redis_server import RedisServer
from .test_worker import (
    ACT_1,
    ACT_2,
    AUD_1,
    AUD_2,
    AUD_3,
    WorkerProcess,
    http,  # noqa: F401 - a fixture
    poll,
    scrape,
    submit,
    wait_for_states,
    worker_env,
    workers,  # noqa: F401 - a fixture
    write_config,
)

AUD_4 = "23850000000000004"
NS = "audience-engine:"
JOBS = ((AUD_1, ACT_1), (AUD_2, ACT_1), (AUD_3, ACT_2), (AUD_4, ACT_2))


async def start_fleet(
    tmp_path: Path, fake: FakeGraph, url: str, start: Any, n: int = 3, rate: float = 200.0
) -> list[WorkerProcess]:
    """`n` replicas, each with its own state dir and config: the first two name Redis in
    their config, the last through the environment."""
    replicas = []
    for i in range(n):
        home = tmp_path / f"replica{i}"
        home.mkdir()
        via_env = i == n - 1
        extra = ["lease-s = 4", "max-jobs = 2"] + ([] if via_env else [f'redis-url = "{url}"'])
        config = write_config(home, fake.base_url, *extra, input_dir=tmp_path)
        text = config.read_text().replace("max-jobs = 4\n", "")
        paced = "burst = 50" if rate == 200.0 else "burst = 1"
        config.write_text(
            text.replace("rate = 200.0", f"rate = {rate}").replace("burst = 50", paced)
        )
        env = worker_env(**({"AUDIENCE_ENGINE_REDIS_URL": url} if via_env else {}))
        replicas.append(await start(config, env))
    return replicas


def check_one_session(fake: FakeGraph, report: dict[str, Any]) -> None:
    """One session for the job, every batch_seq acknowledged exactly once, the last flag
    on batch N alone and after all the others."""
    check_counts(report)
    entries = [e for e in fake.log if e.audience_id == report["audience_id"]]
    assert {e.session_id for e in entries} == {report["session_id"]}
    n = report["batches_total"]
    acked = sorted(e.batch_seq for e in entries if e.outcome == "ok")
    assert set(acked) == set(range(1, n + 1))
    flagged = [e for e in entries if e.last_batch_flag]
    assert {e.batch_seq for e in flagged} == {n} and flagged[-1].acked_after == n - 1


async def test_any_replica_accepts_lists_shows_and_cancels_every_job(
    fake: FakeGraph,
    tmp_path: Path,
    workers: Any,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    for audience, account in JOBS:
        fake.register_audience(audience, account)
    people = write_sample(tmp_path / "people.csv", 600, seed=3)
    a, b, c = await start_fleet(tmp_path, fake, redis_server.url, workers)
    done = await submit(
        http, a.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )
    [job] = await wait_for_states(http, c.url, [done["id"]])
    check_one_session(fake, job["report"])
    assert fake.members(AUD_1) == expected_rows(people)
    async with http.get(f"{b.url}/jobs") as resp:
        assert [j["id"] for j in (await resp.json())["jobs"]] == [done["id"]]
    # Cancelled through another replica than the one it was submitted to.
    fake.configure(latency=(0.2, 0.3))
    slow = await submit(
        http, b.url, audience=AUD_2, ad_account=ACT_1, input=str(people), batch_size=10
    )

    async def sending() -> bool:
        return any(e.audience_id == AUD_2 for e in fake.log)

    await poll("the job to be sending", sending)
    async with http.delete(f"{c.url}/jobs/{slow['id']}") as resp:
        assert resp.status in (200, 202), await resp.text()
    [cancelled] = await wait_for_states(http, a.url, [slow["id"]], ("cancelled",))
    assert cancelled["report"]["rows_sent"] < 600


async def test_a_replica_killed_mid_job_its_jobs_finish_on_the_others(
    fake: FakeGraph,
    tmp_path: Path,
    workers: Any,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    for audience, account in JOBS:
        fake.register_audience(audience, account)
    fake.configure(latency=(0.02, 0.05))
    people = write_sample(tmp_path / "people.csv", 2_000, seed=6)
    replicas = await start_fleet(tmp_path, fake, redis_server.url, workers)
    by_pid = {r.proc.pid: r for r in replicas if r.proc is not None}
    client = redis.Redis.from_url(redis_server.url)
    killed: list[WorkerProcess] = []
    arrivals: dict[str, int] = {}
    job_of: dict[str, str] = {}

    def kill_its_runner(entry: LogEntry) -> bool:
        arrivals[entry.audience_id] = arrivals.get(entry.audience_id, 0) + 1
        if killed or arrivals[entry.audience_id] < 5:
            return True
        owner = client.get(f"{NS}owner:{job_of[entry.audience_id]}")
        assert owner is not None
        victim = by_pid[int(owner.decode().rsplit("-", 1)[1])]
        victim.signal(signal.SIGKILL)
        killed.append(victim)
        return True  # the request was sent: its reply may still arrive, or not

    fake.on_arrival = kill_its_runner
    ids = []
    for n, (audience, account) in enumerate(JOBS):
        job = await submit(
            http,
            replicas[n % 3].url,
            audience=audience,
            ad_account=account,
            input=str(people),
            batch_size=100,
        )
        job_of[audience] = job["id"]
        ids.append(job["id"])
    await poll("a replica to be killed", _true_when(lambda: bool(killed)))
    survivor = next(r for r in replicas if r is not killed[0])
    jobs = await wait_for_states(http, survivor.url, ids)
    assert await killed[0].exit_code() == -signal.SIGKILL
    rows = expected_rows(people)
    for job, (audience, _) in zip(jobs, JOBS, strict=True):
        check_one_session(fake, job["report"])
        assert fake.members(audience) == rows
    resumed = [j for j in jobs if j["report"]["resumed"]]
    assert resumed, "the killed replica's job was resumed by another"
    for violation in fake.violations:  # a request in flight at the kill may be re-sent
        assert "re-sent after it was acknowledged" in violation, violation


def _true_when(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


def _pid_of(client: redis.Redis, job_id: str) -> int:
    owner = client.get(f"{NS}owner:{job_id}")
    assert owner is not None
    return int(owner.decode().rsplit("-", 1)[1])


async def test_a_replica_paused_past_its_lease_sends_nothing_more(
    fake: FakeGraph,
    tmp_path: Path,
    workers: Any,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.configure(latency=(0.02, 0.05))
    people = write_sample(tmp_path / "people.csv", 2_000, seed=8)
    # Paced: at the pause a send waits its turn, and on waking it is due at once.
    replicas = await start_fleet(tmp_path, fake, redis_server.url, workers, rate=8.0)
    by_pid = {r.proc.pid: r for r in replicas if r.proc is not None}
    client = redis.Redis.from_url(redis_server.url)
    paused: list[WorkerProcess] = []
    job_id = ""

    def pause_its_runner(entry: LogEntry) -> bool:
        if not paused and sum(e.audience_id == AUD_1 for e in fake.log) >= 5:
            paused.append(by_pid[_pid_of(client, job_id)])
            paused[0].signal(signal.SIGSTOP)
        return True

    fake.on_arrival = pause_its_runner
    job_id = (
        await submit(
            http, replicas[0].url, audience=AUD_1, ad_account=ACT_1, input=str(people),
            batch_size=50,
        )
    )["id"]  # fmt: skip
    await poll("the runner to be paused", _true_when(lambda: bool(paused)))
    other = next(r for r in replicas if r is not paused[0])
    [job] = await wait_for_states(http, other.url, [job_id])
    fake.on_arrival = None
    seen = len(fake.log)
    paused[0].signal(signal.SIGCONT)
    # It wakes, finds its lease gone, and ends its run without recording anything.
    await poll("the paused replica to give the job up", _true_when(
        lambda: "not recording" in paused[0].log_text()
    ))  # fmt: skip
    assert "lease lost" in paused[0].log_text()
    assert len(fake.log) == seen, "the paused replica sent after waking"
    check_one_session(fake, job["report"])
    assert job["report"]["resumed"]
    assert fake.members(AUD_1) == expected_rows(people)
    async with http.get(f"{other.url}/jobs/{job_id}") as resp:
        assert (await resp.json())["state"] == "completed"


async def test_redis_restarted_mid_job_the_job_completes_in_its_session(
    fake: FakeGraph,
    tmp_path: Path,
    workers: Any,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.configure(latency=(0.02, 0.05))
    people = write_sample(tmp_path / "people.csv", 2_000, seed=9)
    replicas = await start_fleet(tmp_path, fake, redis_server.url, workers)
    restarted: list[bool] = []

    def restart_redis(entry: LogEntry) -> bool:
        if not restarted and sum(e.audience_id == AUD_1 for e in fake.log) >= 5:
            restarted.append(True)
            redis_server.stop()  # SIGKILL; every write was fsynced (appendfsync always)
            redis_server.start()
        return True

    fake.on_arrival = restart_redis
    job = await submit(
        http, replicas[1].url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=50
    )
    [done] = await wait_for_states(http, replicas[2].url, [job["id"]])
    assert restarted
    check_one_session(fake, done["report"])
    assert fake.members(AUD_1) == expected_rows(people)
    for violation in fake.violations:  # a request in flight at the restart may be re-sent
        assert "re-sent after it was acknowledged" in violation, violation


async def test_readyz_says_not_ready_while_redis_is_unreachable(
    fake: FakeGraph,
    tmp_path: Path,
    workers: Any,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    [replica] = await start_fleet(tmp_path, fake, redis_server.url, workers, n=1)

    async def readyz() -> tuple[int, dict[str, Any]]:
        async with http.get(f"{replica.url}/readyz") as resp:
            return resp.status, await resp.json()

    assert await readyz() == (200, {"status": "ready"})
    assert replica.proc is not None
    value = await scrape(http, replica.url)
    assert value("target_info", replica=f"{socket.gethostname()}-{replica.proc.pid}") == 1
    redis_server.stop()
    assert await readyz() == (503, {"status": "shared store unreachable"})
    redis_server.start()

    async def ready_again() -> bool:
        return (await readyz())[0] == 200

    await poll("ready again", ready_again)
