"""Stores for the URL tests, on loopback: moto's S3 server (one per test process, each test
in a bucket of its own) and a static HTTP server that records the requests it answers."""

from __future__ import annotations

import atexit
import functools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from moto.server import ThreadedMotoServer

# The test credentials: fake, but a leak of these would be a leak of real ones.
ACCESS_KEY = "AKIATESTDONOTLEAK0001"
SECRET_KEY = "s3-secret-key-DO-NOT-LEAK-4b7d"


@functools.cache
def moto_endpoint() -> str:
    """moto's S3 server, started once: s3fs keeps its clients per process, endpoint and all."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    atexit.register(server.stop)
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def s3_env() -> dict[str, str]:
    """The standard chain's environment, pointed at moto; no config file of the user's."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint(),
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class Bucket:
    name: str
    client: Any

    def put(self, key: str, data: bytes) -> str:
        """Store `data` at `key`; its s3:// URL."""
        self.client.put_object(Bucket=self.name, Key=key, Body=data)
        return self.url(key)

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def signed(self, key: str) -> str:
        """A presigned https-style URL of `key` (on moto's http endpoint): its query string
        holds a signature made with the secret key."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=600
        )
        return url


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    for name, value in s3_env().items():
        monkeypatch.setenv(name, value)
    # Signature version 4, as presigned URLs are made today (X-Amz-Signature=...).
    client = boto3.client("s3", config=Config(signature_version="s3v4"))
    bucket = Bucket(f"lists-{uuid.uuid4().hex[:12]}", client)
    client.create_bucket(Bucket=bucket.name)
    yield bucket


@dataclass
class WebFiles:
    """Files served over plain HTTP from `root`, and the requests seen: (method, Range)."""

    root: Path
    base: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
async def web_files(tmp_path: Path) -> AsyncIterator[WebFiles]:
    files = WebFiles(tmp_path / "served")
    files.root.mkdir()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        files.requests.append((request.method, request.headers.get("Range")))
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    app.router.add_static("/", files.root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    files.base = f"http://127.0.0.1:{port}"
    try:
        yield files
    finally:
        await runner.cleanup()
