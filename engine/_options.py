"""The options of one upload, declared once: `UploadJob`'s fields carry each option's default,
bounds, help and where it may be set (see `option`). The command line's flags, the worker's job
fields and the config files' keys are derived from them; the library's keywords
(`Uploader.upload`, `UploadOptions`) are written out for type checkers and held to this table
by a test. Meta's own limits come from `_graph/facts.py`.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal

from ._errors import ConfigError
from ._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION
from ._graph.facts import MAX_BATCH_ROWS, SESSION_WINDOW_S
from ._resume.checkpoint import Acknowledgement, CheckpointStore

JobMode = Literal["add", "remove", "replace", "mirror"]
MODES: tuple[JobMode, ...] = ("add", "remove", "replace", "mirror")
# Requests in flight per job, at most (the session coordinator's byte budget also bounds
# them). Enough to hide a 200 ms round trip at full hashing speed with one-key rows (60
# batches/s of 10,000 need 12 in flight, and the slack absorbs jitter); the rate limiter,
# not this, keeps the account's pace.
DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class Bound:
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


_COUNT = Bound(True, 1)
_SECONDS = Bound(False, 0, open_low=True)
# Numeric options of the process rather than of one job (the rate limiter, signals): the
# command line and config files check them with the same rules.
PROCESS_BOUNDS: dict[str, Bound] = {
    "rate": Bound(False, 0, open_low=True),
    "burst": _COUNT,
    "max_throttle_wait": Bound(False, 0),
    "grace": Bound(False, 0),
}


def check_bounds(**options: object) -> None:
    """Raise ConfigError naming the first option out of its bounds; None means "the
    default" and passes."""
    for name, value in options.items():
        if value is not None and (problem := _bound_of(name).problem(value)):
            raise ConfigError(f"{name} {problem}")


def _bound_of(name: str) -> Bound:
    if name in PROCESS_BOUNDS:
        return PROCESS_BOUNDS[name]
    bound = _meta(JOB_FIELDS[name]).get("bound")
    assert isinstance(bound, Bound), name
    return bound


def option(
    default: Any,
    help: str,
    *,
    kind: type | None = None,
    bound: Bound | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = "",
    keyword: str = "",
    worker: bool = False,
) -> Any:
    """A field of `UploadJob` that is an option. `kind`: its plain type (from the default
    when not given); `flag`: its command-line flag ("" for `--the-keyword`, None for none,
    which also keeps it out of config files); `keyword`: its name in `Uploader.upload`
    ("" for the field's own name); `worker`: whether a job sent to the worker may set it."""
    meta = {
        "help": help,
        "kind": kind or type(default),
        "bound": bound,
        "choices": choices,
        "flag": flag,
        "keyword": keyword,
        "worker": worker,
    }
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def new_session_id() -> int:
    """A random positive int64 (Meta wants it unique per ad account)."""
    return secrets.randbits(63) or 1


@dataclass(frozen=True, slots=True)
class UploadJob:
    """One upload: where from, where to, and how. Validated on construction.

    Every field but `source` and `unrecorded_batches` is an option (see `option`)."""

    source: str
    audience_id: str = option(
        "", "Custom Audience id (required)", flag="--audience", keyword="audience", worker=True
    )
    ad_account: str = option(
        "", "ad account that owns it, act_ID: the rate-limit key (required)", worker=True
    )
    mode: JobMode = option("add", "what the upload does", choices=MODES, kind=str, worker=True)
    schema: str | None = option(
        None,
        "keys in payload order, e.g. EMAIL,PHONE (default: from the columns)",
        kind=str,
        worker=True,
    )
    column_map: Mapping[str, str] = option(
        {}, "column for a key, KEY=column (repeatable)", flag="--map", worker=True
    )
    format: str | None = option(
        None,
        "input format (default: from the file name)",
        kind=str,
        choices=("csv", "jsonl", "parquet"),
        worker=True,
    )
    prehashed: bool = option(
        False,
        "values are already normalized and hashed: validated, not hashed again",
        worker=True,
    )
    default_country_code: str | None = option(
        None,
        "calling code for phone numbers written without one, e.g. 1 (a row's COUNTRY wins)",
        kind=str,
        worker=True,
    )
    batch_size: int = option(
        MAX_BATCH_ROWS, "rows per request", bound=Bound(True, 1, MAX_BATCH_ROWS), worker=True
    )
    concurrency: int = option(
        DEFAULT_CONCURRENCY, "requests in flight at once", bound=_COUNT, worker=True
    )
    workers: int | None = option(
        None, "hashing processes (default: by input size)", kind=int, bound=Bound(True, 0)
    )
    api_base: str = option(DEFAULT_API_BASE, "Graph API base URL", keyword="-")
    api_version: str = option(DEFAULT_API_VERSION, "Graph API version", keyword="-")
    session_id: int | None = option(
        None,
        "session id of a new session (default: random)",
        kind=int,
        bound=Bound(True, 1, 2**63 - 1),
    )
    dry_run: bool = option(
        False, "read, normalize, hash, batch, inspect the list and report; send nothing"
    )
    skip_audience_check: bool = option(
        False,
        "send without reading the audience first (docs/audiences.md)",
        flag="--no-audience-check",
        worker=True,
    )
    allow_empty_replace: bool = option(
        False, "let a replace with zero valid rows empty the audience", worker=True
    )
    rejects_path: str | None = option(
        None,
        "write rejected rows there (CSV: row, key, reason; never the value)",
        kind=str,
        flag="--rejects",
    )
    max_retries: int = option(8, "retries of a failed request", bound=Bound(True, 0), worker=True)
    connect_timeout_s: float = option(
        10.0, "seconds to connect", bound=_SECONDS, flag="--connect-timeout"
    )
    read_timeout_s: float = option(
        120.0,
        "seconds to wait for reply data before retrying",
        bound=_SECONDS,
        flag="--read-timeout",
    )
    checkpoint: str | None = option(
        None, "progress file; the same command resumes (default: one per job)", kind=str
    )
    restart: bool = option(
        False, "start over in a new session although the checkpoint says the job is unfinished"
    )
    session_window_s: float = option(
        float(SESSION_WINDOW_S),
        "Meta's session window in seconds (change it only for a time-scaled fake)",
        bound=_SECONDS,
        flag="--session-window",
    )
    state_dir: str | None = option(
        None,
        "where mirror state is kept (default $XDG_STATE_HOME/audience-engine)",
        kind=str,
    )
    resync: bool = option(
        False, "mirror: forget the state and establish it again with a replace", worker=True
    )
    allow_large_removal: bool = option(
        False, "mirror: remove more than --max-removal-share of the audience", worker=True
    )
    max_removal_share: float = option(
        0.2,
        "mirror: largest share of the audience a mirror removes without --allow-large-removal",
        bound=Bound(False, 0, 1),
        worker=True,
    )
    replace_threshold: float = option(
        0.5,
        "mirror: replace instead when the diff (added + removed) exceeds this share of the list",
        bound=Bound(False, 0, open_low=True),
        worker=True,
    )
    # Acknowledgements a failed run could not record: added to the checkpoint on resuming.
    unrecorded_batches: tuple[Acknowledgement, ...] = ()
    # A checkpoint kept elsewhere than a file (a fleet's, in Redis); `checkpoint` names it.
    checkpoint_store: CheckpointStore | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            meta = _meta(f)
            value = getattr(self, f.name)
            if meta.get("bound") is not None and value is not None:
                check_bounds(**{f.name: value})
            choices = meta.get("choices")
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{_keyword(f)} must be one of {', '.join(choices)}")
        if not re.fullmatch(r"\d+", self.audience_id):
            raise ConfigError("audience id must be numeric")
        # Bounded: the id becomes a metric label and a log field.
        if not re.fullmatch(r"act_[0-9]{1,20}", self.ad_account):
            raise ConfigError("ad account must look like act_123: act_ and 1 to 20 digits")
        if not re.fullmatch(r"v\d+\.\d+", self.api_version):
            raise ConfigError("api version must look like v25.0")
        if self.default_country_code is not None and not re.fullmatch(
            r"\d{1,3}", self.default_country_code
        ):
            raise ConfigError("default country code must be 1 to 3 digits")


def _meta(f: Field[Any]) -> Mapping[str, Any]:
    return f.metadata


def _keyword(f: Field[Any]) -> str:
    keyword = str(_meta(f).get("keyword") or f.name)
    return keyword


JOB_FIELDS: dict[str, Field[Any]] = {f.name: f for f in fields(UploadJob) if f.metadata}


@dataclass(frozen=True, slots=True)
class Option:
    """One option as the outside sees it: its keyword, flag, plain type, default and help."""

    field: str  # UploadJob's field
    keyword: str  # Uploader.upload's keyword, or "" when it is set on the Uploader
    flag: str | None
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    worker: bool


def job_options() -> list[Option]:
    """Every option of a job, in declaration order."""
    out = []
    for f in JOB_FIELDS.values():
        meta = _meta(f)
        keyword = "" if meta["keyword"] == "-" else _keyword(f)
        flag = meta["flag"]
        if flag == "":
            flag = "--" + (keyword or f.name).replace("_", "-")
        default = {} if f.default is MISSING else f.default
        out.append(
            Option(
                f.name,
                keyword,
                flag,
                meta["kind"],
                default,
                meta["help"],
                meta["choices"],
                meta["worker"],
            )
        )
    return out
