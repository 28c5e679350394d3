"""An offline fake of the Graph API's Custom Audience upload edges (an aiohttp server).

It stands in for Meta in the tests, the demo, dry runs and benchmarks, and lets users test
their own integration offline (`python -m engine fake-graph`). It keeps Meta's rules in its
own tables, not the engine's (see docs/protocol.md for what the engine does). What it models:

* `POST /{v}/{audience}/users` (add), the same with `method=DELETE` or a real `DELETE`
  (remove), `POST /{v}/{audience}/usersreplace` (replace); `payload` and `session` are
  JSON strings in a multipart or url-encoded body (a JSON body is accepted too).
* `GET /{v}/{audience}/sessions?session_id=N` and `GET /{v}/{audience}?fields=operation_status`.
  `operation_status` is `{"code": 200, "description": "Normal"}` or, while a replace runs
  (or settles), `{"code": 300, "description": "replace_in_progress"}`; 300 is this fake's
  choice, Meta documents only the descriptions.
* Meta-shaped errors: 190 token, 100 appsecret_proof / bad parameter / row shape /
  more than 10,000 rows, 194 missing parameter, 2650 replace subcodes, 80003 throttling.
* Membership: the audience holds `tuple(row)` for every valid row (single-key rows become
  1-tuples), so tests can compare it with what the engine meant to send.
* Faults: latency, random 5xx, dropped connections, scripted errors, slow answers and a
  per-ad-account sliding-window throttle with the `X-Business-Use-Case-Usage` header.
* A request log and a list of session-invariant violations (docs/protocol.md) for tests.

Admin endpoints for a fake run as a subprocess live under `/_fake/`. Tokens are never
logged: the access log is off (GET URLs carry the token) and the log keeps no token.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import math
import random
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

Mode = Literal["add", "remove", "replace"]

MAX_ROWS = 10_000
REPLACE_WINDOW_S = 90 * 60  # Meta's replace window, before `time_scale`
BUC_HEADER = "X-Business-Use-Case-Usage"
RETRY_HEADER = "X-Fake-Retry-After-S"
NORMAL = "Normal"
REPLACING = "replace_in_progress"
THROTTLE_MESSAGE = (
    "(#80003) There have been too many calls to this ad-account. Wait a bit and try again. "
    "For more info, please refer to "
    "https://developers.facebook.com/docs/graph-api/overview/rate-limiting#custom-audience."
)

# Meta's rules as this fake holds them, written from Meta's endpoint pages and kept apart
# from the engine's own tables on purpose: the tests must not grade the engine by its own
# beliefs. Nothing here is imported from the engine.

# Single-key schemas and the multi-key column each one stands for (the users edge lists the
# first three; Meta's guide also uploads with a bare "EXTERN_ID" schema).
SINGLE_KEY_SCHEMAS = {
    "EMAIL_SHA256": "EMAIL",
    "PHONE_SHA256": "PHONE",
    "MOBILE_ADVERTISER_ID": "MADID",
    "EXTERN_ID": "EXTERN_ID",
}
# The multi-key types the users and usersreplace edges list, and the value column of
# value-based audiences.
MULTI_KEYS = frozenset(
    {
        "EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT",
        "ST", "ZIP", "MADID", "COUNTRY", "LOOKALIKE_VALUE",
    }
)  # fmt: skip

# Every usersreplace error comes as code 2650, told apart by its subcode.
REPLACE_ERROR_CODE = 2650
REPLACE_IN_PROGRESS = 1870145
REPLACE_NO_FIRST_BATCH = 1870147
REPLACE_RETRY_NEW_SESSION = 1870148
REPLACE_TIMED_OUT = 1870158
REPLACE_FINISHED = 1870159
REPLACE_TOO_LARGE = 1870144
# Meta's error bodies carry `is_transient` without saying when it is set. This fake sets it
# for the codes Meta's error pages answer with "wait and retry": the unknown and service
# errors (1, 2) and the rate limits (application, user, page, custom and ad-account ones).
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, 80000, 80003, 80004, 80014})

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A mobile advertiser id: hex with hyphens (IDFA/AAID are UUIDs), 16..64 hex digits.
_MADID = re.compile(r"[0-9a-f-]+")

_DEFAULT_MESSAGES = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    100: "(#100) Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    194: "(#194) Missing at least one required parameter",
    200: "(#200) Permissions error",
    368: "The action attempted has been deemed abusive or is otherwise disallowed",
    2635: "(#2635) You are calling a deprecated version of the Ads API.",
    2650: "(#2650) Failed to update the custom audience",
    80003: THROTTLE_MESSAGE,
}

_REPLACE_TEXTS = {
    REPLACE_IN_PROGRESS: (
        "Audience Update In Progress",
        "This audience is being updated. Wait until its availability is Normal, then try again.",
    ),
    REPLACE_NO_FIRST_BATCH: (
        "Invalid Upload Batch for Replace",
        "The first batch of this replace session was not detected: batch_seq must start at 1.",
    ),
    REPLACE_TIMED_OUT: (
        "Replace Session Timed Out",
        "The replace session passed its 90-minute limit. The audience is replaced with what "
        "you uploaded so far; add the rest with the add operation once the replace finishes.",
    ),
    REPLACE_FINISHED: (
        "Replace Session Finished",
        "A batch with last_batch_flag true was already received for this session. Add the "
        "rest with the add operation once the replace finishes.",
    ),
    REPLACE_RETRY_NEW_SESSION: (
        "Something Went Wrong",
        "Your customer list custom audience wasn't fully updated. Consider trying again.",
    ),
    REPLACE_TOO_LARGE: (
        "DFCA Size Not Supported For Replace",
        "Replace is not supported for audiences of 100 million or more. Use add or remove.",
    ),
}


@dataclass
class FakeConfig:
    """Everything tunable; faults can also change at runtime (`FakeGraph.configure`)."""

    token: str | None = field(default=None, repr=False)  # None: any non-empty token passes
    app_secret: str | None = field(default=None, repr=False)  # set: appsecret_proof required
    latency: tuple[float, float] = (0.0, 0.0)  # uniform seconds per upload request
    error_rate: float = 0.0  # probability of an HTTP 500 (code 2), not applied
    drop_rate: float = 0.0  # probability of dropping the connection, half after applying
    rate_limit: tuple[int, float] | None = None  # (calls, window seconds) per ad account
    time_scale: float = 1.0  # Meta durations (the 90-minute replace window) times this
    lean: bool = False  # count rows only: no cell checks, no membership (benchmarks)
    seed: int = 0
    replace_settle_s: float = 0.0  # replace_in_progress lasts this long after the last flag
    # Well-formed cells starting with this count their row as invalid: entries Meta cannot
    # use though the engine cannot tell (its num_invalid_entries). "" (default): none.
    unusable_prefix: str = ""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)


@dataclass
class LogEntry:
    """One upload request as the fake saw it (appended on arrival, completed on answer)."""

    seq: int  # arrival order, from 1
    t: float  # config.clock() on arrival
    mode: str  # "add" | "remove" | "replace"
    audience_id: str
    ad_account: str
    session_id: int | None
    batch_seq: int | None
    last_batch_flag: bool
    rows: int
    # "ok" | "error:<code>/<subcode>" | "dropped_before" | "dropped_after" | "throttled"
    # | "client_gone" (answered after the client had hung up: applied, never acknowledged)
    # | "pending" (still being answered)
    outcome: str = "pending"
    applied: bool = False
    acked_after: int = 0  # batches of this session acknowledged before this one arrived


@dataclass
class FakeSession:
    """Meta's record of one upload session. Read it, don't change it."""

    audience_id: str
    session_id: int
    kind: str  # "add" | "remove" | "replace"
    started: float  # clock
    started_wall: float
    estimated_num_total: int | None = None
    acked: set[int] = field(default_factory=set)  # batch_seq answered "ok"
    counted: set[int] = field(default_factory=set)  # batch_seq counted in num_received
    num_received: int = 0
    num_invalid: int = 0
    ended: bool = False  # last_batch_flag seen (or the replace timed out)
    last_seq: int | None = None
    ended_wall: float | None = None
    timed_out: bool = False
    failed: bool = False  # a replace that answered 1870148: over, the audience unchanged
    pending: set[tuple[Any, ...]] = field(default_factory=set)  # replace rows, not yet live


@dataclass
class _Audience:
    audience_id: str
    ad_account: str
    members: set[tuple[Any, ...]] = field(default_factory=set)
    replace_session: int | None = None  # the replace running now
    busy_until: float | None = None  # settling after a replace's last flag

    @property
    def status(self) -> str:
        return REPLACING if self.replace_session is not None or self.busy_until else NORMAL


class _Fail(Exception):
    """A Meta-shaped error answer; raised inside request handling, turned into a reply."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        subcode: int | None = None,
        http_status: int = 400,
        user_title: str | None = None,
        user_msg: str | None = None,
        is_transient: bool | None = None,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message or _DEFAULT_MESSAGES.get(code, f"(#{code}) Error")
        self.subcode = subcode
        self.http_status = http_status
        self.user_title = user_title
        self.user_msg = user_msg
        if is_transient is None:
            is_transient = code in TRANSIENT_CODES
        self.is_transient = is_transient
        self.outcome = outcome or f"error:{code}" + (f"/{subcode}" if subcode is not None else "")

    def body(self, trace: str) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": "OAuthException", "code": self.code}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        if self.user_title is not None:
            err["error_user_title"] = self.user_title
        if self.user_msg is not None:
            err["error_user_msg"] = self.user_msg
        err["is_transient"] = self.is_transient
        err["fbtrace_id"] = trace
        return {"error": err}


def _replace_error(subcode: int) -> _Fail:
    title, msg = _REPLACE_TEXTS[subcode]
    return _Fail(REPLACE_ERROR_CODE, subcode=subcode, user_title=title, user_msg=msg)


def _bad(message: str) -> _Fail:
    return _Fail(100, f"(#100) {message}")


@dataclass
class _Scripted:
    """A queued `fail_next` answer; `match` limits it to one audience id or one mode.
    `fail` None lets the request through: it counts down `fail_next(after=...)`.
    `applied`: the request is applied first, and only then answered with `fail`."""

    fail: _Fail | None
    match: str | None
    applied: bool = False


@dataclass
class _Upload:
    """The parsed fields of one upload request; `error` is the first problem found."""

    mode: Mode
    audience_id: str
    token: str | None = None
    proof: str | None = None
    session_id: int | None = None
    batch_seq: int | None = None
    last: bool = False
    estimated: int | None = None
    keys: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    n_rows: int = 0
    error: _Fail | None = None

    def fail(self, error: _Fail) -> None:
        if self.error is None:
            self.error = error


def _positive_int(value: Any) -> int | None:
    """Meta's int64 fields arrive as JSON numbers (or numeric strings from some clients)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _json_field(fields: dict[str, Any], name: str, up: _Upload) -> dict[str, Any] | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        up.fail(_Fail(194, f"(#194) The parameter {name} is required"))
        return None
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        up.fail(_bad(f"param {name} must be a JSON object"))
        return None
    return value


def _parse_session(fields: dict[str, Any], up: _Upload) -> None:
    session = _json_field(fields, "session", up)
    if session is None:
        return
    up.session_id = _positive_int(session.get("session_id"))
    up.batch_seq = _positive_int(session.get("batch_seq"))
    last = session.get("last_batch_flag", False)
    up.last = last is True
    est = session.get("estimated_num_total")
    up.estimated = _positive_int(est)
    if up.session_id is None:
        up.fail(_bad("session_id must be a positive 64-bit integer"))
    elif up.batch_seq is None:
        up.fail(_bad("batch_seq must be a positive integer"))
    elif not isinstance(last, bool):
        up.fail(_bad("last_batch_flag must be a boolean"))
    elif est is not None and up.estimated is None and est != 0:
        up.fail(_bad("estimated_num_total must be an integer"))


def _parse_payload(fields: dict[str, Any], up: _Upload, lean: bool) -> None:
    payload = _json_field(fields, "payload", up)
    if payload is None:
        return
    schema = payload.get("schema")
    single = isinstance(schema, str)
    if isinstance(schema, str) and schema in SINGLE_KEY_SCHEMAS:
        up.keys = [SINGLE_KEY_SCHEMAS[schema]]
    elif isinstance(schema, list) and schema and all(isinstance(k, str) for k in schema):
        unknown = [k for k in schema if k not in MULTI_KEYS]
        if unknown:
            up.fail(_bad(f"Invalid schema key: {unknown[0]}"))
            return
        up.keys = list(schema)
        if payload.get("is_raw") is not True:
            up.fail(_bad("is_raw must be true for a multi-key schema"))
            return
    else:
        up.fail(_bad(f"Invalid schema: {str(schema)[:100]}"))
        return
    data = payload.get("data")
    if not isinstance(data, list):
        up.fail(_bad("Data is missing or does not match schema"))
        return
    up.n_rows = len(data)
    if up.n_rows > MAX_ROWS:
        up.fail(_bad(f"Too many users in one request: {up.n_rows} (at most {MAX_ROWS})"))
        return
    if lean:  # benchmarks: the row count is all that matters
        return
    width = len(up.keys)
    rows: list[tuple[Any, ...]] = []
    for row in data:
        if single and not isinstance(row, list):
            rows.append((row,))  # a flat single-key list: ["<hash>", ...]
        elif isinstance(row, list) and len(row) == width:
            rows.append(tuple(row))
        else:
            up.fail(_bad("Data is missing or does not match schema"))
            return
    up.rows = rows


def _cell_problem(key: str, value: Any) -> str | None:
    """Why Meta would not use this cell, or None; "" (unknown) is always fine."""
    if key == "LOOKALIKE_VALUE":
        if value == "":
            return None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return "LOOKALIKE_VALUE is not a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "LOOKALIKE_VALUE is not a number"
        return None if math.isfinite(value) and value >= 0 else "LOOKALIKE_VALUE is negative"
    if key == "EXTERN_ID":
        return None if isinstance(value, str | int) and not isinstance(value, bool) else "bad id"
    if not isinstance(value, str):
        return f"{key} is not a string"
    if value == "":
        return None
    if key == "MADID":
        if _SHA256.fullmatch(value):
            return "MADID must be sent unhashed"  # the official SDKs' bug
        if value != value.lower():
            return "MADID must be lowercase"
        digits = len(value) - value.count("-")
        if not _MADID.fullmatch(value) or not 16 <= digits <= 64:
            return "not a mobile advertiser id"
        return None
    if not _SHA256.fullmatch(value):
        return f"{key} is not a lowercase hex SHA-256 digest"
    return None


def _row_problem(keys: list[str], row: tuple[Any, ...]) -> tuple[str, str] | None:
    """(sample key, reason) for a row Meta would count as invalid, else None."""
    for key, value in zip(keys, row, strict=True):
        reason = _cell_problem(key, value)
        if reason is not None:
            sample = value if isinstance(value, str) else orjson.dumps(value).decode()
            return sample[:200], reason
    # LOOKALIKE_VALUE alone names nobody, so it does not save an otherwise empty row.
    if all(v == "" for k, v in zip(keys, row, strict=True) if k != "LOOKALIKE_VALUE"):
        return "", "all identifiers are empty"
    return None


class FakeGraph:
    """The fake Graph API: state, faults, and the aiohttp app serving them."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._rng = random.Random(self.config.seed)
        # Test hooks, called with the request's log entry on arrival (after any latency,
        # before anything is applied) and once applied; returning False drops the
        # connection there, so the client never gets a reply.
        self.on_arrival: Callable[[LogEntry], bool] | None = None
        self.on_applied: Callable[[LogEntry], bool] | None = None
        self._open = asyncio.Event()  # cleared by hold(): requests wait before an answer
        self._open.set()
        self.reset()

    # -- state and accessors -----------------------------------------------------------

    def reset(self) -> None:
        """Forget audiences, sessions, the log, queued faults and throttle windows."""
        self._audiences: dict[str, _Audience] = {}
        self._sessions: dict[tuple[str, int], FakeSession] = {}
        self._arrived: dict[tuple[str, int], set[int]] = {}  # batch_seq seen, for gap checks
        self._calls: dict[str, deque[float]] = {}
        self._scripted: list[_Scripted] = []
        self._hangs: list[float] = []
        self._log: list[LogEntry] = []
        self._violations: list[str] = []
        self._traces = 0
        self._rng.seed(self.config.seed)

    @property
    def log(self) -> list[LogEntry]:
        return self._log

    @property
    def violations(self) -> list[str]:
        return self._violations

    def register_audience(self, audience_id: str, ad_account: str) -> None:
        """Create (or move) an audience under an ad account: the throttle key."""
        aud = self._audiences.get(audience_id)
        if aud is None:
            self._audiences[audience_id] = _Audience(audience_id, ad_account)
        else:
            aud.ad_account = ad_account

    def members(self, audience_id: str) -> set[tuple[Any, ...]]:
        aud = self._audiences.get(audience_id)
        if aud is None:
            return set()
        self._refresh(aud)
        return set(aud.members)

    def operation_status(self, audience_id: str) -> str:
        """ "Normal" or "replace_in_progress"."""
        aud = self._audiences.get(audience_id)
        if aud is None:
            return NORMAL
        self._refresh(aud)
        return aud.status

    def session(self, audience_id: str, session_id: int) -> FakeSession | None:
        aud = self._audiences.get(audience_id)
        if aud is not None:
            self._refresh(aud)
        return self._sessions.get((audience_id, session_id))

    # -- faults ------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        code: int,
        subcode: int | None = None,
        http_status: int = 400,
        message: str | None = None,
        user_title: str | None = None,
        user_msg: str | None = None,
        match: str | None = None,
        is_transient: bool | None = None,
        after: int = 0,
        applied: bool = False,
    ) -> None:
        """The next `n` upload requests (for audience id or mode `match`, when given)
        answer this error without being applied, once `after` more of them have passed
        (so a test can fail a job midway without watching it). `is_transient` defaults
        by code. With `applied`, each is applied first and answered with the error after
        (a 5xx that Meta sends once the work is done: the client cannot tell). A replace
        subcode of 2650 comes with Meta's title and text unless given; 1870148 also ends
        the replace it answers, leaving the audience as it was."""
        if code == REPLACE_ERROR_CODE and subcode in _REPLACE_TEXTS:
            title, text = _REPLACE_TEXTS[subcode]
            user_title, user_msg = user_title or title, user_msg or text
        fail = _Fail(
            code,
            message,
            subcode=subcode,
            http_status=http_status,
            user_title=user_title,
            user_msg=user_msg,
            is_transient=is_transient,
        )
        self._scripted += [_Scripted(None, match) for _ in range(after)]
        self._scripted += [_Scripted(fail, match, applied) for _ in range(n)]

    def hold(self) -> None:
        """Upload requests wait, once arrived (after `on_arrival`), until `release()`."""
        self._open.clear()

    def release(self) -> None:
        """Let held requests (and new ones) be answered."""
        self._open.set()

    def hang_next(self, n: int, seconds: float) -> None:
        """The next `n` upload requests wait `seconds` before being handled."""
        self._hangs += [seconds] * n

    def configure(self, **changes: Any) -> None:
        """Change settings at runtime: any FakeConfig field (JSON lists become tuples)."""
        known = set(FakeConfig.__dataclass_fields__)
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            if name == "latency" and value is not None:
                low, high = (float(v) for v in value)
                value = (low, high)
            elif name == "rate_limit" and value is not None:
                calls, window = value
                value = (int(calls), float(window))
            setattr(self.config, name, value)
        if "seed" in changes:
            self._rng.seed(self.config.seed)

    # -- server lifecycle --------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024 * 1024)
        # Admin routes first: they must win over the Graph patterns.
        app.router.add_get("/_fake/log", self._admin_log)
        app.router.add_get("/_fake/violations", self._admin_violations)
        app.router.add_get("/_fake/audiences/{audience_id}", self._admin_audience)
        app.router.add_post("/_fake/audiences", self._admin_register)
        app.router.add_post("/_fake/config", self._admin_config)
        app.router.add_post("/_fake/fail_next", self._admin_fail_next)
        app.router.add_post("/_fake/hang_next", self._admin_hang_next)
        app.router.add_post("/_fake/reset", self._admin_reset)
        base = r"/{version:v\d+(?:\.\d+)?}/{audience_id:[^/_][^/]*}"
        app.router.add_post(base + "/{edge:users|usersreplace}", self._on_upload)
        app.router.add_delete(base + "/{edge:users}", self._on_upload)
        app.router.add_get(base + "/sessions", self._on_sessions)
        app.router.add_get(base, self._on_audience)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # No access log: a GET's query string holds the access token.
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGraph:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- upload requests ---------------------------------------------------------------

    async def _on_upload(self, request: web.Request) -> web.StreamResponse:
        up = _Upload(mode="add", audience_id=request.match_info["audience_id"])
        try:
            fields = await self._read_fields(request)
        except _Fail as fail:
            fields = {}
            up.fail(fail)
        if request.match_info["edge"] == "usersreplace":
            up.mode = "replace"
        elif request.method == "DELETE" or str(fields.get("method", "")).upper() == "DELETE":
            up.mode = "remove"
        up.token = _str_or_none(fields.get("access_token"))
        up.proof = _str_or_none(fields.get("appsecret_proof"))
        _parse_session(fields, up)
        _parse_payload(fields, up, self.config.lean)
        entry = self._arrive(up)
        # Waits happen before any state changes; what follows runs without awaiting, so
        # concurrent requests see each other's effects atomically.
        delay = self._rng.uniform(*self.config.latency) if max(self.config.latency) > 0 else 0.0
        if self._hangs:
            delay += self._hangs.pop(0)
        if delay > 0:
            await asyncio.sleep(delay)
        if self.on_arrival is not None and not self.on_arrival(entry):
            return _drop(request, entry, "dropped_before")
        await self._open.wait()
        return self._answer(request, up, entry)

    async def _read_fields(self, request: web.Request) -> dict[str, Any]:
        """Query string, then the body's fields over it (multipart, url-encoded or JSON)."""
        fields: dict[str, Any] = dict(request.query)
        try:
            if request.content_type == "application/json":
                body = orjson.loads(await request.read())
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                fields.update(body)
            elif request.body_exists:
                for name, value in (await request.post()).items():
                    if isinstance(value, web.FileField):
                        fields[name] = value.file.read().decode()
                    else:
                        fields[name] = value
        except (ValueError, UnicodeDecodeError):
            raise _bad("The request body could not be read") from None
        return fields

    def _arrive(self, up: _Upload) -> LogEntry:
        """Log the request and check the session invariants against the state it met."""
        aud = self._audiences.get(up.audience_id)
        if aud is not None:
            self._refresh(aud)  # a replace that timed out is judged as over
        entry = LogEntry(
            seq=len(self._log) + 1,
            t=self.config.clock(),
            mode=up.mode,
            audience_id=up.audience_id,
            ad_account=aud.ad_account if aud else "act_default",
            session_id=up.session_id,
            batch_seq=up.batch_seq,
            last_batch_flag=up.last,
            rows=up.n_rows,
        )
        self._log.append(entry)
        if up.n_rows > MAX_ROWS:
            self._violation(up, f"{up.n_rows} rows in one request (at most {MAX_ROWS})")
        if up.session_id is None or up.batch_seq is None:
            return entry
        key = (up.audience_id, up.session_id)
        sess = self._sessions.get(key)
        if sess is not None and sess.kind != up.mode:
            self._violation(up, f"session {up.session_id} reused for {up.mode} (was {sess.kind})")
            sess = None  # it will start a new session: judge it as one
            self._arrived.pop(key, None)
        acked = sess.acked if sess else set()
        entry.acked_after = len(acked)
        n = up.batch_seq
        if sess is not None and sess.timed_out:
            self._violation(up, "batch after the replace passed its 90 minutes")
        elif sess is not None and sess.ended and n != sess.last_seq:
            self._violation(up, "batch after the last-flagged batch")
        if up.mode != "replace" and aud is not None and aud.status != NORMAL:
            # Meta: "Don't add or remove users via /users during an ongoing replace".
            self._violation(up, "/users write while the audience is replace_in_progress")
        if up.mode == "replace" and n == 1 and sess is not None and sess.kind == "replace":
            self._violation(up, "batch_seq 1 sent again: Meta starts a new replace")
        elif n in acked:
            self._violation(up, "batch re-sent after it was acknowledged")
        # Meta's rule is "after the first batch": one it applied counts even when its
        # reply was lost and the client learned of it from the sessions endpoint.
        if up.mode == "replace" and n != 1 and (sess is None or 1 not in sess.counted):
            self._violation(up, "replace batch sent before batch 1 was received")
        arrived = self._arrived.setdefault(key, set())
        if up.last:
            gaps = [i for i in range(1, n) if i not in arrived]
            # A replace's batch 1 may be known to the client through the sessions endpoint.
            known = acked | ({1} if sess is not None and 1 in sess.counted else set())
            unacked = [i for i in range(1, n) if i in arrived and i not in known]
            if gaps:
                self._violation(up, f"last flag with batch_seq never sent: {_few(gaps)}")
            if unacked:
                self._violation(up, f"last flag before batches were acknowledged: {_few(unacked)}")
        arrived.add(n)
        return entry

    def _violation(self, up: _Upload, what: str) -> None:
        where = f"{up.mode} audience {up.audience_id} session {up.session_id} batch {up.batch_seq}"
        self._violations.append(f"{where}: {what}")

    def _answer(self, request: web.Request, up: _Upload, entry: LogEntry) -> web.StreamResponse:
        headers: dict[str, str] = {}
        try:
            self._check_auth(up)
            aud = self._audience(up.audience_id)
            entry.ad_account = aud.ad_account
            self._throttle(aud.ad_account, headers)
            scripted = self._take_scripted(up)
            cfg = self.config
            if cfg.error_rate > 0 and self._rng.random() < cfg.error_rate:
                raise _Fail(2, http_status=500, is_transient=True)
            drop = None
            if cfg.drop_rate > 0 and self._rng.random() < cfg.drop_rate:
                drop = "dropped_before" if self._rng.random() < 0.5 else "dropped_after"
            if drop == "dropped_before":
                return _drop(request, entry, drop)
            if up.error is not None:
                raise up.error
            body, sess = self._apply(up, aud, entry)
            if scripted is not None and scripted.fail is not None:
                raise scripted.fail  # applied, then answered with an error
            if drop == "dropped_after" or (
                self.on_applied is not None and not self.on_applied(entry)
            ):
                return _drop(request, entry, "dropped_after")
            if request.transport is None or request.transport.is_closing():
                # The client gave up (a timeout during hang_next): applied, never acked.
                entry.outcome = "client_gone"
            else:
                entry.outcome = "ok"
                assert up.batch_seq is not None
                sess.acked.add(up.batch_seq)
            return web.json_response(body, headers=headers, dumps=_dumps)
        except _Fail as fail:
            if fail.code == REPLACE_ERROR_CODE and fail.subcode == REPLACE_RETRY_NEW_SESSION:
                self._fail_replace(up)
            entry.outcome = fail.outcome
            self._traces += 1
            body = fail.body(f"AFake{self._traces:08d}")
            return web.json_response(body, status=fail.http_status, headers=headers, dumps=_dumps)

    def _check_auth(self, up: _Upload) -> None:
        cfg = self.config
        if not up.token:
            raise _Fail(190, "An active access token must be used to query information.")
        if cfg.token is not None and not hmac.compare_digest(up.token.encode(), cfg.token.encode()):
            raise _Fail(190, "Invalid OAuth access token - Cannot parse access token")
        if cfg.app_secret is not None:
            if not up.proof:
                raise _bad("API calls from the server require an appsecret_proof argument")
            want = hmac.new(cfg.app_secret.encode(), up.token.encode(), hashlib.sha256)
            if not hmac.compare_digest(up.proof.encode(), want.hexdigest().encode()):
                raise _bad("Invalid appsecret_proof provided in the API argument")

    def _audience(self, audience_id: str) -> _Audience:
        aud = self._audiences.get(audience_id)
        if aud is None:
            aud = self._audiences[audience_id] = _Audience(audience_id, "act_default")
        return aud

    def _throttle(self, account: str, headers: dict[str, str]) -> None:
        """Sliding-window call count per ad account; throttled calls count too (like Meta)."""
        if self.config.rate_limit is None:
            return
        cap, window = self.config.rate_limit
        now = self.config.clock()
        calls = self._calls.setdefault(account, deque())
        while calls and calls[0] <= now - window:
            calls.popleft()
        calls.append(now)
        count = len(calls)
        over = count > cap
        # Access returns once enough of the oldest calls leave the window to let one in.
        wait_s = max(0.0, calls[count - cap] + window - now) if over else 0.0
        # Meta reports whole minutes; fake seconds are Meta seconds times time_scale.
        minutes = math.ceil(wait_s / self.config.time_scale / 60) if over else 0
        pct = int(count * 100 / cap)
        usage = {
            "type": "custom_audience",
            "call_count": pct,
            "total_cputime": pct,
            "total_time": pct,
            "estimated_time_to_regain_access": minutes,
        }
        headers[BUC_HEADER] = _dumps({account.removeprefix("act_"): [usage]})
        if over:
            headers[RETRY_HEADER] = f"{wait_s:.3f}"
            raise _Fail(80003, subcode=2446079, is_transient=True, outcome="throttled")

    def _take_scripted(self, up: _Upload) -> _Scripted | None:
        """The scripted answer due for this request, if any; one not to apply is raised."""
        for i, scripted in enumerate(self._scripted):
            if scripted.match in (None, up.audience_id, up.mode):
                del self._scripted[i]
                if scripted.fail is not None and not scripted.applied:
                    raise scripted.fail
                return scripted
        return None

    def _apply(
        self, up: _Upload, aud: _Audience, entry: LogEntry
    ) -> tuple[dict[str, Any], FakeSession]:
        """Validate the rows, change the audience or the replace, return the reply body."""
        assert up.session_id is not None and up.batch_seq is not None
        self._refresh(aud)
        key = (aud.audience_id, up.session_id)
        sess = self._sessions.get(key)
        if up.mode == "replace":
            sess = self._replace_session(aud, sess, up)
        else:
            if aud.status != NORMAL:
                raise _replace_error(REPLACE_IN_PROGRESS)
            if sess is None or sess.kind != up.mode:
                sess = self._new_session(up)
        valid: list[tuple[Any, ...]] = []
        samples: dict[str, str] = {}
        invalid = 0
        for row in up.rows:  # empty in lean mode
            problem = _row_problem(up.keys, row) or self._unusable(row)
            if problem is None:
                valid.append(row)
            else:
                invalid += 1
                if len(samples) < 100:
                    samples[problem[0]] = problem[1]
        if up.batch_seq not in sess.counted:  # a re-sent batch counts once
            sess.counted.add(up.batch_seq)
            sess.num_received += up.n_rows
            sess.num_invalid += invalid
        if up.mode == "add":
            aud.members.update(valid)
        elif up.mode == "remove":
            aud.members.difference_update(valid)
        else:
            sess.pending.update(valid)
        entry.applied = True
        if up.last:
            sess.ended = True
            sess.last_seq = up.batch_seq
            sess.ended_wall = time.time()
            if up.mode == "replace":
                self._finish_replace(aud, sess)
        body = {
            "audience_id": aud.audience_id,
            "session_id": str(up.session_id),
            "num_received": sess.num_received,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": samples,
        }
        return body, sess

    def _unusable(self, row: tuple[Any, ...]) -> tuple[str, str] | None:
        """(sample, reason) for a well-formed row Meta cannot use (`unusable_prefix`)."""
        prefix = self.config.unusable_prefix
        for value in row:
            if prefix and isinstance(value, str) and value.startswith(prefix):
                return value[:200], "entry could not be used"
        return None

    def _new_session(self, up: _Upload) -> FakeSession:
        assert up.session_id is not None
        sess = FakeSession(
            audience_id=up.audience_id,
            session_id=up.session_id,
            kind=up.mode,
            started=self.config.clock(),
            started_wall=time.time(),
            estimated_num_total=up.estimated,
        )
        self._sessions[(up.audience_id, up.session_id)] = sess
        return sess

    def _replace_session(
        self, aud: _Audience, sess: FakeSession | None, up: _Upload
    ) -> FakeSession:
        """The replace session this batch belongs to, or the 2650 error Meta answers."""
        ours = sess is not None and sess.kind == "replace"
        if sess is not None and ours:
            if sess.failed and up.batch_seq != 1:
                raise _replace_error(REPLACE_RETRY_NEW_SESSION)
            if sess.timed_out:
                raise _replace_error(REPLACE_TIMED_OUT)
            if sess.ended:
                raise _replace_error(REPLACE_FINISHED)
        if up.batch_seq == 1:
            # Batch 1 starts a replace, even again for a running session (Meta's rule).
            if aud.status != NORMAL and aud.replace_session != up.session_id:
                raise _replace_error(REPLACE_IN_PROGRESS)
            new = self._new_session(up)
            aud.replace_session = new.session_id
            return new
        if sess is None or not ours:
            raise _replace_error(REPLACE_NO_FIRST_BATCH)
        return sess

    def _fail_replace(self, up: _Upload) -> None:
        """The replace this request belongs to fails (1870148): it takes no more batches
        and the audience keeps its members."""
        aud = self._audiences.get(up.audience_id)
        running = aud.replace_session if aud is not None else None
        if aud is None or up.mode != "replace" or running is None or running != up.session_id:
            return
        sess = self._sessions[(aud.audience_id, running)]
        sess.failed = True
        sess.pending = set()
        aud.replace_session = None

    def _finish_replace(self, aud: _Audience, sess: FakeSession) -> None:
        aud.members = sess.pending
        sess.pending = set()
        aud.replace_session = None
        if self.config.replace_settle_s > 0:
            aud.busy_until = self.config.clock() + self.config.replace_settle_s

    def _refresh(self, aud: _Audience) -> None:
        """Time-driven changes, applied lazily: replace time-outs and settling."""
        now = self.config.clock()
        if aud.replace_session is not None:
            sess = self._sessions.get((aud.audience_id, aud.replace_session))
            window = REPLACE_WINDOW_S * self.config.time_scale
            if sess is not None and now - sess.started >= window:
                # Meta: "replaced with what you've uploaded so far".
                sess.timed_out = sess.ended = True
                sess.ended_wall = time.time()
                self._finish_replace(aud, sess)
        if aud.busy_until is not None and now >= aud.busy_until:
            aud.busy_until = None

    # -- reads -------------------------------------------------------------------------

    def _read_auth(self, request: web.Request) -> web.Response | None:
        up = _Upload(mode="add", audience_id=request.match_info["audience_id"])
        up.token = request.query.get("access_token")
        up.proof = request.query.get("appsecret_proof")
        try:
            self._check_auth(up)
        except _Fail as fail:
            self._traces += 1
            body = fail.body(f"AFake{self._traces:08d}")
            return web.json_response(body, status=fail.http_status, dumps=_dumps)
        return None

    async def _on_sessions(self, request: web.Request) -> web.Response:
        denied = self._read_auth(request)
        if denied is not None:
            return denied
        audience_id = request.match_info["audience_id"]
        aud = self._audiences.get(audience_id)
        if aud is not None:
            self._refresh(aud)
        wanted = _positive_int(request.query.get("session_id", ""))
        data = [
            _session_view(s)
            for (aid, sid), s in self._sessions.items()
            if aid == audience_id and (wanted is None or sid == wanted)
        ]
        return web.json_response({"data": data}, dumps=_dumps)

    async def _on_audience(self, request: web.Request) -> web.Response:
        denied = self._read_auth(request)
        if denied is not None:
            return denied
        audience_id = request.match_info["audience_id"]
        status = self.operation_status(audience_id)
        return web.json_response(
            {"id": audience_id, "operation_status": _status_view(status)}, dumps=_dumps
        )

    # -- admin endpoints (for a fake in another process) -------------------------------

    async def _admin_log(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(e) for e in self._log], dumps=_dumps)

    async def _admin_violations(self, request: web.Request) -> web.Response:
        return web.json_response(self._violations, dumps=_dumps)

    async def _admin_audience(self, request: web.Request) -> web.Response:
        audience_id = request.match_info["audience_id"]
        members = self.members(audience_id)
        aud = self._audiences.get(audience_id)
        body = {
            "id": audience_id,
            "ad_account": aud.ad_account if aud else None,
            "count": len(members),
            # Mixed cell types (numbers, "") cannot be compared, their JSON text can.
            "members": [list(m) for m in sorted(members, key=_dumps)],
            "operation_status": _status_view(self.operation_status(audience_id)),
        }
        return web.json_response(body, dumps=_dumps)

    async def _admin_register(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.register_audience(str(body["audience_id"]), str(body["ad_account"]))
        return web.json_response({"ok": True})

    async def _admin_config(self, request: web.Request) -> web.Response:
        try:
            self.configure(**await _json_body(request))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        cfg = self.config
        shown = {  # never the token or the app secret
            "latency": cfg.latency,
            "error_rate": cfg.error_rate,
            "drop_rate": cfg.drop_rate,
            "rate_limit": cfg.rate_limit,
            "time_scale": cfg.time_scale,
            "lean": cfg.lean,
            "seed": cfg.seed,
            "replace_settle_s": cfg.replace_settle_s,
            "unusable_prefix": cfg.unusable_prefix,
        }
        return web.json_response(shown, dumps=_dumps)

    async def _admin_fail_next(self, request: web.Request) -> web.Response:
        try:
            self.fail_next(**await _json_body(request))
        except TypeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _admin_hang_next(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.hang_next(int(body["n"]), float(body["seconds"]))
        return web.json_response({"ok": True})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _few(items: list[int]) -> str:
    return ", ".join(map(str, items[:5])) + (" ..." if len(items) > 5 else "")


def _drop(request: web.Request, entry: LogEntry, outcome: str) -> web.StreamResponse:
    """Close the TCP connection without a reply: the client sees a disconnect."""
    entry.outcome = outcome
    if request.transport is not None:
        request.transport.close()
    # aiohttp cannot write this to a closed transport and drops it quietly.
    return web.Response(status=500)


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body = orjson.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _status_view(status: str) -> dict[str, Any]:
    return {"code": 200 if status == NORMAL else 300, "description": status}


def _session_view(s: FakeSession) -> dict[str, str]:
    """Meta's session read: every field a string."""
    if s.ended:
        progress = 100
    elif s.estimated_num_total:
        progress = min(99, s.num_received * 100 // s.estimated_num_total)
    else:
        progress = 0
    return {
        "session_id": str(s.session_id),
        "start_time": str(int(s.started_wall)),
        "end_time": str(int(s.ended_wall)) if s.ended_wall else "0",
        "num_received": str(s.num_received),
        "num_matched": "-1",
        "num_invalid_entries": str(s.num_invalid),
        "progress": str(progress),
        "stage": "processed" if s.ended else "uploading",
    }


# -- command line ----------------------------------------------------------------------


def _latency_ms(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    lo = float(low) / 1000
    return lo, float(high) / 1000 if high else lo


def _rate(text: str) -> tuple[int, float]:
    calls, _, seconds = text.partition("/")
    return int(calls), float(seconds or 3600)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine fake-graph",
        description="Run an offline fake of Meta's Custom Audience upload API.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--latency-ms", type=_latency_ms, default=(0.0, 0.0), metavar="A[-B]")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of HTTP 500 answers")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped connections")
    p.add_argument("--rate-limit", type=_rate, metavar="CALLS/SECONDS", help="per ad account")
    p.add_argument("--token", help="the only access token accepted (default: any)")
    p.add_argument("--app-secret", help="require appsecret_proof made with this secret")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies Meta's 90 minutes")
    p.add_argument("--replace-settle-s", type=float, default=0.0)
    p.add_argument("--lean", action="store_true", help="count rows only (benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    return p


def serve(argv: Sequence[str] | None = None) -> None:
    """`python -m engine fake-graph ...`: serve until SIGINT or SIGTERM."""
    args = _parser().parse_args(argv)
    config = FakeConfig(
        token=args.token,
        app_secret=args.app_secret,
        latency=args.latency_ms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        rate_limit=args.rate_limit,
        time_scale=args.time_scale,
        lean=args.lean,
        seed=args.seed,
        replace_settle_s=args.replace_settle_s,
    )
    asyncio.run(_serve(config, args.host, args.port))


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    graph = FakeGraph(config)
    url = await graph.start(host, port)
    print(f"fake Graph API listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await graph.close()
    print("fake Graph API stopped", file=sys.stderr, flush=True)
