"""Meta's customer-file rules, one normalizer per key: a raw cell becomes the text to hash, "" when
it is empty, or None when it is invalid. The table they implement is docs/normalization.md.
"""

from __future__ import annotations

import datetime
import math
import unicodedata
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from operator import contains

from .places import COUNTRIES, US_STATES
from .places import letters as _letters
from .schema import PLAIN_KEYS, VALUE_KEY, NormalizeOptions, Normalizer

_HEX = frozenset("0123456789abcdefABCDEF")


_HEX_HYPHEN = frozenset("0123456789abcdef-")


_GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}


# bytes.translate deletes these in C: everything but ASCII digits.
NON_DIGIT_BYTES = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)


# ASCII fast path: str.translate with this deletes every non-alphanumeric ASCII char.
_DROP_NON_ALNUM = {c: None for c in range(128) if not chr(c).isalnum()}


_INT64_MAX = 2**63 - 1


def _name(raw: str) -> str | None:
    s = _letters(raw)
    if s:
        return s
    return None if raw.strip() else ""


def _first_initial(raw: str) -> str | None:
    s = _name(raw)
    return s[0] if s else s


def _email(raw: str) -> str | None:
    s = raw.strip().lower()
    return s if not s or is_email(s) else None


def is_email(s: str) -> bool:
    """Whether a trimmed, lowercased value looks like an address (the exact per-cell rule)."""
    local, _, domain = s.partition("@")
    return bool(
        local
        and "." in domain
        and "@" not in domain
        and " " not in s
        and domain[0] != "."
        and s[-1] != "."
        and s.isprintable()  # tabs, newlines, no-break spaces
    )


# What a phone number is written with. A cell with any other ASCII character (an extension
# "ext 12" or "x12", "tel:") is read by phonenumbers, which knows those forms.
_PHONE_BYTES = b"0123456789 +-()./"
# Of those, what is not a digit: deleting a few bytes is cheaper than deleting all but ten.
_PHONE_PUNCTUATION = b" +-()./"


PhoneDigits = Callable[[str, bytes | None], bytes | None]


def phone_digits(default_cc: str | None) -> PhoneDigits:
    """PHONE as the ASCII digits to hash, b"" for an empty cell, None for an invalid one;
    the second argument is the row's calling code (from its COUNTRY), over `default_cc`."""
    default = (default_cc or "").encode()

    def phone(raw: str, row_cc: bytes | None = None) -> bytes | None:
        s = raw.strip()
        if not s:
            return b""
        cc = row_cc or default
        # Non-ASCII characters (even other scripts' digits) are dropped, as [^0-9] would.
        text = s.encode("ascii", "ignore")
        if text.translate(None, _PHONE_BYTES):
            return _odd_phone(s, cc)
        if b"(0)" in text:  # "+49 (0)30...": the national trunk prefix, not a digit to dial
            text = text.replace(b"(0)", b"")
        digits = text.translate(None, NON_DIGIT_BYTES)
        # "+44..." and "0044..." carry their country code; other leading zeros are a trunk prefix.
        international = s[0] == "+" or digits.startswith(b"00")
        digits = digits.lstrip(b"0")
        if cc and not (international or (len(digits) > 10 and digits.startswith(cc))):
            digits = cc + digits
        return digits if 7 <= len(digits) <= 15 else None

    return phone


PhoneColumn = Callable[[Sequence[str], Sequence[bytes | None] | None], list[bytes | None]]


def phone_column(default_cc: str | None) -> PhoneColumn:
    """`phone_digits` for a whole column, with the same results (the second argument: each
    row's calling code, or None for none). The rule's byte work runs once over the column's
    cells joined by newlines, and only cells it is unsure of (odd characters, a trunk prefix)
    go one by one."""
    digits_of = phone_digits(default_cc)
    default = (default_cc or "").encode()

    def column(raws: Sequence[str], row_ccs: Sequence[bytes | None] | None) -> list[bytes | None]:
        n = len(raws)
        ccs = [None] * n if row_ccs is None else row_ccs
        cells = list(map(str.strip, raws))
        text = "\n".join(cells)
        if text.count("\n") != n - 1:  # a cell holds a newline: the lines are not the cells
            return list(map(digits_of, raws, ccs))
        joined = text.encode("ascii", "ignore")
        odd: list[int] = []
        if len(rest := joined.translate(None, _PHONE_BYTES)) >= n:  # more than the newlines
            odd += compress(range(n), rest.split(b"\n"))
        if b"(0)" in joined:
            odd += compress(range(n), map(contains, joined.split(b"\n"), repeat(b"(0)")))
        # Odd cells come out wrong here, and right below.
        all_digits = joined.translate(None, _PHONE_PUNCTUATION).split(b"\n")
        out: list[bytes | None] = []
        for s, digits, row_cc in zip(cells, all_digits, ccs, strict=True):
            if not s:
                out.append(b"")
                continue
            # "+44..." and "0044..." carry their country code; other leading zeros do not.
            international = s[0] == "+" or digits.startswith(b"00")
            digits = digits.lstrip(b"0")
            cc = row_cc or default
            if cc and not (international or (len(digits) > 10 and digits.startswith(cc))):
                digits = cc + digits
            out.append(digits if 7 <= len(digits) <= 15 else None)
        for i in odd:
            out[i] = digits_of(raws[i], ccs[i])
        return out

    return column


def _odd_phone(text: str, cc: bytes) -> bytes | None:
    """A phone cell the fast rule is unsure of, read by phonenumbers in the region of the
    calling code `cc`: the code and the national number, without the extension."""
    import phonenumbers  # here: it takes a while to load, and few cells need it

    region = phonenumbers.region_code_for_country_code(int(cc)) if cc else "ZZ"
    if text.startswith("00"):  # international wherever it was written, as in the fast rule
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except (phonenumbers.NumberParseException, ValueError):
        return None
    digits = f"{number.country_code}{phonenumbers.national_significant_number(number)}"
    return digits.encode() if 7 <= len(digits) <= 15 else None


def calling_code(country: str) -> bytes | None:
    """The calling code of a COUNTRY cell's country ("Germany" -> b"49"), None for none."""
    code = _country(country)
    if not code:
        return None
    import phonenumbers  # here: only jobs with PHONE and COUNTRY columns need it

    return str(phonenumbers.country_code_for_region(code.upper()) or "").encode() or None


def _phone(default_cc: str | None) -> Normalizer:
    digits_of = phone_digits(default_cc)

    def phone(raw: str) -> str | None:
        digits = digits_of(raw, None)
        return digits if digits is None else digits.decode()

    return phone


def _gender(raw: str) -> str | None:
    s = raw.strip().lower()
    return _GENDERS.get(s) if s else ""


def _number_part(lo: int, hi: int, width: int) -> Normalizer:
    def part(raw: str) -> str | None:
        s = raw.strip()
        if not s:
            return ""
        if not (s.isascii() and s.isdigit() and len(s) <= width):
            return None
        n = int(s)
        return f"{n:0{width}d}" if lo <= n <= hi else None

    return part


def _year(this_year: int) -> Normalizer:
    def year(raw: str) -> str | None:
        s = raw.strip()
        if not s:
            return ""
        ok = len(s) == 4 and s.isascii() and s.isdigit() and 1900 <= int(s) <= this_year
        return s if ok else None

    return year


def _state(raw: str) -> str | None:
    s = _name(raw)
    return US_STATES.get(s, s) if s else s


def _zip(raw: str) -> str | None:
    s = raw.strip().lower()
    if not s:
        return ""
    if s.isascii():
        n = len(s)
        # US: 5 digits, 9 digits, or ZIP+4 "12345-6789" -> the first five digits.
        if (n == 5 or n == 9) and s.isdigit():
            return s[:5]
        if n == 10 and s[5] in "- " and s[:5].isdigit() and s[6:].isdigit():
            return s[:5]
        out = s.translate(_DROP_NON_ALNUM)
    else:
        out = "".join(c for c in unicodedata.normalize("NFC", s) if c.isalnum())
    return out or None


def _country(raw: str) -> str | None:
    s = _name(raw)
    return COUNTRIES.get(s) if s else s


def _madid(raw: str) -> str | None:
    s = raw.strip().lower()
    if not s:
        return ""
    # 64 hex digits with no hyphen is a SHA-256 digest: MADID must go unhashed, and Meta
    # would never match a hashed one, so it is a reject rather than a silent miss.
    if len(s) == 64 and "-" not in s:
        return None
    if _HEX_HYPHEN.issuperset(s) and 16 <= len(s) - s.count("-") <= 64:
        return s
    return None


def _extern_id(raw: str) -> str | None:
    s = raw.strip()
    if not s.isascii():
        s.encode()  # raises on lone surrogates, which would break the JSON payload later
    return s


def lookalike(raw: str) -> int | float | None:
    """A non-negative finite number, int when the text is integral; None when it is not one."""
    s = raw.strip()
    # int()/float() accept "1_000" and other scripts' digits; a spreadsheet value would not.
    if not s or "_" in s or not s.isascii():
        return None
    try:
        if s.isascii() and s.isdigit():
            n = int(s)
            if n <= _INT64_MAX:  # orjson cannot encode bigger ints
                return n
        f = float(s)
    except ValueError:
        return None
    if math.isnan(f) or math.isinf(f) or f < 0:
        return None
    return f + 0.0  # turns -0.0 into 0.0


def is_digest(s: str) -> bool:
    return len(s) == 64 and _HEX.issuperset(s)


def normalizers(default_cc: str | None, this_year: int) -> dict[str, Normalizer]:
    return {
        "EXTERN_ID": _extern_id,
        "EMAIL": _email,
        "PHONE": _phone(default_cc),
        "GEN": _gender,
        "DOBY": _year(this_year),
        "DOBM": _number_part(1, 12, 2),
        "DOBD": _number_part(1, 31, 2),
        "LN": _name,
        "FN": _name,
        "FI": _first_initial,
        "CT": _name,
        "ST": _state,
        "ZIP": _zip,
        "MADID": _madid,
        "COUNTRY": _country,
    }


def normalize_value(key: str, raw: str, *, default_country_code: str | None = None) -> str | None:
    """The normalized, not hashed, value: "" for an empty cell, None for an invalid one.

    A hashed key whose value is already a SHA-256 hex digest comes back lowercased.
    LOOKALIKE_VALUE comes back as the number's text ("44.5", "140").
    """
    if key == VALUE_KEY:
        if not raw.strip():
            return ""
        n = lookalike(raw)
        return None if n is None else str(n)
    if key not in PLAIN_KEYS:
        s = raw.strip()
        if is_digest(s):
            return s.lower()
    cc = NormalizeOptions(default_country_code=default_country_code).default_country_code
    try:
        return normalizers(cc, datetime.date.today().year)[key](raw)
    except ValueError:  # text that cannot be encoded (lone surrogates) is invalid, as in chunks
        return None
