"""Which input URLs a worker reads: those under a prefix of its `input-urls` setting, each
read with the worker's own credentials (each store's standard chain).

A URL is compared in its canonical form (scheme and host lowercase, no user info), at a path
boundary: `s3://lists/exports` allows `s3://lists/exports/a.csv`, never
`s3://lists/exports-old/a.csv`. A URL that carries credentials or a query string is refused
(the job's input is stored with the job), and so is one whose path climbs with `..`, which a
web server would resolve out from under the prefix. Messages never quote the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import SplitResult, unquote, urlsplit

from .._errors import ConfigError, InputError
from .._input.remote import canonical, is_url


def url_prefix(text: str, index: int) -> str:
    """An `input-urls` entry as it is compared (ConfigError when it cannot be one)."""
    where = f"input-urls: entry {index}"
    if not is_url(text):
        raise ConfigError(f"{where} must be an s3://, gs://, az://, http:// or https:// URL")
    try:
        parts = _plain(text)
    except InputError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not parts.hostname:
        raise ConfigError(f"{where} names no bucket or host")
    return canonical(parts)


def check_url(url: str, prefixes: Sequence[str]) -> str:
    """A job's input URL as it is compared, and then read (what was checked is what is
    read); InputError unless it is under one of `prefixes`."""
    if not prefixes:
        raise InputError(
            "this worker reads no URLs (its config sets no input-urls): give a path under "
            "its input-dirs, or send the rows in the request body"
        )
    here = canonical(_plain(url))
    if not any(here == p or here.startswith(p if p.endswith("/") else f"{p}/") for p in prefixes):
        raise InputError("input is outside the worker's input-urls")
    return here


def _plain(url: str) -> SplitResult:
    """`url` split, when it holds nothing that could mean another object than it shows
    (percent-escapes are looked through, as a server would decode them)."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if any(c < " " or c in "\x7f\\" for c in url + path):
        raise InputError("the input URL holds a control character or a backslash")
    if "@" in parts.netloc or "?" in url or "#" in url:
        raise InputError(
            "the input URL may not carry credentials or a query string: the worker reads "
            "with its own (each store's standard chain)"
        )
    if {".", ".."} & set(path.split("/")):
        raise InputError("the input URL's path holds a . or .. segment")
    return parts
