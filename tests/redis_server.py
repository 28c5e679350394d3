"""A throwaway redis-server for tests: its own process, port and directory.

Without the `redis-server` program the tests that need it skip with a message, except
under CI (CI=true), where they fail: there they must run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_redis_server() -> str:
    program = shutil.which("redis-server")
    if program is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI the fleet tests must run")
        pytest.skip(message)
    return program


class RedisServer:
    """`redis-server` on a free loopback port; `start` returns once it takes connections,
    `stop` kills it (SIGKILL: what a crash looks like), `start` again reuses its files."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.program = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.program,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always",
                "--daemonize", "no",
                "--logfile", "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # its log: ready when it says so
            if "Ready to accept connections" in line:
                # Keep reading its log, so a full pipe never stalls it.
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"redis-server on port {self.port} exited before it was ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
