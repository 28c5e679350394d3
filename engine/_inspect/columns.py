"""A plain CSV block cut into columns at once, for the inspection: it needs each key's
column, and building a tuple per row (what `CsvBlock.parse` hands the upload) costs more
than the inspection's own counting."""

from __future__ import annotations

from .._input.blocks import CsvBlock, decode, long_line_may_be_in


def block_columns(block: CsvBlock) -> list[list[str]] | None:
    """The block's bound columns, as `CsvBlock.parse` reads them, when every line has the
    header's width and none is too long; else None (then `parse` says what is wrong)."""
    if long_line_may_be_in(block.data):
        return None
    text, plain = decode(block.data)
    if not plain:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.count("\n") + (not text.endswith("\n"))
    delimiter, width = block.delimiter, block.width
    # Each line end becomes a cell of its own ("\n", which no cell holds), so one split
    # cuts every cell, and the line ends must then fall every `width` cells: when they
    # all do, every line has `width` cells.
    cells = text.rstrip("\n").replace("\n", f"{delimiter}\n{delimiter}").split(delimiter)
    ends = cells[width :: width + 1]
    if len(cells) != lines * (width + 1) - 1 or ends.count("\n") != lines - 1:
        return None
    return [cells[i :: width + 1] for i in block.indices]
