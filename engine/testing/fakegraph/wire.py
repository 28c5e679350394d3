"""Reading an upload request: its fields, credentials, session, payload and rows."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from .config import FakeConfig
from .meta import MAX_ROWS, MULTI_KEYS, SINGLE_KEY_SCHEMAS, GraphError, bad_parameter

Mode = Literal["add", "remove", "replace"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A mobile advertiser id: hex with hyphens (IDFA/AAID are UUIDs), 16..64 hex digits.
_MADID = re.compile(r"[0-9a-f-]+")


@dataclass
class Upload:
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
    error: GraphError | None = None

    def fail(self, error: GraphError) -> None:
        if self.error is None:
            self.error = error


async def read_upload(request: web.Request, lean: bool) -> Upload:
    """Everything an upload request says; a problem is kept in `error`, not raised, so the
    request is still logged and judged."""
    up = Upload(mode="add", audience_id=request.match_info["audience_id"])
    try:
        fields = await _read_fields(request)
    except GraphError as fail:
        fields = {}
        up.fail(fail)
    if request.match_info["edge"] == "usersreplace":
        up.mode = "replace"
    elif request.method == "DELETE" or str(fields.get("method", "")).upper() == "DELETE":
        up.mode = "remove"
    up.token = _str_or_none(fields.get("access_token"))
    up.proof = _str_or_none(fields.get("appsecret_proof"))
    _parse_session(fields, up)
    _parse_payload(fields, up, lean)
    return up


def check_auth(config: FakeConfig, token: str | None, proof: str | None) -> None:
    """Raise Meta's error for a missing or wrong token or appsecret_proof."""
    if not token:
        raise GraphError(190, "An active access token must be used to query information.")
    if config.token is not None and not hmac.compare_digest(token.encode(), config.token.encode()):
        raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")
    if config.app_secret is not None:
        if not proof:
            raise bad_parameter("API calls from the server require an appsecret_proof argument")
        want = hmac.new(config.app_secret.encode(), token.encode(), hashlib.sha256)
        if not hmac.compare_digest(proof.encode(), want.hexdigest().encode()):
            raise bad_parameter("Invalid appsecret_proof provided in the API argument")


def positive_int(value: Any) -> int | None:
    """Meta's int64 fields arrive as JSON numbers (or numeric strings from some clients)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def row_problem(keys: list[str], row: tuple[Any, ...]) -> tuple[str, str] | None:
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


def unusable(row: tuple[Any, ...], prefix: str) -> tuple[str, str] | None:
    """(sample, reason) for a well-formed row Meta cannot use: a cell starts with `prefix`."""
    for value in row:
        if prefix and isinstance(value, str) and value.startswith(prefix):
            return value[:200], "entry could not be used"
    return None


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


async def _read_fields(request: web.Request) -> dict[str, Any]:
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
        raise bad_parameter("The request body could not be read") from None
    return fields


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_field(fields: dict[str, Any], name: str, up: Upload) -> dict[str, Any] | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        up.fail(GraphError(194, f"(#194) The parameter {name} is required"))
        return None
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        up.fail(bad_parameter(f"param {name} must be a JSON object"))
        return None
    return value


def _parse_session(fields: dict[str, Any], up: Upload) -> None:
    session = _json_field(fields, "session", up)
    if session is None:
        return
    up.session_id = positive_int(session.get("session_id"))
    up.batch_seq = positive_int(session.get("batch_seq"))
    last = session.get("last_batch_flag", False)
    up.last = last is True
    est = session.get("estimated_num_total")
    up.estimated = positive_int(est)
    if up.session_id is None:
        up.fail(bad_parameter("session_id must be a positive 64-bit integer"))
    elif up.batch_seq is None:
        up.fail(bad_parameter("batch_seq must be a positive integer"))
    elif not isinstance(last, bool):
        up.fail(bad_parameter("last_batch_flag must be a boolean"))
    elif est is not None and up.estimated is None and est != 0:
        up.fail(bad_parameter("estimated_num_total must be an integer"))


def _parse_payload(fields: dict[str, Any], up: Upload, lean: bool) -> None:
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
            up.fail(bad_parameter(f"Invalid schema key: {unknown[0]}"))
            return
        up.keys = list(schema)
        if payload.get("is_raw") is not True:
            up.fail(bad_parameter("is_raw must be true for a multi-key schema"))
            return
    else:
        up.fail(bad_parameter(f"Invalid schema: {str(schema)[:100]}"))
        return
    data = payload.get("data")
    if not isinstance(data, list):
        up.fail(bad_parameter("Data is missing or does not match schema"))
        return
    up.n_rows = len(data)
    if up.n_rows > MAX_ROWS:
        up.fail(bad_parameter(f"Too many users in one request: {up.n_rows} (at most {MAX_ROWS})"))
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
            up.fail(bad_parameter("Data is missing or does not match schema"))
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
