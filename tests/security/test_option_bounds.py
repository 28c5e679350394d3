"""Numeric upload options out of bounds are refused, naming the option, wherever they come
from; checkpoint files are private to the user."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine._errors import ConfigError
from engine._options import UploadJob
from engine._resume.checkpoint import Checkpoint
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from ..conftest import AD_ACCOUNT, AUDIENCE, run_cli, upload_args


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_retries", -1),
        ("batch_size", 0),
        ("batch_size", 10_001),
        ("batch_size", "5"),
        ("concurrency", 0),
        ("concurrency", True),
        ("workers", -1),
        ("connect_timeout_s", 0),
        ("read_timeout_s", -1.0),
        ("read_timeout_s", float("nan")),
        ("session_window_s", float("inf")),
        ("max_retries", 2.5),
    ],
)
def test_the_job_refuses_a_numeric_option_out_of_bounds(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"^{option} must be"):
        UploadJob(source="x.csv", audience_id=AUDIENCE, ad_account=AD_ACCOUNT, **{option: value})


def test_the_bounds_allow_their_edges() -> None:
    UploadJob(
        source="x.csv",
        audience_id=AUDIENCE,
        ad_account=AD_ACCOUNT,
        max_retries=0,
        batch_size=10_000,
        concurrency=1,
        workers=0,
    )


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--max-retries", "-1", "max_retries"),
        ("--grace", "-1", "grace"),
        ("--rate", "0", "rate"),
        ("--burst", "0", "burst"),
        ("--max-throttle-wait", "-5", "max_throttle_wait"),
        ("--read-timeout", "0", "read_timeout_s"),
    ],
)
async def test_the_command_line_refuses_them_before_sending(
    fake: FakeGraph, tmp_path: Path, flag: str, value: str, named: str
) -> None:
    people = write_sample(tmp_path / "people.csv", 100)
    run = await run_cli(*upload_args(people, fake.base_url, flag, value))
    assert run.code == 2, run.stderr
    assert f"error: {named} must be" in run.stderr
    assert fake.log == []


async def test_a_config_file_value_of_the_wrong_type_is_refused(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 100)
    config = tmp_path / "job.toml"
    config.write_text('batch-size = "500"\n')
    run = await run_cli(*upload_args(people, fake.base_url, "--config", str(config)))
    assert run.code == 2, run.stderr
    assert "error: batch_size must be a number, got str" in run.stderr
    assert fake.log == []


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_checkpoint_files_and_the_directories_made_for_them_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    path = home / "state" / "checkpoints" / "job.sqlite"
    checkpoint = Checkpoint(path)
    checkpoint.start("job", "input")
    assert checkpoint.load() is not None
    for name in ("job.sqlite", "job.sqlite-wal", "job.sqlite-shm"):
        assert mode(path.parent / name) == 0o600, name
    assert mode(home / "state") == mode(path.parent) == 0o700
    assert mode(home) == 0o755  # a directory that was there is left as it is
    checkpoint.close()


@pytest.mark.usefixtures("open_umask")
def test_readable_files_an_older_version_left_are_made_private(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    Checkpoint(path).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").touch()
        os.chmod(f"{path}{suffix}", 0o644)
    checkpoint = Checkpoint(path)
    checkpoint.start("job", "input")
    for suffix in ("", "-wal", "-shm"):
        assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
    checkpoint.close()
