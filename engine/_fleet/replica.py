"""One replica of a fleet: the worker with its jobs, checkpoints and locks in Redis.

Jobs go through a saq queue (see docs/fleet.md for why saq): a replica's HTTP API stores
the job and enqueues it under its id; whichever replica dequeues it runs it. While it runs,
the replica beats every quarter lease: it touches the saq job (saq's sweep, on any replica,
retries a job whose beat is older than the lease), renews the audience lock and checks that
the job's lease token is still its own. Each run of a job takes a new token (INCR), and
every write for the job (its state, its checkpoint) is made only under the current token,
so a replica that was paused or cut off past its lease records nothing, and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from saq import Worker as SaqWorker
from saq.queue.redis import RedisQueue
from saq.types import Context, PartialTimersDict

from .._resume.checkpoint import CheckpointStore
from .._worker.jobs import UNFINISHED, Job, State
from .._worker.scheduler import TERMINAL, Worker, _Live
from .._worker.telemetry import job_context
from .checkpoint import Fence, RedisCheckpoint
from .connection import DEFAULT_NAMESPACE, connect
from .jobs import RedisJobStore

log = logging.getLogger("engine.worker")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# saq retries a job whose replica died; a job is only ever given up by its own run.
_RETRIES = 1_000_000


def replica_name() -> str:
    """This replica in logs and metrics: host and process."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LeaseLost(aiohttp.ClientError):
    """A request of a job whose lease this replica no longer holds: never sent."""


@dataclass(eq=False)
class Lease:
    """This replica's hold on a running job, as it knows it without asking Redis: good
    until `valid_until` (monotonic, so a paused process finds it ran out on waking)."""

    stop: asyncio.Event
    valid_until: float
    lost: bool = False

    def good(self) -> bool:
        return not self.lost and time.monotonic() < self.valid_until


class _Requeue(Exception):
    """A drain stopped the job: saq queues it again, for any replica."""


class Fleet:
    """What a replica shares with the others: the Redis clients, the queue, the key names."""

    def __init__(self, url: str, lease_s: float, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.url = url
        self.lease_s = lease_s
        self.namespace = namespace
        self.replica = replica_name()
        self.sync = connect(url)
        self.aio: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        self.queue = RedisQueue(self.aio, name=f"{namespace}queue")
        self.store = RedisJobStore(self.sync, namespace)
        # By audience (one job per audience runs at a time): the jobs running here.
        self.leases: dict[str, Lease] = {}

    def trace_config(self) -> aiohttp.TraceConfig:
        """Checks the job's lease as each request starts, so a replica that lost a job
        (paused or cut off past its lease) sends nothing more for it."""
        trace = aiohttp.TraceConfig()

        async def on_start(
            session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestStartParams
        ) -> None:
            for part in params.url.parts:
                lease = self.leases.get(part)
                if lease is not None and not lease.good():
                    lease.stop.set()
                    raise LeaseLost("this replica no longer holds the job's lease")

        trace.on_request_start.append(on_start)
        return trace

    def lease_key(self, job_id: str) -> str:
        return f"{self.namespace}lease:{job_id}"

    def owner_key(self, job_id: str) -> str:
        return f"{self.namespace}owner:{job_id}"

    def cancel_key(self, job_id: str) -> str:
        return f"{self.namespace}cancel:{job_id}"

    def audience_key(self, audience: str) -> str:
        return f"{self.namespace}audience:{audience}"

    async def ready(self) -> bool:
        try:
            return bool(await self.aio.ping())
        except (aioredis.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.queue.disconnect()
        self.sync.close()


class FleetWorker(Worker):
    """The worker as one replica: jobs come from the fleet's queue, not only its own API."""

    def __init__(self, fleet: Fleet, *args: Any) -> None:
        super().__init__(*args)
        self._fleet = fleet
        self._tokens: dict[str, int] = {}
        self._leases: dict[str, Lease] = {}
        self._beats = max(1.0, fleet.lease_s / 4)
        self._pending: set[asyncio.Task[None]] = set()
        self._release = fleet.aio.register_script(_RELEASE)
        self._renew = fleet.aio.register_script(_RENEW)
        self._saq = SaqWorker(
            fleet.queue,
            functions=[("upload", self._saq_upload)],
            concurrency=self._config.max_jobs,
            # A dead replica's job is retried within lease + sweep.
            timers=PartialTimersDict(
                sweep=max(1, int(fleet.lease_s / 4)), abort=1, schedule=1, worker_info=10
            ),
        )
        self._saq.SIGNALS = []  # the worker's own handlers drain; saq's would stop at once
        self._saq_task: asyncio.Task[None] | None = None

    async def ready(self) -> bool:
        return await self._fleet.ready()

    # Jobs are started by the queue: a job accepted here is enqueued for any replica.
    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._enqueue(job.id), name=f"enqueue {job.id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _enqueue(self, job_id: str) -> None:
        # Keyed by the job: enqueueing a job already queued or running does nothing.
        await self._fleet.queue.enqueue(
            "upload",
            key=job_id,
            job_id=job_id,
            heartbeat=int(self._fleet.lease_s),
            timeout=0,
            retries=_RETRIES,
            retry_delay=1.0,
        )

    def resume(self) -> None:
        """Enqueue every unfinished job of the fleet (a job that lost its queue entry
        between being stored and enqueued), then take jobs from the queue."""
        for job in self._store.unfinished():
            self._start(job)
        self._saq_task = asyncio.create_task(self._saq.start(), name="saq worker")

    def cancel(self, job: Job) -> None:
        """Cancel a job anywhere in the fleet: its owner sees the mark at its next beat; a
        job no replica runs is cancelled here at once."""
        self._fleet.sync.set(self._fleet.cancel_key(job.id), 1, ex=7 * 86400)
        live = self._live.get(job.id)
        if live is not None:
            super().cancel(job)
            return
        store = self._fleet.store
        done = store.update_if(
            job.id,
            "cancelled",
            error="cancelled before it started; nothing was sent",
            from_states=("queued",),
        )
        if done is not None:
            with job_context(job):
                log.warning("job cancelled before it started; nothing was sent")

    async def drain(self, grace_s: float) -> None:
        """Our drain stops the jobs (as on one host); then saq's loops, which only wait."""
        await super().drain(grace_s)
        await self._saq.stop()
        if self._saq_task is not None:
            await asyncio.gather(self._saq_task, return_exceptions=True)

    async def _saq_upload(self, ctx: Context, *, job_id: str) -> None:
        """saq's entry for one run of a job on this replica."""
        fleet = self._fleet
        job = fleet.store.get(job_id)
        if job is None or job.state in TERMINAL:
            return
        token = int(await fleet.aio.incr(fleet.lease_key(job_id)))
        # Who runs it, for operators (and tests) to find: the token says who may write.
        await fleet.aio.set(fleet.owner_key(job_id), fleet.replica, ex=7 * 86400)
        self._tokens[job_id] = token
        task = asyncio.current_task()
        assert task is not None
        live = _Live(job, task)
        self._live[job_id] = live
        # Good for less than the lease: the others' view of it starts from a later beat.
        lease = Lease(live.stop, time.monotonic() + self._fleet.lease_s - self._beats)
        self._leases[job_id] = lease  # checked on its requests once it has the audience
        beat = asyncio.create_task(self._beat(live, lease, ctx.get("job"), token))
        try:
            if await fleet.aio.exists(fleet.cancel_key(job_id)):
                live.cancel.set()
            with job_context(job):
                if live.cancel.is_set():
                    self._settle(job, "cancelled", None, "cancelled before it started")
                    return
                await self._run_job(live)
        finally:
            beat.cancel()
            if self._fleet.leases.get(job.audience_id) is lease:
                del self._fleet.leases[job.audience_id]
            self._live.pop(job_id, None)
            self._tokens.pop(job_id, None)
            self._leases.pop(job_id, None)
        stored = fleet.store.get(job_id)
        if stored is not None and stored.state == "interrupted" and self.draining:
            raise _Requeue(f"job {job_id} stopped by a drain")

    async def _beat(self, live: _Live, lease: Lease, saq_job: Any, token: int) -> None:
        """Every quarter lease: prove this replica alive, and stop the job once it is
        another's or the lease ran out unrenewed."""
        fleet, job_id = self._fleet, live.job.id
        while True:
            await asyncio.sleep(self._beats)
            if not lease.good():  # woken after a pause, or Redis unreachable too long
                break
            began = time.monotonic()
            try:
                held = await fleet.aio.get(fleet.lease_key(job_id))
                if held is None or int(held) != token:
                    break
                await saq_job.update()
                if await fleet.aio.exists(fleet.cancel_key(job_id)):
                    live.cancel.set()
                lease.valid_until = began + fleet.lease_s - self._beats
            except (aioredis.RedisError, OSError) as exc:
                log.warning("job %s: cannot reach redis (%s)", job_id, exc)
        lease.lost = True
        log.warning("job %s: lease lost (another replica may run it); stopping", job_id)
        live.stop.set()

    @contextlib.asynccontextmanager
    async def _turn(self, job: Job) -> AsyncIterator[None]:
        """The audience's lock in Redis, taken by the audience's oldest unfinished job only
        (jobs of one audience run in submission order across the fleet); renewed by the
        beat through its expiry, so a dead replica's lock lapses with its lease."""
        fleet = self._fleet
        key = fleet.audience_key(job.audience_id)
        value = f"{job.id}:{self._tokens[job.id]}"
        ttl_ms = int(fleet.lease_s * 1000)
        while True:
            if self._first_of_audience(job) and await fleet.aio.set(key, value, nx=True, px=ttl_ms):
                break
            await asyncio.sleep(0.2)  # another job of the audience is running somewhere
        self._fleet.leases[job.audience_id] = self._leases[job.id]
        renew = asyncio.create_task(self._renew_lock(key, value, ttl_ms))
        try:
            yield
        finally:
            renew.cancel()
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self._release(keys=[key], args=[value])

    async def _renew_lock(self, key: str, value: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(self._beats)
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self._renew(keys=[key], args=[value, ttl_ms])

    def _first_of_audience(self, job: Job) -> bool:
        waiting = [j for j in self._store.unfinished() if j.audience_id == job.audience_id]
        return bool(waiting) and waiting[0].id == job.id

    def _checkpoint(self, job: Job) -> CheckpointStore:
        fence = Fence(self._fleet.lease_key(job.id), self._tokens[job.id])
        return RedisCheckpoint(
            self._fleet.sync, job.id, namespace=self._fleet.namespace, fence=fence
        )

    def _record(
        self, job: Job, state: State, report: dict[str, Any] | None, error: str | None
    ) -> bool:
        token = self._tokens.get(job.id)
        fence = None if token is None else (self._fleet.lease_key(job.id), token)
        made = self._fleet.store.update_if(
            job.id, state, report=report, error=error, from_states=UNFINISHED, fence=fence
        )
        if made is None:
            log.warning(
                "job %s is another replica's now (or ended): not recording %s", job.id, state
            )
        return made is not None
