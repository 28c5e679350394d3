"""Shared fixtures: the fake Graph API on loopback, and the real CLI run as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from engine.testing.fakegraph import FakeConfig, FakeGraph

from .redis_server import RedisServer

TOKEN = "EAAB-test-token-DO-NOT-LEAK-7f3a"
APP_SECRET = "app-secret-DO-NOT-LEAK-91c2"
AUDIENCE = "23850000000000001"
AD_ACCOUNT = "act_1000000001"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default checkpoints go to a per-test state dir, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (see tests/redis_server.py)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeGraph]:
    graph = FakeGraph(FakeConfig(token=TOKEN, app_secret=APP_SECRET, seed=1))
    await graph.start()
    try:
        yield graph
    finally:
        await graph.close()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, object]:
        return orjson.loads(self.stdout)  # type: ignore[no-any-return]


async def run_cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Run:
    """Run `python -m engine ARGS` without blocking the loop the fake serves on."""
    return await run_python("-m", "engine", *args, env=env, stdin=stdin)


async def run_python(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path = REPO,
) -> Run:
    """Run `python ARGS` (from the repo unless `cwd`), with the test token and app secret (and
    `env`) set, without blocking the loop the fake serves on."""
    full_env = {
        **os.environ,
        # This checkout's engine, wherever the script lives (an installed one may be another).
        "PYTHONPATH": str(REPO),
        "META_ACCESS_TOKEN": TOKEN,
        "META_APP_SECRET": APP_SECRET,
        **(env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def upload_args(path: Path | str, base: str, *extra: str) -> list[str]:
    return [
        "upload",
        str(path),
        "--audience",
        AUDIENCE,
        "--ad-account",
        AD_ACCOUNT,
        "--api-base",
        base,
        "--max-retries",
        "6",
        *extra,
    ]
