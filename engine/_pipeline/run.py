"""One upload job, as steps: bind the schema, open the journal, run the stages for one round
(again when a replace starts over), settle the report.

The stages (reader -> normalizer/hasher -> batcher -> sender, see stages.py and send_stage.py)
run together, joined by bounded channels; a failure in any stage cancels the others and
surfaces once, and `_Run.ending` turns it into the report's status, error and message.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from .._errors import (
    EMPTY_REPLACE,
    ApiError,
    CheckpointError,
    EngineError,
    ErrorInfo,
    InputError,
    Interrupted,
    QuotaUnavailable,
    ReplaceRestart,
    RetriesExhausted,
)
from .._graph.audience_check import check_audience
from .._graph.client import GraphClient
from .._hashing.schema import NormalizeOptions, Schema
from .._input.files import reopen_input
from .._input.source import InputFile
from .._inspect.run import Inspector
from .._options import UploadJob, new_session_id
from .._quota.account import AccountQuota
from .._report import ProgressFn, Report, Status, Tally
from .._resume.checkpoint import Checkpoint, CheckpointStore, ack_to_report
from .._resume.journal import Journal
from .._rows import EncodedChunk
from .batcher import Batch
from .channel import Channel
from .send_stage import SendContext, SendStage
from .sender import RetryPolicy
from .stages import (
    CHANNEL_CHUNKS,
    Unit,
    batch,
    drain,
    normalize,
    process_pool,
    read,
    rejects_writer,
    run_together,
)

log = logging.getLogger("engine.upload")


RequestHook = Callable[[str, float], None]
"""Called after each API request with its outcome and duration in seconds (for metrics)."""


async def run_job(
    job: UploadJob,
    source: InputFile,
    client: GraphClient | None,
    limiter: AccountQuota,
    *,
    retry: RetryPolicy,
    progress: ProgressFn | None = None,
    stop: asyncio.Event | None = None,
    on_request: RequestHook | None = None,
    cancel: asyncio.Event | None = None,
    inspector: Inspector | None = None,
    on_rows: Callable[[EncodedChunk], None] | None = None,
    inspect: bool = True,
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
    again resumes where it stopped. A dry run hands every chunk of payload rows, packed
    too, to `on_rows` (a mirror's diff reads the input so), and inspects the list unless
    `inspect` is False.
    """
    schema = _bind_schema(job, source)
    if client is None and inspect:  # dry runs inspect the list (docs/inspect.md)
        (inspector := inspector or Inspector()).bind(schema)
    with _journal(job, schema, source) as journal, ExitStack() as reopened:
        warnings: list[str] = []
        if client is not None and not job.skip_audience_check:  # before anything is sent
            session = journal.current
            own = journal.resumed_run and session.mode == "replace" and not session.closed
            rows = source.estimated_rows()
            warnings = await check_audience(client, job, schema, rows, own_replace=own)
        run = _Run(
            job,
            client,
            limiter,
            journal,
            schema,
            retry,
            _tally(job, journal, progress),
            stop,
            cancel,
            on_request,
            inspector,
            on_rows,
            warnings,
        )
        # One round, or more when a replace starts over (ReplaceRestart): the input is then
        # read again from its start and counted afresh.
        while True:
            try:
                await run.round(source)
            except ReplaceRestart as exc:
                if (again := _reread(job, source)) is None:
                    return run.settle(run.ending(exc))
                source, run.tally = reopened.enter_context(again), _afresh(run.tally)
            except asyncio.CancelledError:
                run.stopped_at_once()
                raise
            except EngineError as exc:
                return run.settle(run.ending(exc))
            else:
                return run.settle(run.ending(None))


class _Ending(NamedTuple):
    """How a job ended, as its report says it."""

    status: Status
    error: ErrorInfo | None = None
    message: str | None = None


@dataclass
class _Run:
    """What the rounds of one job share, and how the job ends."""

    job: UploadJob
    client: GraphClient | None
    limiter: AccountQuota
    journal: Journal
    schema: Schema
    retry: RetryPolicy
    tally: Tally
    stop: asyncio.Event | None
    cancel: asyncio.Event | None
    on_request: RequestHook | None
    inspector: Inspector | None
    on_rows: Callable[[EncodedChunk], None] | None
    warnings: list[str]  # the audience check's, for the report's message
    # Input that broke after the send stage began (see stages.read).
    bad_input: list[InputError] = field(default_factory=list)
    requests: int = 0

    async def round(self, source: InputFile) -> None:
        """Read, hash and batch the input once, sending the batches (or, in a dry run,
        dropping them); returns when every stage has ended."""
        job, client, tally = self.job, self.client, self.tally
        options = NormalizeOptions(
            job.prehashed, job.default_country_code, packed=self.on_rows is not None
        )
        # The send stage stops taking batches once `halt` is set: on `stop`, or when the
        # input turns out bad after requests went out (those in flight then finish).
        halt = asyncio.Event()
        raw: Channel[Unit] = Channel(CHANNEL_CHUNKS)
        hashed: Channel[EncodedChunk] = Channel(CHANNEL_CHUNKS)
        batches: Channel[Batch] = Channel(2)
        with (
            rejects_writer(job.rejects_path) as write_rejects,
            process_pool(job, source.size()) as pool,
        ):
            stages = [
                read(source, raw, None if client is None else (self.bad_input, halt)),
                normalize(raw, hashed, self.schema, options, pool, self.inspector),
            ]
            closes: Callable[[], bool] | None = None
            if client is None:
                stages.append(batch(hashed, batches, job, tally, write_rejects, None, self.on_rows))
                stages.append(drain(batches))
            else:
                sending = SendStage(
                    SendContext(
                        job,
                        client,
                        self.limiter,
                        tally,
                        self.journal,
                        self.schema,
                        self.retry,
                        halt,
                        self._observe,
                        estimated_rows=source.estimated_rows(),
                        cancel=self.cancel,
                    )
                )
                stages.append(
                    batch(hashed, batches, job, tally, write_rejects, sending.already_sent)
                )
                stages.append(sending.run(batches))
                # A replace under way is closed by the send stage on cancel, not halted.
                closes = sending.closes_on_cancel
            relays = [
                asyncio.ensure_future(_relay(event, halt, unless))
                for event, unless in ((self.stop, None), (self.cancel, closes))
                if event is not None
            ]
            try:
                await run_together(stages)
                if client is None and job.mode == "replace":
                    _check_replace(job, tally)
            finally:
                for relay in relays:
                    relay.cancel()

    def _observe(self, outcome: str, seconds: float) -> None:
        self.requests += 1
        if self.on_request is not None:
            self.on_request(outcome, seconds)

    def ending(self, failure: EngineError | None) -> _Ending:
        """How the job ended, given the failure its last round ended with (None: none).
        Raises what is no end of the job but a refusal of it: bad usage or input before
        anything went out."""
        if failure is None:
            return _Ending("dry_run" if self.client is None else "completed")
        if isinstance(failure, ReplaceRestart):
            message = f"{failure}, but the input cannot be read twice; run the job again"
            return _Ending("failed", failure.error.info, message)
        if isinstance(failure, ApiError | RetriesExhausted | CheckpointError | QuotaUnavailable):
            return _Ending("failed", failure.info, str(failure))
        if isinstance(failure, Interrupted):
            if self.bad_input and not self.requests:
                raise self.bad_input[0] from None  # nothing went out: a plain input error
            if self.bad_input:
                return _Ending(
                    "failed", None, f"{self.bad_input[0]}; the batches before it were sent"
                )
            return _Ending("interrupted", None, str(failure))
        raise failure

    def stopped_at_once(self) -> None:
        """The job's task was cancelled: the journal keeps it running, with no waiting for a
        checkpoint that fails."""
        with suppress(CheckpointError):
            self.journal.finish("running", self.tally.retries, self.tally.throttled)

    def settle(self, ending: _Ending) -> Report:
        """Record the job's state in the journal, then report it."""
        journal, tally = self.journal, self.tally
        status, error, message = ending
        try:
            # The last try for acknowledgements the checkpoint could not record yet.
            state = "completed" if status == "completed" else "running"
            journal.finish(state, tally.retries, tally.throttled)
        except CheckpointError as exc:
            if error is None:
                status, error, message = "failed", exc.info, str(exc)
        # Only the send stage writes notes, so a dry run has none.
        notes = [*self.warnings, *journal.notes, *([message] if message else [])]
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
            inspection=self.inspector.result().to_dict() if self.inspector else None,
        )


def _tally(job: UploadJob, journal: Journal, progress: ProgressFn | None) -> Tally:
    """The job's counts: those of earlier runs of a resumed job are the job's too, from the
    first event on."""
    return Tally(
        job.mode,
        job.audience_id,
        job.ad_account,
        journal.sessions[0].session_id,
        retries=journal.retries,
        throttled=journal.throttled,
        listener=progress,
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


async def _relay(
    stop: asyncio.Event, halt: asyncio.Event, unless: Callable[[], bool] | None = None
) -> None:
    await stop.wait()
    if unless is None or not unless():
        halt.set()


def _check_replace(job: UploadJob, tally: Tally) -> None:
    """A dry run refuses an empty replace as the real one would."""
    if tally.rows_read == tally.rows_rejected and not job.allow_empty_replace:
        raise InputError(EMPTY_REPLACE)
