"""The job table in Redis, shared by every replica of a fleet.

Keys under the namespace: `job:<id>` a hash per job; `jobs` every job id scored by its
submission number (`jobs:seq`); `jobs:<state>` the ids in each state, scored alike, so
listing newest first and resuming oldest first are range reads. Each change is one Lua
script, so a job is never seen in two states or in none.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, cast

import orjson
import redis

from .._worker.idempotency import KEY_TTL_S
from .._worker.jobs import STATES, UNFINISHED, Job, State
from .connection import DEFAULT_NAMESPACE, as_os_error

_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('job exists') end
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'seq', seq, 'state', ARGV[2], 'source', ARGV[3], 'input', ARGV[4],
  'options', ARGV[5], 'intake', ARGV[6], 'created_at', ARGV[7], 'updated_at', ARGV[7])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', ARGV[8] .. ARGV[2], seq, ARGV[1])
return seq
"""

# ARGV[7]: the states it may move from (space-separated; empty: any). KEYS[2] (optional):
# the job's lease token, which must be ARGV[8]: an update by an owner that lost the job is
# not made. Returns 0 when not made.
_UPDATE = """
local old = redis.call('HGET', KEYS[1], 'state')
if not old then return redis.error_reply('no such job') end
if ARGV[7] ~= '' and not string.find(' ' .. ARGV[7] .. ' ', ' ' .. old .. ' ', 1, true) then
  return 0
end
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[8] then return 0 end
local seq = redis.call('HGET', KEYS[1], 'seq')
redis.call('ZREM', ARGV[6] .. old, ARGV[1])
redis.call('ZADD', ARGV[6] .. ARGV[2], seq, ARGV[1])
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'report', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', string.sub(ARGV[5], 2)) end
return 1
"""

_FIELDS = ("state", "source", "input", "options", "intake", "report", "error")


class RedisJobStore:
    """The fleet's job table. Any replica may write it; every change is atomic."""

    def __init__(self, client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._redis = client
        self._ns = namespace
        self._add = client.register_script(_ADD)
        self._update = client.register_script(_UPDATE)

    def _key(self, job_id: str) -> str:
        return f"{self._ns}job:{job_id}"

    def close(self) -> None:
        self._redis.close()

    def add(self, job: Job) -> Job:
        now = repr(time.time())
        intake = "" if job.intake is None else orjson.dumps(job.intake).decode()
        keys = [self._key(job.id), f"{self._ns}jobs:seq", f"{self._ns}jobs"]
        args: list[str | bytes] = [
            job.id,
            job.state,
            job.source,
            job.input,
            orjson.dumps(job.options),
            intake,
            now,
        ]
        with as_os_error():
            self._add(keys=keys, args=[*args, f"{self._ns}jobs:"])
            if job.idempotency_key is not None:
                self._redis.hset(
                    self._key(job.id),
                    mapping={
                        "idempotency_key": job.idempotency_key,
                        "request_digest": job.request_digest or "",
                    },
                )
                # The key leads to its newest job for as long as a replay is answered.
                self._redis.set(self._idem(job.idempotency_key), job.id, ex=int(KEY_TTL_S))
        return self._get(job.id)

    def by_idempotency_key(self, key: str, since: float) -> Job | None:
        """The newest job accepted at or after `since` (epoch seconds) with this key."""
        with as_os_error():
            job_id = self._redis.get(self._idem(key))
        job = None if job_id is None else self.get(cast(bytes, job_id).decode())
        return job if job is not None and job.created_at >= since else None

    def _idem(self, key: str) -> str:
        return f"{self._ns}idem:{hashlib.sha256(key.encode()).hexdigest()}"

    def get(self, job_id: str) -> Job | None:
        with as_os_error():
            fields = cast(dict[bytes, bytes], self._redis.hgetall(self._key(job_id)))
        return _job(job_id, fields) if fields else None

    def _get(self, job_id: str) -> Job:
        job = self.get(job_id)
        assert job is not None, job_id
        return job

    def update(
        self,
        job_id: str,
        state: State,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        job = self.update_if(job_id, state, report=report, error=error)
        assert job is not None, job_id
        return job

    def update_if(
        self,
        job_id: str,
        state: State,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
        from_states: tuple[State, ...] = (),
        fence: tuple[str, int] | None = None,
    ) -> Job | None:
        """`update`, made only while the job is in one of `from_states` (empty: any) and,
        with a `fence` (lease key, token), only while that token is the job's: else None."""
        # An error is sent with a leading mark, so an empty error still replaces the stored one.
        args = [
            job_id,
            state,
            repr(time.time()),
            "" if report is None else orjson.dumps(report).decode(),
            "" if error is None else "=" + error,
            f"{self._ns}jobs:",
            " ".join(from_states),
            "" if fence is None else str(fence[1]),
        ]
        keys = [self._key(job_id), *(() if fence is None else (fence[0],))]
        with as_os_error():
            made = self._update(keys=keys, args=args)
        return self._get(job_id) if made else None

    def _many(self, ids: list[bytes]) -> list[Job]:
        with as_os_error():
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._key(job_id.decode()))
            rows = pipe.execute()
        # A job may be read between its listing and its hash only if deleted; none are.
        return [_job(i.decode(), row) for i, row in zip(ids, rows, strict=True) if row]

    def jobs(self, state: State | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        key = f"{self._ns}jobs:{state}" if state else f"{self._ns}jobs"
        with as_os_error():
            ids = cast(list[bytes], self._redis.zrevrange(key, 0, limit - 1))
        return self._many(ids)

    def unfinished(self) -> list[Job]:
        """Jobs to resume, oldest first."""
        scored: list[tuple[float, bytes]] = []
        with as_os_error():
            for state in UNFINISHED:
                members = cast(
                    list[tuple[bytes, float]],
                    self._redis.zrange(f"{self._ns}jobs:{state}", 0, -1, withscores=True),
                )
                scored += [(score, job_id) for job_id, score in members]
        return self._many([job_id for _, job_id in sorted(scored)])

    def count(self, states: tuple[State, ...]) -> int:
        counts = self.counts()
        return sum(counts[state] for state in states)

    def counts(self) -> dict[State, int]:
        with as_os_error():
            pipe = self._redis.pipeline(transaction=False)
            for state in STATES:
                pipe.zcard(f"{self._ns}jobs:{state}")
            return dict(zip(STATES, map(int, pipe.execute()), strict=True))


def _job(job_id: str, fields: dict[bytes, bytes]) -> Job:
    text = {name: fields.get(name.encode(), b"").decode() for name in _FIELDS}
    return Job(
        id=job_id,
        state=cast(State, text["state"]),
        source=text["source"],
        input=text["input"],
        options=orjson.loads(text["options"]),
        intake=orjson.loads(text["intake"]) if text["intake"] else None,
        report=orjson.loads(text["report"]) if text["report"] else None,
        error=text["error"] or None,
        created_at=float(fields[b"created_at"]),
        updated_at=float(fields[b"updated_at"]),
        idempotency_key=fields[b"idempotency_key"].decode()
        if b"idempotency_key" in fields
        else None,
        request_digest=fields[b"request_digest"].decode() or None
        if b"request_digest" in fields
        else None,
    )


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return value.decode() if value else None
