"""The pipeline's stages before the send stage (read, normalize+hash, batch), what they use
(a process pool, a rejects file) and how they run together.

Each stage takes from one channel and hands on to the next, then closes it: channels carry
chunks (thousands of rows), so memory stays flat whatever the input size.
"""

from __future__ import annotations

import asyncio
import csv
import os
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from .._errors import InputError
from .._hashing.pool import hash_units
from .._hashing.processes import hashing_pool
from .._hashing.schema import NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._input.source import InputFile
from .._inspect.run import Inspector
from .._options import UploadJob
from .._report import Tally
from .._rows import EncodedChunk, RawChunk, Reject
from .batcher import Batch, Batcher
from .channel import Channel, EndOfStream

CHUNK_ROWS = 5_000
CHANNEL_CHUNKS = 4
# At most this many units go to a hashing worker at once (see normalize).
UNITS_PER_TASK = 2
# Below this many bytes of input a process pool costs more to start than it saves.
POOL_MIN_BYTES = 8 << 20

Unit = RawChunk | CsvBlock
"""What the read stage hands on: rows, or a block of CSV text a hashing worker parses."""

RejectsWriter = Callable[[list[Reject]], None]


async def run_together(stages: list[Coroutine[Any, Any, None]]) -> None:
    """Run the stages together; the first failure cancels the rest and is raised alone."""
    try:
        async with asyncio.TaskGroup() as group:
            for stage in stages:
                group.create_task(stage)
    except BaseExceptionGroup as failures:
        # Callers tell failures apart by type: they get the first, as it was raised.
        raise failures.exceptions[0] from None


async def read(
    source: InputFile,
    out: Channel[Unit],
    on_error: tuple[list[InputError], asyncio.Event] | None,
) -> None:
    """Feed the input's units on. Input that breaks midway (a truncated .gz, a read error)
    raises at once, or with `on_error`, is kept there and halts the send stage, so the
    requests in flight finish and the job ends as failed, not with nothing said. The
    channel then stays open: no batch after the break is cut, nor sent as the last."""
    try:
        async for unit in source.aunits(CHUNK_ROWS):
            await out.send(unit)
    except InputError as exc:
        if on_error is None:
            raise
        on_error[0].append(exc)
        on_error[1].set()
        return
    out.close()


async def normalize(
    inp: Channel[Unit],
    out: Channel[EncodedChunk],
    schema: Schema,
    options: NormalizeOptions,
    pool: Executor | None,
    inspector: Inspector | None = None,
) -> None:
    """Normalize and hash the units, in `pool` (or a thread when None), keeping their order;
    with `inspector`, each unit is profiled as it is hashed (docs/inspect.md)."""
    loop = asyncio.get_running_loop()
    pending: deque[asyncio.Future[list[EncodedChunk]]] = deque()
    window = 2 * (os.cpu_count() or 1)
    done = False
    while not done:
        # Units already waiting go to a worker together, as each hand-off costs the parent
        # about 0.2 ms; none waits for one still to come.
        units: list[Unit] = []
        while len(units) < UNITS_PER_TASK and (not units or inp.ready()):
            try:
                units.append(await inp.receive())
            except EndOfStream:
                done = True
                break
        if units:
            # In order: results are awaited oldest first, so batches stay deterministic.
            work = hash_units if inspector is None else inspector.work()
            pending.append(loop.run_in_executor(pool, work, units, schema, options))
        while pending and (done or len(pending) >= window):
            chunks = await pending.popleft()
            for chunk in chunks if inspector is None else inspector.take(chunks):
                await out.send(chunk)
    out.close()


async def batch(
    inp: Channel[EncodedChunk],
    out: Channel[Batch],
    job: UploadJob,
    tally: Tally,
    write_rejects: RejectsWriter,
    already_sent: Callable[[Batch], bool] | None,
    on_rows: Callable[[EncodedChunk], None] | None = None,
) -> None:
    """Cut the chunks into batches, counting rows and rejects; hand on those not sent yet.
    `on_rows` sees every chunk (a mirror's diff reads the input so)."""
    batcher = Batcher(job.batch_size)

    async def emit(batches: list[Batch]) -> None:
        for one in batches:
            if already_sent is None or not already_sent(one):
                await out.send(one)

    async for chunk in inp:
        if chunk.rejects:
            write_rejects(chunk.rejects)
        if on_rows is not None:
            on_rows(chunk)
        full = batcher.add(chunk)
        tally.chunk(chunk.rows_read, chunk.rejects, len(full), chunk.blanked)
        await emit(full)
    if (rest := batcher.flush()) is not None:
        tally.chunk(0, [], 1)
        await emit([rest])
    out.close()


async def drain(inp: Channel[Batch]) -> None:
    """The end of a dry run: batches go nowhere."""
    async for _ in inp:
        pass


@contextmanager
def process_pool(job: UploadJob, size: int) -> Iterator[Executor | None]:
    """A process pool for normalize+hash, when the input (`size` bytes) is big enough to pay
    for starting it."""
    workers = job.workers
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if size >= POOL_MIN_BYTES else 0
    if workers == 0:
        yield None
        return
    with hashing_pool(workers) as pool:
        yield pool


@contextmanager
def rejects_writer(path: str | None) -> Iterator[RejectsWriter]:
    """Writes rejected rows as CSV: row number, key, reason; never the value."""
    if path is None:
        yield lambda rejects: None
        return
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["row", "key", "reason"])
        yield lambda rejects: writer.writerows((r.row, r.key, r.reason) for r in rejects)
