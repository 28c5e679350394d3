"""Running the worker's jobs: at most `max_jobs` at once, one at a time per audience in
submission order (a replace and an add never interleave), all through one `Uploader` (one
connection pool, one rate limiter per ad account). A drain lets requests in flight finish;
every unfinished job resumes at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .._api import Uploader
from .._errors import InputError
from .._report import Progress, ProgressFn
from .._resume.checkpoint import CheckpointStore
from .intake import Refusal, open_allowed, with_intake
from .jobs import UNFINISHED, Job, JobTable, State
from .settings import Layout, Secrets, WorkerConfig
from .telemetry import Metrics, job_context
from .urls import check_url

log = logging.getLogger("engine.worker")

TERMINAL: frozenset[State] = frozenset({"completed", "failed", "cancelled"})


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
        store: JobTable,
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
    def store(self) -> JobTable:
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
            async with self._turn(job):
                live.started = True
                if not self._record(job, "running", None, None):
                    return  # another replica's job now
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

    @contextlib.asynccontextmanager
    async def _turn(self, job: Job) -> AsyncIterator[None]:
        """Wait for the job's turn: its audience free, then a slot."""
        async with self._audiences.hold(job.audience_id), self._slots:
            yield

    def _checkpoint(self, job: Job) -> CheckpointStore | Path:
        return self._layout.checkpoint(job.id)

    async def _upload(self, live: _Live) -> tuple[State, dict[str, Any] | None, str | None]:
        job = live.job
        source: BinaryIO | str = job.input  # a body's hashed rows: the worker's own file
        try:
            if job.source == "path":
                # Checked again, as at intake: the path may lead elsewhere by now. The job
                # reads the file opened here, never the path.
                source = await asyncio.to_thread(open_allowed, job.input, self._config.input_dirs)
            elif job.source == "url":
                source = check_url(job.input, self._config.input_urls)  # the config may change
        except InputError as exc:
            return "failed", None, str(exc)
        try:
            report = await self._uploader.upload(
                source,
                **job.options,
                access_token=self._secrets.token_for(job.ad_account),
                checkpoint=self._checkpoint(job),
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

    async def ready(self) -> bool:
        """Whether the job table can be reached (a local file always can)."""
        return True

    def _record(
        self, job: Job, state: State, report: dict[str, Any] | None, error: str | None
    ) -> bool:
        """Store the job's state; False when this process may no longer (a fleet's job
        taken over by another replica)."""
        self._store.update(job.id, state, report=report, error=error)
        return True

    def _settle(
        self, job: Job, state: State, report: dict[str, Any] | None, error: str | None
    ) -> None:
        if not self._record(job, state, report, error):
            return
        level = logging.INFO if state in ("completed", "interrupted") else logging.WARNING
        # A cancel's message says "cancelled" itself.
        said = (
            error if error and error.startswith(state) else state + (f": {error}" if error else "")
        )
        log.log(level, "job %s", said)
        if state in TERMINAL:
            # Its hashed rows and checkpoint are only good for resuming it.
            for path in self._layout.files_of(job.id):
                path.unlink(missing_ok=True)
