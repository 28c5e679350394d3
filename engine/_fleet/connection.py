"""One place that opens Redis and turns its failures into the OSError the stores raise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

DEFAULT_NAMESPACE = "audience-engine:"


def connect(url: str) -> redis.Redis:
    """A client for `url` (redis:// or rediss://). Timeouts keep a cut connection from
    hanging a store call: it fails and the caller decides."""
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)


@contextlib.contextmanager
def as_os_error() -> Iterator[None]:
    """Redis unreachable or refusing: an OSError, as a local file that cannot be written.
    redis-py's messages name the host and port, never the URL's password."""
    try:
        yield
    except redis.RedisError as exc:
        raise OSError(f"redis: {exc}") from None
