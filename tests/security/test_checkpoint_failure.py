"""A checkpoint that cannot be written (disk full, I/O error): sending stops at once, the
acknowledgements it could not record are kept, tried again and reported, and a resume sends
none of the batches the API acknowledged.

The CLI's disk fills for real: the test lowers the running process's file-size limit
(RLIMIT_FSIZE) to the checkpoint's current size, so every write that would grow it fails as
on a full disk, and raises the limit again to "free space"."""

from __future__ import annotations

import resource
from pathlib import Path

import orjson
import pytest

from engine._errors import CheckpointError, ConfigError
from engine._pipeline.batcher import Batch
from engine._resume.checkpoint import BatchRecord, Checkpoint, ack_to_report, acks_from_report
from engine._resume.journal import Journal
from engine.testing.fakegraph import FakeGraph, LogEntry

from ..conftest import upload_args
from ..test_resume import ARGS, Cli, check_resumed, loaded, people, recorded

__all__ = ["people"]  # the fixture, used by name

FULL_AT = 6  # the disk fills as this batch arrives


def fill_disk_at(fake: FakeGraph, cli: Cli, checkpoint: Path) -> None:
    """As batch FULL_AT arrives, no file of the CLI may grow past the checkpoint's WAL now."""

    def hook(entry: LogEntry) -> bool:
        if entry.batch_seq == FULL_AT and cli.proc is not None:
            size = Path(f"{checkpoint}-wal").stat().st_size
            # The soft limit only: raising it again needs no privilege.
            resource.prlimit(cli.proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        return True

    fake.on_arrival = hook


def free_space(cli: Cli) -> None:
    assert cli.proc is not None
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    resource.prlimit(cli.proc.pid, resource.RLIMIT_FSIZE, unlimited)


async def test_a_full_disk_stops_sending_reports_the_unrecorded_and_the_resume_resends_none(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    checkpoint, report_path = tmp_path / "job.sqlite", tmp_path / "report.json"
    args = upload_args(
        people,
        fake.base_url,
        *ARGS,
        "--checkpoint",
        str(checkpoint),
        "--report",
        str(report_path),
    )
    cli = Cli()
    fill_disk_at(fake, cli, checkpoint)
    # One try again only: the disk stays full for this run.
    first = await cli.run(*args, "--max-retries", "1")
    fake.on_arrival = None

    assert first.code == 1, first.stderr
    report = first.report
    assert report["status"] == "failed"
    assert report["error"]["type"] == "CheckpointError"
    assert "cannot be written" in report["error"]["message"]
    assert orjson.loads(report_path.read_bytes()) == report
    unrecorded = {b["batch"] for b in report["unrecorded_batches"]}
    acked_at_api = {e.batch_seq for e in fake.log if e.outcome == "ok"}
    # Every batch the API acknowledged is either in the checkpoint or in the report.
    assert unrecorded and recorded(checkpoint) | unrecorded == acked_at_api
    assert not recorded(checkpoint) & unrecorded
    # Sending stopped at once: only the requests already in flight (4) were acknowledged
    # after the first failed write, and none was lost on the way.
    assert len(unrecorded) <= 4
    assert all(e.outcome == "ok" for e in fake.log)
    assert len(fake.log) < report["batches_total"]
    assert report["rows_sent"] == sum(e.rows for e in fake.log)

    # Space is free again (the process and its limit are gone): the same command resumes,
    # records the report's acknowledgements first and sends none of them again.
    first_run = len(fake.log)
    again = await Cli().run(*args)
    assert again.code == 0, again.stderr
    check_resumed(fake, again.report, first_run, acked_at_api)
    assert fake.violations == []
    assert again.report["unrecorded_batches"] == []
    assert loaded(checkpoint).state == "completed"


async def test_space_freed_while_the_engine_waits_lets_the_job_finish(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    cli = Cli()
    fill_disk_at(fake, cli, checkpoint)
    waits: list[str] = []

    def on_stderr(line: str) -> None:
        if "cannot be written" in line and not waits:
            waits.append(line)
            free_space(cli)

    done = await cli.run(*args, on_stderr=on_stderr)
    fake.on_arrival = None

    assert waits and "no batch goes out" in waits[0]
    assert done.code == 0, done.stderr
    report = done.report
    assert report["status"] == "completed" and report["unrecorded_batches"] == []
    # Each batch went out once: none was lost, none sent twice.
    assert len(fake.log) == report["batches_total"]
    assert fake.violations == []
    record = loaded(checkpoint)
    assert set(record.batches) == set(range(1, report["batches_total"] + 1))
    assert record.state == "completed"


@pytest.mark.parametrize("unusable", ["not_a_database", "under_a_file"])
async def test_an_unusable_checkpoint_is_refused_before_anything_is_sent(
    fake: FakeGraph, tmp_path: Path, people: Path, unusable: str
) -> None:
    if unusable == "not_a_database":
        checkpoint = tmp_path / "job.sqlite"
        checkpoint.write_bytes(b"this is no SQLite file" * 100)
    else:
        (tmp_path / "file").write_bytes(b"")
        checkpoint = tmp_path / "file" / "job.sqlite"
    run = await Cli().run(
        *upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    )
    assert run.code == 2, run.stderr
    assert f"checkpoint {checkpoint} cannot be used" in run.stderr
    assert "Traceback" not in run.stderr
    assert fake.log == []


def _batch(index: int) -> Batch:
    return Batch(index, 10, b'["a"]', 10 * index - 9, 10 * index, index)


def test_the_journal_keeps_what_a_full_checkpoint_could_not_record_and_writes_it_later(
    tmp_path: Path,
) -> None:
    checkpoint = Checkpoint(tmp_path / "job.sqlite")
    checkpoint.start("job", "input")
    journal = Journal(checkpoint, None)
    journal.open_session(7, "add")
    # SQLITE_FULL, for real: the database may not grow by one more page.
    pages = checkpoint._db.execute("PRAGMA page_count").fetchone()[0]
    checkpoint._db.execute(f"PRAGMA max_page_count = {pages}")
    failed_at = None
    for index in range(1, 500):
        try:
            journal.acknowledged(_batch(index), [b'["a"]'], {"num_received": 10}, last=False)
        except CheckpointError as exc:
            assert "full" in str(exc)
            failed_at = index
            break
    assert failed_at is not None
    # Later acknowledgements wait with it; the journal has them all as acknowledged.
    with pytest.raises(CheckpointError):
        journal.acknowledged(_batch(failed_at + 1), [b'["a"]'], {}, last=True)
    assert set(journal.unrecorded) == {failed_at, failed_at + 1}
    assert set(journal.acked) == set(range(1, failed_at + 2))
    assert journal.current.closed
    assert set(checkpoint.load().batches) == set(range(1, failed_at))  # type: ignore[union-attr]

    checkpoint._db.execute("PRAGMA max_page_count = 1000000")  # space freed
    journal.flush()
    assert journal.unrecorded == {}
    record = checkpoint.load()
    assert record is not None
    assert set(record.batches) == set(range(1, failed_at + 2))
    assert record.sessions[-1].closed
    checkpoint.close()


def test_unrecorded_batches_round_trip_through_a_report_and_bad_ones_are_refused() -> None:
    ack = (BatchRecord(3, 7, 1000, "0123456789abcdef" * 2, 3000, 1), True)
    assert acks_from_report(orjson.loads(orjson.dumps([ack_to_report(ack)]))) == [ack]
    good = ack_to_report(ack)
    for bad in (
        "[]",
        [{**good, "digest": "../../etc/passwd"}],
        [{**good, "batch": 0}],
        [{**good, "rows": True}],
        [{**good, "extra": 1}],
        [{k: v for k, v in good.items() if k != "last"}],
    ):
        with pytest.raises(ConfigError, match="unrecorded_batches"):
            acks_from_report(bad)
