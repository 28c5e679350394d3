"""The HTTP client's wire format and error parsing, against a small recording server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from hypothesis import given
from hypothesis import strategies as st

from engine._errors import ApiError, TransportError
from engine._graph import client as transport
from engine._graph.client import GraphClient, appsecret_proof, multipart_body


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    fields: dict[str, str]


@dataclass
class Graph:
    """Answers every request with `reply(request)` and records what arrived."""

    base: str = ""
    requests: list[Recorded] = field(default_factory=list)
    reply: Callable[[web.Request], web.StreamResponse] = lambda r: web.json_response({})


@pytest.fixture
async def graph() -> AsyncIterator[Graph]:
    state = Graph()

    async def handler(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        state.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                {k: str(v) for k, v in form.items()},
            )
        )
        return state.reply(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app) as server:
        state.base = str(server.make_url("")).rstrip("/")
        yield state


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("mode", "edge", "method_field"),
    [("add", "users", None), ("remove", "users", "DELETE"), ("replace", "usersreplace", None)],
)
async def test_fields_go_in_the_body_never_the_url(
    graph: Graph, http: aiohttp.ClientSession, mode: Any, edge: str, method_field: str | None
) -> None:
    client = GraphClient(http, access_token="tok-SECRET", app_secret="shh", api_base=graph.base)
    graph.reply = lambda r: web.json_response({"audience_id": "123", "num_received": 2})
    payload = orjson.dumps({"schema": ["EMAIL"], "is_raw": True, "data": [["a"], ["b"]]})
    reply = await client.upload(
        "123", mode, payload, {"session_id": 9, "batch_seq": 1, "last_batch_flag": True}
    )
    assert reply.body["num_received"] == 2
    (call,) = graph.requests
    assert (call.method, call.path, call.query) == ("POST", f"/v25.0/123/{edge}", {})
    fields = call.fields
    assert orjson.loads(fields["payload"])["data"] == [["a"], ["b"]]
    assert orjson.loads(fields["session"]) == {
        "session_id": 9,
        "batch_seq": 1,
        "last_batch_flag": True,
    }
    assert fields["access_token"] == "tok-SECRET"
    assert fields["appsecret_proof"] == appsecret_proof("tok-SECRET", "shh")
    assert fields.get("method") == method_field
    assert "SECRET" not in repr(client)


def test_appsecret_proof_is_hmac_sha256_hex() -> None:
    # HMAC-SHA256(key=b"secret", msg=b"token"), computed independently
    assert appsecret_proof("token", "secret") == (
        "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
    )


def test_multipart_boundary_never_occurs_in_a_value() -> None:
    body, ctype = multipart_body({"a": b"x" * 100, "b": b""})
    boundary = ctype.split("boundary=")[1].encode()
    assert body.count(boundary) == 3  # two parts and the closing line


@given(
    pieces=st.lists(st.binary(max_size=9).map(lambda b: b.replace(b"\x00", b"ab")), max_size=8),
    boundary=st.sampled_from([b"ab", b"aba", b"abcab"]),
)
def test_a_boundary_is_found_across_the_pieces_as_in_them_joined(
    pieces: list[bytes], boundary: bytes
) -> None:
    assert transport._holds(pieces, boundary) == (boundary in b"".join(pieces))


def test_body_parts_join_into_the_multipart_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # A value that holds the first boundary across two of its parts makes a second one.
    draws = iter([b"\x01" * 16, b"\x02" * 16])
    monkeypatch.setattr(transport.os, "urandom", lambda n: next(draws))
    first = (b"\x01" * 16).hex().encode()
    big = b"x" * transport._OWN_WRITE
    fields = {"payload": (b"{" + first[:5], first[5:] + big, b"}"), "session": b"{}"}
    parts, ctype = transport.multipart_parts(fields)
    boundary = (b"\x02" * 16).hex().encode()
    assert ctype == f"multipart/form-data; boundary={boundary.decode()}"
    assert b"".join(parts) == (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="payload"\r\n\r\n{'
        + first + big + b"}\r\n--" + boundary
        + b'\r\nContent-Disposition: form-data; name="session"\r\n\r\n{}\r\n--'
        + boundary + b"--\r\n"
    )  # fmt: skip
    assert len(parts) == 3 and parts[1] == first[5:] + big  # the big part is written alone


@pytest.mark.parametrize(
    ("status", "body", "code", "subcode", "transient", "throttle"),
    [
        (
            400,
            {
                "error": {
                    "code": 80003,
                    "error_subcode": 2446079,
                    "message": "too many",
                    "is_transient": True,
                }
            },
            80003,
            2446079,
            True,
            True,
        ),
        (
            400,
            {
                "error": {
                    "code": 100,
                    "error_subcode": 1713230,
                    "message": "blocked",
                    "error_user_title": "Audience Upload Blocked",
                    "error_user_msg": "flagged",
                }
            },
            100,
            1713230,
            False,
            False,
        ),
        (
            500,
            {"error": {"code": 2, "message": "down", "is_transient": True}},
            2,
            None,
            True,
            False,
        ),
        (502, None, None, None, True, False),
        (
            400,
            {"error": {"code": 2650, "error_subcode": 1870145, "message": "in progress"}},
            2650,
            1870145,
            True,
            False,
        ),
        (400, {"error": {"code": 190, "message": "bad token"}}, 190, None, False, False),
        # An HTTP 5xx is transient whatever code it carries, unless the code is permanent;
        # a permanent code stays permanent though the reply calls itself transient.
        (503, {"error": {"code": 3, "message": "capability"}}, 3, None, True, False),
        (500, {"error": {"code": 190, "message": "bad token"}}, 190, None, False, False),
        (
            400,
            {"error": {"code": 368, "message": "blocked", "is_transient": True}},
            368,
            None,
            False,
            False,
        ),
        (403, {"error": {"code": 294, "message": "no permission"}}, 294, None, False, False),
    ],
)
async def test_errors_are_typed(
    graph: Graph,
    http: aiohttp.ClientSession,
    status: int,
    body: Any,
    code: int | None,
    subcode: int | None,
    transient: bool,
    throttle: bool,
) -> None:
    client = GraphClient(http, access_token="t", api_base=graph.base)
    if body is None:
        graph.reply = lambda r: web.Response(status=status, text="<html>Sorry</html>")
    else:
        graph.reply = lambda r: web.json_response(
            body, status=status, headers={"X-Business-Use-Case-Usage": '{"1": []}'}
        )
    with pytest.raises(ApiError) as caught:
        await client.upload("1", "add", b"{}", {"session_id": 1, "batch_seq": 1})
    err = caught.value
    if body is not None:
        assert err.headers["X-Business-Use-Case-Usage"] == '{"1": []}'
    assert (err.info.code, err.info.subcode) == (code, subcode)
    assert err.is_transient is transient
    assert err.is_throttle is throttle
    assert err.info.http_status == status
    if code == 100:
        assert err.info.user_title == "Audience Upload Blocked"
        assert "flagged" in str(err)


async def test_a_dropped_connection_is_a_transport_error(
    graph: Graph, http: aiohttp.ClientSession
) -> None:
    def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    graph.reply = drop
    client = GraphClient(http, access_token="tok-SECRET", api_base=graph.base)
    with pytest.raises(TransportError) as caught:
        await client.upload("1", "add", b"{}", {})
    assert caught.value.maybe_applied
    assert "SECRET" not in str(caught.value)


async def test_a_refused_connection_was_never_applied(http: aiohttp.ClientSession) -> None:
    client = GraphClient(http, access_token="t", api_base="http://127.0.0.1:9")
    with pytest.raises(TransportError) as caught:
        await client.upload("1", "add", b"{}", {})
    assert not caught.value.maybe_applied


async def test_session_status(graph: Graph, http: aiohttp.ClientSession) -> None:
    def sessions(request: web.Request) -> web.StreamResponse:
        if request.query["session_id"] == "5":
            return web.json_response({"data": [{"session_id": "5", "num_received": "10"}]})
        return web.json_response({"data": []})

    graph.reply = sessions
    client = GraphClient(http, access_token="t", api_base=graph.base)
    assert await client.session_status("1", 5) == {"session_id": "5", "num_received": "10"}
    assert await client.session_status("1", 6) is None
    assert graph.requests[0].query["access_token"] == "t"


# --- failures a loopback server cannot stage on demand: aioresponses raises them -----------

URL = "https://graph.example/v25.0/1/users"


@pytest.mark.parametrize(
    ("exception", "maybe_applied", "says"),
    [
        (TimeoutError(), True, "timed out"),
        (aiohttp.ServerDisconnectedError(), True, "ServerDisconnectedError"),
        (aiohttp.ClientPayloadError("cut"), True, "ClientPayloadError"),
        (
            aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey(
                    "graph.example", 443, True, None, None, None, None
                ),
                OSError(111, "refused"),
            ),
            False,
            "cannot connect",
        ),
    ],
)
async def test_transport_failures_say_whether_the_batch_may_have_landed(
    http: aiohttp.ClientSession, exception: Exception, maybe_applied: bool, says: str
) -> None:
    client = GraphClient(http, access_token="secret-token", api_base="https://graph.example")
    with aioresponses() as mocked:
        mocked.post(URL, exception=exception)
        with pytest.raises(TransportError) as caught:
            await client.upload("1", "add", b"{}", {"session_id": 1, "batch_seq": 1})
    assert caught.value.maybe_applied is maybe_applied
    assert says in str(caught.value)
    assert "secret-token" not in str(caught.value)


@pytest.mark.parametrize(
    "body", [b"<html>Sorry, something went wrong</html>", b"", b'{"error": 1}', b"[1]"]
)
async def test_a_200_without_a_usable_body_is_an_unknown_outcome(
    graph: Graph, http: aiohttp.ClientSession, body: bytes
) -> None:
    client = GraphClient(http, access_token="t", api_base=graph.base)
    graph.reply = lambda r: web.Response(status=200, body=body)
    with pytest.raises(TransportError, match="unreadable reply") as caught:
        await client.upload("1", "add", b"{}", {"session_id": 1, "batch_seq": 1})
    assert caught.value.maybe_applied is True
