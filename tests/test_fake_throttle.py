"""The fake Graph API's quotas over loopback: each throttle shape with Meta's headers and
error codes, per ad account, set at start, through the admin endpoint and on the command
line. Time runs on the fake's injected clock, so every figure is exact."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.testing.fakegraph import FakeConfig, FakeGraph
from engine.testing.throttle import SlidingWindow, ThrottleSpec

AUD = "23850000000000042"
ACCOUNT = "act_77"
OTHER_AUD = "23850000000000043"
RETRY = "X-Fake-Retry-After-S"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    def header(self, name: str) -> Any:
        return orjson.loads(self.headers[name])

    def buc(self) -> dict[str, Any]:
        """The one `custom_audience` entry of the business-use-case header, for account 77."""
        (entry,) = self.header("X-Business-Use-Case-Usage")["77"]
        return entry  # type: ignore[no-any-return]

    @property
    def error(self) -> tuple[int, int | None]:
        err = self.body["error"]
        assert err["is_transient"] is True and err["message"].startswith(f"(#{err['code']})")
        return err["code"], err.get("error_subcode")


@dataclass
class Env:
    graph: FakeGraph
    clock: Clock
    http: aiohttp.ClientSession
    batch_seq: int = 0

    async def call(self, audience: str = AUD) -> Reply:
        """One add request of one row, in a session of its own batches."""
        self.batch_seq += 1
        session = {"session_id": 5, "batch_seq": self.batch_seq, "last_batch_flag": False}
        form = {
            "payload": orjson.dumps({"schema": "EMAIL_SHA256", "data": [_sha("a")]}).decode(),
            "session": orjson.dumps(session).decode(),
            "access_token": "token",
        }
        url = f"{self.graph.base_url}/v25.0/{audience}/users"
        async with self.http.post(url, data=form) as resp:
            return Reply(resp.status, await resp.json(), dict(resp.headers))

    async def admin(self, settings: dict[str, Any]) -> tuple[int, Any]:
        url = f"{self.graph.base_url}/_fake/config"
        async with self.http.post(url, json=settings) as resp:
            return resp.status, await resp.json()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = Clock()
    async with FakeGraph(FakeConfig(clock=clock)) as graph, aiohttp.ClientSession() as http:
        graph.register_audience(AUD, ACCOUNT)
        graph.register_audience(OTHER_AUD, "act_88")
        yield Env(graph, clock, http)


async def test_a_time_scaled_hour_answers_80003_with_its_regain_in_meta_minutes(env: Env) -> None:
    # 2 calls/s over an hour that lasts 10 s: 20 calls a window.
    env.graph.configure(
        throttle={"shape": "sliding", "rate": 2, "window_s": 3600, "time_scale": 360}
    )
    replies = [await env.call() for _ in range(20)]
    assert all(r.status == 200 for r in replies)
    assert [r.buc()["call_count"] for r in replies[:3]] == [5, 10, 15]
    assert replies[-1].buc()["call_count"] == 100 and RETRY not in replies[-1].headers
    env.clock.now = 1001.0  # 360 model seconds later: 3240 s until the first calls leave
    over = await env.call()
    assert over.status == 400 and over.error == (80003, 2446079)
    assert over.buc() == {
        "type": "custom_audience",
        "call_count": 105,
        "total_cputime": 105,
        "total_time": 105,
        "estimated_time_to_regain_access": 54,
    }
    assert over.headers[RETRY] == "9.000"
    assert env.graph.log[-1].outcome == "throttled" and not env.graph.log[-1].applied
    env.clock.now = 1010.0  # the first 20 have left; the throttled call has not
    back = await env.call()
    assert back.status == 200 and back.buc()["call_count"] == 10


async def test_a_fixed_window_resets_on_its_boundary_and_app_quota_answers_code_4(
    env: Env,
) -> None:
    # 3 calls a minute; minutes start at multiples of 60 s: this one at 960 s.
    env.graph.configure(throttle={"shape": "fixed", "rate": 0.05, "window_s": 60, "kind": "app"})
    for pct in (33, 66, 100):
        ok = await env.call()
        assert ok.status == 200 and ok.header("X-App-Usage") == {
            "call_count": pct,
            "total_time": pct,
            "total_cputime": pct,
        }
        assert "X-Business-Use-Case-Usage" not in ok.headers
    env.clock.now = 1003.0
    over = await env.call()
    assert over.status == 400 and over.error == (4, None)
    assert over.header("X-App-Usage")["call_count"] == 133 and over.headers[RETRY] == "17.000"
    env.clock.now = 1019.999
    assert (await env.call()).status == 400
    env.clock.now = 1020.0
    fresh = await env.call()
    assert fresh.status == 200 and fresh.header("X-App-Usage")["call_count"] == 33


async def test_a_token_bucket_refills_steadily_and_ad_account_quota_answers_17(env: Env) -> None:
    env.graph.configure(
        throttle={"shape": "bucket", "rate": 2, "window_s": 1, "kind": "ad_account"}
    )
    assert [(await env.call()).status for _ in range(2)] == [200, 200]
    over = await env.call()  # the bucket holds 2; the throttled call takes a token too
    assert over.status == 400 and over.error == (17, 2446079)
    body = over.header("X-Ad-Account-Usage")
    assert body == {
        "acc_id_util_pct": 150.0,
        "reset_time_duration": 1,
        "ads_api_access_tier": "standard_access",
    }
    assert over.headers[RETRY] == "1.000"
    env.clock.now = 1000.999
    assert (await env.call()).status == 400
    env.clock.now = 1002.0  # full again: this call takes one of its 2 tokens
    ok = await env.call()
    assert ok.status == 200 and ok.header("X-Ad-Account-Usage")["acc_id_util_pct"] == 50.0


async def test_each_ad_account_has_its_own_quota_and_may_start_spent(env: Env) -> None:
    env.graph.configure(throttle={"shape": "sliding", "rate": 1, "window_s": 10, "spent": 0.5})
    assert (await env.call()).buc()["call_count"] == 60  # 5 of 10 spent before, then ours
    env.clock.now = 1005.0
    for _ in range(4):
        await env.call()
    assert (await env.call()).status == 400
    other = await env.call(OTHER_AUD)
    (entry,) = other.header("X-Business-Use-Case-Usage")["88"]
    assert other.status == 200 and entry["call_count"] == 60
    env.clock.now = 1010.0  # the spent calls and ours at 1000 have left; 5 at 1005 remain
    assert (await env.call()).buc()["call_count"] == 60


async def test_the_admin_endpoint_sets_shows_replaces_and_clears_the_quota(env: Env) -> None:
    spec = {"shape": "sliding", "rate": 0.1, "window_s": 10, "time_scale": 1, "kind": "buc"}
    status, shown = await env.admin({"throttle": spec})
    assert status == 200 and shown["throttle"] == spec | {"spent": 0.0}
    assert shown["rate_limit"] is None
    assert env.graph.config.throttle == ThrottleSpec("sliding", 0.1, 10.0)
    assert (await env.call()).status == 200
    assert (await env.call()).status == 400  # one call per 10 s
    # A new setting starts the account afresh.
    status, shown = await env.admin({"rate_limit": [2, 10]})
    assert status == 200 and shown["throttle"] is None and shown["rate_limit"] == [2, 10.0]
    assert [(await env.call()).status for _ in range(3)] == [200, 200, 400]
    assert (await env.admin({"rate_limit": None}))[0] == 200
    assert (await env.call()).status == 200


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"throttle": {"shape": "round", "rate": 1}}, "shape must be one of"),
        ({"throttle": {"rate": 0}}, "must be above 0"),
        ({"throttle": {"rate": "fast"}}, "rate must be a number"),
        ({"throttle": {"kind": "page"}}, "kind must be"),
        ({"throttle": {"limit": 3}}, "unknown throttle settings: limit"),
        ({"throttle": [1, 2]}, "a throttle is an object"),
        ({"throttle": {"rate": 1}, "rate_limit": [1, 1]}, "not both"),
        ({"rate_limit": [0, 10]}, "at least 1 call"),
    ],
)
async def test_the_admin_endpoint_refuses_a_bad_quota(
    env: Env, settings: dict[str, Any], reason: str
) -> None:
    status, body = await env.admin(settings)
    assert status == 400 and reason in body["error"]
    assert env.graph.config.throttle is None and env.graph.config.rate_limit is None


def test_rate_limit_is_a_sliding_window_whose_minutes_follow_the_fakes_time_scale() -> None:
    config = FakeConfig(rate_limit=(6, 3.0), time_scale=0.001)  # Meta's minute lasts 60 ms
    spec = config.throttle_spec()
    assert spec is not None
    model = spec.build(0.0, "1")
    assert isinstance(model, SlidingWindow) and model.limit == 6
    for _ in range(6):
        model.admit(0.0)
    assert model.admit(1.0).regain_min == 34  # 2 s to wait = 2,000 Meta seconds
    with pytest.raises(ValueError, match="not both"):
        FakeConfig(rate_limit=(6, 3.0), throttle=spec)


async def test_the_command_line_sets_the_quota() -> None:
    root = Path(__file__).resolve().parent.parent
    spec = "shape=fixed,rate=1,window_s=3600,time_scale=3600,kind=ad_account"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "engine", "fake-graph", "--port", "0", "--throttle", spec),
        stdout=asyncio.subprocess.PIPE,
        cwd=root,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        base = line.split()[-1]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/_fake/config", json={}) as resp:
                shown = (await resp.json())["throttle"]
            assert shown["shape"] == "fixed" and shown["kind"] == "ad_account"
            assert shown["window_s"] == shown["time_scale"] == 3600.0
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    bad = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "engine", "fake-graph", "--throttle", "shape=round"),
        stderr=asyncio.subprocess.PIPE,
        cwd=root,
    )
    _, err = await asyncio.wait_for(bad.communicate(), timeout=30)
    assert bad.returncode == 2 and b"throttle shape must be one of" in err
