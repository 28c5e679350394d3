"""The fake Graph API, over loopback with a real aiohttp client: what it accepts, answers,
keeps and injects. Time-driven behaviour runs on an injected clock, never on sleeps."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine._graph import facts as errors
from engine._hashing import schema as normalize
from engine.testing import fakegraph, throttle
from engine.testing.fakegraph import MAX_ROWS, REPLACE_WINDOW_S, FakeConfig, FakeGraph

TOKEN = "fake-token-DO-NOT-LEAK"
SECRET = "fake-app-secret"
AUD = "23850000000000042"
ACCOUNT = "act_77"
SCHEMA = ["EMAIL", "PHONE"]


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def proof(token: str = TOKEN, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def people(*names: str) -> list[list[Any]]:
    return [[h(f"{n}@example.com"), h(f"1555{len(n):07d}")] for n in names]


def as_members(rows: list[list[Any]]) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in rows}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    graph: FakeGraph
    clock: Clock
    http: aiohttp.ClientSession
    base: str

    async def send(
        self,
        mode: str,
        rows: list[Any],
        *,
        session_id: int = 7,
        batch_seq: int = 1,
        last: bool = False,
        schema: Any = SCHEMA,
        is_raw: bool = True,
        audience: str = AUD,
        encoding: str = "multipart",
        fields: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Any]:
        """One upload request as the engine sends it; returns (status, body, headers)."""
        form: dict[str, str] = {
            "payload": orjson.dumps({"schema": schema, "is_raw": is_raw, "data": rows}).decode(),
            "session": orjson.dumps(
                {"session_id": session_id, "batch_seq": batch_seq, "last_batch_flag": last}
            ).decode(),
            "access_token": TOKEN,
            "appsecret_proof": proof(),
        }
        if mode == "remove":
            form["method"] = "DELETE"
        form.update(fields or {})
        form = {k: v for k, v in form.items() if v != "<omit>"}
        edge = "usersreplace" if mode == "replace" else "users"
        data: Any = form
        if encoding == "multipart":
            data = aiohttp.FormData(form, default_to_multipart=True)
        url = f"{self.base}/v25.0/{audience}/{edge}"
        async with self.http.post(url, data=data) as resp:
            return resp.status, await resp.json(), resp.headers

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        query = {"access_token": TOKEN, "appsecret_proof": proof(), **params}
        async with self.http.get(f"{self.base}{path}", params=query) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = Clock()
    graph = FakeGraph(FakeConfig(token=TOKEN, app_secret=SECRET, clock=clock, seed=3))
    base = await graph.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(graph, clock, http, base)
    finally:
        await graph.close()


def assert_graph_error(body: Any, code: int, subcode: int | None = None) -> dict[str, Any]:
    err = body["error"]
    assert err["code"] == code
    assert err.get("error_subcode") == subcode
    assert err["type"] == "OAuthException"
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["is_transient"], bool)
    assert err["fbtrace_id"]
    return err  # type: ignore[no-any-return]


# -- add, remove, counts ----------------------------------------------------------------


async def test_add_then_remove_changes_membership(env: Env) -> None:
    rows = people("ann", "bob", "cy")
    status, body, _ = await env.send("add", rows, last=True)
    assert status == 200
    assert body == {
        "audience_id": AUD,
        "session_id": "7",
        "num_received": 3,
        "num_invalid_entries": 0,
        "invalid_entry_samples": {},
    }
    assert env.graph.members(AUD) == as_members(rows)
    status, body, _ = await env.send("remove", rows[:2], session_id=8, last=True)
    assert status == 200 and body["num_received"] == 2
    assert env.graph.members(AUD) == as_members(rows[2:])
    assert [e.mode for e in env.graph.log] == ["add", "remove"]
    assert env.graph.violations == []


async def test_urlencoded_body_and_real_delete_are_accepted(env: Env) -> None:
    rows = people("ann", "bob")
    status, _, _ = await env.send("add", rows, encoding="urlencoded", last=True)
    assert status == 200 and env.graph.members(AUD) == as_members(rows)
    form = {
        "payload": orjson.dumps({"schema": SCHEMA, "is_raw": True, "data": rows[:1]}).decode(),
        "session": '{"session_id": 9, "batch_seq": 1, "last_batch_flag": true}',
        "access_token": TOKEN,
        "appsecret_proof": proof(),
    }
    url = f"{env.base}/v25.0/{AUD}/users"
    async with env.http.delete(url, data=form) as resp:  # fields in the body
        assert resp.status == 200, await resp.text()
    assert env.graph.members(AUD) == as_members(rows[1:])
    form["payload"] = (
        form["payload"].replace(rows[0][0], rows[1][0]).replace(rows[0][1], rows[1][1])
    )
    form["session"] = '{"session_id": 10, "batch_seq": 1, "last_batch_flag": true}'
    async with env.http.delete(url, params=form) as resp:  # the SDK's way: in the URL
        assert resp.status == 200
    assert env.graph.members(AUD) == set()
    assert [e.mode for e in env.graph.log] == ["add", "remove", "remove"]


async def test_single_key_flat_list_is_stored_as_one_tuples(env: Env) -> None:
    hashes = [h("a@example.com"), h("b@example.com")]
    status, body, _ = await env.send("add", hashes, schema="EMAIL_SHA256", is_raw=False)
    assert status == 200 and body["num_invalid_entries"] == 0
    assert env.graph.members(AUD) == {(hashes[0],), (hashes[1],)}


async def test_num_received_is_cumulative_and_a_resent_batch_counts_once(env: Env) -> None:
    first, second = people("ann", "bob"), people("cy", "dee", "eve")
    assert (await env.send("add", first, batch_seq=1))[1]["num_received"] == 2
    assert (await env.send("add", second, batch_seq=2))[1]["num_received"] == 5
    status, body, _ = await env.send("add", second, batch_seq=2)  # re-sent
    assert status == 200 and body["num_received"] == 5
    assert env.graph.members(AUD) == as_members(first + second)
    sess = env.graph.session(AUD, 7)
    assert sess is not None and sess.num_received == 5 and sess.acked == {1, 2}
    # Re-sending an acknowledged batch breaks the session rules, and the fake says so.
    assert len(env.graph.violations) == 1
    assert "re-sent after it was acknowledged" in env.graph.violations[0]


# -- validation -------------------------------------------------------------------------


async def test_token_and_appsecret_proof_are_checked(env: Env) -> None:
    rows = people("ann")
    status, body, _ = await env.send("add", rows, fields={"access_token": "<omit>"})
    assert status == 400 and assert_graph_error(body, 190)
    status, body, _ = await env.send("add", rows, fields={"access_token": "wrong"})
    assert status == 400 and assert_graph_error(body, 190)
    status, body, _ = await env.send("add", rows, fields={"appsecret_proof": "ab" * 32})
    err = assert_graph_error(body, 100)
    assert status == 400 and "appsecret_proof" in err["message"]
    status, body, _ = await env.send("add", rows, fields={"appsecret_proof": "<omit>"})
    assert status == 400 and "appsecret_proof" in assert_graph_error(body, 100)["message"]
    assert env.graph.members(AUD) == set()
    assert [e.outcome for e in env.graph.log] == ["error:190"] * 2 + ["error:100"] * 2
    assert not any(e.applied for e in env.graph.log)
    assert TOKEN not in repr(env.graph.log) and TOKEN not in repr(env.graph.config)


async def test_any_token_is_accepted_when_none_is_configured() -> None:
    async with FakeGraph() as graph, aiohttp.ClientSession() as http:
        env = Env(graph, Clock(), http, graph.base_url)
        status, _, _ = await env.send("add", people("ann"), fields={"appsecret_proof": "<omit>"})
        assert status == 200
        status, body, _ = await env.send("add", people("ann"), fields={"access_token": ""})
        assert status == 400 and assert_graph_error(body, 190)


@pytest.mark.parametrize(
    ("kwargs", "code", "text"),
    [
        ({"rows": [["a" * 64]]}, 100, "Data is missing or does not match schema"),
        ({"rows": [[h("x"), h("y"), ""]]}, 100, "Data is missing or does not match schema"),
        ({"rows": [[h("x"), h("y")]], "schema": ["EMAIL", "SHOE"]}, 100, "SHOE"),
        ({"rows": [[h("x"), h("y")]], "is_raw": False}, 100, "is_raw"),
        ({"rows": [], "fields": {"payload": "{not json"}}, 100, "payload"),
        ({"rows": [], "fields": {"payload": "<omit>"}}, 194, "payload"),
        ({"rows": [], "fields": {"session": "<omit>"}}, 194, "session"),
        ({"rows": [], "fields": {"session": '{"session_id": -1, "batch_seq": 1}'}}, 100, "session"),
    ],
)
async def test_bad_requests_get_meta_shaped_errors(
    env: Env, kwargs: dict[str, Any], code: int, text: str
) -> None:
    rows = kwargs.pop("rows")
    status, body, _ = await env.send("add", rows, **kwargs)
    assert status == 400
    assert text in assert_graph_error(body, code)["message"]
    assert env.graph.log[-1].outcome == f"error:{code}" and not env.graph.log[-1].applied
    assert env.graph.members(AUD) == set()


async def test_more_than_10000_rows_is_refused_and_noted(env: Env) -> None:
    rows = [[h(f"{i}@example.com"), ""] for i in range(MAX_ROWS + 1)]
    status, body, _ = await env.send("add", rows)
    assert status == 400 and "10000" in assert_graph_error(body, 100)["message"]
    assert env.graph.log[-1].rows == MAX_ROWS + 1
    assert any("10001 rows" in v for v in env.graph.violations)
    status, body, _ = await env.send("add", rows[:MAX_ROWS], session_id=8)
    assert status == 200 and body["num_received"] == MAX_ROWS


async def test_invalid_cells_are_counted_with_samples_and_not_applied(env: Env) -> None:
    good = [h("ok@example.com"), "", "0f8fad5b-d9cb-469f-a165-70867728950e", "c-17", 44.5]
    rows = [
        good,
        [h("up@example.com").upper(), "", "", "", 1],  # uppercase hex
        ["", "", h("madid"), "", 1],  # a hashed MADID: the SDK bug
        ["", "", "", "", 3],  # nothing that names anyone
        [h("neg@example.com"), "", "", "", -2],  # negative LOOKALIKE_VALUE
        ["", "not-a-hash", "", "", 0],
    ]
    schema = ["EMAIL", "PHONE", "MADID", "EXTERN_ID", "LOOKALIKE_VALUE"]
    status, body, _ = await env.send("add", rows, schema=schema)
    assert status == 200
    assert body["num_received"] == 6 and body["num_invalid_entries"] == 5
    samples = body["invalid_entry_samples"]
    assert h("up@example.com").upper() in samples and h("madid") in samples
    assert "unhashed" in samples[h("madid")]
    assert "not-a-hash" in samples and "-2" in samples and "" in samples
    assert env.graph.members(AUD) == {tuple(good)}
    sess = env.graph.session(AUD, 7)
    assert sess is not None and sess.num_invalid == 5


async def test_unusable_entries_count_as_invalid_though_well_formed(env: Env) -> None:
    rows = people("ann", "bob", "cy", "dee", "ed", "flo", "gus", "hal")
    prefix = rows[2][0][:1]
    unusable = [r for r in rows if any(c.startswith(prefix) for c in r)]
    env.graph.configure(unusable_prefix=prefix)
    status, body, _ = await env.send("add", rows)
    assert status == 200 and 0 < body["num_invalid_entries"] == len(unusable) < len(rows)
    assert set(body["invalid_entry_samples"].values()) == {"entry could not be used"}
    assert env.graph.members(AUD) == as_members(rows) - as_members(unusable)


async def test_lean_mode_counts_rows_without_keeping_them() -> None:
    config = FakeConfig(lean=True)
    async with FakeGraph(config) as graph, aiohttp.ClientSession() as http:
        env = Env(graph, Clock(), http, graph.base_url)
        status, body, _ = await env.send("add", [["bad", "bad"]] * 500, last=True)
        assert status == 200 and body["num_received"] == 500
        assert body["num_invalid_entries"] == 0
        assert graph.members(AUD) == set() and graph.log[0].rows == 500


# -- replace ----------------------------------------------------------------------------


async def test_replace_swaps_members_at_the_last_flag(env: Env) -> None:
    old, new1, new2 = people("old1", "old2"), people("ann"), people("bob", "cy")
    await env.send("add", old, session_id=1, last=True)
    status, body, _ = await env.send("replace", new1, session_id=2, batch_seq=1)
    assert status == 200 and body["num_received"] == 1
    assert env.graph.members(AUD) == as_members(old)  # nothing changes before the end
    _, audience = await env.get(f"/v25.0/{AUD}", fields="operation_status")
    assert audience == {
        "id": AUD,
        "operation_status": {"code": 300, "description": "replace_in_progress"},
    }
    # No /users write while the replace runs.
    status, body, _ = await env.send("add", people("zed"), session_id=3)
    err = assert_graph_error(body, 2650, 1870145)
    assert status == 400 and err["is_transient"] is False
    assert err["error_user_title"] == "Audience Update In Progress"
    status, body, _ = await env.send("replace", new2, session_id=2, batch_seq=2, last=True)
    assert status == 200 and body["num_received"] == 3
    assert env.graph.members(AUD) == as_members(new1 + new2)
    _, audience = await env.get(f"/v25.0/{AUD}", fields="operation_status")
    assert audience["operation_status"] == {"code": 200, "description": "Normal"}
    # After the last flag the session is closed.
    status, body, _ = await env.send("replace", people("late"), session_id=2, batch_seq=3)
    assert status == 400 and assert_graph_error(body, 2650, 1870159)
    assert env.graph.members(AUD) == as_members(new1 + new2)
    v = env.graph.violations
    assert len(v) == 2
    assert v[0].startswith("add audience") and v[0].endswith("audience is replace_in_progress")
    assert "after the last" in v[1]


async def test_replace_without_batch_1_is_refused(env: Env) -> None:
    status, body, _ = await env.send("replace", people("ann"), session_id=5, batch_seq=2)
    assert status == 400 and assert_graph_error(body, 2650, 1870147)
    assert env.graph.operation_status(AUD) == "Normal"
    assert any("before batch 1 was received" in v for v in env.graph.violations)


async def test_replace_times_out_after_90_minutes_with_what_was_sent(env: Env) -> None:
    env.graph.configure(time_scale=0.001)
    await env.send("add", people("old"), session_id=1, last=True)
    first = people("ann")
    assert (await env.send("replace", first, session_id=2, batch_seq=1))[0] == 200
    env.clock.now += REPLACE_WINDOW_S * 0.001 - 0.01
    assert (await env.send("replace", people("bob"), session_id=2, batch_seq=2))[0] == 200
    env.clock.now += 0.02  # now past 90 scaled minutes from batch 1
    status, body, _ = await env.send("replace", people("cy"), session_id=2, batch_seq=3)
    assert status == 400 and assert_graph_error(body, 2650, 1870158)
    assert env.graph.members(AUD) == as_members(first + people("bob"))
    assert env.graph.operation_status(AUD) == "Normal"
    status, _, _ = await env.send("add", people("cy"), session_id=3, last=True)
    assert status == 200
    assert env.graph.violations[-1].endswith("batch after the replace passed its 90 minutes")


async def test_a_second_replace_waits_and_a_second_batch_1_restarts(env: Env) -> None:
    assert (await env.send("replace", people("ann"), session_id=2, batch_seq=1))[0] == 200
    status, body, _ = await env.send("replace", people("bob"), session_id=3, batch_seq=1)
    assert status == 400 and assert_graph_error(body, 2650, 1870145)
    # The same session's batch 1 again: Meta starts over, forgetting "ann".
    status, body, _ = await env.send("replace", people("cy"), session_id=2, batch_seq=1)
    assert status == 200 and body["num_received"] == 1
    await env.send("replace", people("dee"), session_id=2, batch_seq=2, last=True)
    assert env.graph.members(AUD) == as_members(people("cy", "dee"))
    assert any("starts a new replace" in v for v in env.graph.violations)


async def test_replace_settles_before_the_audience_is_normal_again(env: Env) -> None:
    env.graph.configure(replace_settle_s=30.0)
    await env.send("replace", people("ann"), session_id=2, batch_seq=1, last=True)
    assert env.graph.members(AUD) == as_members(people("ann"))
    assert env.graph.operation_status(AUD) == "replace_in_progress"
    status, body, _ = await env.send("add", people("bob"), session_id=3)
    assert status == 400 and assert_graph_error(body, 2650, 1870145)
    assert len(env.graph.violations) == 1 and "replace_in_progress" in env.graph.violations[0]
    env.clock.now += 30.0
    assert env.graph.operation_status(AUD) == "Normal"
    assert (await env.send("add", people("bob"), session_id=3))[0] == 200
    assert len(env.graph.violations) == 1  # once Normal, /users writes are fine again


async def test_users_writes_during_a_replace_are_violations(env: Env) -> None:
    assert (await env.send("replace", people("ann"), session_id=2, batch_seq=1))[0] == 200
    await env.send("remove", people("ann"), session_id=3)
    await env.send("replace", people("bob"), session_id=2, batch_seq=2)  # the replace's own
    v = env.graph.violations
    assert len(v) == 1 and v[0].startswith(f"remove audience {AUD} session 3 batch 1: /users")


async def test_sessions_endpoint_reports_progress(env: Env) -> None:
    path = f"/v25.0/{AUD}/sessions"
    assert await env.get(path, session_id="7") == (200, {"data": []})
    await env.send("add", people("ann", "bob"), batch_seq=1)
    _, body = await env.get(path, session_id="7")
    (row,) = body["data"]
    assert row["session_id"] == "7" and row["num_received"] == "2"
    assert row["stage"] == "uploading" and row["end_time"] == "0"
    assert row["num_matched"] == "-1" and all(isinstance(v, str) for v in row.values())
    await env.send("add", people("cy"), batch_seq=2, last=True)
    _, body = await env.get(path, session_id="7")
    assert body["data"][0]["stage"] == "processed"
    assert body["data"][0]["num_received"] == "3"
    async with env.http.get(f"{env.base}{path}", params={"session_id": "7"}) as resp:
        assert resp.status == 400 and assert_graph_error(await resp.json(), 190)


# -- throttling -------------------------------------------------------------------------


def usage(headers: Any) -> dict[str, Any]:
    value = orjson.loads(headers["X-Business-Use-Case-Usage"])
    (entries,) = value.values()
    return entries[0]  # type: ignore[no-any-return]


async def test_throttle_beyond_the_cap_per_ad_account(env: Env) -> None:
    env.graph.register_audience(AUD, ACCOUNT)
    env.graph.configure(rate_limit=(3, 10.0))
    pcts = []
    for seq in (1, 2, 3):
        status, _, headers = await env.send("add", people(f"p{seq}"), batch_seq=seq)
        assert status == 200
        pcts.append(usage(headers)["call_count"])
        env.clock.now += 1.0
    assert pcts == [33, 66, 100]
    status, body, headers = await env.send("add", people("p4"), batch_seq=4)  # t = 3
    err = assert_graph_error(body, 80003, 2446079)
    assert status == 400 and err["is_transient"] is True
    entry = usage(headers)
    assert entry["type"] == "custom_audience" and entry["call_count"] == 133
    assert entry["estimated_time_to_regain_access"] == 1  # 8 s, in whole minutes
    assert float(headers["X-Fake-Retry-After-S"]) == pytest.approx(8.0)
    assert list(orjson.loads(headers["X-Business-Use-Case-Usage"])) == ["77"]
    assert env.graph.log[-1].outcome == "throttled" and not env.graph.log[-1].applied
    # The throttled call counts too: calls at 1, 2, 3 still fill the window at t = 10.5.
    env.clock.now = 1010.5
    assert (await env.send("add", people("p4"), batch_seq=4))[0] == 400
    env.clock.now = 1013.5  # only the call at 10.5 is left in the window
    status, _, headers = await env.send("add", people("p4"), batch_seq=4)
    assert status == 200 and usage(headers)["call_count"] == 66
    # Another ad account has its own window.
    env.graph.register_audience("999", "act_88")
    assert (await env.send("add", people("q"), audience="999"))[0] == 200


# -- faults -----------------------------------------------------------------------------


async def test_dropped_connections_really_drop_and_half_are_applied(env: Env) -> None:
    env.graph.configure(drop_rate=1.0)
    batches = [people(f"p{i}") for i in range(8)]
    for i, rows in enumerate(batches, start=1):
        with pytest.raises(aiohttp.ClientConnectionError):
            await env.send("add", rows, batch_seq=i)
    outcomes = [e.outcome for e in env.graph.log]
    assert set(outcomes) == {"dropped_before", "dropped_after"}
    applied = set()
    for entry, rows in zip(env.graph.log, batches, strict=True):
        assert entry.applied == (entry.outcome == "dropped_after")
        if entry.applied:
            applied |= as_members(rows)
    assert env.graph.members(AUD) == applied
    sess = env.graph.session(AUD, 7)
    assert sess is not None and sess.acked == set()  # nothing was acknowledged
    env.graph.configure(drop_rate=0.0)
    assert (await env.send("add", batches[0], batch_seq=1))[0] == 200


async def test_a_batch_resent_after_a_lost_reply_counts_once(env: Env) -> None:
    env.graph.configure(drop_rate=1.0)
    rows = people("ann", "bob")
    for _ in range(10):  # seeded: the first "applied, then dropped" comes within a few
        with pytest.raises(aiohttp.ClientConnectionError):
            await env.send("add", rows, batch_seq=1)
        if env.graph.log[-1].outcome == "dropped_after":
            break
    assert env.graph.log[-1].outcome == "dropped_after"
    env.graph.configure(drop_rate=0.0)
    status, body, _ = await env.send("add", rows, batch_seq=1)
    assert status == 200 and body["num_received"] == 2
    status, body, _ = await env.send("add", people("cy"), batch_seq=2, last=True)
    assert status == 200 and body["num_received"] == 3
    sess = env.graph.session(AUD, 7)
    assert sess is not None and sess.num_received == 3 and sess.acked == {1, 2}
    assert env.graph.members(AUD) == as_members(rows + people("cy"))
    assert env.graph.violations == []  # a re-send after a failed attempt is allowed
    # Re-sending a batch that was acknowledged is what the fake must flag.
    await env.send("add", rows, session_id=8, batch_seq=1)
    await env.send("add", rows, session_id=8, batch_seq=1)
    again = env.graph.session(AUD, 8)
    assert again is not None and again.num_received == 2
    (violation,) = env.graph.violations
    assert "re-sent after it was acknowledged" in violation


async def test_error_rate_answers_500_without_applying(env: Env) -> None:
    env.graph.configure(error_rate=1.0)
    status, body, _ = await env.send("add", people("ann"))
    assert status == 500
    err = assert_graph_error(body, 2)
    assert err["is_transient"] is True and err["message"] == "Service temporarily unavailable"
    assert env.graph.members(AUD) == set() and env.graph.log[0].outcome == "error:2"


async def test_fail_next_scripts_errors_for_matching_requests(env: Env) -> None:
    env.graph.fail_next(
        1,
        code=100,
        subcode=1713230,
        user_title="Audience Upload Blocked",
        user_msg="Resolve the restrictions first.",
        match="remove",
    )
    env.graph.fail_next(1, code=368, http_status=403)
    status, _, _ = await env.send("add", people("ann"), session_id=1)
    assert status == 403  # the unmatched fault took the first request
    status, _, _ = await env.send("add", people("ann"), session_id=1)
    assert status == 200
    status, body, _ = await env.send("remove", people("ann"), session_id=2)
    err = assert_graph_error(body, 100, 1713230)
    assert status == 400 and err["error_user_msg"] == "Resolve the restrictions first."
    assert env.graph.members(AUD) == as_members(people("ann"))
    assert (await env.send("remove", people("ann"), session_id=2))[0] == 200
    assert env.graph.members(AUD) == set()
    assert [e.outcome for e in env.graph.log] == ["error:368", "ok", "error:100/1713230", "ok"]


async def test_fail_next_after_lets_requests_through_first(env: Env) -> None:
    env.graph.fail_next(1, code=100, subcode=1713230, after=2, match="add")
    statuses = [(await env.send("add", people("ann"), batch_seq=i))[0] for i in (1, 2, 3)]
    assert statuses == [200, 200, 400]
    assert (await env.send("add", people("ann"), batch_seq=3))[0] == 200
    assert [e.outcome for e in env.graph.log][2] == "error:100/1713230"


async def test_fail_next_applied_does_the_work_then_answers_the_error(env: Env) -> None:
    env.graph.fail_next(1, code=2, http_status=500, applied=True)
    status, body, _ = await env.send("replace", people("ann"), session_id=4)
    assert status == 500 and assert_graph_error(body, 2)
    first = env.graph.log[0]
    assert first.applied and first.outcome == "error:2"
    sess = env.graph.session(AUD, 4)
    assert sess is not None and sess.num_received == 1 and sess.acked == set()
    assert env.graph.operation_status(AUD) == "replace_in_progress"


async def test_hold_keeps_arrived_requests_unanswered_until_released(env: Env) -> None:
    arrived = asyncio.Event()

    def on_arrival(entry: Any) -> bool:
        arrived.set()
        return True

    env.graph.on_arrival = on_arrival
    env.graph.hold()
    sent = asyncio.ensure_future(env.send("add", people("ann")))
    await arrived.wait()
    for _ in range(20):  # let the loop run: the request stays unanswered
        await asyncio.sleep(0)
    assert not sent.done() and env.graph.log[0].outcome == "pending"
    assert not env.graph.log[0].applied
    env.graph.release()
    assert (await sent)[0] == 200 and env.graph.log[0].outcome == "ok"


async def test_hang_next_outlasts_a_client_timeout() -> None:
    graph = FakeGraph(FakeConfig(seed=1))
    await graph.start()
    timeout = aiohttp.ClientTimeout(total=0.1)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        env = Env(graph, Clock(), http, graph.base_url)
        graph.hang_next(1, 0.4)
        with pytest.raises(asyncio.TimeoutError):
            await env.send("add", people("ann"), fields={"appsecret_proof": "<omit>"})
        status, _, _ = await env.send("add", people("bob"), fields={"appsecret_proof": "<omit>"})
        assert status == 200
    await graph.close()  # waits for the hung handler to finish
    first = graph.log[0]
    assert first.outcome == "client_gone" and first.applied
    sess = graph.session(AUD, 7)
    assert sess is not None and sess.acked == {1}  # the hung one was never acknowledged


async def test_latency_is_drawn_from_the_configured_range(env: Env) -> None:
    env.graph.configure(latency=(0.05, 0.06))
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await env.send("add", people("ann")))[0] == 200
    assert loop.time() - start >= 0.05


# -- the log and violations -------------------------------------------------------------


async def test_log_records_order_and_acknowledgements(env: Env) -> None:
    for seq in (1, 2):
        await env.send("add", people(f"p{seq}"), batch_seq=seq)
    await env.send("add", people("p3"), batch_seq=3, last=True)
    log = env.graph.log
    assert [(e.seq, e.batch_seq, e.acked_after, e.outcome) for e in log] == [
        (1, 1, 0, "ok"),
        (2, 2, 1, "ok"),
        (3, 3, 2, "ok"),
    ]
    assert [e.last_batch_flag for e in log] == [False, False, True]
    assert all(e.session_id == 7 and e.rows == 1 and e.applied for e in log)
    assert all(e.ad_account == "act_default" for e in log)
    assert log[0].t == env.clock.now
    assert env.graph.violations == []


async def test_violations_for_out_of_order_sessions(env: Env) -> None:
    await env.send("add", people("a"), batch_seq=1)
    await env.send("add", people("c"), batch_seq=3, last=True)  # batch 2 never sent
    await env.send("add", people("b"), batch_seq=2)  # after the last flag
    v = env.graph.violations
    assert len(v) == 2
    assert "never sent: 2" in v[0] and "after the last-flagged batch" in v[1]
    # A last flag while an earlier batch arrived but was never acknowledged.
    env.graph.fail_next(1, code=2, http_status=500)
    assert (await env.send("add", people("x"), session_id=9, batch_seq=1))[0] == 500
    await env.send("add", people("y"), session_id=9, batch_seq=2, last=True)
    assert "before batches were acknowledged: 1" in env.graph.violations[-1]
    assert env.graph.log[-1].acked_after == 0


# -- admin endpoints and the command line -----------------------------------------------


async def test_admin_endpoints(env: Env) -> None:
    async def post(path: str, body: Any) -> tuple[int, Any]:
        async with env.http.post(f"{env.base}/_fake/{path}", json=body) as resp:
            return resp.status, await resp.json()

    assert (await post("audiences", {"audience_id": AUD, "ad_account": ACCOUNT}))[0] == 200
    status, shown = await post("config", {"rate_limit": [100, 60], "latency": [0, 0]})
    assert status == 200 and shown["rate_limit"] == [100, 60.0]
    assert "token" not in shown and "app_secret" not in shown
    assert env.graph.config.rate_limit == (100, 60.0)
    assert (await post("config", {"no_such": 1}))[0] == 400
    assert (await post("fail_next", {"n": 1, "code": 2650, "subcode": 1870148}))[0] == 200
    status, body, _ = await env.send("add", people("ann"), batch_seq=1)
    assert status == 400 and assert_graph_error(body, 2650, 1870148)
    rows = people("bob", "al")
    await env.send("add", rows, batch_seq=1)
    await env.send("add", people("x"), batch_seq=1)  # a duplicate: one violation
    async with env.http.get(f"{env.base}/_fake/log") as resp:
        log = await resp.json()
    assert [e["outcome"] for e in log] == ["error:2650/1870148", "ok", "ok"]
    assert log[1]["ad_account"] == ACCOUNT and log[1]["rows"] == 2
    async with env.http.get(f"{env.base}/_fake/violations") as resp:
        assert len(await resp.json()) == 1
    async with env.http.get(f"{env.base}/_fake/audiences/{AUD}") as resp:
        audience = await resp.json()
    assert audience["count"] == 3 and audience["ad_account"] == ACCOUNT
    assert audience["members"] == sorted(audience["members"], key=orjson.dumps)
    assert {tuple(m) for m in audience["members"]} == as_members(rows + people("x"))
    assert audience["operation_status"]["description"] == "Normal"
    assert (await post("reset", {}))[0] == 200
    assert env.graph.log == [] and env.graph.members(AUD) == set()


async def test_serve_runs_as_a_subprocess() -> None:
    code = "from engine.testing.fakegraph import serve; serve()"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        "--rate-limit",
        "50/60",
        "--latency-ms",
        "1-2",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        assert line.startswith("fake Graph API listening on http://127.0.0.1:")
        base = line.split()[-1]
        async with aiohttp.ClientSession() as http:
            env = Env(FakeGraph(), Clock(), http, base)
            status, _, headers = await env.send("add", people("ann"), last=True)
            assert status == 200 and usage(headers)["call_count"] == 2
            async with http.get(f"{base}/_fake/log") as resp:
                log = await resp.json()
        assert [(e["mode"], e["outcome"]) for e in log] == [("add", "ok")]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


async def test_a_session_id_reused_for_another_mode_is_a_violation(env: Env) -> None:
    await env.send("add", people("a"), session_id=4, last=True)
    status, _, _ = await env.send("remove", people("a"), session_id=4, last=True)
    assert status == 200 and env.graph.members(AUD) == set()
    (violation,) = env.graph.violations
    assert "session 4 reused for remove (was add)" in violation


def test_the_fake_holds_its_own_beliefs() -> None:
    """The fake imports nothing from the engine: Meta's keys, error codes and `is_transient`
    are its own tables, so a wrong belief in the engine cannot hide in the fake too. Its
    modules import one another and the throttle models, which import nothing of the engine."""
    package = fakegraph.__name__
    modules = sorted(Path(fakegraph.__file__).parent.glob("*.py"))
    assert {"__init__.py", "meta.py", "server.py"} <= {m.name for m in modules}
    imported: list[str] = []
    for module in [*modules, Path(throttle.__file__)]:
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                # Every module sits at the package's top level: level 1 is the package.
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                imported.append(f"{parent}.{node.module}" if node.module else parent)
            elif isinstance(node, ast.ImportFrom):
                imported.append(node.module or "")
            elif isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
    engine_imports = [name for name in imported if name.split(".")[0] == "engine"]
    assert engine_imports, "the relative imports were not seen"
    outside = [
        name
        for name in engine_imports
        if name not in (package, throttle.__name__) and not name.startswith(package + ".")
    ]
    assert outside == []


def test_the_fake_and_the_engine_read_meta_alike() -> None:
    """Two readings of the same facts, written apart, agree: the keys, the replace subcodes."""
    assert set(normalize.KEYS) == fakegraph.MULTI_KEYS
    assert set(fakegraph.SINGLE_KEY_SCHEMAS) >= set(normalize.SINGLE_KEY_SCHEMAS)
    for name in (
        "REPLACE_ERROR_CODE",
        "REPLACE_IN_PROGRESS",
        "REPLACE_NO_FIRST_BATCH",
        "REPLACE_RETRY_NEW_SESSION",
        "REPLACE_TIMED_OUT",
        "REPLACE_FINISHED",
        "REPLACE_TOO_LARGE",
    ):
        assert getattr(fakegraph, name) == getattr(errors, name), name
