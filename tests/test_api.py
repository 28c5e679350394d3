"""The library API against the fake Graph API: every source type, sharing, progress, manners."""

from __future__ import annotations

import asyncio
import copy
import csv
import dataclasses
import inspect
import logging
import os
import pickle
import signal
import sqlite3
import sys
import textwrap
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import engine
from engine._errors import InputError
from engine._input.files import open_input
from engine._input.memory import Rows
from engine._pipeline.stages import POOL_MIN_BYTES
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import EIGHT_KEYS, write_sample

from . import refnorm
from .checks import check_counts, check_session, expected_rows
from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN, run_python

N_ROWS = 3_000
SCHEMA = "EMAIL,PHONE,FN,LN,ZIP,CT,ST,COUNTRY"  # EIGHT_KEYS, in their order
KINDS = [
    "path",
    "dicts",
    "tuples",
    "rows",
    "cursor",
    "async",
    "pandas",
    "polars",
    "arrow",
    "reader",
]


def options(fake: FakeGraph, **more: Any) -> dict[str, Any]:
    return {
        "audience": AUDIENCE,
        "ad_account": AD_ACCOUNT,
        "api_base": fake.base_url,
        "access_token": TOKEN,
        "app_secret": APP_SECRET,
        "default_country_code": "1",
        "batch_size": 500,
        "concurrency": 4,
        **more,
    }


@pytest.fixture
def people(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "people.csv", N_ROWS)


def csv_rows(path: Path) -> list[tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [tuple(row) for row in list(csv.reader(f))[1:]]


def hashed_rows(path: Path) -> list[tuple[str, ...]]:
    """The file's valid rows as the reference hashes them: input for `prehashed=True`."""
    with open_input(str(path)) as source:
        keys = source.bind(None, {})
        rows = [
            refnorm.expected_row(keys, cells, default_country_code="1")
            for chunk in source.chunks()
            for cells in chunk.values
        ]
        return [tuple(str(cell) for cell in row) for row in rows if row is not None]


async def stream(dicts: list[dict[str, str]]) -> AsyncIterator[dict[str, str]]:
    for row in dicts:
        yield row


def source_of(kind: str, rows: list[tuple[str, ...]], tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """`rows` (of EIGHT_KEYS columns) as a source of the given kind, and options it needs."""
    columns = list(EIGHT_KEYS)
    dicts = [dict(zip(columns, row, strict=True)) for row in rows]
    if kind == "path":
        path = tmp_path / f"{kind}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([columns, *rows])
        return path, {}
    if kind == "tuples":
        return rows, {"schema": SCHEMA}
    if kind == "cursor":  # sqlite3's own: usable only on the thread that connected
        db = sqlite3.connect(tmp_path / "people.db")
        db.execute(f"CREATE TABLE people ({', '.join(columns)})")
        db.executemany(f"INSERT INTO people VALUES ({', '.join('?' * len(columns))})", rows)
        cursor = db.execute("SELECT * FROM people ORDER BY rowid")
        return Rows(cursor, columns=[d[0] for d in cursor.description]), {}
    table = pa.Table.from_pylist(dicts)
    sources = {
        "dicts": dicts,
        "rows": Rows(iter(rows), columns=columns),
        "async": stream(dicts),
        "pandas": pd.DataFrame(rows, columns=columns),
        "polars": pl.DataFrame(rows, schema=columns, orient="row"),
        "arrow": table,
        "reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches(700)),
    }
    return sources[kind], {}


@pytest.mark.parametrize("prehashed", [False, True], ids=["raw", "prehashed"])
@pytest.mark.parametrize("kind", KINDS)
async def test_each_source_type_fills_the_audience_exactly(
    fake: FakeGraph, people: Path, tmp_path: Path, kind: str, prehashed: bool
) -> None:
    valid = hashed_rows(people)
    rows = valid if prehashed else csv_rows(people)
    source, more = source_of(kind, rows, tmp_path)
    report = await engine.upload(source, **options(fake, prehashed=prehashed, **more))
    assert report.status == "completed", report.message
    assert report.rows_read == len(rows)
    assert report.rows_valid == len(valid)
    check_counts(report.to_dict())
    check_session(fake, report.to_dict())
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_pandas_numbers_hash_like_their_text(fake: FakeGraph, tmp_path: Path) -> None:
    """int64 phones and zips that NaN turned into floats upload as the file's digits would."""
    frame = pd.DataFrame(
        {
            "email": ["a@example.com", "b@example.com", None, "d@example.com"],
            "phone": np.array([15551230001, 15551230002, 15551230003, 15551230004]),
            "zip": [94107.0, np.nan, 2134.0, 10001.0],
        }
    )
    text = tmp_path / "same.csv"
    text.write_text(
        "email,phone,zip\n"
        "a@example.com,15551230001,94107\n"
        "b@example.com,15551230002,\n"
        ",15551230003,2134\n"
        "d@example.com,15551230004,10001\n"
    )
    report = await engine.upload(frame, **options(fake))
    assert report.status == "completed"
    assert report.rows_sent == 4
    assert fake.members(AUDIENCE) == expected_rows(text)


async def test_two_uploads_share_one_uploader_and_limiter(fake: FakeGraph, people: Path) -> None:
    other_audience = "23850000000000002"
    few = write_sample(people.with_name("few.csv"), 1_200, seed=3)
    requests: list[str] = []
    own = {k: v for k, v in options(fake).items() if k not in ("api_base", "audience")}
    async with engine.Uploader(
        api_base=fake.base_url, on_request=lambda outcome, _s: requests.append(outcome)
    ) as uploader:
        limiter = uploader.limiters.get(AD_ACCOUNT)
        first, second = await asyncio.gather(
            uploader.upload(people, audience=AUDIENCE, **own),
            uploader.upload(few, audience=other_audience, **own),
        )
        assert uploader.limiters.get(AD_ACCOUNT) is limiter  # one budget for the account
    for report in (first, second):
        assert report.status == "completed", report.message
        check_counts(report.to_dict())
        check_session(fake, report.to_dict())
    assert first.session_id != second.session_id
    assert fake.members(AUDIENCE) == expected_rows(people)
    assert fake.members(other_audience) == expected_rows(few)
    assert len(requests) == first.batches_total + second.batches_total
    assert set(requests) == {"ok"}


async def test_progress_events_add_up_to_the_report(fake: FakeGraph, people: Path) -> None:
    fake.fail_next(1, 80003, subcode=2446079, after=1)
    fake.fail_next(1, 2, http_status=500)
    events: list[engine.Progress] = []
    report = await engine.upload(people, **options(fake, progress=events.append))
    assert report.status == "completed"
    assert (report.throttled, report.retries) == (1, 1)
    # A throttle or a retry is an event of its own: a UI sees the pause as it begins.
    assert any(
        e.throttled == 1 and e.rows_sent == events[events.index(e) - 1].rows_sent
        for e in events[1:]
    )
    fields = ("rows_read", "rows_rejected", "rows_sent", "batches_total", "batches_sent")
    fields += ("retries", "throttled")
    for name in fields:
        series = [getattr(e, name) for e in events]
        assert series == sorted(series), f"{name} never goes down"
        assert series[-1] == getattr(report, name)
    assert events[-1].rows_read - events[-1].rows_rejected == report.rows_valid


def test_upload_sync_refuses_a_running_loop() -> None:
    async def inside() -> None:
        with pytest.raises(RuntimeError, match="await engine.upload"):
            engine.upload_sync(
                [{"email": "a@example.com"}], audience=AUDIENCE, ad_account=AD_ACCOUNT
            )

    asyncio.run(inside())


async def test_upload_sync_from_a_plain_script(fake: FakeGraph, people: Path) -> None:
    script = textwrap.dedent(
        f"""
        import csv, os, sys
        import engine

        with open(sys.argv[1], newline="") as f:
            rows = list(csv.DictReader(f))
        report = engine.upload_sync(
            rows,
            audience="{AUDIENCE}",
            ad_account="{AD_ACCOUNT}",
            api_base=os.environ["META_API_BASE"],
            default_country_code="1",
            batch_size=500,
        )
        print(report.to_dict()["status"], report.rows_sent)
        """
    )
    run = await run_python("-c", script, str(people), env={"META_API_BASE": fake.base_url})
    assert run.code == 0, run.stderr
    status, sent = run.stdout.split()
    assert status == "completed"
    assert int(sent) == len(expected_rows(people))
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_the_readme_snippet_runs_as_a_plain_script_on_a_big_file(
    fake: FakeGraph, tmp_path: Path
) -> None:
    """No `if __name__ == "__main__":` guard, and input big enough for the hashing processes:
    they must not run the caller's script again."""
    people = write_sample(tmp_path / "people.csv", 95_000)
    assert people.stat().st_size >= POOL_MIN_BYTES
    script = tmp_path / "upload_people.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import engine

            # A script: blocks until done.
            report = engine.upload_sync(
                "people.csv", audience="{AUDIENCE}", ad_account="{AD_ACCOUNT}",
                api_base="{fake.base_url}"
            )
            print(report.status, report.rows_read, report.rows_sent)
            """
        )
    )
    run = await run_python(str(script), cwd=tmp_path)
    assert run.code == 0, run.stderr
    acked = sum(e.rows for e in fake.log if e.outcome == "ok")
    # One upload, from the script itself: a worker running it again would upload (or fail) too.
    assert run.stdout.splitlines() == [f"completed 95000 {acked}"]
    assert acked > 90_000
    assert "Traceback" not in run.stderr


def logging_setup() -> dict[str, tuple[object, ...]]:
    """Every logger's level, handlers, propagation and state, and logging's global switch."""
    loggers = {"": logging.getLogger()} | {
        name: logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    state = {
        name: (logger.level, tuple(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in loggers.items()
    }
    return state | {"<disable>": (logging.root.manager.disable,)}


async def test_the_library_leaves_the_process_alone(
    fake: FakeGraph, people: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No exit, no signal handlers, no logging setup, whichever way an upload ends: those are
    the embedding program's. Spies see calls even when undone before the upload returns."""
    calls: list[str] = []
    monkeypatch.setattr(sys, "exit", lambda *_: calls.append("sys.exit"))
    monkeypatch.setattr(os, "_exit", lambda *_: calls.append("os._exit"))
    real_signal = signal.signal

    def set_signal(sig: int, handler: Any) -> Any:
        calls.append(f"signal.signal({sig})")
        return real_signal(sig, handler)

    monkeypatch.setattr(signal, "signal", set_signal)
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(
        loop, "add_signal_handler", lambda sig, *_: calls.append(f"add_signal_handler({sig})")
    )
    for name in ("basicConfig", "captureWarnings", "disable", "setLoggerClass"):
        monkeypatch.setattr(logging, name, lambda *_, name=name, **__: calls.append(name))
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    before = logging_setup()

    reports = {"pool": await engine.upload(people, **options(fake, workers=2))}
    fake.fail_next(1, 80003, subcode=2446079, after=1)
    fake.fail_next(1, 2, http_status=500)
    reports["retried"] = await engine.upload(
        pd.read_csv(people, dtype=str), **options(fake, max_retries=2)
    )
    fake.fail_next(1, 190, message="Invalid OAuth access token")
    reports["refused"] = await engine.upload(people, **options(fake))
    stop = asyncio.Event()
    reports["stopped"] = await engine.upload(
        people, **options(fake, stop=stop, progress=lambda p: p.batches_sent and stop.set())
    )
    reports["sync"] = await asyncio.to_thread(engine.upload_sync, people, **options(fake))
    with pytest.raises(InputError):
        await engine.upload(people, **options(fake, schema="EMAIL,NOT_A_KEY"))

    assert {name: r.status for name, r in reports.items()} == {
        "pool": "completed",
        "retried": "completed",
        "refused": "failed",
        "stopped": "interrupted",
        "sync": "completed",
    }
    assert (reports["retried"].throttled, reports["retried"].retries) == (1, 1)
    assert calls == []
    assert {sig: signal.getsignal(sig) for sig in signals} == signals
    after = logging_setup()
    assert {name: after[name] for name in before} == before
    for name in after.keys() - before.keys():  # loggers made meanwhile: made, not configured
        assert after[name] == (logging.NOTSET, (), True, False), name


def test_reports_are_json_ready(people: Path) -> None:
    report = engine.upload_sync(
        people, **{"audience": AUDIENCE, "ad_account": AD_ACCOUNT}, dry_run=True
    )
    assert report.status == "dry_run"
    assert orjson.loads(orjson.dumps(report.to_dict()))["rows_read"] == N_ROWS


def test_upload_options_mirror_uploader_upload() -> None:
    """UploadOptions (what upload() and upload_sync() take) is Uploader.upload's keywords."""
    signature = inspect.signature(engine.Uploader.upload)
    keywords = {n: p for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert list(signature.parameters) == ["self", "source", *keywords]
    hints = typing.get_type_hints(engine.Uploader.upload)
    assert typing.get_type_hints(engine.UploadOptions) == {n: hints[n] for n in keywords}
    required = {n for n, p in keywords.items() if p.default is p.empty}
    assert engine.UploadOptions.__required_keys__ == required == {"audience", "ad_account"}


def test_upload_and_upload_sync_take_the_same_arguments() -> None:
    one_off = inspect.signature(engine.upload)
    assert inspect.signature(engine.upload_sync) == one_off
    own = [n for n, p in one_off.parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert own == ["api_base", "api_version", "limits"]  # the rest is **UploadOptions
    uploader = inspect.signature(engine.Uploader).parameters
    for name in own:
        assert one_off.parameters[name].default == uploader[name].default
    options = one_off.parameters["options"]
    assert options.kind is options.VAR_KEYWORD and options.annotation == "Unpack[UploadOptions]"


def test_a_type_checker_checks_upload_options(tmp_path: Path) -> None:
    """Option names and types are checked statically, as `**options: Any` could not."""
    mypy = pytest.importorskip("mypy.api")
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent(
            """
            import engine

            engine.upload_sync("a.csv", audience=1, ad_account="act_1", batch_size=500)
            engine.upload_sync("a.csv", audience=1, ad_account="act_1", batch_sise=500)
            engine.upload_sync("a.csv", audience=1, ad_account="act_1", dry_run="yes")
            engine.upload_sync("a.csv", audience=1)

            async def main() -> engine.Report:
                return await engine.upload(
                    "a.csv", audience=1, ad_account="act_1", api_base="x", progress=print
                )
            """
        )
    )
    out, _, status = mypy.run(
        [
            "--config-file=",
            "--strict",
            "--python-version=3.11",
            f"--cache-dir={tmp_path / 'cache'}",
            "--no-error-summary",
            str(script),
        ]
    )
    errors = [line.split(": error: ")[1] for line in out.splitlines() if ": error: " in line]
    assert status == 1
    assert errors == [
        'Unexpected keyword argument "batch_sise" for "upload_sync"; did you mean '
        '"batch_size"?  [call-arg]',
        'Argument "dry_run" to "upload_sync" has incompatible type "str"; expected "bool"  '
        "[arg-type]",
        'Missing named argument "ad_account" for "upload_sync"  [call-arg]',
    ]


async def test_a_report_cannot_be_changed(fake: FakeGraph, people: Path) -> None:
    """Frozen all through, mappings and sessions too; to_dict() is plain data, as before."""
    fake.fail_next(1, 190, message="Invalid OAuth access token", after=2)
    failed = await engine.upload(people, **options(fake))
    samples = {"0": "not a hash"}
    report = dataclasses.replace(failed, invalid_entry_samples=samples)
    assert report.status == "failed" and report.rejected_by_reason and report.error
    samples["1"] = "changed after the fact"  # the report holds its own copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.rows_sent = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.rejected_by_reason["invalid_email"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        report.invalid_entry_samples["0"] = ""  # type: ignore[index]
    with pytest.raises(TypeError):
        report.error["code"] = 200  # type: ignore[index]
    with pytest.raises(AttributeError):
        report.sessions.append({})  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        report.sessions[0]["mode"] = "replace"  # type: ignore[index]

    plain = report.to_dict()
    assert plain["invalid_entry_samples"] == {"0": "not a hash"}
    assert plain["sessions"] == [{"session_id": report.session_id, "mode": "add"}]
    assert plain["error"]["code"] == 190
    for name in ("rejected_by_reason", "invalid_entry_samples", "error"):
        assert type(plain[name]) is dict
    assert type(plain["sessions"]) is list and type(plain["sessions"][0]) is dict
    assert list(plain) == [f.name for f in dataclasses.fields(engine.Report)]
    assert orjson.loads(orjson.dumps(plain)) == plain
    plain["rejected_by_reason"].clear()  # a copy: the report keeps its counts
    assert report.rejected_by_reason and report.to_dict() != plain
    assert pickle.loads(pickle.dumps(report)) == report
    assert copy.deepcopy(report) == report


async def test_rows_rejected_upstream_count_with_their_reasons(
    fake: FakeGraph, people: Path, tmp_path: Path
) -> None:
    """Hashed elsewhere (Spark executors...): rejects travel as Reject items, reasons intact."""
    with open_input(str(people)) as source:
        keys = source.bind(None, {})
        items: list[Any] = []
        for chunk in source.chunks():
            for n, cells in zip(chunk.row_numbers, chunk.values, strict=True):
                row, why = refnorm.judge_row(keys, cells, default_country_code="1")
                if row is not None:
                    items.append(tuple(map(str, row)))
                else:
                    assert why is not None
                    items.append(engine.Reject(n, *why))
    rejected = [r for r in items if isinstance(r, engine.Reject)]
    rejects_file = tmp_path / "rejects.csv"
    report = await engine.upload(
        Rows(items, columns=list(EIGHT_KEYS)),
        **options(fake, prehashed=True, rejects_path=rejects_file),
    )
    assert report.status == "completed", report.message
    assert report.rows_read == N_ROWS
    assert report.rejected_by_reason == {"invalid_email": len(rejected)}
    check_counts(report.to_dict())
    assert fake.members(AUDIENCE) == expected_rows(people)
    with open(rejects_file, newline="") as f:
        logged = list(csv.DictReader(f))
    assert [int(r["row"]) for r in logged] == [items.index(r) + 1 for r in rejected]
    assert {(r["key"], r["reason"]) for r in logged} == {("EMAIL", "invalid_email")}


def test_hash_rows_gives_payload_rows_and_rejects_by_the_rules() -> None:
    """`engine.hash_rows` (what a Spark executor runs): each row as the reference reads it."""
    people = [
        {"email": " John@Example.com ", "phone": "+1 (555) 010-2030"},
        {"email": "not an address", "phone": ""},
        {"email": "", "phone": "555 010 9999"},
    ]
    out = engine.hash_rows(people, "EMAIL,PHONE", default_country_code="1")
    keys = ("EMAIL", "PHONE")
    expected = [
        refnorm.judge_row(keys, (p["email"], p["phone"]), default_country_code="1") for p in people
    ]
    assert out == [tuple(row) for row, _ in expected if row is not None] + [
        engine.Reject(2, "EMAIL", "invalid_email")
    ]
    assert [reject for _, reject in expected] == [None, ("EMAIL", "invalid_email"), None]
