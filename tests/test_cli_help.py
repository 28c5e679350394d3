"""What the command line says about itself: help, version, and its errors in its own words."""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path

import pytest

from engine import _cli
from engine._quota.limiter import LimiterConfig
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from .conftest import AD_ACCOUNT, AUDIENCE, REPO, run_cli, run_python


def help_of(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        _cli.main([*args, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_subcommand_is_listed_and_version_is_told(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of(capsys=capsys)
    for command in ("upload", "worker", "fake-graph", "status", "demo"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), command
    with pytest.raises(SystemExit):
        _cli.main(["--version"])
    assert re.fullmatch(r"audience-engine \S+\n", capsys.readouterr().out)


def test_upload_help_tells_the_environment_exit_codes_and_limiter_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(help_of("upload", capsys=capsys).split())
    for name in ("META_ACCESS_TOKEN", "META_APP_SECRET", "META_API_BASE", "META_API_VERSION"):
        assert name in text
    for code in range(4):
        assert f" {code} " in text
    limits = LimiterConfig()
    assert f"at full speed (default {limits.rate:g})" in text
    assert f"after a lull (default {limits.burst})" in text
    assert f"seconds (default {limits.max_throttle_wait_s:g})" in text


def test_no_help_text_cites_a_document_the_repo_lacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = _cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = [parser.format_help()] + [p.format_help() for p in subparsers.choices.values()]
    text = "\n".join(texts)
    assert "SPEC" not in text
    for doc in re.findall(r"[\w/.-]+\.md\b", text):
        assert (REPO / doc).exists() or (REPO / "docs" / doc).exists(), doc


async def test_a_missing_token_is_named_as_the_cli_takes_it(tmp_path: Path) -> None:
    people = write_sample(tmp_path / "people.csv", 10)
    args = ["upload", str(people), "--audience", AUDIENCE, "--ad-account", AD_ACCOUNT]
    run = await run_cli(*args, env={"META_ACCESS_TOKEN": ""})
    assert run.code == 2
    assert "set META_ACCESS_TOKEN" in run.stderr
    assert "pass access_token" not in run.stderr


async def test_the_api_base_and_version_come_from_the_environment(
    fake: FakeGraph, tmp_path: Path
) -> None:
    people = write_sample(tmp_path / "people.csv", 100)
    args = ["upload", str(people), "--audience", AUDIENCE, "--ad-account", AD_ACCOUNT]
    env = {"META_API_BASE": fake.base_url, "META_API_VERSION": "v24.0"}
    run = await run_cli(*args, "-q", env=env)
    assert run.code == 0, run.stderr
    assert run.report["status"] == "completed"
    assert run.report["rows_sent"] == run.report["rows_valid"] > 0
    # The fake takes any version; a malformed one shows the variable is read.
    run = await run_cli(*args, "-q", env={**env, "META_API_VERSION": "25"})
    assert run.code == 2
    assert "api" in run.stderr and "version" in run.stderr
    run = await run_cli(
        *args, "-q", "--api-version", "v25.0", env={**env, "META_API_VERSION": "25"}
    )
    assert run.code == 0, run.stderr  # the command line wins


async def test_fake_graph_on_a_port_in_use_says_so_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await run_python("-m", "engine", "fake-graph", "--port", str(port))
    assert run.code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
