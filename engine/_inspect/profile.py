"""What the inspection counts in one chunk, and how the counts of many chunks add up.

A hashing worker runs `profile_units`: each unit is normalized and hashed exactly as an upload
would (so "valid" means what the upload will send) and, from the same cells, counted. Only
counts and a few hash prefixes (the distinct-value sketches) come back; never a value.
"""

from __future__ import annotations

import datetime
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import and_, itemgetter, ne, not_, or_

from .._hashing.digest import hexdigest, sha256
from .._hashing.encode import encode_chunk
from .._hashing.rules import normalizers, phone_digits
from .._hashing.schema import CACHED_KEYS, PLAIN_KEYS, VALUE_KEY, Cell, NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._rows import EncodedChunk, RawChunk

# Hash prefixes kept per sketch: the distinct count is exact below this many and within about
# 1/sqrt(SKETCH_SIZE) (1.6 %) above (a k-minimum-values sketch).
SKETCH_SIZE = 4096
_PREFIX = 16  # hex digits of a hash kept: 64 bits
_TOP = 1 << (4 * _PREFIX)
STRONG_KEYS = ("EMAIL", "PHONE", "MADID")


@dataclass(slots=True)
class Sketch:
    """The SKETCH_SIZE smallest hash prefixes seen, sorted: a mergeable distinct count."""

    least: list[str] = field(default_factory=list)

    def bound(self) -> str | None:
        """Prefixes at or above this cannot enter (None while the sketch is not full)."""
        return self.least[-1] if len(self.least) >= SKETCH_SIZE else None

    def add(self, prefixes: list[str]) -> None:
        if prefixes:
            self.least = sorted(set(self.least).union(prefixes))[:SKETCH_SIZE]

    def estimate(self) -> int:
        if len(self.least) < SKETCH_SIZE:
            return len(self.least)
        return round((SKETCH_SIZE - 1) * _TOP / (int(self.least[-1], 16) + 1))


@dataclass(slots=True)
class KeyCounts:
    filled: int = 0
    valid: int = 0
    changed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # rows refused for this key
    distinct: Sketch = field(default_factory=Sketch)


@dataclass(slots=True)
class Profile:
    """Counts of some rows of one input. Chunks' profiles `merge` into the input's."""

    keys: tuple[str, ...]
    rows: int = 0
    rows_rejected: Counter[str] = field(default_factory=Counter)
    per_key: dict[str, KeyCounts] = field(default_factory=dict)
    by_valid_keys: Counter[int] = field(default_factory=Counter)  # 0, 1, 2, 3 (3 or more)
    tiers: Counter[str] = field(default_factory=Counter)
    rows_sendable: int = 0
    distinct_rows: Sketch = field(default_factory=Sketch)

    def __post_init__(self) -> None:
        for key in self.keys:
            self.per_key.setdefault(key, KeyCounts())

    def merge(self, other: Profile) -> None:
        self.rows += other.rows
        self.rows_rejected.update(other.rows_rejected)
        self.by_valid_keys.update(other.by_valid_keys)
        self.tiers.update(other.tiers)
        self.rows_sendable += other.rows_sendable
        self.distinct_rows.add(other.distinct_rows.least)
        for key, theirs in other.per_key.items():
            ours = self.per_key[key]
            ours.filled += theirs.filled
            ours.valid += theirs.valid
            ours.changed += theirs.changed
            ours.rejected.update(theirs.rejected)
            ours.distinct.add(theirs.distinct.least)

    def bounds(self) -> Bounds:
        """What a worker may leave out of its sketches: prefixes these sketches cannot take."""
        return Bounds(
            {k: c.distinct.bound() for k, c in self.per_key.items()}, self.distinct_rows.bound()
        )


@dataclass(frozen=True, slots=True)
class Bounds:
    per_key: dict[str, str | None]
    rows: str | None


def profile_units(
    units: list[RawChunk | CsvBlock], schema: Schema, options: NormalizeOptions, bounds: Bounds
) -> list[tuple[EncodedChunk, Profile]]:
    """Each unit hashed as an upload hashes it, with its profile (a hashing worker's task)."""
    out = []
    for unit in units:
        chunk = unit if isinstance(unit, RawChunk) else unit.parse()
        profile = Profile(schema.keys)
        counter = _ChunkCounter(profile, schema, options, bounds)
        encoded = encode_chunk(chunk, schema, options, counter.observe)
        profile.rows = encoded.rows_read
        for reject in encoded.rejects:
            profile.rows_rejected[reject.reason] += 1
            if reject.key in profile.per_key:
                profile.per_key[reject.key].rejected[reject.reason] += 1
        out.append((encoded, profile))
    return out


class _ChunkCounter:
    def __init__(
        self, profile: Profile, schema: Schema, options: NormalizeOptions, bounds: Bounds
    ) -> None:
        self.profile = profile
        self.schema = schema
        self.options = options
        self.bounds = bounds

    def observe(self, values: Sequence[tuple[str, ...]], columns: list[list[Cell | None]]) -> None:
        keys = self.schema.keys
        ids: list[list[bool]] = []
        by_key: dict[str, list[bool]] = {}
        for k, key in enumerate(keys):
            raws = list(map(itemgetter(k), values))
            cells = columns[k]
            counts = self.profile.per_key[key]
            empty, invalid = cells.count(""), cells.count(None)
            counts.filled += len(cells) - empty
            if key == VALUE_KEY:
                counts.valid += len(cells) - empty - invalid
                continue
            valid = list(map(bool, cells))
            counts.valid += sum(valid)
            ids.append(valid)
            by_key[key] = valid
            good_raws = list(compress(raws, valid))
            good_cells = list(compress(cells, valid))
            counts.changed += self._changed(key, good_raws, good_cells)
            counts.distinct.add(_prefixes(_hex(key, good_cells), self.bounds.per_key.get(key)))
        self._rows(ids, by_key, columns)

    def _changed(self, key: str, raws: list[str], cells: list[Cell | None]) -> int:
        """How many of these valid cells normalization changed."""
        if key in PLAIN_KEYS:
            return sum(map(ne, raws, cells))
        if key == "EMAIL" or self.options.prehashed:
            return sum(map(ne, raws, map(str.lower, map(str.strip, raws))))
        if key == "PHONE":
            digits = phone_digits(self.options.default_country_code)
            return sum(ne(raw.encode(), digits(raw, None)) for raw in raws)
        norm = normalizers(self.options.default_country_code, datetime.date.today().year)[key]
        if key in CACHED_KEYS:
            moved = {raw for raw in set(raws) if norm(raw) != raw}
            return sum(map(moved.__contains__, raws))
        return sum(map(ne, raws, map(norm, raws)))  # pragma: no cover - every key is above

    def _rows(
        self, ids: list[list[bool]], by_key: dict[str, list[bool]], columns: list[list[Cell | None]]
    ) -> None:
        profile = self.profile
        if not ids:
            return
        per_row = list(map(sum, zip(*ids, strict=True))) if len(ids) > 1 else list(map(int, ids[0]))
        profile.by_valid_keys.update(min(n, 3) for n in per_row)
        profile.tiers.update(_tiers(by_key, per_row))
        sendable = sum(1 for n in per_row if n)
        profile.rows_sendable += sendable
        keys = [k for k in self.schema.keys if k != VALUE_KEY]
        if len(keys) == 1:
            row_hashes = _hex(
                keys[0], list(compress(columns[self.schema.keys.index(keys[0])], ids[0]))
            )
        else:
            # An invalid cell reads "None" here: no hash, and (nearly) no id, is written so.
            at = [self.schema.keys.index(k) for k in keys]
            rows = zip(*[map(str, columns[i]) for i in at], strict=True)
            joined = compress(map("\x1f".join, rows), per_row)
            row_hashes = list(map(hexdigest, map(sha256, map(str.encode, joined))))
        profile.distinct_rows.add(_prefixes(row_hashes, self.bounds.rows))


def _tiers(by_key: dict[str, list[bool]], per_row: list[int]) -> Counter[str]:
    """Rows by the strength of their keys (docs/inspect.md): "strong" has an email, phone or
    mobile advertiser id; "name_place" a name and a place; "weak" some other key; "none" none."""
    none = [False] * len(per_row)
    strong = none
    for key in STRONG_KEYS:
        if key in by_key:
            strong = list(map(or_, strong, by_key[key]))
    name = list(map(or_, by_key.get("FN", none), by_key.get("FI", none)))
    name = list(map(and_, name, by_key.get("LN", none)))
    place = none
    for key in ("ZIP", "CT", "ST"):
        if key in by_key:
            place = list(map(or_, place, by_key[key]))
    n_strong = sum(strong)
    n_name_place = sum(map(and_, map(and_, name, place), map(not_, strong)))
    n_none = per_row.count(0)
    return Counter(
        strong=n_strong,
        name_place=n_name_place,
        weak=len(per_row) - n_strong - n_name_place - n_none,
        none=n_none,
    )


def _hex(key: str, cells: list[Cell | None]) -> list[str]:
    """Hex hashes of valid cells: hashed keys' cells are their digests already."""
    if key in PLAIN_KEYS:
        return [sha256(str(c).encode()).hexdigest() for c in cells]
    return cells  # type: ignore[return-value]


def _prefixes(hashes: list[str], bound: str | None) -> list[str]:
    """The sketch's candidates among these hashes: their prefixes below `bound`, at most
    SKETCH_SIZE of them."""
    prefixes = sorted({h[:_PREFIX] for h in hashes})
    if bound is not None:
        prefixes = prefixes[: bisect_left(prefixes, bound)]
    return prefixes[:SKETCH_SIZE]
