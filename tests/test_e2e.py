"""The real CLI against the fake Graph API: sessions, membership and counts, end to end."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import pytest

from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN, run_cli, upload_args


@pytest.fixture
def people(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "people.csv", 25_000)


async def test_add_with_concurrency_and_random_latency(
    fake: FakeGraph, people: Path, tmp_path: Path
) -> None:
    fake.configure(latency=(0.0, 0.02))
    report_path = tmp_path / "report.json"
    run = await run_cli(
        *upload_args(
            people,
            fake.base_url,
            "--concurrency",
            "8",
            "--batch-size",
            "1000",
            "--default-country-code",
            "1",
            "--report",
            str(report_path),
        )
    )
    assert run.code == 0, run.stderr
    report = run.report
    assert report["status"] == "completed"
    assert report["rows_read"] == 25_000
    assert report["rows_rejected"] > 0
    assert report["batches_total"] == -(-report["rows_valid"] // 1000)
    check_counts(report)
    check_session(fake, report)
    assert fake.members(AUDIENCE) == expected_rows(people)
    assert report_path.read_bytes().strip() == run.stdout.strip().encode()
    # Meta's estimated_num_total, from the file's size: near the real count.
    session = fake.session(AUDIENCE, report["session_id"])
    assert session is not None and session.estimated_num_total is not None
    assert abs(session.estimated_num_total - 25_000) < 2_500


async def test_remove_takes_rows_out(fake: FakeGraph, tmp_path: Path) -> None:
    everyone = write_sample(tmp_path / "all.csv", 6_000, columns=("email", "phone"))
    some = tmp_path / "some.csv"
    with open(everyone) as src, open(some, "w", newline="") as dst:
        rows = list(csv.reader(src))
        csv.writer(dst).writerows([rows[0], *rows[1:2001]])
    args = ("--concurrency", "8", "--batch-size", "500", "--default-country-code", "1")
    assert (await run_cli(*upload_args(everyone, fake.base_url, *args))).code == 0
    fake.configure(latency=(0.0, 0.02))
    run = await run_cli(*upload_args(some, fake.base_url, "--mode", "remove", *args))
    assert run.code == 0, run.stderr
    check_counts(run.report)
    check_session(fake, run.report)
    assert fake.members(AUDIENCE) == expected_rows(everyone) - expected_rows(some)
    assert all(e.mode == "remove" for e in fake.log if e.session_id == run.report["session_id"])


async def test_replace_swaps_the_audience(fake: FakeGraph, tmp_path: Path, people: Path) -> None:
    old = write_sample(tmp_path / "old.csv", 3_000, seed=99)
    args = ("--concurrency", "8", "--batch-size", "1000", "--default-country-code", "1")
    assert (await run_cli(*upload_args(old, fake.base_url, *args))).code == 0
    fake.configure(latency=(0.0, 0.02))
    run = await run_cli(*upload_args(people, fake.base_url, "--mode", "replace", *args))
    assert run.code == 0, run.stderr
    check_counts(run.report)
    check_session(fake, run.report, replace=True)
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_dry_run_sends_nothing(fake: FakeGraph, people: Path) -> None:
    run = await run_cli(
        *upload_args(people, fake.base_url, "--dry-run"), env={"META_ACCESS_TOKEN": ""}
    )
    assert run.code == 0, run.stderr
    assert run.report["status"] == "dry_run"
    assert run.report["batches_total"] == 3 and run.report["batches_sent"] == 0
    assert fake.log == []


async def test_single_key_style_and_stdin(fake: FakeGraph, people: Path) -> None:
    data = people.read_bytes()
    run = await run_cli(
        *upload_args("-", fake.base_url, "--schema", "EMAIL_SHA256", "--format", "csv"), stdin=data
    )
    assert run.code == 0, run.stderr
    check_counts(run.report)
    check_session(fake, run.report)
    assert len(fake.members(AUDIENCE)) == run.report["rows_valid"]


async def test_gzip_jsonl_input(fake: FakeGraph, tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(1500):
            madid = f"{i:08x}-0000-4000-8000-000000000000"
            f.write(f'{{"email": "user{i}@example.com", "madid": "{madid}"}}\n')
    run = await run_cli(*upload_args(path, fake.base_url, "--batch-size", "400"))
    assert run.code == 0, run.stderr
    assert run.report["rows_sent"] == 1500 and run.report["batches_total"] == 4
    check_session(fake, run.report)


# -- bad input ----------------------------------------------------------------------


async def test_messy_file_counts_every_row_and_never_writes_values(
    fake: FakeGraph, tmp_path: Path
) -> None:
    path = tmp_path / "messy.csv"
    lines = [
        b"\xef\xbb\xbfemail,phone,first_name\r\n",  # BOM
        b"ok1@example.com,+1 555 010 9999,Ann\r\n",
        b"\r\n",  # blank line
        b"bad\xff\xfe@example.com,555,Bob\r\n",  # not UTF-8
        b"ragged@example.com,1\r\n",  # too few fields
        b'"quoted\nnewline@example.com",5550109999,"Zo\xc3\xab"\r\n',
        b"not-an-email,not-a-phone,\r\n",  # nothing valid
        b"huge@example.com,1," + b"x" * 200_000 + b"\r\n",
        b"ok2@example.com,,Jos\xc3\xa9\r\n",
    ]
    path.write_bytes(b"".join(lines))
    rejects = tmp_path / "rejects.csv"
    run = await run_cli(*upload_args(path, fake.base_url, "--rejects", str(rejects)))
    assert run.code == 0, run.stderr
    report = run.report
    assert report["rows_read"] == 8
    check_counts(report)
    with open(rejects, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["rows_rejected"] >= 4
    assert {r["row"] for r in rows} >= {"2", "3", "4"}
    assert Counter(r["reason"] for r in rows) == Counter(report["rejected_by_reason"])
    text = rejects.read_text()
    assert "example.com" not in text and "not-an-email" not in text


async def test_blanked_cells_and_rows_that_identify_nobody_are_counted(
    fake: FakeGraph, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        "email,phone,zip,country\n"
        "ok1@example.com,12,12345,US\n"  # sent, PHONE blanked
        ",,94107,United States\n"  # a place only: nobody
        "ok2@example.com,+1 555 010 9999,,Narnia\n"  # sent, COUNTRY blanked
        ",,,Narnia\n"  # nobody, and an invalid country
        "bad,,,US\n"  # the e-mail is why
    )
    run = await run_cli(*upload_args(path, fake.base_url))
    assert run.code == 0, run.stderr
    report = run.report
    check_counts(report)
    assert report["rejected_by_reason"] == {"invalid_email": 1, "no_identifying_key": 2}
    assert report["blanked_by_key_and_reason"] == {
        "COUNTRY": {"invalid_country": 1},
        "PHONE": {"invalid_phone": 1},
    }
    assert fake.members(AUDIENCE) == expected_rows(path)
    assert len(expected_rows(path)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schema", "EMAIL,FOO"], "FOO"),
        (["--map", "EMAIL=nope"], "nope"),
        (["--schema", "MADID"], "MADID"),
        (["--rate", "0"], "rate must be above 0"),
    ],
)
async def test_bad_usage_exits_2_before_any_request(
    fake: FakeGraph, people: Path, args: list[str], message: str
) -> None:
    run = await run_cli(*upload_args(people, fake.base_url, *args))
    assert run.code == 2
    assert message in run.stderr
    assert fake.log == []


async def test_unreadable_file_exits_2(fake: FakeGraph, tmp_path: Path) -> None:
    run = await run_cli(*upload_args(tmp_path / "missing.csv", fake.base_url))
    assert run.code == 2 and "missing.csv" in run.stderr
    assert fake.log == []


async def test_missing_token_exits_2(fake: FakeGraph, people: Path) -> None:
    run = await run_cli(*upload_args(people, fake.base_url), env={"META_ACCESS_TOKEN": ""})
    assert run.code == 2 and "META_ACCESS_TOKEN" in run.stderr
    assert fake.log == []


async def test_empty_replace_is_refused_unless_allowed(fake: FakeGraph, tmp_path: Path) -> None:
    seed = write_sample(tmp_path / "seed.csv", 100, columns=("email",))
    assert (await run_cli(*upload_args(seed, fake.base_url))).code == 0
    empty = tmp_path / "empty.csv"
    empty.write_text("email\nnot-an-email\n\n")
    before = len(fake.log)
    for dry in ((), ("--dry-run",)):
        run = await run_cli(*upload_args(empty, fake.base_url, "--mode", "replace", *dry))
        assert run.code == 2 and "allow-empty-replace" in run.stderr, dry
    assert len(fake.log) == before
    run = await run_cli(
        *upload_args(empty, fake.base_url, "--mode", "replace", "--allow-empty-replace")
    )
    assert run.code == 0, run.stderr
    assert fake.members(AUDIENCE) == set()


async def test_input_that_breaks_after_batches_went_out_fails_the_job(
    fake: FakeGraph, tmp_path: Path
) -> None:
    # A .gz cut short: the rows before the cut are sent, then the job fails (exit 1, not 2:
    # something was sent), with a report naming where the input broke.
    body = b"email\n" + b"".join(b"user%d@example.com\n" % i for i in range(200_000))
    packed = gzip.compress(body)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed[: len(packed) * 3 // 4])
    run = await run_cli(*upload_args(cut, fake.base_url, "--batch-size", "1000"))
    assert run.code == 1, run.stderr
    report = run.report
    assert report["status"] == "failed"
    assert "unreadable after data row" in report["message"]
    assert "unreadable after data row" in run.stderr
    assert report["rows_read"] == report["rows_valid"] + report["rows_rejected"]
    assert report["rows_sent"] <= report["rows_valid"]
    acked = [e for e in fake.log if e.outcome == "ok"]
    assert report["batches_sent"] == len(acked) > 0
    assert report["rows_sent"] == sum(e.rows for e in acked)
    assert not any(e.last_batch_flag for e in fake.log)  # the session stays open


async def test_permanent_error_stops_the_job(fake: FakeGraph, people: Path) -> None:
    fake.fail_next(
        1,
        code=100,
        subcode=1713230,
        user_title="Audience Upload Blocked",
        user_msg="This audience was flagged.",
    )
    run = await run_cli(*upload_args(people, fake.base_url, "--batch-size", "1000"))
    assert run.code == 1
    assert run.report["status"] == "failed"
    assert run.report["error"]["code"] == 100
    assert run.report["error"]["subcode"] == 1713230
    assert run.report["error"]["user_msg"] == "This audience was flagged."
    assert "1713230" in run.stderr and "flagged" in run.stderr
    assert len(fake.log) <= 1 + 8  # one round of in-flight requests, no retry storm


async def test_secrets_never_appear_in_any_output(
    fake: FakeGraph, people: Path, tmp_path: Path
) -> None:
    fake.fail_next(1, code=190, message="Invalid OAuth access token.")
    outputs = []
    for extra in ([], ["--mode", "replace"], ["-v"]):
        report, rejects = tmp_path / "r.json", tmp_path / "x.csv"
        run = await run_cli(
            *upload_args(
                people, fake.base_url, "--report", str(report), "--rejects", str(rejects), *extra
            )
        )
        outputs += [run.stdout, run.stderr, report.read_text(), rejects.read_text()]
    blob = "\n".join(outputs)
    assert TOKEN not in blob and APP_SECRET not in blob
    assert "@example" not in blob  # and no raw identifiers either
    assert AD_ACCOUNT in blob


async def test_read_timeout_option_rescues_a_hung_request(fake: FakeGraph, people: Path) -> None:
    fake.hang_next(1, 60)
    # 3 s, not less: on a loaded machine a healthy reply can take a second, and a shorter
    # timeout would retry it too.
    run = await run_cli(*upload_args(people, fake.base_url, "--read-timeout", "3"))
    assert run.code == 0, run.stderr
    assert run.report["retries"] == 1
    check_counts(run.report)
