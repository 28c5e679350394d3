"""The library API: `upload()`, `upload_sync()` and `Uploader`, which the CLI and worker use too.

The library never exits the process, installs signal handlers or configures logging:
those belong to the programs that embed it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import aiohttp

from ._errors import InputError
from ._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION, GraphClient
from ._graph.facts import MAX_BATCH_ROWS, SESSION_WINDOW_S
from ._input.memory import Source, aopen_source, file_name
from ._input.remote import is_url, shown
from ._mirror.mirror import run_mirror
from ._options import DEFAULT_CONCURRENCY, JobMode, UploadJob
from ._pipeline.run import RequestHook, run_job
from ._pipeline.sender import RetryPolicy
from ._quota.account import QuotaRegistry
from ._quota.limiter import LimiterConfig, LimiterRegistry
from ._report import ProgressFn, Report
from ._resume.checkpoint import CheckpointStore, acks_from_report

if TYPE_CHECKING:
    from ._fleet.quota import SharedRegistry

__all__ = ["UploadOptions", "Uploader", "upload", "upload_sync"]


def _shared_registry(url: str, config: LimiterConfig) -> SharedRegistry:
    """The Redis-backed registry; the fleet extra is imported only when a URL is given."""
    try:
        from ._fleet.quota import SharedRegistry
    except ImportError:
        raise InputError(
            "a Redis URL needs the fleet extra: pip install 'audience-engine[fleet]'"
        ) from None
    return SharedRegistry(url, config)


class _Target(TypedDict):
    audience: str | int
    ad_account: str


class UploadOptions(_Target, total=False):
    """The keyword options of `Uploader.upload`, as `upload()` and `upload_sync()` take them.

    `audience` and `ad_account` are required, the rest optional; defaults and meanings are
    those of `Uploader.upload`. With `**options: Unpack[UploadOptions]` a type checker
    checks each option's name and type, in your own wrappers too. The items mirror
    `Uploader.upload`'s keyword parameters one for one (a test holds them to it).
    """

    mode: JobMode
    schema: str | Sequence[str] | None
    column_map: Mapping[str, str] | None
    format: str | None
    prehashed: bool
    default_country_code: str | None
    batch_size: int
    concurrency: int
    workers: int | None
    session_id: int | None
    dry_run: bool
    skip_audience_check: bool
    allow_empty_replace: bool
    rejects_path: str | os.PathLike[str] | None
    max_retries: int
    connect_timeout_s: float
    read_timeout_s: float
    checkpoint: str | os.PathLike[str] | CheckpointStore | None
    restart: bool
    session_window_s: float
    state_dir: str | os.PathLike[str] | None
    resync: bool
    allow_large_removal: bool
    max_removal_share: float
    replace_threshold: float
    unrecorded_batches: Sequence[Mapping[str, Any]] | None
    access_token: str | None
    app_secret: str | None
    progress: ProgressFn | None
    stop: asyncio.Event | None
    cancel: asyncio.Event | None


class Uploader:
    """Runs uploads over one HTTP connection pool, sharing one rate limiter per ad account.

    Use it as an async context manager and call `upload()` as often as needed, one job after
    another or many at once: jobs of the same ad account draw from the same budget, as Meta
    counts calls per ad account. `access_token` and `app_secret` default to the
    `META_ACCESS_TOKEN` and `META_APP_SECRET` environment variables and can be overridden
    per upload. `on_request` is called after every API request with its outcome
    ("ok", "throttled", "transient", "permanent" or "transport") and duration in seconds.

    With `redis_url` (needs the `fleet` extra) each ad account's budget lives in that Redis
    and is shared with every process given the same URL: other uploaders, CLI runs, a fleet
    of workers. Without it the budget is this uploader's own.
    """

    def __init__(
        self,
        *,
        access_token: str | None = None,
        app_secret: str | None = None,
        api_base: str = DEFAULT_API_BASE,
        api_version: str = DEFAULT_API_VERSION,
        limits: LimiterConfig | None = None,
        limiters: QuotaRegistry | None = None,
        redis_url: str | None = None,
        max_connections: int = 64,
        on_request: RequestHook | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self._token = access_token or os.environ.get("META_ACCESS_TOKEN")
        self._app_secret = app_secret or os.environ.get("META_APP_SECRET")
        self._api_base = api_base
        self._api_version = api_version
        self._shared: SharedRegistry | None = None
        if limiters is None and redis_url:
            self._shared = limiters = _shared_registry(redis_url, limits or LimiterConfig())
        self._limiters = limiters or LimiterRegistry(limits or LimiterConfig())
        self._max_connections = max_connections
        self._on_request = on_request
        self._trace_configs = list(trace_configs)  # a fleet's lease check before each request
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # the token stays out of reprs and tracebacks
        return f"Uploader(api_base={self._api_base!r}, api_version={self._api_version!r})"

    @property
    def limiters(self) -> QuotaRegistry:
        """The per-ad-account limiters this uploader's jobs share."""
        return self._limiters

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool. Uploads still running fail; start no more after this."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._shared is not None:
            await self._shared.close()
            self._shared = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            # Timeouts are per request (per job); the pool itself never times out.
            self._http = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                trace_configs=self._trace_configs or None,
            )
        return self._http

    async def upload(
        self,
        source: Source,
        *,
        audience: str | int,
        ad_account: str,
        mode: JobMode = "add",
        schema: str | Sequence[str] | None = None,
        column_map: Mapping[str, str] | None = None,
        format: str | None = None,
        prehashed: bool = False,
        default_country_code: str | None = None,
        batch_size: int = MAX_BATCH_ROWS,
        concurrency: int = DEFAULT_CONCURRENCY,
        workers: int | None = None,
        session_id: int | None = None,
        dry_run: bool = False,
        skip_audience_check: bool = False,
        allow_empty_replace: bool = False,
        rejects_path: str | os.PathLike[str] | None = None,
        max_retries: int = 8,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        checkpoint: str | os.PathLike[str] | CheckpointStore | None = None,
        restart: bool = False,
        session_window_s: float = SESSION_WINDOW_S,
        state_dir: str | os.PathLike[str] | None = None,
        resync: bool = False,
        allow_large_removal: bool = False,
        max_removal_share: float = 0.2,
        replace_threshold: float = 0.5,
        unrecorded_batches: Sequence[Mapping[str, Any]] | None = None,
        access_token: str | None = None,
        app_secret: str | None = None,
        progress: ProgressFn | None = None,
        stop: asyncio.Event | None = None,
        cancel: asyncio.Event | None = None,
    ) -> Report:
        """Upload one people list to one Custom Audience and return its report.

        `source` is a path (CSV, JSON Lines or Parquet, optionally .gz; "-" for stdin), a URL
        (s3://, gs://, az://, http(s)://, streamed from the store with its own credential
        chain: docs/object-storage.md), a file opened in binary mode (read as it is, its
        name giving the format), an iterable or async iterable of dicts or tuples (tuples in
        `schema` order, or named with `Rows(data, columns)`), a pandas or polars DataFrame,
        or a pyarrow Table, RecordBatch or RecordBatchReader. Plain iterables are read in a
        worker thread, async ones on the event loop. `schema` lists the keys in payload order
        (default: inferred from column names); `column_map` maps keys to columns.

        Raises InputError (or its subclass ConfigError) for bad usage or input, before
        anything is sent. API refusals and exhausted retries come back as a report with
        status "failed" and the API's error. Setting `stop` ends the job early: requests in
        flight finish and the report says "interrupted". Setting `cancel` ends it for good:
        the same, but a replace under way is closed first (the batch due next goes as its
        last, and the call returns once Meta has finished the replace), and the report's
        message says what was sent. `progress` receives running counts. Before batch 1 the
        audience is read and a wrong one refused (AudienceRefused, an InputError), unless
        `skip_audience_check`; a dry run sends nothing and inspects the list instead
        (the report's `inspection`; docs/inspect.md).

        With `checkpoint` (a SQLite file path), every acknowledged batch is recorded there,
        and calling `upload` again with the same checkpoint and input resumes the job in the
        same session, sending only what was not acknowledged. A checkpoint of a different
        job or of changed input is refused unless `restart` is set. `session_window_s` is
        Meta's 90-minute session window; change it only for a fake with a time scale.
        When the checkpoint cannot be written the job stops sending, and its report lists
        the batches the API acknowledged that the checkpoint does not hold
        (`unrecorded_batches`): pass them back here when resuming, and they are not sent
        again.

        `mode="mirror"` makes the audience hold exactly the input's valid rows, sending only
        what changed since the last mirror (docs/mirror.md): its state is kept per audience in
        `state_dir` (default $XDG_STATE_HOME/audience-engine); `resync` sets it again with a
        replace; a diff above `replace_threshold` of the list goes as a replace; removals
        above `max_removal_share` of the audience raise InputError, nothing sent, unless
        `allow_large_removal`. A mirror keeps its own progress there (not in `checkpoint`).

        The keyword parameters are the items of `UploadOptions`, which `upload()` and
        `upload_sync()` take: change both together.
        """
        token = access_token or self._token
        if not dry_run and not token:
            raise InputError("no access token: pass access_token or set META_ACCESS_TOKEN")
        job = UploadJob(
            source=_name(source),
            audience_id=str(audience),
            ad_account=ad_account,
            mode=mode,
            schema=schema if schema is None or isinstance(schema, str) else ",".join(schema),
            column_map=dict(column_map or {}),
            format=format,
            prehashed=prehashed,
            default_country_code=default_country_code,
            batch_size=batch_size,
            concurrency=concurrency,
            workers=workers,
            api_base=self._api_base,
            api_version=self._api_version,
            session_id=session_id,
            dry_run=dry_run,
            skip_audience_check=skip_audience_check,
            allow_empty_replace=allow_empty_replace,
            rejects_path=os.fspath(rejects_path) if rejects_path is not None else None,
            max_retries=max_retries,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            checkpoint=_checkpoint_name(checkpoint),
            checkpoint_store=None if isinstance(checkpoint, str | os.PathLike) else checkpoint,
            restart=restart,
            session_window_s=session_window_s,
            state_dir=os.fspath(state_dir) if state_dir is not None else None,
            resync=resync,
            allow_large_removal=allow_large_removal,
            max_removal_share=max_removal_share,
            replace_threshold=replace_threshold,
            unrecorded_batches=tuple(acks_from_report(unrecorded_batches or [])),
        )
        client = None
        if not dry_run:
            client = GraphClient(
                self._session(),
                access_token=token or "",
                app_secret=app_secret or self._app_secret,
                api_base=self._api_base,
                api_version=self._api_version,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
                ),
            )
        run = run_mirror if mode == "mirror" else run_job
        with await aopen_source(source, format) as opened:
            return await run(
                job,
                opened,
                client,
                self._limiters.get(ad_account),
                retry=RetryPolicy(max_retries=max_retries),
                progress=progress,
                stop=stop,
                on_request=self._on_request,
                cancel=cancel,
            )


def _name(source: Source) -> str:
    """The path, the URL as shown (no credentials), or the kind of object: the checkpoint's
    key."""
    if isinstance(source, str) and is_url(source):
        return shown(source)
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return file_name(source) or f"<{type(source).__name__}>"


async def upload(
    source: Source,
    *,
    api_base: str = DEFAULT_API_BASE,
    api_version: str = DEFAULT_API_VERSION,
    limits: LimiterConfig | None = None,
    **options: Unpack[UploadOptions],
) -> Report:
    """Upload one people list with a one-off `Uploader`; see `Uploader.upload` for options.

    `api_base`, `api_version` and `limits` configure that `Uploader`; every other keyword
    is an `UploadOptions` item (`access_token` and `app_secret` among them).
    """
    async with Uploader(api_base=api_base, api_version=api_version, limits=limits) as uploader:
        return await uploader.upload(source, **options)


def upload_sync(
    source: Source,
    *,
    api_base: str = DEFAULT_API_BASE,
    api_version: str = DEFAULT_API_VERSION,
    limits: LimiterConfig | None = None,
    **options: Unpack[UploadOptions],
) -> Report:
    """Blocking `upload()`, same arguments, for plain scripts.

    Raises RuntimeError inside a running event loop (a notebook, an async framework):
    await `upload()` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "upload_sync() cannot run inside a running event loop (a notebook or async "
            "framework); use `await engine.upload(...)` there"
        )
    return asyncio.run(
        upload(source, api_base=api_base, api_version=api_version, limits=limits, **options)
    )


def _checkpoint_name(checkpoint: str | os.PathLike[str] | CheckpointStore | None) -> str | None:
    """A checkpoint file's path, or how a store other than a file names itself."""
    if checkpoint is None or isinstance(checkpoint, str | os.PathLike):
        return None if checkpoint is None else os.fspath(checkpoint)
    return checkpoint.label
