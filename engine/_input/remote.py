"""Inputs at a URL: s3://, gs://, az:// and http(s)://, read through fsspec a block at a time
as the readers ask for bytes (the next block fetched while this one is parsed), never
downloaded whole first. Each store is an optional extra (audience-engine[s3], [gs], [az],
[http]).

Credentials come from each store's own chain (environment, config files, instance or
workload identity), as s3fs, gcsfs and adlfs find them. A URL may carry some too (user info,
a signed query string), so what the engine shows or keeps names the URL without them
(`shown`), and no message repeats a store library's own error text, which may quote the
whole URL.
"""

from __future__ import annotations

import errno
import hashlib
import io
from dataclasses import dataclass
from typing import Any, BinaryIO, cast
from urllib.parse import SplitResult, urlsplit

from .._errors import InputError

# A URL scheme, and the extra that installs what reads it.
EXTRAS = {"s3": "s3", "gs": "gs", "az": "az", "http": "http", "https": "http"}

# The store libraries' loggers. At debug level some print request headers (signatures,
# session tokens) or whole URLs: a program that logs at debug keeps these at warning.
STORE_LOGGERS = ("fsspec", "s3fs", "gcsfs", "adlfs", "aiobotocore", "botocore", "azure", "google")

# Bytes per ranged read. Two blocks are kept and one is in flight: an input holds at most
# three blocks of memory, and parsing never waits on the store while a block is ahead.
BLOCK = 8 << 20
_CACHED_BLOCKS = 2
_BUFFER = 256 << 10

# Metadata that changes with an object's content, as the stores name it (compared lowercase).
_VERSION_KEYS = frozenset(
    {
        "etag",
        "versionid",
        "generation",
        "md5hash",
        "content-md5",
        "lastmodified",
        "last_modified",
        "last-modified",
        "updated",
        "mtime",
    }
)


def is_url(path: str) -> bool:
    """Whether `path` is a URL the engine reads through a store, not a local path."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.lower() in EXTRAS


def shown(url: str) -> str:
    """`url` as messages, reports and checkpoints name it: scheme, host (or bucket) and
    path, without user info, query string or fragment, where credentials travel."""
    return canonical(urlsplit(url))


def canonical(parts: SplitResult) -> str:
    """scheme://host[:port]/path, the scheme and host lowercase (as they compare)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = parts.port
    except ValueError:
        raise InputError("the input URL has an invalid port") from None
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}{parts.path}"


@dataclass(frozen=True, slots=True)
class Remote:
    """What is known of an opened remote input."""

    shown: str
    size: int | None
    # Identifies the object's content ("stream" when the store tells nothing that would).
    fingerprint: str


def open_remote(url: str) -> tuple[BinaryIO, Remote]:
    """The object at `url`, opened for reading in blocks (InputError if it cannot be)."""
    name = shown(url)
    scheme = urlsplit(url).scheme.lower()
    try:
        import fsspec  # type: ignore[import-untyped, unused-ignore]  # lazily: an extra

        store = fsspec.get_filesystem_class(scheme)
    except ImportError:
        raise InputError(
            f"reading {scheme}:// URLs needs fsspec and its {scheme} store: "
            f"pip install 'audience-engine[{EXTRAS[scheme]}]'"
        ) from None
    try:
        # The class itself, not fsspec.open(): its URL chaining ("a::b") could reach
        # another store, a local file even, from a URL that looks like it names one object.
        fs = store(**store._get_kwargs_from_urls(url))
        file = fs.open(
            store._strip_protocol(url),
            "rb",
            block_size=BLOCK,
            cache_type="background",
            cache_options={"maxblocks": _CACHED_BLOCKS},
        )
        details = dict(file.details)
    except Exception as exc:  # every store raises its own types; all are told alike
        raise InputError(f"cannot read input {name!r}: {reason(exc)}") from None
    size = details.get("size")
    remote = Remote(name, size if isinstance(size, int) else None, _fingerprint(details))
    return cast(BinaryIO, io.BufferedReader(_Guarded(file), _BUFFER)), remote


def reason(exc: BaseException) -> str:
    """Why a store failed, in the engine's words: the library's own may hold the URL."""
    # fsspec's http store raises FileNotFoundError for any failed answer, the HTTP error
    # as its cause: the status tells more.
    status = getattr(exc, "status", None) or getattr(exc.__cause__, "status", None)
    if isinstance(status, int) and status != 404:
        return f"the server answered HTTP {status}"
    if isinstance(exc, FileNotFoundError) or status == 404:
        return "no such object"
    if isinstance(exc, PermissionError):
        return "access denied"
    if isinstance(exc, TimeoutError):
        return "the store did not answer in time"
    kind = type(exc).__name__
    if "Credential" in kind:  # botocore's NoCredentialsError, google-auth's, azure's
        return f"no credentials found by the store's standard chain ({kind})"
    return f"the store failed ({kind})"


def _fingerprint(details: dict[str, Any]) -> str:
    marks = sorted(
        (str(k).lower(), str(v)) for k, v in details.items() if str(k).lower() in _VERSION_KEYS
    )
    if not marks:
        return "stream"
    return hashlib.sha256(repr((details.get("size"), marks)).encode()).hexdigest()


class _Guarded(io.RawIOBase):
    """The store's file, with its failures turned into OSError in the engine's words: the
    readers stop on an OSError naming the row, and the library's message goes nowhere."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self._file.seekable())

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self._file.readinto(buffer))
        except Exception as exc:
            raise OSError(errno.EIO, reason(exc)) from None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return int(self._file.seek(offset, whence))
        except Exception as exc:
            raise OSError(errno.EIO, reason(exc)) from None

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        if not self.closed:
            try:
                self._file.close()
            finally:
                super().close()
