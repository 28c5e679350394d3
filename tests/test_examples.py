"""Each example in examples/ run as a script against the fake Graph API, as its README says."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.fakegraph import FakeGraph
from engine.sample import write_sample

from .checks import check_counts, check_session, expected_rows
from .conftest import AD_ACCOUNT, AUDIENCE, run_python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROWS = 2_500


@pytest.mark.parametrize(
    "script", ["airflow_task.py", "dagster_asset.py", "notebook_cell.py", "spark_job.py"]
)
async def test_example_uploads_exactly(fake: FakeGraph, tmp_path: Path, script: str) -> None:
    people = write_sample(tmp_path / "people.csv", ROWS)
    env = {
        "META_API_BASE": fake.base_url,
        "META_AUDIENCE_ID": AUDIENCE,
        "META_AD_ACCOUNT": AD_ACCOUNT,
    }
    # A subprocess, so the fake keeps serving on this loop while the example blocks on its own.
    run = await run_python(str(EXAMPLES / script), str(people), env=env)
    assert run.code == 0, run.stderr
    report = orjson.loads(run.stdout.splitlines()[-1])
    assert report["status"] == "completed"
    assert report["rows_read"] == ROWS
    check_counts(report)
    check_session(fake, report)
    assert fake.members(AUDIENCE) == expected_rows(people)


def test_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for script in sorted(p.name for p in EXAMPLES.glob("*.py")):
        assert script in readme
