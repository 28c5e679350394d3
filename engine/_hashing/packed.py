"""Payload rows in compact binary, each with a digest: the form a mirror keeps them in.

A packed row is a bitmap of which hashed cells are set (one bit per hashed key of the schema,
in order), then those cells' SHA-256 digests as 32 bytes each, then, when the schema has
unhashed keys (EXTERN_ID, MADID, LOOKALIKE_VALUE), their cells as a JSON array. So eight
hashed keys take 257 bytes where their payload JSON takes about 540. Equal payload rows pack
to equal bytes, and the row's digest (16 bytes of BLAKE2b of them) names it.

Packing runs in the hashing workers, a column at a time, as the rows are hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import partial
from operator import methodcaller

import orjson

from .._rows import Packed
from .schema import PLAIN_KEYS, Cell

DIGEST_BYTES = 16
_CELL_BYTES = 32  # a SHA-256 digest

_blake = partial(hashlib.blake2b, digest_size=DIGEST_BYTES)
_digest = methodcaller("digest")


class Packer:
    """Packs and unpacks the payload rows of one schema (its keys, in order)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.width = len(keys)
        self.hashed = [i for i, k in enumerate(keys) if k not in PLAIN_KEYS]
        self.plain = [i for i, k in enumerate(keys) if k in PLAIN_KEYS]
        self.mark_bytes = (len(self.hashed) + 7) // 8

    def pack(self, columns: Sequence[Sequence[Cell]]) -> Packed:
        """The packed rows of a chunk given as its payload columns (every hashed cell a
        lowercase hex digest or ""), with their digests."""
        hashed = [columns[i] for i in self.hashed]
        parts: list[Iterable[bytes]] = []
        if hashed:
            # One bitmap per pattern of set cells, and few patterns in a chunk.
            patterns = list(zip(*[map(bool, column) for column in hashed], strict=True))
            marks = dict.fromkeys(patterns, b"")
            for pattern in marks:
                bits = sum(1 << i for i, present in enumerate(pattern) if present)
                marks[pattern] = bits.to_bytes(self.mark_bytes, "little")
            parts.append(map(marks.__getitem__, patterns))
            parts.append(map(bytes.fromhex, map("".join, zip(*hashed, strict=True))))
        if self.plain:
            parts.append(map(orjson.dumps, zip(*[columns[i] for i in self.plain], strict=True)))
        rows = list(map(b"".join, zip(*parts, strict=True)))
        return Packed(list(map(_digest, map(_blake, rows))), rows)

    def unpack(self, row: bytes) -> tuple[str, ...]:
        """A packed row as the cells of a prehashed input row (numbers as their text)."""
        cells = [""] * self.width
        bits = int.from_bytes(row[: self.mark_bytes], "little")
        at = self.mark_bytes
        for n, i in enumerate(self.hashed):
            if bits >> n & 1:
                cells[i] = row[at : at + _CELL_BYTES].hex()
                at += _CELL_BYTES
        if self.plain:
            values = orjson.loads(row[at:])
            for i, value in zip(self.plain, values, strict=True):
                cells[i] = value if isinstance(value, str) else orjson.dumps(value).decode()
        return tuple(cells)
