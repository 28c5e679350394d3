"""Normalization and hashing by Meta's customer-file rules (docs/normalization.md)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import pickle
import unicodedata
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine._errors import ConfigError
from engine._hashing.digest import hash_value
from engine._hashing.encode import encode_chunk, normalize_chunk
from engine._hashing.fast_email import encode_email_lines
from engine._hashing.pool import hash_unit
from engine._hashing.rules import normalize_value, phone_column, phone_digits
from engine._hashing.schema import IDENTIFYING_KEYS, KEYS, PLAIN_KEYS, NormalizeOptions, Schema
from engine._input.blocks import CsvBlock
from engine._pipeline.sender import encode_payload
from engine._rows import EncodedChunk, RawChunk, Reject

from . import refnorm

EMPTY_SHA = hashlib.sha256(b"").hexdigest()
DIGEST = hashlib.sha256(b"mary@example.com").hexdigest()
THIS_YEAR = datetime.date.today().year


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


# --- hashing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "digest"),
    [
        ("mary@example.com", "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"),
        ("15559876543", "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e"),
        ("jsmith@example.com", "6e3913852f512d76acff15d1e402c7502a5bbe6101745a7120a2a4833ebd2350"),
        ("josé", hashlib.sha256("josé".encode()).hexdigest()),
    ],
)
def test_hash_value_matches_meta_vectors(text: str, digest: str) -> None:
    assert hash_value(text) == digest


def test_meta_vectors_through_normalization() -> None:
    schema = Schema.parse("EMAIL,PHONE")
    out = normalize_chunk(
        RawChunk([1], [(" Mary@Example.COM ", "+1 (555) 987-6543")]), schema, NormalizeOptions()
    )
    assert out.data == [
        [
            "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79",
            "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e",
        ]
    ]


# --- normalize_value, key by key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        # EMAIL: trim + lowercase, no gmail rewriting, must look like an address
        ("EMAIL", "  Mary@Example.COM\t", "mary@example.com"),
        ("EMAIL", "John.Doe+tag@Gmail.com", "john.doe+tag@gmail.com"),
        ("EMAIL", "a@b.co", "a@b.co"),
        ("EMAIL", "", ""),
        ("EMAIL", "   ", ""),
        ("EMAIL", "not-an-email", None),
        ("EMAIL", "@example.com", None),
        ("EMAIL", "a@@example.com", None),
        ("EMAIL", "a@b@example.com", None),
        ("EMAIL", "mary@localhost", None),
        ("EMAIL", "mary@.com", None),
        ("EMAIL", "mary@example.", None),
        ("EMAIL", "ma ry@example.com", None),
        ("EMAIL", "ma\try@example.com", None),
        # PHONE: digits only, leading zeros removed, 7..15 digits
        ("PHONE", "+1 (555) 010-9999", "15550109999"),
        ("PHONE", "0044 7700 900123", "447700900123"),
        ("PHONE", "+44 (0) 7700 900123", "447700900123"),  # (0): the national trunk prefix
        ("PHONE", "+49 (0)30 123456", "4930123456"),
        ("PHONE", "+1 555 010 9999 ext 12", "15550109999"),  # the extension is no digit of it
        ("PHONE", "+1 (555) 010-9999 x12", "15550109999"),
        ("PHONE", "+1 555 010 9999 #12", "15550109999"),
        ("PHONE", "tel: +44 7700 900123", "447700900123"),
        ("PHONE", "555 010 9999 ext 12", None),  # no country code to read it by
        ("PHONE", "1-555-987-6543", "15559876543"),
        ("PHONE", "  ", ""),
        ("PHONE", "123456", None),
        ("PHONE", "1234567890123456", None),
        ("PHONE", "call me", None),
        ("PHONE", "000", None),
        # GEN
        ("GEN", "M", "m"),
        ("GEN", " female ", "f"),
        ("GEN", "Woman", "f"),
        ("GEN", "MAN", "m"),
        ("GEN", "Male", "m"),
        ("GEN", "x", None),
        ("GEN", "w", None),
        ("GEN", "", ""),
        # date parts
        ("DOBY", "1984", "1984"),
        ("DOBY", " 1900 ", "1900"),
        ("DOBY", str(THIS_YEAR), str(THIS_YEAR)),
        ("DOBY", str(THIS_YEAR + 1), None),
        ("DOBY", "1899", None),
        ("DOBY", "84", None),
        ("DOBY", "19a4", None),
        ("DOBM", "7", "07"),
        ("DOBM", "07", "07"),
        ("DOBM", "12", "12"),
        ("DOBM", "13", None),
        ("DOBM", "0", None),
        ("DOBM", "007", None),
        ("DOBM", "July", None),
        ("DOBD", "1", "01"),
        ("DOBD", "31", "31"),
        ("DOBD", "32", None),
        ("DOBD", "00", None),
        ("DOBD", "", ""),
        # names: lowercase, punctuation/digits/spaces removed, any script kept
        ("FN", "John", "john"),
        ("FN", "  Mary-Jane ", "maryjane"),
        ("LN", "O'Brien", "obrien"),
        ("LN", "Smith Jr. 3rd", "smithjrrd"),
        ("FN", "Zoë", "zoë"),
        ("FN", "JOSÉ", "josé"),
        ("LN", "山田", "山田"),
        ("FN", "Straße", "straße"),
        ("FN", "123", None),
        ("FN", "---", None),
        ("FN", "\t", ""),
        # FI
        ("FI", "John", "j"),
        ("FI", "  émile", "é"),
        ("FI", "J", "j"),
        ("FI", "3", None),
        # CT
        ("CT", "New York", "newyork"),
        ("CT", "Winston-Salem", "winstonsalem"),
        ("CT", "São Paulo", "sãopaulo"),
        ("CT", "", ""),
        # ST
        ("ST", "California", "ca"),
        ("ST", "new york", "ny"),
        ("ST", "CA", "ca"),
        ("ST", " District of Columbia ", "dc"),
        ("ST", "Puerto Rico", "pr"),
        ("ST", "Ontario", "ontario"),
        ("ST", "Île-de-France", "îledefrance"),
        ("ST", "!!", None),
        # ZIP
        ("ZIP", "94107", "94107"),
        ("ZIP", "12345-6789", "12345"),
        ("ZIP", "12345 6789", "12345"),
        ("ZIP", "123456789", "12345"),
        ("ZIP", " 02134 ", "02134"),
        ("ZIP", "NR9 5AL", "nr95al"),
        ("ZIP", "K1A 0B1", "k1a0b1"),
        ("ZIP", "1010", "1010"),
        ("ZIP", "--", None),
        # COUNTRY
        ("COUNTRY", "US", "us"),
        ("COUNTRY", "United States", "us"),
        ("COUNTRY", "U.S.A.", "us"),
        ("COUNTRY", "usa", "us"),
        ("COUNTRY", "UK", "gb"),
        ("COUNTRY", "Great Britain", "gb"),
        ("COUNTRY", "GBR", "gb"),
        ("COUNTRY", "DEU", "de"),
        ("COUNTRY", "germany", "de"),
        ("COUNTRY", "fr", "fr"),
        ("COUNTRY", "zz", None),
        ("COUNTRY", "Atlantis", None),
        ("COUNTRY", "", ""),
        # MADID: lowercase, hyphens kept
        (
            "MADID",
            "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "6d92078a-8246-4ba4-ae5b-76104861e7dc",
        ),
        ("MADID", "38400000-8cf0-11bd-b23e-10b96e40000d", "38400000-8cf0-11bd-b23e-10b96e40000d"),
        ("MADID", "0123456789ABCDEF", "0123456789abcdef"),
        ("MADID", "not-a-device-id", None),
        ("MADID", "1234", None),
        ("MADID", "----------------", None),
        # EXTERN_ID: trimmed only
        ("EXTERN_ID", "  CRM-00042 ", "CRM-00042"),
        ("EXTERN_ID", "", ""),
        # LOOKALIKE_VALUE
        ("LOOKALIKE_VALUE", "44.5", "44.5"),
        ("LOOKALIKE_VALUE", " 140 ", "140"),
        ("LOOKALIKE_VALUE", "0", "0"),
        ("LOOKALIKE_VALUE", "-1", None),
        ("LOOKALIKE_VALUE", "nan", None),
        ("LOOKALIKE_VALUE", "inf", None),
        ("LOOKALIKE_VALUE", "1_000", None),
        ("LOOKALIKE_VALUE", "lots", None),
    ],
)
def test_normalize_value(key: str, raw: str, expected: str | None) -> None:
    assert normalize_value(key, raw) == expected


@pytest.mark.parametrize(
    ("raw", "cc", "expected"),
    [
        ("5550109999", "1", "15550109999"),
        ("(555) 010-9999", "1", "15550109999"),
        ("15550109999", "1", "15550109999"),
        ("+44 7700 900123", "1", "447700900123"),
        ("0044 7700 900123", "1", "447700900123"),
        ("07700 900123", "44", "447700900123"),
        ("447700900123", "44", "447700900123"),
        ("5550109999", "+1", "15550109999"),
        ("5550109999", None, "5550109999"),
        ("123 4567", "1", "11234567"),  # starts with the code but too short to carry it
        ("0441 234 5678", "44", "444412345678"),
        ("(555) 010-9999 ext. 12", "1", "15550109999"),
        ("030 123456 x 7", "49", "4930123456"),
        ("0049 30 123456 ext 7", "1", "4930123456"),
    ],
)
def test_phone_default_country_code(raw: str, cc: str | None, expected: str) -> None:
    assert normalize_value("PHONE", raw, default_country_code=cc) == expected
    chunk = normalize_chunk(
        RawChunk([1], [(raw,)]), Schema.parse("PHONE"), NormalizeOptions(default_country_code=cc)
    )
    assert chunk.data == [[sha(expected)]]


phone_like = st.one_of(
    st.from_regex(r"\s?\+?[0-9 ().-]{0,18}\s?", fullmatch=True),
    st.text(alphabet="0123456789 +-()./x\n\u00e9\u0663", max_size=18),
    st.sampled_from(["", " ", "n/a", "+49 (0)30 123456", "0044 20 7946 0958", "555 0100 ext 2"]),
)


@settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(st.tuples(phone_like, st.sampled_from([None, b"", b"1", b"44"])), max_size=30),
    default=st.sampled_from([None, "1", "49"]),
)
def test_phone_column_agrees_with_the_per_cell_rule(
    cells: list[tuple[str, bytes | None]], default: str | None
) -> None:
    raws, ccs = [raw for raw, _ in cells], [cc for _, cc in cells]
    per_cell = phone_digits(default)
    assert phone_column(default)(raws, ccs) == list(map(per_cell, raws, ccs))
    assert phone_column(default)(raws, None) == [per_cell(raw, None) for raw in raws]


@pytest.mark.parametrize("encode", [normalize_chunk, encode_chunk])
def test_a_country_column_gives_each_rows_phone_its_calling_code(encode: Any) -> None:
    rows = [
        ("030 123456", "Germany"),  # national: Germany's code, not the default
        ("(555) 010-9999", "US"),
        ("+44 7700 900123", "DE"),  # international: its own code
        ("07700 900123 ext 4", "gb"),  # read by phonenumbers, in the row's region
        ("5550109999", ""),  # no country: the default
        ("5550109999", "Narnia"),  # no such country: the default
    ]
    schema = Schema.parse("PHONE,COUNTRY")
    out = normalize_chunk(RawChunk([1, 2, 3, 4, 5, 6], rows), schema, NormalizeOptions(False, "1"))
    phones = ["4930123456", "15550109999", "447700900123", "447700900123"]
    phones += ["15550109999", "15550109999"]
    assert [row[0] for row in out.data] == [sha(p) for p in phones]
    expected = [refnorm.expected_row(schema.keys, row, default_country_code="1") for row in rows]
    assert out.data == expected
    assert out.blanked == (("COUNTRY", "invalid_country", 1),)
    encoded = encode(RawChunk([1, 2, 3, 4, 5, 6], rows), schema, NormalizeOptions(False, "1"))
    assert encoded.rejects == []


@pytest.mark.parametrize("cc", ["", "abc", "12345", "1-2"])
def test_bad_default_country_code(cc: str) -> None:
    with pytest.raises(ConfigError):
        NormalizeOptions(default_country_code=cc)


def test_decomposed_and_composed_names_hash_the_same() -> None:
    composed = unicodedata.normalize("NFC", "José")
    decomposed = unicodedata.normalize("NFD", "José")
    assert composed != decomposed
    assert normalize_value("FN", decomposed) == normalize_value("FN", composed) == "josé"
    out = normalize_chunk(
        RawChunk([1, 2], [(composed,), (decomposed,)]), Schema.parse("FN"), NormalizeOptions()
    )
    assert out.data[0] == out.data[1] == [sha("josé")]


def test_combining_vowel_signs_are_kept() -> None:
    # Devanagari vowel signs are marks, not letters; dropping them would change the name.
    assert normalize_value("FN", "प्रिया") == "प्रिया"


@pytest.mark.parametrize("key", sorted(set(KEYS) - PLAIN_KEYS))
def test_already_hashed_value_passes_through_lowercased(key: str) -> None:
    assert normalize_value(key, " " + DIGEST.upper() + " ") == DIGEST
    # A key that identifies nobody goes beside one that does (a row of it alone is rejected).
    keys = (key,) if key in IDENTIFYING_KEYS else ("EMAIL", key)
    cells = (DIGEST.upper(),) * len(keys)
    out = normalize_chunk(RawChunk([1], [cells]), Schema(keys), NormalizeOptions())
    assert out.data == [[DIGEST] * len(keys)]


def test_hashed_madid_is_rejected() -> None:
    # The official SDKs hash MADID; Meta wants it plain and could never match a digest.
    assert normalize_value("MADID", DIGEST.upper()) is None


# --- normalize_chunk --------------------------------------------------------------------------


def test_chunk_payload_per_key_kind() -> None:
    schema = Schema.parse("EXTERN_ID,EMAIL,MADID,GEN,DOBM,LOOKALIKE_VALUE")
    chunk = RawChunk(
        [7],
        [
            (
                " X-1 ",
                "Mary@Example.com",
                "6D92078A-8246-4BA4-AE5B-76104861E7DC",
                "Female",
                "3",
                "44.5",
            )
        ],
    )
    out = normalize_chunk(chunk, schema, NormalizeOptions())
    assert out.row_numbers == [7]
    assert out.data == [
        ["X-1", DIGEST, "6d92078a-8246-4ba4-ae5b-76104861e7dc", sha("f"), sha("03"), 44.5]
    ]
    assert out.rejects == []


@pytest.mark.parametrize(("raw", "value"), [("140", 140), ("0", 0), ("0.9", 0.9), ("1e3", 1000.0)])
def test_lookalike_value_is_a_number(raw: str, value: float) -> None:
    out = normalize_chunk(
        RawChunk([1], [("a@b.com", raw)]), Schema.parse("EMAIL,LOOKALIKE_VALUE"), NormalizeOptions()
    )
    assert out.data == [[sha("a@b.com"), value]]
    assert type(out.data[0][1]) is type(value)


def test_invalid_and_empty_cells_are_sent_as_empty_string_not_hash_of_empty() -> None:
    schema = Schema.parse("EMAIL,PHONE,FN,ZIP")
    out = normalize_chunk(
        RawChunk([1, 2], [("a@b.com", "12", "", "  "), ("", "+1 555 010 9999", "Zoë", "x")]),
        schema,
        NormalizeOptions(),
    )
    assert out.data == [
        [sha("a@b.com"), "", "", ""],
        ["", sha("15550109999"), sha("zoë"), sha("x")],
    ]
    assert all(EMPTY_SHA not in row for row in out.data)
    assert out.rejects == []
    assert out.blanked == (("PHONE", "invalid_phone", 1),)


def test_blanked_cells_are_counted_by_key_and_reason_in_rows_sent_only() -> None:
    schema = Schema.parse("EMAIL,PHONE,DOBY,ZIP")
    rows = [
        ("a@b.com", "12", "1850", "!!"),  # sent: three cells blanked
        ("c@d.com", "34", "", "94107"),  # sent: PHONE blanked
        ("bad", "56", "1850", "!!"),  # rejected: its cells count there, not here
    ]
    for encode in (normalize_chunk, encode_chunk):
        out = encode(RawChunk([1, 2, 3], rows), schema, NormalizeOptions())
        assert out.rejects == [Reject(3, "EMAIL", "invalid_email")]
        assert out.blanked == (
            ("PHONE", "invalid_phone", 2),
            ("DOBY", "invalid_doby", 1),
            ("ZIP", "invalid_zip", 1),
        )
        assert [refnorm.blanked(schema.keys, row) for row in rows] == [
            [("PHONE", "invalid_phone"), ("DOBY", "invalid_doby"), ("ZIP", "invalid_zip")],
            [("PHONE", "invalid_phone")],
            [],
        ]
    prehashed = normalize_chunk(
        RawChunk([1], [(DIGEST, "not a digest", "", "")]), schema, NormalizeOptions(True)
    )
    assert prehashed.blanked == (("PHONE", "invalid_hash", 1),)


@pytest.mark.parametrize(
    ("schema", "row", "reject"),
    [
        ("EMAIL,PHONE", ("", "  "), Reject(5, "", "empty_row")),
        ("EMAIL,PHONE", ("garbage", "12"), Reject(5, "EMAIL", "invalid_email")),
        ("EMAIL,PHONE", ("", "12"), Reject(5, "PHONE", "invalid_phone")),
        ("FN,LN,COUNTRY", ("123", "", "Atlantis"), Reject(5, "FN", "invalid_fn")),
        ("GEN,DOBY", ("robot", "1850"), Reject(5, "", "no_identifying_key")),
        ("EMAIL,COUNTRY", ("", "US"), Reject(5, "", "no_identifying_key")),
        ("EMAIL,COUNTRY", ("", "Narnia"), Reject(5, "", "no_identifying_key")),
        ("EMAIL,COUNTRY", ("bad", "US"), Reject(5, "EMAIL", "invalid_email")),
        (
            "EMAIL,GEN,DOBY,DOBM,DOBD,CT,ST,ZIP,COUNTRY",
            ("", "m", "1980", "3", "7", "Paris", "CA", "12345", "fr"),
            Reject(5, "", "no_identifying_key"),
        ),
        ("EMAIL,PHONE,ZIP", ("", "12", "12345"), Reject(5, "PHONE", "invalid_phone")),
        ("EMAIL", ("nope",), Reject(5, "EMAIL", "invalid_email")),
        ("EMAIL", ("",), Reject(5, "", "empty_row")),
        (
            "EMAIL,LOOKALIKE_VALUE",
            ("a@b.com", ""),
            Reject(5, "LOOKALIKE_VALUE", "invalid_lookalike_value"),
        ),
        (
            "EMAIL,LOOKALIKE_VALUE",
            ("a@b.com", "-3"),
            Reject(5, "LOOKALIKE_VALUE", "invalid_lookalike_value"),
        ),
        ("EMAIL,LOOKALIKE_VALUE", ("", "10"), Reject(5, "", "empty_row")),
        ("EMAIL,LOOKALIKE_VALUE", ("bad", "10"), Reject(5, "EMAIL", "invalid_email")),
    ],
)
def test_row_rejects(schema: str, row: tuple[str, ...], reject: Reject) -> None:
    out = normalize_chunk(RawChunk([5], [row]), Schema.parse(schema), NormalizeOptions())
    assert refnorm.judge_row(Schema.parse(schema).keys, row) == (None, (reject.key, reject.reason))
    assert out.data == []
    assert out.row_numbers == []
    assert out.rejects == [reject]
    assert out.rows_read == 1


def test_reader_rejects_are_carried_and_counted() -> None:
    reader_reject = Reject(2, "", "ragged_row")
    chunk = RawChunk([1, 3, 4], [("a@b.com",), ("bad",), ("c@d.org",)], [reader_reject])
    out = normalize_chunk(chunk, Schema.parse("EMAIL"), NormalizeOptions())
    assert out.row_numbers == [1, 4]
    assert out.data == [[sha("a@b.com")], [sha("c@d.org")]]
    assert out.rejects == [reader_reject, Reject(3, "EMAIL", "invalid_email")]
    assert out.rows_read == 4


def test_single_key_rows_are_one_element_lists() -> None:
    schema = Schema.parse("PHONE_SHA256")
    out = normalize_chunk(RawChunk([1], [("+1 (555) 987-6543",)]), schema, NormalizeOptions())
    assert out.data == [["1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e"]]


def test_prehashed_validates_instead_of_hashing() -> None:
    schema = Schema.parse("EMAIL,PHONE,EXTERN_ID,MADID")
    madid = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    chunk = RawChunk(
        [1, 2, 3],
        [
            (DIGEST.upper(), "", " id-1 ", madid),
            ("mary@example.com", DIGEST, "", ""),
            ("mary@example.com", "15559876543", "", ""),
        ],
    )
    out = normalize_chunk(chunk, schema, NormalizeOptions(prehashed=True))
    assert out.row_numbers == [1, 2]
    assert out.data == [[DIGEST, "", "id-1", madid.lower()], ["", DIGEST, "", ""]]
    assert out.rejects == [Reject(3, "EMAIL", "invalid_hash")]


def test_ragged_value_tuple_is_rejected_not_misaligned() -> None:
    chunk = RawChunk([1, 2], [("a@b.com", "x"), ("a@b.com",)])
    out = normalize_chunk(chunk, Schema.parse("EMAIL,FN"), NormalizeOptions())
    assert out.row_numbers == [1]
    assert out.rejects == [Reject(2, "", "ragged_row")]


def test_unencodable_text_is_invalid_not_a_crash() -> None:
    bad = "id-\udcff"  # a lone surrogate, as surrogateescape decoding leaves it
    out = normalize_chunk(
        RawChunk([1, 2], [(bad, "a@b.com"), (bad, "")]),
        Schema.parse("EXTERN_ID,EMAIL"),
        NormalizeOptions(),
    )
    assert out.data == [["", sha("a@b.com")]]
    assert out.rejects == [Reject(2, "EXTERN_ID", "invalid_extern_id")]
    single = normalize_chunk(RawChunk([1], [(bad,)]), Schema.parse("EXTERN_ID"), NormalizeOptions())
    assert single.rejects == [Reject(1, "EXTERN_ID", "invalid_extern_id")]
    assert normalize_value("EMAIL", "a\udcff@b.com") is None


def test_arguments_pickle_for_process_pool() -> None:
    schema = Schema.parse("EMAIL,PHONE")
    options = NormalizeOptions(default_country_code="1")
    assert pickle.loads(pickle.dumps(schema)) == schema
    assert pickle.loads(pickle.dumps(options)) == options
    assert pickle.loads(pickle.dumps(normalize_chunk)) is normalize_chunk


# --- Schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "keys"),
    [
        ("EMAIL,PHONE,FN", ("EMAIL", "PHONE", "FN")),
        (" email , phone,fn ", ("EMAIL", "PHONE", "FN")),
        (["ln", "FN", "ZIP"], ("LN", "FN", "ZIP")),
        (("EMAIL", "LOOKALIKE_VALUE"), ("EMAIL", "LOOKALIKE_VALUE")),
    ],
)
def test_schema_parse_multi_key(spec: str | list[str], keys: tuple[str, ...]) -> None:
    schema = Schema.parse(spec)
    assert schema.keys == keys
    assert schema.single_key is None
    assert schema.is_raw is True
    assert schema.payload_schema() == list(keys)
    assert schema.is_value_based is ("LOOKALIKE_VALUE" in keys)


@pytest.mark.parametrize(
    ("spec", "key"),
    [("EMAIL_SHA256", "EMAIL"), ("phone_sha256", "PHONE"), (["MOBILE_ADVERTISER_ID"], "MADID")],
)
def test_schema_parse_single_key(spec: str | list[str], key: str) -> None:
    schema = Schema.parse(spec)
    assert schema.keys == (key,)
    assert schema.single_key == (spec if isinstance(spec, str) else spec[0]).upper()
    assert schema.is_raw is False
    assert schema.payload_schema() == schema.single_key
    assert schema.is_value_based is False


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "  ",
        [],
        "EMAIL,NAME",
        "EMAIL,email",
        "EMAIL_SHA256,PHONE",
        "EMAIL,,PHONE",
        "LOOKALIKE_VALUE",
    ],
)
def test_schema_parse_errors(spec: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        Schema.parse(spec)


def test_schema_constructor_validates_too() -> None:
    assert Schema(("EMAIL",)).payload_schema() == ["EMAIL"]
    with pytest.raises(ConfigError):
        Schema(("EMAIL", "BOGUS"))


# --- property ---------------------------------------------------------------------------------

cell_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "a@b.com", "+1 555 010 9999", "Zoë", "CA", "12345-6789", DIGEST]),
)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=6, unique=True).filter(
        lambda ks: ks != ["LOOKALIKE_VALUE"]
    ),
    data=st.data(),
    prehashed=st.booleans(),
)
def test_every_row_ends_up_exactly_once(
    keys: list[str], data: st.DataObject, prehashed: bool
) -> None:
    n = data.draw(st.integers(0, 8))
    rows = [tuple(data.draw(cell_text) for _ in keys) for _ in range(n)]
    reader_rejects = [Reject(100 + i, "", "bad_bytes") for i in range(data.draw(st.integers(0, 2)))]
    chunk = RawChunk(list(range(1, n + 1)), rows, reader_rejects)
    out = normalize_chunk(chunk, Schema(tuple(keys)), NormalizeOptions(prehashed=prehashed))

    seen = out.row_numbers + [r.row for r in out.rejects]
    assert sorted(seen) == sorted(chunk.row_numbers + [r.row for r in reader_rejects])
    assert out.rows_read == n + len(reader_rejects)
    for row in out.data:
        assert len(row) == len(keys)
        assert EMPTY_SHA not in row
        assert any(c != "" for k, c in zip(keys, row, strict=True) if k != "LOOKALIKE_VALUE")


email_like = st.one_of(
    st.text(alphabet="ab.@ \t\nZé\u00a0-+", max_size=12),
    st.builds("  {}@{}.com ".format, st.text("abXy.", min_size=1, max_size=5), st.just("ex")),
    st.sampled_from(["", "a@b.com", "a@@b.com", "a@.b.com", "a@b.com.", "@b.com", DIGEST]),
)


@settings(max_examples=300, deadline=None)
@given(cells=st.lists(st.tuples(email_like, st.sampled_from(["", "Zoë", "n/a"])), max_size=40))
@example(cells=[("a@x.com\nb", ""), ("b@x.com", "")])  # a quoted newline inside an address
def test_column_checks_agree_with_the_per_value_rules(cells: list[tuple[str, str]]) -> None:
    # normalize_chunk validates EMAIL with whole-column checks; each cell must still come
    # out as normalize_value + hash_value would make it, and every row be placed once.
    chunk = RawChunk(list(range(1, len(cells) + 1)), cells)
    out = normalize_chunk(chunk, Schema.parse("EMAIL,FN"), NormalizeOptions())
    sent = dict(zip(out.row_numbers, out.data, strict=True))
    for row, (email, fn) in enumerate(cells, 1):
        expected = []
        for key, raw in (("EMAIL", email), ("FN", fn)):
            value = normalize_value(key, raw)
            expected.append("" if not value else value if len(value) == 64 else hash_value(value))
        if any(expected):
            assert sent[row] == expected
        else:
            assert row not in sent
    assert len(sent) + len(out.rejects) == len(cells)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=6, unique=True).filter(
        lambda ks: ks != ["LOOKALIKE_VALUE"]
    ),
    single=st.booleans(),
    data=st.data(),
    prehashed=st.booleans(),
)
def test_encoded_rows_are_the_rows_as_json(
    keys: list[str], single: bool, data: st.DataObject, prehashed: bool
) -> None:
    # Workers send rows already serialized; the payload must be byte for byte the one
    # dumped from normalize_chunk's rows, and every row's slice exactly its own JSON.
    schema = Schema.parse("EMAIL_SHA256" if single else keys)
    n = data.draw(st.integers(0, 8))
    rows = [tuple(data.draw(cell_text) for _ in schema.keys) for _ in range(n)]
    chunk = RawChunk(list(range(1, n + 1)), rows, [Reject(100, "", "bad_bytes")])
    options = NormalizeOptions(prehashed=prehashed)
    want = normalize_chunk(chunk, schema, options)
    got = encode_chunk(chunk, schema, options)
    assert list(got.row_numbers) == want.row_numbers
    assert got.rejects == want.rejects and got.rows_read == want.rows_read
    values = [r[0] for r in want.data] if single else want.data
    starts = [0, *got.stops][:-1]
    slices = [got.data[a : b - 1] for a, b in zip(starts, got.stops, strict=True)]
    assert slices == [orjson.dumps(v) for v in values]
    whole = (
        {"schema": "EMAIL_SHA256", "data": values}
        if single
        else {"schema": list(schema.keys), "is_raw": True, "data": values}
    )
    assert encode_payload(schema, got.data) == orjson.dumps(whole)


# --- EMAIL read and hashed as bytes (one-column CSV blocks in the workers) -------------------

EMAIL_LINE = st.one_of(
    st.text(
        alphabet="aZ@. \t\x0b\x1c\x7f\u00e9\u00c9\u00a0\u03a3\u0130\u00df\u2028\x85-+", max_size=10
    ),
    st.builds(
        "{}{}@{}{}".format,
        st.sampled_from(["", " ", "  ", "\t"]),
        st.text("aZy.+_\u00e9", max_size=5),
        st.sampled_from(["ex.com", "EX.Co.UK", "x", ".com", "com.", "b@c.d", "\u00e9x.com"]),
        st.sampled_from(["", " ", "\xa0", "\x1c"]),
    ),
    st.sampled_from(
        ["", "   ", "not-an-email", "A@B.COM", "a@@b.com", DIGEST, DIGEST.upper(), DIGEST[:63]]
    ),
)


def email_block(cells: list[str], crlf: bool, last_newline: bool) -> CsvBlock:
    end = "\r\n" if crlf else "\n"
    data = (end.join(cells) + (end if last_newline else "")).encode()
    return CsvBlock(data or b" ", 99, ",", 1, (0,))


@settings(max_examples=500, deadline=None)
@given(
    cells=st.lists(EMAIL_LINE, min_size=1, max_size=30),
    crlf=st.booleans(),
    last_newline=st.booleans(),
    single=st.booleans(),
)
@example(
    cells=["a@x.com", "Zo\u00eb@X.com", " \u00c9@x.com\xa0", "", "   "],
    crlf=True,
    last_newline=True,
    single=False,
)
@example(
    cells=[DIGEST.upper(), "b@x.com", "\x1ca@x.com"], crlf=False, last_newline=False, single=True
)
def test_email_bytes_path_gives_the_general_paths_bytes(
    cells: list[str], crlf: bool, last_newline: bool, single: bool
) -> None:
    # A worker hashes EMAIL-only blocks as bytes when it can; the chunk (rows, payload JSON,
    # stops, rejects and their order) must be byte for byte what parsing the block and
    # encode_chunk give: non-ASCII, invalid, empty, digest and CRLF cells included.
    block = email_block(cells, crlf, last_newline)
    schema = Schema.parse("EMAIL_SHA256" if single else "EMAIL")
    want = encode_chunk(block.parse(), schema, NormalizeOptions())
    assert hash_unit(block, schema, NormalizeOptions()) == want
    lines = block.cell_lines()
    fast = None if lines is None else encode_email_lines(lines, block.rows_before + 1, schema)
    assert fast is None or fast == want


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_email_bytes_path_takes_messy_lists(single: bool, crlf: bool) -> None:
    # The shapes of a real list (padding, capitals, the odd accented address, a digest, bad
    # and blank values) stay on the bytes path, and give what the general path gives.
    cells = [f"  User.{i}@Example.COM " for i in range(300)]
    cells[7] = "  Zo\u00cb.7@example.com "
    cells[8] = "not-an-email"
    cells[9] = "   "
    cells[10] = DIGEST.upper()
    cells[11] = "\u00e9t\u00e9"
    block = email_block(cells, crlf, True)
    schema = Schema.parse("EMAIL_SHA256" if single else "EMAIL")
    lines = block.cell_lines()
    assert lines is not None
    fast = encode_email_lines(lines, 100, schema)
    assert fast is not None
    assert fast == encode_chunk(block.parse(), schema, NormalizeOptions())
    assert fast.rows_read == 300 and len(fast.row_numbers) == 297
    assert fast.rejects == [
        Reject(108, "EMAIL", "invalid_email"),
        Reject(109, "", "empty_row"),
        Reject(111, "EMAIL", "invalid_email"),
    ]
    hashes = orjson.loads(b"[" + fast.data + b"]")
    first = hashes[0] if single else hashes[0][0]
    assert first == sha("user.0@example.com")
    assert (hashes[7] if single else hashes[7][0]) == sha("zo\u00eb.7@example.com")
    assert (hashes[8] if single else hashes[8][0]) == DIGEST  # row 111, after the two rejects


def test_normalize_stage_keeps_order_and_holds_no_unit_back() -> None:
    # Units waiting together go to a worker together, a unit alone at once (not held for
    # the next one); chunks still come out in input order.
    from concurrent.futures import ThreadPoolExecutor

    from engine._pipeline.channel import Channel
    from engine._pipeline.stages import normalize

    schema, options = Schema.parse("EMAIL"), NormalizeOptions()
    tasks: list[int] = []

    class Pool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            tasks.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    def unit(row: int) -> RawChunk:
        return RawChunk([row], [(f"u{row}@x.com",)])

    async def run(pool: Pool) -> list[int]:
        inp: Channel[RawChunk | CsvBlock] = Channel(4)
        out: Channel[EncodedChunk] = Channel(100)
        stage = asyncio.ensure_future(normalize(inp, out, schema, options, pool))
        await inp.send(unit(1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert tasks == [1]  # the next unit has not come: this one is on its way
        for row in range(2, 5):
            await inp.send(unit(row))  # three waiting at once (room for four: no yield)
        for row in range(5, 12):
            await inp.send(unit(row))
        inp.close()
        await stage
        return [n async for c in out for n in c.row_numbers]

    with Pool(2) as pool:
        assert asyncio.run(run(pool)) == list(range(1, 12))
    assert sum(tasks) == 11 and max(tasks) == 2  # some went two at a time


def test_email_bytes_path_sets_odd_addresses_aside() -> None:
    # A block with a few addresses of each shape the whole-block checks reject stays on the
    # bytes path: those cells alone get the per-cell rule.
    odd = ["a@b@x.com", "x@y.com.", "@x.com", "x@.y.com", "x@localhost", "ma ry@x.com"]
    odd += ["t\tab@x.com", "d\x7fel@x.com", "x@y.com\x0b", "\u00e9@x.com", "Y@X.COM"]
    cells = [f"u{i}@x.com" for i in range(200)]
    for k, cell in enumerate(odd):
        cells[k * 17] = cell
    cells[-1] = "end@x."
    block = email_block(cells, True, False)
    lines = block.cell_lines()
    assert lines is not None
    fast = encode_email_lines(lines, 100, Schema.parse("EMAIL"))
    assert fast is not None
    assert fast == encode_chunk(block.parse(), Schema.parse("EMAIL"), NormalizeOptions())
    assert len(fast.rejects) == 9  # all but the accented and the capital one
