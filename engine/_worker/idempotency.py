"""`Idempotency-Key` on `POST /jobs`: a client's retry of a request it got no answer to
returns the job the first one made instead of running the upload twice.

The key is stored with the job, with a digest of the request (content type, query and
body), for `KEY_TTL_S`. The same key with the same request returns that job; with another
request it is refused, as is a key whose first request is still being handled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from .intake import Refusal
from .jobs import Job, JobTable

__all__ = ["HEADER", "KEY_TTL_S", "Claim", "Idempotency"]

HEADER = "Idempotency-Key"
KEY_TTL_S = 24 * 3600.0  # how long a key is remembered after its job was accepted
MAX_KEY = 255
# Printable ASCII: a UUID, a hash or a name an orchestrator makes up, never a control byte.
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY}}}")


@dataclass(frozen=True, slots=True)
class Claim:
    """A request's key, held while it is handled, and the digest of that request."""

    key: str
    digest: str

    def stamp(self, job: Job) -> Job:
        return dataclasses.replace(job, idempotency_key=self.key, request_digest=self.digest)


class Idempotency:
    """The keys of `POST /jobs` requests: those in the job store, and those being handled."""

    def __init__(self, store: JobTable, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._busy: set[str] = set()

    @contextlib.asynccontextmanager
    async def claim(self, request: web.Request) -> AsyncIterator[Claim | None]:
        """The request's claim on its key (None without one) while the request is handled;
        Refusal(400) for a malformed key, Refusal(409) while another request holds it."""
        key = _key(request)
        if key is None:
            yield None
            return
        if key in self._busy:
            raise Refusal(
                409, f"a request with this {HEADER} is still being handled; retry once it is"
            )
        self._busy.add(key)
        try:
            yield Claim(key, _digest(request, await request.read()))
        finally:
            self._busy.discard(key)

    def earlier(self, claim: Claim) -> Job | None:
        """The job an earlier request with this key made, if the same request; Refusal(422)
        if that request was a different one."""
        job = self._store.by_idempotency_key(claim.key, self._clock() - KEY_TTL_S)
        if job is not None and job.request_digest != claim.digest:
            raise Refusal(
                422, f"this {HEADER} was used for a different request; use a new key for it"
            )
        return job


def _key(request: web.Request) -> str | None:
    given = request.headers.getall(HEADER, [])
    if not given:
        return None
    if len(given) > 1 or not _KEY.fullmatch(given[0]):
        raise Refusal(
            400, f"{HEADER} must be one value of 1 to {MAX_KEY} printable ASCII characters"
        )
    return given[0]


def _digest(request: web.Request, body: bytes) -> str:
    """What makes two requests the same job: content type, options in the query, body."""
    # repr escapes whatever a header or query holds, so the text always encodes.
    head = repr((request.content_type, sorted(request.query.items())))
    return hashlib.sha256(head.encode() + b"\x00" + body).hexdigest()
