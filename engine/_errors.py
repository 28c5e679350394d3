"""The engine's error hierarchy: every failure a caller can see is one of these.

    EngineError
    ├── InputError ............ bad usage or input, found before anything is sent (exit 2)
    │   └── ConfigError ....... an option or a configuration file is wrong
    ├── ApiError .............. the Graph API answered with an error (carries ErrorInfo)
    ├── TransportError ........ no usable reply: timeout, reset, refused, unreadable body
    ├── RetriesExhausted ...... a batch kept failing past the retry limit (exit 1)
    ├── QuotaUnavailable ...... the shared quota's Redis stayed unreachable (exit 1)
    ├── Interrupted ........... the job was asked to stop (exit 3)
    ├── WindowClosed .......... internal: a batch was due past its session's window
    └── ReplaceRestart ........ internal: a replace starts over in a new session

Only `EngineError`, `InputError`, `ConfigError`, `ApiError` and `ErrorInfo` are public; the
library reports the others in a `Report` rather than raising them. Foreign errors (aiohttp's,
sqlite3's, the OS's) are mapped to these where they are met: the transport in
`_graph/client.py`, the readers in `_input/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._graph.facts import (
    PERMANENT_CODES,
    REPLACE_ERROR_CODE,
    REPLACE_FINISHED,
    REPLACE_IN_PROGRESS,
    REPLACE_RETRY_NEW_SESSION,
    REPLACE_TIMED_OUT,
    THROTTLE_CODES,
    TRANSIENT_CODES,
)

EMPTY_REPLACE = (
    "replace with zero valid rows would empty the audience; "
    "pass --allow-empty-replace to do that on purpose"
)


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InputError(EngineError):
    """Bad usage or unreadable input, found before anything is sent (exit code 2)."""


class ConfigError(InputError):
    """An option or configuration file is wrong."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Meta's error object, as the report carries it. Never holds a token."""

    code: int | None
    subcode: int | None
    type: str | None
    message: str
    user_title: str | None = None
    user_msg: str | None = None
    is_transient: bool = False
    http_status: int | None = None

    @classmethod
    def from_graph(cls, body: Any, http_status: int | None) -> ErrorInfo:
        """Parse a Graph API error body (`{"error": {...}}`); tolerant of any shape."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return cls(
                None,
                None,
                None,
                f"HTTP {http_status} without a Graph error body",
                http_status=http_status,
            )

        def _int(v: Any) -> int | None:
            try:
                return int(v)
            except (TypeError, ValueError):
                return None

        def _str(v: Any) -> str | None:
            return v if isinstance(v, str) and v else None

        return cls(
            code=_int(err.get("code")),
            subcode=_int(err.get("error_subcode")),
            type=_str(err.get("type")),
            message=_str(err.get("message")) or "",
            user_title=_str(err.get("error_user_title")),
            user_msg=_str(err.get("error_user_msg")),
            is_transient=err.get("is_transient") is True,
            http_status=http_status,
        )

    def to_dict(self) -> dict[str, Any]:
        """The report's `error` object (docs/report.md)."""
        return {
            "code": self.code,
            "subcode": self.subcode,
            "type": self.type,
            "message": self.message,
            "user_title": self.user_title,
            "user_msg": self.user_msg,
        }


class ApiError(EngineError):
    """The Graph API answered with an error. `headers` are the reply's headers (usage figures)."""

    def __init__(self, info: ErrorInfo, headers: Mapping[str, str] | None = None) -> None:
        self.info = info
        self.headers: Mapping[str, str] = headers or {}
        sub = f"/{info.subcode}" if info.subcode is not None else ""
        detail = f": {info.user_msg}" if info.user_msg else ""
        super().__init__(f"Graph API error {info.code}{sub}: {info.message}{detail}")

    @property
    def is_throttle(self) -> bool:
        """A rate-limit answer: the whole ad account pauses."""
        return self.info.code in THROTTLE_CODES

    @property
    def replace_ended(self) -> bool:
        """The replace session takes no more batches (timed out or already finished):
        the rest goes through /users add once the replace is done."""
        return self.info.code == REPLACE_ERROR_CODE and self.info.subcode in (
            REPLACE_TIMED_OUT,
            REPLACE_FINISHED,
        )

    @property
    def replace_retry(self) -> bool:
        """Meta asks for the replace to be tried again in a new session."""
        return (
            self.info.code == REPLACE_ERROR_CODE and self.info.subcode == REPLACE_RETRY_NEW_SESSION
        )

    @property
    def is_permanent(self) -> bool:
        """One of Meta's codes that no retry fixes: it stops the job even
        when the reply says `is_transient` or comes with an HTTP 5xx."""
        code = self.info.code
        return code is not None and (code in PERMANENT_CODES or 200 <= code <= 299)

    @property
    def is_transient(self) -> bool:
        """Worth retrying the same request after a backoff."""
        i = self.info
        if i.code in THROTTLE_CODES or i.code in TRANSIENT_CODES:
            return True
        if i.code == REPLACE_ERROR_CODE:
            return i.subcode == REPLACE_IN_PROGRESS
        if self.is_permanent:
            return False
        return i.is_transient or (i.http_status or 0) >= 500


class TransportError(EngineError):
    """No usable reply: timeout, reset, refused connection, unreadable body.

    `maybe_applied` is true when the request may have reached the API before the
    failure, so its effect is unknown.
    """

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class WindowClosed(EngineError):
    """A batch was due after its session's window: it was not sent and goes in a new session."""


class ReplaceRestart(EngineError):
    """A replace starts over from batch 1 in a new session (Meta's 2650/1870148 after part
    of it was acknowledged). The journal has already forgotten the acknowledged batches and
    opened the new session; the pipeline reads the input again from its start (batches are
    deterministic) and sends it all. `error` is Meta's answer."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(f"the replace starts over in a new session after {error}")
        self.error = error


class CheckpointError(EngineError):
    """The checkpoint could not be written (disk full, read-only, I/O error). No batch goes
    out until it can be; acknowledgements it could not record are kept in memory (exit 1)."""

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(None, None, "CheckpointError", str(self))


class QuotaUnavailable(EngineError):
    """The Redis holding an ad account's shared quota stayed unreachable past the wait: no
    call was made without it (exit code 1; the checkpoint resumes the job)."""

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(None, None, "QuotaUnavailable", str(self))


class Interrupted(EngineError):
    """The job was asked to stop; what was acknowledged stays acknowledged (exit code 3)."""


class RetriesExhausted(EngineError):
    """A batch kept failing with transient errors past the retry limit (exit code 1)."""

    def __init__(self, last: ApiError | TransportError, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.last = last

    @property
    def info(self) -> ErrorInfo:
        if isinstance(self.last, ApiError):
            return self.last.info
        return ErrorInfo(None, None, "TransportError", str(self.last))
