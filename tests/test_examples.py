"""Each example in examples/ run as a script against the fake Graph API, as its README says."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from engine.fakegraph import FakeGraph
from engine.sample import write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import AD_ACCOUNT, APP_SECRET, AUDIENCE, TOKEN

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROWS = 2_500


@pytest.mark.parametrize(
    "script", ["airflow_task.py", "dagster_asset.py", "notebook_cell.py", "spark_job.py"]
)
async def test_example_uploads_exactly(fake: FakeGraph, tmp_path: Path, script: str) -> None:
    people = write_sample(tmp_path / "people.csv", ROWS)
    env = {
        **os.environ,
        "META_API_BASE": fake.base_url,
        "META_ACCESS_TOKEN": TOKEN,
        "META_APP_SECRET": APP_SECRET,
        "META_AUDIENCE_ID": AUDIENCE,
        "META_AD_ACCOUNT": AD_ACCOUNT,
    }
    # A subprocess, so the fake keeps serving on this loop while the example blocks on its own.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        str(people),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out.splitlines()[-1])
    assert report["status"] == "completed"
    assert report["rows_read"] == ROWS
    check_counts(report)
    check_session(fake, report)
    assert fake.members(AUDIENCE) == expected_rows(people)


def test_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for script in sorted(p.name for p in EXAMPLES.glob("*.py")):
        assert script in readme
