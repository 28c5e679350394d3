"""A long-lived worker: upload jobs over HTTP, many at once, resumed across restarts.

    python -m engine worker --config configs/worker.toml

One process serves a small JSON API (`POST /jobs`, `GET /jobs`, `GET /jobs/{id}`,
`DELETE /jobs/{id}`), `/healthz`, `/readyz` and Prometheus `/metrics`, and runs every job
through one `Uploader`: one connection pool and one rate limiter per ad account, shared by
all of that account's jobs. Jobs of one audience run one at a time, in
submission order, so a replace and an add never interleave; at most `max_jobs` run at once.

Jobs live in a SQLite table in the state dir and each has its own engine checkpoint there,
so nothing is lost to a restart: SIGTERM (or SIGINT) stops taking jobs, lets requests in
flight finish (within `grace_s`; a second signal stops at once), marks the jobs
"interrupted" and exits 0; on start, every unfinished job, including those of a kill -9,
resumes in its own session. Rows sent in a request body are normalized and hashed on
arrival and only the hashes are stored, so raw identifiers never reach disk.

Tokens come from the environment or a secrets file named in the config, never from a job
request. Logs are JSON lines on stderr carrying the job id and ad account of the job that
wrote them; they never hold a token or an identifier.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._api import Uploader
from .._errors import ConfigError
from .app import make_app
from .intake import Intake
from .jobs import JobStore, JobTable
from .scheduler import Worker
from .settings import (
    Layout,
    Secrets,
    WorkerConfig,
    check_exposure,
    load_config,
    load_secrets,
    tls_context,
)
from .telemetry import AccessLog, JobGauges, Metrics, setup_logging

if TYPE_CHECKING:
    from .._fleet.replica import Fleet

__all__ = ["main"]


log = logging.getLogger("engine.worker")


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
REDIS_URL_ENV = "AUDIENCE_ENGINE_REDIS_URL"


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
    fleet = None
    store: JobTable
    if config.redis_url:
        from .._fleet.replica import Fleet  # the fleet extra: imported only when asked for

        fleet = Fleet(config.redis_url, config.lease_s)
        store = fleet.store
        log.info("replica %s of the fleet on redis", fleet.replica)
    else:
        store = JobStore(layout.table)
    metrics = Metrics(config.max_metric_accounts, fleet.replica if fleet else None)
    try:
        async with Uploader(
            api_base=config.api_base,
            api_version=config.api_version,
            limits=config.limits,
            redis_url=config.redis_url,  # a fleet's replicas share each account's budget
            app_secret=secrets.app_secret,
            on_request=metrics.on_request,
            trace_configs=() if fleet is None else (fleet.trace_config(),),
        ) as uploader:
            worker = _worker(fleet, config, secrets, layout, store, uploader, metrics)
            metrics.watch(
                JobGauges(store.counts, worker.waiting, worker.running, worker.pending_batches)
            )
            intake = Intake(
                defaults=config.job_defaults,
                input_dirs=config.input_dirs,
                input_urls=config.input_urls,
                token_for=secrets.token_for,
                rows_file=layout.rows_file,
            )
            # aiohttp closes a connection that has not sent a whole request head this long
            # after it opened or after its last response (slow headers, idle keep-alive).
            runner = web.AppRunner(
                make_app(config, secrets, worker, intake, metrics),
                keepalive_timeout=config.header_timeout_s,
                access_log_class=AccessLog,
            )
            await runner.setup()
            try:
                return await _run_site(config, runner, worker, tls)
            finally:
                await runner.cleanup()
    finally:
        if fleet is not None:
            await fleet.close()
        store.close()


def _worker(fleet: Fleet | None, *args: Any) -> Worker:
    if fleet is None:
        return Worker(*args)
    from .._fleet.replica import FleetWorker

    return FleetWorker(fleet, *args)


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
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_ENV),
        help=f"run as one replica of the fleet on this Redis (also {REDIS_URL_ENV} or the "
        "config's redis-url); without it, the single-host worker",
    )
    args = parser.parse_args(argv)
    setup_logging("info")  # until the config says otherwise: its warnings are JSON too
    try:
        config = load_config(Path(args.config))
        if args.redis_url:
            config = dataclasses.replace(config, redis_url=args.redis_url)
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
