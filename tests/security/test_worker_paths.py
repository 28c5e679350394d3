"""Attacks on the worker's input paths, through the real worker process: it reads only
files under its input-dirs, checked on the open descriptor at intake and again at the run,
never blocks on one, and no answer, log line or stored job holds file content or a secret."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from ..conftest import APP_SECRET, TOKEN
from ..test_worker import (
    ACT_1,
    API_TOKEN,
    AUD_1,
    WorkerProcess,
    csv_text,
    poll,
    submit,
    worker_env,
    write_config,
)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
# A file outside the input dir, as an attacker would aim at: a secret and raw identifiers.
EMAIL = "jane.doe.leak@example.com"
PHONE = "+15551234567"
SECRET_LINE = f'"{TOKEN},{EMAIL},{PHONE}\n'
NEVER = (TOKEN, APP_SECRET, API_TOKEN, EMAIL, PHONE)


def assert_quiet(*texts: str) -> None:
    for text in texts:
        for value in NEVER:
            assert value not in text


async def post(http: aiohttp.ClientSession, url: str, **fields: Any) -> tuple[int, str]:
    """POST a JSON job; the status and the raw body (which must be JSON)."""
    async with http.post(f"{url}/jobs", json=fields, headers=AUTH) as resp:
        text = await resp.text()
        assert resp.content_type == "application/json", text
        return resp.status, text


async def job_texts(http: aiohttp.ClientSession, url: str) -> str:
    """Every job as the API shows it, listed and one by one."""
    async with http.get(f"{url}/jobs", headers=AUTH) as resp:
        texts = [await resp.text()]
        listing = await resp.json()
    for job in listing["jobs"]:
        async with http.get(f"{url}/jobs/{job['id']}", headers=AUTH) as resp:
            texts.append(await resp.text())
    return "\n".join(texts)


async def ended(http: aiohttp.ClientSession, url: str, ids: list[str]) -> list[dict[str, Any]]:
    """The jobs, once each has ended."""

    async def check() -> list[dict[str, Any]] | None:
        jobs = []
        for job_id in ids:
            async with http.get(f"{url}/jobs/{job_id}", headers=AUTH) as resp:
                jobs.append(await resp.json())
        return jobs if all(j["state"] in ("completed", "failed") for j in jobs) else None

    jobs: list[dict[str, Any]] = await poll("the jobs to end", check)
    return jobs


def secret_file(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "secret.csv"
    path.write_text(SECRET_LINE)
    return path


async def test_no_input_dirs_means_no_paths(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    config = tmp_path / "worker.toml"
    config.write_text(
        f'port = 0\nstate-dir = "{tmp_path / "state"}"\napi-base = "{fake.base_url}"\n'
    )
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    secret = secret_file(tmp_path)
    for path, schema in (
        ("/proc/self/environ", None),
        ("/etc/passwd", "EXTERN_ID"),
        (secret, None),
    ):
        extra = {"schema": schema, "column_map": {"EXTERN_ID": "root"}} if schema else {}
        status, text = await post(
            http, worker.url, audience=AUD_1, ad_account=ACT_1, input=str(path), **extra
        )
        assert status == 422 and "sets no input-dirs" in text, text
        assert_quiet(text)
    # Rows in the body still work.
    job = await submit(
        http, worker.url, rows=csv_text(20, 1), audience=AUD_1, ad_account=ACT_1, headers=AUTH
    )
    assert job["state"] in ("queued", "running")
    assert_quiet(await job_texts(http, worker.url), worker.log_text())


async def test_paths_outside_special_or_linked_are_refused_without_blocking(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    secret = secret_file(tmp_path)
    (inputs / "link.csv").symlink_to(secret)
    (inputs / "environ.csv").symlink_to("/proc/self/environ")
    (inputs / "sub").symlink_to(secret.parent)  # a linked directory: caught on the descriptor
    (inputs / "quoted.csv").write_text(SECRET_LINE)  # inside, but no people list
    people = write_sample(inputs / "people.csv", 50, seed=3)
    (inputs / "alias.csv").symlink_to(people)  # inside, but a link could be swapped later
    fifos = [inputs / f"fifo{i}.csv" for i in range(7)]
    for fifo in fifos:
        os.mkfifo(fifo)
    config = write_config(tmp_path, fake.base_url, input_dir=inputs)
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    job = {"audience": AUD_1, "ad_account": ACT_1}
    attacks = [
        ("/proc/self/environ", "outside the worker's input-dirs"),
        ("/etc/shadow", "outside the worker's input-dirs"),
        (str(secret), "outside the worker's input-dirs"),
        (str(inputs / "link.csv"), "outside the worker's input-dirs"),
        (str(inputs / "environ.csv"), "outside the worker's input-dirs"),
        (str(inputs / "sub" / "secret.csv"), "outside the worker's input-dirs"),
        (str(inputs / "quoted.csv"), "the header has 1 column"),
        (str(inputs / "alias.csv"), "input is a symbolic link"),
        (str(inputs), "not a regular file"),
        (str(inputs / "a\x00.csv"), "NUL byte"),
        *((str(fifo), "not a regular file") for fifo in fifos),
    ]
    timeout = aiohttp.ClientTimeout(total=10)  # a FIFO once hung every later request
    for path, message in attacks:
        async with http.post(
            f"{worker.url}/jobs", json={**job, "input": path}, headers=AUTH, timeout=timeout
        ) as resp:
            text = await resp.text()
            assert resp.content_type == "application/json", text
            assert resp.status == 422 and message in text, (path, text)
            assert_quiet(text)
    done = await submit(http, worker.url, input=str(people), headers=AUTH, **job)
    (finished,) = await ended(http, worker.url, [done["id"]])
    assert finished["state"] == "completed" and finished["report"]["rows_read"] == 50
    async with http.get(f"{worker.url}/jobs", headers=AUTH) as resp:
        assert [j["id"] for j in (await resp.json())["jobs"]] == [done["id"]]
    assert_quiet(await job_texts(http, worker.url), worker.log_text())


async def test_a_path_swapped_after_intake_is_refused_at_the_run(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    secret = secret_file(tmp_path)
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    first = write_sample(inputs / "first.csv", 200, seed=1)
    victim = write_sample(inputs / "victim.csv", 20, seed=2)
    nested = write_sample(inputs / "sub" / "secret.csv", 20, seed=3)
    config = write_config(tmp_path, fake.base_url, input_dir=inputs)
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    fake.hang_next(1, 2.0)  # the first job holds the audience while the others wait
    job = {"audience": AUD_1, "ad_account": ACT_1, "headers": AUTH, "batch_size": 100}
    ids = [(await submit(http, worker.url, input=str(first), **job))["id"]]

    async def first_in_flight() -> bool:
        return any(e.outcome == "pending" for e in fake.log)

    await poll("the first job's batch in flight", first_in_flight)
    ids.append((await submit(http, worker.url, input=str(victim), **job))["id"])
    ids.append((await submit(http, worker.url, input=str(nested), **job))["id"])
    # Accepted; now swapped for the secret: the file by a symlink, the directory by one.
    victim.unlink()
    victim.symlink_to(secret)
    (inputs / "sub").rename(inputs / "old-sub")
    (inputs / "sub").symlink_to(secret.parent)

    jobs = await ended(http, worker.url, ids)
    assert [j["state"] for j in jobs] == ["completed", "failed", "failed"], jobs
    assert all("outside the worker's input-dirs" in j["error"] for j in jobs[1:]), jobs
    sent = sum(e.rows for e in fake.log if e.outcome == "ok")
    assert sent == jobs[0]["report"]["rows_sent"]  # the first job only
    assert_quiet(await job_texts(http, worker.url), worker.log_text())


async def test_a_request_whose_client_left_is_not_made_a_job(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    config = write_config(tmp_path, fake.base_url)
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    # Rows enough that hashing them outlasts the client, which sends and hangs up.
    body = csv_text(30_000, 4).encode()
    target = f"/jobs?audience={AUD_1}&ad_account={ACT_1}"
    where = yarl.URL(worker.url)
    reader, writer = await asyncio.open_connection(where.host, where.port)
    writer.write(
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_TOKEN}\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    async def dropped() -> bool:
        return "the client went away" in worker.log_text()

    await poll("the request to be dropped", dropped)
    async with http.get(f"{worker.url}/jobs", headers=AUTH) as resp:
        assert (await resp.json()) == {"jobs": []}
    assert list((tmp_path / "state" / "rows").iterdir()) == []


async def test_kernel_files_are_refused_even_under_an_input_dir(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    missing = write_config(tmp_path, fake.base_url, input_dir=tmp_path / "nowhere")
    code, err = await WorkerProcess(missing, worker_env()).run_to_exit()
    assert code == 2 and "is not a directory" in err
    config = write_config(tmp_path, fake.base_url, input_dir=Path("/"))
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    for path in ("/proc/self/environ", "/sys/kernel/mm/transparent_hugepage/enabled"):
        status, text = await post(http, worker.url, audience=AUD_1, ad_account=ACT_1, input=path)
        assert status == 422 and "outside the worker's input-dirs" in text, text
        assert_quiet(text)
    status, text = await post(http, worker.url, audience=AUD_1, ad_account=ACT_1, input="/dev/zero")
    assert status == 422 and "outside the worker's input-dirs" in text, text
    assert_quiet(await job_texts(http, worker.url), worker.log_text())
