"""A reference normalizer: docs/normalization.md read as literally as possible.

The tests grade the engine's normalizer (fast, column-at-a-time, full of shortcuts) against
this one, so it is written from the docs' rules table alone, never from engine code, and
imports nothing from `engine`. It is slow and plain on purpose: one cell at a time, one rule
per key, each a few lines to check by eye against the table. Country and US state codes
come from pycountry (the ISO 3166 tables), not from the engine's own copy.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence

import phonenumbers
import pycountry

HASHED_KEYS = (
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "FN",
    "LN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "COUNTRY",
)
PLAIN_KEYS = ("MADID", "EXTERN_ID")
IDENTIFYING_KEYS = ("EMAIL", "PHONE", "MADID", "EXTERN_ID", "FN", "LN", "FI")
VALUE_KEY = "LOOKALIKE_VALUE"
SINGLE_KEY = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE", "MOBILE_ADVERTISER_ID": "MADID"}

Cell = str | int | float

_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}


def letters(text: str) -> str:
    """Lowercase, NFC, then only letters (any script) and combining marks."""
    text = unicodedata.normalize("NFC", text.lower())
    return "".join(c for c in text if c.isalpha() or unicodedata.category(c).startswith("M"))


# ST: every US state, district and territory named in full -> its two-letter code.
_US_STATES = {
    letters(s.name): s.code.split("-")[1].lower()
    for s in pycountry.subdivisions.get(country_code="US")
}
_US_STATES.update(
    dict.fromkeys(["washingtondc"], "dc")
    | dict.fromkeys(
        map(
            letters,
            [
                "US Virgin Islands",
                "Virgin Islands",
                "Virgin Islands, US",
                "United States Virgin Islands",
            ],
        ),
        "vi",
    )
)


# COUNTRY: ISO 3166-1 alpha-2 and alpha-3 codes; every country's name, official name and
# common name, also "Y X" for a name written "X, Y" and "X" alone when only one name starts
# so, each also without accents; and the everyday names docs/normalization.md lists.
def _without_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


_COUNTRIES: dict[str, str] = {}
_FIRST_WORDS: dict[str, list[str]] = {}
for _c in pycountry.countries:
    _names = [_c.name, getattr(_c, "official_name", ""), getattr(_c, "common_name", "")]
    if ", " in _c.name:
        _x, _y = _c.name.split(", ", 1)
        _names.append(_y + " " + _x)
        _FIRST_WORDS.setdefault(letters(_x), []).append(_c.alpha_2.lower())
    for _n in _names:
        for _form in (letters(_n), letters(_without_accents(_n))):
            if _form and _form not in _COUNTRIES:
                _COUNTRIES[_form] = _c.alpha_2.lower()
for _x, _codes in _FIRST_WORDS.items():
    if len(_codes) == 1 and _x not in _COUNTRIES:
        _COUNTRIES[_x] = _codes[0]
for _c in pycountry.countries:
    _COUNTRIES[_c.alpha_2.lower()] = _c.alpha_2.lower()
    _COUNTRIES[_c.alpha_3.lower()] = _c.alpha_2.lower()
_COUNTRIES.update(
    {
        letters(name): code
        for code, names in {
            "us": "USA, America, United States of America",
            "gb": "UK, Great Britain, Britain, England, Scotland, Wales, Northern Ireland",
            "nl": "Holland, The Netherlands",
            "ae": "UAE",
            "ru": "Russia",
            "kr": "South Korea, Korea, Republic of Korea",
            "kp": "North Korea",
            "mo": "Macau",
            "fm": "Micronesia",
            "tr": "Turkey, Turkiye",
            "ci": "Ivory Coast",
            "cv": "Cape Verde",
            "mm": "Burma",
            "sz": "Swaziland",
            "tl": "East Timor",
            "va": "Vatican, Vatican City, Holy See",
            "ps": "Palestine",
            "bn": "Brunei",
            "cz": "Czech Republic",
            "cd": "DRC, DR Congo, Democratic Republic of the Congo, Congo-Kinshasa",
            "cg": "Congo-Brazzaville, Republic of the Congo",
            "vi": "US Virgin Islands",
            "vg": "British Virgin Islands",
            "mf": "Saint Martin",
            "sx": "Sint Maarten",
            "fk": "Falkland Islands",
            "lc": "St Lucia",
            "kn": "St Kitts and Nevis",
            "vc": "St Vincent and the Grenadines",
            "tt": "Trinidad",
            "ba": "Bosnia",
            "mk": "Macedonia",
        }.items()
        for name in names.split(", ")
    }
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _email(s: str) -> str | None:
    s = s.lower()
    if s.count("@") != 1:
        return None
    local, domain = s.split("@")
    ok = (
        local != ""
        and "." in domain
        and " " not in s
        and s.isprintable()
        and not domain.startswith(".")
        and not s.endswith(".")
    )
    return s if ok else None


def _phone(s: str, default_country_code: str | None) -> str | None:
    if any(c.isascii() and c not in "0123456789 +-()./" for c in s):
        return _phone_by_library(s, default_country_code)
    s = s.replace("(0)", "")
    digits = "".join(c for c in s if c in "0123456789")
    international = s.startswith("+") or digits.startswith("00")
    digits = digits.lstrip("0")
    cc = default_country_code
    if cc and not international and not (len(digits) > 10 and digits.startswith(cc)):
        digits = cc + digits
    return digits if 7 <= len(digits) <= 15 else None


def _phone_by_library(s: str, calling_code: str | None) -> str | None:
    region = phonenumbers.region_code_for_country_code(int(calling_code or "0"))
    if s.startswith("00"):
        s = "+" + s[2:]
    try:
        number = phonenumbers.parse(s, region)
    except phonenumbers.NumberParseException:
        return None
    digits = str(number.country_code) + phonenumbers.national_significant_number(number)
    return digits if 7 <= len(digits) <= 15 else None


def _calling_code(country: str) -> str | None:
    """The calling code of a COUNTRY cell's country, if it names one."""
    code = normalize("COUNTRY", country)
    if not isinstance(code, str) or len(code) != 2:  # empty, invalid or a digest
        return None
    return str(phonenumbers.country_code_for_region(code.upper())) or None


def _year(s: str) -> str | None:
    if re.fullmatch(r"[0-9]{4}", s) and 1900 <= int(s) <= datetime.date.today().year:
        return s
    return None


def _two_digits(s: str, highest: int) -> str | None:
    if re.fullmatch(r"[0-9]{1,2}", s) and 1 <= int(s) <= highest:
        return f"{int(s):02d}"
    return None


def _name(s: str) -> str | None:
    return letters(s) or None


def _zip(s: str) -> str | None:
    s = s.lower()
    us = re.fullmatch(r"([0-9]{5})(?:[0-9]{4}|[- ][0-9]{4})?", s)
    if us:
        return us.group(1)
    kept = "".join(c for c in unicodedata.normalize("NFC", s) if c.isalnum())
    return kept or None


def _madid(s: str) -> str | None:
    s = s.lower()
    if not re.fullmatch(r"[0-9a-f-]+", s) or re.fullmatch(r"[0-9a-f]{64}", s):
        return None
    return s if 16 <= len(s.replace("-", "")) <= 64 else None


def _lookalike(s: str) -> int | float | None:
    if re.fullmatch(r"[0-9]{1,19}", s) and int(s) < 2**63:
        return int(s)
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", s):
        return None
    f = float(s)
    return f + 0.0 if math.isfinite(f) and f >= 0 else None  # + 0.0: no -0.0


def normalize(key: str, raw: str, *, default_country_code: str | None = None) -> Cell | None:
    """The normalized value, not hashed: "" for an empty cell, None for an invalid one.
    A hashed key holding a SHA-256 digest gives the digest, lowercased."""
    s = raw.strip()
    if s == "":
        return ""
    if key in HASHED_KEYS and _DIGEST.fullmatch(s):
        return s.lower()
    if key == "EMAIL":
        return _email(s)
    if key == "PHONE":
        return _phone(s, default_country_code)
    if key == "GEN":
        return _GENDERS.get(s.lower())
    if key == "DOBY":
        return _year(s)
    if key == "DOBM":
        return _two_digits(s, 12)
    if key == "DOBD":
        return _two_digits(s, 31)
    if key in ("FN", "LN", "CT"):
        return _name(s)
    if key == "FI":
        name = _name(s)
        return name[0] if name else None
    if key == "ST":
        name = _name(s)
        return _US_STATES.get(name, name) if name else None
    if key == "ZIP":
        return _zip(s)
    if key == "COUNTRY":
        return _COUNTRIES.get(letters(s))
    if key == "MADID":
        return _madid(s)
    if key == "EXTERN_ID":
        return s
    if key == VALUE_KEY:
        return _lookalike(s)
    raise ValueError(f"unknown key {key}")


def payload_cell(
    key: str, raw: str, *, prehashed: bool = False, default_country_code: str | None = None
) -> Cell | None:
    """What the payload holds for this cell: the digest of a hashed key, the plain value of
    MADID and EXTERN_ID, a number for LOOKALIKE_VALUE; "" when empty, None when invalid."""
    s = raw.strip()
    if key in HASHED_KEYS and s != "" and not _DIGEST.fullmatch(s):
        if prehashed:
            return None
        value = normalize(key, s, default_country_code=default_country_code)
        return None if value is None else sha256(str(value))
    return normalize(key, s, default_country_code=default_country_code)


def judge_row(
    keys: Sequence[str],
    cells: Sequence[str],
    *,
    prehashed: bool = False,
    default_country_code: str | None = None,
) -> tuple[list[Cell] | None, tuple[str, str] | None]:
    """(the payload row, None) for a row that is sent; (None, (key, reason)) for a rejected one."""
    out = [
        payload_cell(k, c, prehashed=prehashed, default_country_code=default_country_code)
        for k, c in zip(keys, cells, strict=True)
    ]
    if "PHONE" in keys and "COUNTRY" in keys:
        # The row's country gives the calling code of a number written without one.
        row_code = _calling_code(cells[list(keys).index("COUNTRY")]) or default_country_code
        at = list(keys).index("PHONE")
        out[at] = payload_cell(
            "PHONE", cells[at], prehashed=prehashed, default_country_code=row_code
        )
    identifiers = [(k, v) for k, v in zip(keys, out, strict=True) if k != VALUE_KEY]
    identifying = [(k, v) for k, v in identifiers if k in IDENTIFYING_KEYS]
    if not any(v not in ("", None) for _, v in identifying):
        for k, v in identifying:
            if v is None:
                return None, (k, _reason(k, prehashed))
        if all(v == "" for _, v in identifiers):
            return None, ("", "empty_row")
        return None, ("", "no_identifying_key")
    if VALUE_KEY in keys and out[list(keys).index(VALUE_KEY)] in ("", None):
        return None, (VALUE_KEY, "invalid_lookalike_value")
    return ["" if v is None else v for v in out], None


def blanked(
    keys: Sequence[str],
    cells: Sequence[str],
    *,
    prehashed: bool = False,
    default_country_code: str | None = None,
) -> list[tuple[str, str]]:
    """(key, reason) of each invalid cell sent as "" in this row; none when it is rejected."""
    row, _ = judge_row(keys, cells, prehashed=prehashed, default_country_code=default_country_code)
    if row is None:
        return []
    return [
        (k, _reason(k, prehashed))
        for k, c in zip(keys, cells, strict=True)
        if payload_cell(k, c, prehashed=prehashed, default_country_code=default_country_code)
        is None
    ]


def _reason(key: str, prehashed: bool) -> str:
    return "invalid_hash" if prehashed and key in HASHED_KEYS else f"invalid_{key.lower()}"


def expected_row(
    keys: Sequence[str],
    cells: Sequence[str],
    *,
    prehashed: bool = False,
    default_country_code: str | None = None,
) -> list[Cell] | None:
    """The payload row for these raw cells, or None when the row is rejected."""
    row, _ = judge_row(keys, cells, prehashed=prehashed, default_country_code=default_country_code)
    return row
