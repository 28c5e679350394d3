"""`python -m engine.testing.fleet`: a fleet of worker replicas on one machine, against the fake.

Starts a private `redis-server` (its own directory and free port, append-only file on), the
fake Graph API unless given one (`--api-base`), and `--replicas` workers sharing that Redis;
prints where each listens and runs until Ctrl-C. `LocalFleet` is the same for benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready_line(proc: subprocess.Popen[str], marker: str, what: str) -> str:
    """The first line of `proc`'s output holding `marker`; its output is drained after."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return line.strip()
    raise RuntimeError(f"{what} exited before it was ready")


class LocalFleet:
    """redis-server and `replicas` workers (`python -m engine worker --redis-url ...`) in
    `directory`, against the Graph API at `api_base`. `start()` returns once all listen."""

    def __init__(
        self, directory: Path, api_base: str, replicas: int = 3, max_jobs: int = 4
    ) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory = directory
        self.api_base = api_base
        self.replicas = replicas
        self.max_jobs = max_jobs
        self.redis_url = f"redis://127.0.0.1:{_free_port()}/0"
        self.urls: list[str] = []
        self._redis_program = program
        self._procs: list[subprocess.Popen[str]] = []

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        port = self.redis_url.rsplit(":", 1)[1].split("/")[0]
        redis = subprocess.Popen(
            [
                self._redis_program, "--port", port, "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--logfile", "",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # a Ctrl-C reaches this process, which stops the rest
        )  # fmt: skip
        self._procs.append(redis)
        _ready_line(redis, "Ready to accept connections", "redis-server")
        for n in range(self.replicas):
            home = self.directory / f"replica{n}"
            home.mkdir(exist_ok=True)
            config = home / "worker.toml"
            config.write_text(
                "port = 0\n"
                f'state-dir = "{home / "state"}"\n'
                f'api-base = "{self.api_base}"\n'
                f'input-dirs = ["{self.directory}"]\n'
                f"max-jobs = {self.max_jobs}\n"
                f'redis-url = "{self.redis_url}"\n'
                "[job-defaults]\n"
                'default-country-code = "1"\n'
            )
            env = {**os.environ, **(extra_env or {})}
            worker = subprocess.Popen(
                [sys.executable, "-m", "engine", "worker", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=open(home / "worker.log", "ab"),  # noqa: SIM115 - the child holds it
                text=True,
                env=env,
                start_new_session=True,
            )
            self._procs.append(worker)
            line = _ready_line(worker, "listening on ", f"replica {n} (see {home}/worker.log)")
            self.urls.append(line.split("listening on ")[1])

    def stop(self) -> None:
        """SIGTERM the replicas (they drain), then stop Redis."""
        for proc in reversed(self._procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.testing.fleet", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--api-base", help="a Graph API to use (default: start the fake)")
    parser.add_argument("--rate-limit", help="the fake's cap per ad account, CALLS/SECONDS")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="audience-engine-fleet-") as tmp:
        procs: list[subprocess.Popen[str]] = []
        api_base = args.api_base
        if api_base is None:
            limit = ["--rate-limit", args.rate_limit] if args.rate_limit else []
            fake = subprocess.Popen(
                [sys.executable, "-m", "engine", "fake-graph", "--port", "0", *limit],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            procs.append(fake)
            line = _ready_line(fake, "http://", "the fake Graph API")
            api_base = line[line.index("http://") :]
            print(f"fake Graph API: {api_base}", flush=True)
        fleet = LocalFleet(Path(tmp), api_base, args.replicas)
        try:
            # The fake takes any token; a real API gets the caller's own.
            fleet.start({"META_ACCESS_TOKEN": os.environ.get("META_ACCESS_TOKEN", "fake-token")})
            print(f"redis: {fleet.redis_url}", flush=True)
            for n, url in enumerate(fleet.urls):
                print(f"replica {n}: {url}  (input files go under {tmp})", flush=True)
            print("Ctrl-C stops the fleet", flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    signal.pause()
        finally:
            fleet.stop()
            for proc in procs:
                proc.terminate()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
