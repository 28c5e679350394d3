"""A mirror run: the input diffed against the audience's state, then only the difference sent.

1. An earlier mirror's plan still under way is settled first: a replace is resumed in its
   session and finished; the acknowledged batches of additions and removals go into the
   state (their sub-jobs' checkpoints say which), and the rest is left to the new diff.
2. The input is read as a dry run (the same reader, normalizer and hasher), its rows packed
   by the hashing workers and written to a plan file; SQLite takes the set differences
   against the state on disk.
3. No state (or another schema's, or `resync`), or a diff above `replace_threshold` of the
   list: the input's distinct rows go as a replace. Otherwise additions go as an add job and
   removals as a remove job, each in its own session, through the same pipeline as any job
   (their rows are fed back as prehashed input). Removals above `max_removal_share` of the
   audience stop the mirror before anything is sent, unless `allow_large_removal`.
4. The state changes only with acknowledged batches: each part runs with a checkpoint, and
   the batches it records are applied to the state, each once; a replace sets the state when
   it completes. A mirror killed at any point and run again finishes from there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson

from .._errors import EMPTY_REPLACE, InputError
from .._graph.client import GraphClient
from .._hashing.packed import Packer
from .._hashing.schema import Schema
from .._input.memory import aopen_source
from .._input.source import InputFile
from .._options import UploadJob
from .._pipeline.run import RequestHook, run_job
from .._pipeline.send_stage import until_replace_done
from .._pipeline.sender import RetryPolicy
from .._quota.account import AccountQuota
from .._report import ProgressFn, Report, Status
from .._resume.checkpoint import Checkpoint
from .plan import Part, PlanFile
from .store import Plan, PlanKind, SqliteStore, State, default_state_dir

log = logging.getLogger("engine.mirror")

_STATUS_RANK: dict[Status, int] = {"dry_run": 0, "completed": 0, "interrupted": 1, "failed": 2}


async def run_mirror(
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
) -> Report:
    """Make the audience hold exactly the input's valid rows and report it (`run_job`'s
    contract, with `added`, `removed` and `unchanged`). Raises InputError for bad input,
    for removals above the guard and when another mirror of the audience is running."""
    store = SqliteStore(job.state_dir or default_state_dir(), job.ad_account, job.audience_id)
    try:
        mirror = _Mirror(job, store, client, limiter, retry, progress, stop, on_request, cancel)
        return await mirror.run(source)
    finally:
        store.close()


@dataclasses.dataclass
class _Mirror:
    job: UploadJob
    store: SqliteStore
    client: GraphClient | None
    limiter: AccountQuota
    retry: RetryPolicy
    progress: ProgressFn | None
    stop: asyncio.Event | None
    on_request: RequestHook | None
    cancel: asyncio.Event | None

    def __post_init__(self) -> None:
        self.notes: list[str] = []
        self.parts: list[Report] = []

    async def run(self, source: InputFile) -> Report:
        job, store = self.job, self.store
        schema = _schema(job, source)
        schema_id = orjson.dumps(schema.payload_schema()).decode()
        waiting = store.plan()
        if waiting is not None and self.client is not None:
            if not await self._settle(waiting):
                return self._merged(self.parts[-1], waiting)
        elif waiting is not None:
            self.notes.append("an earlier mirror is unfinished; the counts are as it left them")
        else:
            self._remove_plan_files()
        plan_id = secrets.randbits(62) or 1
        path = store.plan_path(plan_id)
        plan_file = PlanFile(path, create=True)
        try:
            diff_job = dataclasses.replace(
                job, schema=_schema_text(schema), dry_run=True, checkpoint=None
            )
            scanned = await run_job(
                diff_job,
                source,
                None,
                self.limiter,
                retry=self.retry,
                progress=self.progress,
                on_rows=plan_file.add_rows,
                inspect=job.dry_run,  # an upload's report has no inspection
            )
            plan_file.seal()
            plan = self._decide(plan_id, plan_file, store.state(), schema_id, schema)
            if job.dry_run:
                return self._merged(scanned, plan)
            plan_file.sync()
            store.start_plan(plan)
        except BaseException:
            plan_file.close()
            path.unlink(missing_ok=True)
            raise
        try:
            await self._execute(plan, plan_file, schema)
        finally:
            plan_file.close()
        if store.plan() is None:
            self._remove_plan_files()
        return self._merged(scanned, plan)

    def _decide(
        self, plan_id: int, plan_file: PlanFile, state: State | None, schema_id: str, schema: Schema
    ) -> Plan:
        """The plan for this input: a replace, or a diff; raises InputError for removals
        above the guard (a dry run notes it instead)."""
        job = self.job
        distinct = plan_file.distinct()

        def plan(kind: PlanKind, added: int, removed: int, unchanged: int) -> Plan:
            return Plan(plan_id, kind, schema_id, job.batch_size, added, removed, unchanged)

        if state is None or state.schema != schema_id or job.resync:
            why = (
                "resync asked"
                if job.resync
                else "no mirror state for this audience"
                if state is None
                else "the mirror state is of another schema"
            )
            self.notes.append(f"{why}: the audience is set with a replace")
            if not distinct and not job.allow_empty_replace:
                raise InputError(EMPTY_REPLACE)
            return plan("replace", distinct, 0, 0)
        self.store.diff(plan_file)
        added, removed = plan_file.count("add"), plan_file.count("remove")
        unchanged = distinct - added
        if removed > job.max_removal_share * state.rows and not job.allow_large_removal:
            share = removed / state.rows
            text = (
                f"the mirror would remove {removed} of the audience's {state.rows} rows "
                f"({share:.1%}, above the {job.max_removal_share:.0%} allowed; adding {added}, "
                f"keeping {unchanged}); pass --allow-large-removal to do it"
            )
            if not job.dry_run:
                raise InputError(f"nothing was sent: {text}")
            self.notes.append(text)
        if distinct and added + removed > job.replace_threshold * distinct:
            self.notes.append(
                f"the diff ({added} added, {removed} removed) is above "
                f"{job.replace_threshold:g} of the list's {distinct} rows: sent as a replace"
            )
            return plan("replace", added, removed, unchanged)
        return plan("diff", added, removed, unchanged)

    async def _execute(self, plan: Plan, plan_file: PlanFile, schema: Schema) -> None:
        """Send the plan; the state follows what was acknowledged."""
        if plan.kind == "replace":
            report = await self._part(plan, "replace", schema)
            if report.status == "completed":
                self.store.establish(plan.plan_id, plan.schema, plan_file.rows("replace"))
            return
        parts: tuple[Part, ...] = ("add", "remove")
        for part in parts:
            if plan_file.count(part):
                report = await self._part(plan, part, schema)
                self._apply_acknowledged(plan, plan_file, part)
                if report.status != "completed":
                    break
        self.store.end_plan(plan.plan_id)

    async def _settle(self, plan: Plan) -> bool:
        """Finish what an earlier mirror left under way; False when that did not complete
        (the report of the attempt is the last of `parts`)."""
        store = self.store
        path = store.plan_path(plan.plan_id)
        if not path.exists():
            # Its rows are gone, so is what its batches did: the state is unknown.
            store.forget()
            store.end_plan(plan.plan_id)
            self.notes.append("an earlier mirror's plan file is missing: the state is set again")
            return True
        plan_file = PlanFile(path)
        try:
            if plan.kind == "diff":
                for part in ("add", "remove"):
                    self._apply_acknowledged(plan, plan_file, part)
                store.end_plan(plan.plan_id)
                return True
            schema = Schema.parse(_schema_text_of(plan.schema))
            done = _loaded(store.checkpoint_path(plan.plan_id, "replace"))
            if done is None or done.state != "completed":
                self.notes.append("finishing the replace an earlier mirror began")
                report = await self._part(plan, "replace", schema)
                if report.status != "completed":
                    return False
            store.establish(plan.plan_id, plan.schema, plan_file.rows("replace"))
        finally:
            plan_file.close()
        self._remove_plan_files()
        # Writes to /users while the replace runs on Meta's side would fail.
        assert self.client is not None
        await until_replace_done(self.client, self.job.audience_id, self.retry, self.on_request)
        return True

    async def _part(self, plan: Plan, part: Part, schema: Schema) -> Report:
        """One part of the plan as a job of its own, through the usual pipeline, resumable
        from its checkpoint."""
        assert self.client is not None
        job = self.job
        sub = dataclasses.replace(
            job,
            source=f"mirror plan {plan.plan_id} {part}",
            mode=part,
            schema=_schema_text(schema),
            column_map={},
            prehashed=True,
            workers=0,
            rejects_path=None,
            dry_run=False,
            checkpoint=str(self.store.checkpoint_path(plan.plan_id, part)),
            restart=False,
            unrecorded_batches=(),
            session_id=job.session_id if part == "replace" else None,
            batch_size=plan.batch_size,
        )
        cells = _cells(self.store.plan_path(plan.plan_id), part, Packer(schema.keys))
        with await aopen_source(cells) as rows:
            report = await run_job(
                sub,
                rows,
                self.client,
                self.limiter,
                retry=self.retry,
                progress=self.progress,
                stop=self.stop,
                on_request=self.on_request,
                cancel=self.cancel,
            )
        if report.rows_rejected:
            # Rows the engine hashed itself cannot be invalid; if they were, batches no longer
            # line up with positions, and the state cannot follow: it is set again next time.
            self.store.forget()
            raise RuntimeError(f"mirror {part} rows were rejected: {report.rejected_by_reason}")
        self.parts.append(report)
        return report

    def _apply_acknowledged(self, plan: Plan, plan_file: PlanFile, part: Part) -> None:
        """The batches of a part its checkpoint holds as acknowledged, into the state."""
        record = _loaded(self.store.checkpoint_path(plan.plan_id, part))
        if record is None:
            return
        done = self.store.applied(plan.plan_id, part)
        size = plan.batch_size
        for index, batch in sorted(record.batches.items()):
            if index not in done:
                first = (index - 1) * size + 1
                rows = plan_file.span(part, first, first + batch.rows - 1)
                self.store.apply(plan.plan_id, part, index, rows)

    def _remove_plan_files(self) -> None:
        for path in self.store.plan_files():
            with suppress(FileNotFoundError):
                path.unlink()

    def _merged(self, scanned: Report, plan: Plan) -> Report:
        """The mirror's report: the input's counts from the diff pass, the sending counts
        summed over the parts, and the diff."""
        parts = self.parts
        status: Status = "dry_run" if self.job.dry_run else "completed"
        error = None
        for part in parts:
            if _STATUS_RANK[part.status] > _STATUS_RANK[status]:
                status = part.status
            error = error or part.error
        samples: dict[str, str] = dict(scanned.invalid_entry_samples)
        for part in parts:
            samples.update(part.invalid_entry_samples)
        messages = [*self.notes, *(p.message for p in parts if p.message)]
        sum_of = _summer(parts)
        elapsed = scanned.elapsed_s + sum_of("elapsed_s")
        return dataclasses.replace(
            scanned,
            status=status,
            mode="mirror",
            session_id=parts[0].session_id if parts else scanned.session_id,
            rows_sent=sum_of("rows_sent"),
            batches_total=sum_of("batches_total"),
            batches_sent=sum_of("batches_sent"),
            num_received=sum_of("num_received"),
            num_invalid_entries=sum_of("num_invalid_entries"),
            invalid_entry_samples=samples,
            retries=sum_of("retries"),
            throttled=sum_of("throttled"),
            elapsed_s=round(elapsed, 3),
            rows_per_s=round(scanned.rows_read / elapsed, 1) if elapsed > 0 else 0.0,
            error=error,
            message="; ".join(messages) or None,
            sessions=tuple(s for p in parts for s in p.sessions),
            resumed=any(p.resumed for p in parts),
            unrecorded_batches=(),
            added=plan.added,
            removed=plan.removed,
            unchanged=plan.unchanged,
        )


def _summer(parts: list[Report]) -> Any:
    def sum_of(name: str) -> Any:
        return sum(getattr(p, name) for p in parts)

    return sum_of


def _schema(job: UploadJob, source: InputFile) -> Schema:
    if job.schema is None:
        return Schema(source.bind(None, job.column_map))
    return Schema.parse(job.schema)


def _schema_text(schema: Schema) -> str:
    return schema.single_key or ",".join(schema.keys)


def _schema_text_of(schema_id: str) -> str:
    """A schema's text from the state's form of it (its payload schema as JSON)."""
    value = orjson.loads(schema_id)
    return value if isinstance(value, str) else ",".join(value)


def _loaded(path: Path) -> Any:
    """The job record a sub-job's checkpoint holds, or None."""
    if not path.exists():
        return None
    checkpoint = Checkpoint(path)
    try:
        return checkpoint.load()
    finally:
        checkpoint.close()


def _cells(path: Path, part: Part, packer: Packer) -> Iterator[tuple[str, ...]]:
    """A part's rows as prehashed input rows, read from its plan file in upload order."""
    plan_file = PlanFile(path)
    try:
        for _, row in plan_file.rows(part):
            yield packer.unpack(row)
    finally:
        plan_file.close()
