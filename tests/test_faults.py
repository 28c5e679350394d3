"""Issue #3 end to end: rate limits, throttles, transient and permanent faults, timeouts.

Every test drives the real engine (the CLI as a subprocess, or `Uploader` in this process)
against the real fake Graph API over loopback, latency-free and with small batches so that
the faults, not the payloads, set the pace. Nothing sleeps to wait for state: the fake's
randomness is seeded, scripted faults are queued up front, and the assertions read the fake's
request log afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from engine._api import Uploader
from engine._graph.facts import THROTTLE_CODES
from engine._quota.limiter import LimiterConfig
from engine.testing.fakegraph import FakeGraph, LogEntry
from engine.testing.sample import write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN, run_cli, upload_args

OTHER_AUDIENCE = "23850000000000002"


def outcomes(fake: FakeGraph) -> Counter[str]:
    return Counter(e.outcome for e in fake.log)


def uploader(fake: FakeGraph, limits: LimiterConfig | None = None) -> Uploader:
    return Uploader(
        access_token=TOKEN, app_secret=APP_SECRET, api_base=fake.base_url, limits=limits
    )


def busiest_second(entries: list[LogEntry]) -> int:
    """The most requests that arrived within any one second."""
    times = sorted(e.t for e in entries)
    start, most = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.fixture
def emails(tmp_path: Path) -> Path:
    """A one-column file: cheap to hash, so the limiter sets the pace."""
    return write_sample(tmp_path / "emails.csv", 200_000, columns=("email",))


async def test_default_rate_against_a_lower_cap_slows_down_before_80003(
    fake: FakeGraph, emails: Path
) -> None:
    # 60 calls per 10 s is 6/s, below the engine's default 10/s: the engine must find the
    # account's pace from the usage headers, which rise with every call of the window.
    fake.register_audience(AUDIENCE, AD_ACCOUNT)
    fake.configure(rate_limit=(60, 10.0))
    run = await run_cli(
        *upload_args(emails, fake.base_url, "--batch-size", "2000", "--max-throttle-wait", "2")
    )
    assert run.code == 0, run.stderr
    report = run.report
    assert report["status"] == "completed" and report["batches_total"] == 100
    check_counts(report)
    check_session(fake, report)
    assert fake.members(AUDIENCE) == expected_rows(emails)
    throttled = outcomes(fake)["throttled"]
    assert throttled == report["throttled"]
    assert throttled < 0.05 * len(fake.log), outcomes(fake)


async def test_5xx_and_dropped_connections_lose_nothing_and_count_nothing_twice(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 40_000, columns=("email", "phone"))
    fake.configure(error_rate=0.10, drop_rate=0.05)
    # The limiter is not under test here: a higher rate keeps 200-odd requests quick.
    args = ("--batch-size", "200", "--concurrency", "8", "--max-retries", "8", "--rate", "40")
    run = await run_cli(*upload_args(people, fake.base_url, *args, "--default-country-code", "1"))
    assert run.code == 0, run.stderr
    report = run.report
    check_counts(report)
    check_session(fake, report)  # one acknowledged request per batch_seq, no violation
    assert fake.members(AUDIENCE) == expected_rows(people)
    seen = outcomes(fake)
    # The seeded fake's draws follow arrival order, so these faults happen on every run.
    assert seen["error:2"] > 0 and seen["dropped_before"] > 0 and seen["dropped_after"] > 0
    assert report["retries"] == len(fake.log) - report["batches_total"]
    # Every failed attempt was re-sent with its own batch_seq and rows, and the batches the
    # fake applied before dropping the reply were counted once.
    by_seq: defaultdict[int | None, set[int]] = defaultdict(set)
    for e in fake.log:
        by_seq[e.batch_seq].add(e.rows)
    assert all(len(sizes) == 1 for sizes in by_seq.values())
    session = fake.session(AUDIENCE, report["session_id"])
    assert session is not None and session.num_received == report["rows_sent"]
    assert report["num_received"] == report["rows_sent"]


async def test_permanent_error_stops_the_job_within_one_round(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 20_000, columns=("email",))
    concurrency = 4
    fake.fail_next(
        1,
        code=100,
        subcode=1713230,
        user_title="Audience Upload Blocked",
        user_msg="This audience was flagged for review.",
        after=10,
    )
    args = ("--batch-size", "200", "--concurrency", str(concurrency))
    run = await run_cli(*upload_args(people, fake.base_url, *args))
    assert run.code == 1
    report = run.report
    assert report["status"] == "failed"
    assert report["error"] == {
        "code": 100,
        "subcode": 1713230,
        "type": "OAuthException",
        "message": "(#100) Invalid parameter",
        "user_title": "Audience Upload Blocked",
        "user_msg": "This audience was flagged for review.",
    }
    assert "1713230" in run.stderr and "This audience was flagged for review." in run.stderr
    (failed,) = [e for e in fake.log if e.outcome == "error:100/1713230"]
    assert failed.seq == 11
    # Only requests already in flight may follow it: no new batch, no retry of the refused one.
    later = [e for e in fake.log if e.seq > failed.seq]
    assert len(later) <= concurrency
    assert all(e.batch_seq != failed.batch_seq for e in later)
    assert report["batches_sent"] == len([e for e in fake.log if e.outcome == "ok"])
    assert not any(e.last_batch_flag for e in fake.log)
    assert fake.violations == []


@pytest.mark.parametrize("code", sorted(THROTTLE_CODES))
async def test_every_throttling_code_pauses_and_resends_the_same_batch(
    fake: FakeGraph, tmp_path: Path, code: int
) -> None:
    people = write_sample(tmp_path / "people.csv", 2_000, columns=("email",))
    fake.fail_next(1, code=code, after=2)
    async with uploader(fake) as up:
        report = await up.upload(
            people, audience=AUDIENCE, ad_account=AD_ACCOUNT, batch_size=200, concurrency=2
        )
        assert up.limiters.get(AD_ACCOUNT).throttles == 1
    assert report.status == "completed", report.message
    assert report.throttled == 1 and report.retries == 0
    check_session(fake, report.to_dict())
    (throttled,) = [e for e in fake.log if e.outcome.startswith(f"error:{code}")]
    resent = [e for e in fake.log if e.batch_seq == throttled.batch_seq and e.outcome == "ok"]
    assert len(resent) == 1 and resent[0].seq > throttled.seq


async def test_two_audiences_of_one_account_share_one_budget(
    fake: FakeGraph, tmp_path: Path
) -> None:
    fake.register_audience(AUDIENCE, AD_ACCOUNT)
    fake.register_audience(OTHER_AUDIENCE, AD_ACCOUNT)
    files = [
        write_sample(tmp_path / f"people{i}.csv", 6_000, columns=("email",), seed=i) for i in (1, 2)
    ]
    rate = 16.0
    limits = LimiterConfig(rate=rate, burst=1, min_rate=1.0)
    async with uploader(fake, limits) as up:
        reports = await asyncio.gather(
            *(
                up.upload(path, audience=audience, ad_account=AD_ACCOUNT, batch_size=100)
                for path, audience in zip(files, (AUDIENCE, OTHER_AUDIENCE), strict=True)
            )
        )
    for report, path, audience in zip(reports, files, (AUDIENCE, OTHER_AUDIENCE), strict=True):
        assert report.status == "completed", report.message
        check_session(fake, report.to_dict())
        assert fake.members(audience) == expected_rows(path)
    per_audience = [[e for e in fake.log if e.audience_id == a] for a in (AUDIENCE, OTHER_AUDIENCE)]
    # They ran at the same time: each started before the other finished ...
    first, second = ((min(e.t for e in es), max(e.t for e in es)) for es in per_audience)
    assert first[0] < second[1] and second[0] < first[1]
    # ... yet together they kept to one account's rate. Two limiters would have let
    # through twice as many requests a second.
    assert all(e.ad_account == AD_ACCOUNT for e in fake.log)
    assert busiest_second(fake.log) <= rate + 1
    assert len(fake.log) >= 110


async def test_a_hung_request_times_out_and_is_sent_again(fake: FakeGraph, tmp_path: Path) -> None:
    people = write_sample(tmp_path / "people.csv", 3_000, columns=("email",))
    hang_s = 60.0
    fake.hang_next(1, hang_s)
    async with uploader(fake) as up:
        report = await up.upload(
            people,
            audience=AUDIENCE,
            ad_account=AD_ACCOUNT,
            batch_size=500,
            read_timeout_s=0.5,
        )
    assert report.status == "completed", report.message
    assert report.elapsed_s < hang_s / 4
    assert report.retries == 1
    hung = fake.log[0]
    assert hung.outcome == "pending"  # still hanging when the job was done
    check_session(fake, report.to_dict())
    assert fake.members(AUDIENCE) == expected_rows(people)
    resent = [e for e in fake.log if e.batch_seq == hung.batch_seq and e.outcome == "ok"]
    assert len(resent) == 1


async def test_an_unreachable_api_fails_after_the_retries(tmp_path: Path) -> None:
    people = write_sample(tmp_path / "people.csv", 300, columns=("email",))
    closed = FakeGraph()
    await closed.start()
    await closed.close()  # nothing listens on its port any more: connections are refused
    async with uploader(closed) as up:
        report = await up.upload(
            people, audience=AUDIENCE, ad_account=AD_ACCOUNT, max_retries=2, connect_timeout_s=0.5
        )
    assert report.status == "failed" and report.retries == 2
    assert report.error is not None and report.error["type"] == "TransportError"
    assert report.batches_sent == 0
