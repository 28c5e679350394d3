"""Interrupted jobs resume: the real CLI killed at chosen points, re-run, checked at the fake.

The fake's hooks fire as a chosen request arrives or right after it is applied, so the
kill lands exactly there (no timing guesses), and can make the fake lose the reply.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine._resume.checkpoint import Checkpoint, JobRecord
from engine.testing.fakegraph import REPLACE_WINDOW_S, FakeConfig, FakeGraph, LogEntry
from engine.testing.sample import write_sample

from .checks import check_counts, expected_rows
from .conftest import APP_SECRET, AUDIENCE, TOKEN, Run, upload_args

ROWS = 12_000
ARGS = ("--batch-size", "1000", "--concurrency", "4", "--default-country-code", "1")


@pytest.fixture
def people(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "people.csv", ROWS)


class Cli:
    """The CLI as a subprocess the fake's hooks can kill or signal mid-request."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def run(self, *args: str, on_stderr: Callable[[str], None] | None = None) -> Run:
        """Run to the end; `on_stderr` sees each line the CLI writes to stderr, as it comes."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "META_ACCESS_TOKEN": TOKEN, "META_APP_SECRET": APP_SECRET},
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        stderr = self.proc.stderr

        async def lines() -> bytes:
            seen = []
            while line := await stderr.readline():
                seen.append(line)
                if on_stderr is not None:
                    on_stderr(line.decode())
            return b"".join(seen)

        out, err = await asyncio.wait_for(
            asyncio.gather(self.proc.stdout.read(), lines()), timeout=120
        )
        await self.proc.wait()
        assert self.proc.returncode is not None
        return Run(self.proc.returncode, out.decode(), err.decode())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


async def interrupted(
    fake: FakeGraph,
    args: list[str],
    hit: Callable[[LogEntry], bool],
    *,
    sig: int = signal.SIGKILL,
    where: str = "arrival",
    drop: bool = False,
) -> Run:
    """Run the CLI and signal it as the first request matching `hit` arrives at the fake
    (or, with where="applied", once the fake applied it). A kill also loses that reply
    (the process is gone); a gentler signal lets the request finish, unless `drop`."""
    cli = Cli()
    fired = False

    def hook(entry: LogEntry) -> bool:
        nonlocal fired
        if fired or not hit(entry):
            return True
        fired = True
        cli.signal(sig)
        return sig != signal.SIGKILL and not drop

    setattr(fake, f"on_{where}", hook)
    try:
        return await cli.run(*args)
    finally:
        setattr(fake, f"on_{where}", None)


def loaded(checkpoint: Path) -> JobRecord:
    """The job the checkpoint holds."""
    store = Checkpoint(checkpoint)
    try:
        record = store.load()
    finally:
        store.close()
    assert record is not None
    return record


def recorded(checkpoint: Path) -> set[int]:
    """The batches the checkpoint holds as acknowledged."""
    return set(loaded(checkpoint).batches)


async def resume(
    fake: FakeGraph, args: Any, first_run: int, acked_before: set[int]
) -> dict[str, Any]:
    """Run the interrupted job's command again: it finishes the job; returns its report."""
    again = await Cli().run(*args)
    assert again.code == 0, again.stderr
    check_resumed(fake, again.report, first_run, acked_before)
    return again.report


def check_resumed(
    fake: FakeGraph, report: dict[str, Any], first_run: int, acked_before: set[int]
) -> None:
    """From the fake's log, for a job killed once (its requests are fake.log[:first_run])
    and run again: one session; the re-run sends every batch the checkpoint did not hold
    and none that it did, each acknowledged once; the last flag only on batch N, after
    every other batch was acknowledged; the counts cover the whole job."""
    check_counts(report)
    assert report["resumed"] is True
    entries = [e for e in fake.log if e.mode == report["mode"]]
    assert {e.session_id for e in entries} == {report["session_id"]}
    n = report["batches_total"]
    rerun = [e for e in fake.log[first_run:] if e.mode == report["mode"]]
    resent = [e.batch_seq or 0 for e in rerun]
    assert not acked_before & set(resent), "an acknowledged batch was sent again"
    oks = [e.batch_seq or 0 for e in rerun if e.outcome == "ok"]
    assert len(oks) == len(set(oks))
    # A replace's batch 1 may be confirmed through the sessions endpoint instead.
    confirmed = {1} if report["mode"] == "replace" else set()
    assert acked_before | set(oks) | confirmed >= set(range(1, n + 1))
    flagged = [e for e in entries if e.last_batch_flag]
    assert {e.batch_seq for e in flagged} == {n}
    assert flagged[-1].outcome == "ok" and flagged[-1] is entries[-1]
    # Requests in flight at the kill may have been answered to a dead process; their
    # re-send is the one repeat allowed (docs/protocol.md).
    in_flight = {e.batch_seq for e in fake.log[:first_run]} - acked_before
    for violation in fake.violations:
        assert "re-sent after it was acknowledged" in violation, violation
        assert int(violation.split(" batch ")[1].split(":")[0]) in in_flight
    assert report["rows_sent"] == report["rows_valid"]


def seq_is(n: int, mode: str | None = None) -> Callable[[LogEntry], bool]:
    return lambda e: e.batch_seq == n and (mode is None or e.mode == mode)


@pytest.mark.parametrize(
    ("mode", "where", "hit"),
    [
        ("replace", "arrival", seq_is(1)),  # during the first batch of a replace
        ("replace", "applied", seq_is(1)),  # batch 1 applied, its reply lost with the process
        ("add", "arrival", seq_is(6)),  # mid-session
        ("remove", "arrival", lambda e: e.last_batch_flag),  # last batch in flight
        ("add", "applied", seq_is(4)),  # acknowledged by the API, not yet checkpointed
    ],
)
async def test_sigkill_then_rerun_finishes_the_same_session(
    fake: FakeGraph, tmp_path: Path, people: Path, mode: str, where: str, hit: Any
) -> None:
    if mode == "remove":  # something to remove first, in its own session
        base = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(tmp_path / "a"))
        assert (await Cli().run(*base)).code == 0
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(
        people, fake.base_url, *ARGS, "--mode", mode, "--checkpoint", str(checkpoint)
    )
    first = await interrupted(fake, args, hit, where=where)
    assert first.code == -signal.SIGKILL
    first_run, acked_before = len(fake.log), recorded(checkpoint)

    status = await Cli().run("status", "--checkpoint", str(checkpoint))
    assert status.code == 0 and orjson.loads(status.stdout)["state"] == "running"

    await resume(fake, args, first_run, acked_before)
    wanted = set() if mode == "remove" else expected_rows(people)
    assert fake.members(AUDIENCE) == wanted
    if mode == "replace":
        # Batch 1 started the replace once: it is never re-sent blind.
        assert len([e for e in fake.log if e.batch_seq == 1 and e.applied]) == 1


@pytest.mark.parametrize(
    ("mode", "hit", "drop"),
    [
        ("replace", seq_is(1), False),  # during the first batch of a replace
        ("add", seq_is(5), False),  # mid-session
        # The last batch in flight, and lost: once stopping, a failed request is not retried.
        ("add", lambda e: e.last_batch_flag, True),
    ],
)
async def test_sigterm_saves_progress_exits_3_and_resumes(
    fake: FakeGraph, tmp_path: Path, people: Path, mode: str, hit: Any, drop: bool
) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(
        people, fake.base_url, *ARGS, "--mode", mode, "--checkpoint", str(checkpoint)
    )
    first = await interrupted(fake, args, hit, sig=signal.SIGTERM, drop=drop)
    first_run, acked_before = len(fake.log), recorded(checkpoint)
    assert first.code == 3, first.stderr
    report = first.report
    assert report["status"] == "interrupted"
    assert report["rows_sent"] == sum(e.rows for e in fake.log if e.outcome == "ok")
    assert report["rows_sent"] < report["rows_valid"]
    # Everything that was in flight finished (but the request lost on purpose): nothing the
    # fake applied is unacknowledged, and it all is in the checkpoint.
    answered = [e for e in fake.log if e.outcome != "dropped_before"]
    assert all(e.outcome == "ok" for e in answered)
    assert {e.batch_seq for e in answered} == acked_before
    assert [e.last_batch_flag for e in fake.log].count(True) == int(drop)

    again = await resume(fake, args, first_run, acked_before)
    assert fake.members(AUDIENCE) == expected_rows(people)
    assert fake.violations == []
    # Work done before the signal is not redone: only the lost request goes again.
    assert len(fake.log) == again["batches_total"] + int(drop)


async def test_sigkill_between_acknowledgement_and_checkpoint_write(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    """The kill lands after the engine has read and parsed a batch's reply and before its
    checkpoint records the batch: the test holds the checkpoint's write lock from before
    that reply was sent, and kills on the log line the engine writes while handling it."""
    # The 6th request's reply says the account's usage is at 100%: the engine logs that
    # (on stderr, with -v) as it takes the reply in, before it writes the checkpoint.
    fake.configure(rate_limit=(6, 600.0))
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    cli = Cli()
    lock = sqlite3.connect(checkpoint, isolation_level=None)
    replied: list[LogEntry] = []

    def on_arrival(entry: LogEntry) -> bool:
        if entry.seq == 6:
            lock.execute("BEGIN IMMEDIATE")  # the engine's next checkpoint write must wait
            replied.append(entry)
        return True

    def on_stderr(line: str) -> None:
        if "ad account usage at 100%" in line and replied:
            cli.signal(signal.SIGKILL)

    fake.on_arrival = on_arrival
    try:
        first = await cli.run(*args, "-v", on_stderr=on_stderr)
    finally:
        fake.on_arrival = None
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert first.code == -signal.SIGKILL, first.stderr
    first_run, acked_before = len(fake.log), recorded(checkpoint)
    # The API acknowledged it, the engine read that, and its checkpoint does not have it.
    assert replied[0].outcome == "ok" and replied[0].batch_seq not in acked_before

    fake.configure(rate_limit=None)
    await resume(fake, args, first_run, acked_before)
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_a_resumed_report_counts_the_invalid_entries_of_every_run(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    fake.configure(unusable_prefix="0")  # Meta finds about a third of the rows unusable
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    assert (await interrupted(fake, args, seq_is(6))).code == -signal.SIGKILL
    assert sum(b.num_invalid or 0 for b in loaded(checkpoint).batches.values()) > 0

    again = await Cli().run(*args)
    assert again.code == 0, again.stderr
    report = again.report
    session = fake.session(AUDIENCE, report["session_id"])
    assert session is not None
    assert report["num_invalid_entries"] == session.num_invalid > 0
    assert report["num_received"] == session.num_received == report["rows_valid"]


async def test_changed_input_is_refused_unless_restarted(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    assert (await interrupted(fake, args, seq_is(3))).code == -signal.SIGKILL
    write_sample(people, ROWS, seed=12345)  # same name, other people

    # The refused run talks to a fake of its own: requests the killed run had on the wire
    # may still reach the first one after the kill, so only an empty log here proves that
    # the refused run sent nothing.
    async with FakeGraph(FakeConfig(token=TOKEN, app_secret=APP_SECRET)) as other:
        moved = upload_args(people, other.base_url, *ARGS, "--checkpoint", str(checkpoint))
        refused = await Cli().run(*moved)
        assert refused.code == 2
        assert "input changed" in refused.stderr and "--restart" in refused.stderr
        assert other.log == []
    sent_before = len(fake.log)

    restarted = await Cli().run(*args, "--restart")
    assert restarted.code == 0, restarted.stderr
    assert restarted.report["resumed"] is False
    new_session = restarted.report["session_id"]
    assert new_session not in {e.session_id for e in fake.log[:sent_before]}


async def test_completed_job_runs_afresh(fake: FakeGraph, tmp_path: Path, people: Path) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    one = await Cli().run(*args)
    two = await Cli().run(*args)
    assert one.code == two.code == 0
    assert one.report["session_id"] != two.report["session_id"]
    assert two.report["resumed"] is False and two.report["rows_sent"] == one.report["rows_sent"]


async def test_resume_past_the_session_window_starts_a_new_session(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    assert (await interrupted(fake, args, seq_is(5))).code == -signal.SIGKILL
    acked_before = recorded(checkpoint)
    old_session = fake.log[0].session_id

    # Two hours later, Meta has long closed that session (its window is 90 minutes).
    with sqlite3.connect(checkpoint) as db:
        db.execute("UPDATE session SET started_at = started_at - 7200")
    again = await Cli().run(*args)
    assert again.code == 0, again.stderr
    report = again.report
    check_counts(report)
    assert report["session_id"] == old_session and report["resumed"] is True
    assert [s["mode"] for s in report["sessions"]] == ["add", "add"]
    new_session = report["sessions"][1]["session_id"]
    assert "window" in report["message"] and str(new_session) in report["message"]
    new = [e for e in fake.log if e.session_id == new_session]
    assert all(e.outcome == "ok" for e in new)
    assert sorted(e.batch_seq or 0 for e in new) == list(range(1, len(new) + 1))
    assert len(new) + len(acked_before) == report["batches_total"]
    assert [e.batch_seq for e in new if e.last_batch_flag] == [len(new)]
    assert fake.members(AUDIENCE) == expected_rows(people)


async def old_members(fake: FakeGraph, tmp_path: Path) -> None:
    """Old members in the audience, for a replace to remove."""
    old = write_sample(tmp_path / "old.csv", 2_000, seed=5)
    assert (await Cli().run(*upload_args(old, fake.base_url, "--batch-size", "1000"))).code == 0


async def rerun_aged(checkpoint: Path, args: list[str]) -> dict[str, Any]:
    """Two hours later, when the checkpoint's sessions are long past Meta's 90 minutes, run
    the job again; it completes with its counts adding up. Returns its report."""
    with sqlite3.connect(checkpoint) as db:
        db.execute("UPDATE session SET started_at = started_at - 7200")
    again = await Cli().run(*args)
    assert again.code == 0, again.stderr
    check_counts(again.report)
    return again.report


async def test_resumed_replace_past_its_window_waits_for_it_to_end_then_adds_the_rest(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    await old_members(fake, tmp_path)
    # Meta runs the replace the killed run began for some (scaled) seconds more.
    fake.configure(time_scale=5.0 / REPLACE_WINDOW_S)
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(
        people, fake.base_url, *ARGS, "--mode", "replace", "--checkpoint", str(checkpoint)
    )
    assert (await interrupted(fake, args, seq_is(6, "replace"))).code == -signal.SIGKILL
    assert 1 in recorded(checkpoint)

    report = await rerun_aged(checkpoint, args)
    assert [s["mode"] for s in report["sessions"]] == ["replace", "add"]
    assert "past Meta's" in report["message"]
    add_id = report["sessions"][1]["session_id"]
    adds = [e for e in fake.log if e.session_id == add_id]
    assert adds and all(e.outcome == "ok" for e in adds)
    assert fake.violations == []  # no /users write while the replace ran
    assert fake.members(AUDIENCE) == expected_rows(people)  # the old members are gone


async def test_resumed_replace_whose_batch_one_never_arrived_starts_the_replace_again(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    await old_members(fake, tmp_path)
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(
        people, fake.base_url, *ARGS, "--mode", "replace", "--checkpoint", str(checkpoint)
    )
    assert (await interrupted(fake, args, seq_is(1, "replace"))).code == -signal.SIGKILL
    assert recorded(checkpoint) == set()  # batch 1 went out (the window opened), unanswered

    report = await rerun_aged(checkpoint, args)
    assert [s["mode"] for s in report["sessions"]] == ["replace", "replace"]
    assert "never got its batch 1" in report["message"]
    new = [e for e in fake.log if e.session_id == report["sessions"][1]["session_id"]]
    assert sorted(e.batch_seq or 0 for e in new) == list(range(1, report["batches_total"] + 1))
    assert fake.violations == []
    assert fake.members(AUDIENCE) == expected_rows(people)  # not added to the old members


async def test_second_signal_stops_at_once_and_the_job_still_resumes(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    cli = Cli()
    signals = 0

    def on_batch_5(entry: LogEntry) -> bool:
        # The first SIGTERM as batch 5 arrives; the fake holds it (and the rest in flight),
        # so the graceful stop cannot end before the second signal.
        nonlocal signals
        if entry.batch_seq == 5 and signals == 0:
            signals += 1
            fake.hold()
            cli.signal(signal.SIGTERM)
        return True

    def on_stderr(line: str) -> None:
        # The second once the engine says it is stopping: it surely handled the first (two
        # signals sent back to back may merge into one).
        nonlocal signals
        if line.startswith("stopping:") and signals == 1:
            signals += 1
            cli.signal(signal.SIGTERM)

    fake.on_arrival = on_batch_5
    try:
        first = await cli.run(*args, on_stderr=on_stderr)
    finally:
        fake.on_arrival = None
        fake.release()
    assert first.code == 3, first.stderr
    assert signals == 2
    assert "stopped at once" in first.stderr and str(checkpoint) in first.stderr
    first_run, acked_before = len(fake.log), recorded(checkpoint)
    await resume(fake, args, first_run, acked_before)
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_checkpoint_holds_no_secret_and_no_identifier(
    fake: FakeGraph, tmp_path: Path, people: Path
) -> None:
    checkpoint = tmp_path / "job.sqlite"
    args = upload_args(people, fake.base_url, *ARGS, "--checkpoint", str(checkpoint))
    assert (await interrupted(fake, args, seq_is(6))).code == -signal.SIGKILL
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("job.sqlite*"))
    assert TOKEN.encode() not in stored and APP_SECRET.encode() not in stored
    lines = people.read_text().splitlines()[1:]
    # Emails and names: long enough that a chance match in hex digests is impossible.
    cells = {cell.strip() for line in lines for cell in line.split(",")}
    values = {c for c in cells if "@" in c or (c.isalpha() and len(c) >= 6)}
    assert len(values) > 100
    assert not [v for v in values if v.encode() in stored]
