"""The inspection's place in the pipeline: the hashing workers profile what they hash, and the
`Inspector` adds their profiles up. A dry run inspects this way; `inspect()` is a dry run that
returns the inspection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from .._hashing.schema import NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._input.memory import Source, aopen_source
from .._rows import EncodedChunk, RawChunk
from .profile import Profile, profile_units
from .result import Inspection, inspection_of

Work = Callable[..., Any]


class Inspector:
    """Profiles the chunks of one run as they are hashed. `bind` it to the run's schema, hand
    `work()` to the workers in place of plain hashing, pass what they return through `take`."""

    def __init__(self) -> None:
        self._profile: Profile | None = None

    def bind(self, schema: Schema) -> None:
        self._profile = Profile(schema.keys)

    def work(self) -> Work:
        """The workers' task: hash and profile, leaving out what the sketches cannot take."""
        assert self._profile is not None
        return partial(_profiled, bounds=self._profile.bounds())

    def take(self, results: object) -> list[EncodedChunk]:
        """The hashed chunks of a task's results; their profiles are added up here."""
        assert self._profile is not None
        out = []
        for encoded, profile in results:  # type: ignore[attr-defined]
            self._profile.merge(profile)
            out.append(encoded)
        return out

    def result(self) -> Inspection:
        assert self._profile is not None
        return inspection_of(self._profile)


def _profiled(
    units: list[RawChunk | CsvBlock], schema: Schema, options: NormalizeOptions, *, bounds: object
) -> object:
    return profile_units(units, schema, options, bounds)  # type: ignore[arg-type]


async def ainspect(
    source: Source,
    *,
    schema: str | Sequence[str] | None = None,
    column_map: Mapping[str, str] | None = None,
    format: str | None = None,
    prehashed: bool = False,
    default_country_code: str | None = None,
    workers: int | None = None,
) -> Inspection:
    """Inspect a people list without sending anything: per key the fill and valid rates,
    rejection reasons, the share normalization changed and distinct values; duplicate rows,
    rows by number of valid keys and the expected match quality (docs/inspect.md). Takes
    every source `Uploader.upload` takes, with the same input options. Raises InputError."""
    # Imported here: the pipeline imports this module.
    from .._api import _name
    from .._options import UploadJob
    from .._pipeline.run import run_job
    from .._pipeline.sender import RetryPolicy
    from .._quota.limiter import AccountLimiter, LimiterConfig

    job = UploadJob(
        source=_name(source),
        audience_id="0",  # nothing is sent: no audience, no account
        ad_account="act_0",
        schema=schema if schema is None or isinstance(schema, str) else ",".join(schema),
        column_map=dict(column_map or {}),
        format=format,
        prehashed=prehashed,
        default_country_code=default_country_code,
        workers=workers,
        dry_run=True,
    )
    inspector = Inspector()
    with await aopen_source(source, format) as opened:
        await run_job(
            job,
            opened,
            None,
            AccountLimiter(LimiterConfig()),
            retry=RetryPolicy(),
            inspector=inspector,
        )
    return inspector.result()


def inspect(source: Source, **options: object) -> Inspection:
    """Blocking `ainspect()`, same arguments (raises RuntimeError inside a running loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(ainspect(source, **options))  # type: ignore[arg-type]
    raise RuntimeError("inspect() cannot run inside a running event loop; await ainspect()")


__all__ = ["Inspection", "Inspector", "ainspect", "inspect"]
