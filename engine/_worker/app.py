"""A long-lived worker: upload jobs over HTTP, many at once, resumed across restarts.

    python -m engine worker --config configs/worker.toml

One process serves a small JSON API (`POST /jobs`, `GET /jobs`, `GET /jobs/{id}`,
`DELETE /jobs/{id}`), `/healthz`, `/readyz` and Prometheus `/metrics`, and runs every job
through one `Uploader`: one connection pool and one rate limiter per ad account, shared by
all of that account's jobs (SPEC section 3). Jobs of one audience run one at a time, in
submission order, so a replace and an add never interleave; at most `max_jobs` run at once.

Jobs live in a SQLite table in the state dir and each has its own engine checkpoint there,
so nothing is lost to a restart: SIGTERM (or SIGINT) stops taking jobs, lets requests in
flight finish (within `grace_s`; a second signal stops at once), marks the jobs
"interrupted" and exits 0; on start, every unfinished job, including those of a kill -9,
resumes in its own session. Rows sent in a request body are normalized and hashed on
arrival and only the hashes are stored, so raw identifiers never reach disk (SPEC section 5).

Tokens come from the environment or a secrets file named in the config, never from a job
request. Logs are JSON lines on stderr carrying the job id and ad account of the job that
wrote them; they never hold a token or an identifier.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .._api import Uploader
from .._errors import ConfigError, InputError
from .._report import Progress, ProgressFn
from .intake import Intake, Refusal, open_allowed, with_intake
from .jobs import STATES, UNFINISHED, Job, JobStore, State
from .settings import (
    Layout,
    Secrets,
    WorkerConfig,
    check_exposure,
    load_config,
    load_secrets,
    tls_context,
)
from .telemetry import JobGauges, Metrics, job_context, setup_logging

__all__ = ["main"]

log = logging.getLogger("engine.worker")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_TERMINAL: frozenset[State] = frozenset({"completed", "failed", "cancelled"})
MAX_LIST = 1000  # most jobs one GET /jobs returns
RETRY_AFTER_S = "30"  # said with a 429 (queue full) or 503 (draining)
# Open to anyone who reaches the port, for load balancers and kubelets: they say only a status.
_PROBES = frozenset({"/healthz", "/readyz"})


# -- running jobs ------------------------------------------------------------------------------


class _KeyedLocks:
    """One FIFO lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(eq=False)
class _Live:
    """A job this process has taken on: waiting for its turn, or uploading."""

    job: Job
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # a drain: resume it later
    cancel: asyncio.Event = field(default_factory=asyncio.Event)  # DELETE asked: end it
    progress: Progress | None = None
    started: bool = False


class Worker:
    """Runs jobs: at most `max_jobs` at once, one at a time per audience, all through one
    Uploader (one rate limiter per ad account)."""

    def __init__(
        self,
        config: WorkerConfig,
        secrets: Secrets,
        layout: Layout,
        store: JobStore,
        uploader: Uploader,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._layout = layout
        self._store = store
        self._uploader = uploader
        self._metrics = metrics
        self._slots = asyncio.Semaphore(config.max_jobs)
        self._audiences = _KeyedLocks()
        self._live: dict[str, _Live] = {}
        self.draining = False

    @property
    def store(self) -> JobStore:
        return self._store

    def waiting(self) -> int:
        return sum(1 for live in self._live.values() if not live.started)

    def running(self) -> int:
        return sum(1 for live in self._live.values() if live.started)

    def pending_batches(self) -> dict[str, int]:
        """Batches cut and not yet acknowledged, by ad account, over the running jobs."""
        pending: dict[str, int] = {}
        for live in self._live.values():
            if live.progress is not None:
                left = live.progress.batches_total - live.progress.batches_sent
                pending[live.job.ad_account] = pending.get(live.job.ad_account, 0) + left
        return pending

    def progress(self, job_id: str) -> Progress | None:
        live = self._live.get(job_id)
        return live.progress if live else None

    def check_room(self) -> None:
        """Refusal(429) when `max_queued_jobs` jobs already wait for their turn."""
        waiting = self._store.count(UNFINISHED) - self.running()
        if waiting >= self._config.max_queued_jobs:
            raise Refusal(
                429, f"{waiting} jobs are waiting to run, the most this worker queues; retry later"
            )

    def submit(self, job: Job) -> Job:
        try:
            self.check_room()
        except Refusal:
            for path in self._layout.files_of(job.id):  # its hashed body rows
                path.unlink(missing_ok=True)
            raise
        stored = self._store.add(job)
        # Accepted while a drain began (its intake awaited): it waits for the next start.
        if not self.draining:
            self._start(stored)
        return stored

    def resume(self) -> None:
        """Take on every unfinished job, oldest first; drop files of jobs that ended."""
        jobs = self._store.unfinished()
        keep = {job.id for job in jobs}
        # Left by a job that ended just before a kill, or a body never stored as a job.
        for job_id, path in self._layout.files():
            if job_id not in keep:
                path.unlink(missing_ok=True)
        for job in jobs:
            with job_context(job):
                log.info("resuming job %s (%s)", job.id, job.state)
            self._start(job)

    def cancel(self, job: Job) -> None:
        """Cancel an unfinished job: at once unless it is uploading, else once its requests
        in flight finish and a replace under way is closed (its task then records it)."""
        live = self._live.get(job.id)
        if live is not None:
            live.cancel.set()
            if live.started:
                return
            live.task.cancel()
        # Not uploading: nothing else will write its state.
        with job_context(job):
            self._settle(job, "cancelled", None, "cancelled before it started; nothing was sent")

    async def drain(self, grace_s: float) -> None:
        """Stop taking jobs; waiting jobs stay queued, running ones stop after their
        requests in flight (cut short after `grace_s`); all resume at the next start."""
        self.draining = True
        for live in self._live.values():
            if live.started:
                live.stop.set()
            else:
                live.task.cancel()
        tasks = [live.task for live in self._live.values()]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def abort(self) -> None:
        """A second signal: stop every job now (checkpoints stay consistent)."""
        for live in self._live.values():
            live.task.cancel()

    def _start(self, job: Job) -> None:
        # The task first runs after this returns, when its _Live is in place.
        task = asyncio.create_task(self._run(job.id), name=f"job {job.id}")
        self._live[job.id] = _Live(job, task)
        task.add_done_callback(lambda _: self._live.pop(job.id, None))

    async def _run(self, job_id: str) -> None:
        live = self._live[job_id]
        job = live.job
        with job_context(job):
            await self._run_job(live)

    async def _run_job(self, live: _Live) -> None:
        job = live.job
        try:
            async with self._audiences.hold(job.audience_id), self._slots:
                live.started = True
                self._store.update(job.id, "running")
                log.info(
                    "job started: %s to audience %s",
                    job.options.get("mode", "add"),
                    job.audience_id,
                )
                state, report, error = await self._upload(live)
        except asyncio.CancelledError:
            if live.started and live.cancel.is_set():
                # Cut short by a second signal: a replace may be left open; say so.
                self._settle(job, "cancelled", None, "cancelled, then stopped at once")
            elif live.started:
                self._settle(job, "interrupted", None, None)
            raise
        self._settle(job, state, report, error)

    async def _upload(self, live: _Live) -> tuple[State, dict[str, Any] | None, str | None]:
        job = live.job
        source: BinaryIO | str = job.input  # a body's hashed rows: the worker's own file
        try:
            if job.source == "path":
                # Checked again, as at intake: the path may lead elsewhere by now. The job
                # reads the file opened here, never the path.
                source = await asyncio.to_thread(open_allowed, job.input, self._config.input_dirs)
        except InputError as exc:
            return "failed", None, str(exc)
        try:
            report = await self._uploader.upload(
                source,
                **job.options,
                access_token=self._secrets.token_for(job.ad_account),
                checkpoint=self._layout.checkpoint(job.id),
                state_dir=self._layout.root,  # a mirror's state, beside the worker's own
                restart=False,
                connect_timeout_s=self._config.connect_timeout_s,
                read_timeout_s=self._config.read_timeout_s,
                progress=self._progress_listener(live),
                stop=live.stop,
                cancel=live.cancel,
            )
        except InputError as exc:
            return "failed", None, str(exc)
        except Exception as exc:  # a bug fails its job, never the worker and the other jobs
            log.exception("job crashed")
            return "failed", None, f"internal error: {type(exc).__name__}"
        finally:
            if not isinstance(source, str):
                source.close()
        data = with_intake(report.to_dict(), job.intake)
        if report.status == "interrupted" and live.cancel.is_set():
            return "cancelled", data, report.message  # what was sent and what was not
        if report.status == "interrupted":
            return "interrupted", data, None
        if report.status == "completed":
            return "completed", data, None
        return "failed", data, report.message

    def _progress_listener(self, live: _Live) -> ProgressFn:
        def update(progress: Progress) -> None:
            self._metrics.progressed(live.job.ad_account, live.progress, progress)
            live.progress = progress

        return update

    def _settle(
        self, job: Job, state: State, report: dict[str, Any] | None, error: str | None
    ) -> None:
        self._store.update(job.id, state, report=report, error=error)
        level = logging.INFO if state in ("completed", "interrupted") else logging.WARNING
        # A cancel's message says "cancelled" itself.
        said = (
            error if error and error.startswith(state) else state + (f": {error}" if error else "")
        )
        log.log(level, "job %s", said)
        if state in _TERMINAL:
            # Its hashed rows and checkpoint are only good for resuming it.
            for path in self._layout.files_of(job.id):
                path.unlink(missing_ok=True)


# -- the HTTP API ------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as a JSON body, including aiohttp's own (404, 405, 413)."""
    try:
        return await handler(request)
    except Refusal as exc:
        refused = _error(exc.status, str(exc))
        if exc.status in (429, 503):
            refused.headers["Retry-After"] = RETRY_AFTER_S
        return refused
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


# A Host header: a name or an IPv4 address, or an IPv6 one in brackets, and maybe a port.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::[0-9]{1,5})?")


def _allowed_hosts(config: WorkerConfig) -> frozenset[str]:
    """The configured names, and the address the worker listens on unless it is a wildcard."""
    names = set(config.allowed_hosts)
    if config.host not in ("0.0.0.0", "::", ""):
        names.add(f"[{config.host}]" if ":" in config.host else config.host.lower())
    return frozenset(names)


def _host_check(allowed: frozenset[str]) -> Middleware:
    """Refuse a Host header the worker does not answer to: a web page that reaches a loopback
    worker by DNS rebinding sends its own host name."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _PROBES:
            match = _HOST.fullmatch(request.headers.get("Host", "").lower())
            if match is None or match[1] not in allowed:
                return _error(421, "this worker does not answer to that Host (allowed_hosts)")
        return await handler(request)

    return check


def _body_deadline(seconds: float) -> Middleware:
    """A request body must arrive within `seconds`: a client that trickles it in byte by
    byte would otherwise hold a connection, and its memory, for as long as it likes."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(seconds):
                    await request.read()  # kept: the handler's own read returns it
            except TimeoutError:
                late = _error(408, f"the request body did not arrive within {seconds:g} s")
                late.force_close()
                return late
        return await handler(request)

    return deadline


def _bearer(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _PROBES:
            # Header text is Latin-1 on the wire: surrogateescape keeps odd bytes comparable.
            given = request.headers.get("Authorization", "").encode(errors="surrogateescape")
            if not hmac.compare_digest(given, expected):
                denied = _error(401, "a valid bearer token is required")
                denied.headers["WWW-Authenticate"] = "Bearer"
                return denied
        return await handler(request)

    return check


class _Api:
    def __init__(self, worker: Worker, intake: Intake, metrics: Metrics) -> None:
        self._worker = worker
        self._intake = intake
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/jobs", self.submit),
            web.get("/jobs", self.list_jobs),
            web.get("/jobs/{id}", self.show),
            web.delete("/jobs/{id}", self.cancel),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]

    def _view(self, job: Job) -> dict[str, Any]:
        progress = self._worker.progress(job.id)
        return {**job.view(), "progress": dataclasses.asdict(progress) if progress else None}

    def _job(self, request: web.Request) -> Job:
        job = self._worker.store.get(request.match_info["id"])
        if job is None:
            raise Refusal(404, "no such job")
        return job

    async def submit(self, request: web.Request) -> web.Response:
        if self._worker.draining:
            raise Refusal(503, "the worker is shutting down; submit again later")
        self._worker.check_room()  # before reading the body; submit checks again
        job = await self._intake.job(request)
        if job.intake:
            self._metrics.rejected_on_arrival(job.ad_account, job.intake["rows_rejected"])
        job = self._worker.submit(job)
        with job_context(job):
            log.info("job accepted for audience %s (%s)", job.audience_id, job.source)
        return web.json_response(
            self._view(job), status=201, headers={"Location": f"/jobs/{job.id}"}, dumps=_dumps
        )

    async def list_jobs(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in STATES:
            raise Refusal(400, f"state must be one of {', '.join(STATES)}")
        limit = request.query.get("limit", "100")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_LIST:
            raise Refusal(400, f"limit must be a whole number from 1 to {MAX_LIST}")
        jobs = self._worker.store.jobs(state, int(limit))
        return web.json_response({"jobs": [self._view(j) for j in jobs]}, dumps=_dumps)

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response(self._view(self._job(request)), dumps=_dumps)

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state in _TERMINAL:
            raise Refusal(409, f"the job is already {job.state}")
        self._worker.cancel(job)
        return web.json_response(self._view(self._job(request)), status=202, dumps=_dumps)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._worker.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )


def make_app(
    config: WorkerConfig, secrets: Secrets, worker: Worker, intake: Intake, metrics: Metrics
) -> web.Application:
    middlewares: list[Middleware] = [_errors, _host_check(_allowed_hosts(config))]
    if secrets.api_token:
        middlewares.append(_bearer(secrets.api_token))
    middlewares.append(_body_deadline(config.body_timeout_s))
    app = web.Application(
        middlewares=middlewares, client_max_size=int(config.max_body_mb * 1024 * 1024)
    )
    app.add_routes(_Api(worker, intake, metrics).routes())
    return app


# -- the process -------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals(first: Callable[[], None], second: Callable[[], None]) -> Iterator[None]:
    """SIGTERM or SIGINT: `first` the first time, `second` after that."""
    loop = asyncio.get_running_loop()
    seen = False

    def on_signal() -> None:
        nonlocal seen
        (second if seen else first)()
        seen = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve(
    config: WorkerConfig, secrets: Secrets, layout: Layout, tls: ssl.SSLContext | None = None
) -> int:
    """Run until SIGTERM or SIGINT, then drain; the exit code."""
    store = JobStore(layout.table)
    metrics = Metrics(config.max_metric_accounts)
    try:
        async with Uploader(
            api_base=config.api_base,
            api_version=config.api_version,
            limits=config.limits,
            app_secret=secrets.app_secret,
            on_request=metrics.on_request,
        ) as uploader:
            worker = Worker(config, secrets, layout, store, uploader, metrics)
            metrics.watch(
                JobGauges(store.counts, worker.waiting, worker.running, worker.pending_batches)
            )
            intake = Intake(
                defaults=config.job_defaults,
                input_dirs=config.input_dirs,
                token_for=secrets.token_for,
                rows_file=layout.rows_file,
            )
            # aiohttp closes a connection that has not sent a whole request head this long
            # after it opened or after its last response (slow headers, idle keep-alive).
            runner = web.AppRunner(
                make_app(config, secrets, worker, intake, metrics),
                keepalive_timeout=config.header_timeout_s,
            )
            await runner.setup()
            try:
                return await _run_site(config, runner, worker, tls)
            finally:
                await runner.cleanup()
    finally:
        store.close()


async def _run_site(
    config: WorkerConfig, runner: web.AppRunner, worker: Worker, tls: ssl.SSLContext | None
) -> int:
    site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return EXIT_FAILED
    host, port = runner.addresses[0][:2]
    scheme = "https" if tls else "http"
    url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    # On stdout for whoever started us (port 0 picks a free one); the log has it too.
    print(f"audience-engine worker listening on {url}", flush=True)
    log.info("listening on %s", url)
    stopping = asyncio.Event()
    with _signals(stopping.set, worker.abort):
        worker.resume()
        await stopping.wait()
        log.info("draining: no new jobs; running jobs stop after their requests in flight")
        await worker.drain(config.grace_s)
    log.info("stopped")
    return EXIT_OK


def main(argv: list[str]) -> int:
    """`python -m engine worker --config FILE`."""
    parser = argparse.ArgumentParser(
        prog="audience-engine worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="the worker's TOML config file")
    args = parser.parse_args(argv)
    setup_logging("info")  # until the config says otherwise: its warnings are JSON too
    try:
        config = load_config(Path(args.config))
        secrets = load_secrets(config.secrets_file, os.environ)
        check_exposure(config, secrets)
        tls = tls_context(config)
        layout = Layout(config.state_dir)
        layout.create()
        lock = layout.lock()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with lock:
        setup_logging(config.log_level)
        return asyncio.run(serve(config, secrets, layout, tls))
