"""The send stage: the job's sessions (almost always one) through the session coordinator.

It resumes from the journal (acknowledged batches are skipped, never sent twice), starts
a new session when the current one is past Meta's window, and closes a replace early
when its window is about to end, then adds the rest in a new session once the audience
is out of `replace_in_progress` (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from .._aio import first_done
from .._errors import (
    EMPTY_REPLACE,
    ApiError,
    CheckpointError,
    InputError,
    Interrupted,
    ReplaceRestart,
    TransportError,
    WindowClosed,
)
from .._graph.client import GraphClient, Mode
from .._graph.facts import REPLACE_ERROR_CODE, REPLACE_NO_FIRST_BATCH, REPLACE_TOO_LARGE
from .._hashing.schema import Schema
from .._options import UploadJob, new_session_id
from .._quota.account import AccountQuota
from .._report import Tally
from .._resume.checkpoint import batch_digest
from .._resume.journal import Journal
from .batcher import Batch
from .channel import Channel, EndOfStream
from .coordinator import NextFn, SessionCoordinator
from .sender import RetryPolicy, Sender, outcome_of, payload_parts

log = logging.getLogger("engine.upload")

# A replace closes once this share of its window has passed: the margin lets the sends in
# flight and the closing batch land in time, even through a throttle pause.
CUT_AT = 0.9
# How often to ask whether a closed replace has finished, at most.
SETTLE_POLL_MAX_S = 30.0
# How many times a replace that Meta failed (2650/1870148) is tried again in a new session.
MAX_REPLACE_RETRIES = 2
# What the engine says when a replace error stops the job, besides Meta's (docs/protocol.md).
REPLACE_STOPS = {
    REPLACE_TOO_LARGE: "replace is not available for audiences of 100 million or more; "
    "use add/remove",
    REPLACE_NO_FIRST_BATCH: "Meta saw no batch 1 of this replace session, so it took none "
    "of its batches; run the job again (with --restart if it has a checkpoint) to start "
    "a new replace",
}


@dataclass
class SendContext:
    """What the send stage needs besides the batches."""

    job: UploadJob
    client: GraphClient
    limiter: AccountQuota
    tally: Tally
    journal: Journal
    schema: Schema
    retry: RetryPolicy
    stop: asyncio.Event
    on_request: Callable[[str, float], None] | None = None
    clock: Callable[[], float] = time.time
    estimated_rows: int | None = None  # the input's, when it can tell
    cancel: asyncio.Event | None = None  # stop for good, closing a replace under way


class SendStage:
    """Sends every batch not yet acknowledged, in as many sessions as it takes."""

    def __init__(self, ctx: SendContext) -> None:
        self._ctx = ctx
        self._journal = ctx.journal
        self._leftovers: deque[Batch] = deque()
        self._exhausted = False
        # The journal's: they outlive this stage when a replace starts over.
        self.notes = ctx.journal.notes

    def already_sent(self, batch: Batch) -> bool:
        """True for a batch acknowledged in an earlier run; it then counts as sent.

        Raises InputError when the batch differs from the one acknowledged then: the
        input changed, and resuming would send a different list than the one begun.
        """
        record = self._journal.acked.get(batch.index)
        if record is None:
            return False
        digest = batch_digest(*payload_parts(self._ctx.schema, batch.data))
        if digest != record.digest or batch.rows != record.rows:
            raise InputError(
                f"the input changed since the checkpoint: batch {batch.index} (rows "
                f"{batch.first_row}..{batch.last_row}) differs from the one sent before; "
                "pass --restart to start over"
            )
        # The API's counts of that run belong to the job's report too (samples are not kept).
        counts = {"num_received": record.num_received, "num_invalid_entries": record.num_invalid}
        self._ctx.tally.acknowledged(record.rows, counts, record.session_id)
        return True

    async def run(self, batches: Channel[Batch]) -> None:
        """Send every batch of `batches` not yet acknowledged, then return.

        Raises ReplaceRestart when a replace must start over from batch 1 (the input is to
        be read again), ApiError or RetriesExhausted when the job cannot go on, and
        Interrupted when told to stop."""
        journal, job = self._journal, self._ctx.job
        if journal.current.closed:
            self._next_session("the previous session was complete")
        elif journal.expired(job.session_window_s):
            await self._past_window()
        while True:
            session = journal.current
            if self._cancelled() and not self.closes_on_cancel():
                raise self._cancel_stop()
            try:
                mode = cast(Mode, session.mode)
                outcome = await self._coordinator(mode).run(self._feed(batches))
            except Interrupted:
                if self._cancelled():
                    raise self._cancel_stop() from None
                raise
            except CheckpointError as exc:
                # Sending stopped with it: no batch went out since that the checkpoint could
                # not record. What the API acknowledged meanwhile waits in the journal.
                unacked = self._last_coordinator.leftovers()
                self._put_back([b for b in unacked if b.index not in journal.acked])
                await self._until_recorded(exc)
                continue
            except WindowClosed as exc:
                self._put_back(self._last_coordinator.leftovers())
                if mode == "replace":
                    await self._until_replace_done()
                self._next_session(str(exc))
                continue
            except ApiError as exc:
                if not (exc.replace_ended or exc.replace_retry):
                    self._explain(exc)
                    raise
                self._put_back(self._last_coordinator.leftovers())
                if exc.replace_retry:
                    await self._retry_replace(exc)
                else:
                    await self._after_replace(f"the replace session ended early ({exc})")
                continue
            if outcome.cut:
                self._put_back(outcome.leftovers)
                if self._cancelled():
                    # The audience is not released (the job does not end) until Meta has
                    # finished the replace: a later job's add would fail during it.
                    await self._until_replace_done()
                    raise self._cancel_stop(
                        f"replace session {session.session_id} was closed with batch "
                        f"{outcome.last} as its last"
                    )
                await self._after_replace(
                    f"replace session {session.session_id} closed with batch {outcome.last} "
                    "before Meta's window ended"
                )
                continue
            if outcome.last == 0 and not journal.acked and job.mode == "replace":
                await self._empty_replace()
            return

    def _cancelled(self) -> bool:
        return self._ctx.cancel is not None and self._ctx.cancel.is_set()

    def closes_on_cancel(self) -> bool:
        """Whether a cancel now closes the current session rather than halting it: a replace
        whose batch 1 went out, left open, keeps the audience in replace_in_progress until
        Meta's window ends."""
        session = self._journal.current
        return session.mode == "replace" and session.started_at is not None and not session.closed

    def _cancel_stop(self, closed: str = "") -> Interrupted:
        """Why a cancelled job stopped, as it is: what was sent and what was not."""
        tally = self._ctx.tally
        if not tally.batches_sent:
            return Interrupted("cancelled before any batch was sent; the audience is unchanged")
        return Interrupted(
            f"cancelled after {f'{closed}: ' if closed else ''}{tally.batches_sent} of the "
            f"{tally.batches_total} batches cut so far were sent; the rest of the input was not"
        )

    def _sender(self, mode: Mode) -> Sender:
        ctx, session = self._ctx, self._journal.current
        return Sender(
            ctx.client,
            ctx.limiter,
            ctx.tally,
            self._journal,
            audience_id=ctx.job.audience_id,
            mode=mode,
            schema=ctx.schema,
            session_id=session.session_id,
            retry=ctx.retry,
            on_request=ctx.on_request,
            first_unknown=session.started_at is not None,
            window_s=ctx.job.session_window_s,
            clock=ctx.clock,
            stop=ctx.stop,
            estimated_total=self._estimated_total(),
        )

    def _estimated_total(self) -> int | None:
        """Meta's `estimated_num_total` for the current session: the rows the input holds,
        less those acknowledged in the job's earlier sessions."""
        if self._ctx.estimated_rows is None:
            return None
        current = self._journal.current.session_id
        earlier = sum(r.rows for r in self._journal.acked.values() if r.session_id != current)
        return max(0, self._ctx.estimated_rows - earlier)

    def _coordinator(self, mode: Mode) -> SessionCoordinator:
        ctx = self._ctx
        window = ctx.job.session_window_s

        def cut(in_flight: int) -> bool:
            # Close while the sends already started and the closing batch can still land
            # in time at the rate the account is getting now.
            started = self._journal.current.started_at
            if started is None:
                return False
            if self._cancelled():
                return True
            finish = ctx.clock() + (in_flight + 1) / ctx.limiter.rate
            return finish - started >= CUT_AT * window

        self._last_coordinator = SessionCoordinator(
            self._sender(mode),
            concurrency=ctx.job.concurrency,
            first_alone=mode == "replace",
            stop=ctx.stop,
            cut=cut if mode == "replace" else None,
        )
        return self._last_coordinator

    def _feed(self, batches: Channel[Batch]) -> NextFn:
        number = self._journal.numbering()

        async def next_batch() -> Batch | None:
            if self._leftovers:
                return number(self._leftovers.popleft())
            if self._exhausted:
                return None
            try:
                return number(await batches.receive())
            except EndOfStream:
                self._exhausted = True
                return None

        return next_batch

    def _put_back(self, batches: list[Batch]) -> None:
        self._leftovers.extendleft(reversed(batches))

    def _next_session(self, why: str) -> None:
        """Open a new session for the rest: add after a replace, else the job's mode."""
        old = self._journal.current
        mode = "add" if old.mode == "replace" else old.mode
        new = self._journal.open_session(new_session_id(), mode)
        self._note(f"{why}; the rest goes in {mode} session {new.session_id}")

    async def _past_window(self) -> None:
        """The current session (of an earlier run) is past Meta's window: go on in a new one.

        A replace whose batch 1 arrived is over on Meta's side, with what it got: once the
        audience is out of replace_in_progress, the rest is added. A replace whose batch 1
        never arrived removed nobody, so adding the rest would keep the old members: the
        replace starts again in a new session instead."""
        session, window = self._journal.current, self._ctx.job.session_window_s
        why = f"session {session.session_id} is past Meta's {window / 60:g}-minute window"
        if session.mode != "replace":
            self._next_session(why)
        elif await self._sender("replace").first_batch_arrived():
            await self._after_replace(why)
        else:
            new = self._journal.open_session(new_session_id(), "replace")
            self._note(
                f"{why} and Meta never got its batch 1; the replace starts again in "
                f"session {new.session_id}"
            )

    async def _retry_replace(self, exc: ApiError) -> None:
        """Meta failed this replace (2650/1870148): run it again in a new session, from batch 1,
        once the audience is out of replace_in_progress; at most MAX_REPLACE_RETRIES times.

        With nothing of it acknowledged, its batches are all still to come (taken back, or
        in the feed). Otherwise the journal forgets every acknowledgement and ReplaceRestart
        has the pipeline read the input again from its start."""
        session = self._journal.current
        tries = sum(1 for s in self._journal.sessions if s.mode == "replace")
        if tries > MAX_REPLACE_RETRIES:
            self._note(f"the replace failed on Meta's side in {tries} sessions; giving up")
            raise exc
        begun = any(r.session_id == session.session_id for r in self._journal.acked.values())
        await self._until_replace_done()
        new_id = new_session_id()
        if begun:
            self._journal.start_over(new_id, "replace")
        else:
            self._journal.open_session(new_id, "replace")
        self._note(
            f"replace session {session.session_id} failed on Meta's side ({exc}); "
            f"the replace starts over from batch 1 in session {new_id}"
        )
        if begun:
            raise ReplaceRestart(exc)

    def _explain(self, exc: ApiError) -> None:
        """Say what a replace error that stops the job means, besides Meta's own words."""
        if exc.info.code == REPLACE_ERROR_CODE and exc.info.subcode in REPLACE_STOPS:
            self._note(REPLACE_STOPS[exc.info.subcode], error=True)

    def _note(self, text: str, *, error: bool = False) -> None:
        self.notes.append(text)
        log.log(logging.ERROR if error else logging.WARNING, "%s", text)

    async def _until_recorded(self, failure: CheckpointError) -> None:
        """Try the checkpoint again, with backoff, as often as a failed request, while no batch
        goes out; return once it records what waits. Raises CheckpointError when it never
        did, or when told to stop meanwhile."""
        ctx, journal = self._ctx, self._journal
        backoff = ctx.retry.backoff
        for attempt in range(ctx.retry.max_retries):
            delay = min(backoff.cap_s, backoff.base_s * 2**attempt)
            log.warning(
                "%s; %d acknowledged batches wait to be recorded, and no batch goes out "
                "until they are; trying again in %.1fs",
                failure,
                len(journal.unrecorded),
                delay,
            )
            await first_done(asyncio.sleep(delay), ctx.stop)
            if ctx.stop.is_set():
                break
            try:
                journal.flush()
            except CheckpointError as exc:
                failure = exc
                continue
            log.warning("the checkpoint takes writes again; sending goes on")
            return
        raise failure

    async def _after_replace(self, why: str) -> None:
        """Wait until the audience is out of replace_in_progress, then add the rest."""
        await self._until_replace_done()
        self._next_session(why)

    async def _until_replace_done(self) -> None:
        ctx = self._ctx
        await until_replace_done(ctx.client, ctx.job.audience_id, ctx.retry, ctx.on_request)

    async def _empty_replace(self) -> None:
        if not self._ctx.job.allow_empty_replace:
            raise InputError(EMPTY_REPLACE)
        await self._sender("replace")(Batch(1, 0, b"", 0, 0, 1), True)


async def until_replace_done(
    client: GraphClient,
    audience_id: str,
    retry: RetryPolicy,
    on_request: Callable[[str, float], None] | None = None,
) -> None:
    """Wait until the audience is out of `replace_in_progress` (while its status cannot be
    had, it counts as in it); `on_request` sees each status request's outcome and duration.
    Raises the API's error when it is not transient."""
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            status = await client.operation_status(audience_id)
        except (ApiError, TransportError) as exc:
            if on_request is not None:
                on_request(outcome_of(exc), time.monotonic() - started)
            if isinstance(exc, ApiError) and not exc.is_transient:
                raise
            status = "unknown"
        else:
            if on_request is not None:
                on_request("ok", time.monotonic() - started)
        if status not in ("replace_in_progress", "unknown"):
            return
        # Deterministic doubling: this waits on Meta's job, not on a shared budget.
        await asyncio.sleep(min(SETTLE_POLL_MAX_S, retry.backoff.base_s * 2**attempt))
        attempt += 1
