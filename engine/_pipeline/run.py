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
import sqlite3
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import orjson

from .._errors import (
    EMPTY_REPLACE,
    ApiError,
    CheckpointError,
    InputError,
    Interrupted,
    ReplaceRestart,
    RetriesExhausted,
)
from .._graph.client import GraphClient
from .._hashing.pool import hash_units
from .._hashing.schema import NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._input.files import reopen_input
from .._input.source import InputFile
from .._options import UploadJob, new_session_id
from .._quota.limiter import AccountLimiter
from .._report import ProgressFn, Report, Status, Tally
from .._resume.checkpoint import Checkpoint, CheckpointStore, ack_to_report
from .._resume.journal import Journal
from .._rows import EncodedChunk, RawChunk, Reject
from .batcher import Batch, Batcher
from .send_stage import SendContext, SendStage
from .sender import RetryPolicy

log = logging.getLogger("engine.upload")

CHUNK_ROWS = 5_000
QUEUE_CHUNKS = 4
# At most this many units go to a hashing worker at once (see _normalize).
UNITS_PER_TASK = 2
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
    cancel: asyncio.Event | None = None,
) -> Report:
    """Run one upload to the end and report it (`client` is None for a dry run).

    Raises InputError (bad usage or input, nothing sent in this run). API refusals,
    exhausted retries, and input that breaks after requests went out come back as a report
    with status "failed" and the reason (the API's error, or the input's). Setting
    `stop` ends the job early: sends in flight finish, the session is left open, and
    the report says "interrupted". Setting `cancel` ends it for good: the same, except that
    a replace whose batch 1 went out is first closed (the batch due next goes as its last)
    and the audience let out of replace_in_progress; the report says what was sent.
    `progress` receives the running counts. With
    `job.checkpoint`, acknowledged batches are recorded there and the same job run
    again resumes where it stopped.
    """
    schema = _bind_schema(job, source)
    with _journal(job, schema, source) as journal, ExitStack() as reopened:
        first = journal.sessions[0]
        # Counts of earlier runs of a resumed job are the job's too, from the first event on.
        tally = Tally(
            job.mode,
            job.audience_id,
            job.ad_account,
            first.session_id,
            retries=journal.retries,
            throttled=journal.throttled,
            listener=progress,
        )
        bad_input: list[InputError] = []
        requests = 0

        def observe(outcome: str, seconds: float) -> None:
            nonlocal requests
            requests += 1
            if on_request is not None:
                on_request(outcome, seconds)

        options = NormalizeOptions(job.prehashed, job.default_country_code)
        # One round, or more when a replace starts over (ReplaceRestart): the input is then
        # read again from its start and counted afresh.
        while True:
            # The send stage stops taking batches once `halt` is set: on `stop`, or when the
            # input turns out bad after requests went out (those in flight then finish).
            halt = asyncio.Event()
            relays: list[asyncio.Future[None]] = []
            raw: asyncio.Queue[RawChunk | CsvBlock | None] = asyncio.Queue(QUEUE_CHUNKS)
            hashed: asyncio.Queue[EncodedChunk | None] = asyncio.Queue(QUEUE_CHUNKS)
            batches: asyncio.Queue[Batch | None] = asyncio.Queue(2)
            sending = None
            with _rejects_writer(job.rejects_path) as write_rejects, _pool(job) as pool:
                stages = [
                    _read(source, raw, None if client is None else (bad_input, halt)),
                    _normalize(raw, hashed, schema, options, pool),
                ]
                if client is None:
                    stages.append(_batch(hashed, batches, job, tally, write_rejects, None))
                    stages.append(_drain(batches))
                else:
                    sending = SendStage(
                        SendContext(
                            job,
                            client,
                            limiter,
                            tally,
                            journal,
                            schema,
                            retry,
                            halt,
                            observe,
                            estimated_rows=source.estimated_rows(),
                            cancel=cancel,
                        )
                    )
                    stages.append(
                        _batch(hashed, batches, job, tally, write_rejects, sending.already_sent)
                    )
                    stages.append(sending.run(batches))
                if stop is not None:
                    relays.append(asyncio.ensure_future(_relay(stop, halt)))
                if cancel is not None:
                    # A replace under way is closed by the send stage, not halted.
                    closes = sending.closes_on_cancel if sending else None
                    relays.append(asyncio.ensure_future(_relay(cancel, halt, closes)))
                status: Status = "dry_run" if client is None else "completed"
                error = message = None
                try:
                    await _gather_or_cancel(stages)
                    if client is None and job.mode == "replace":
                        _check_replace(job, tally)
                except ReplaceRestart as exc:
                    again = _reread(job, source)
                    if again is not None:
                        source, tally = reopened.enter_context(again), _afresh(tally)
                        continue
                    status, error = "failed", exc.error.info
                    message = f"{exc}, but the input cannot be read twice; run the job again"
                except (ApiError, RetriesExhausted, CheckpointError) as exc:
                    status, error, message = "failed", exc.info, str(exc)
                except Interrupted as exc:
                    if bad_input and not requests:
                        raise bad_input[0] from None  # nothing went out: a plain input error
                    if bad_input:
                        status = "failed"
                        message = f"{bad_input[0]}; the batches before it were sent"
                    else:
                        status, message = "interrupted", str(exc)
                except asyncio.CancelledError:
                    # Stopped at once: no waiting for a checkpoint that fails.
                    with suppress(CheckpointError):
                        journal.finish("running", tally.retries, tally.throttled)
                    raise
                finally:
                    for relay in relays:
                        relay.cancel()
            try:
                # The last try for acknowledgements the checkpoint could not record yet.
                state = "completed" if status == "completed" else "running"
                journal.finish(state, tally.retries, tally.throttled)
            except CheckpointError as exc:
                if error is None:
                    status, error, message = "failed", exc.info, str(exc)
            break
        notes = [*(sending.notes if sending else []), *([message] if message else [])]
        if journal.unrecorded:
            notes.append(
                f"{len(journal.unrecorded)} batches the API acknowledged are not in the "
                "checkpoint (unrecorded_batches): resume with this report (the command line "
                "reads it from --report) or they are sent again"
            )
        return tally.report(
            status,
            error=error,
            message="; ".join(notes) or None,
            sessions=[{"session_id": s.session_id, "mode": s.mode} for s in journal.sessions],
            resumed=journal.resumed_run,
            unrecorded_batches=[ack_to_report(a) for _, a in sorted(journal.unrecorded.items())],
        )


@contextmanager
def _journal(job: UploadJob, schema: Schema, source: InputFile) -> Iterator[Journal]:
    """The job's journal, loaded from its checkpoint when resuming; checked against it, and
    the checkpoint written once: InputError when it cannot be, as nothing was sent yet."""
    if job.checkpoint is None or job.dry_run:
        journal = Journal(None, None)
        journal.open_session(job.session_id or new_session_id(), job.mode)
        yield journal
        return
    identity = orjson.dumps(
        {
            "audience": job.audience_id,
            "ad_account": job.ad_account,
            "mode": job.mode,
            "schema": list(schema.keys),
            "single_key": schema.single_key,
            "batch_size": job.batch_size,
            "source": job.source,
        }
    ).decode()
    fingerprint = source.fingerprint()
    try:
        checkpoint = job.checkpoint_store or Checkpoint(job.checkpoint)
    except (sqlite3.Error, OSError) as exc:
        raise InputError(f"checkpoint {job.checkpoint} cannot be used ({exc})") from None
    try:
        journal = _load_journal(job, checkpoint, identity, fingerprint)
        yield journal
    finally:
        checkpoint.close()


def _load_journal(
    job: UploadJob, checkpoint: CheckpointStore, identity: str, fingerprint: str
) -> Journal:
    """The journal of the job `checkpoint` holds (a new one unless resuming), with the
    acknowledgements an earlier run could not record added, and a session open."""
    try:
        record = checkpoint.load()
        if record is not None and record.state == "running" and not job.restart:
            if record.identity != identity:
                raise InputError(
                    f"checkpoint {job.checkpoint} belongs to another job "
                    "(audience, mode, schema, batch size or input differ); "
                    "pass --restart to start over"
                )
            if record.fingerprint != fingerprint:
                raise InputError(
                    f"the input changed since checkpoint {job.checkpoint} was written; "
                    "pass --restart to start over in a new session"
                )
            # Acknowledgements an earlier run could not record (from its report): only the
            # newest session's, as an older report's may be of a session since left (a
            # replace that started over forgets its batches).
            newest = record.sessions[-1].session_id if record.sessions else None
            carried = [
                (batch, last)
                for batch, last in job.unrecorded_batches
                if batch.session_id == newest and batch.batch not in record.batches
            ]
            # Also the write that shows the checkpoint takes writes before anything goes out.
            checkpoint.acknowledged(carried)
            if carried:
                record = checkpoint.load()
        else:
            checkpoint.start(identity, fingerprint)
            record = None
        journal = Journal(checkpoint, record)
        if not journal.sessions:
            journal.open_session(job.session_id or new_session_id(), job.mode)
    except (sqlite3.Error, OSError, CheckpointError) as exc:
        raise InputError(f"checkpoint {job.checkpoint} cannot be used ({exc})") from None
    return journal


def _reread(job: UploadJob, source: InputFile) -> InputFile | None:
    """The input opened again at its start and bound as before; None when it cannot be
    read twice (stdin, a pipe, rows in memory) or is no longer the same file."""
    fingerprint = source.fingerprint()
    if fingerprint in ("stdin", "stream", "memory"):
        return None
    again = reopen_input(source)
    if again.fingerprint() != fingerprint:
        again.close()
        return None
    _bind_schema(job, again)
    return again


def _afresh(tally: Tally) -> Tally:
    """A tally for reading the input again: the counts start over; the job's start, first
    session, retries, throttles and listener stay."""
    return Tally(
        tally.mode,
        tally.audience_id,
        tally.ad_account_id,
        tally.session_id,
        started=tally.started,
        retries=tally.retries,
        throttled=tally.throttled,
        listener=tally.listener,
    )


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


async def _relay(
    stop: asyncio.Event, halt: asyncio.Event, unless: Callable[[], bool] | None = None
) -> None:
    await stop.wait()
    if unless is None or not unless():
        halt.set()


async def _read(
    source: InputFile,
    out: asyncio.Queue[RawChunk | CsvBlock | None],
    on_error: tuple[list[InputError], asyncio.Event] | None,
) -> None:
    """Feed the input's units on. Input that breaks midway (a truncated .gz, a read error)
    raises at once, or with `on_error`, is kept there and halts the send stage, so the
    requests in flight finish and the job ends as failed, not with nothing said."""
    try:
        async for unit in source.aunits(CHUNK_ROWS):
            await out.put(unit)
    except InputError as exc:
        if on_error is None:
            raise
        on_error[0].append(exc)
        on_error[1].set()
        return
    await out.put(None)


def _check_replace(job: UploadJob, tally: Tally) -> None:
    """A dry run refuses an empty replace as the real one would."""
    if tally.rows_read == tally.rows_rejected and not job.allow_empty_replace:
        raise InputError(EMPTY_REPLACE)


async def _normalize(
    inp: asyncio.Queue[RawChunk | CsvBlock | None],
    out: asyncio.Queue[EncodedChunk | None],
    schema: Schema,
    options: NormalizeOptions,
    pool: Executor | None,
) -> None:
    loop = asyncio.get_running_loop()
    pending: deque[asyncio.Future[list[EncodedChunk]]] = deque()
    window = 2 * (os.cpu_count() or 1)
    done = False
    while not done:
        # Units already waiting go to a worker together, as each hand-off costs the parent
        # about 0.2 ms; none waits for one still to come.
        units: list[RawChunk | CsvBlock] = []
        while len(units) < UNITS_PER_TASK and (not units or not inp.empty()):
            if (unit := await inp.get()) is None:
                done = True
                break
            units.append(unit)
        if units:
            # In order: results are awaited oldest first, so batches stay deterministic.
            pending.append(loop.run_in_executor(pool, hash_units, units, schema, options))
        while pending and (done or len(pending) >= window):
            for chunk in await pending.popleft():
                await out.put(chunk)
    await out.put(None)


async def _batch(
    inp: asyncio.Queue[EncodedChunk | None],
    out: asyncio.Queue[Batch | None],
    job: UploadJob,
    tally: Tally,
    write_rejects: Callable[[list[Reject]], None],
    already_sent: Callable[[Batch], bool] | None,
) -> None:
    batcher = Batcher(job.batch_size)

    async def emit(batches: list[Batch]) -> None:
        for batch in batches:
            if already_sent is None or not already_sent(batch):
                await out.put(batch)

    while (chunk := await inp.get()) is not None:
        if chunk.rejects:
            write_rejects(chunk.rejects)
        full = batcher.add(chunk)
        tally.chunk(chunk.rows_read, chunk.rejects, len(full))
        await emit(full)
    if (rest := batcher.flush()) is not None:
        tally.chunk(0, [], 1)
        await emit([rest])
    await out.put(None)


async def _drain(inp: asyncio.Queue[Batch | None]) -> None:
    while await inp.get() is not None:
        pass


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
