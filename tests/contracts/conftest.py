"""Every store implementation, as a fixture parameter: the contract tests run once per kind."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

_namespaces = itertools.count()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace of its own per test: tests share one server, never its keys."""
    return f"test{next(_namespaces)}:"


@pytest.fixture
def tmp_state(tmp_path: Path) -> Path:
    return tmp_path
