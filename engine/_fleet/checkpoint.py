"""A job's checkpoint in Redis, so any replica of a fleet resumes any job in its session.

Keys under `<namespace>ckpt:<job>:`: `job` (identity, fingerprint, state, times, counts),
`sessions` (id -> mode and first batch), `started` (id -> when its first batch went out),
`closed` (ids of closed sessions) and `batches` (number -> acknowledged batch). Every write
is one MULTI/EXEC. With a fence, the write first WATCHes the job's lease token and is made
only while that token is still this owner's: a replica that lost the job (paused, cut off)
can record nothing, and its send stops on the failed write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis
from redis.client import Pipeline

from .._resume.checkpoint import (
    Acknowledgement,
    BatchRecord,
    JobRecord,
    SessionRecord,
    sessions_in_order,
)
from .connection import DEFAULT_NAMESPACE, as_os_error


class Fenced(OSError):
    """This replica no longer owns the job: another took it over."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The job's lease token key and the token this owner holds."""

    key: str
    token: int


class RedisCheckpoint:
    """One job's checkpoint in Redis. Writes are atomic; with a `fence`, only its owner's."""

    def __init__(
        self,
        client: redis.Redis,
        job_id: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        fence: Fence | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._job_id = job_id
        self._prefix = f"{namespace}ckpt:{job_id}:"
        self._fence = fence
        self._clock = clock

    @property
    def label(self) -> str:
        return f"of job {self._job_id} in redis"

    def _k(self, name: str) -> str:
        return self._prefix + name

    def close(self) -> None:
        """The client is the caller's (one per replica): nothing to close here."""

    def load(self) -> JobRecord | None:
        with as_os_error():
            pipe = self._redis.pipeline(transaction=True)
            for name in ("job", "sessions", "started", "batches"):
                pipe.hgetall(self._k(name))
            pipe.smembers(self._k("closed"))
            job, sessions, started, batches, closed = pipe.execute()
        if b"identity" not in job:  # nothing started here (a bare write leaves only times)
            return None
        f = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], job).items()}
        records = []
        for sid, value in sessions.items():
            mode, first = orjson.loads(value)
            when = started.get(sid)
            records.append(
                SessionRecord(
                    int(sid), mode, first, None if when is None else float(when), sid in closed
                )
            )
        acked = {int(k): BatchRecord(*orjson.loads(v)) for k, v in batches.items()}
        return JobRecord(
            f["identity"],
            f["fingerprint"],
            f["state"],
            float(f["created_at"]),
            float(f["updated_at"]),
            int(f["retries"]),
            int(f["throttled"]),
            sessions_in_order(records),
            acked,
        )

    def _write(self, queue: Callable[[Pipeline], object]) -> list[Any]:
        """Queue writes on a MULTI pipeline and run it; with a fence, only while the
        lease token is still ours (WATCHed, so a takeover in between aborts the write)."""
        fence = self._fence

        def run(pipe: Pipeline) -> None:
            if fence is not None:
                held = pipe.get(fence.key)
                if held is None or int(held) != fence.token:
                    raise Fenced(f"job {self._job_id} is now another replica's")
            pipe.multi()
            queue(pipe)

        with as_os_error():
            watches = () if fence is None else (fence.key,)
            return cast(list[Any], self._redis.transaction(run, *watches))

    def start(self, identity: str, fingerprint: str) -> None:
        now = self._clock()

        def queue(pipe: Pipeline) -> None:
            pipe.delete(*(self._k(n) for n in ("job", "sessions", "started", "closed", "batches")))
            pipe.hset(
                self._k("job"),
                mapping={
                    "identity": identity,
                    "fingerprint": fingerprint,
                    "state": "running",
                    "created_at": repr(now),
                    "updated_at": repr(now),
                    "retries": 0,
                    "throttled": 0,
                },
            )

        self._write(queue)

    def add_session(self, session_id: int, mode: str, first_batch: int) -> None:
        self._write(
            lambda pipe: pipe.hset(
                self._k("sessions"), str(session_id), orjson.dumps([mode, first_batch])
            )
        )

    def start_over(self, session_id: int, mode: str) -> None:
        def queue(pipe: Pipeline) -> None:
            pipe.delete(self._k("batches"))
            pipe.hset(self._k("sessions"), str(session_id), orjson.dumps([mode, 1]))
            pipe.hset(self._k("job"), "updated_at", repr(self._clock()))

        self._write(queue)

    def session_started(self, session_id: int) -> float:
        def queue(pipe: Pipeline) -> None:
            pipe.hsetnx(self._k("started"), str(session_id), repr(self._clock()))
            pipe.hget(self._k("started"), str(session_id))

        return float(self._write(queue)[-1])

    def acknowledged(self, acks: Sequence[Acknowledgement]) -> None:
        now = self._clock()

        def queue(pipe: Pipeline) -> None:
            for record, closes_session in acks:
                fields = [
                    record.batch,
                    record.session_id,
                    record.rows,
                    record.digest,
                    record.num_received,
                    record.num_invalid,
                ]
                pipe.hset(self._k("batches"), str(record.batch), orjson.dumps(fields))
                if closes_session:
                    pipe.sadd(self._k("closed"), str(record.session_id))
            pipe.hset(self._k("job"), "updated_at", repr(now))

        self._write(queue)

    def finish(self, state: str, retries: int, throttled: int) -> None:
        self._write(
            lambda pipe: pipe.hset(
                self._k("job"),
                mapping={
                    "state": state,
                    "retries": retries,
                    "throttled": throttled,
                    "updated_at": repr(self._clock()),
                },
            )
        )
