"""The worker's HTTP surface under attack: Host, token, TLS, timeouts, caps, file modes.

Each test runs the real worker process against the fake Graph API, as tests/test_worker.py
does, and checks a refusal that a missing fix would let through.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl

from engine.testing.fakegraph import FakeGraph

from ..test_worker import (
    ACT_1,
    ACT_2,
    API_TOKEN,
    AUD_1,
    AUD_2,
    DEADLINE_S,
    WorkerProcess,
    csv_text,
    poll,
    scrape,
    submit,
    wait_for_states,
    worker_env,
    write_config,
)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def raw(url: str, request: bytes) -> bytes:
    """Send bytes as they are and read the whole answer (until the worker closes)."""
    where = yarl.URL(url)
    reader, writer = await asyncio.open_connection(where.host, where.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=DEADLINE_S)
    finally:
        writer.close()


def status_and_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


async def test_host_header_must_name_the_worker(
    fake: FakeGraph, tmp_path: Path, workers: Any
) -> None:
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    port = yarl.URL(worker.url).port

    def get(path: str, host: str | None) -> bytes:
        line = f"Host: {host}\r\n" if host is not None else ""
        return f"GET {path} HTTP/1.1\r\n{line}Connection: close\r\n\r\n".encode()

    # DNS rebinding: a page on evil.example reaches 127.0.0.1 but sends its own name.
    for host in (f"evil.example:{port}", "evil.example", "localhost.evil.example", "[::1]x"):
        code, body = status_and_json(await raw(worker.url, get("/jobs", host)))
        assert code == 421 and "Host" in body["error"], host
    code, _ = status_and_json(await raw(worker.url, get("/metrics", "evil.example")))
    assert code == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "LOCALHOST"):
        code, body = status_and_json(await raw(worker.url, get("/jobs", host)))
        assert (code, body) == (200, {"jobs": []}), host
    # Probes answer any Host (a kubelet sends the pod's address), and say only a status.
    code, body = status_and_json(await raw(worker.url, get("/healthz", "10.1.2.3:8700")))
    assert (code, body) == (200, {"status": "ok"})


async def test_metrics_need_the_token_and_probes_say_only_their_status(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    env = worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN)
    worker = await workers(write_config(tmp_path, fake.base_url), env)
    async with http.get(f"{worker.url}/metrics") as resp:
        assert resp.status == 401 and "audience_engine" not in await resp.text()
    async with http.get(f"{worker.url}/metrics", headers=AUTH) as resp:
        assert resp.status == 200 and "audience_engine_jobs" in await resp.text()
    async with http.get(f"{worker.url}/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    async with http.get(f"{worker.url}/readyz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ready"})


async def test_a_short_api_token_is_refused_at_start_without_being_printed(
    tmp_path: Path,
) -> None:
    short = "short-token-DO-NOT-LEAK"
    config = write_config(tmp_path, "http://127.0.0.1:9")
    code, err = await WorkerProcess(
        config, worker_env(AUDIENCE_ENGINE_API_TOKEN=short)
    ).run_to_exit()
    assert code == 2 and "at least 32 characters" in err
    assert short not in err and str(len(short)) not in err


async def test_listing_is_capped_and_odd_limits_are_json_400(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    for limit in ("1" + "0" * 23, "1001", "١٢", "1_0", " 5", "0"):
        async with http.get(f"{worker.url}/jobs", params={"limit": limit}) as resp:
            assert resp.status == 400, limit
            assert "from 1 to 1000" in (await resp.json())["error"]
    async with http.get(f"{worker.url}/jobs", params={"limit": "1000"}) as resp:
        assert resp.status == 200


async def test_a_full_queue_answers_429_with_retry_after(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.hold()  # the first job's requests wait: it stays running, the others queued
    config = write_config(tmp_path, fake.base_url, "max-queued-jobs = 2")
    config.write_text(config.read_text().replace("max-jobs = 4", "max-jobs = 1"))
    worker = await workers(config, worker_env())
    rows = csv_text(20, seed=1)
    jobs = [
        await submit(http, worker.url, rows=rows, audience=AUD_1, ad_account=ACT_1)
        for _ in range(3)
    ]
    async with http.post(
        f"{worker.url}/jobs",
        params={"audience": AUD_1, "ad_account": ACT_1},
        data=rows.encode(),
        headers={"Content-Type": "text/csv"},
    ) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"].isdigit()
        assert "waiting to run" in (await resp.json())["error"]
    # The refused job left nothing behind: only the three accepted ones hold body rows.
    assert len(list((tmp_path / "state" / "rows").iterdir())) == 3
    fake.release()
    await wait_for_states(http, worker.url, [j["id"] for j in jobs])


async def test_slow_headers_and_bodies_are_cut_off(
    fake: FakeGraph, tmp_path: Path, workers: Any
) -> None:
    config = write_config(tmp_path, fake.base_url, "header-timeout-s = 0.5", "body-timeout-s = 0.5")
    worker = await workers(config, worker_env())
    where = yarl.URL(worker.url)

    # Headers one byte at a time, never finished: the worker closes the connection.
    head = b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 10_000
    reader, writer = await asyncio.open_connection(where.host, where.port)

    async def trickle() -> int:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)  # the attacker's pace, not a wait for state
        return len(head)

    sender = asyncio.ensure_future(trickle())
    assert await asyncio.wait_for(reader.read(), timeout=DEADLINE_S) == b""
    assert not sender.done()  # cut off long before the attacker was through
    sender.cancel()
    writer.close()

    # A body that never arrives in full: 408 in JSON, and the connection is closed.
    answer = await raw(
        worker.url,
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"audience": ',
    )
    code, body = status_and_json(answer)
    assert code == 408 and "did not arrive" in body["error"]


async def test_state_dir_and_every_file_in_it_are_private(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    (state / "rows").mkdir(parents=True)
    state.chmod(0o755)
    (state / "rows" / "old.jsonl").write_text("{}\n")
    (state / "rows" / "old.jsonl").chmod(0o644)
    fake.register_audience(AUD_1, ACT_1)
    fake.hold()  # the job stays running: its files exist while we look
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    job = await submit(
        http, worker.url, rows=csv_text(20, seed=2), audience=AUD_1, ad_account=ACT_1
    )

    async def arrived() -> bool:
        return bool(fake.log)

    await poll("a request", arrived)
    assert "readable by this user only" in worker.log_text()
    modes = {
        str(path.relative_to(state)): stat.S_IMODE(path.stat().st_mode)
        for path in (state, *state.rglob("*"))
    }
    names = set(modes)
    assert {"jobs.sqlite-wal", "jobs.sqlite-shm", "worker.lock"} <= names, names
    # Checkpoint files are the engine's own (tests/security on checkpoints covers them).
    loose = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode & 0o077 and not name.startswith("checkpoints/")
    }
    assert not loose, loose
    fake.release()
    await wait_for_states(http, worker.url, [job["id"]])


async def test_ad_accounts_are_bounded_and_metric_labels_capped(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    fake.register_audience(AUD_2, ACT_2)
    config = write_config(tmp_path, fake.base_url, "max-metric-accounts = 1")
    worker = await workers(config, worker_env())
    for account in ("act_" + "1" * 21, "act_", "act_١٢"):
        async with http.post(
            f"{worker.url}/jobs",
            params={"audience": AUD_1, "ad_account": account},
            data=csv_text(5, seed=3).encode(),
            headers={"Content-Type": "text/csv"},
        ) as resp:
            assert resp.status == 422 and "1 to 20 digits" in (await resp.json())["error"]
    first = await submit(
        http, worker.url, rows=csv_text(30, seed=4), audience=AUD_1, ad_account=ACT_1
    )
    await wait_for_states(http, worker.url, [first["id"]])
    second = await submit(
        http, worker.url, rows=csv_text(40, seed=5), audience=AUD_2, ad_account=ACT_2
    )
    await wait_for_states(http, worker.url, [second["id"]])
    value = await scrape(http, worker.url)
    assert value("audience_engine_rows_read_total", ad_account=ACT_1) == 30
    assert value("audience_engine_rows_read_total", ad_account="other") == 40
    assert value("audience_engine_rows_read_total", ad_account=ACT_2) == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_serves_https_with_the_configured_certificate(
    fake: FakeGraph, tmp_path: Path, workers: Any
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    config = write_config(tmp_path, fake.base_url, f'tls-cert = "{cert}"', f'tls-key = "{key}"')
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    assert worker.url.startswith("https://127.0.0.1:")
    trust = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/jobs", headers=AUTH, ssl=trust) as resp:
            assert (resp.status, await resp.json()) == (200, {"jobs": []})
        with pytest.raises(aiohttp.ClientError):
            async with session.get(worker.url.replace("https", "http") + "/healthz"):
                pass
    bad = write_config(tmp_path, fake.base_url, f'tls-cert = "{cert}"')
    code, err = await WorkerProcess(bad, worker_env()).run_to_exit()
    assert code == 2 and "tls_cert and tls_key go together" in err


async def test_a_token_in_plain_http_beyond_loopback_is_warned_about(
    fake: FakeGraph, tmp_path: Path, workers: Any
) -> None:
    config = write_config(tmp_path, fake.base_url, 'host = "0.0.0.0"')
    worker = await workers(config, worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN))
    warnings = [orjson.loads(line) for line in worker.log_text().splitlines()]
    assert any(w["level"] == "warning" and "TLS is off" in w["message"] for w in warnings), warnings
    assert API_TOKEN not in worker.log_text()
