"""`status` finds a job's checkpoint from the upload's own arguments, and lists them all."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from .conftest import AD_ACCOUNT, AUDIENCE, run_cli, upload_args


async def test_status_takes_the_uploads_arguments_and_lists_checkpoints(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 300)
    others = write_sample(tmp_path / "others.csv", 200)
    reports = []
    for path in (people, others):
        upload = await run_cli(*upload_args(path, fake.base_url, "-q", "--batch-size", "100"))
        assert upload.code == 0, upload.stderr
        reports.append(upload.report)
    # The upload's command with "status" for "upload" (its other options are taken, unused).
    args = upload_args(people, fake.base_url, "-q", "--batch-size", "100")[1:]
    status = await run_cli("status", *args)
    assert status.code == 0, status.stderr
    shown = orjson.loads(status.stdout)
    assert shown["state"] == "completed"
    assert shown["rows_sent"] == reports[0]["rows_sent"]
    assert shown["batches_sent"] == reports[0]["batches_sent"] == 3
    listed = orjson.loads((await run_cli("status", "--list")).stdout)
    assert len(listed) == 2
    assert {item["state"] for item in listed} == {"completed"}
    assert listed[0]["job"] != listed[1]["job"]
    assert all(Path(item["checkpoint"]).is_file() for item in listed)
    # Another mode is another job: nothing to show, and it says so.
    missing = await run_cli("status", *args, "--mode", "remove")
    assert missing.code == 2 and "no checkpoint" in missing.stderr
    bare = await run_cli("status", "--audience", AUDIENCE, "--ad-account", AD_ACCOUNT)
    assert bare.code == 2 and "--checkpoint PATH, --list" in bare.stderr
