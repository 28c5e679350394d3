"""The worker's HTTP API: `POST /jobs`, `GET /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}`,
`/healthz`, `/readyz` and Prometheus `/metrics`, behind the Host check, the body deadline and,
when one is set, the bearer token (the probes excepted). Every refusal is a JSON body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import re
from typing import Any

import orjson
import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .idempotency import Idempotency
from .intake import Intake, Refusal
from .jobs import STATES, Job
from .scheduler import TERMINAL, Worker
from .settings import Secrets, WorkerConfig
from .telemetry import Metrics, job_context

log = logging.getLogger("engine.worker")

MAX_LIST = 1000  # most jobs one GET /jobs returns


RETRY_AFTER_S = "30"  # said with a 429 (queue full) or 503 (draining)


# Open to anyone who reaches the port, for load balancers and kubelets: they say only a status.
_PROBES = frozenset({"/healthz", "/readyz"})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=dumps)


def dumps(obj: Any) -> str:
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
        self._idempotency = Idempotency(worker.store)

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
        async with self._idempotency.claim(request) as claim:
            earlier = self._idempotency.earlier(claim) if claim else None
            if earlier is not None:  # a retry: the job its first request made
                return self._created(earlier, 200)
            if self._worker.draining:
                raise Refusal(503, "the worker is shutting down; submit again later")
            self._worker.check_room()  # before reading the body; submit checks again
            job = await self._intake.job(request)
            if job.intake:
                self._metrics.rejected_on_arrival(job.ad_account, job.intake["rejected_by_reason"])
            job = self._worker.submit(claim.stamp(job) if claim else job)
            with job_context(job):
                log.info("job accepted for audience %s (%s)", job.audience_id, job.source)
            return self._created(job, 201)

    def _created(self, job: Job, status: int) -> web.Response:
        headers = {"Location": f"/jobs/{job.id}"}
        return web.json_response(self._view(job), status=status, headers=headers, dumps=dumps)

    async def list_jobs(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in STATES:
            raise Refusal(400, f"state must be one of {', '.join(STATES)}")
        limit = request.query.get("limit", "100")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_LIST:
            raise Refusal(400, f"limit must be a whole number from 1 to {MAX_LIST}")
        jobs = self._worker.store.jobs(state, int(limit))
        return web.json_response({"jobs": [self._view(j) for j in jobs]}, dumps=dumps)

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response(self._view(self._job(request)), dumps=dumps)

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state in TERMINAL:
            raise Refusal(409, f"the job is already {job.state}")
        self._worker.cancel(job)
        return web.json_response(self._view(self._job(request)), status=202, dumps=dumps)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._worker.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not await self._worker.ready():
            return web.json_response({"status": "shared store unreachable"}, status=503)
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
