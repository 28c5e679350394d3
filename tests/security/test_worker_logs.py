"""Secrets a client puts where they do not belong (a query string, a header) never reach the
worker's log: the access log leaves query strings out and every log line is redacted."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine._worker.telemetry import setup_logging
from engine.testing.fakegraph import FakeGraph

from ..test_worker import API_TOKEN, poll, worker_env, write_config

SECRET = "client-secret-IN-THE-URL-9f3a"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_the_access_log_never_holds_a_query_string_or_a_header(
    fake: FakeGraph, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    env = worker_env(AUDIENCE_ENGINE_API_TOKEN=API_TOKEN)
    worker = await workers(write_config(tmp_path, fake.base_url), env)
    query = {"access_token": SECRET, "appsecret_proof": SECRET, "state": "queued"}
    async with http.get(f"{worker.url}/jobs", params=query, headers=AUTH) as resp:
        assert resp.status == 200
    wrong = {"Authorization": f"Bearer {SECRET}"}
    async with http.get(f"{worker.url}/jobs/nope", params={"token": SECRET}, headers=wrong) as r:
        assert r.status == 401

    async def both_logged() -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in worker.log_text().splitlines()]
        access = [e for e in lines if e["logger"] == "aiohttp.access"]
        return access if len(access) == 2 else []

    first, second = await poll("two access log lines", both_logged)
    text = worker.log_text()
    assert SECRET not in text and API_TOKEN not in text
    assert " GET /jobs 200 " in first["message"]
    assert " GET /jobs/nope 401 " in second["message"]


@pytest.fixture
def json_log() -> Iterator[Any]:
    """The worker's JSON logging on the root logger for one test, then the test's own back."""
    root = logging.getLogger()
    handlers, level = root.handlers, root.level
    setup_logging("info")
    out = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    try:
        yield lambda: [orjson.loads(line) for line in out.getvalue().splitlines()]
    finally:
        root.handlers, root.level = handlers, level


def test_every_log_line_is_redacted_whoever_writes_it(json_log: Any) -> None:
    log = logging.getLogger("some.library")
    log.warning("GET https://graph.example/v1/act_1/users?access_token=%s&x=1 failed", SECRET)
    log.warning("sent appsecret_proof=%s", SECRET)
    log.warning("headers: {'Authorization': 'Bearer %s'}", SECRET)
    log.warning("cannot read s3://key:%s@lists/a.csv nor redis://:%s@cache:6379", SECRET, SECRET)
    try:
        raise ValueError(f"POST /jobs?access_token={SECRET}")
    except ValueError:
        log.exception("request failed")
    entries = json_log()
    assert len(entries) == 5
    assert SECRET not in orjson.dumps(entries).decode()
    assert entries[0]["message"] == "GET https://graph.example/v1/act_1/users?[redacted] failed"
    assert entries[1]["message"] == "sent appsecret_proof=[redacted]"
    assert entries[2]["message"] == "headers: {'Authorization': 'Bearer [redacted]'}"
    assert entries[3]["message"] == (
        "cannot read s3://[redacted]@lists/a.csv nor redis://[redacted]@cache:6379"
    )
    assert "/jobs?[redacted]" in entries[4]["exception"]
