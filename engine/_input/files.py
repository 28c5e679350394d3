"""Opening an input file as a reader by its format: CSV, JSON Lines or Parquet, from a path, a
URL, a .gz file, stdin or an already-open binary file.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from .._errors import InputError
from .delimited import CsvInput
from .jsonl import JsonlInput
from .opening import MAX_INFLATION, MAX_LINE, Opened, open_stream
from .parquet import ParquetInput
from .remote import is_url, shown
from .source import InputFile

FORMATS = ("csv", "jsonl", "parquet")


_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def open_input(
    path: str,
    fmt: str | None = None,
    file: BinaryIO | None = None,
    *,
    max_line: int = MAX_LINE,
    max_inflation: float = MAX_INFLATION,
) -> InputFile:
    """Open `path` ("-" is stdin; a URL is read from its store) as the given format, or the
    one its name implies.

    With `file` (a binary file opened for reading), that is what is read: `path` only names
    it (its format, and messages), and closing the file stays the caller's. Reads the header
    (CSV), the first object (JSON Lines) or the schema (Parquet) at once, so an unreadable
    or empty input fails here, before anything is sent.
    """
    if "\x00" in path:
        raise InputError("the input path holds a NUL byte")
    # A URL's query string may hold its signature: never in a message, nor in the name.
    named = shown(path) if is_url(path) else path
    name = named.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    if fmt is None:
        implied = "csv" if path == "-" else _SUFFIXES.get(os.path.splitext(name)[1])
        if implied is None:
            raise InputError(
                f"cannot tell the format of {named!r} from its name; use --format csv|jsonl|parquet"
            )
        fmt = implied
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; use csv, jsonl or parquet")
    if fmt == "parquet" and (gz or (path == "-" and file is None)):
        raise InputError("parquet is read from an uncompressed file, not gzip or stdin")
    opened = Opened(path, fmt, file, max_line, max_inflation)
    return _reader(opened, gz, name.endswith(".tsv"))


def reopen_input(source: InputFile) -> InputFile:
    """`source` again from its start, unbound, read from the same open file (never by path
    again); only for an input whose fingerprint() is a digest (a regular file)."""
    name = source.path.lower()
    return _reader(
        source.opened_again(), name.endswith(".gz"), name.removesuffix(".gz").endswith(".tsv")
    )


def _reader(opened: Opened, gz: bool, tab: bool) -> InputFile:
    if opened.fmt == "parquet":
        return ParquetInput(opened)
    try:
        if opened.fmt == "csv":
            return CsvInput(opened, open_stream(opened, gz), "\t" if tab else None)
        return JsonlInput(opened, open_stream(opened, gz))
    except BaseException:
        opened.close()
        raise
