"""Normalize and SHA-256 hash identifiers by Meta's customer-file rules (docs/normalization.md).

This is the hot path: `normalize_chunk` runs once per chunk in worker processes. It works a
column at a time, so the per-cell work is C-level `map`s over str methods rather than Python
bytecode per cell: distinct values of low-cardinality keys are normalized once per chunk, and
EMAIL is validated with whole-column checks that only fall back to a per-cell rule for the few
rows they flag.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import math
import struct
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, count, repeat
from operator import add, contains, itemgetter, not_
from typing import Protocol, TypeVar, cast

import orjson

from .errors import ConfigError
from .rows import EncodedChunk, HashedChunk, RawChunk, Reject

KEYS: tuple[str, ...] = (
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
    "LOOKALIKE_VALUE",
)
PLAIN_KEYS: frozenset[str] = frozenset({"EXTERN_ID", "MADID", "LOOKALIKE_VALUE"})
SINGLE_KEY_SCHEMAS: dict[str, str] = {
    "EMAIL_SHA256": "EMAIL",
    "PHONE_SHA256": "PHONE",
    "MOBILE_ADVERTISER_ID": "MADID",
}
_VALUE_KEY = "LOOKALIKE_VALUE"
# Low-cardinality keys: each distinct value is normalized once per chunk (names, states repeat).
_CACHED_KEYS = frozenset(
    {"GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST", "ZIP", "COUNTRY"}
)

Cell = str | float | int
Normalizer = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Schema:
    """The payload columns, in order, and the single-key schema name when that style is used."""

    keys: tuple[str, ...]
    single_key: str | None = None

    def __post_init__(self) -> None:
        # Validated here too, not only in parse(): callers also build Schema(keys) directly.
        keys = tuple(self.keys)
        object.__setattr__(self, "keys", keys)
        if not keys:
            raise ConfigError("the schema is empty")
        unknown = [k for k in keys if k not in KEYS]
        if unknown:
            raise ConfigError(f"unknown schema key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
        dups = sorted({k for k in keys if keys.count(k) > 1})
        if dups:
            raise ConfigError(f"duplicate schema key {dups[0]!r}")
        if keys == (_VALUE_KEY,):
            raise ConfigError("the schema needs at least one identifier besides LOOKALIKE_VALUE")
        if self.single_key is not None and (
            SINGLE_KEY_SCHEMAS.get(self.single_key) is None
            or keys != (SINGLE_KEY_SCHEMAS[self.single_key],)
        ):
            raise ConfigError(f"bad single-key schema {self.single_key!r} for keys {keys}")

    @classmethod
    def parse(cls, spec: str | Sequence[str]) -> Schema:
        """Parse "EMAIL,PHONE,FN" (any case, spaces ok), a sequence of names, or "EMAIL_SHA256"."""
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        names = [p.strip().upper() for p in parts]
        if names == [""]:
            raise ConfigError("the schema is empty")
        if "" in names:
            raise ConfigError(f"empty key name in schema {spec!r}")
        singles = [n for n in names if n in SINGLE_KEY_SCHEMAS]
        if singles:
            if len(names) > 1:
                raise ConfigError(f"{singles[0]} is a schema of its own; it cannot be mixed")
            return cls((SINGLE_KEY_SCHEMAS[singles[0]],), singles[0])
        return cls(tuple(names))

    def payload_schema(self) -> str | list[str]:
        return self.single_key if self.single_key else list(self.keys)

    @property
    def is_raw(self) -> bool:
        return self.single_key is None

    @property
    def is_value_based(self) -> bool:
        return _VALUE_KEY in self.keys


@dataclass(frozen=True, slots=True)
class NormalizeOptions:
    prehashed: bool = False  # values already normalized+hashed: validate 64-hex, do not hash again
    default_country_code: str | None = None  # digits like "1"; PHONE numbers without one get it

    def __post_init__(self) -> None:
        cc = self.default_country_code
        if cc is not None:
            cc = cc.strip().lstrip("+")
            if not (cc.isascii() and cc.isdigit() and 1 <= len(cc) <= 3):
                raise ConfigError(f"default country code must be 1 to 3 digits, got {cc!r}")
            object.__setattr__(self, "default_country_code", cc)


# --- tables -------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")
_HEX_HYPHEN = frozenset("0123456789abcdef-")
_GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}

# Letters-only lowercase name -> USPS code; the codes map to themselves below.
_US_STATES: dict[str, str] = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca",
    "colorado": "co", "connecticut": "ct", "delaware": "de", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia",
    "kansas": "ks", "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md",
    "massachusetts": "ma", "michigan": "mi", "minnesota": "mn", "mississippi": "ms",
    "missouri": "mo", "montana": "mt", "nebraska": "ne", "nevada": "nv", "newhampshire": "nh",
    "newjersey": "nj", "newmexico": "nm", "newyork": "ny", "northcarolina": "nc",
    "northdakota": "nd", "ohio": "oh", "oklahoma": "ok", "oregon": "or", "pennsylvania": "pa",
    "rhodeisland": "ri", "southcarolina": "sc", "southdakota": "sd", "tennessee": "tn",
    "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "westvirginia": "wv", "wisconsin": "wi", "wyoming": "wy", "districtofcolumbia": "dc",
    "washingtondc": "dc", "puertorico": "pr", "guam": "gu", "usvirginislands": "vi",
    "virginislands": "vi", "virginislandsus": "vi", "americansamoa": "as",
    "northernmarianaislands": "mp", "unitedstatesminoroutlyingislands": "um",
}  # fmt: skip
_US_STATES.update({code: code for code in set(_US_STATES.values())})

# ISO 3166-1 alpha-2:alpha-3, all 249 codes (from the iso-codes package).
_ISO = (
    "ad:and ae:are af:afg ag:atg ai:aia al:alb am:arm ao:ago aq:ata ar:arg as:asm at:aut au:aus "
    "aw:abw ax:ala az:aze ba:bih bb:brb bd:bgd be:bel bf:bfa bg:bgr bh:bhr bi:bdi bj:ben bl:blm "
    "bm:bmu bn:brn bo:bol bq:bes br:bra bs:bhs bt:btn bv:bvt bw:bwa by:blr bz:blz ca:can cc:cck "
    "cd:cod cf:caf cg:cog ch:che ci:civ ck:cok cl:chl cm:cmr cn:chn co:col cr:cri cu:cub cv:cpv "
    "cw:cuw cx:cxr cy:cyp cz:cze de:deu dj:dji dk:dnk dm:dma do:dom dz:dza ec:ecu ee:est eg:egy "
    "eh:esh er:eri es:esp et:eth fi:fin fj:fji fk:flk fm:fsm fo:fro fr:fra ga:gab gb:gbr gd:grd "
    "ge:geo gf:guf gg:ggy gh:gha gi:gib gl:grl gm:gmb gn:gin gp:glp gq:gnq gr:grc gs:sgs gt:gtm "
    "gu:gum gw:gnb gy:guy hk:hkg hm:hmd hn:hnd hr:hrv ht:hti hu:hun id:idn ie:irl il:isr im:imn "
    "in:ind io:iot iq:irq ir:irn is:isl it:ita je:jey jm:jam jo:jor jp:jpn ke:ken kg:kgz kh:khm "
    "ki:kir km:com kn:kna kp:prk kr:kor kw:kwt ky:cym kz:kaz la:lao lb:lbn lc:lca li:lie lk:lka "
    "lr:lbr ls:lso lt:ltu lu:lux lv:lva ly:lby ma:mar mc:mco md:mda me:mne mf:maf mg:mdg mh:mhl "
    "mk:mkd ml:mli mm:mmr mn:mng mo:mac mp:mnp mq:mtq mr:mrt ms:msr mt:mlt mu:mus mv:mdv mw:mwi "
    "mx:mex my:mys mz:moz na:nam nc:ncl ne:ner nf:nfk ng:nga ni:nic nl:nld no:nor np:npl nr:nru "
    "nu:niu nz:nzl om:omn pa:pan pe:per pf:pyf pg:png ph:phl pk:pak pl:pol pm:spm pn:pcn pr:pri "
    "ps:pse pt:prt pw:plw py:pry qa:qat re:reu ro:rou rs:srb ru:rus rw:rwa sa:sau sb:slb sc:syc "
    "sd:sdn se:swe sg:sgp sh:shn si:svn sj:sjm sk:svk sl:sle sm:smr sn:sen so:som sr:sur ss:ssd "
    "st:stp sv:slv sx:sxm sy:syr sz:swz tc:tca td:tcd tf:atf tg:tgo th:tha tj:tjk tk:tkl tl:tls "
    "tm:tkm tn:tun to:ton tr:tur tt:tto tv:tuv tw:twn tz:tza ua:ukr ug:uga um:umi us:usa uy:ury "
    "uz:uzb va:vat vc:vct ve:ven vg:vgb vi:vir vn:vnm vu:vut wf:wlf ws:wsm ye:yem yt:myt za:zaf "
    "zm:zmb zw:zwe"
)
# Common English names (letters only, lowercase) -> alpha-2; codes are added from _ISO below.
_COUNTRIES: dict[str, str] = {
    "unitedstates": "us", "unitedstatesofamerica": "us", "america": "us", "us": "us",
    "unitedkingdom": "gb", "uk": "gb", "greatbritain": "gb", "britain": "gb", "england": "gb",
    "scotland": "gb", "wales": "gb", "northernireland": "gb", "germany": "de", "france": "fr",
    "spain": "es", "italy": "it", "canada": "ca", "mexico": "mx", "brazil": "br", "india": "in",
    "japan": "jp", "china": "cn", "australia": "au", "netherlands": "nl", "thenetherlands": "nl",
    "holland": "nl", "belgium": "be", "switzerland": "ch", "austria": "at", "sweden": "se",
    "norway": "no", "denmark": "dk", "finland": "fi", "iceland": "is", "ireland": "ie",
    "portugal": "pt", "poland": "pl", "czechrepublic": "cz", "czechia": "cz", "hungary": "hu",
    "romania": "ro", "greece": "gr", "turkey": "tr", "turkiye": "tr", "russia": "ru",
    "ukraine": "ua", "israel": "il", "unitedarabemirates": "ae", "uae": "ae",
    "saudiarabia": "sa", "egypt": "eg", "southafrica": "za", "nigeria": "ng", "kenya": "ke",
    "morocco": "ma", "argentina": "ar", "chile": "cl", "colombia": "co", "peru": "pe",
    "venezuela": "ve", "southkorea": "kr", "korea": "kr", "republicofkorea": "kr",
    "taiwan": "tw", "hongkong": "hk", "singapore": "sg", "malaysia": "my", "indonesia": "id",
    "thailand": "th", "vietnam": "vn", "philippines": "ph", "pakistan": "pk",
    "bangladesh": "bd", "newzealand": "nz", "puertorico": "pr", "luxembourg": "lu",
    "croatia": "hr", "serbia": "rs", "bulgaria": "bg", "slovakia": "sk", "slovenia": "si",
    "estonia": "ee", "latvia": "lv", "lithuania": "lt",
}  # fmt: skip
for _pair in _ISO.split():
    _a2, _a3 = _pair.split(":")
    _COUNTRIES.setdefault(_a2, _a2)
    _COUNTRIES.setdefault(_a3, _a2)

# bytes.translate deletes these in C: everything but ASCII digits.
_NON_DIGIT_BYTES = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)
# ASCII fast paths: str.translate with these deletes every non-letter / non-alnum ASCII char.
_DROP_NON_ALPHA = {c: None for c in range(128) if not chr(c).isalpha()}
_DROP_NON_ALNUM = {c: None for c in range(128) if not chr(c).isalnum()}
_INT64_MAX = 2**63 - 1


# --- per-key normalizers: raw cell -> normalized text, "" for empty, None for invalid --------


def _letters(raw: str) -> str:
    """Lowercase letters of any script; punctuation, digits and spaces dropped."""
    s = raw.lower()
    if s.isascii():
        return s if s.isalpha() else s.translate(_DROP_NON_ALPHA)
    # NFC so composed and decomposed "é" hash the same. Combining marks are kept because
    # scripts like Devanagari write vowels with them (isalpha() is False for those).
    s = unicodedata.normalize("NFC", s)
    return "".join(c for c in s if c.isalpha() or unicodedata.category(c)[0] == "M")


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
    return s if not s or _is_email(s) else None


def _is_email(s: str) -> bool:
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


def _phone_digits(default_cc: str | None) -> Callable[[str], bytes | None]:
    """PHONE as the ASCII digits to hash, b"" for an empty cell, None for an invalid one."""
    cc = (default_cc or "").encode()

    def phone(raw: str) -> bytes | None:
        s = raw.strip()
        if not s:
            return b""
        # Non-ASCII characters (even other scripts' digits) are dropped, as [^0-9] would.
        digits = s.encode("ascii", "ignore").translate(None, _NON_DIGIT_BYTES)
        # "+44..." and "0044..." carry their country code; other leading zeros are a trunk prefix.
        international = s[0] == "+" or digits.startswith(b"00")
        digits = digits.lstrip(b"0")
        if cc and not (international or (len(digits) > 10 and digits.startswith(cc))):
            digits = cc + digits
        return digits if 7 <= len(digits) <= 15 else None

    return phone


def _phone(default_cc: str | None) -> Normalizer:
    digits_of = _phone_digits(default_cc)

    def phone(raw: str) -> str | None:
        digits = digits_of(raw)
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
    return _US_STATES.get(s, s) if s else s


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
    return _COUNTRIES.get(s) if s else s


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


def _lookalike(raw: str) -> int | float | None:
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


def _is_digest(s: str) -> bool:
    return len(s) == 64 and _HEX.issuperset(s)


def _normalizers(default_cc: str | None, this_year: int) -> dict[str, Normalizer]:
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
    if key == _VALUE_KEY:
        if not raw.strip():
            return ""
        n = _lookalike(raw)
        return None if n is None else str(n)
    if key not in PLAIN_KEYS:
        s = raw.strip()
        if _is_digest(s):
            return s.lower()
    cc = NormalizeOptions(default_country_code=default_country_code).default_country_code
    try:
        return _normalizers(cc, datetime.date.today().year)[key](raw)
    except ValueError:  # text that cannot be encoded (lone surrogates) is invalid, as in chunks
        return None


class _Digest(Protocol):
    def hexdigest(self) -> str: ...


def _find_sha256() -> Callable[[bytes], _Digest]:
    # CPython's built-in SHA-256 is about twice as fast as OpenSSL's for short inputs (no
    # EVP context setup); same digest. Private module name varies, so hashlib is the fallback.
    for name in ("_sha2", "_sha256"):
        try:
            fn: Callable[[bytes], _Digest] = importlib.import_module(name).sha256
            return fn
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_sha256 = _find_sha256()


def hash_value(normalized: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes."""
    return _sha256(normalized.encode()).hexdigest()


# --- chunks ---------------------------------------------------------------------------------

CellFn = Callable[[str], Cell | None]
ColumnFn = Callable[[Sequence[str]], list[Cell | None]]

# The digest type's own method, so a whole column hashes through C-level maps.
_hexdigest: Callable[[_Digest], str] = type(_sha256(b"")).hexdigest


def _passthrough(raw: str) -> str | None:
    """The lowercased digest when a cell already holds one, else None."""
    s = raw.strip()
    return s.lower() if _is_digest(s) else None


def _hashed(norm: Normalizer) -> CellFn:
    sha = _sha256

    def cell(raw: str) -> str | None:
        if len(raw) >= 64 and (digest := _passthrough(raw)) is not None:
            return digest
        v = norm(raw)
        return sha(v.encode()).hexdigest() if v else v

    return cell


def _hashed_phone(default_cc: str | None) -> CellFn:
    # The digits are hashed as the bytes they were cut from: no str round trip per cell.
    digits_of = _phone_digits(default_cc)
    sha = _sha256

    def cell(raw: str) -> str | None:
        if len(raw) >= 64 and (digest := _passthrough(raw)) is not None:
            return digest
        digits = digits_of(raw)
        if digits:
            return sha(digits).hexdigest()
        return None if digits is None else ""

    return cell


def _email_column(raws: Sequence[str]) -> list[Cell | None]:
    """EMAIL for a whole column, by checks over the column's text instead of `_is_email` per
    cell (a third of the cost). They place every row that breaks the rule; only those get
    the per-cell look, and columns with rare shapes get it for every row."""
    cells = list(map(str.lower, map(str.strip, raws)))
    rows = range(len(cells))
    text = "\n".join(cells)
    no_at = list(compress(rows, map(not_, map(contains, cells, repeat("@")))))
    if _plain_addresses(text, cells, len(cells) - len(no_at)):
        odd = no_at
    else:
        odd = list(compress(rows, map(not_, map(_is_email, cells))))
    todo = cells
    if odd:
        todo = cells.copy()
        for i in odd:
            todo[i] = ""  # not hashed as it is: it may not even encode
    out: list[Cell | None] = list(map(_hexdigest, map(_sha256, map(str.encode, todo))))
    for i in odd:
        out[i] = _not_an_address(cells[i])
    return out


def _email_cell(s: str) -> str | None:
    """One trimmed, lowercased EMAIL cell as it goes in the payload (the per-cell rule): its
    hash, "" when empty, the digest it already is, or None when it is no address."""
    return _sha256(s.encode()).hexdigest() if _is_email(s) else _not_an_address(s)


def _not_an_address(s: str) -> str | None:
    """A trimmed, lowercased EMAIL cell that is no address: "" when empty, the digest it
    already is, else None (invalid)."""
    return "" if not s else s if _is_digest(s) else None


_T = TypeVar("_T")


def _positions(items: list[_T], value: _T) -> list[int]:
    """Where `value` stands in `items`: list.index scans in C, so a rare value costs little."""
    found: list[int] = []
    at = -1
    try:
        while True:
            at = items.index(value, at + 1)
            found.append(at)
    except ValueError:
        return found


def _set_aside(
    rows: Iterable[int], lines: list[bytes], cells: list[bytes], fixed: dict[int, str | None]
) -> bytes:
    """Gives `rows` the per-cell rule on their text in `fixed` and blanks their cells, out of
    the whole-block checks' way (a cell with no "@"); returns the cells joined again."""
    for i in rows:
        fixed[i] = _email_cell(lines[i].decode().strip().lower())
        cells[i] = b""
    return b"\n".join(cells)


def _no_at_if_plain(joined: bytes, skeleton: bytes, n: int) -> list[int] | None:
    """The cells without an "@", when every other one of the `n` cells is an address by
    `_is_email` (the whole-block checks); None when the checks cannot tell."""
    if not _plain_utf8(joined, skeleton):
        return None
    at_signs = skeleton.translate(None, b".")  # now only "@"s and newlines: a part per cell
    no_at = _positions(at_signs.split(b"\n"), b"")
    # As many "@" as cells holding one: each holds exactly one.
    return no_at if len(at_signs) - (n - 1) == n - len(no_at) else None


def _odd_cells(joined: bytes, skeleton: bytes, n: int) -> set[int]:
    """The cells that fail one of `_no_at_if_plain`'s checks, found from where it fails
    (a scan or two per check), so that only they need the per-cell rule."""
    odd = set(
        _rows_at(
            joined,
            [p + 1 for p in _find_all(joined, b"\n@")]  # an empty local part
            + _find_all(joined, b"@.")
            + _find_all(joined, b".\n"),
        )
    )
    if joined.startswith(b"@"):
        odd.add(0)
    if joined.endswith(b".") or skeleton.endswith(b"@"):
        odd.add(n - 1)
    # Cells with a space or a control character, ...
    odd.update(compress(range(n), skeleton.translate(None, b"@.").split(b"\n")))
    # ... an "@" without a "." after it, or more than one "@".
    odd.update(_rows_at(skeleton, _find_all(skeleton, b"@\n")))
    at_signs = skeleton.translate(None, _NOT_AT_OR_NEWLINE)
    odd.update(_rows_at(at_signs, _find_all(at_signs, b"@@")))
    return odd


def _find_all(text: bytes, part: bytes) -> list[int]:
    found: list[int] = []
    at = text.find(part)
    while at >= 0:
        found.append(at)
        at = text.find(part, at + 1)
    return found


def _rows_at(text: bytes, positions: list[int]) -> list[int]:
    """The line (row) of each position in `text`, counting newlines once over the text."""
    rows: list[int] = []
    row = at = 0
    for p in sorted(positions):
        row += text.count(b"\n", at, p)
        at = p
        rows.append(row)
    return rows


_NOT_AT_OR_NEWLINE = bytes(b for b in range(256) if b not in b"@\n")

# Per payload row: how the digests are joined, and each row's bytes with its comma: the
# digest's 64 characters in quotes, in brackets too for a (one-key) list.
_EMAIL_ROWS = {True: (b'"', '","', b'"', 67), False: (b'["', '"],["', b'"]', 69)}
_EVEN_STOPS: dict[int, array[int]] = {}


def _even_stops(width: int, rows: int) -> array[int]:
    """`EncodedChunk.stops` for `rows` rows of `width` bytes each (comma included), sliced
    from a cached run: array() from a range appends its ints one at a time."""
    run = _EVEN_STOPS.get(width)
    if run is None or len(run) < rows:
        size = max(rows, 8192)
        run = _EVEN_STOPS[width] = array("q", range(width, width * size + 1, width))
    return run[:rows]


def encode_email_lines(lines: list[bytes], first_row: int, schema: Schema) -> EncodedChunk | None:
    """`encode_chunk` of an EMAIL-only, not prehashed, chunk given as the UTF-8 lines of its
    rows, one cell each, numbered from `first_row` (`CsvBlock.cell_lines`), worked on as
    bytes: no str per cell, and the payload JSON joined straight from the digests.

    None when the whole-block checks still fail with the cells they flag set aside (not
    seen yet); the general path then gives the same result for that block, cell by cell.
    """
    # ASCII bytes trim and lowercase as their text does (bytes.strip misses the \x1c-\x1f
    # separators str.strip takes, but any control character fails the checks below).
    cells = list(map(bytes.lower, map(bytes.strip, lines)))
    n = len(cells)
    joined = b"\n".join(cells)
    # Rows whose outcome the per-cell rule gives, on their text: non-ASCII ones (bytes.lower
    # would miss their capitals; rare), those the checks flag, and those without an "@".
    fixed: dict[int, str | None] = {}
    if not joined.isascii():
        joined = _set_aside(_positions(list(map(bytes.isascii, cells)), False), lines, cells, fixed)
    skeleton = joined.translate(None, _EMAIL_NOISE)
    if (no_at := _no_at_if_plain(joined, skeleton, n)) is None:
        # A few odd addresses in a block are common: find them, set them aside, look again.
        joined = _set_aside(_odd_cells(joined, skeleton, n), lines, cells, fixed)
        skeleton = joined.translate(None, _EMAIL_NOISE)
        if (no_at := _no_at_if_plain(joined, skeleton, n)) is None:
            return None
    hexes = list(map(_hexdigest, map(_sha256, cells)))
    for i in no_at:
        if i not in fixed:
            fixed[i] = _email_cell(lines[i].decode().strip().lower())
    rejects: list[Reject] = []
    keep: list[bool] = []
    for i in sorted(fixed):
        if out := fixed[i]:
            hexes[i] = out
            continue
        if not keep:
            keep = [True] * n
        keep[i] = False
        rejects.append(
            Reject(first_row + i, "", "empty_row")
            if out == ""
            else Reject(first_row + i, "EMAIL", "invalid_email")
        )
    numbers: Iterable[int] = range(first_row, first_row + n)
    if keep:
        hexes = list(compress(hexes, keep))
        numbers = compress(numbers, keep)
    # struct packs the row numbers in one call, twice as fast as array() taking them singly.
    row_numbers = array("q", struct.pack(f"{len(hexes)}q", *numbers))
    start, sep, end, width = _EMAIL_ROWS[schema.single_key is not None]
    data = start + sep.join(hexes).encode() + end if hexes else b""
    return EncodedChunk(row_numbers, data, _even_stops(width, len(hexes)), rejects, n)


# Deleted from a column's UTF-8 to leave its skeleton: "@", ".", newlines, spaces, controls.
_EMAIL_NOISE = bytes(b for b in range(256) if (0x20 < b < 0x7F and b not in b"@.") or b >= 0x80)


def _plain_addresses(text: str, cells: list[str], with_at: int) -> bool:
    """Whether every one of the `with_at` cells holding an "@" is an address by `_is_email`.

    `text` is the cells joined by newlines. True needs: no newline inside a cell, as many
    "@" in the text as cells holding one (so each holds exactly one), and `_plain_utf8`.
    """
    if (
        text.count("@") != with_at
        or text.count("\n") != len(cells) - 1  # a cell's own newline would pass for a border
    ):
        return False
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return False
    # Non-ASCII characters left the skeleton whole; some (no-break spaces...) are unprintable.
    return _plain_utf8(raw, raw.translate(None, _EMAIL_NOISE)) and (
        text.isascii() or "".join(cells).isprintable()
    )


def _plain_utf8(text: bytes, skeleton: bytes) -> bool:
    """The rest of `_plain_addresses`, on cells joined by newlines as UTF-8 whose every cell
    with an "@" holds exactly one, and their `skeleton` (`_EMAIL_NOISE` deleted).

    True needs: no "@" right after a newline (empty local part), no "@." (domain starting
    with a dot), no cell ending in ".", no space or ASCII control character, and a "." after
    every "@" within its line, read from the skeleton. UTF-8 holds no ASCII byte inside
    another character, so these byte tests say what they would on the text.
    """
    return not (
        b"@." in text
        or b"\n@" in text
        or b".\n" in text
        or text.startswith(b"@")
        or text.endswith(b".")
        # A space, an ASCII control character, or a domain without a dot.
        or skeleton.translate(None, b"@.\n")
        or b"@\n" in skeleton
        or skeleton.endswith(b"@")
    )


def _prehashed_cell(raw: str) -> str | None:
    s = raw.strip()
    if not s:
        return ""
    return s.lower() if _is_digest(s) else None


def _lookalike_cell(raw: str) -> Cell | None:
    return "" if not raw.strip() else _lookalike(raw)


def _safe(fn: CellFn, raw: str) -> Cell | None:
    """One cell, where a value no normalizer can take (lone surrogates...) is only invalid."""
    try:
        return fn(raw)
    except ValueError:  # UnicodeEncodeError is one
        return None


def _by_cell(fn: CellFn) -> ColumnFn:
    def column(raws: Sequence[str]) -> list[Cell | None]:
        try:
            return list(map(fn, raws))
        except ValueError:
            return [_safe(fn, raw) for raw in raws]

    return column


def _by_distinct(fn: CellFn) -> ColumnFn:
    # One call per distinct value, kept for this chunk only so it stays as small as the chunk.
    def column(raws: Sequence[str]) -> list[Cell | None]:
        results: dict[str, Cell | None] = dict.fromkeys(raws)
        try:
            for raw in results:
                results[raw] = fn(raw)
        except ValueError:
            for raw in results:
                results[raw] = _safe(fn, raw)
        return list(map(results.__getitem__, raws))

    return column


def _column_functions(schema: Schema, options: NormalizeOptions) -> list[ColumnFn]:
    cc = options.default_country_code
    norms = _normalizers(cc, datetime.date.today().year)
    columns: list[ColumnFn] = []
    for key in schema.keys:
        fn: CellFn
        if key == _VALUE_KEY:
            fn = _lookalike_cell
        elif key in PLAIN_KEYS:
            fn = norms[key]
        elif options.prehashed:
            fn = _prehashed_cell
        elif key == "EMAIL":
            columns.append(_email_column)
            continue
        elif key == "PHONE":
            fn = _hashed_phone(cc)
        else:
            fn = _hashed(norms[key])
        columns.append(_by_distinct(fn) if key in _CACHED_KEYS else _by_cell(fn))
    return columns


def normalize_chunk(chunk: RawChunk, schema: Schema, options: NormalizeOptions) -> HashedChunk:
    """Normalize and hash one chunk; every input row ends up in `data` or in `rejects`, once."""
    numbers, columns, rejects = _normalized(chunk, schema, options)
    data: list[list[Cell]] = list(map(list, zip(*columns, strict=True)))
    return HashedChunk(numbers, data, rejects, chunk.rows_read)


def encode_chunk(chunk: RawChunk, schema: Schema, options: NormalizeOptions) -> EncodedChunk:
    """`normalize_chunk`, with each row already serialized as it goes in the payload."""
    numbers, columns, rejects = _normalized(chunk, schema, options)
    rows: Sequence[object] = columns[0] if schema.single_key else list(zip(*columns, strict=True))
    if PLAIN_KEYS.isdisjoint(schema.keys):
        # Every cell is a hex digest or "", which JSON writes as its text in quotes: one dump
        # of the whole list, and each row's length from its cells' lengths.
        data = orjson.dumps(rows)[1:-1]
        texts = cast(list[list[str]], columns)
        if schema.single_key:
            lengths = map(len, texts[0])
            extra = 3  # the quotes and the comma after
        else:
            lengths = map(sum, zip(*[map(len, column) for column in texts], strict=True))
            extra = 3 * len(columns) + 2  # quotes, commas between and after, brackets
        stops = array("q", accumulate(map(add, lengths, repeat(extra))))
    else:
        fragments = list(map(orjson.dumps, rows))
        data = b",".join(fragments)
        # Where each row's comma falls, plus one: the running length of rows and commas.
        stops = array("q", map(add, accumulate(map(len, fragments)), count(1)))
    return EncodedChunk(array("q", numbers), data, stops, rejects, chunk.rows_read)


def _normalized(
    chunk: RawChunk, schema: Schema, options: NormalizeOptions
) -> tuple[list[int], list[list[Cell]], list[Reject]]:
    """The row numbers of the rows sent, their payload cells column by column, and the
    rejects (the reader's and this chunk's, in input order)."""
    keys = schema.keys
    width = len(keys)
    reasons = [
        "invalid_hash" if options.prehashed and k not in PLAIN_KEYS else f"invalid_{k.lower()}"
        for k in keys
    ]
    value_at = keys.index(_VALUE_KEY) if _VALUE_KEY in keys else -1
    id_at = [i for i in range(width) if i != value_at]
    numbers, values = chunk.row_numbers, chunk.values
    rejects = list(chunk.rejects)
    if not values:
        return [], [[] for _ in keys], rejects

    # Reasons by row position, so rejects come out in input order whichever check found them.
    dropped: dict[int, Reject] = {}
    if set(map(len, values)) != {width}:
        # A reader bug; reject rather than send misaligned columns. A blank stand-in keeps
        # the other rows' positions.
        blank = ("",) * width
        values = values.copy()
        for i, row in enumerate(values):
            if len(row) != width:
                dropped[i] = Reject(numbers[i], "", "ragged_row")
                values[i] = blank
    # One pass per key: zip(*values) would advance an iterator per row for every cell.
    columns = [
        fn(list(map(itemgetter(k), values)))
        for k, fn in enumerate(_column_functions(schema, options))
    ]

    ids = [columns[i] for i in id_at]
    # A row is sent when one identifier is valid and not empty, so only rows whose first
    # identifier is not can be rejected.
    for i in compress(range(len(values)), map(not_, ids[0])):
        if i in dropped or any(column[i] for column in ids[1:]):
            continue
        bad = next((k for k in id_at if columns[k][i] is None), -1)
        dropped[i] = (
            Reject(numbers[i], keys[bad], reasons[bad])
            if bad >= 0
            else (Reject(numbers[i], "", "empty_row"))
        )
    if value_at >= 0:
        for i, v in enumerate(columns[value_at]):
            if (v is None or v == "") and i not in dropped:
                dropped[i] = Reject(numbers[i], _VALUE_KEY, "invalid_lookalike_value")

    # An invalid cell of a row that is sent goes as "" (unknown), never as a hash.
    cells: list[list[Cell]] = [
        [("" if c is None else c) for c in column] if None in column else column  # type: ignore[misc]
        for column in columns
    ]
    if not dropped:
        return list(numbers), cells, rejects
    keep = [True] * len(values)
    for i in dropped:
        keep[i] = False
    rejects.extend(dropped[i] for i in sorted(dropped))
    return (
        list(compress(numbers, keep)),
        [list(compress(column, keep)) for column in cells],
        rejects,
    )
