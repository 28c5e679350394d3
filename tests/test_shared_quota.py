"""One ad account's quota shared through Redis by separate processes: CLI runs and an embedded
upload at once, against the fake's sliding-window cap, with a redis-server of the test's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine import LimiterConfig, Uploader
from engine._errors import QuotaUnavailable
from engine._fleet.quota import SharedRegistry
from engine._graph.usage import Usage
from engine.testing import write_sample
from engine.testing.clock import FakeClock
from engine.testing.fakegraph import FakeGraph

from .checks import check_session, expected_rows
from .conftest import AD_ACCOUNT, APP_SECRET, TOKEN, run_cli
from .redis_server import RedisServer

AUDIENCES = ("23850000000000101", "23850000000000102", "23850000000000103")
CAP, WINDOW_S = 40, 5.0  # the fake's sliding window: 8 calls/s for the account


def _args(path: Path, audience: str, base: str, *extra: str) -> list[str]:
    return [
        "upload",
        str(path),
        "--audience",
        audience,
        "--ad-account",
        AD_ACCOUNT,
        "--api-base",
        base,
        "--batch-size",
        "100",
        "--no-checkpoint",
        "-q",
        *extra,
    ]


async def test_two_cli_runs_and_a_library_upload_share_one_accounts_budget(
    fake: FakeGraph, redis_server: RedisServer, tmp_path: Path
) -> None:
    for audience in AUDIENCES:
        fake.register_audience(audience, AD_ACCOUNT)
    fake.configure(rate_limit=(CAP, WINDOW_S))
    files = [
        write_sample(tmp_path / f"people{i}.csv", 5_000, columns=("email",), seed=i)
        for i in range(3)
    ]
    url = redis_server.url

    async def library() -> str:
        async with Uploader(
            access_token=TOKEN, app_secret=APP_SECRET, api_base=fake.base_url, redis_url=url
        ) as up:
            report = await up.upload(
                files[2], audience=AUDIENCES[2], ad_account=AD_ACCOUNT, batch_size=100
            )
        assert report.status == "completed", report.message
        return str(report.session_id)

    first, second, _ = await asyncio.gather(
        run_cli(*_args(files[0], AUDIENCES[0], fake.base_url, "--redis-url", url)),
        # The other takes the URL from the environment.
        run_cli(
            *_args(files[1], AUDIENCES[1], fake.base_url),
            env={"AUDIENCE_ENGINE_REDIS_URL": url},
        ),
        library(),
    )
    assert (first.code, second.code) == (0, 0), first.stderr + second.stderr
    for path, audience in zip(files, AUDIENCES, strict=True):
        assert fake.members(audience) == expected_rows(path)
    for run in (first, second):
        check_session(fake, run.report)

    log = fake.log
    throttled = [e for e in log if e.outcome != "ok"]
    assert len(throttled) <= 0.02 * len(log)


async def test_without_redis_calls_wait_then_fail_and_resume_once_it_is_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    registry = SharedRegistry(redis_server.url, LimiterConfig(), clock=clock, unreachable_s=30.0)
    quota = registry.get(AD_ACCOUNT)
    try:
        await quota.acquire()
        redis_server.stop()
        began = clock.monotonic()
        with pytest.raises(QuotaUnavailable):
            await quota.acquire()
        # It waited out the bound, and said so, before giving up.
        assert clock.monotonic() - began >= 30.0
        assert "redis unreachable" in caplog.text
        redis_server.start()
        await quota.acquire()
    finally:
        await registry.close()


async def test_a_throttle_seen_by_one_process_pauses_the_others(redis_server: RedisServer) -> None:
    clock = FakeClock()
    one, other = (SharedRegistry(redis_server.url, LimiterConfig(), clock=clock) for _ in range(2))
    try:
        await one.get(AD_ACCOUNT).acquire()
        assert one.get(AD_ACCOUNT).on_throttle(Usage(pct=100.0, regain_s=120.0)) == 120.0
        await asyncio.gather(*one.get(AD_ACCOUNT).pending)
        began = clock.monotonic()
        await other.get(AD_ACCOUNT).acquire()
        assert clock.monotonic() - began >= 120.0
    finally:
        await one.close()
        await other.close()
