"""The checkpoint file on its own: what it records, what it forgets, and how it is kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine._errors import ConfigError
from engine._resume.checkpoint import (
    BatchRecord,
    Checkpoint,
    SessionRecord,
    ack_to_report,
    acks_from_report,
    batch_digest,
)

DIGEST = batch_digest(b"rows")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def record(batch: int, session_id: int = 7) -> BatchRecord:
    return BatchRecord(batch, session_id, 10, DIGEST, 10, 1)


def test_a_new_file_holds_no_job(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "new" / "cp.sqlite")
    assert checkpoint.load() is None
    checkpoint.close()


def test_a_job_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    checkpoint = Checkpoint(path, clock=Clock())
    checkpoint.start("identity", "fingerprint")
    checkpoint.add_session(7, "add", 1)
    started = checkpoint.session_started(7)
    assert checkpoint.session_started(7) == started  # recorded once
    checkpoint.acknowledged([(record(1), False), (record(2), True)])
    checkpoint.finish("completed", 3, 2)
    checkpoint.close()

    job = Checkpoint(path).load()
    assert job is not None
    assert (job.identity, job.fingerprint, job.state) == ("identity", "fingerprint", "completed")
    assert (job.retries, job.throttled) == (3, 2)
    assert job.sessions == [SessionRecord(7, "add", 1, started, True)]  # closed by batch 2
    assert job.batches == {1: record(1), 2: record(2)}


def test_start_forgets_the_job_before(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "cp.sqlite")
    checkpoint.start("old", "f")
    checkpoint.add_session(7, "add", 1)
    checkpoint.acknowledged([(record(1), False)])
    checkpoint.start("new", "f")
    job = checkpoint.load()
    assert job is not None and job.identity == "new"
    assert job.sessions == [] and job.batches == {}


def test_start_over_forgets_batches_but_keeps_sessions_in_the_order_opened(
    tmp_path: Path,
) -> None:
    checkpoint = Checkpoint(tmp_path / "cp.sqlite", clock=Clock())
    checkpoint.start("id", "f")
    checkpoint.add_session(9, "replace", 1)
    checkpoint.session_started(9)
    checkpoint.acknowledged([(record(1, 9), False)])
    checkpoint.start_over(3, "replace")  # a lower id, opened later
    job = checkpoint.load()
    assert job is not None and job.batches == {}
    assert [(s.session_id, s.first_batch) for s in job.sessions] == [(9, 1), (3, 1)]


def test_no_acknowledgement_is_still_a_write(tmp_path: Path) -> None:
    clock = Clock()
    checkpoint = Checkpoint(tmp_path / "cp.sqlite", clock=clock)
    checkpoint.start("id", "f")
    checkpoint.acknowledged([])
    job = checkpoint.load()
    assert job is not None and job.updated_at == clock.now


def test_the_file_and_its_journal_are_for_this_user_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cp.sqlite"
    checkpoint = Checkpoint(path)
    checkpoint.start("id", "f")
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    checkpoint.close()


def test_a_report_carries_acknowledgements_back_unchanged() -> None:
    acks = [(record(1), False), (record(2), True)]
    assert acks_from_report([ack_to_report(a) for a in acks]) == acks


@pytest.mark.parametrize(
    "change",
    [{"digest": "not hex"}, {"batch": 0}, {"rows": -1}, {"last": 1}, {"extra": 1}],
)
def test_a_malformed_report_item_is_refused_by_position(change: dict[str, object]) -> None:
    good = ack_to_report((record(1), False))
    with pytest.raises(ConfigError, match="item 2 is not an acknowledged batch"):
        acks_from_report([good, {**good, **change}])


def test_a_digest_is_the_same_whole_or_in_parts() -> None:
    assert batch_digest(b"ab", b"cd") == batch_digest(b"abcd") != batch_digest(b"abce")
    assert len(batch_digest(b"")) == 32
