"""What the inspection counts in one unit of input, and how the counts of many units add up.

A hashing worker runs `profile_unit`: the unit's cells are normalized by the upload's own
rules (so "valid" means what the upload will send), but not hashed, and counted. Only counts
and a few hash values (the distinct-value sketches) come back; never a value.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import ne, not_

from .._hashing.encode import column_functions, raw_columns, reject_rows
from .._hashing.schema import VALUE_KEY, Cell, NormalizeOptions, Schema
from .._input.blocks import CsvBlock
from .._rows import RawChunk, Reject
from .columns import block_columns

# Hash values kept per sketch: the distinct count is exact below this many and within about
# 1/sqrt(SKETCH_SIZE) (1.6 %) above (a k-minimum-values sketch).
SKETCH_SIZE = 4096
# The sketches hash with hash(): SipHash over the text, several times cheaper than SHA-256
# and kept by each str once made. Its values are 64-bit, signed.
_SPAN = 1 << 64
# A text whose hash() tells processes with different hash seeds apart (see Profile.merge).
_PROBE = "engine inspection"
# Up to this many values go into a full sketch one by one; more, by a sort.
_FEW = 256
STRONG_KEYS = ("EMAIL", "PHONE", "MADID")


@dataclass(slots=True)
class Sketch:
    """The SKETCH_SIZE smallest hash values seen, sorted: a mergeable distinct count."""

    least: list[int] = field(default_factory=list)

    def bound(self) -> int | None:
        """Values at or above this cannot enter (None while the sketch is not full)."""
        return self.least[-1] if len(self.least) >= SKETCH_SIZE else None

    def add(self, values: Sequence[int]) -> None:
        """Takes these values in (sorted, as workers send them)."""
        least = self.least
        if len(values) > _FEW or len(least) < SKETCH_SIZE:
            if values:
                # Two sorted runs, which sorted() merges in one pass; equal values adjoin.
                merged = sorted(chain(least, values))
                self.least = list(dict.fromkeys(merged))[:SKETCH_SIZE]
            return
        for value in values:  # few: each in its place
            if value < least[-1]:
                at = bisect_left(least, value)
                if least[at] != value:
                    least.insert(at, value)
                    least.pop()

    def estimate(self) -> int:
        if len(self.least) < SKETCH_SIZE:
            return len(self.least)
        return round((SKETCH_SIZE - 1) * _SPAN / (self.least[-1] + _SPAN // 2 + 1))


@dataclass(slots=True)
class KeyCounts:
    filled: int = 0
    valid: int = 0
    changed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # rows refused for this key
    distinct: Sketch = field(default_factory=Sketch)


@dataclass(slots=True)
class Profile:
    """Counts of some rows of one input. Units' profiles `merge` into the input's."""

    keys: tuple[str, ...]
    rows: int = 0
    rows_rejected: Counter[str] = field(default_factory=Counter)
    per_key: dict[str, KeyCounts] = field(default_factory=dict)
    by_valid_keys: Counter[int] = field(default_factory=Counter)  # 0, 1, 2, 3 (3 or more)
    tiers: Counter[str] = field(default_factory=Counter)
    rows_sendable: int = 0
    distinct_rows: Sketch = field(default_factory=Sketch)
    probe: int | None = None  # hash(_PROBE) where the sketches were made

    def __post_init__(self) -> None:
        for key in self.keys:
            self.per_key.setdefault(key, KeyCounts())

    def merge(self, other: Profile) -> None:
        # Sketches made with another hash seed would merge into nonsense, silently.
        if self.probe is None:
            self.probe = other.probe
        elif other.probe not in (None, self.probe):
            raise RuntimeError("inspection profiles made with different hash seeds")
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
        """What a worker may leave out of its sketches: values these sketches cannot take."""
        return Bounds(
            {k: c.distinct.bound() for k, c in self.per_key.items()}, self.distinct_rows.bound()
        )


@dataclass(frozen=True, slots=True)
class Bounds:
    per_key: dict[str, int | None]
    rows: int | None


def profile_unit(
    unit: RawChunk | CsvBlock, schema: Schema, options: NormalizeOptions, bounds: Bounds
) -> Profile:
    """The counts of one unit of input (a hashing worker's task; no digest is made)."""
    profile = Profile(schema.keys, probe=hash(_PROBE))
    dropped: dict[int, Reject] = {}
    numbers: Sequence[int]
    if isinstance(unit, CsvBlock) and (raws := block_columns(unit)) is not None:
        numbers = range(unit.rows_before + 1, unit.rows_before + 1 + len(raws[0]))
        profile.rows = len(numbers)
    else:
        chunk = unit if isinstance(unit, RawChunk) else unit.parse()
        profile.rows = chunk.rows_read
        _count_rejects(profile, chunk.rejects)
        if not chunk.values:
            return profile
        numbers = chunk.row_numbers
        raws, dropped = raw_columns(chunk, len(schema.keys))
    functions = column_functions(schema, options, hashed=False)
    columns = [fn(raws[k], raws) for k, fn in enumerate(functions)]
    reject_rows(columns, numbers, schema, options, dropped)
    _count_rejects(profile, dropped.values())
    _count(profile, bounds, raws, columns)
    return profile


def _count_rejects(profile: Profile, rejects: Iterable[Reject]) -> None:
    for reject in rejects:
        profile.rows_rejected[reject.reason] += 1
        if reject.key in profile.per_key:
            profile.per_key[reject.key].rejected[reject.reason] += 1


def _count(
    profile: Profile, bounds: Bounds, raws: list[list[str]], columns: list[list[Cell | None]]
) -> None:
    """Counts the unit's normalized columns: per key, then per row. A row's key is valid
    when its cell is neither empty nor invalid; the rows are counted from where keys are not
    valid (few places, in most lists), not row by row."""
    n = len(columns[0])
    ids: list[list[Cell | None]] = []  # the non-value columns, a row's identity
    bad: dict[str, set[int]] = {}  # per key: the rows without a valid cell
    for key, raw, cells in zip(profile.keys, raws, columns, strict=True):
        counts = profile.per_key[key]
        empty, invalid = cells.count(""), cells.count(None)
        counts.filled += n - empty
        counts.valid += n - empty - invalid
        if key == VALUE_KEY:
            continue
        # The valid cells normalization changed: of the cells that differ from their text,
        # all but the invalid ones and the empty ones that were not blank already (only a
        # blank text normalizes to ""). list.count(True) adds up in C, sum() the slow way.
        differ = list(map(ne, raw, cells)).count(True)
        counts.changed += differ - invalid - (empty - raw.count(""))
        bad[key] = set(compress(range(n), map(not_, cells))) if empty or invalid else set()
        # Invalid cells are sent as unknown (""), so rows differing only there are the same.
        ids.append([c if c is not None else "" for c in cells] if invalid else cells)
        distinct = set(cells)
        distinct.difference_update(("", None))
        counts.distinct.add(_least(map(hash, distinct), bounds.per_key.get(key)))

    # Rows by how many keys they lack: those lacking none are left out (most rows).
    lacking = Counter(chain.from_iterable(bad.values()))
    width = len(bad)
    none = {i for i, c in lacking.items() if c == width}
    profile.by_valid_keys[min(width, 3)] += n - len(lacking)
    profile.by_valid_keys.update(min(width - c, 3) for c in lacking.values())
    profile.tiers.update(_tiers(bad, n, len(none)))
    profile.rows_sendable += n - len(none)
    if len(bad) == 1:  # a row is its one key's value
        (key,) = bad
        profile.distinct_rows.add(profile.per_key[key].distinct.least)
        return
    rows: Iterable[int] = map(hash, zip(*ids, strict=True))
    if none:
        keep = [True] * n
        for i in none:
            keep[i] = False
        rows = compress(rows, keep)
    profile.distinct_rows.add(_least(rows, bounds.rows))


def _tiers(bad: dict[str, set[int]], n: int, none: int) -> Counter[str]:
    """Rows by the strength of their keys (docs/inspect.md): "strong" has an email, phone or
    mobile advertiser id; "name_place" a name and a place; "weak" some other key; "none" none."""

    def lacking(*keys: str) -> set[int]:
        """Rows without a valid cell in any of these keys (a key the list lacks: every row)."""
        present = [bad[k] for k in keys if k in bad]
        return set.intersection(*present) if present else set(range(n))

    weak = lacking(*STRONG_KEYS)
    name_place = weak - lacking("FN", "FI") - lacking("LN") - lacking("ZIP", "CT", "ST")
    strong = n - len(weak)
    return Counter(
        strong=strong,
        name_place=len(name_place),
        weak=n - strong - len(name_place) - none,
        none=none,
    )


def _least(values: Iterable[int], bound: int | None) -> list[int]:
    """The sketch's candidates among these hash values: those below `bound`, at most
    SKETCH_SIZE of the smallest."""
    if bound is not None:
        values = [v for v in values if v < bound]  # 3x filter(bound.__gt__, ...)'s speed
    return sorted(set(values))[:SKETCH_SIZE]
