"""Mirror mode against the fake: the audience ends equal to the input, only the diff goes out,
the state follows what was acknowledged, a killed mirror finishes when run again."""

from __future__ import annotations

import csv
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

import engine
from engine._errors import InputError
from engine._hashing.packed import Packer
from engine._mirror.store import SqliteStore, default_state_dir
from engine.testing.fakegraph import FakeGraph, LogEntry
from engine.testing.sample import EIGHT_KEYS, sample_rows

from .checks import expected_rows
from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN, run_cli, upload_args
from .test_resume import interrupted, loaded
from .test_worker import http, submit, wait_for_states, worker_env, workers, write_config

__all__ = ["http", "workers"]  # the worker tests' fixtures, used here too

ROWS = list(sample_rows(4_000, 7))
CHURN = 100


def write(path: Path, rows: Sequence[Sequence[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(EIGHT_KEYS)
        out.writerows(rows)
    return path


def version(tmp_path: Path, n: int, size: int = 3_000) -> Path:
    """The list on day `n`: each day CHURN rows leave and CHURN new ones come."""
    start = n * CHURN
    return write(tmp_path / f"day{n}.csv", ROWS[start : start + size])


def state_rows() -> set[tuple[Any, ...]]:
    """The hashed rows the mirror state holds for the test audience."""
    store = SqliteStore(default_state_dir(), AD_ACCOUNT, AUDIENCE)
    try:
        state = store.state()
        assert state is not None
        packer = Packer(orjson.loads(state.schema))
        return {packer.unpack(row) for _, row in store.rows()}
    finally:
        store.close()


def sent(fake: FakeGraph, since: int, mode: str) -> int:
    """Rows the fake acknowledged in `mode` requests since log entry `since`."""
    return sum(e.rows for e in fake.log[since:] if e.mode == mode and e.outcome == "ok")


async def mirror(fake: FakeGraph, path: Path, **more: Any) -> dict[str, Any]:
    report = await engine.upload(
        path,
        audience=AUDIENCE,
        ad_account=AD_ACCOUNT,
        api_base=fake.base_url,
        access_token=TOKEN,
        app_secret=APP_SECRET,
        mode="mirror",
        default_country_code="1",
        batch_size=50,
        concurrency=4,
        **more,
    )
    return report.to_dict()


async def test_a_first_mirror_replaces_then_only_the_diff_goes_out(
    fake: FakeGraph, tmp_path: Path
) -> None:
    first = version(tmp_path, 0)
    report = await mirror(fake, first)
    want = expected_rows(first)
    assert report["status"] == "completed"
    assert sent(fake, 0, "replace") == len(want) == report["added"]
    assert (report["removed"], report["unchanged"]) == (0, 0)
    assert fake.members(AUDIENCE) == want == state_rows()
    previous = want
    for day in (1, 2, 3):
        path = version(tmp_path, day)
        mark = len(fake.log)
        report = await mirror(fake, path)
        want = expected_rows(path)
        assert report["status"] == "completed"
        assert report["added"] == len(want - previous)
        assert report["removed"] == len(previous - want)
        assert report["unchanged"] == len(want & previous)
        assert 0 < report["added"] <= CHURN
        # Only the diff on the wire: no replace, and the add and remove rows are the diff's.
        assert sent(fake, mark, "replace") == 0
        assert sent(fake, mark, "add") == report["added"]
        assert sent(fake, mark, "remove") == report["removed"]
        assert report["rows_sent"] == report["added"] + report["removed"]
        assert {e.mode for e in fake.log[mark:]} == {"add", "remove"}
        assert fake.members(AUDIENCE) == want == state_rows()
        assert fake.violations == []
        previous = want


async def test_rows_packed_in_worker_processes_diff_as_in_the_parent(
    fake: FakeGraph, tmp_path: Path
) -> None:
    first, second = version(tmp_path, 0), version(tmp_path, 1)
    await mirror(fake, first, workers=0)
    mark = len(fake.log)
    report = await mirror(fake, second, workers=2)
    want, had = expected_rows(second), expected_rows(first)
    assert (report["added"], report["removed"]) == (len(want - had), len(had - want))
    assert 0 < report["added"] <= CHURN
    assert sent(fake, mark, "add") == report["added"] and sent(fake, mark, "replace") == 0
    assert fake.members(AUDIENCE) == want == state_rows()


async def test_the_same_list_again_sends_nothing(fake: FakeGraph, tmp_path: Path) -> None:
    path = version(tmp_path, 0)
    await mirror(fake, path)
    mark = len(fake.log)
    report = await mirror(fake, path)
    assert (report["added"], report["removed"]) == (0, 0)
    assert report["unchanged"] == len(expected_rows(path))
    assert fake.log[mark:] == []
    assert report["rows_sent"] == 0 and report["status"] == "completed"


async def test_duplicates_and_spellings_count_once(fake: FakeGraph, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS[:500]]
    email = EIGHT_KEYS.index("email")
    path = write(tmp_path / "a.csv", rows + rows[:50])  # 50 duplicates
    report = await mirror(fake, path)
    assert report["added"] == len(expected_rows(path)) <= 500
    # The same people, spelt otherwise: e-mails upper-cased and padded.
    respelt = [[*r[:email], f"  {r[email].upper()} ", *r[email + 1 :]] for r in rows]
    other = write(tmp_path / "b.csv", respelt + respelt[:10])
    mark = len(fake.log)
    report = await mirror(fake, other)
    assert (report["added"], report["removed"]) == (0, 0)
    assert report["rows_read"] == 510
    assert fake.log[mark:] == []
    assert fake.members(AUDIENCE) == expected_rows(path) == state_rows()


async def test_large_removals_stop_before_anything_is_sent(fake: FakeGraph, tmp_path: Path) -> None:
    await mirror(fake, version(tmp_path, 0))
    before, mark = state_rows(), len(fake.log)
    smaller = write(tmp_path / "smaller.csv", ROWS[:2_100])  # 30% of the audience leaves
    with pytest.raises(InputError, match=r"remove \d+ of the audience's \d+ rows") as caught:
        await mirror(fake, smaller)
    assert "nothing was sent" in str(caught.value)
    assert fake.log[mark:] == [] and state_rows() == before
    # A dry run shows the counts and says what the guard would do.
    dry = await mirror(fake, smaller, dry_run=True)
    assert dry["status"] == "dry_run" and dry["removed"] == len(before - expected_rows(smaller))
    assert "allow-large-removal" in dry["message"]
    assert fake.log[mark:] == []
    report = await mirror(fake, smaller, allow_large_removal=True)
    assert report["status"] == "completed" and report["added"] == 0
    assert sent(fake, mark, "remove") == report["removed"] == len(before - expected_rows(smaller))
    assert fake.members(AUDIENCE) == expected_rows(smaller) == state_rows()


async def test_the_guard_is_a_setting(fake: FakeGraph, tmp_path: Path) -> None:
    await mirror(fake, version(tmp_path, 0))
    smaller = write(tmp_path / "smaller.csv", ROWS[:2_100])
    report = await mirror(fake, smaller, max_removal_share=0.4)
    assert report["status"] == "completed"
    assert fake.members(AUDIENCE) == expected_rows(smaller)


async def test_a_diff_above_the_threshold_goes_as_a_replace(
    fake: FakeGraph, tmp_path: Path
) -> None:
    await mirror(fake, version(tmp_path, 0))
    mark = len(fake.log)
    report = await mirror(fake, version(tmp_path, 1), replace_threshold=0.01)
    assert {e.mode for e in fake.log[mark:]} == {"replace"}
    assert 0 < report["added"] <= CHURN and "replace" in report["message"]
    assert fake.members(AUDIENCE) == expected_rows(version(tmp_path, 1)) == state_rows()


async def test_resync_and_a_dry_run(fake: FakeGraph, tmp_path: Path) -> None:
    await mirror(fake, version(tmp_path, 0))
    before, mark = state_rows(), len(fake.log)
    dry = await mirror(fake, version(tmp_path, 1), dry_run=True)
    assert dry["status"] == "dry_run" and 0 < dry["added"] <= CHURN
    assert fake.log[mark:] == [] and state_rows() == before
    await mirror(fake, version(tmp_path, 1), resync=True)
    assert {e.mode for e in fake.log[mark:]} == {"replace"}
    assert fake.members(AUDIENCE) == expected_rows(version(tmp_path, 1)) == state_rows()


async def test_lost_state_is_set_again_with_a_replace(fake: FakeGraph, tmp_path: Path) -> None:
    await mirror(fake, version(tmp_path, 0), state_dir=tmp_path / "one")
    mark = len(fake.log)
    await mirror(fake, version(tmp_path, 1), state_dir=tmp_path / "two")
    assert {e.mode for e in fake.log[mark:]} == {"replace"}
    assert fake.members(AUDIENCE) == expected_rows(version(tmp_path, 1))


async def test_the_state_holds_no_raw_value(fake: FakeGraph, tmp_path: Path) -> None:
    path = version(tmp_path, 0)
    await mirror(fake, path)
    blob = b"".join(p.read_bytes() for p in default_state_dir().rglob("*") if p.is_file())
    for row in ROWS[:50]:
        for cell in row:
            # Short digits or hex letters can turn up inside a digest by chance.
            if len(cell) > 5 and not set(cell.lower()) <= set("0123456789abcdef"):
                assert cell.encode() not in blob


# --- killed mirrors --------------------------------------------------------------------------

KILL_ARGS = (
    "--mode",
    "mirror",
    "--batch-size",
    "20",
    "--concurrency",
    "2",
    "--default-country-code",
    "1",
)


def recorded_rows() -> dict[str, int]:
    """Rows of the batches the unfinished mirror's parts recorded as acknowledged."""
    store = SqliteStore(default_state_dir(), AD_ACCOUNT, AUDIENCE)
    try:
        plan = store.plan()
        assert plan is not None, "the killed mirror left its plan"
        rows = {}
        for part in ("add", "remove", "replace"):
            path = store.checkpoint_path(plan.plan_id, part)
            rows[part] = sum(b.rows for b in loaded(path).batches.values()) if path.exists() else 0
        return rows
    finally:
        store.close()


def at(mode: str, seq: int) -> Any:
    def hit(entry: LogEntry) -> bool:
        return entry.mode == mode and entry.batch_seq == seq

    return hit


@pytest.mark.parametrize(
    ("mode", "seq", "where"),
    [("add", 3, "arrival"), ("remove", 2, "applied"), ("add", 5, "applied")],
)
async def test_a_mirror_killed_midway_finishes_when_run_again(
    fake: FakeGraph, tmp_path: Path, mode: str, seq: int, where: str
) -> None:
    first = version(tmp_path, 0)
    done = await run_cli(*upload_args(first, fake.base_url, *KILL_ARGS))
    assert done.code == 0, done.stderr
    path = version(tmp_path, 1)
    mark = len(fake.log)
    killed = await interrupted(
        fake, upload_args(path, fake.base_url, *KILL_ARGS), at(mode, seq), where=where
    )
    assert killed.code == -signal.SIGKILL
    acknowledged = recorded_rows()
    assert acknowledged[mode] > 0
    rerun = len(fake.log)
    again = await run_cli(*upload_args(path, fake.base_url, *KILL_ARGS))
    assert again.code == 0, again.stderr
    want, had = expected_rows(path), expected_rows(first)
    assert fake.members(AUDIENCE) == want == state_rows()
    # No acknowledged batch went twice: the run again sends the diff less what the killed
    # run recorded as acknowledged.
    assert sent(fake, rerun, "add") == len(want - had) - acknowledged["add"]
    assert sent(fake, rerun, "remove") == len(had - want) - acknowledged["remove"]
    assert sent(fake, mark, "replace") == 0
    assert fake.violations == []


async def test_a_first_mirror_killed_in_its_replace_resumes_it(
    fake: FakeGraph, tmp_path: Path
) -> None:
    path = version(tmp_path, 0)
    args = upload_args(path, fake.base_url, *KILL_ARGS)
    killed = await interrupted(fake, args, at("replace", 4), where="applied")
    assert killed.code == -signal.SIGKILL
    acknowledged = recorded_rows()["replace"]
    assert acknowledged > 0
    rerun = len(fake.log)
    again = await run_cli(*args)
    assert again.code == 0, again.stderr
    want = expected_rows(path)
    assert fake.members(AUDIENCE) == want == state_rows()
    replaces = {e.session_id for e in fake.log if e.mode == "replace"}
    assert len(replaces) == 1, "resumed in the same replace session"
    # The run again sends what the killed run did not record as acknowledged, no more.
    assert sent(fake, rerun, "replace") == len(want) - acknowledged
    # The next day's mirror goes on from that state.
    mark = len(fake.log)
    report = (await run_cli(*upload_args(version(tmp_path, 1), fake.base_url, *KILL_ARGS))).report
    assert report["status"] == "completed" and sent(fake, mark, "replace") == 0
    assert fake.members(AUDIENCE) == expected_rows(version(tmp_path, 1)) == state_rows()


async def test_the_cli_guard_exits_2_with_the_counts(fake: FakeGraph, tmp_path: Path) -> None:
    done = await run_cli(*upload_args(version(tmp_path, 0), fake.base_url, *KILL_ARGS))
    assert done.code == 0, done.stderr
    mark = len(fake.log)
    smaller = write(tmp_path / "smaller.csv", ROWS[:1_000])
    refused = await run_cli(*upload_args(smaller, fake.base_url, *KILL_ARGS))
    assert refused.code == 2
    assert "nothing was sent" in refused.stderr and "--allow-large-removal" in refused.stderr
    assert fake.log[mark:] == []


async def test_a_worker_mirrors_with_its_state_in_its_state_dir(
    fake: FakeGraph,
    tmp_path: Path,
    workers: Any,
    http: Any,  # noqa: F811
) -> None:
    fake.register_audience(AUDIENCE, AD_ACCOUNT)
    worker = await workers(write_config(tmp_path, fake.base_url), worker_env())
    previous: set[tuple[Any, ...]] = set()
    for day in (0, 1):
        path = version(tmp_path, day)
        mark = len(fake.log)
        job = await submit(
            http,
            worker.url,
            audience=AUDIENCE,
            ad_account=AD_ACCOUNT,
            input=str(path),
            mode="mirror",
            batch_size=100,
        )
        (done,) = await wait_for_states(http, worker.url, [job["id"]])
        want = expected_rows(path)
        assert done["report"]["added"] == len(want - previous)
        assert sent(fake, mark, "add") + sent(fake, mark, "replace") == len(want - previous)
        assert fake.members(AUDIENCE) == want
        previous = want
    assert (tmp_path / "state" / "mirror" / AD_ACCOUNT / f"{AUDIENCE}.sqlite").exists()
