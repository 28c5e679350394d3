"""Job requests: a `POST /jobs` turned into a Job ready to store, or a Refusal.

A JSON body names an input path the worker reads; a CSV or JSON Lines body carries the
rows themselves, with the options in the query string. Body rows are normalized and hashed
here, in memory, with the engine's own rules, and only the hashes are written to the state
dir (SPEC section 5): the job then uploads them with `prehashed=True`, and resumes from
them after a restart like any file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web
from multidict import MultiMapping

from .._errors import ConfigError, InputError
from .._hashing.encode import normalize_chunk
from .._hashing.schema import NormalizeOptions, Schema
from .._input.files import InputFile
from .._input.memory import Rows, open_source
from .._options import UploadJob
from .jobs import Job

__all__ = ["Intake", "Refusal", "job_option", "with_intake"]


class Refusal(Exception):
    """A request the API turns down: HTTP `status` with a JSON `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Job request fields and their JSON types. Upload options only: never a token.
_FIELDS: dict[str, type] = {
    "audience": str,
    "ad_account": str,
    "input": str,
    "mode": str,
    "schema": str,
    "column_map": dict,
    "format": str,
    "prehashed": bool,
    "default_country_code": str,
    "batch_size": int,
    "concurrency": int,
    "allow_empty_replace": bool,
    "max_retries": int,
}
_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false"}
_BODY_FORMATS = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# Keys sent as plain text (SPEC section 8): hashing on arrival cannot keep them off disk.
_PLAIN_IDENTIFIERS = frozenset({"MADID", "EXTERN_ID"})


def job_option(name: str, value: Any) -> Any:
    """A job field as the upload takes it; Refusal(400) when unknown or of the wrong type."""
    kind = _FIELDS.get(name)
    if kind is None:
        raise Refusal(400, f"unknown field {name!r}; fields are: {', '.join(_FIELDS)}")
    if name == "audience" and type(value) is int:
        value = str(value)
    if name == "schema" and isinstance(value, list) and all(isinstance(k, str) for k in value):
        value = ",".join(value)
    if kind is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise Refusal(400, f"{name} must be an object of KEY: column")
        return {k.upper(): v for k, v in value.items()}
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refusal(400, f"{name} must be {_KIND_NAMES[kind]}")
    return value


def _query_options(query: MultiMapping[str]) -> dict[str, Any]:
    """Options of a rows-in-the-body request, from its query string (`map=KEY=column`...)."""
    options: dict[str, Any] = {}
    for name, text in query.items():
        if name == "map":
            key, sep, column = text.partition("=")
            if not sep or not key or not column:
                raise Refusal(400, f"map takes KEY=column, got {text!r}")
            options.setdefault("column_map", {})[key.strip().upper()] = column.strip()
            continue
        if name in options:
            raise Refusal(400, f"{name} is given twice")
        kind = _FIELDS.get(name)
        value: Any = text
        if kind is bool and text.lower() in _TRUE + _FALSE:
            value = text.lower() in _TRUE
        elif kind is int and text.isdigit():
            value = int(text)
        options[name] = job_option(name, value)
    return options


def _bind(source: InputFile, options: Mapping[str, Any]) -> Schema:
    """Bind the input's columns to the job's schema, as the upload will (InputError if not)."""
    column_map = options.get("column_map") or {}
    spec = options.get("schema")
    if spec is None:
        return Schema(source.bind(None, column_map))
    schema = Schema.parse(spec)
    source.bind(schema.keys, column_map)
    return schema


def _check_path(path: str, options: Mapping[str, Any]) -> None:
    with open_source(path, options.get("format")) as source:
        _bind(source, options)


def _body_rows(text: str, fmt: str) -> Rows:
    """Rows of a CSV (header first) or JSON Lines body, read in memory only."""
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise InputError("the CSV body is empty: a header row is required")
        return Rows(reader, columns=header)
    objects = [_json_object(line) for line in text.splitlines()]
    if not objects:
        raise InputError("the body holds no rows")
    columns = list(dict.fromkeys(k for obj in objects if obj is not None for k in obj))
    # A line that is not an object becomes a non-row, which the engine rejects as invalid.
    rows = [None if obj is None else tuple(obj.get(c) for c in columns) for obj in objects]
    return Rows(cast(list[tuple[Any, ...]], rows), columns=columns)


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class _Hashed:
    schema: Schema
    rows: list[list[str | float | int]]
    rejected: Counter[str]


def _hash_body(body: bytes, fmt: str, options: Mapping[str, Any]) -> _Hashed:
    """Normalize and hash body rows with the engine's own rules, all in memory."""
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise InputError("the rows must be UTF-8 text") from None
    with open_source(_body_rows(text, fmt)) as source:
        schema = _bind(source, options)
        plain = sorted(_PLAIN_IDENTIFIERS & set(schema.keys))
        if plain:
            raise InputError(
                f"{', '.join(plain)} is sent unhashed, so rows holding it cannot be kept on "
                "disk for resuming: send it as a file path instead"
            )
        norm = NormalizeOptions(bool(options.get("prehashed")), options.get("default_country_code"))
        hashed = _Hashed(schema, [], Counter())
        for chunk in source.chunks():
            part = normalize_chunk(chunk, schema, norm)
            hashed.rows.extend(part.data)
            hashed.rejected.update(r.reason for r in part.rejects)
    return hashed


def _write_private(path: Path, lines: Iterable[bytes]) -> None:
    """Write a file only this user can read, atomically and durably."""
    temp = path.with_suffix(".tmp")
    with open(temp, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


class Intake:
    """Turns a `POST /jobs` request into a stored-ready Job, or a Refusal.

    A JSON body names an input path; a CSV or JSON Lines body carries the rows, with the
    options in the query string. Values the engine refuses (a bad mode, an unknown key, an
    unreadable path) are 422; a malformed request is 400.
    """

    def __init__(
        self,
        *,
        defaults: Mapping[str, Any],
        input_dirs: Sequence[Path],
        token_for: Callable[[str], str | None],
        rows_file: Callable[[str], Path],
    ) -> None:
        self._defaults = dict(defaults)  # checked with job_option when the config was read
        self._input_dirs = [Path(os.path.realpath(d)) for d in input_dirs]
        self._token_for = token_for
        self._rows_file = rows_file

    async def job(self, request: web.Request) -> Job:
        job_id = uuid.uuid4().hex
        fmt = _BODY_FORMATS.get(request.content_type)
        if request.content_type == "application/json":
            fields = await _json_fields(request)
        elif fmt is not None:
            fields = _query_options(request.query)
            if "input" in fields or "format" in fields:
                raise Refusal(400, "with rows in the body, input and format are not used")
        else:
            raise Refusal(
                415,
                "send a JSON job (application/json) naming an input path, or rows as text/csv "
                "or application/x-ndjson with the options in the query string",
            )
        options = {**self._defaults, **fields}
        path = options.pop("input", None)
        self._check(options, path, fmt)
        try:
            if path is not None:
                await asyncio.to_thread(_check_path, path, options)
                return Job(job_id, "queued", "path", path, options)
            assert fmt is not None
            hashed = await asyncio.to_thread(_hash_body, await request.read(), fmt, options)
        except InputError as exc:
            raise Refusal(422, str(exc)) from None
        return await self._hashed_job(job_id, fmt, options, hashed)

    def _check(self, options: Mapping[str, Any], path: str | None, fmt: str | None) -> None:
        for required in ("audience", "ad_account"):
            if not options.get(required):
                raise Refusal(400, f"{required} is required")
        if fmt is None and not path:
            raise Refusal(400, "input (a path the worker can read) is required")
        try:
            UploadJob(
                source=path or "<body>",
                audience_id=options["audience"],
                **{k: v for k, v in options.items() if k != "audience"},
            )
        except ConfigError as exc:
            raise Refusal(422, str(exc)) from None
        if self._token_for(options["ad_account"]) is None:
            raise Refusal(
                422,
                f"the worker has no access token for {options['ad_account']} "
                "(in its environment or secrets file)",
            )
        if path is not None:
            if not os.path.isabs(path):
                raise Refusal(422, "input must be an absolute path")
            real = Path(os.path.realpath(path))
            if self._input_dirs and not any(real.is_relative_to(d) for d in self._input_dirs):
                raise Refusal(422, "input is outside the worker's input_dirs")

    async def _hashed_job(
        self, job_id: str, fmt: str, options: dict[str, Any], hashed: _Hashed
    ) -> Job:
        rejected = sum(hashed.rejected.values())
        if not hashed.rows:
            raise Refusal(422, f"no valid rows in the body ({rejected} rejected)")
        keys = hashed.schema.keys
        path = self._rows_file(job_id)
        lines = (orjson.dumps(dict(zip(keys, row, strict=True))) + b"\n" for row in hashed.rows)
        await asyncio.to_thread(_write_private, path, lines)
        options.pop("default_country_code", None)  # applied on arrival
        options.update(
            schema=hashed.schema.single_key or ",".join(keys),
            column_map={},
            prehashed=True,
            format="jsonl",
        )
        intake = {"rows_rejected": rejected, "rejected_by_reason": dict(hashed.rejected)}
        return Job(job_id, "queued", f"{fmt} body", str(path), options, intake=intake)


async def _json_fields(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Refusal(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "the body must be a JSON object")
    return {name: job_option(name, value) for name, value in body.items()}


def with_intake(report: dict[str, Any], intake: Mapping[str, Any] | None) -> dict[str, Any]:
    """The report over the whole job: body rows rejected on arrival count as read and rejected."""
    if not intake:
        return report
    rejected = intake["rows_rejected"]
    reasons = Counter(report["rejected_by_reason"]) + Counter(intake["rejected_by_reason"])
    return {
        **report,
        "rows_read": report["rows_read"] + rejected,
        "rows_rejected": report["rows_rejected"] + rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
    }
