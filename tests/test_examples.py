"""Each example in examples/ run as a script against the fake Graph API, as its README says."""

from __future__ import annotations

import csv
import importlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

import engine
from engine._input.files import open_input
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from . import refnorm
from .checks import check_counts, check_session, expected_rows
from .conftest import AD_ACCOUNT, AUDIENCE, run_python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROWS = 2_500


def expected_reasons(path: Path) -> dict[str, int]:
    """What an upload of the file itself reports as `rejected_by_reason`."""
    with open_input(str(path)) as source:
        keys = source.bind(None, {})
        judged = [
            refnorm.judge_row(keys, cells, default_country_code="1")
            for chunk in source.chunks()
            for cells in chunk.values
        ]
    return dict(Counter(why[1] for _, why in judged if why is not None))


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
    # Rejected rows keep their reasons, wherever they were rejected (Spark: on the executors).
    reasons = expected_reasons(people)
    assert set(reasons) == {"invalid_email"}  # the sample's unusable rows
    assert report["rejected_by_reason"] == reasons
    check_counts(report)
    check_session(fake, report)
    assert fake.members(AUDIENCE) == expected_rows(people)


def test_spark_stand_in_hashes_partitions_in_a_process_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pyspark, partitions are hashed in parallel processes, as executors would."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spark_job = importlib.import_module("spark_job")
    pools: list[tuple[int | None, int]] = []

    class Pool(ProcessPoolExecutor):
        def __init__(self, workers: int | None = None, **kwargs: Any) -> None:
            super().__init__(workers, **kwargs)
            self.workers = workers

        def map(self, fn: Any, *parts: Any, **kwargs: Any) -> Any:
            parts = tuple(list(p) for p in parts)
            pools.append((self.workers, len(parts[0])))
            assert fn is spark_job.hash_partition
            return super().map(fn, *parts, **kwargs)

    monkeypatch.setattr(spark_job, "ProcessPoolExecutor", Pool)
    people = write_sample(tmp_path / "people.csv", 1_000)
    rows = list(spark_job.local_partitions(str(people), partitions=4))
    assert pools == [(4, 4)]  # four partitions over four processes

    with open(people, newline="", encoding="utf-8") as f:
        serial = spark_job.hash_partition(csv.DictReader(f))  # the whole file as one partition

    def what(row: Any) -> Any:  # a reject's row number is its place within its partition
        return (row.key, row.reason) if isinstance(row, engine.Reject) else row

    assert Counter(map(what, rows)) == Counter(map(what, serial))
    assert Counter(what(r) for r in rows if isinstance(r, engine.Reject)) == {
        ("EMAIL", "invalid_email"): expected_reasons(people)["invalid_email"]
    }


def test_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for script in sorted(p.name for p in EXAMPLES.glob("*.py")):
        assert script in readme
