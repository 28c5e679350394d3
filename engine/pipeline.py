"""The pipeline: reader -> normalizer/hasher -> batcher -> sender, joined by bounded queues.

Queues carry chunks (thousands of rows), so memory stays flat whatever the input size,
and a failure in any stage cancels the others and surfaces once.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from .batcher import Batch, Batcher
from .client import GraphClient
from .config import UploadJob, new_session_id
from .errors import ApiError, InputError, Interrupted, RetriesExhausted
from .limiter import AccountLimiter
from .normalize import NormalizeOptions, Schema, normalize_chunk
from .readers import InputFile
from .report import ProgressFn, Report, Tally
from .rows import HashedChunk, RawChunk, Reject
from .sender import RetryPolicy, Sender
from .session import SessionCoordinator

log = logging.getLogger(__name__)

CHUNK_ROWS = 5_000
QUEUE_CHUNKS = 4
# Below this many bytes of input a process pool costs more to start than it saves.
POOL_MIN_BYTES = 8 << 20


RequestHook = Callable[[str, float], None]
"""Called after each API request with its outcome and duration in seconds (for metrics)."""


async def run_job(
    job: UploadJob,
    source: InputFile,
    client: GraphClient | None,
    limiter: AccountLimiter,
    *,
    retry: RetryPolicy,
    progress: ProgressFn | None = None,
    stop: asyncio.Event | None = None,
    on_request: RequestHook | None = None,
) -> Report:
    """Run one upload to the end and report it (`client` is None for a dry run).

    Raises InputError (bad usage or input, nothing sent). API refusals and exhausted
    retries come back as a report with status "failed" and the API's error. Setting
    `stop` ends the job early: sends in flight finish, the session is left open, and
    the report says "interrupted". `progress` receives the running counts.
    """
    schema = _bind_schema(job, source)
    session_id = job.session_id or new_session_id()
    tally = Tally(job.mode, job.audience_id, job.ad_account, session_id, listener=progress)
    stop = stop or asyncio.Event()
    raw: asyncio.Queue[RawChunk | None] = asyncio.Queue(QUEUE_CHUNKS)
    hashed: asyncio.Queue[HashedChunk | None] = asyncio.Queue(QUEUE_CHUNKS)
    batches: asyncio.Queue[Batch | None] = asyncio.Queue(2)
    options = NormalizeOptions(job.prehashed, job.default_country_code)
    with _rejects_writer(job.rejects_path) as write_rejects, _pool(job) as pool:
        stages = [
            _read(source, raw),
            _normalize(raw, hashed, schema, options, pool),
            _batch(hashed, batches, Batcher(job.batch_size), tally, write_rejects),
        ]
        if client is None:
            stages.append(_drain(batches))
        else:
            sender = Sender(
                client,
                limiter,
                tally,
                audience_id=job.audience_id,
                mode=job.mode,
                schema=schema,
                session_id=session_id,
                retry=retry,
                on_request=on_request,
            )
            stages.append(_send(job, sender, batches, stop))
        try:
            await _gather_or_cancel(stages)
        except (ApiError, RetriesExhausted) as exc:
            return tally.report("failed", error=exc.info, message=str(exc))
        except Interrupted as exc:
            return tally.report("interrupted", message=str(exc))
    return tally.report("dry_run" if client is None else "completed")


def _bind_schema(job: UploadJob, source: InputFile) -> Schema:
    if job.schema is None:
        return Schema(source.bind(None, job.column_map))
    schema = Schema.parse(job.schema)
    source.bind(schema.keys, job.column_map)
    return schema


async def _gather_or_cancel(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the stages together; the first failure cancels the rest and is raised alone."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()):
                raise exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read(source: InputFile, out: asyncio.Queue[RawChunk | None]) -> None:
    async for chunk in source.achunks(CHUNK_ROWS):
        await out.put(chunk)
    await out.put(None)


async def _normalize(
    inp: asyncio.Queue[RawChunk | None],
    out: asyncio.Queue[HashedChunk | None],
    schema: Schema,
    options: NormalizeOptions,
    pool: Executor | None,
) -> None:
    loop = asyncio.get_running_loop()
    pending: deque[asyncio.Future[HashedChunk]] = deque()
    window = 2 * (os.cpu_count() or 1)
    while (chunk := await inp.get()) is not None:
        # In order: results are awaited oldest first, so batches stay deterministic.
        pending.append(loop.run_in_executor(pool, normalize_chunk, chunk, schema, options))
        if len(pending) >= window:
            await out.put(await pending.popleft())
    while pending:
        await out.put(await pending.popleft())
    await out.put(None)


async def _batch(
    inp: asyncio.Queue[HashedChunk | None],
    out: asyncio.Queue[Batch | None],
    batcher: Batcher,
    tally: Tally,
    write_rejects: Callable[[list[Reject]], None],
) -> None:
    while (chunk := await inp.get()) is not None:
        if chunk.rejects:
            write_rejects(chunk.rejects)
        full = batcher.add(chunk)
        tally.chunk(chunk.rows_read, chunk.rejects, len(full))
        for batch in full:
            await out.put(batch)
    if (rest := batcher.flush()) is not None:
        tally.chunk(0, [], 1)
        await out.put(rest)
    await out.put(None)


async def _drain(inp: asyncio.Queue[Batch | None]) -> None:
    while await inp.get() is not None:
        pass


async def _send(
    job: UploadJob, sender: Sender, batches: asyncio.Queue[Batch | None], stop: asyncio.Event
) -> None:
    coordinator = SessionCoordinator(
        sender, concurrency=job.concurrency, first_alone=job.mode == "replace", stop=stop
    )
    if await coordinator.run(batches) == 0 and job.mode == "replace":
        if not job.allow_empty_replace:
            raise InputError(
                "replace with zero valid rows would empty the audience; "
                "pass --allow-empty-replace to do that on purpose"
            )
        await sender(Batch(1, [], 0, 0), True)


@contextmanager
def _pool(job: UploadJob) -> Iterator[Executor | None]:
    """A process pool for normalize+hash, when the input is big enough to pay for starting it."""
    workers = job.workers
    if workers is None:
        big = _input_size(job.source) >= POOL_MIN_BYTES
        workers = min(os.cpu_count() or 1, 4) if big else 0
    if workers == 0:
        yield None
        return
    # spawn: forking a process that runs an event loop and threads is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool


def _input_size(path: str) -> int:
    try:
        return os.stat(path).st_size if path != "-" else 0
    except OSError:
        return 0


@contextmanager
def _rejects_writer(path: str | None) -> Iterator[Callable[[list[Reject]], None]]:
    """Writes rejected rows as CSV: row number, key, reason; never the value."""
    if path is None:
        yield lambda rejects: None
        return
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["row", "key", "reason"])
        yield lambda rejects: writer.writerows((r.row, r.key, r.reason) for r in rejects)
