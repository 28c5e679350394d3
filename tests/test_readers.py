"""The file readers: every input row lands once, as a value row or a reject."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import os
import shutil
import sys
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine._errors import InputError
from engine._input import blocks as readers
from engine._input.blocks import BLOCK_BYTES, CsvBlock
from engine._input.delimited import _line_ends
from engine._input.files import open_input
from engine._input.opening import MAX_FIELD, MAX_LINE
from engine._rows import RawChunk

Rows = list[tuple[int, tuple[str, ...]]]
Rejects = list[tuple[int, str]]


def read_all(
    path: str,
    keys: list[str] | None = None,
    column_map: dict[str, str] | None = None,
    fmt: str | None = None,
    chunk_rows: int = 5000,
) -> tuple[tuple[str, ...], Rows, Rejects]:
    with open_input(path, fmt) as source:
        bound = source.bind(keys, column_map or {})
        chunks = list(source.chunks(chunk_rows))
    rows = [(n, v) for c in chunks for n, v in zip(c.row_numbers, c.values, strict=True)]
    rejects = [(r.row, r.reason) for c in chunks for r in c.rejects]
    assert all(r.key == "" for c in chunks for r in c.rejects)
    return bound, rows, rejects


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


CSV_CASES = {
    "plain": (
        b"email,phone\na@x.com,123\nb@x.com,456\n",
        [(1, ("a@x.com", "123")), (2, ("b@x.com", "456"))],
        [],
    ),
    "bom": (b"\xef\xbb\xbfemail,phone\na@x.com,1\n", [(1, ("a@x.com", "1"))], []),
    "crlf": (b"email,phone\r\na@x.com,1\r\n", [(1, ("a@x.com", "1"))], []),
    "quoted newline keeps numbering": (
        b'email,phone\n"a@x\ncom",1\nb@x.com,2\n',
        [(1, ("a@x\ncom", "1")), (2, ("b@x.com", "2"))],
        [],
    ),
    "quoted comma and quote": (b'email,phone\n"a,""b""",1\n', [(1, ('a,"b"', "1"))], []),
    "blank lines are rows": (
        b"email,phone\na@x.com,1\n\nb@x.com,2\n\n",
        [(1, ("a@x.com", "1")), (3, ("b@x.com", "2"))],
        [(2, "blank_line"), (4, "blank_line")],
    ),
    "ragged rows": (
        b"email,phone\na@x.com\nb@x.com,2\nc@x.com,3,extra\n",
        [(2, ("b@x.com", "2"))],
        [(1, "ragged_row"), (3, "ragged_row")],
    ),
    "non-utf8 bytes": (
        b"email,phone\na\xff@x.com,1\nb@x.com,2\nc@x.com,\xe9\n",
        [(2, ("b@x.com", "2"))],
        [(1, "bad_encoding"), (3, "bad_encoding")],
    ),
    "utf8 names kept": (
        "email,fn\nz@x.com,Zoë 山田\n".encode(),
        [(1, ("z@x.com", "Zoë 山田"))],
        [],
    ),
    "bad byte in an unbound column": (
        b"email,note\na@x.com,\xff\n",
        [],
        [(1, "bad_encoding")],  # the whole row is suspect, not just the bound cells
    ),
    "semicolon": (b"email;phone\na@x.com;1\n", [(1, ("a@x.com", "1"))], []),
    "tab": (b"email\tphone\na@x.com\t1\n", [(1, ("a@x.com", "1"))], []),
    "pipe": (b"email|phone\na@x.com|1,2\n", [(1, ("a@x.com", "1,2"))], []),
    "no trailing newline": (b"email,phone\na@x.com,1", [(1, ("a@x.com", "1"))], []),
    "header only": (b"email,phone\n", [], []),
}


@pytest.mark.parametrize("data,rows,rejects", CSV_CASES.values(), ids=CSV_CASES.keys())
def test_csv_cases(tmp_path: Path, data: bytes, rows: Rows, rejects: Rejects) -> None:
    # The schema is inferred from the header: email, phone and fn are aliases, note is not.
    _, got_rows, got_rejects = read_all(write(tmp_path, "in.csv", data))
    assert got_rows == rows
    assert got_rejects == rejects


def test_tsv_name_means_tab_even_when_commas_dominate(tmp_path: Path) -> None:
    path = write(tmp_path, "in.tsv", b"email\tnote\na@x.com\tx,y,z\n")
    assert read_all(path, ["EMAIL"])[1] == [(1, ("a@x.com",))]


@pytest.mark.parametrize("quoted", [False, True])
def test_huge_field_is_rejected_without_losing_the_next_rows(tmp_path: Path, quoted: bool) -> None:
    big = "x" * (MAX_FIELD + 10)
    if quoted:
        big = '"' + "line\n" * 20 + big + '"'
    data = f"email,note\na@x.com,1\nb@x.com,{big}\nc@x.com,3\n".encode()
    _, rows, rejects = read_all(write(tmp_path, "in.csv", data), ["EMAIL"])
    assert rows == [(1, ("a@x.com",)), (3, ("c@x.com",))]
    assert rejects == [(2, "field_too_large")]


def test_line_beyond_the_cap_stops_the_read_naming_the_row(tmp_path: Path) -> None:
    # A line past MAX_LINE is no people list: reading it whole would cost its size many times.
    big = b"y" * (MAX_LINE + BLOCK_BYTES)
    data = b"email,note\na@x.com,1\nb@x.com," + big + b"\nc@x.com,3\n"
    with pytest.raises(InputError, match="data row 2: a line is longer than 4 MiB"):
        read_all(write(tmp_path, "in.csv", data), ["EMAIL"])


def test_gzip_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "in.csv.gz", gzip.compress(b"email\na@x.com\n\nb@x.com\n"))
    assert read_all(csv_path) == (
        ("EMAIL",),
        [(1, ("a@x.com",)), (3, ("b@x.com",))],
        [(2, "blank_line")],
    )
    jsonl = b'{"email": "a@x.com"}\nnot json\n{"email": "b@x.com"}\n'
    jsonl_path = write(tmp_path, "in.jsonl.gz", gzip.compress(jsonl))
    assert read_all(jsonl_path) == (
        ("EMAIL",),
        [(1, ("a@x.com",)), (3, ("b@x.com",))],
        [(2, "invalid_json")],
    )


def test_truncated_gzip_raises_input_error_with_the_row_reached(tmp_path: Path) -> None:
    body = b"email\n" + b"".join(b"user%d@example.com\n" % i for i in range(200_000))
    packed = gzip.compress(body)
    path = write(tmp_path, "in.csv.gz", packed[: len(packed) // 2])
    with open_input(path) as source:
        source.bind(None, {})
        seen = 0
        with pytest.raises(InputError, match=r"unreadable after data row \d+") as info:
            for chunk in source.chunks(1000):
                seen += chunk.rows_read
    reached = int(str(info.value).split("data row ")[1].split(":")[0])
    assert 0 < seen <= reached < 200_000


def test_not_gzip_despite_the_name(tmp_path: Path) -> None:
    # gzip's own message quotes the file's first bytes: not passed on.
    with pytest.raises(InputError, match="not valid gzip data") as info:
        open_input(write(tmp_path, "in.csv.gz", b"email\na@x.com\n"))
    assert "em" not in str(info.value).split(":")[-1]


def test_jsonl_lines(tmp_path: Path) -> None:
    data = (
        b"\xef\xbb\xbf\n"  # BOM, then a blank line before the first object
        b"[1, 2]\n"
        b'{"email": "a@x.com", "phone": 15551234567, "fn": null}\n'
        b"{garbage\n"
        b'{"email": "b\xff@x.com"}\n'
        b"   \n"
        b'{"phone": 1.5, "fn": {"nested": 1}, "email": true}\n'
        b'{"email": "c@x.com"}'
    )
    path = write(tmp_path, "in.jsonl", data)
    with open_input(path) as source:
        assert source.columns == ["email", "phone", "fn"]
    keys, rows, rejects = read_all(path)
    assert keys == ("EMAIL", "PHONE", "FN")
    assert rows == [
        (3, ("a@x.com", "15551234567", "")),
        (7, ("true", "1.5", "")),
        (8, ("c@x.com", "", "")),
    ]
    assert rejects == [
        (1, "blank_line"),
        (2, "invalid_json"),
        (4, "invalid_json"),
        (5, "bad_encoding"),
        (6, "blank_line"),
    ]


def test_jsonl_map_may_name_a_key_the_first_object_lacks(tmp_path: Path) -> None:
    path = write(
        tmp_path, "in.ndjson", b'{"email": "a@x.com"}\n{"email": "b@x.com", "tel2": "9"}\n'
    )
    keys, rows, _ = read_all(path, None, {"PHONE": "tel2"})
    assert keys == ("EMAIL", "PHONE")
    assert rows == [(1, ("a@x.com", "")), (2, ("b@x.com", "9"))]


def test_parquet_with_nulls_ints_and_binary(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "Email": ["a@x.com", None, "c@x.com", "d@x.com"],
            "phone": pa.array([15551234567, 2, None, 4], pa.int64()),
            "ltv": [1.5, None, 3.0, 4.25],
            "first_name": pa.array([b"Zo\xc3\xab", b"x", b"\xff", None], pa.binary()),
        }
    )
    path = str(tmp_path / "in.parquet")
    pq.write_table(table, path)
    keys, rows, rejects = read_all(path, chunk_rows=3)
    assert keys == ("EMAIL", "PHONE", "LOOKALIKE_VALUE", "FN")
    assert rows == [
        (1, ("a@x.com", "15551234567", "1.5", "Zoë")),
        (2, ("", "2", "", "x")),
        (4, ("d@x.com", "4", "4.25", "")),
    ]
    assert rejects == [(3, "bad_encoding")]
    with pytest.raises(InputError, match="column 'mail' for EMAIL not found"):
        read_all(path, ["EMAIL"], {"EMAIL": "mail"})


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now raises ImportError
    with pytest.raises(InputError, match=r"install audience-engine\[parquet\]"):
        open_input(write(tmp_path, "in.pq", b"PAR1"))


def test_corrupt_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    with pytest.raises(InputError, match="cannot read parquet"):
        open_input(write(tmp_path, "in.parquet", b"not parquet at all"))


def fake_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes, buffered: bool = False) -> None:
    raw: BinaryIO = io.BytesIO(data)
    if buffered:
        raw = cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, raw)))  # peek(), like stdin
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))


@pytest.mark.parametrize(
    "data,fmt,buffered",
    [
        (b"email;fn\na@x.com;Al\n", None, False),
        (b'{"email": "a@x.com", "fn": "Al"}\n', "jsonl", False),
        (gzip.compress(b"email,fn\na@x.com,Al\n"), None, True),
    ],
    ids=["csv", "jsonl", "gzip-sniffed"],
)
def test_stdin(
    monkeypatch: pytest.MonkeyPatch, data: bytes, fmt: str | None, buffered: bool
) -> None:
    fake_stdin(monkeypatch, data, buffered)
    with open_input("-", fmt) as source:
        assert source.fingerprint() == "stdin"
        assert source.bind(None, {}) == ("EMAIL", "FN")
        chunks = list(source.chunks())
    assert [(c.row_numbers, c.values, c.rejects) for c in chunks] == [
        ([1], [("a@x.com", "Al")], [])
    ]
    assert not sys.stdin.buffer.closed, "closing the input must leave stdin open"


def test_parquet_from_stdin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stdin(monkeypatch, b"")
    with pytest.raises(InputError, match="parquet"):
        open_input("-", "parquet")


@pytest.mark.parametrize(
    "header,expected",
    [
        (
            "E-Mail,Phone Number,First.Name,surname,Zip Code,City,Province,Country_Code,Sex",
            ("EMAIL", "PHONE", "FN", "LN", "ZIP", "CT", "ST", "COUNTRY", "GEN"),
        ),
        (
            "customer_id,year_of_birth,dob_month,birth_day,first_initial,IDFA,ltv",
            ("EXTERN_ID", "DOBY", "DOBM", "DOBD", "FI", "MADID", "LOOKALIKE_VALUE"),
        ),
        ("notes,EMAIL,mail,extern_id", ("EMAIL", "EXTERN_ID")),  # first column for a key wins
        ("mobile_advertiser_id,mobile,tel,cell", ("MADID", "PHONE")),
    ],
)
def test_inferred_schema_follows_column_order(
    tmp_path: Path, header: str, expected: tuple[str, ...]
) -> None:
    path = write(tmp_path, "in.csv", (header + "\n").encode())
    with open_input(path) as source:
        assert source.bind(None, {}) == expected


def test_map_adds_keys_and_picks_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"id,work mail,email,given\n7,w@x.com,e@x.com,Al\n")
    keys, rows, _ = read_all(path, None, {"email": "work mail", "FN": "given", "FI": "given"})
    assert keys == ("EMAIL", "FN", "FI")
    assert rows == [(1, ("w@x.com", "Al", "Al"))]
    keys, rows, _ = read_all(path, ["FN", "EMAIL"], {"FN": "GIVEN"})  # case forgiven
    assert keys == ("FN", "EMAIL")
    assert rows == [(1, ("Al", "e@x.com"))]


@pytest.mark.parametrize(
    "keys,column_map,message",
    [
        (["EMAIL", "FOO"], {}, "unknown key 'FOO'"),
        (None, {"BAR": "email"}, "unknown key 'BAR'"),
        (
            ["EMAIL"],
            {"EMAIL": "mail"},
            "column 'mail' for EMAIL not found; the header has 2 columns$",
        ),
        (["PHONE"], {}, "no column for PHONE"),
        (["EMAIL", "EMAIL"], {}, "appears twice"),
        (["EMAIL"], {"PHONE": "x"}, "PHONE, which the schema does not list"),
    ],
)
def test_bind_errors(
    tmp_path: Path, keys: list[str] | None, column_map: dict[str, str], message: str
) -> None:
    path = write(tmp_path, "in.csv", b"email,x\na@x.com,1\n")
    with open_input(path) as source, pytest.raises(InputError, match=message):
        source.bind(keys, column_map)


def test_nothing_recognizable(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"foo,bar\n1,2\n")
    with open_input(path) as source, pytest.raises(InputError, match="no column maps to a key"):
        source.bind(None, {})


def test_chunks_before_bind_is_a_bug(tmp_path: Path) -> None:
    with (
        open_input(write(tmp_path, "in.csv", b"email\na\n")) as source,
        pytest.raises(RuntimeError),
    ):
        next(source.chunks())


@pytest.mark.parametrize(
    "name,data,fmt,message",
    [
        ("missing.csv", None, None, "cannot read input"),
        ("empty.csv", b"", None, "is empty"),
        ("blankhead.csv", b"\nemail\n", None, "header row is required"),
        ("empty.jsonl", b"", None, "is empty"),
        ("in.xlsx", b"x", None, "cannot tell the format"),
        ("in.csv", b"email\n", "xml", "unknown input format 'xml'"),
        ("in.parquet.gz", b"x", None, "not gzip"),
    ],
)
def test_open_errors(
    tmp_path: Path, name: str, data: bytes | None, fmt: str | None, message: str
) -> None:
    path = str(tmp_path / name) if data is None else write(tmp_path, name, data)
    with pytest.raises(InputError, match=message):
        open_input(path, fmt)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read input"):
        open_input(str(tmp_path), "csv")


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_chunk_boundaries(tmp_path: Path, name: str) -> None:
    if name.endswith(".csv"):
        lines = [b"email"] + [b"" if i % 4 == 0 else b"u%d@x.com" % i for i in range(1, 11)]
    else:
        lines = [b'{"email": "u0@x.com"}'] + [
            b"" if i % 4 == 0 else b'{"email": "u%d@x.com"}' % i for i in range(1, 10)
        ]
    path = write(tmp_path, name, b"\n".join(lines) + b"\n")
    with open_input(path) as source:
        source.bind(None, {})
        chunks = list(source.chunks(3))
    assert [c.rows_read for c in chunks] == [3, 3, 3, 1]
    numbers = sorted(n for c in chunks for n in [*c.row_numbers, *(r.row for r in c.rejects)])
    assert numbers == list(range(1, 11))
    for chunk in chunks:  # each chunk covers one contiguous stretch of rows
        mine = sorted([*chunk.row_numbers, *(r.row for r in chunk.rejects)])
        assert mine == list(range(mine[0], mine[0] + len(mine)))


def test_fingerprint(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"email\n" + b"a@x.com\n" * 50_000)
    with open_input(path) as source:
        first = source.fingerprint()
    with open_input(path) as source:
        assert source.fingerprint() == first
    assert len(first) == 64
    before = os.stat(path)
    data = bytearray(Path(path).read_bytes())
    data[-3] = ord("y")  # same size and (restored) mtime: only the tail differs
    Path(path).write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with open_input(path) as source:
        assert source.fingerprint() != first
    # A copy, or a touch, of the same bytes is the same input: resume must not refuse it.
    Path(path).write_bytes(bytes(data))
    with open_input(path) as source:
        edited = source.fingerprint()
    copy = tmp_path / "copy.csv"
    shutil.copyfile(path, copy)
    os.utime(copy, ns=(1, 1))
    with open_input(str(copy)) as source:
        assert source.fingerprint() == edited
    middle = bytearray(data)
    middle[len(middle) // 2 + 10] = ord("z")
    copy.write_bytes(bytes(middle))
    with open_input(str(copy)) as source:
        assert source.fingerprint() != edited


def test_close_is_idempotent(tmp_path: Path) -> None:
    source = open_input(write(tmp_path, "in.csv", b"email\na\n"))
    source.close()
    source.close()


CELL = st.text(alphabet='ab,"\n\r; ', max_size=6)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=st.lists(st.lists(CELL, min_size=0, max_size=4), max_size=12),
    chunk_rows=st.integers(1, 5),
)
def test_every_csv_row_counted_once(
    tmp_path: Path, table: list[list[str]], chunk_rows: int
) -> None:
    out = io.StringIO()
    # "\r\n" line ends make the writer quote cells holding either character, so the file
    # holds exactly len(table) records.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["email", "phone", "x"])
    for row in table:
        writer.writerow(row)  # ragged when the row has other than 3 cells; [] is a blank line
    path = write(tmp_path, "prop.csv", out.getvalue().encode())
    with open_input(path) as source:
        source.bind(None, {})
        chunks: list[RawChunk] = list(source.chunks(chunk_rows))
    numbers = [n for c in chunks for n in [*c.row_numbers, *(r.row for r in c.rejects)]]
    assert sorted(numbers) == list(range(1, len(table) + 1))
    assert all(0 < c.rows_read <= chunk_rows for c in chunks)
    good = {n: v for c in chunks for n, v in zip(c.row_numbers, c.values, strict=True)}
    for n, row in enumerate(table, 1):
        if len(row) == 3:
            assert good[n] == (row[0], row[1])


# Raw bytes folded onto the characters that matter to a CSV parser.
RAW_BYTES = bytes(b'ab,"\n\r \xff'[i % 8] for i in range(256))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=60).map(lambda b: b.translate(RAW_BYTES)))
def test_every_record_of_raw_garbage_counted_once(tmp_path: Path, body: bytes) -> None:
    # Unbalanced quotes, stray \r, bad UTF-8: whatever csv makes of it, each record is one row.
    data = b"email,phone,x\r\n" + body
    path = write(tmp_path, "raw.csv", data)
    with open_input(path) as source:
        source.bind(None, {})
        chunks = list(source.chunks(2))
    text = data.decode("utf-8", "surrogateescape")
    records = len(list(csv.reader(io.StringIO(text, newline="")))) - 1
    numbers = [n for c in chunks for n in [*c.row_numbers, *(r.row for r in c.rejects)]]
    assert sorted(numbers) == list(range(1, records + 1))


PLAIN_CELL = st.text(alphabet="ab@.é -;\t", max_size=5)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=st.lists(st.lists(PLAIN_CELL, min_size=1, max_size=4), max_size=30),
    crlf=st.booleans(),
    block=st.sampled_from([1, 7, 64, 1 << 20]),
    chunk_rows=st.integers(1, 7),
)
def test_split_path_reads_as_csv_reader_does(
    tmp_path: Path, table: list[list[str]], crlf: bool, block: int, chunk_rows: int
) -> None:
    # Unquoted files take the str.split path block by block; rows must come out exactly as
    # csv.reader reads them, ragged and blank lines included, whatever the block size.
    end = "\r\n" if crlf else "\n"
    text = "email,phone,x" + end + "".join(",".join(row) + end for row in table)
    path = write(tmp_path, "plain.csv", text.encode())
    records = list(csv.reader(io.StringIO(text, newline="")))[1:]
    want_rows = [(n, (r[0], r[1])) for n, r in enumerate(records, 1) if len(r) == 3]
    want_rejects = [
        (n, "ragged_row" if r else "blank_line") for n, r in enumerate(records, 1) if len(r) != 3
    ]
    saved = readers.BLOCK_BYTES
    readers.BLOCK_BYTES = block
    try:
        _, rows, rejects = read_all(path, chunk_rows=chunk_rows)
    finally:
        readers.BLOCK_BYTES = saved
    assert rows == want_rows
    assert sorted(rejects) == want_rejects


def test_a_quoted_block_between_plain_ones(tmp_path: Path) -> None:
    plain = "".join(f"u{i}@x.com,{i}\n" for i in range(2000))
    quoted = '"q@x.com","1"\n"multi\nline@x.com",2\n'
    path = write(tmp_path, "mixed.csv", ("email,phone\n" + plain + quoted + plain).encode())
    saved = readers.BLOCK_BYTES
    readers.BLOCK_BYTES = 4096
    try:
        _, rows, rejects = read_all(path, chunk_rows=1000)
    finally:
        readers.BLOCK_BYTES = saved
    assert rejects == []
    assert [n for n, _ in rows] == list(range(1, 4003))
    assert rows[2000] == (2001, ("q@x.com", "1"))
    assert rows[2001] == (2002, ("multi\nline@x.com", "2"))
    assert rows[-1] == (4002, ("u1999@x.com", "1999"))


def units_as_rows(path: str, chunk_rows: int) -> tuple[Rows, Rejects, int]:
    """What the pipeline reads: CSV blocks parsed as a hashing worker parses them; and how
    many units were blocks."""

    async def collect() -> list[RawChunk | CsvBlock]:
        with open_input(path) as source:
            source.bind(None, {})
            return [unit async for unit in source.aunits(chunk_rows)]

    units = asyncio.run(collect())
    chunks = [u.parse() if isinstance(u, CsvBlock) else u for u in units]
    rows = [(n, v) for c in chunks for n, v in zip(c.row_numbers, c.values, strict=True)]
    rejects = [(r.row, r.reason) for c in chunks for r in c.rejects]
    return rows, rejects, sum(isinstance(u, CsvBlock) for u in units)


BLOCK_CELL = st.text(alphabet='ab,"\n\r; é', max_size=6)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=st.lists(st.lists(BLOCK_CELL, min_size=0, max_size=4), max_size=30),
    crlf=st.booleans(),
    bom=st.booleans(),
    junk=st.sampled_from([b"", b"\xff\xfe,1,2\n", b"a\x00b,1,2\n", b"\n\n", b"x\ry,1,2\n"]),
    block=st.sampled_from([1, 16, 64, 1 << 20]),
    chunk_rows=st.integers(1, 7),
)
def test_blocks_for_workers_read_as_chunks_do(
    tmp_path: Path,
    table: list[list[str]],
    crlf: bool,
    bom: bool,
    junk: bytes,
    block: int,
    chunk_rows: int,
) -> None:
    # Quote-free blocks go to the workers whole, numbered by their line count; quoted
    # newlines, lone CRs, bad bytes, NULs and blank lines must still give the same rows,
    # numbers and reasons as reading the file in one process.
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["email", "phone", "x"])
    writer.writerows(table[: len(table) // 2])
    middle = out.getvalue().encode()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
    writer.writerows(table[len(table) // 2 :])
    data = (b"\xef\xbb\xbf" if bom else b"") + middle + junk + out.getvalue().encode()
    path = write(tmp_path, "blocks.csv", data)
    saved = readers.BLOCK_BYTES
    readers.BLOCK_BYTES = block
    try:
        _, want_rows, want_rejects = read_all(path, chunk_rows=chunk_rows)
        rows, rejects, _ = units_as_rows(path, chunk_rows)
    finally:
        readers.BLOCK_BYTES = saved
    assert rows == want_rows
    assert rejects == want_rejects


def test_plain_csv_goes_to_the_workers_in_blocks(tmp_path: Path) -> None:
    body = "".join(f"u{i}@x.com,{i}\r\n" for i in range(3000))
    path = write(tmp_path, "plain.csv", ("\ufeffemail,phone\r\n" + body).encode())
    saved = readers.BLOCK_BYTES
    readers.BLOCK_BYTES = 4096
    try:
        rows, rejects, blocks = units_as_rows(path, 1000)
    finally:
        readers.BLOCK_BYTES = saved
    assert blocks > 10 and rejects == []
    assert rows == [(i + 1, (f"u{i}@x.com", str(i))) for i in range(3000)]


def test_estimated_rows(tmp_path: Path) -> None:
    # Meta's estimated_num_total: near the real count where it is cheap, None where not.
    lines = b"".join(b"user%d@example.com,+1 555 %04d\n" % (i, i) for i in range(50_000))
    csv_path = write(tmp_path, "in.csv", b"email,phone\n" + lines)
    jsonl_path = write(tmp_path, "in.jsonl", b'{"email": "a@x.com"}\n' * 3_000)
    gz_path = write(tmp_path, "in.csv.gz", gzip.compress(b"email\n" + lines))
    with open_input(csv_path) as source:
        assert 45_000 <= (source.estimated_rows() or 0) <= 55_000
    with open_input(jsonl_path) as source:
        assert source.estimated_rows() == 3_000
    with open_input(gz_path) as source:
        assert source.estimated_rows() is None
    with open_input(write(tmp_path, "one.csv", b"email")) as source:
        assert source.estimated_rows() == 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"email": ["a@x.com"] * 1234}), tmp_path / "in.parquet")
    with open_input(str(tmp_path / "in.parquet")) as source:
        assert source.estimated_rows() == 1234


ONE_COLUMN_CELL = st.text(alphabet="aB@. \t,é\x00\x1c", max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(ONE_COLUMN_CELL, min_size=1, max_size=20),
    crlf=st.booleans(),
    last_newline=st.booleans(),
    bad_byte=st.booleans(),
    width=st.sampled_from([1, 1, 2]),
)
def test_cell_lines_are_the_cells_parse_reads(
    cells: list[str], crlf: bool, last_newline: bool, bad_byte: bool, width: int
) -> None:
    # A worker may take a one-column block's lines as its cells; whenever cell_lines() says
    # so, parse() must read exactly those cells (less a CRLF's "\r"), numbered in order,
    # with no reject. Blank lines, the delimiter, NULs and bad bytes are refused.
    end = "\r\n" if crlf else "\n"
    data = end.join(cells).encode() + (end.encode() if last_newline else b"")
    if bad_byte:
        data += b"\xff\n"
    assume(data)  # the reader makes no empty block
    block = CsvBlock(data, 40, ",", width, (0,))
    lines = block.cell_lines()
    chunk = block.parse()
    if lines is None:
        plain = width == 1 and "" not in cells and not bad_byte
        assert not plain or any("," in c or "\x00" in c for c in cells)
        return
    assert width == 1 and not bad_byte
    assert chunk.rejects == []
    assert chunk.row_numbers == list(range(41, 41 + len(lines)))
    assert chunk.values == [(line.decode().removesuffix("\r"),) for line in lines]


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_cell_lines_leave_long_lines_to_csv_reader(extra: int) -> None:
    # _split hands a line over MAX_FIELD to csv.reader (which rejects it); so must this.
    long = b"a" * (MAX_FIELD + extra)
    for data in (long + b"\n", b"x@y.z\n" * 5000 + long + b"\nq@r.s\n", long):
        lines = CsvBlock(data, 0, ",", 1, (0,)).cell_lines()
        assert (lines is None) == (extra > 0)
        if lines is not None:
            assert long in lines


@given(st.text(alphabet="a\r\n", max_size=30), st.booleans())
def test_line_ends_counts_lines_unless_a_cr_stands_alone(text: str, crlf: bool) -> None:
    data = (text.replace("\n", "\r\n") if crlf else text).encode()
    lone_cr = data.count(b"\r") != data.count(b"\r\n")
    assert _line_ends(data) == (None if lone_cr else data.count(b"\n"))
