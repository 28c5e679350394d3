"""The sender stage: one batch to the API, retried until acknowledged or hopeless."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .._aio import first_done
from .._errors import ApiError, Interrupted, RetriesExhausted, TransportError, WindowClosed
from .._graph.client import GraphClient, Mode
from .._graph.facts import TRANSIENT_CODES
from .._graph.usage import parse_usage
from .._hashing.schema import Schema
from .._quota.account import AccountQuota
from .._quota.backoff import Backoff
from .._report import Tally
from .._resume.journal import Journal
from .batcher import Batch

log = logging.getLogger("engine.upload")

Payload = tuple[bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: transient failures up to `max_retries`, throttles up to `max_throttles`."""

    max_retries: int = 8
    max_throttles: int = 100
    backoff: Backoff = field(default_factory=Backoff)


def payload_parts(schema: Schema, data: bytes) -> tuple[bytes, bytes, bytes]:
    """The `payload` form field (schema, is_raw for multi-key, and data, as JSON) in three
    parts around the rows' JSON joined by commas (a Batch's `data`), so that a 5 MB batch is
    not copied again before its request body is built."""
    if schema.single_key:
        head = b'{"schema":' + orjson.dumps(schema.single_key) + b',"data":['
    else:
        head = b'{"schema":' + orjson.dumps(list(schema.keys)) + b',"is_raw":true,"data":['
    return head, data, b"]}"


def encode_payload(schema: Schema, data: bytes) -> bytes:
    """The `payload` form field whole: the same bytes as dumping the whole object."""
    return b"".join(payload_parts(schema, data))


class Sender:
    """Sends the batches of one session. Call it with (batch, last); it returns once acknowledged.

    Transient failures are retried with backoff and the same `batch_seq`; throttles pause
    the whole ad account through its limiter; anything else is raised at once. Batch 1 of a
    replace is never re-sent blind: when its outcome is unknown (no usable reply, or a
    server-side failure that may have come after the work was done), the API is asked first.
    Once `stop` is set, a failed request is not tried again: `Interrupted` is raised and the
    batch stays unacknowledged for the resumed run (the same `batch_seq`, as it failed).
    """

    def __init__(
        self,
        client: GraphClient,
        limiter: AccountQuota,
        tally: Tally,
        journal: Journal,
        *,
        audience_id: str,
        mode: Mode,
        schema: Schema,
        session_id: int,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_request: Callable[[str, float], None] | None = None,
        first_unknown: bool = False,
        window_s: float | None = None,
        clock: Callable[[], float] = time.time,
        stop: asyncio.Event | None = None,
        estimated_total: int | None = None,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._tally = tally
        self._audience = audience_id
        self._mode: Mode = mode
        self._schema = schema
        self._session_id = session_id
        self._retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_request = on_request
        self._journal = journal
        # Batch 1 of a replace may have reached the API in an earlier run: ask before sending.
        self._first_unknown = first_unknown and mode == "replace"
        self._window_s = window_s
        self._clock = clock
        self._stop = stop
        self._estimated_total = estimated_total

    async def __call__(self, batch: Batch, last: bool) -> None:
        payload = payload_parts(self._schema, batch.data)
        session: dict[str, Any] = {
            "session_id": self._session_id,
            "batch_seq": batch.seq,
            "last_batch_flag": last,
        }
        if self._estimated_total is not None:
            session["estimated_num_total"] = self._estimated_total
        if (
            batch.seq == 1
            and self._first_unknown
            and await self._replace_seen(batch, payload, last)
        ):
            return
        failures = throttles = 0
        while True:
            if batch.seq == 1:
                await self._limiter.acquire()
                if self._first_of_replace(batch):
                    # Told to stop while batch 1 waited its turn: the replace has not begun,
                    # and a cancel decided on that, so it must not begin now.
                    self._unless_stopping(batch)
                self._journal.started()  # the window opens as batch 1 goes out
            else:
                await self._acquire_in_window(batch)
            started = time.monotonic()
            try:
                reply = await self._client.upload(self._audience, self._mode, payload, session)
            except ApiError as exc:
                self._observe(outcome_of(exc), started)
                if exc.is_throttle:
                    throttles += 1
                    self._tally.throttle()
                    pause = self._limiter.on_throttle(parse_usage(exc.headers))
                    log.info("ad account throttled (code %s), pausing %.1fs", exc.info.code, pause)
                    self._unless_stopping(batch)
                    if throttles > self._retry.max_throttles:
                        raise RetriesExhausted(exc, failures + throttles) from None
                    continue
                if not exc.is_transient:
                    raise
                if (
                    _maybe_applied(exc)
                    and self._first_of_replace(batch)
                    and await self._replace_seen(batch, payload, last)
                ):
                    return
                failures = await self._backoff(exc, batch, failures)
                continue
            except TransportError as exc:
                self._observe(outcome_of(exc), started)
                if (
                    exc.maybe_applied
                    and self._first_of_replace(batch)
                    and await self._replace_seen(batch, payload, last)
                ):
                    return
                failures = await self._backoff(exc, batch, failures)
                continue
            self._observe("ok", started)
            self._limiter.on_success(parse_usage(reply.headers))
            self._acknowledged(batch, payload, reply.body, last)
            return

    def _first_of_replace(self, batch: Batch) -> bool:
        return self._mode == "replace" and batch.seq == 1

    async def first_batch_arrived(self) -> bool:
        """Whether the API has batch 1 of this session: recorded as acknowledged, or, when
        its outcome was never learned, seen by the sessions endpoint."""
        if self._journal.first_acknowledged():
            return True
        return await self._replace_started() is not None

    async def _acquire_in_window(self, batch: Batch) -> None:
        """The limiter's go for a batch after the first, within the session's window: never
        send into a session past it (Meta would discard the batch), nor wait for a token
        beyond it (a slowed account would hold every waiting send that long for nothing)."""
        window = self._window_s
        if window is None:
            await self._limiter.acquire()
            return

        def left() -> float | None:
            # None until batch 1 opens the window (an add's batches wait alongside it).
            started = self._journal.current.started_at
            return None if started is None else started + window - self._clock()

        try:
            if (wait := left()) is not None and wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                await self._limiter.acquire()
            if (wait := left()) is not None and wait <= 0:
                raise TimeoutError
        except TimeoutError:
            raise WindowClosed(
                f"batch {batch.seq} of session {self._session_id} was due after the "
                f"session's {window / 60:g}-minute window"
            ) from None

    async def _replace_seen(self, batch: Batch, payload: Payload, last: bool) -> bool:
        """Whether batch 1 of this replace already arrived (then it counts as acknowledged)."""
        body = await self._replace_started()
        if body is None:
            return False
        self._acknowledged(batch, payload, body, last)
        return True

    def _observe(self, outcome: str, started: float) -> None:
        if self._on_request is not None:
            self._on_request(outcome, time.monotonic() - started)

    def _acknowledged(
        self, batch: Batch, payload: Payload, body: dict[str, Any], last: bool
    ) -> None:
        # Counted first: the API has it, even if the checkpoint then fails to record it.
        self._tally.acknowledged(batch.rows, body, self._session_id)
        self._journal.acknowledged(batch, payload, body, last=last)

    def _unless_stopping(self, batch: Batch) -> None:
        """A failed request is not tried again once the job is told to stop: a retry is no
        request in flight, and its wait could outlast the grace period."""
        if self._stop is not None and self._stop.is_set():
            raise Interrupted(
                f"stopped before batch {batch.seq} of session {self._session_id} was "
                "acknowledged; it can be resumed"
            )

    async def _wait_unless_stopped(self, seconds: float) -> None:
        """Sleep, cut short by a stop: a backoff must not outlast the grace period."""
        await first_done(self._sleep(seconds), *(() if self._stop is None else (self._stop,)))

    async def _backoff(self, exc: ApiError | TransportError, batch: Batch, failures: int) -> int:
        self._unless_stopping(batch)
        if failures >= self._retry.max_retries:
            raise RetriesExhausted(exc, failures + 1) from None
        delay = self._retry.backoff.delay(failures, self._rng)
        log.info("batch %d failed (%s), retrying in %.2fs", batch.seq, exc, delay)
        await self._wait_unless_stopped(delay)
        # A stop may come while the failure is taken in (a signal is handled on a later turn
        # of the loop than the failed request it came with): it still wins over the retry.
        self._unless_stopping(batch)
        self._tally.retry()
        return failures + 1

    async def _replace_started(self) -> dict[str, Any] | None:
        """Whether the API saw batch 1 of this replace session; None when it did not."""
        for attempt in range(self._retry.max_retries + 1):
            started = time.monotonic()
            try:
                status = await self._client.session_status(self._audience, self._session_id)
            except (ApiError, TransportError) as exc:
                self._observe(outcome_of(exc), started)
                if attempt == self._retry.max_retries:
                    raise RetriesExhausted(exc, attempt + 1) from None
                await self._sleep(self._retry.backoff.delay(attempt, self._rng))
                continue
            self._observe("ok", started)
            if status is None:
                return None
            try:
                received = int(status.get("num_received", 0))
            except (TypeError, ValueError):
                received = 0
            return {"num_received": received}
        return None


def _maybe_applied(exc: ApiError) -> bool:
    """Whether a failed request may have been applied all the same: a server-side failure
    (HTTP 5xx, codes 1 and 2) can come after the work was done; a refusal cannot."""
    return (exc.info.http_status or 0) >= 500 or exc.info.code in TRANSIENT_CODES


def outcome_of(exc: ApiError | TransportError) -> str:
    """A failed request's outcome as the metrics label it."""
    if isinstance(exc, TransportError):
        return "transport"
    if exc.is_throttle:
        return "throttled"
    return "transient" if exc.is_transient else "permanent"
