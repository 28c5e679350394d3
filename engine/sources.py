"""Where rows come from: a path (see readers) or, for the library, objects in memory."""

from __future__ import annotations

import os
from typing import Any

from .readers import InputFile, open_input

Source = str | os.PathLike[str] | Any
"""A path, "-" for stdin, or an in-memory source the library accepts (see `open_source`)."""


def open_source(source: Source, fmt: str | None = None) -> InputFile:
    """Open any supported source as an InputFile."""
    if isinstance(source, str | os.PathLike):
        return open_input(os.fspath(source), fmt)
    raise TypeError(f"cannot read rows from a {type(source).__name__}")
