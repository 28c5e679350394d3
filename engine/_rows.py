"""The data that flows between pipeline stages: chunks of rows, never single rows."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import NamedTuple

Blanked = tuple[tuple[str, str, int], ...]
"""Invalid cells sent as "" in rows that went anyway: (key, reason, how many)."""


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that will not be sent. Holds a row number and a reason, never the raw value."""

    row: int  # 1-based data row number in the input (the header is not a data row)
    key: str  # schema key the reason is about, or "" when it is about the whole row
    reason: str  # stable snake_case code, e.g. "invalid_email", "ragged_row"


@dataclass(slots=True)
class RawChunk:
    """Rows as read: each value is the raw cell text for the schema key at that position.

    `values[i]` lines up with `row_numbers[i]`; a missing cell is "". Rows the reader
    could not read at all are already in `rejects`. Every data row of the input is in
    exactly one of the two.
    """

    row_numbers: list[int]
    values: list[tuple[str, ...]]
    rejects: list[Reject] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.row_numbers) + len(self.rejects)


@dataclass(slots=True)
class HashedChunk:
    """Rows ready to send: `data[i]` is the payload row (normalized, hashed) for `row_numbers[i]`.

    Payload rows hold one entry per schema key; an unknown or invalid cell is "" (the
    invalid ones are counted in `blanked`).
    LOOKALIKE_VALUE entries are numbers, every other entry a string.
    """

    row_numbers: list[int]
    data: list[list[str | float | int]]
    rejects: list[Reject]
    rows_read: int
    blanked: Blanked = ()


class Packed(NamedTuple):
    """A chunk's payload rows in compact binary (`_hashing/packed.py`), with their digests:
    `rows[i]` is row i of its chunk, `digests[i]` names it."""

    digests: list[bytes]
    rows: list[bytes]


class EncodedChunk(NamedTuple):
    """Rows ready to batch, already in their payload form: each row's JSON, joined by commas.

    Workers return this instead of a HashedChunk so that one bytes object crosses the process
    boundary and nothing is serialized twice. Row i ends at `stops[i] - 1` and the next one
    starts at `stops[i]` (past the comma); `row_numbers[i]` is its input row number.
    `packed` holds the rows packed too, when the hashing was asked for it (a mirror's diff).
    """

    row_numbers: array[int]
    data: bytes
    stops: array[int]
    rejects: list[Reject]
    rows_read: int
    blanked: Blanked = ()
    packed: Packed | None = None
