"""Job requests: a `POST /jobs` turned into a Job ready to store, or a Refusal.

A JSON body names an input path under the worker's input-dirs, or a URL under its
input-urls (urls.py); a CSV or JSON Lines body
carries the rows themselves, with the options in the query string. Body rows are normalized
and hashed here, in memory, with the engine's own rules, and only the hashes are written to
the state dir: the job then uploads them with `prehashed=True`, and resumes
from them after a restart like any file.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import io
import logging
import os
import stat
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
from aiohttp import web
from multidict import MultiMapping

from .._errors import ConfigError, InputError
from .._hashing.encode import normalize_chunk
from .._hashing.schema import NormalizeOptions, Schema
from .._input.memory import Rows, open_source
from .._input.remote import is_url
from .._input.source import InputFile
from .._options import UploadJob, job_options
from .jobs import Job
from .urls import check_url

__all__ = ["Intake", "Refusal", "job_option", "open_allowed", "with_intake"]

log = logging.getLogger("engine.worker")


class Refusal(Exception):
    """A request the API turns down: HTTP `status` with a JSON `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Job request fields and their JSON types. Upload options only: never a token.
_FIELDS: dict[str, type] = {
    "input": str,
    **{opt.keyword: opt.kind for opt in job_options() if opt.worker},
}
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_BODY_FORMATS = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# Keys sent as plain text (docs/normalization.md): hashing on arrival cannot keep them off disk.
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
    if kind is float and type(value) is int:
        value = float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
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
        elif kind is float:
            with contextlib.suppress(ValueError):
                value = float(text)
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


# Kernel views, never people lists: refused even under an input dir ("/" say).
_PSEUDO = (Path("/proc"), Path("/sys"), Path("/dev"))


def open_allowed(path: str, input_dirs: Sequence[Path]) -> BinaryIO:
    """Open a job's input path for reading, if the operator allowed it (InputError if not).

    The file must be a regular file whose real location is under one of `input_dirs`; both
    are checked on the open descriptor, so a symlink or rename swapped in between cannot
    lead elsewhere, and the caller reads that descriptor. Opening never blocks (O_NONBLOCK:
    a FIFO is refused, not waited on). Messages never hold the file's content.
    """
    if "\x00" in path:
        raise InputError("the input path holds a NUL byte")
    if not input_dirs:
        raise InputError(
            "this worker reads no files (its config sets no input-dirs): send the rows in "
            "the request body"
        )
    if not os.path.isabs(path):
        raise InputError("input must be an absolute path")
    roots = [Path(os.path.realpath(d)) for d in input_dirs]
    # A first look by name, so that nothing outside is even opened (opening a device acts).
    _check_under(Path(os.path.realpath(path)), roots)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError("input is a symbolic link; give the file's own path") from None
        raise InputError(f"cannot read input {path!r}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError("input is not a regular file (a directory, pipe or device)")
        # Where the open file really is, by the kernel: not the name it was opened by.
        _check_under(Path(os.readlink(f"/proc/self/fd/{fd}")), roots)
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise InputError(f"cannot check input {path!r}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    # The file object takes the checked descriptor; its name (the path) tells the format.
    return open(path, "rb", opener=lambda _path, _flags: fd)


def _check_under(real: Path, roots: Sequence[Path]) -> None:
    if any(real.is_relative_to(p) for p in _PSEUDO) or not any(
        real.is_relative_to(root) for root in roots
    ):
        raise InputError("input is outside the worker's input-dirs")


def _check_path(path: str, input_dirs: Sequence[Path], options: Mapping[str, Any]) -> None:
    with open_allowed(path, input_dirs) as file, open_source(file, options.get("format")) as src:
        _bind(src, options)


def _check_url(url: str, prefixes: Sequence[str], options: Mapping[str, Any]) -> str:
    url = check_url(url, prefixes)
    with open_source(url, options.get("format")) as src:
        _bind(src, options)
    return url


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
        input_urls: Sequence[str],
        token_for: Callable[[str], str | None],
        rows_file: Callable[[str], Path],
    ) -> None:
        self._defaults = dict(defaults)  # checked with job_option when the config was read
        self._input_dirs = list(input_dirs)
        self._input_urls = list(input_urls)
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
                # In a thread: file and store checks never hold up the event loop.
                source = "url" if is_url(path) else "path"
                if source == "url":
                    path = await asyncio.to_thread(_check_url, path, self._input_urls, options)
                else:
                    await asyncio.to_thread(_check_path, path, self._input_dirs, options)
                _client_still_there(request)
                return Job(job_id, "queued", source, path, options)
            assert fmt is not None
            hashed = await asyncio.to_thread(_hash_body, await request.read(), fmt, options)
        except InputError as exc:
            raise Refusal(422, str(exc)) from None
        _client_still_there(request)
        job = await self._hashed_job(job_id, fmt, options, hashed)
        try:
            _client_still_there(request)  # it may have left while the rows were written
        except Refusal:
            await asyncio.to_thread(Path(job.input).unlink, missing_ok=True)
            raise
        return job

    def _check(self, options: Mapping[str, Any], path: str | None, fmt: str | None) -> None:
        for required in ("audience", "ad_account"):
            if not options.get(required):
                raise Refusal(400, f"{required} is required")
        if fmt is None and not path:
            raise Refusal(400, "input (a path or URL the worker can read) is required")
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


def _client_still_there(request: web.Request) -> None:
    """A request whose client left while it was checked is not made a job: nobody would
    learn its id, and a retry would run it twice."""
    if request.transport is None or request.transport.is_closing():
        log.info("request dropped: the client went away before the job was accepted")
        raise Refusal(400, "the client went away before the job was accepted")


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
