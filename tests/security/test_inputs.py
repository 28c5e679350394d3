"""Hostile inputs to the readers, through the real CLI: each stops with exit 2 and a message
naming the row, in bounded memory and time, and no output quotes the input or a secret."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from engine.testing.fakegraph import FakeGraph

from ..conftest import APP_SECRET, TOKEN, Run, run_python, upload_args

# Raw values an input holds: no output may quote them.
EMAIL = "jane.doe.leak@example.com"
PHONE = "+15551234567"
SECRETS = (TOKEN, APP_SECRET, EMAIL, PHONE)
# The CLI's peak RSS, printed by the process itself as it exits.
# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak over exec into
# ru_maxrss, so a child of a big test process would report the test process's peak.
_PEAK_RSS = """
import re, runpy, sys
sys.argv = ["engine", *sys.argv[1:]]
try:
    runpy.run_module("engine", run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        peak = re.search(r"VmHWM:\\s*(\\d+) kB", status.read()).group(1)
    print(f"peak_rss_kb={peak}", file=sys.stderr)
"""
# Python, the engine and a small upload stay well below this; the attacks once took GBs.
MAX_RSS_MB = 200


async def upload(fake: FakeGraph, path: Path | str, *extra: str) -> tuple[Run, float]:
    """The CLI's upload of `path`, and its peak RSS in MB."""
    run = await run_python("-c", _PEAK_RSS, *upload_args(path, fake.base_url, *extra))
    peak = int(run.stderr.rsplit("peak_rss_kb=", 1)[1]) / 1024
    return run, peak


def assert_quiet(run: Run, *raw: str) -> None:
    """No secret and no raw value in any output."""
    for text in (run.stdout, run.stderr):
        for value in (*SECRETS, *raw):
            assert value not in text


async def test_a_huge_line_stops_the_read_in_bounded_memory(
    fake: FakeGraph, tmp_path: Path
) -> None:
    path = tmp_path / "long.csv"
    with open(path, "wb") as f:
        f.write(b"email\na@x.com\n")
        for _ in range(64):  # 64 MiB with no line end
            f.write(b"y" * 2**20)
    run, peak = await upload(fake, path, "--workers", "0")
    assert run.code == 2, run.stderr
    assert "data row 2: a line is longer than 4 MiB" in run.stderr
    assert peak < MAX_RSS_MB, peak
    assert fake.log == []
    assert_quiet(run, "yyyy")


async def test_dev_zero_stops_at_the_header(fake: FakeGraph) -> None:
    run, peak = await upload(fake, "/dev/zero", "--format", "csv")
    assert run.code == 2, run.stderr
    assert "header row" in run.stderr and "a line is longer than 4 MiB" in run.stderr
    assert peak < MAX_RSS_MB, peak


async def test_a_gzip_bomb_stops_at_its_ratio(fake: FakeGraph, tmp_path: Path) -> None:
    # 1 GiB of blank lines in about 1 MB: read in full it took minutes.
    path = tmp_path / "bomb.csv.gz"
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    block = b"\n" * 2**20
    with open(path, "wb") as f:
        f.write(packer.compress(b"email\n"))
        for _ in range(1024):
            f.write(packer.compress(block))
        f.write(packer.flush())
    run, peak = await upload(fake, path, "--workers", "0")
    assert run.code == 2, run.stderr
    assert "expands more than 200 times" in run.stderr
    assert peak < MAX_RSS_MB, peak
    assert fake.log == []


@pytest.mark.parametrize(
    "name,data,message",
    [
        # No header: the first row's values once came back as "columns are: ...".
        ("noheader.csv", f"{EMAIL},{PHONE}\nb@x.com,+15550000000\n", "the header has 2 columns"),
        (
            "dup.csv",
            f"email,phone,email\n{EMAIL},{PHONE},b@x.com\n",
            "columns 1 and 3 of the header have the same name",
        ),
        ("utf16.csv", f"email,phone\n{EMAIL},{PHONE}\n".encode("utf-16"), "looks like UTF-16"),
        ("utf16be.csv", f"email\n{EMAIL}\n".encode("utf-16-be"), "looks like UTF-16"),
        ("quoted.csv", f'"{EMAIL},{PHONE}\n', "the header has 1 column"),
    ],
)
async def test_bad_headers_are_named_never_quoted(
    fake: FakeGraph, tmp_path: Path, name: str, data: str | bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    run, _ = await upload(fake, path)
    assert run.code == 2, run.stderr
    assert message in run.stderr
    assert fake.log == []
    assert_quiet(run)


async def test_a_map_to_a_missing_column_names_no_value(fake: FakeGraph, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"{EMAIL},{PHONE}\n")
    run, _ = await upload(fake, path, "--schema", "EXTERN_ID", "--map", "EXTERN_ID=id")
    assert run.code == 2 and "column 'id' for EXTERN_ID not found" in run.stderr
    assert_quiet(run)
