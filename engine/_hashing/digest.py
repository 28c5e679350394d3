"""SHA-256 as hex, by the fastest implementation this Python has."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Protocol


class Digest(Protocol):
    def hexdigest(self) -> str: ...


def _find_sha256() -> Callable[[bytes], Digest]:
    # CPython's built-in SHA-256 is about twice as fast as OpenSSL's for short inputs (no
    # EVP context setup); same digest. Private module name varies, so hashlib is the fallback.
    for name in ("_sha2", "sha256"):
        try:
            fn: Callable[[bytes], Digest] = importlib.import_module(name).sha256
            return fn
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


sha256 = _find_sha256()


def hash_value(normalized: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes."""
    return sha256(normalized.encode()).hexdigest()


# The digest type's own method, so a whole column hashes through C-level maps.
hexdigest: Callable[[Digest], str] = type(sha256(b"")).hexdigest
