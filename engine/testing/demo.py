"""`python -m engine demo`: the whole product on one screen, against the built-in fake API.

Generates a messy sample file, starts the fake Graph API, uploads the file with the
real command line (`python -m engine upload ...`) and prints the report. The sample, the
report and the rejects file are kept in a new folder, which it names.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from .sample import write_sample

AUDIENCE, AD_ACCOUNT = "23850000000000001", "act_1000000001"


def demo(rows: int) -> int:
    tmp = tempfile.mkdtemp(prefix="audience-engine-demo-")
    people = write_sample(Path(tmp) / "people.csv", rows)
    print(f"generated {rows:,} sample rows in {people}", file=sys.stderr)
    fake = subprocess.Popen(
        [sys.executable, "-m", "engine", "fake-graph", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        ready = fake.stdout.readline().strip()
        if "http://" not in ready:
            print("the fake Graph API did not start", file=sys.stderr)
            return 1
        base = ready[ready.index("http://") :]
        print(ready, file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "engine",
            "upload",
            str(people),
            "--audience",
            AUDIENCE,
            "--ad-account",
            AD_ACCOUNT,
            "--api-base",
            base,
            "--concurrency",
            "8",
            "--report",
            str(Path(tmp) / "report.json"),
            "--rejects",
            str(Path(tmp) / "rejects.csv"),
            "--default-country-code",
            "1",
        ]
        # As a user would type it (the fake it names stops when the demo ends).
        print(f"$ META_ACCESS_TOKEN=demo-token {shlex.join(command)}", file=sys.stderr)
        env = {**os.environ, "META_ACCESS_TOKEN": "demo-token"}
        code = subprocess.run(command, env=env).returncode
        with urllib.request.urlopen(f"{base}/_fake/audiences/{AUDIENCE}") as resp:
            audience = json.load(resp)
        print(
            f"exit code {code}; the fake audience now holds "
            f"{audience.get('count', audience.get('members_count'))} people; the sample, "
            f"report.json and rejects.csv are kept in {tmp}",
            file=sys.stderr,
        )
        return code
    finally:
        fake.terminate()
        fake.wait(10)
