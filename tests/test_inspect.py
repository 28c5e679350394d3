"""The inspection: counts a list's keys as the upload would send them, never shows a value,
renders as table, JSON and one self-contained HTML page, and rides along every dry run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine._input.blocks import CsvBlock
from engine._inspect.columns import block_columns
from engine._inspect.profile import SKETCH_SIZE, Profile, Sketch
from engine._inspect.result import grade_of, match_score

from .conftest import run_cli

ROWS = [
    ("email", "phone", "fn", "ln", "zip"),
    ("  Ann@Example.com ", "+1 555 0100 200", "Ann", "Lee", "94107"),
    ("ann@example.com", "15550100200", "ann", "lee", "94107"),  # the same person, normalized
    ("not-an-email", "", "Bob", "Roe", ""),  # invalid email, but names: still sent
    ("", "", "", "", ""),  # nothing: rejected
    ("cy@example.org", "12", "", "", "10001"),  # phone too short: invalid cell
]
SECRET_BITS = ("Ann@", "example", "0100", "Lee", "94107", "Bob", "not-an-email")


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text("\n".join(",".join(r) for r in ROWS) + "\n")
    return path


def test_counts_per_key_and_per_row(tmp_path: Path) -> None:
    result = engine.inspect(_csv(tmp_path))
    assert (result.rows, result.rows_valid, result.rows_rejected) == (5, 4, 1)
    assert result.rejected_by_reason == {"empty_row": 1}
    email = result.keys[0]
    assert (email.key, email.filled, email.valid, email.invalid) == ("EMAIL", 4, 3, 1)
    # "  Ann@Example.com " changed by trimming and lowercasing; the other two did not.
    assert email.changed_rate == round(1 / 3, 4)
    assert email.distinct == 2  # ann twice, cy once
    phone = result.keys[1]
    assert (phone.filled, phone.valid, phone.invalid) == (3, 2, 1)
    assert result.rows_by_valid_keys == {"0": 1, "1": 0, "2": 2, "3+": 2}
    assert result.key_mix == {"strong": 3, "name_place": 0, "weak": 1, "none": 1}
    assert result.duplicate_rows == 1  # rows 1 and 2 hash the same
    assert not result.estimated


def test_rows_the_key_refused_are_counted_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "emails.csv"
    path.write_text("email\na@b.co\nnope\n\nc@d.co\nnope2\n")
    result = engine.inspect(path)
    assert result.keys[0].rejected_by_reason == {"invalid_email": 2}
    assert result.rows_by_valid_keys["0"] == 3  # the blank line is an empty row


def test_sketch_is_exact_small_and_close_large() -> None:
    small = Sketch()
    small.add(range(100))
    assert small.estimate() == 100
    import hashlib

    big = Sketch()
    # 64-bit signed values, as hash() makes them.
    hashes = [
        int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big", signed=True)
        for i in range(50_000)
    ]
    for start in range(0, len(hashes), 5000):  # merged chunk by chunk, as the workers send
        part = Sketch()
        part.add(sorted(set(hashes[start : start + 5000]))[:SKETCH_SIZE])
        big.add(part.least)
    assert abs(big.estimate() - 50_000) / 50_000 < 0.05


def test_grade_follows_the_key_mix() -> None:
    assert grade_of(match_score({"strong": 100}, 100, 100)) == "A"
    assert grade_of(match_score({"name_place": 100}, 100, 100)) == "C"
    assert grade_of(match_score({"weak": 100}, 0, 100)) == "F"
    assert match_score({}, 0, 0) == 0.0


async def test_command_table_json_and_html_never_show_a_value(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    html, report = tmp_path / "i.html", tmp_path / "i.json"
    table = await run_cli("inspect", str(path), "--html", str(html), "--report", str(report))
    assert table.code == 0, table.stderr
    assert "expected match quality" in table.stdout and "EMAIL" in table.stdout
    as_json = await run_cli("inspect", str(path), "--json")
    assert orjson.loads(as_json.stdout)["rows"] == 5
    assert orjson.loads(report.read_bytes())["keys"][0]["valid"] == 3
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for out in (table.stdout, as_json.stdout, page, report.read_text()):
        for bit in SECRET_BITS:
            assert bit not in out


async def test_command_takes_the_upload_input_options(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("mail,other\na@b.co,x\n")
    run = await run_cli("inspect", str(path), "--map", "EMAIL=mail", "--schema", "EMAIL", "--json")
    assert run.code == 0, run.stderr
    assert [k["key"] for k in orjson.loads(run.stdout)["keys"]] == ["EMAIL"]


def test_every_dry_run_report_holds_the_inspection(tmp_path: Path) -> None:
    report = engine.upload_sync(
        _csv(tmp_path), audience="1", ad_account="act_1", dry_run=True
    ).to_dict()
    assert report["inspection"]["rows"] == 5
    assert report["inspection"]["grade"] in "ABCDF"


def test_a_dry_run_inspects_as_inspect_does(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    report = engine.upload_sync(path, audience="1", ad_account="act_1", dry_run=True).to_dict()
    assert report["inspection"] == orjson.loads(orjson.dumps(engine.inspect(path).to_dict()))


def test_workers_count_as_one_process_would(tmp_path: Path) -> None:
    # Several blocks over two worker processes: their sketches must agree on every value's
    # hash, or the same address counts once per worker.
    path = tmp_path / "repeats.csv"
    lines = [f"person{i % 1000}@example.com,{5550000000 + i % 1000}" for i in range(40_000)]
    path.write_text("email,phone\n" + "\n".join(lines) + "\n")
    pooled = engine.inspect(path, workers=2)
    assert [k.distinct for k in pooled.keys] == [1000, 1000]
    assert pooled.duplicate_rows == 39_000
    assert pooled == engine.inspect(path, workers=0)


def test_profiles_from_processes_that_hash_differently_do_not_merge() -> None:
    total, other = Profile(("EMAIL",)), Profile(("EMAIL",), probe=1)
    total.merge(Profile(("EMAIL",), probe=2))
    with pytest.raises(RuntimeError):
        total.merge(other)


_CELL = st.text(alphabet="ab ;\t\u00e9\u00a0x", max_size=6)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), width=st.integers(1, 4), crlf=st.booleans(), end=st.booleans())
def test_block_columns_read_as_the_upload_parses(
    data: st.DataObject, width: int, crlf: bool, end: bool
) -> None:
    # Blocks as the reader hands them: no quote, no lone CR; now and then a ragged row.
    rows = data.draw(st.lists(st.lists(_CELL, min_size=width, max_size=width), min_size=1))
    if data.draw(st.booleans()):
        rows[data.draw(st.integers(0, len(rows) - 1))].append("")
    text = ("\r\n" if crlf else "\n").join(map(",".join, rows)) + ("\r\n" if end and crlf else "")
    block = CsvBlock(text.encode(), 10, ",", width, tuple(reversed(range(width))))
    columns = block_columns(block)
    if columns is None:
        return
    chunk = block.parse()
    assert not chunk.rejects and chunk.row_numbers == list(range(11, 11 + len(columns[0])))
    assert columns == [[row[k] for row in chunk.values] for k in range(width)]


def test_block_columns_leave_odd_blocks_to_the_parser() -> None:
    def block(data: bytes, width: int = 2) -> CsvBlock:
        return CsvBlock(data, 0, ",", width, tuple(range(width)))

    assert block_columns(block(b"a,b\nc,d\n")) == [["a", "c"], ["b", "d"]]
    assert block_columns(block(b"a,b\nc,d,e\n")) is None  # a ragged row
    assert block_columns(block(b"a,b\n\nc,d\n")) is None  # a blank line
    assert block_columns(block(b"a,b\n\xff,d\n")) is None  # not UTF-8
    assert block_columns(block(b"a," + b"b" * (64 * 1024 + 1) + b"\n")) is None  # too long
