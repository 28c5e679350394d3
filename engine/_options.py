"""What one upload job is: every option of SPEC section 6, checked once, before any work."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._errors import ConfigError
from ._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION, Mode
from ._graph.facts import MAX_BATCH_ROWS, SESSION_WINDOW_S
from ._resume.checkpoint import Acknowledgement

MODES: tuple[Mode, ...] = ("add", "remove", "replace")
# Requests in flight per job, at most (the session coordinator's byte budget also bounds
# them). Enough to hide a 200 ms round trip at full hashing speed with one-key rows (60
# batches/s of 10,000 need 12 in flight, and the slack absorbs jitter); the rate limiter,
# not this, keeps the account's pace.
DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class _Bound:
    """A numeric option's allowed values: at least `low` (above it when `open_low`), at most
    `high`; whole numbers only when `integer`."""

    integer: bool
    low: float
    high: float | None = None
    open_low: bool = False

    def problem(self, value: object) -> str | None:
        """What is wrong with `value`, or None. Never quotes a value that is not a number."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {type(value).__name__}"
        if self.integer and not isinstance(value, int):
            return f"must be a whole number, got {value}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if value < self.low or (self.open_low and value == self.low):
            return f"must be {'above' if self.open_low else 'at least'} {self.low:g}, got {value}"
        if self.high is not None and value > self.high:
            return f"must be at most {self.high:g}, got {value}"
        return None


# Every numeric upload option, whoever sets it (library, command line, config file, worker).
OPTION_BOUNDS: dict[str, _Bound] = {
    "batch_size": _Bound(True, 1, MAX_BATCH_ROWS),
    "concurrency": _Bound(True, 1),
    "workers": _Bound(True, 0),
    "max_retries": _Bound(True, 0),
    "connect_timeout_s": _Bound(False, 0, open_low=True),
    "read_timeout_s": _Bound(False, 0, open_low=True),
    "session_window_s": _Bound(False, 0, open_low=True),
    "rate": _Bound(False, 0, open_low=True),
    "burst": _Bound(True, 1),
    "max_throttle_wait": _Bound(False, 0),
    "grace": _Bound(False, 0),
}


def check_bounds(**options: object) -> None:
    """Raise ConfigError naming the first option (of OPTION_BOUNDS) out of its bounds;
    None means "the default" and passes."""
    for name, value in options.items():
        if value is not None and (problem := OPTION_BOUNDS[name].problem(value)):
            raise ConfigError(f"{name} {problem}")


def new_session_id() -> int:
    """A random positive int64 (Meta wants it unique per ad account)."""
    return secrets.randbits(63) or 1


@dataclass(frozen=True, slots=True)
class Credentials:
    """The secrets. Kept apart from the job so a job can be logged or stored safely."""

    access_token: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class UploadJob:
    """One upload: where from, where to, and how. Validated on construction."""

    source: str
    audience_id: str
    ad_account: str
    mode: Mode = "add"
    schema: str | None = None
    column_map: Mapping[str, str] = field(default_factory=dict)
    format: str | None = None
    prehashed: bool = False
    default_country_code: str | None = None
    batch_size: int = MAX_BATCH_ROWS
    concurrency: int = DEFAULT_CONCURRENCY
    workers: int | None = None  # normalize+hash processes; None: decided from the machine
    api_base: str = DEFAULT_API_BASE
    api_version: str = DEFAULT_API_VERSION
    session_id: int | None = None
    dry_run: bool = False
    allow_empty_replace: bool = False
    rejects_path: str | None = None
    max_retries: int = 8
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    checkpoint: str | None = None  # SQLite file that makes the job resumable
    restart: bool = False  # ignore (and overwrite) an unfinished checkpoint
    session_window_s: float = SESSION_WINDOW_S  # smaller only against a time-scaled fake
    # Acknowledgements a failed run could not record: added to the checkpoint on resuming.
    unrecorded_batches: tuple[Acknowledgement, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+", self.audience_id):
            raise ConfigError(f"audience id must be numeric, got {self.audience_id!r}")
        # Bounded: the id becomes a metric label and a log field.
        if not re.fullmatch(r"act_[0-9]{1,20}", self.ad_account):
            raise ConfigError("ad account must look like act_123: act_ and 1 to 20 digits")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_bounds(
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            workers=self.workers,
            max_retries=self.max_retries,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            session_window_s=self.session_window_s,
        )
        if self.session_id is not None and not 0 < self.session_id < 2**63:
            raise ConfigError("session id must be a positive 64-bit integer")
        if not re.fullmatch(r"v\d+\.\d+", self.api_version):
            raise ConfigError(f"api version must look like v25.0, got {self.api_version!r}")
        if self.default_country_code is not None and not re.fullmatch(
            r"\d{1,3}", self.default_country_code
        ):
            raise ConfigError("default country code must be 1 to 3 digits")
