"""Replace sessions against Meta's rules: batch 1 never re-sent blind, the 90-minute window
(scaled down in the fake and the engine alike), and the add fallback for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.testing.fakegraph import REPLACE_WINDOW_S, FakeGraph, LogEntry
from engine.testing.sample import write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import AUDIENCE, run_cli, upload_args

WINDOW_S = 3.0  # the scaled 90 minutes


def entries_of(fake: FakeGraph, session_id: int) -> list[LogEntry]:
    return [e for e in fake.log if e.session_id == session_id]


def check_taken(entries: list[LogEntry], taken: list[LogEntry]) -> None:
    """What one session took (`taken` of its requests `entries`): batch 1 and no batch_seq
    twice. Closed with the last flag, that is 1..k with the flag on k alone; ended by its
    window instead, it may lack batches held up by a throttle (they went on elsewhere)."""
    seqs = sorted(e.batch_seq or 0 for e in taken)
    assert seqs[0] == 1 and len(set(seqs)) == len(seqs)
    flagged = [e.batch_seq for e in entries if e.last_batch_flag]
    if flagged:
        assert flagged == [len(seqs)] and seqs == list(range(1, len(seqs) + 1))


def check_fallback(fake: FakeGraph, report: dict[str, Any]) -> None:
    """A replace session closed with its last flag, then add sessions for the rest (more
    than one when the rest outlasts a window too), started only once the replace was
    over; each session's batch_seq 1..k with the last flag on k; every valid row sent in
    exactly one acknowledged batch."""
    check_counts(report)
    modes = [s["mode"] for s in report["sessions"]]
    assert modes[0] == "replace" and set(modes[1:]) == {"add"}
    replace_id, *add_ids = (s["session_id"] for s in report["sessions"])
    replace = entries_of(fake, replace_id)
    applied = [e for e in replace if e.applied]
    check_taken(replace, applied)
    replace_end = max(e.t for e in replace)
    rows = sum(e.rows for e in applied)
    batches = len(applied)
    for add_id in add_ids:
        add = entries_of(fake, add_id)
        oks = [e for e in add if e.outcome == "ok"]
        check_taken(add, oks)
        # No /users write to the audience while its replace ran.
        assert all(e.t >= replace_end for e in add)
        rows += sum(e.rows for e in oks)
        batches += len(oks)
    assert batches == report["batches_total"] and rows == report["rows_valid"]
    last = entries_of(fake, add_ids[-1])
    assert [e.last_batch_flag for e in last if e.outcome == "ok"][-1] is True
    assert report["message"] and "add session" in report["message"]


async def test_replace_too_slow_for_its_window_ends_with_add_fallback(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 6_000)
    old = write_sample(tmp_path / "old.csv", 2_000, seed=5)
    assert (await run_cli(*upload_args(old, fake.base_url, "--batch-size", "1000"))).code == 0
    fake.configure(time_scale=WINDOW_S / REPLACE_WINDOW_S, replace_settle_s=0.3)
    # 2 requests/s cannot carry 15 batches through a 3-second window.
    run = await run_cli(
        *upload_args(people, fake.base_url, "--mode", "replace", "--batch-size", "400"),
        "--rate",
        "2",
        "--session-window",
        str(WINDOW_S),
        "--default-country-code",
        "1",
    )
    assert run.code == 0, run.stderr
    check_fallback(fake, run.report)
    assert fake.violations == []
    assert fake.members(AUDIENCE) == expected_rows(people)  # the old list is gone


async def test_replace_the_api_throttles_past_its_window_ends_with_add_fallback(
    fake: FakeGraph, tmp_path: Path
) -> None:
    await populated(fake, tmp_path)
    people = write_sample(tmp_path / "people.csv", 6_000)
    # The fake's own limit, per ad account and counting throttled calls too (as Meta does):
    # 6 calls in 3 seconds cannot carry 10 batches through a 3-second window, however fast
    # the engine would go (its own rate is left at the default).
    fake.configure(
        time_scale=WINDOW_S / REPLACE_WINDOW_S, replace_settle_s=0.3, rate_limit=(6, WINDOW_S)
    )
    run = await run_cli(
        *upload_args(people, fake.base_url, "--mode", "replace", "--batch-size", "600"),
        "--session-window",
        str(WINDOW_S),
        # Meta's regain estimate is whole minutes, unscaled: cap the pause to fit the scale.
        "--max-throttle-wait",
        "0.5",
        "--default-country-code",
        "1",
    )
    assert run.code == 0, run.stderr
    check_fallback(fake, run.report)
    assert run.report["throttled"] > 0 and any(e.outcome == "throttled" for e in fake.log)
    assert fake.violations == []
    assert fake.members(AUDIENCE) == expected_rows(people)  # the old list is gone


async def test_replace_timed_out_by_the_api_adds_the_rest(fake: FakeGraph, tmp_path: Path) -> None:
    # The engine believes it has the full window; the API cuts the replace off early.
    people = write_sample(tmp_path / "people.csv", 6_000)
    fake.configure(time_scale=WINDOW_S / REPLACE_WINDOW_S, replace_settle_s=0.2)
    run = await run_cli(
        *upload_args(people, fake.base_url, "--mode", "replace", "--batch-size", "400"),
        "--rate",
        "2",
        "--concurrency",
        "2",
        "--default-country-code",
        "1",
    )
    assert run.code == 0, run.stderr
    check_fallback(fake, run.report)
    timed_out = [e for e in fake.log if e.outcome.endswith("/1870158")]
    assert timed_out, "the API's time-out was met and handled"
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_lost_reply_to_batch_one_does_not_start_a_second_replace(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 5_000)
    lost = False

    def lose_first_reply(entry: LogEntry) -> bool:
        nonlocal lost
        if entry.batch_seq == 1 and not lost:
            lost = True
            return False
        return True

    fake.on_applied = lose_first_reply
    run = await run_cli(
        *upload_args(people, fake.base_url, "--mode", "replace", "--batch-size", "1000"),
        "--concurrency",
        "4",
        "--default-country-code",
        "1",
    )
    assert run.code == 0, run.stderr
    assert lost
    first = [e for e in fake.log if e.batch_seq == 1]
    assert len(first) == 1 and first[0].outcome == "dropped_after"
    assert fake.violations == []
    assert fake.members(AUDIENCE) == expected_rows(people)
    assert run.report["rows_sent"] == run.report["rows_valid"]


async def test_replace_in_one_window_keeps_one_session(fake: FakeGraph, tmp_path: Path) -> None:
    people = write_sample(tmp_path / "people.csv", 6_000)
    run = await run_cli(
        *upload_args(people, fake.base_url, "--mode", "replace", "--batch-size", "1000"),
        "--default-country-code",
        "1",
    )
    assert run.code == 0, run.stderr
    assert [s["mode"] for s in run.report["sessions"]] == ["replace"]
    check_session(fake, run.report, replace=True)


async def populated(fake: FakeGraph, tmp_path: Path) -> None:
    """Old members in the audience, for a replace to remove."""
    old = write_sample(tmp_path / "old.csv", 2_000, seed=5)
    assert (await run_cli(*upload_args(old, fake.base_url, "--batch-size", "1000"))).code == 0


def replace_args(path: Path, base: str, *extra: str) -> list[str]:
    return upload_args(
        path,
        base,
        "--mode",
        "replace",
        "--batch-size",
        "1000",
        "--concurrency",
        "4",
        "--default-country-code",
        "1",
        *extra,
    )


def check_whole_replace(fake: FakeGraph, session_id: int, n: int) -> None:
    """Session `session_id` carried the whole replace: batch_seq 1..n acknowledged once each,
    batch 1 first and alone, the last flag on n alone."""
    entries = entries_of(fake, session_id)
    assert sorted(e.batch_seq or 0 for e in entries if e.outcome == "ok") == list(range(1, n + 1))
    assert [e.batch_seq for e in entries if e.last_batch_flag] == [n]
    assert entries[0].batch_seq == 1 and all(e.acked_after >= 1 for e in entries[1:])


async def test_replace_failed_by_meta_midway_starts_over_from_batch_one(
    fake: FakeGraph, tmp_path: Path
) -> None:
    await populated(fake, tmp_path)
    people = write_sample(tmp_path / "people.csv", 6_000)
    fake.fail_next(1, code=2650, subcode=1870148, match="replace", after=3)
    checkpoint = tmp_path / "job.sqlite"
    run = await run_cli(*replace_args(people, fake.base_url, "--checkpoint", str(checkpoint)))
    assert run.code == 0, run.stderr
    report = run.report
    check_counts(report)  # the input was read twice but counted once
    assert report["rows_read"] == 6_000 and report["batches_total"] == 6
    assert [s["mode"] for s in report["sessions"]] == ["replace", "replace"]
    failed, again = (s["session_id"] for s in report["sessions"])
    assert any(e.outcome == "error:2650/1870148" for e in entries_of(fake, failed))
    check_whole_replace(fake, again, 6)
    assert "starts over from batch 1" in report["message"] and str(again) in report["message"]
    assert fake.violations == []
    assert fake.members(AUDIENCE) == expected_rows(people)  # the old list is gone
    status = await run_cli("status", "--checkpoint", str(checkpoint))
    shown = orjson.loads(status.stdout)
    assert [s["session_id"] for s in shown["sessions"]] == [failed, again]
    assert [s["batches_acknowledged"] for s in shown["sessions"]] == [0, 6]


async def test_replace_that_must_start_over_from_stdin_fails_clearly(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 6_000)
    fake.fail_next(1, code=2650, subcode=1870148, match="replace", after=3)
    run = await run_cli(
        *replace_args(Path("-"), fake.base_url, "--format", "csv"), stdin=people.read_bytes()
    )
    assert run.code == 1, run.stderr
    report = run.report
    assert report["status"] == "failed"
    assert (report["error"]["code"], report["error"]["subcode"]) == (2650, 1870148)
    assert "cannot be read twice" in report["message"]


async def test_a_replace_meta_keeps_failing_is_given_up_after_two_retries(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 3_000)
    fake.fail_next(10, code=2650, subcode=1870148, match="replace")
    run = await run_cli(*replace_args(people, fake.base_url))
    assert run.code == 1, run.stderr
    assert [s["mode"] for s in run.report["sessions"]] == ["replace"] * 3
    assert "giving up" in run.report["message"]
    assert [e.batch_seq for e in fake.log] == [1, 1, 1]  # batch 1 of each session, once


@pytest.mark.parametrize(
    ("subcode", "said"),
    [
        (1870144, "replace is not available for audiences of 100 million or more; use add/remove"),
        (1870147, "Meta saw no batch 1 of this replace session"),
    ],
)
async def test_replace_errors_that_stop_the_job_say_why(
    fake: FakeGraph, tmp_path: Path, subcode: int, said: str
) -> None:
    people = write_sample(tmp_path / "people.csv", 3_000)
    fake.fail_next(1, code=2650, subcode=subcode, match="replace")
    run = await run_cli(*replace_args(people, fake.base_url))
    assert run.code == 1, run.stderr
    report = run.report
    assert report["status"] == "failed" and report["error"]["subcode"] == subcode
    assert said in report["message"] and said in run.stderr
    assert len(fake.log) == 1  # no retry


@pytest.mark.parametrize("applied", [True, False])
async def test_batch_one_after_a_5xx_is_asked_about_not_resent_blind(
    fake: FakeGraph, tmp_path: Path, applied: bool
) -> None:
    await populated(fake, tmp_path)
    people = write_sample(tmp_path / "people.csv", 5_000)
    # HTTP 500 code 2 for batch 1: whether Meta did the work first, the client cannot tell.
    fake.fail_next(1, code=2, http_status=500, match="replace", applied=applied)
    run = await run_cli(*replace_args(people, fake.base_url))
    assert run.code == 0, run.stderr
    first = [e for e in fake.log if e.mode == "replace" and e.batch_seq == 1]
    assert [e.applied for e in first] == ([True] if applied else [False, True])
    assert fake.violations == []
    assert fake.members(AUDIENCE) == expected_rows(people)
    check_counts(run.report)
