"""The payload's columns: Meta's schema keys, which of them go unhashed, and the options of
normalizing. Rules for each key are in `rules.py`; the key table is documented in
docs/normalization.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._errors import ConfigError

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


# Keys that can pick a person out; the others (gender, birth date, places) only narrow a
# match down, so a row needs one of these to be worth sending.
IDENTIFYING_KEYS: frozenset[str] = frozenset(
    {"EMAIL", "PHONE", "MADID", "EXTERN_ID", "FN", "LN", "FI"}
)


SINGLE_KEY_SCHEMAS: dict[str, str] = {
    "EMAIL_SHA256": "EMAIL",
    "PHONE_SHA256": "PHONE",
    "MOBILE_ADVERTISER_ID": "MADID",
}


VALUE_KEY = "LOOKALIKE_VALUE"


# Low-cardinality keys: each distinct value is normalized once per chunk (names, states repeat).
CACHED_KEYS = frozenset(
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
        if keys == (VALUE_KEY,):
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
        return VALUE_KEY in self.keys


@dataclass(frozen=True, slots=True)
class NormalizeOptions:
    prehashed: bool = False  # values already normalized+hashed: validate 64-hex, do not hash again
    default_country_code: str | None = None  # digits like "1"; PHONE numbers without one get it
    packed: bool = False  # the rows packed too, with their digests (a mirror's diff: packed.py)

    def __post_init__(self) -> None:
        cc = self.default_country_code
        if cc is not None:
            cc = cc.strip().lstrip("+")
            if not (cc.isascii() and cc.isdigit() and 1 <= len(cc) <= 3):
                raise ConfigError(f"default country code must be 1 to 3 digits, got {cc!r}")
            object.__setattr__(self, "default_country_code", cc)
