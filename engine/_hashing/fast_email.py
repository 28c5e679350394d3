"""EMAIL a whole column or block at a time: checks over the column's text place every cell that
breaks the per-cell rule, so only those get the rule one by one (most of the hashing stage's
speed on EMAIL-only uploads). The results equal the per-cell rule's.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import contains, not_
from typing import TypeVar

from .._rows import EncodedChunk, Reject
from .digest import hexdigest, sha256
from .packed import Packer
from .rules import is_digest, is_email
from .schema import Cell, Schema


def email_column(raws: Sequence[str]) -> list[Cell | None]:
    """EMAIL for a whole column, by checks over the column's text instead of `is_email` per
    cell (a third of the cost). They place every row that breaks the rule; only those get
    the per-cell look, and columns with rare shapes get it for every row."""
    cells, odd = _trimmed(raws)
    todo = cells
    if odd:
        todo = cells.copy()
        for i in odd:
            todo[i] = ""  # not hashed as it is: it may not even encode
    out: list[Cell | None] = list(map(hexdigest, map(sha256, map(str.encode, todo))))
    for i in odd:
        out[i] = not_an_address(cells[i])
    return out


def email_texts(raws: Sequence[str]) -> list[Cell | None]:
    """`email_column` before hashing: each address as it would be hashed."""
    cells, odd = _trimmed(raws)
    texts: list[Cell | None] = list(cells)
    for i in odd:
        texts[i] = not_an_address(cells[i])
    return texts


def _trimmed(raws: Sequence[str]) -> tuple[list[str], list[int]]:
    """The cells trimmed and lowercased, and the rows among them that need the per-cell
    look (those that may be no address); every other one is an address."""
    cells = list(map(str.lower, map(str.strip, raws)))
    rows = range(len(cells))
    text = "\n".join(cells)
    no_at = list(compress(rows, map(not_, map(contains, cells, repeat("@")))))
    if _plain_addresses(text, cells, len(cells) - len(no_at)):
        return cells, no_at
    return cells, list(compress(rows, map(not_, map(is_email, cells))))


def _email_cell(s: str) -> str | None:
    """One trimmed, lowercased EMAIL cell as it goes in the payload (the per-cell rule): its
    hash, "" when empty, the digest it already is, or None when it is no address."""
    return sha256(s.encode()).hexdigest() if is_email(s) else not_an_address(s)


def not_an_address(s: str) -> str | None:
    """A trimmed, lowercased EMAIL cell that is no address: "" when empty, the digest it
    already is, else None (invalid)."""
    return "" if not s else s if is_digest(s) else None


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
    `is_email` (the whole-block checks); None when the checks cannot tell."""
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


def encode_email_lines(
    lines: list[bytes], first_row: int, schema: Schema, *, packed: bool = False
) -> EncodedChunk | None:
    """`encode_chunk` of an EMAIL-only, not prehashed, chunk given as the UTF-8 lines of its
    rows, one cell each, numbered from `first_row` (`CsvBlock.cell_lines`), worked on as
    bytes: no str per cell, and the payload JSON joined straight from the digests.

    None when the whole-block checks still fail with the cells they flag set aside (not
    seen yet); the general path then gives the same result for that block, cell by cell.
    With `packed`, the rows are packed too.
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
    hexes = list(map(hexdigest, map(sha256, cells)))
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
    stops = _even_stops(width, len(hexes))
    packing = Packer(schema.keys).pack([hexes]) if packed else None
    return EncodedChunk(row_numbers, data, stops, rejects, n, (), packing)


# Deleted from a column's UTF-8 to leave its skeleton: "@", ".", newlines, spaces, controls.
_EMAIL_NOISE = bytes(b for b in range(256) if (0x20 < b < 0x7F and b not in b"@.") or b >= 0x80)


def _plain_addresses(text: str, cells: list[str], with_at: int) -> bool:
    """Whether every one of the `with_at` cells holding an "@" is an address by `is_email`.

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
