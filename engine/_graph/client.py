"""The Graph API transport: one keep-alive aiohttp session, form bodies, typed errors.

Everything secret goes in the request body, never the URL, so no proxy or access log
ever sees the token; the body is multipart built by hand because the payload JSON
needs no escaping there (url-encoding a 5 MB payload costs more than hashing it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import aiohttp.abc
import aiohttp.payload
import orjson

from .._errors import ApiError, ErrorInfo, TransportError

Mode = Literal["add", "remove", "replace"]

DEFAULT_API_BASE = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v25.0"


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: the JSON body and the headers (usage figures live there)."""

    body: dict[str, Any]
    headers: Mapping[str, str]


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """Hex HMAC-SHA256 of the token keyed by the app secret (Meta's securing-requests page)."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def multipart_body(fields: Mapping[str, bytes | Sequence[bytes]]) -> tuple[bytes, str]:
    """Encode form fields as multipart/form-data; returns (body, content type). A value may
    come in parts: they are joined straight into the body, never copied on their own."""
    parts, ctype = multipart_parts(fields)
    return b"".join(parts), ctype


# Parts of a body at least this big are written on their own; smaller runs are joined, so a
# request takes a few writes whatever its fields.
_OWN_WRITE = 64 * 1024


def multipart_parts(fields: Mapping[str, bytes | Sequence[bytes]]) -> tuple[list[bytes], str]:
    """`multipart_body` as the parts that make it, for a request to write one after the other:
    a batch's payload (megabytes with 8 keys) then goes out without a copy of it in memory."""
    while True:
        boundary = os.urandom(16).hex().encode()
        parts: list[bytes] = []
        run: list[bytes] = []  # small pieces not yet joined
        clash = False
        for name, value in fields.items():
            pieces = (value,) if isinstance(value, bytes) else value
            clash = clash or _holds(pieces, boundary)
            run += [b"--", boundary, b'\r\nContent-Disposition: form-data; name="']
            run += [name.encode(), b'"\r\n\r\n']
            for piece in pieces:
                if len(piece) >= _OWN_WRITE:
                    parts += [b"".join(run), piece]
                    run = []
                else:
                    run.append(piece)
            run.append(b"\r\n")
        run += [b"--", boundary, b"--\r\n"]
        parts.append(b"".join(run))
        # Only the delimiters put in hold the boundary: no value does, even across its parts.
        # Each value sits between CRLFs, which a hex boundary cannot span.
        if not clash:
            return parts, f"multipart/form-data; boundary={boundary.decode()}"


def _holds(pieces: Sequence[bytes], boundary: bytes) -> bool:
    """Whether the pieces joined hold `boundary`, without joining them: one inside a piece,
    or one across a seam, which starts in the last len-1 bytes before it and ends in the
    first len-1 after."""
    n = len(boundary) - 1
    tail = b""
    for piece in pieces:
        if boundary in piece or boundary in tail + piece[:n]:
            return True
        tail = (tail + piece[-n:])[-n:]
    return False


class _PartsPayload(aiohttp.payload.Payload):
    """A request body given as parts, written in turn (aiohttp's writer keeps to the length)."""

    _value: list[bytes]
    _autoclose = True  # bytes in memory, nothing to close; may be written again (a redirect)

    def __init__(self, parts: list[bytes], content_type: str) -> None:
        super().__init__(parts, content_type=content_type)
        self._size = sum(map(len, parts))

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        for part in self._value:
            await writer.write(part)


class GraphClient:
    """Sends upload requests for one access token. Raises ApiError or TransportError."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        access_token: str,
        app_secret: str | None = None,
        api_base: str = DEFAULT_API_BASE,
        api_version: str = DEFAULT_API_VERSION,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self._http = session
        self._timeout = timeout
        self._base = f"{api_base.rstrip('/')}/{api_version}"
        self._auth = {"access_token": access_token.encode()}
        if app_secret:
            self._auth["appsecret_proof"] = appsecret_proof(access_token, app_secret).encode()

    def __repr__(self) -> str:  # never show the token
        return f"GraphClient({self._base!r})"

    async def upload(
        self,
        audience_id: str,
        mode: Mode,
        payload: bytes | Sequence[bytes],
        session: Mapping[str, Any],
    ) -> Reply:
        """One batch: `payload` is the payload object already serialized as JSON (or its parts)."""
        edge = "usersreplace" if mode == "replace" else "users"
        fields = {"payload": payload, "session": orjson.dumps(session), **self._auth}
        if mode == "remove":
            # POST with method=DELETE: a real DELETE puts the fields in the URL (the SDK's bug).
            fields["method"] = b"DELETE"
        parts, ctype = multipart_parts(fields)
        return await self._request(
            "POST", f"{self._base}/{audience_id}/{edge}", data=_PartsPayload(parts, ctype)
        )

    async def session_status(self, audience_id: str, session_id: int) -> dict[str, Any] | None:
        """Meta's record of an upload session, or None if it never saw one."""
        # A GET has no body, so the token goes in the query; URLs are never logged.
        params = {"session_id": str(session_id), **{k: v.decode() for k, v in self._auth.items()}}
        reply = await self._request("GET", f"{self._base}/{audience_id}/sessions", params=params)
        data = reply.body.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return data[0]
        return None

    async def operation_status(self, audience_id: str) -> str:
        """The audience's `operation_status` description, e.g. "Normal" or "replace_in_progress"."""
        params = {"fields": "operation_status", **{k: v.decode() for k, v in self._auth.items()}}
        reply = await self._request("GET", f"{self._base}/{audience_id}", params=params)
        status = reply.body.get("operation_status")
        if isinstance(status, dict):
            return str(status.get("description", "unknown"))
        return "unknown"

    async def read(self, path: str, params: Mapping[str, str]) -> Reply:
        """GET a Graph object or edge (`path` after the version, e.g. "123" or
        "act_1/customaudiences"); the token goes in the query, as a GET has no body."""
        query = {**params, **{k: v.decode() for k, v in self._auth.items()}}
        return await self._request("GET", f"{self._base}/{path}", params=query)

    async def create(self, path: str, fields: Mapping[str, str]) -> Reply:
        """POST a form to a Graph edge, the token in the body."""
        form = {k: v.encode() for k, v in fields.items()}
        parts, ctype = multipart_parts({**form, **self._auth})
        return await self._request("POST", f"{self._base}/{path}", data=_PartsPayload(parts, ctype))

    async def _request(self, method: str, url: str, **kwargs: Any) -> Reply:
        try:
            if self._timeout is not None:
                kwargs["timeout"] = self._timeout
            async with self._http.request(method, url, **kwargs) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect: {exc.os_error}", maybe_applied=False) from None
        except TimeoutError:
            raise TransportError("request timed out", maybe_applied=True) from None
        except aiohttp.ClientError as exc:
            # Only the class name: aiohttp messages can hold the URL, and a GET's URL the token.
            name = type(exc).__name__
            raise TransportError(f"connection failed: {name}", maybe_applied=True) from None
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if status == 200 and isinstance(body, dict) and "error" not in body:
            return Reply(body, headers)
        if status == 200:
            raise TransportError("unreadable reply", maybe_applied=True)
        raise ApiError(ErrorInfo.from_graph(body, status), headers)
