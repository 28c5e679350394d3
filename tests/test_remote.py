"""Inputs at a URL, through the library and the CLI: S3 on moto's server and plain HTTP from a
static aiohttp server, both on loopback. Read in ranged blocks, gzip included, with the local
readers' bounds; credentials in a URL reach no output. The worker's allow-list of URL prefixes
is tested in tests/security/test_worker_urls.py."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine._errors import InputError
from engine._input import opening, remote
from engine._input.files import open_input
from engine._input.source import InputFile
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import AUDIENCE, run_cli, upload_args
from .object_store import ACCESS_KEY, SECRET_KEY, Bucket, WebFiles, s3, web_files
from .test_api import options

__all__ = ["s3", "web_files"]  # fixtures

SMALL_BLOCK = 64 * 1024  # many blocks from a test-sized file


@pytest.fixture
def people(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "people.csv", 3_000)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "BLOCK", SMALL_BLOCK)


def rows_of(source: InputFile) -> int:
    with source:
        source.bind(None, {})
        return sum(len(c.row_numbers) + len(c.rejects) for c in source.chunks())


@pytest.mark.parametrize("name", ["people.csv", "people.csv.gz"])
async def test_csv_and_gzip_csv_from_s3_fill_the_audience_like_the_file(
    fake: FakeGraph, s3: Bucket, people: Path, small_blocks: None, name: str
) -> None:
    data = people.read_bytes()
    assert len(data) > 3 * SMALL_BLOCK
    url = s3.put(f"exports/{name}", gzip.compress(data) if name.endswith(".gz") else data)
    report = await engine.upload(url, **options(fake))
    assert report.status == "completed", report.message
    assert report.rows_read == 3_000
    check_counts(report.to_dict())
    check_session(fake, report.to_dict())
    assert fake.members(AUDIENCE) == expected_rows(people)


async def test_http_input_is_read_in_ranged_blocks_never_whole(
    fake: FakeGraph, web_files: WebFiles, people: Path, small_blocks: None
) -> None:
    size = people.stat().st_size
    (web_files.root / "people.csv").write_bytes(people.read_bytes())
    report = await engine.upload(web_files.url("people.csv"), **options(fake))
    assert report.status == "completed", report.message
    assert fake.members(AUDIENCE) == expected_rows(people)
    gets = [r for m, r in web_files.requests if m == "GET"]
    assert len(gets) >= size // SMALL_BLOCK, gets
    for header in gets:
        assert header is not None and header.startswith("bytes="), gets
        start, end = (int(n) for n in header.removeprefix("bytes=").split("-"))
        assert end - start + 1 <= SMALL_BLOCK


async def test_a_missing_object_or_bucket_is_bad_input(fake: FakeGraph, s3: Bucket) -> None:
    for url in (s3.url("exports/missing.csv"), "s3://no-such-bucket-here/people.csv"):
        with pytest.raises(InputError) as caught:
            await engine.upload(url, **options(fake))
        assert str(caught.value) == f"cannot read input {url!r}: no such object"
    assert fake.log == []


async def test_credentials_in_a_url_reach_no_output(
    fake: FakeGraph, s3: Bucket, web_files: WebFiles, people: Path, tmp_path: Path
) -> None:
    s3.put("exports/people.csv", people.read_bytes())
    signed = s3.signed("exports/people.csv")
    signature = signed.split("X-Amz-Signature=")[1].split("&")[0]
    (web_files.root / "people.csv").write_bytes(people.read_bytes())
    password = "basic-auth-password-DO-NOT-LEAK"
    with_user = web_files.url("people.csv").replace("://", f"://reader:{password}@")
    secrets = (signature, password, SECRET_KEY, ACCESS_KEY)
    outputs: list[str] = []
    for url in (signed, with_user):
        run = await run_cli(*upload_args(url, fake.base_url, "--default-country-code", "1"))
        assert run.code == 0, run.stderr
        assert run.report["rows_read"] == 3_000
        outputs += [run.stdout, run.stderr]
    assert fake.members(AUDIENCE) == expected_rows(people)
    listed = await run_cli("status", "--list")
    assert sorted(c["job"]["source"] for c in orjson.loads(listed.stdout)) == sorted(
        (web_files.url("people.csv"), signed.split("?")[0])
    )
    outputs.append(listed.stdout)
    # A failure names the object, not its signature.
    gone = s3.signed("exports/gone.csv")
    failed = await run_cli(*upload_args(gone, fake.base_url))
    assert failed.code == 2
    assert failed.stderr.strip() == f"error: cannot read input {gone.split('?')[0]!r}: " + (
        "no such object"
    )
    html = tmp_path / "inspect.html"
    inspected = await run_cli("inspect", signed, "--json", "--html", str(html))
    assert inspected.code == 0, inspected.stderr
    assert orjson.loads(inspected.stdout)["rows"] == 3_000
    outputs += [failed.stderr, inspected.stdout, inspected.stderr, html.read_text()]
    outputs += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    for text in outputs:
        for secret in secrets:
            assert secret not in text


async def test_the_cli_inspects_and_uploads_from_s3(
    fake: FakeGraph, s3: Bucket, people: Path
) -> None:
    url = s3.put("exports/people.csv.gz", gzip.compress(people.read_bytes()))
    # The fixture's credentials are in this process's environment, which the CLI inherits.
    inspected = await run_cli("inspect", url, "--json")
    assert inspected.code == 0, inspected.stderr
    assert orjson.loads(inspected.stdout)["rows"] == 3_000
    run = await run_cli(*upload_args(url, fake.base_url, "--default-country-code", "1"))
    assert run.code == 0 and run.stderr == "", run.stderr  # no store library's noise either
    assert fake.members(AUDIENCE) == expected_rows(people)
    sent = len(fake.log)
    missing = await run_cli(*upload_args(s3.url("nothing.csv"), fake.base_url))
    assert missing.code == 2 and "no such object" in missing.stderr
    assert len(fake.log) == sent


async def test_parquet_and_jsonl_from_s3(s3: Bucket) -> None:
    table = pa.table({"email": [f"p{i}@example.com" for i in range(500)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=100)
    parquet = s3.put("p/people.parquet", sink.getvalue())
    lines = b"".join(orjson.dumps({"email": f"j{i}@example.com"}) + b"\n" for i in range(400))
    jsonl = s3.put("p/people.jsonl.gz", gzip.compress(lines))
    assert await asyncio.to_thread(rows_of, open_input(parquet)) == 500
    assert await asyncio.to_thread(rows_of, open_input(jsonl)) == 400


async def test_the_line_and_gzip_bounds_hold_for_remote_input(
    s3: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_line = s3.put("caps/long.csv", b"email\n" + b"a" * 1_000_000 + b"\n")
    with pytest.raises(InputError, match="data row 1: a line is longer than 0.0625 MiB"):
        await asyncio.to_thread(rows_of, open_input(long_line, max_line=64 * 1024))
    monkeypatch.setattr(opening, "INFLATION_FLOOR", 1 << 20)
    bomb = s3.put("caps/bomb.csv.gz", gzip.compress(b"email\n" + b"a@b.co\n" * 400_000))
    with pytest.raises(InputError, match="expands more than 200 times"):
        await asyncio.to_thread(rows_of, open_input(bomb))


async def test_a_rewritten_object_changes_the_fingerprint(s3: Bucket, people: Path) -> None:
    url = s3.put("exports/people.csv", people.read_bytes())

    def fingerprint() -> str:
        with open_input(url) as source:
            return source.fingerprint()

    first = await asyncio.to_thread(fingerprint)
    assert first not in ("stream", "stdin") and first == await asyncio.to_thread(fingerprint)
    s3.put("exports/people.csv", people.read_bytes() + b"\n")
    assert await asyncio.to_thread(fingerprint) != first


async def test_an_object_gone_mid_read_stops_the_read_naming_the_row(
    s3: Bucket, tmp_path: Path, small_blocks: None
) -> None:
    big = write_sample(tmp_path / "big.csv", 30_000)
    url = s3.put("exports/big.csv", big.read_bytes())

    def read_then_lose() -> Iterator[int]:
        with open_input(url) as source:
            source.bind(None, {})
            chunks = source.chunks(500)
            yield len(next(chunks).row_numbers)
            s3.client.delete_object(Bucket=s3.name, Key="exports/big.csv")
            for chunk in chunks:
                yield len(chunk.row_numbers)

    with pytest.raises(InputError) as caught:
        await asyncio.to_thread(lambda: list(read_then_lose()))
    message = str(caught.value)
    assert message.startswith("input became unreadable after data row ")
    assert message.endswith(": no such object") and s3.name not in message


def test_a_store_not_installed_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = importlib.import_module("fsspec.registry")  # the module, not fsspec.registry
    monkeypatch.setitem(sys.modules, "adlfs", None)  # as if not installed
    monkeypatch.delitem(registry._registry, "az", raising=False)
    with pytest.raises(InputError) as caught:
        open_input("az://lists/people.csv")
    assert "pip install 'audience-engine[az]'" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3://key:secret@lists/a.csv", "s3://lists/a.csv"),
        ("https://u:p@Host.Example:8443/a.csv?sig=x#frag", "https://host.example:8443/a.csv"),
        ("HTTP://[::1]/x/a.csv.gz?token=t", "http://[::1]/x/a.csv.gz"),
    ],
)
def test_a_url_is_shown_without_credentials(url: str, shown: str) -> None:
    assert remote.is_url(url) and remote.shown(url) == shown


def test_only_store_schemes_are_urls() -> None:
    assert not any(map(remote.is_url, ("people.csv", "-", "file:///etc/passwd", "ftp://h/a")))
    assert all(map(remote.is_url, ("s3://b/k", "gs://b/k", "az://c/k", "https://h/k")))
