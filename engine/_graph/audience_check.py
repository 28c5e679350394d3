"""The checks before batch 1 of every upload: the audience is read (`GET /{audience}`) and a
wrong one refused, with nothing sent; a replace running on it is waited for, a bounded time;
a remove or replace that would leave it too small to use is warned of (docs/audiences.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .._errors import ApiError, InputError, TransportError
from .._hashing.schema import Schema
from .._options import UploadJob
from .audience import AudienceInfo, read_audience
from .client import GraphClient
from .facts import CUSTOMER_FILE_SUBTYPE, FLAGGED_STATUS, MIN_USEFUL_AUDIENCE, REPLACING_STATUS

log = logging.getLogger("engine.audience")

REPLACE_WAIT_S = 600.0  # the longest wait for another replace to finish
POLL_FIRST_S, POLL_MAX_S = 2.0, 30.0
TRIES = 3  # reads of the audience that fail in transit before the check gives up


class AudienceRefused(InputError):
    """The audience cannot take this upload: nothing was sent."""


Sleep = Callable[[float], Awaitable[None]]


async def check_audience(
    client: GraphClient,
    job: UploadJob,
    schema: Schema,
    rows: int | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    max_wait_s: float = REPLACE_WAIT_S,
    own_replace: bool = False,
) -> list[str]:
    """Read the audience and refuse (AudienceRefused) one this upload cannot go to; wait
    while a replace runs on it, unless that replace is this job's own (`own_replace`: it
    resumes a replace session it left open, which only it can finish). Returns warnings.
    `rows`: about how many rows the input has."""
    audience = await _read(client, job.audience_id, sleep)
    if audience is None:
        return [f"audience {job.audience_id} could not be read before sending: not checked"]
    _refuse_wrong(audience, job, schema)
    deadline = clock() + max_wait_s
    pause = POLL_FIRST_S
    while audience.operation_status == REPLACING_STATUS and not own_replace:
        left = deadline - clock()
        if left <= 0:
            raise AudienceRefused(
                f"audience {job.audience_id}: a replace is still in progress after "
                f"{max_wait_s:g} s; run the upload again once its status is Normal"
            )
        log.warning(
            "audience %s: a replace is in progress; waiting for it to finish (up to %.0f s more)",
            job.audience_id,
            left,
        )
        await sleep(min(pause, left))
        pause = min(POLL_MAX_S, pause * 2)
        if (audience := await _read(client, job.audience_id, sleep)) is None:
            return [f"audience {job.audience_id} could not be read while waiting: not checked"]
    return _size_warnings(audience, job, rows)


async def _read(client: GraphClient, audience_id: str, sleep: Sleep) -> AudienceInfo | None:
    """The audience; None when the API gave no usable answer after a few tries (the
    upload then meets the same API and fails or succeeds on its own retries)."""
    for attempt in range(TRIES):
        try:
            return await read_audience(client, audience_id)
        except TransportError:
            pass
        except ApiError as exc:
            if not exc.is_transient:
                raise AudienceRefused(_denied(audience_id, exc)) from None
        if attempt < TRIES - 1:
            await sleep(POLL_FIRST_S)
    log.warning("audience %s could not be read (no answer): not checked", audience_id)
    return None


def _denied(audience_id: str, exc: ApiError) -> str:
    info = exc.info
    why = f"Graph API {info.code}/{info.subcode}: {info.message}"
    if info.code == 190:
        return f"audience {audience_id} cannot be read: the access token is not valid ({why})"
    if info.code in (10, 100) or 200 <= (info.code or 0) <= 299:
        return (
            f"audience {audience_id} cannot be read with this token: it does not exist, or the "
            f"token lacks permission on it (ads_management on its ad account) ({why})"
        )
    return f"audience {audience_id} cannot be read ({why})"


def _refuse_wrong(audience: AudienceInfo, job: UploadJob, schema: Schema) -> None:
    """Refuse when this upload cannot go to this audience. A field Meta left out is not
    checked."""
    aid = job.audience_id
    if audience.subtype is not None and audience.subtype != CUSTOMER_FILE_SUBTYPE:
        raise AudienceRefused(
            f"audience {aid} is a {audience.subtype} audience, not a customer-file Custom "
            f"Audience (subtype {CUSTOMER_FILE_SUBTYPE}): people lists cannot be uploaded to it"
        )
    owner = audience.account_id
    if owner is not None and f"act_{owner.removeprefix('act_')}" != job.ad_account:
        raise AudienceRefused(
            f"audience {aid} belongs to ad account act_{owner.removeprefix('act_')}, not "
            f"{job.ad_account}: pass its own account with --ad-account (its rate limit is that "
            "account's)"
        )
    if audience.is_value_based is True and not schema.is_value_based:
        raise AudienceRefused(
            f"audience {aid} is value-based: every row needs a LOOKALIKE_VALUE column, and the "
            "schema has none"
        )
    if audience.is_value_based is False and schema.is_value_based:
        raise AudienceRefused(
            f"audience {aid} is not value-based: it takes no LOOKALIKE_VALUE column; drop it "
            "from the schema or upload to a value-based audience"
        )
    if audience.operation_status_code == FLAGGED_STATUS:
        raise AudienceRefused(
            f"audience {aid} is flagged (operation_status {FLAGGED_STATUS}): Meta takes no "
            "uploads to it until its restrictions are resolved in Audience Manager"
        )


def _size_warnings(audience: AudienceInfo, job: UploadJob, rows: int | None) -> list[str]:
    warnings = []
    if job.mode == "replace" and rows is not None and rows < MIN_USEFUL_AUDIENCE:
        warnings.append(
            f"audience {job.audience_id}: the replace leaves it with at most about {rows} "
            f"people, below the {MIN_USEFUL_AUDIENCE} Meta needs to deliver ads to it"
        )
    upper = audience.approximate_count_upper_bound
    left = None if upper is None else upper - (rows or 0)
    if job.mode == "remove" and left is not None and left < MIN_USEFUL_AUDIENCE:
        warnings.append(
            f"audience {job.audience_id}: it holds at most about {upper} people and the "
            f"remove may leave it below the {MIN_USEFUL_AUDIENCE} Meta needs to deliver ads"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
