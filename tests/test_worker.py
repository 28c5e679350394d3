"""The long-lived worker (`python -m engine worker`), run as a real process against the fake.

Every wait polls the worker's API or the fake's log against a deadline; kills land from
the fake's arrival hook, so they hit a chosen request rather than a moment in time.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from prometheus_client.parser import text_string_to_metric_families

from engine._worker.jobs import JobStore
from engine.testing.fakegraph import FakeGraph, LogEntry
from engine.testing.sample import EIGHT_KEYS, sample_rows, write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import APP_SECRET, TOKEN

ACT_1, ACT_2 = "act_1000000001", "act_1000000002"
AUD_1, AUD_2, AUD_3 = "23850000000000001", "23850000000000002", "23850000000000003"
API_TOKEN = "worker-api-token-DO-NOT-LEAK-55e1"
DEADLINE_S = 30.0
REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`python -m engine worker --config ...` as a subprocess; stderr (JSON logs) to a file."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.stderr = config.with_suffix(".log")
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> WorkerProcess:
        with open(self.stderr, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=self.env,
                cwd=REPO,
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=DEADLINE_S)
        assert b"listening on " in line, self.log_text()
        self.url = line.decode().split("listening on ")[1].strip()
        return self

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "engine", "worker", "--config", str(self.config)]

    async def run_to_exit(self) -> tuple[int, str]:
        """Run without waiting for it to listen: for configs it must refuse."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=REPO,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=DEADLINE_S)
        assert proc.returncode is not None
        return proc.returncode, err.decode()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout=DEADLINE_S)

    def log_text(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def worker_env(**extra: str) -> dict[str, str]:
    """The test's environment without any Meta or worker secret of the caller's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "AUDIENCE_ENGINE_"))}
    return {**base, "META_ACCESS_TOKEN": TOKEN, "META_APP_SECRET": APP_SECRET, **extra}


def write_config(tmp_path: Path, base_url: str, *extra: str, input_dir: Path | None = None) -> Path:
    """A worker config reading inputs from `input_dir` (default: the whole `tmp_path`)."""
    config = tmp_path / "worker.toml"
    lines = [
        "port = 0",
        f'state-dir = "{tmp_path / "state"}"',
        f'api-base = "{base_url}"',
        f'input-dirs = ["{input_dir or tmp_path}"]',
        "max-jobs = 4",
        *extra,
        "[limits]",
        "rate = 200.0",
        "burst = 50",
        "[job-defaults]",
        'default-country-code = "1"',
        "concurrency = 2",
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture
async def workers() -> AsyncIterator[Callable[[Path, dict[str, str]], Awaitable[WorkerProcess]]]:
    """Starts workers; any still running at the end of the test is killed."""
    started: list[WorkerProcess] = []

    async def start(config: Path, env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(config, env)
        started.append(worker)
        return await worker.start()

    yield start
    for worker in started:
        worker.stop()
        if worker.proc is not None:
            await worker.proc.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    http: aiohttp.ClientSession,
    url: str,
    *,
    rows: str | None = None,
    content_type: str = "text/csv",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """POST /jobs: a JSON job, or rows in the body with the fields in the query string."""
    if rows is None:
        request = http.post(f"{url}/jobs", json=fields, headers=headers)
    else:
        query = {k: str(v) for k, v in fields.items()}
        hdrs = {"Content-Type": content_type, **(headers or {})}
        request = http.post(f"{url}/jobs", params=query, data=rows.encode(), headers=hdrs)
    async with request as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, body
        return body


async def poll(what: str, check: Callable[[], Awaitable[Any]]) -> Any:
    """Call `check` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_for_states(
    http: aiohttp.ClientSession, url: str, ids: list[str], states: tuple[str, ...] = ("completed",)
) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        jobs = []
        for job_id in ids:
            async with http.get(f"{url}/jobs/{job_id}") as resp:
                jobs.append(await resp.json())
        if all(j["state"] in ("completed", "failed", "cancelled") for j in jobs) or all(
            j["state"] in states for j in jobs
        ):
            return jobs
        return None

    jobs: list[dict[str, Any]] = await poll(f"jobs to be {states}", check)
    assert [j["state"] for j in jobs] == [states[0]] * len(jobs), jobs
    return jobs


def csv_text(n: int, seed: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EIGHT_KEYS)
    writer.writerows(sample_rows(n, seed))
    return out.getvalue()


def jsonl_text(n: int, seed: int) -> str:
    lines = [orjson.dumps(dict(zip(EIGHT_KEYS, row, strict=True))) for row in sample_rows(n, seed)]
    lines.insert(3, b"{not json")  # rejected on arrival, and counted
    return b"\n".join(lines).decode() + "\n"


def as_file(tmp_path: Path, name: str, text: str) -> Path:
    """The same rows as a file, for the engine's own idea of what the audience should hold."""
    path = tmp_path / name
    path.write_text(text)
    return path


async def scrape(http: aiohttp.ClientSession, url: str) -> Callable[..., float]:
    """GET /metrics, parsed: value(name, **labels), 0 for a sample not there."""
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    return value


def check_resumed(fake: FakeGraph, report: dict[str, Any]) -> None:
    """A job killed mid-session and resumed: one session, every batch acknowledged, the
    last flag only on batch N and only after the others; the counts cover the whole job."""
    check_counts(report)
    assert report["resumed"] is True
    entries = [e for e in fake.log if e.audience_id == report["audience_id"]]
    assert {e.session_id for e in entries} == {report["session_id"]}
    n = report["batches_total"]
    assert {e.batch_seq for e in entries if e.outcome == "ok"} == set(range(1, n + 1))
    flagged = [e for e in entries if e.last_batch_flag]
    assert {e.batch_seq for e in flagged} == {n}
    assert flagged[-1].outcome == "ok" and flagged[-1] is entries[-1]
    assert flagged[-1].acked_after == n - 1


def violations_only_from_the_kill(fake: FakeGraph) -> None:
    # A request in flight at the kill may have been applied with its reply lost: its
    # re-send is the one repeat the protocol allows.
    for violation in fake.violations:
        assert "re-sent after it was acknowledged" in violation, violation


async def test_jobs_for_two_accounts_and_three_audiences_at_once(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    for audience, account in ((AUD_1, ACT_1), (AUD_2, ACT_1), (AUD_3, ACT_2)):
        fake.register_audience(audience, account)
    people = write_sample(tmp_path / "people.csv", 2_500, seed=1)
    body_csv, body_jsonl = csv_text(700, seed=2), jsonl_text(600, seed=3)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'app_secret = "{APP_SECRET}"\n')
    secrets.chmod(0o600)
    config = write_config(tmp_path, fake.base_url, f'secrets-file = "{secrets}"')
    # Per-account tokens win over a default that the fake would refuse.
    env = worker_env(
        META_ACCESS_TOKEN="not-the-token",
        META_ACCESS_TOKEN_1000000001=TOKEN,
        META_ACCESS_TOKEN_1000000002=TOKEN,
    )
    del env["META_APP_SECRET"]  # from the secrets file
    worker = await workers(config, env)

    submitted = await asyncio.gather(
        submit(
            http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=200
        ),
        submit(http, worker.url, rows=body_csv, audience=AUD_2, ad_account=ACT_1, batch_size=100),
        submit(
            http,
            worker.url,
            rows=body_jsonl,
            content_type="application/x-ndjson",
            audience=AUD_3,
            ad_account=ACT_2,
            batch_size=100,
        ),
    )
    assert [j["source"] for j in submitted] == ["path", "csv body", "jsonl body"]
    jobs = await wait_for_states(http, worker.url, [j["id"] for j in submitted])

    sources = [
        people,
        as_file(tmp_path, "b.csv", body_csv),
        as_file(tmp_path, "c.jsonl", body_jsonl),
    ]
    for job, audience, source in zip(jobs, (AUD_1, AUD_2, AUD_3), sources, strict=True):
        report = job["report"]
        check_counts(report)
        check_session(fake, report)
        assert fake.members(audience) == expected_rows(source)
        assert report["audience_id"] == audience and report["ad_account_id"] == job["ad_account"]
    assert jobs[2]["report"]["rejected_by_reason"]["invalid_row"] == 1
    assert jobs[2]["report"]["rows_read"] == 601
    # Only hashes of body rows reach disk, and a finished job leaves no files behind.
    assert not list((tmp_path / "state" / "rows").iterdir())
    assert not list((tmp_path / "state" / "checkpoints").iterdir())


async def test_metrics_and_logs_match_the_reports(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.register_audience(AUD_3, ACT_2)
    # One 5xx midway: a retry for the metrics, and an engine log line inside a job.
    fake.fail_next(1, 2, http_status=500, match=AUD_1, after=2)
    people = write_sample(tmp_path / "people.csv", 1_200, seed=4)
    body = csv_text(300, seed=5)
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    submitted = [
        await submit(
            http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
        ),
        await submit(http, worker.url, rows=body, audience=AUD_3, ad_account=ACT_2, batch_size=100),
    ]
    jobs = await wait_for_states(http, worker.url, [j["id"] for j in submitted])
    reports = {job["ad_account"]: job["report"] for job in jobs}
    assert reports[ACT_1]["retries"] == 1

    value = await scrape(http, worker.url)

    fields = {
        "rows_read": "rows_read",
        "rows_sent": "rows_sent",
        "batches_planned": "batches_total",
        "batches_sent": "batches_sent",
        "retries": "retries",
        "throttled": "throttled",
    }
    for metric, field in fields.items():
        for account, report in reports.items():
            got = value(f"audience_engine_{metric}_total", ad_account=account)
            assert got == report[field], (metric, account)
    for account, report in reports.items():
        for reason, rows in report["rejected_by_reason"].items():
            got = value("audience_engine_rows_rejected_total", ad_account=account, reason=reason)
            assert got == rows, (account, reason)
    assert any(r["rows_rejected"] for r in reports.values()), "no rejects: nothing checked"
    requests = {
        account: value("audience_engine_requests_total", ad_account=account, outcome="ok")
        for account in reports
    }
    assert requests == {a: r["batches_sent"] for a, r in reports.items()}
    assert value("audience_engine_requests_total", ad_account=ACT_1, outcome="transient") == 1
    total = sum(r["batches_sent"] for r in reports.values())
    assert value("audience_engine_request_duration_seconds_count", outcome="ok") == total
    assert value("audience_engine_request_duration_seconds_count", outcome="transient") == 1
    assert value("audience_engine_jobs", state="completed") == 2
    assert value("audience_engine_jobs", state="running") == 0
    assert value("audience_engine_jobs_waiting") == value("audience_engine_jobs_running") == 0
    assert value("audience_engine_batches_pending", ad_account=ACT_1) == 0

    logs = [orjson.loads(line) for line in worker.log_text().splitlines()]
    assert all({"ts", "level", "message", "job_id", "ad_account"} <= set(e) for e in logs)
    retry = [e for e in logs if e["logger"] == "engine.upload" and "retrying" in e["message"]]
    assert [(e["job_id"], e["ad_account"]) for e in retry] == [(jobs[0]["id"], ACT_1)]
    done = {(e["job_id"], e["ad_account"]) for e in logs if e["message"] == "job completed"}
    assert done == {(job["id"], job["ad_account"]) for job in jobs}
    text = worker.log_text()
    for secret in (TOKEN, APP_SECRET, "@example.com", "@Example.org"):
        assert secret not in text


async def test_sigkill_mid_jobs_then_restart_finishes_every_job(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    for audience, account in ((AUD_1, ACT_1), (AUD_2, ACT_1), (AUD_3, ACT_2)):
        fake.register_audience(audience, account)
    fake.configure(latency=(0.02, 0.05))
    people = write_sample(tmp_path / "people.csv", 1_500, seed=6)
    body = csv_text(1_000, seed=7)
    config = write_config(tmp_path, fake.base_url)
    worker = await workers(config, worker_env())

    arrivals: dict[str, int] = {}

    def kill_when_all_are_midway(entry: LogEntry) -> bool:
        arrivals[entry.audience_id] = arrivals.get(entry.audience_id, 0) + 1
        if len(arrivals) == 3 and min(arrivals.values()) >= 4 and worker.proc.returncode is None:
            worker.signal(signal.SIGKILL)
            return False  # the process is gone: so is this reply
        return True

    fake.on_arrival = kill_when_all_are_midway
    submitted = [
        await submit(
            http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
        ),
        await submit(http, worker.url, rows=body, audience=AUD_2, ad_account=ACT_1, batch_size=100),
        await submit(
            http,
            worker.url,
            audience=AUD_3,
            ad_account=ACT_2,
            input=str(people),
            mode="replace",
            batch_size=100,
        ),
    ]
    assert await worker.exit_code() == -signal.SIGKILL, worker.log_text()[-3000:]
    fake.on_arrival = None
    assert not any(e.last_batch_flag for e in fake.log), "the kill landed mid-session"
    store = JobStore(tmp_path / "state" / "jobs.sqlite")
    try:
        assert {job.state for job in store.unfinished()} == {"running"}
    finally:
        store.close()

    worker = await workers(config, worker_env())
    jobs = await wait_for_states(http, worker.url, [j["id"] for j in submitted])
    expected = [expected_rows(people), expected_rows(as_file(tmp_path, "b.csv", body))]
    for job, audience, rows in zip(
        jobs, (AUD_1, AUD_2, AUD_3), [*expected, expected[0]], strict=True
    ):
        check_resumed(fake, job["report"])
        assert fake.members(audience) == rows
    violations_only_from_the_kill(fake)


async def test_sigterm_drains_exits_0_and_the_job_resumes(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.hang_next(1, 1.5)  # batch 1 stays in flight: the drain must wait for it
    people = write_sample(tmp_path / "people.csv", 1_000, seed=8)
    config = write_config(tmp_path, fake.base_url)
    worker = await workers(config, worker_env())
    job = await submit(
        http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )

    async def batch_1_in_flight() -> bool:
        return any(e.batch_seq == 1 and e.outcome == "pending" for e in fake.log)

    await poll("batch 1 in flight", batch_1_in_flight)
    worker.signal(signal.SIGTERM)

    async def not_ready() -> bool:
        async with http.get(f"{worker.url}/readyz") as resp:
            return resp.status == 503

    await poll("/readyz to say draining", not_ready)
    async with http.post(f"{worker.url}/jobs", json={"audience": AUD_1}) as resp:
        assert resp.status == 503 and "shutting down" in (await resp.json())["error"]
    async with http.get(f"{worker.url}/healthz") as resp:
        assert resp.status == 200
    assert await worker.exit_code() == 0
    assert all(e.outcome == "ok" for e in fake.log), "requests in flight finished"
    store = JobStore(tmp_path / "state" / "jobs.sqlite")
    try:
        stored = store.get(job["id"])
    finally:
        store.close()
    assert stored is not None and stored.state == "interrupted"
    assert stored.report is not None and stored.report["status"] == "interrupted"

    worker = await workers(config, worker_env())
    (done,) = await wait_for_states(http, worker.url, [job["id"]])
    check_resumed(fake, done["report"])
    assert fake.members(AUD_1) == expected_rows(people)
    assert fake.violations == []


async def test_replace_and_add_on_one_audience_do_not_interleave(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.configure(latency=(0.005, 0.015))
    people = write_sample(tmp_path / "people.csv", 1_000, seed=9)
    extra = csv_text(400, seed=10)
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
    add = await submit(
        http, worker.url, rows=extra, audience=AUD_1, ad_account=ACT_1, batch_size=100
    )
    jobs = await wait_for_states(http, worker.url, [replace["id"], add["id"]])

    check_session(fake, jobs[0]["report"], replace=True)
    check_session(fake, jobs[1]["report"])
    seqs = [e.seq for e in fake.log if e.mode == "replace"]
    during = [e for e in fake.log if e.mode == "add" and min(seqs) <= e.seq <= max(seqs)]
    assert during == [], "an add ran during the replace"
    assert fake.members(AUD_1) == expected_rows(people) | expected_rows(
        as_file(tmp_path, "x.csv", extra)
    )


async def test_delete_cancels_running_and_waiting_jobs(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.hang_next(1, 1.0)
    people = write_sample(tmp_path / "people.csv", 500, seed=11)
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    first = await submit(
        http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )
    second = await submit(
        http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(people), batch_size=100
    )

    async def in_flight() -> bool:
        return any(e.outcome == "pending" for e in fake.log)

    await poll("a request in flight", in_flight)
    value = await scrape(http, worker.url)
    # The first job's batches are cut and batch 1 hangs; the second job waits its turn.
    assert value("audience_engine_batches_pending", ad_account=ACT_1) >= 1
    assert value("audience_engine_jobs_running") == value("audience_engine_jobs_waiting") == 1
    for job in (second, first):  # the second waits for the audience: cancelled at once
        async with http.delete(f"{worker.url}/jobs/{job['id']}") as resp:
            assert resp.status == 202
    waiting, running = await wait_for_states(
        http, worker.url, [second["id"], first["id"]], ("cancelled",)
    )
    assert waiting["report"] is None
    assert running["report"]["status"] == "interrupted"
    assert not any(e.last_batch_flag for e in fake.log)
    async with http.delete(f"{worker.url}/jobs/{first['id']}") as resp:
        assert resp.status == 409


async def test_bearer_token_bad_requests_and_one_worker_per_state_dir(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    people = write_sample(tmp_path / "people.csv", 10)
    env = worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN)
    config = write_config(tmp_path, fake.base_url)
    worker = await workers(config, env)
    url = worker.url
    code, err = await WorkerProcess(config, env).run_to_exit()
    assert code == 2 and "another worker is using the state dir" in err
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}):
        async with http.get(f"{url}/jobs", headers=headers) as resp:
            assert resp.status == 401
    # Bytes that are not UTF-8 in the header are a wrong token too, not a crash.
    where = yarl.URL(url)
    reader, writer = await asyncio.open_connection(where.host, where.port)
    writer.write(b"GET /jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xe9\xff\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 401")
    writer.close()
    async with http.get(f"{url}/healthz") as resp:
        assert resp.status == 200  # probes need no token
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with http.get(f"{url}/jobs", headers=auth) as resp:
        assert resp.status == 200 and (await resp.json()) == {"jobs": []}

    good = {"audience": AUD_1, "ad_account": ACT_1, "input": str(people)}
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "mode": "upsert"}, 422, "mode must be one of"),
        ({k: v for k, v in good.items() if k != "audience"}, 400, "audience is required"),
        ({**good, "input": str(tmp_path / "missing.csv")}, 422, "cannot read input"),
        ({**good, "input": "people.csv"}, 422, "absolute path"),
        ({**good, "schema": "EMAIL,SHOE_SIZE"}, 422, "unknown schema key"),
        ({**good, "access_token": "x"}, 400, "unknown field 'access_token'"),
        ({**good, "batch_size": "10"}, 400, "batch_size must be an integer"),
        ({**good, "ad_account": "1234"}, 422, "ad account must look like act_123"),
    ]
    for body, status, message in bad:
        async with http.post(f"{url}/jobs", json=body, headers=auth) as resp:
            answer = await resp.json()
            assert (resp.status, message in answer["error"]) == (status, True), (body, answer)
    async with http.post(
        f"{url}/jobs", data=b"{", headers={**auth, "Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
    async with http.post(
        f"{url}/jobs",
        params={"audience": AUD_1, "ad_account": ACT_1},
        data=b"shoe_size\n42\n",
        headers={**auth, "Content-Type": "text/csv"},
    ) as resp:
        assert resp.status == 422 and "no column maps to a key" in (await resp.json())["error"]
    for limit in ("0", "-1", "ten"):
        async with http.get(f"{url}/jobs", params={"limit": limit}, headers=auth) as resp:
            assert resp.status == 400, limit
    async with http.get(f"{url}/jobs/nope", headers=auth) as resp:
        assert resp.status == 404 and (await resp.json()) == {"error": "no such job"}
    assert API_TOKEN not in worker.log_text()


async def test_non_loopback_host_without_api_token_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", 'host = "0.0.0.0"')
    code, err = await WorkerProcess(config, worker_env()).run_to_exit()
    assert code == 2
    assert "AUDIENCE_ENGINE_API_TOKEN" in err and "0.0.0.0" in err
