"""Normalize and SHA-256 hash identifiers by Meta's customer-file rules (SPEC section 8).

This is the hot path: `normalize_chunk` runs once per chunk in worker processes, so every
key gets one small closure built per chunk, and the per-cell work sticks to str methods.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from .errors import ConfigError
from .rows import HashedChunk, RawChunk, Reject

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
# Low-cardinality keys: their results are memoized per chunk (names, cities, states repeat).
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
    "virginislands": "vi", "americansamoa": "as", "northernmarianaislands": "mp",
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

_NON_DIGITS = re.compile(r"[^0-9]+")
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
    return s if not s or _email_cell(s) else None  # one validity rule: the hot path's


def _phone(default_cc: str | None) -> Normalizer:
    def phone(raw: str) -> str | None:
        s = raw.strip()
        if not s:
            return ""
        digits = s if s.isdigit() and s.isascii() else _NON_DIGITS.sub("", s)
        # "+44..." and "0044..." carry their country code; other leading zeros are a trunk prefix.
        international = s[0] == "+" or digits.startswith("00")
        digits = digits.lstrip("0")
        if default_cc and not (
            international or (len(digits) > 10 and digits.startswith(default_cc))
        ):
            digits = default_cc + digits
        return digits if 7 <= len(digits) <= 15 else None

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
        if n == 10 and s[5] == "-" and s[:5].isdigit() and s[6:].isdigit():
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
    if not s or "_" in s:  # int()/float() accept "1_000"; a spreadsheet value would not
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
_MISS = object()


def _hashed(norm: Normalizer) -> CellFn:
    sha = _sha256

    def cell(raw: str) -> str | None:
        if len(raw) >= 64:
            s = raw.strip()
            if _is_digest(s):
                return s.lower()
        v = norm(raw)
        return sha(v.encode()).hexdigest() if v else v

    return cell


def _email_cell(raw: str, sha: Callable[[bytes], _Digest] = _sha256) -> str | None:
    # EMAIL alone is the common big upload: validation and hashing in one call, str methods only.
    s = raw.strip().lower()
    local, _, domain = s.partition("@")
    if (
        local
        and "." in domain
        and "@" not in domain
        and " " not in s
        and domain[0] != "."  # subscripts, not a slice: this check runs per row
        and s[-1] != "."
        and s.isprintable()  # tabs, newlines, no-break spaces
    ):
        return sha(s.encode()).hexdigest()
    if not s:
        return ""
    return s if _is_digest(s) else None


def _prehashed_cell(raw: str) -> str | None:
    s = raw.strip()
    if not s:
        return ""
    return s.lower() if _is_digest(s) else None


def _lookalike_cell(raw: str) -> Cell | None:
    return "" if not raw.strip() else _lookalike(raw)


def _memoized(fn: CellFn) -> CellFn:
    cache: dict[str, Cell | None] = {}  # one per chunk, so it stays as small as the chunk
    get = cache.get

    def cell(raw: str) -> Cell | None:
        v = get(raw, _MISS)
        if v is _MISS:
            v = cache[raw] = fn(raw)
        return v  # type: ignore[return-value]  # _MISS was replaced above

    return cell


def _cell_functions(schema: Schema, options: NormalizeOptions) -> list[CellFn]:
    norms = _normalizers(options.default_country_code, datetime.date.today().year)
    fns: list[CellFn] = []
    for key in schema.keys:
        fn: CellFn
        if key == _VALUE_KEY:
            fn = _lookalike_cell
        elif key in PLAIN_KEYS:
            fn = norms[key]
        elif options.prehashed:
            fn = _prehashed_cell
        elif key == "EMAIL":
            fn = _email_cell
        else:
            fn = _hashed(norms[key])
        fns.append(_memoized(fn) if key in _CACHED_KEYS else fn)
    return fns


def _safe_cells(fns: list[CellFn], values: tuple[str, ...]) -> list[Cell | None]:
    """Cell by cell, so a value no normalizer can take (lone surrogates...) is only invalid."""
    out: list[Cell | None] = []
    for f, v in zip(fns, values, strict=False):
        try:
            out.append(f(v))
        except ValueError:  # UnicodeEncodeError is one
            out.append(None)
    return out


def normalize_chunk(chunk: RawChunk, schema: Schema, options: NormalizeOptions) -> HashedChunk:
    """Normalize and hash one chunk; every input row ends up in `data` or in `rejects`, once."""
    fns = _cell_functions(schema, options)
    keys = schema.keys
    n_keys = len(keys)
    reasons = [
        "invalid_hash" if options.prehashed and k not in PLAIN_KEYS else f"invalid_{k.lower()}"
        for k in keys
    ]
    value_at = keys.index(_VALUE_KEY) if _VALUE_KEY in keys else -1
    id_at = [i for i in range(n_keys) if i != value_at]

    row_numbers: list[int] = []
    data: list[list[Cell]] = []
    rejects = list(chunk.rejects)
    keep_row = row_numbers.append
    keep_data = data.append

    values_list = chunk.values
    if n_keys == 1 and all(len(v) == 1 for v in values_list):
        # Single-column uploads (EMAIL_SHA256...): C-level map, no per-row Python list work.
        f = fns[0]
        try:
            cells = list(map(f, map(itemgetter(0), values_list)))
        except ValueError:
            cells = [_safe_cells(fns, v)[0] for v in values_list]
        if all(cells):
            data = [[c] for c in cells]  # type: ignore[list-item]  # all() ruled out None
            return HashedChunk(list(chunk.row_numbers), data, rejects, chunk.rows_read)
        for row, c in zip(chunk.row_numbers, cells, strict=True):
            if c:
                keep_row(row)
                keep_data([c])
            elif c == "":
                rejects.append(Reject(row, "", "empty_row"))
            else:
                rejects.append(Reject(row, keys[0], reasons[0]))
        return HashedChunk(row_numbers, data, rejects, chunk.rows_read)

    for row, values in zip(chunk.row_numbers, chunk.values, strict=True):
        if len(values) != n_keys:  # a reader bug; reject rather than send misaligned columns
            rejects.append(Reject(row, "", "ragged_row"))
            continue
        try:
            out = [f(v) for f, v in zip(fns, values, strict=False)]
        except ValueError:
            out = _safe_cells(fns, values)
        # Fast path: every cell valid, no value column, at least one non-empty identifier.
        if value_at < 0 and None not in out and any(out):
            keep_row(row)
            keep_data(out)  # type: ignore[arg-type]  # no None in it, checked above
            continue
        ids = [out[i] for i in id_at]
        if not any(c for c in ids if c is not None):
            first_bad = next((i for i in id_at if out[i] is None), -1)
            if first_bad < 0:
                rejects.append(Reject(row, "", "empty_row"))
            else:
                rejects.append(Reject(row, keys[first_bad], reasons[first_bad]))
            continue
        if value_at >= 0 and (out[value_at] is None or out[value_at] == ""):
            rejects.append(Reject(row, _VALUE_KEY, "invalid_lookalike_value"))
            continue
        keep_row(row)
        keep_data(["" if c is None else c for c in out])

    return HashedChunk(row_numbers, data, rejects, chunk.rows_read)
