"""The inspection's place in the pipeline: the hashing workers profile the units they are
given, and the `Inspector` adds their profiles up. A dry run inspects beside its hashing;
`inspect()` is a dry run whose workers only profile, and returns the inspection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

from .._hashing.pool import hash_unit
from .._hashing.schema import NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._input.memory import Source, aopen_source
from .._rows import EncodedChunk, RawChunk
from .profile import Bounds, Profile, profile_unit
from .result import Inspection, inspection_of

Work = Callable[..., Any]
Units = list[RawChunk | CsvBlock]


class Inspector:
    """Profiles the units of one run in the hashing workers. `bind` it to the run's schema,
    hand `work()` to the workers in place of plain hashing, pass what they return through
    `take`. Without `hashing`, the workers only profile and no chunk comes out."""

    def __init__(self, *, hashing: bool = True) -> None:
        self._hashing = hashing
        self._profile: Profile | None = None

    def bind(self, schema: Schema) -> None:
        self._profile = Profile(schema.keys)

    def work(self) -> Work:
        """The workers' task, leaving out what the sketches cannot take."""
        assert self._profile is not None
        return partial(_profiled, hashing=self._hashing, bounds=self._profile.bounds())

    def take(self, results: object) -> list[EncodedChunk]:
        """The hashed chunks of a task's results; their profile is added up here."""
        assert self._profile is not None
        chunks, profile = cast(tuple[list[EncodedChunk], Profile], results)
        self._profile.merge(profile)
        return chunks

    def result(self) -> Inspection:
        assert self._profile is not None
        return inspection_of(self._profile)


def _profiled(
    units: Units, schema: Schema, options: NormalizeOptions, *, hashing: bool, bounds: Bounds
) -> tuple[list[EncodedChunk], Profile]:
    """The units hashed as the upload hashes them (with `hashing`), and their counts."""
    profile = Profile(schema.keys)
    for unit in units:
        profile.merge(profile_unit(unit, schema, options, bounds))
    return [hash_unit(unit, schema, options) for unit in units] if hashing else [], profile


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
    inspector = Inspector(hashing=False)  # only the counts: no digest, no payload
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
