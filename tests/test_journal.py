"""The journal on its own: session numbering, acknowledgements, and a checkpoint that fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine._errors import CheckpointError
from engine._pipeline.batcher import Batch
from engine._resume.checkpoint import Acknowledgement, Checkpoint
from engine._resume.journal import Journal

BODY = {"num_received": 5, "num_invalid_entries": 0}


def batch(index: int) -> Batch:
    return Batch(index, 5, b'["x"]', index * 5 - 4, index * 5, index)


def ack(journal: Journal, *indexes: int, last: bool = False) -> None:
    for index in indexes:
        journal.acknowledged(batch(index), [b"payload"], BODY, last=last and index == indexes[-1])


def test_a_first_session_numbers_batches_as_the_job_does() -> None:
    journal = Journal(None, None)
    session = journal.open_session(1, "add")
    assert session.first_batch == 1
    number = journal.numbering()
    assert [number(batch(i)).seq for i in (1, 2, 3)] == [1, 2, 3]


def test_a_later_session_numbers_from_1_what_earlier_ones_left() -> None:
    # Session 1 got batches 1, 2 and 4 acknowledged; 3 and 5 go in session 2 as 1 and 2.
    journal = Journal(None, None)
    journal.open_session(1, "add")
    ack(journal, 1, 2, 4)
    session = journal.open_session(2, "add")
    assert session.first_batch == 3
    number = journal.numbering()
    assert [number(batch(i)).seq for i in (3, 5, 6)] == [1, 2, 3]


def test_the_last_acknowledgement_closes_the_session() -> None:
    journal = Journal(None, None)
    journal.open_session(1, "add")
    ack(journal, 1)
    assert not journal.current.closed and journal.first_acknowledged()
    ack(journal, 2, last=True)
    assert journal.current.closed
    assert journal.acked[2].num_received == 5 and journal.acked[2].session_id == 1
    assert journal.acked[2].digest == ""  # no checkpoint: no digest needed


def test_start_over_forgets_every_acknowledgement() -> None:
    journal = Journal(None, None)
    journal.open_session(1, "replace")
    ack(journal, 1, 2)
    session = journal.start_over(2, "replace")
    assert journal.acked == {} and session.first_batch == 1
    assert [s.session_id for s in journal.sessions] == [1, 2]
    assert not journal.first_acknowledged()


def test_a_session_expires_a_window_after_its_first_batch() -> None:
    now = [1000.0]
    journal = Journal(None, None, clock=lambda: now[0])
    journal.open_session(1, "add")
    assert not journal.expired(60)  # not started: no window running
    assert journal.started() == 1000.0
    now[0] = 1059.0
    assert journal.started() == 1000.0 and not journal.expired(60)
    now[0] = 1060.0
    assert journal.expired(60)


def test_acknowledgements_reach_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "cp.sqlite")
    checkpoint.start("id", "f")
    journal = Journal(checkpoint, None)
    journal.open_session(1, "add")
    ack(journal, 1, 2, last=True)
    job = checkpoint.load()
    assert job is not None and sorted(job.batches) == [1, 2]
    assert job.sessions[0].closed and journal.unrecorded == {}
    assert job.batches[1].digest == journal.acked[1].digest != ""

    resumed = Journal(checkpoint, job)
    assert resumed.resumed_run and sorted(resumed.acked) == [1, 2]


class FailingCheckpoint(Checkpoint):
    """A checkpoint whose writes fail while `failing` is set (a full disk, a lock)."""

    failing = False

    def acknowledged(self, acks: Any) -> None:
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        super().acknowledged(acks)


def test_what_the_checkpoint_could_not_record_waits_and_goes_first_later(tmp_path: Path) -> None:
    checkpoint = FailingCheckpoint(tmp_path / "cp.sqlite")
    checkpoint.start("id", "f")
    journal = Journal(checkpoint, None)
    journal.open_session(1, "add")
    ack(journal, 1)
    checkpoint.failing = True
    with pytest.raises(CheckpointError, match=r"cp\.sqlite cannot be written \(database or disk"):
        ack(journal, 2)
    assert 2 in journal.acked  # acknowledged all the same
    assert list(journal.unrecorded) == [2]
    with pytest.raises(CheckpointError):
        journal.flush()

    checkpoint.failing = False
    journal.flush()
    assert journal.unrecorded == {}
    job = checkpoint.load()
    assert job is not None and sorted(job.batches) == [1, 2]


def test_a_write_carries_what_waits_with_it(tmp_path: Path) -> None:
    checkpoint = FailingCheckpoint(tmp_path / "cp.sqlite")
    checkpoint.start("id", "f")
    journal = Journal(checkpoint, None)
    journal.open_session(1, "add")
    checkpoint.failing = True
    with pytest.raises(CheckpointError):
        ack(journal, 1)
    checkpoint.failing = False
    journal.finish("running", 1, 0)  # any later write records batch 1 first
    job = checkpoint.load()
    assert job is not None and sorted(job.batches) == [1] and job.retries == 1
    waiting: list[Acknowledgement] = list(journal.unrecorded.values())
    assert waiting == []
