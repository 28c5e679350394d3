"""In-memory sources: chunking, row numbers, rejects, nulls, number text and lazy slicing."""

from __future__ import annotations

import datetime
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from engine._errors import InputError
from engine._input.memory import Rows, aopen_source, open_source
from engine._input.opening import MAX_FIELD
from engine._input.source import InputFile
from engine._rows import RawChunk, Reject

PEOPLE = [
    {"email": "a@example.com", "phone": "+1 555 0100", "first_name": "Ann"},
    {"email": "b@example.com", "phone": "+1 555 0101", "first_name": "Bob"},
    {"email": "c@example.com", "phone": "+1 555 0102", "first_name": "Cy"},
    {"email": "d@example.com", "phone": "+1 555 0103", "first_name": "Di"},
    {"email": "e@example.com", "phone": "+1 555 0104", "first_name": "Ed"},
]
KEYS = ("EMAIL", "PHONE", "FN")
TEXTS = [tuple(p.values()) for p in PEOPLE]


def read(
    source: InputFile,
    schema: list[str] | None = None,
    column_map: dict[str, str] | None = None,
    chunk_rows: int = 2,
) -> tuple[tuple[str, ...], list[RawChunk]]:
    with source:
        keys = source.bind(schema, column_map or {})
        return keys, list(source.chunks(chunk_rows))


def rows_of(chunks: list[RawChunk]) -> list[tuple[int, tuple[str, ...]]]:
    return [(n, v) for c in chunks for n, v in zip(c.row_numbers, c.values, strict=True)]


def rejects_of(chunks: list[RawChunk]) -> list[Reject]:
    return [r for c in chunks for r in c.rejects]


def frames() -> dict[str, Any]:
    """The same five people as each columnar type."""
    table = pa.Table.from_pylist(PEOPLE)
    return {
        "pandas": pd.DataFrame(PEOPLE),
        "polars": pl.DataFrame(PEOPLE),
        "arrow_table": table,
        "arrow_batch": table.to_batches()[0],
        "arrow_reader": pa.RecordBatchReader.from_batches(
            table.schema, table.to_batches(max_chunksize=3)
        ),
    }


@pytest.mark.parametrize("name", list(frames()))
def test_frames_chunk_with_row_numbers(name: str) -> None:
    keys, chunks = read(open_source(frames()[name]))
    assert keys == KEYS
    assert [c.rows_read for c in chunks] == [2, 2, 1]
    assert rows_of(chunks) == list(enumerate(TEXTS, 1))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: PEOPLE, id="dicts"),
        pytest.param(lambda: iter(PEOPLE), id="generator"),
        pytest.param(lambda: Rows(TEXTS, columns=["email", "phone", "first_name"]), id="rows"),
    ],
)
def test_iterables_chunk_with_row_numbers(make: Any) -> None:
    keys, chunks = read(open_source(make()))
    assert keys == KEYS
    assert [c.rows_read for c in chunks] == [2, 2, 1]
    assert rows_of(chunks) == list(enumerate(TEXTS, 1))


def test_tuples_are_taken_in_schema_order() -> None:
    keys, chunks = read(open_source(TEXTS), ["email", "phone", "fn"])
    assert keys == KEYS
    assert rows_of(chunks) == list(enumerate(TEXTS, 1))


def test_tuples_without_names_need_a_schema() -> None:
    with pytest.raises(InputError, match="schema="):
        read(open_source(TEXTS))


def test_empty_iterable_reads_nothing_with_a_schema() -> None:
    assert read(open_source([]), ["EMAIL"]) == (("EMAIL",), [])
    with pytest.raises(InputError, match="schema="):
        read(open_source([]))


def test_column_map_and_aliases_bind_as_for_files() -> None:
    people = [{"Contact": "a@example.com", "Mobile": "555", "Nickname": "Ann"}]
    keys, chunks = read(open_source(people), column_map={"email": "contact"})
    assert keys == ("EMAIL", "PHONE")  # "Nickname" is no alias; in column order
    assert rows_of(chunks) == [(1, ("a@example.com", "555"))]
    frame = pd.DataFrame(people)
    keys, chunks = read(open_source(frame), ["FN", "EMAIL"], {"FN": "Nickname", "EMAIL": "Contact"})
    assert rows_of(chunks) == [(1, ("Ann", "a@example.com"))]
    with pytest.raises(InputError, match="no column for PHONE"):
        read(open_source(Rows([("x",)], columns=["name"])), ["PHONE"])


def test_later_dicts_may_lack_or_add_keys() -> None:
    people = [{"email": "a@example.com"}, {"phone": "555", "email": None}, {}]
    keys, chunks = read(open_source(people), ["EMAIL", "PHONE"], {"PHONE": "phone"})
    assert keys == ("EMAIL", "PHONE")
    assert rows_of(chunks) == [(1, ("a@example.com", "")), (2, ("", "555")), (3, ("", ""))]


def test_bad_rows_are_rejected_never_dropped() -> None:
    people: list[Any] = [
        {"email": "a@example.com", "phone": "1"},
        "not a row",
        {"email": datetime.date(2020, 1, 1), "phone": "2"},
        {"email": "c@example.com", "phone": b"\xff\xfe"},
        {"email": "x" * (MAX_FIELD + 1), "phone": "3"},
        {"email": "d@example.com", "phone": ["nested"]},
        {"email": "e@example.com", "phone": "5"},
    ]
    keys, chunks = read(open_source(people), chunk_rows=3)
    assert keys == ("EMAIL", "PHONE")
    assert [c.rows_read for c in chunks] == [3, 3, 1]
    assert rows_of(chunks) == [(1, ("a@example.com", "1")), (7, ("e@example.com", "5"))]
    assert rejects_of(chunks) == [
        Reject(2, "", "invalid_row"),
        Reject(3, "EMAIL", "unsupported_value"),
        Reject(4, "PHONE", "bad_encoding"),
        Reject(5, "EMAIL", "field_too_large"),
        Reject(6, "PHONE", "unsupported_value"),
    ]


def test_ragged_and_wrong_kind_of_tuples_are_rejected() -> None:
    rows: list[Any] = [("a@example.com", "1"), ("b@example.com",), {"email": "c"}, ["d", "2"]]
    _, chunks = read(open_source(Rows(rows, columns=["email", "phone"])), chunk_rows=10)
    assert rows_of(chunks) == [(1, ("a@example.com", "1")), (4, ("d", "2"))]
    assert rejects_of(chunks) == [Reject(2, "", "ragged_row"), Reject(3, "", "invalid_row")]


def test_first_item_decides_what_rows_are() -> None:
    with pytest.raises(TypeError, match="dicts, tuples or lists"):
        open_source(["a@example.com", "b@example.com"])


@pytest.mark.parametrize("source", [{"email": ["a@example.com"]}, 42, b"email\na@b.c\n"])
def test_unsupported_objects_are_a_type_error(source: Any) -> None:
    with pytest.raises(TypeError, match="cannot read rows"):
        open_source(source)


def test_polars_lazy_frame_asks_for_collect() -> None:
    with pytest.raises(TypeError, match="collect"):
        open_source(pl.LazyFrame(PEOPLE))


def test_format_is_for_paths_only() -> None:
    with pytest.raises(InputError, match="format"):
        open_source(PEOPLE, "csv")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (float("nan"), ""),
        (pd.NA, ""),
        (pd.NaT, ""),
        (Decimal("NaN"), ""),
        (15551234567, "15551234567"),
        (np.int64(15551234567), "15551234567"),
        (94107.0, "94107"),
        (np.float32(94107.0), "94107"),
        (44.5, "44.5"),
        (Decimal("94107.00"), "94107"),
        (Decimal("44.50"), "44.50"),
        (True, "true"),
        (b"caf\xc3\xa9", "café"),
        (np.str_("ann"), "ann"),
        ("  Ann ", "  Ann "),
    ],
)
def test_cells_become_the_text_a_file_would_hold(value: object, text: str) -> None:
    _, chunks = read(open_source([{"zip": value}]))
    assert rows_of(chunks) == [(1, (text,))]


def test_pandas_numbers_nulls_and_names() -> None:
    frame = pd.DataFrame(
        {
            "phone": np.array([15551234567, 15551234568, 15551234569], dtype=np.int64),
            "zip": [94107.0, np.nan, 2134.0],  # ints with a gap: pandas makes them floats
            "value": pd.array([10, None, 30], dtype="Int64"),
            "email": ["a@example.com", None, "c@example.com"],
        }
    )
    _, chunks = read(open_source(frame), chunk_rows=5)
    assert rows_of(chunks) == [
        (1, ("15551234567", "94107", "10", "a@example.com")),
        (2, ("15551234568", "", "", "")),
        (3, ("15551234569", "2134", "30", "c@example.com")),
    ]


def test_pandas_repeated_and_non_string_column_names() -> None:
    frame = pd.DataFrame([["a@example.com", "b@example.com", "x"]], columns=["email", "email", 7])
    source = open_source(frame)
    assert source.columns == ["email", "email", "7"]
    assert rows_of(read(source, ["EXTERN_ID"], {"EXTERN_ID": "7"})[1]) == [(1, ("x",))]
    # Which "email" was meant cannot be told, as in a CSV file: refused, naming positions.
    with pytest.raises(InputError, match="columns 1 and 2 of the header have the same name"):
        open_source(frame).bind(["EMAIL"], {})


def test_polars_null_and_nan_are_missing() -> None:
    frame = pl.DataFrame({"zip": [94107.0, float("nan"), None], "phone": [1, None, 3]})
    _, chunks = read(open_source(frame), chunk_rows=5)
    assert rows_of(chunks) == [(1, ("94107", "1")), (2, ("", "")), (3, ("", "3"))]


def test_unsupported_frame_cell_rejects_only_its_row() -> None:
    frame = pd.DataFrame({"email": ["a@example.com", datetime.date(2020, 1, 1), "c@x.org"]})
    _, chunks = read(open_source(frame), chunk_rows=5)
    assert rows_of(chunks) == [(1, ("a@example.com",)), (3, ("c@x.org",))]
    assert rejects_of(chunks) == [Reject(2, "EMAIL", "unsupported_value")]


def test_a_column_bound_twice_is_read_once_per_key() -> None:
    table = pa.table({"id": ["u1", "u2"]})
    _, chunks = read(open_source(table), ["EXTERN_ID", "EMAIL"], {"EXTERN_ID": "id", "EMAIL": "id"})
    assert rows_of(chunks) == [(1, ("u1", "u1")), (2, ("u2", "u2"))]


def test_arrow_stream_is_cut_into_whole_chunks_lazily() -> None:
    served = 0
    schema = pa.schema([("email", pa.string())])

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal served
        for i in range(10):  # ten batches of three rows
            served += 1
            yield pa.record_batch([[f"{i}.{j}@example.com" for j in range(3)]], schema=schema)

    source = open_source(pa.RecordBatchReader.from_batches(schema, batches()))
    source.bind(None, {})
    chunks = source.chunks(5)
    first = next(chunks)
    assert first.row_numbers == [1, 2, 3, 4, 5]
    assert served == 2  # only the batches the first chunk needed
    rest = list(chunks)
    assert [c.rows_read for c in rest] == [5] * 5
    assert rest[-1].row_numbers[-1] == 30
    source.close()


def big_frame(name: str, n: int) -> Any:
    """`n` people as a frame of the given kind: one text, one int and one float column."""
    phones = np.arange(15550000000, 15550000000 + n, dtype=np.int64)
    emails = np.array([f"user{i}@example.com" for i in range(n)], dtype=object)
    columns = {"email": emails, "phone": phones, "zip": (phones % 100_000).astype(float)}
    if name == "pandas":
        return pd.DataFrame(columns)
    if name == "polars":
        return pl.DataFrame(columns)
    table = pa.table(columns)
    if name == "arrow":  # in two chunks, with one slice straddling them
        return pa.concat_tables([table.slice(0, n // 2 + 7), table.slice(n // 2 + 7)])
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(n // 4))


@pytest.mark.parametrize("name", ["pandas", "polars", "arrow", "reader"])
def test_a_big_frame_is_read_a_slice_at_a_time(name: str) -> None:
    """The first chunk costs memory for one chunk, not for the frame (never copied whole)."""
    n = 1_000_000
    source = open_source(big_frame(name, n))
    source.bind(None, {})
    chunks = source.chunks(1000)
    previous = pa.default_memory_pool()
    arrow = pa.proxy_memory_pool(previous)  # tracemalloc cannot see Arrow's own memory
    pa.set_memory_pool(arrow)
    tracemalloc.start()  # Python objects and numpy buffers (not polars' memory either)
    try:
        first = next(chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    assert first.row_numbers == list(range(1, 1001))
    assert first.values[0] == ("user0@example.com", "15550000000", "0")
    # The email column as Python strings alone would take over 60 MB, its pointers 8 MB.
    assert peak < 2_000_000
    # Nothing new in Arrow's memory pool either, even for a moment: a slice is a view
    # (combine_chunks, a cast or a take of the frame would allocate tens of MB there).
    assert arrow.max_memory() < 1_000_000
    assert sum(c.rows_read for c in chunks) == n - 1000
    source.close()


def test_polars_is_read_through_slices_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """polars' memory is its own (tracemalloc misses it), so watch what is called on what:
    every row-reading call is on a slice of at most one chunk's rows, never the frame."""
    frame = big_frame("polars", 10_000)
    calls: list[tuple[str, int, int | None]] = []  # (method, rows of the frame, length)
    readers = ["slice", "to_series", "get_column", "get_columns", "to_dict", "to_dicts"]
    readers += ["rows", "iter_rows", "iter_slices", "to_numpy", "to_pandas", "to_arrow"]
    readers += ["rechunk", "select", "with_columns", "cast", "__getitem__", "__iter__"]

    def spy(name: str) -> Any:
        real = getattr(pl.DataFrame, name)

        def method(self: pl.DataFrame, *args: Any, **kwargs: Any) -> Any:
            length = args[1] if name == "slice" and len(args) > 1 else None
            calls.append((name, self.height, length))
            return real(self, *args, **kwargs)

        return method

    for name in readers:
        monkeypatch.setattr(pl.DataFrame, name, spy(name))
    _, chunks = read(open_source(frame), chunk_rows=1000)
    monkeypatch.undo()
    assert sum(c.rows_read for c in chunks) == 10_000
    slices = [c for c in calls if c[0] == "slice"]
    assert slices == [("slice", 10_000, 1000)] * 10
    assert all(rows <= 1000 for name, rows, _ in calls if name != "slice")


def test_memory_sources_have_a_fixed_fingerprint() -> None:
    assert open_source(PEOPLE).fingerprint() == "memory"
    assert open_source(pd.DataFrame(PEOPLE)).fingerprint() == "memory"


async def people_stream(served: list[int]) -> AsyncIterator[dict[str, str]]:
    for i, person in enumerate(PEOPLE):
        served.append(i)
        yield person


async def test_async_iterable_is_read_on_the_loop_lazily() -> None:
    served: list[int] = []
    source = await aopen_source(people_stream(served))
    assert served == [0]  # only the first item, to learn the columns
    assert source.bind(None, {}) == KEYS
    chunks = source.achunks(2)
    first = await anext(chunks)
    assert first.row_numbers == [1, 2]
    assert served == [0, 1]
    rest = [c async for c in chunks]
    assert rows_of([first, *rest]) == list(enumerate(TEXTS, 1))


async def test_async_tuples_with_names_and_rejects() -> None:
    async def rows() -> AsyncIterator[Any]:
        yield ("a@example.com", 1)
        yield ("b@example.com",)
        yield ("c@example.com", 3.0)

    source = await aopen_source(Rows(rows(), columns=["email", "phone"]))
    source.bind(None, {})
    chunks = [c async for c in source.achunks(10)]
    assert rows_of(chunks) == [(1, ("a@example.com", "1")), (3, ("c@example.com", "3"))]
    assert rejects_of(chunks) == [Reject(2, "", "ragged_row")]


async def test_async_empty_iterable_with_a_schema() -> None:
    async def nothing() -> AsyncIterator[Any]:
        for _ in ():
            yield _

    source = await aopen_source(nothing())
    assert source.bind(["email"], {}) == ("EMAIL",)
    assert [c async for c in source.achunks()] == []


def test_async_iterable_needs_aopen_source() -> None:
    with pytest.raises(TypeError, match="aopen_source"):
        open_source(people_stream([]))


async def test_aopen_source_opens_everything_else_too(tmp_path: Any) -> None:
    path = tmp_path / "people.csv"
    path.write_text("email\na@example.com\n")
    for source in (path, [{"email": "a@example.com"}], pa.table({"email": ["a@example.com"]})):
        opened = await aopen_source(source)
        assert opened.bind(None, {}) == ("EMAIL",)
        opened.close()


def test_rejects_from_upstream_keep_their_reason_and_take_their_place() -> None:
    """A Reject item (say from executors that normalized the rows) is read and rejected."""
    rows: list[Any] = [
        ("a@example.com", "1"),
        Reject(7, "EMAIL", "invalid_email"),  # 7: its number upstream, not here
        ("c@example.com", "3"),
        Reject(1, "", "empty_row"),
    ]
    _, chunks = read(open_source(Rows(rows, columns=["email", "phone"])), chunk_rows=2)
    assert [c.rows_read for c in chunks] == [2, 2]
    assert rows_of(chunks) == [(1, ("a@example.com", "1")), (3, ("c@example.com", "3"))]
    assert rejects_of(chunks) == [Reject(2, "EMAIL", "invalid_email"), Reject(4, "", "empty_row")]
    people: list[Any] = [PEOPLE[0], Reject(1, "PHONE", "invalid_phone"), PEOPLE[1]]
    _, chunks = read(open_source(people), chunk_rows=5)
    assert rows_of(chunks) == [(1, TEXTS[0]), (3, TEXTS[1])]
    assert rejects_of(chunks) == [Reject(2, "PHONE", "invalid_phone")]


async def test_async_rejects_from_upstream() -> None:
    async def rows() -> AsyncIterator[Any]:
        yield Reject(1, "EMAIL", "invalid_email")
        yield ("b@example.com",)

    source = await aopen_source(Rows(rows(), columns=["email"]))
    source.bind(None, {})
    chunks = [c async for c in source.achunks(10)]
    assert rows_of(chunks) == [(2, ("b@example.com",))]
    assert rejects_of(chunks) == [Reject(1, "EMAIL", "invalid_email")]


def test_rows_after_leading_rejects_say_what_the_rows_are() -> None:
    first = Reject(1, "EMAIL", "invalid_email")
    _, chunks = read(open_source([first, first, PEOPLE[0]]), chunk_rows=5)
    assert rows_of(chunks) == [(3, TEXTS[0])]
    assert rejects_of(chunks) == [first, Reject(2, "EMAIL", "invalid_email")]
    _, chunks = read(open_source([first, ("a@example.com",)]), schema=["EMAIL"])
    assert rows_of(chunks) == [(2, ("a@example.com",))]
    with pytest.raises(InputError, match="need schema="):  # nothing tells the columns
        read(open_source([first]))
    _, chunks = read(open_source([first]), schema=["EMAIL"])
    assert rejects_of(chunks) == [first]


async def test_async_rows_after_leading_rejects() -> None:
    async def rows() -> AsyncIterator[Any]:
        yield Reject(1, "EMAIL", "invalid_email")
        yield PEOPLE[0]

    source = await aopen_source(rows())
    assert source.bind(None, {}) == KEYS
    chunks = [c async for c in source.achunks(10)]
    assert rows_of(chunks) == [(2, TEXTS[0])]


async def test_a_cursor_is_read_on_the_callers_thread(tmp_path: Any) -> None:
    """sqlite3 refuses a cursor used from a thread other than its connection's."""
    db = sqlite3.connect(tmp_path / "people.db")
    db.execute("CREATE TABLE people (email, phone, first_name)")
    db.executemany("INSERT INTO people VALUES (?, ?, ?)", TEXTS)
    cursor = db.execute("SELECT * FROM people")
    source = open_source(Rows(cursor, columns=[d[0] for d in cursor.description]))
    assert source.bind(None, {}) == KEYS
    chunks = [c async for c in source.achunks(2)]
    assert [c.rows_read for c in chunks] == [2, 2, 1]
    assert rows_of(chunks) == list(enumerate(TEXTS, 1))
