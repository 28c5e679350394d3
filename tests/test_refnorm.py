"""The engine's normalizer graded by the reference one (tests/refnorm.py), which is written
from docs/normalization.md alone: the docs' examples, random cells, and the sample data."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import orjson
import pycountry
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._hashing.encode import encode_chunk, normalize_chunk
from engine._hashing.rules import normalize_value
from engine._hashing.schema import NormalizeOptions, Schema
from engine._input.files import open_input
from engine._rows import RawChunk
from engine.testing.sample import EIGHT_KEYS, write_sample

from . import refnorm

# The examples of docs/normalization.md's table: (key, raw, normalized or None for invalid).
TABLE = [
    ("EMAIL", "  Mary@Example.COM ", "mary@example.com"),
    ("EMAIL", "a@b", None),
    ("EMAIL", "mary@example.com.", None),
    ("PHONE", "+1 (555) 987-6543", "15559876543"),
    ("PHONE", "(555) 987-6543", "15559876543"),
    ("PHONE", "0044 20 7946 0958", "442079460958"),
    ("PHONE", "12", None),
    ("GEN", "Female", "f"),
    ("GEN", "x", None),
    ("DOBY", "1985", "1985"),
    ("DOBY", "1899", None),
    ("DOBM", "3", "03"),
    ("DOBM", "13", None),
    ("DOBD", "7", "07"),
    ("DOBD", "32", None),
    ("FN", "  Zoë ", "zoë"),
    ("FN", "José", "josé"),
    ("LN", "O'Neil", "oneil"),
    ("LN", "van der Berg", "vanderberg"),
    ("FN", "山田", "山田"),
    ("FN", "123", None),
    ("FI", "Zoë", "z"),
    ("FI", "-", None),
    ("CT", "San Francisco", "sanfrancisco"),
    ("ST", "California", "ca"),
    ("ST", "New York", "ny"),
    ("ST", "CA", "ca"),
    ("ST", "Île-de-France", "îledefrance"),
    ("ZIP", "12345-6789", "12345"),
    ("ZIP", "123456789", "12345"),
    ("ZIP", "NR9 5AL", "nr95al"),
    ("ZIP", "1234", "1234"),
    ("COUNTRY", "United States", "us"),
    ("COUNTRY", "USA", "us"),
    ("COUNTRY", "FR", "fr"),
    ("COUNTRY", "Narnia", None),
    ("MADID", "AB12CD34-0000-4000-8000-00000000ABCD", "ab12cd34-0000-4000-8000-00000000abcd"),
    ("MADID", "xyz", None),
    ("EXTERN_ID", " Cust-42 ", "Cust-42"),
    ("LOOKALIKE_VALUE", "140", 140),
    ("LOOKALIKE_VALUE", "44.5", 44.5),
    ("LOOKALIKE_VALUE", "-1", None),
    ("LOOKALIKE_VALUE", "1e3", 1000.0),
    ("LOOKALIKE_VALUE", "\u0664\u0665", None),  # Arabic-Indic digits: not a spreadsheet number
]
ALL_KEYS = (*refnorm.HASHED_KEYS, *refnorm.PLAIN_KEYS, refnorm.VALUE_KEY)


def engine_value(key: str, raw: str, cc: str | None = None) -> str | None:
    return normalize_value(key, raw, default_country_code=cc)


def reference_text(key: str, raw: str, cc: str | None = None) -> str | None:
    """The reference's value as the engine's `normalize_value` writes it (numbers as text)."""
    value = refnorm.normalize(key, raw, default_country_code=cc)
    return None if value is None else str(value)


@pytest.mark.parametrize(("key", "raw", "normalized"), TABLE)
def test_the_docs_examples(key: str, raw: str, normalized: str | int | None) -> None:
    cc = "1" if key == "PHONE" else None
    assert refnorm.normalize(key, raw, default_country_code=cc) == normalized
    assert engine_value(key, raw, cc) == (None if normalized is None else str(normalized))


def test_meta_published_digests() -> None:
    rows = [(["mary@example.com", "+1 555 987 6543"]), (["MARY@example.com ", "15559876543"])]
    for cells in rows:
        assert refnorm.expected_row(["EMAIL", "PHONE"], cells) == [
            "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79",
            "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e",
        ]


def test_row_rules() -> None:
    digest = refnorm.sha256("mary@example.com")
    assert refnorm.judge_row(["EMAIL", "PHONE"], ["mary@example.com", "12"]) == (
        [digest, ""],
        None,
    )
    assert refnorm.judge_row(["EMAIL", "PHONE"], ["nope", "12"]) == (
        None,
        ("EMAIL", "invalid_email"),
    )
    assert refnorm.judge_row(["EMAIL", "PHONE"], [" ", ""]) == (None, ("", "empty_row"))
    assert refnorm.judge_row(["EMAIL", "LOOKALIKE_VALUE"], ["mary@example.com", ""]) == (
        None,
        ("LOOKALIKE_VALUE", "invalid_lookalike_value"),
    )
    assert refnorm.judge_row(["MADID", "EXTERN_ID"], ["AB12CD34-0000-4000-8000-00000000ABCD", ""])[
        0
    ] == ["ab12cd34-0000-4000-8000-00000000abcd", ""]
    assert refnorm.judge_row(["EMAIL"], ["mary@example.com"], prehashed=True) == (
        None,
        ("EMAIL", "invalid_hash"),
    )
    assert refnorm.judge_row(["EMAIL"], [digest.upper()], prehashed=True) == ([digest], None)


def test_every_us_state_district_and_territory_maps_to_its_code() -> None:
    for sub in pycountry.subdivisions.get(country_code="US"):
        code = sub.code.split("-")[1].lower()
        assert engine_value("ST", sub.name) == code, sub.name
        assert engine_value("ST", code.upper()) == code


def test_every_iso_country_code_maps_to_its_alpha_2() -> None:
    for country in pycountry.countries:
        for code in (country.alpha_2, country.alpha_3):
            assert engine_value("COUNTRY", code) == country.alpha_2.lower(), code


ORDINARY_NAMES = {
    "Russian Federation": "ru", "Iran": "ir", "Bolivia": "bo", "Syria": "sy", "Laos": "la",
    "Macao": "mo", "Macau": "mo", "North Korea": "kp", "South Korea": "kr", "Micronesia": "fm",
    "USA": "us", "UK": "gb", "Russia": "ru", "Vietnam": "vn", "Cote d'Ivoire": "ci",
    "Côte d'Ivoire": "ci", "Tanzania": "tz", "Venezuela": "ve", "Moldova": "md",
    "Czechia": "cz", "Türkiye": "tr", "Turkey": "tr", "Taiwan": "tw", "Brunei": "bn",
}  # fmt: skip


@pytest.mark.parametrize(("name", "code"), ORDINARY_NAMES.items())
def test_ordinary_country_names_map(name: str, code: str) -> None:
    assert engine_value("COUNTRY", name) == code
    assert reference_text("COUNTRY", name, None) == code


def test_every_iso_country_name_maps_to_its_alpha_2() -> None:
    for country in pycountry.countries:
        for attr in ("name", "official_name", "common_name"):
            if name := getattr(country, attr, None):
                assert engine_value("COUNTRY", name) == country.alpha_2.lower(), name
                assert reference_text("COUNTRY", name, None) == country.alpha_2.lower(), name


def test_a_canadian_province_stays_its_name() -> None:
    # Meta's rule gives codes to US states only; elsewhere a state is its name's letters.
    assert engine_value("ST", "Ontario") == reference_text("ST", "Ontario", None) == "ontario"


# --- random cells -----------------------------------------------------------------------------

# Cells near each key's rules, and any text at all.
_NEAR = {
    "EMAIL": st.from_regex(
        r"\s?[A-Za-z0-9.+_-]{0,6}@?[A-Za-z0-9.-]{0,8}\.?[a-zA-Z]{0,3}\s?", fullmatch=True
    ),
    "PHONE": st.from_regex(r"\s?\+?[0-9 ().-]{0,18}", fullmatch=True),
    "GEN": st.sampled_from(["m", "F", "Male", " woman ", "man", "x", "fem"]),
    "DOBY": st.integers(1850, 2200).map(str) | st.from_regex(r"[0-9]{1,5}", fullmatch=True),
    "DOBM": st.from_regex(r"\s?[0-9]{1,3}\s?", fullmatch=True),
    "DOBD": st.from_regex(r"\s?[0-9]{1,3}\s?", fullmatch=True),
    "ZIP": st.from_regex(r"\s?[0-9A-Za-z]{0,5}[- ]?[0-9A-Za-z]{0,4}\s?", fullmatch=True),
    "MADID": st.uuids().map(str).map(str.upper)
    | st.from_regex(r"[0-9a-fA-F-]{10,70}", fullmatch=True),
    "LOOKALIKE_VALUE": st.from_regex(
        r"\s?[+-]?[0-9]{0,4}\.?[0-9]{0,3}([eE][+-]?[0-9]{1,2})?\s?", fullmatch=True
    ),
    "ST": st.sampled_from([s.name for s in pycountry.subdivisions.get(country_code="US")]),
    "COUNTRY": st.sampled_from(
        [c.alpha_2 for c in pycountry.countries] + ["United States", "usa", "UK", "gb", "zz"]
    ),
}
_DIGESTS = st.binary(max_size=8).map(lambda b: refnorm.sha256(b.hex())).map(str.upper)
_ANY = st.text(max_size=20)


def cells_for(key: str) -> st.SearchStrategy[str]:
    near = _NEAR.get(key, st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
    return st.one_of(near, _ANY, _DIGESTS, st.just(""), st.just("  "))


@given(data=st.data(), key=st.sampled_from(ALL_KEYS), cc=st.sampled_from([None, "1", "44"]))
@settings(max_examples=400, deadline=None)
def test_one_cell_agrees(data: st.DataObject, key: str, cc: str | None) -> None:
    raw = data.draw(cells_for(key))
    assert engine_value(key, raw, cc) == reference_text(key, raw, cc)


@st.composite
def chunks(draw: st.DrawFn) -> tuple[tuple[str, ...], list[tuple[str, ...]], bool]:
    keys = tuple(draw(st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=4, unique=True)))
    if keys == (refnorm.VALUE_KEY,):
        keys = ("EMAIL", *keys)
    rows = draw(st.lists(st.tuples(*map(cells_for, keys)), max_size=30))
    return keys, rows, draw(st.booleans())


@given(chunk=chunks())
@settings(max_examples=300, deadline=None)
def test_chunks_agree(chunk: tuple[tuple[str, ...], list[tuple[str, ...]], bool]) -> None:
    """The engine's chunk paths (by column, by distinct value, whole-column EMAIL checks)
    give the reference's rows and rejects, row by row."""
    keys, rows, prehashed = chunk
    assert_engine_agrees(keys, rows, prehashed=prehashed, cc="1")


def assert_engine_agrees(
    keys: tuple[str, ...], rows: list[tuple[str, ...]], *, prehashed: bool, cc: str | None
) -> None:
    schema = Schema(keys)
    options = NormalizeOptions(prehashed=prehashed, default_country_code=cc)
    raw = RawChunk(list(range(1, len(rows) + 1)), rows)
    wanted_rows, wanted_rejects = [], []
    for n, cells in enumerate(rows, 1):
        row, reject = refnorm.judge_row(keys, cells, prehashed=prehashed, default_country_code=cc)
        if row is not None:
            wanted_rows.append(row)
        else:
            assert reject is not None
            wanted_rejects.append((n, *reject))
    hashed = normalize_chunk(raw, schema, options)
    assert hashed.data == wanted_rows
    assert [(r.row, r.key, r.reason) for r in hashed.rejects] == wanted_rejects
    encoded = encode_chunk(raw, schema, options)
    assert orjson.loads(b"[" + encoded.data + b"]") == wanted_rows


# --- the sample data --------------------------------------------------------------------------

SAMPLE_KEYS = {
    "email": "EMAIL",
    "phone": "PHONE",
    "first_name": "FN",
    "last_name": "LN",
    "zip": "ZIP",
    "city": "CT",
    "state": "ST",
    "country": "COUNTRY",
}


def sample_table(tmp_path: Path, n: int) -> tuple[Path, list[tuple[str, ...]]]:
    """The sample CSV and its rows as Python's csv module reads it (not the engine's reader)."""
    path = write_sample(tmp_path / "sample.csv", n)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [tuple(r) for r in csv.reader(f)]
    assert rows[0] == EIGHT_KEYS
    return path, rows[1:]


def extra_columns(rows: list[tuple[str, ...]], seed: int = 3) -> list[tuple[str, ...]]:
    """Cells for the keys the sample lacks: FI from the first name, and the rest made up."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        uuid = f"{rng.getrandbits(128):032x}"
        out.append(
            (
                row[EIGHT_KEYS.index("first_name")],
                rng.choice(["M", "f", "Woman", "male", "", "?"]),
                str(rng.randrange(1890, 2030)),
                str(rng.randrange(0, 14)),
                rng.choice(["1", "07", "31", "32", ""]),
                rng.choice(
                    [
                        f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}",
                        uuid.upper(),
                        "",
                        "n/a",
                    ]
                ),
                rng.choice([f"cust-{rng.randrange(10**6)}", "", " ID 7 "]),
                rng.choice(["140", "44.5", "0", "0.9", "", "-3", "1e2"]),
            )
        )
    return out


EXTRA_KEYS = ("FI", "GEN", "DOBY", "DOBM", "DOBD", "MADID", "EXTERN_ID", "LOOKALIKE_VALUE")


def test_sample_data_agrees_for_every_key(tmp_path: Path) -> None:
    """Every key of the sample file, read by the engine and by Python's csv module, gives
    the reference's rows: once per key alone, and all eight together."""
    path, rows = sample_table(tmp_path, 3000)
    keys = tuple(SAMPLE_KEYS[c] for c in EIGHT_KEYS)
    with open_input(str(path)) as source:
        assert source.bind(None, {}) == keys
        got = [row for chunk in source.chunks(700) for row in chunk.values]
    assert got == rows  # the engine's reader gives the cells Python's csv module does
    for i, key in enumerate(keys):
        assert_engine_agrees((key,), [(r[i],) for r in rows], prehashed=False, cc="1")
    assert_engine_agrees(keys, rows, prehashed=False, cc="1")

    extra = extra_columns(rows)
    for i, key in enumerate(EXTRA_KEYS):
        if key != "LOOKALIKE_VALUE":
            assert_engine_agrees((key,), [(r[i],) for r in extra], prehashed=False, cc=None)
    together = [r + e for r, e in zip(rows, extra, strict=True)]
    assert_engine_agrees(keys + EXTRA_KEYS, together, prehashed=False, cc="1")


def test_sample_data_prehashed_agrees(tmp_path: Path) -> None:
    """The reference's digests fed back as pre-hashed input come out as they went in."""
    _, rows = sample_table(tmp_path, 500)
    keys = tuple(SAMPLE_KEYS[c] for c in EIGHT_KEYS)
    sent = [r for r in (refnorm.expected_row(keys, c, default_country_code="1") for c in rows) if r]
    digests = [tuple(str(v) for v in row) for row in sent]
    assert_engine_agrees(keys, digests, prehashed=True, cc=None)
    assert all(refnorm.expected_row(keys, d, prehashed=True) == list(d) for d in digests)
