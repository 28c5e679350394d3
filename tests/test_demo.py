"""The demo a new user runs first, and what `python3 dev.py` installs for it."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from .conftest import REPO, run_python


async def test_the_demo_prints_a_pasteable_command_and_keeps_its_files(tmp_path: Path) -> None:
    run = await run_python("-m", "engine", "demo", "--rows", "500", env={"TMPDIR": str(tmp_path)})
    assert run.code == 0, run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("$ ")]
    words = shlex.split(line[2:])
    assert words[0] == "META_ACCESS_TOKEN=demo-token"
    assert Path(words[1]).is_file() and words[2:5] == ["-m", "engine", "upload"]
    report = Path(words[words.index("--report") + 1])
    rejects = Path(words[words.index("--rejects") + 1])
    # Named, so kept: in the folder the demo says it left them in.
    assert f"kept in {report.parent}" in run.stderr
    assert report.parent.parent == tmp_path
    assert orjson.loads(report.read_bytes())["rows_read"] == 500
    assert rejects.read_text().startswith("row,key,reason")
    shutil.rmtree(report.parent)


def load_dev() -> Any:
    spec = importlib.util.spec_from_file_location("dev", REPO / "dev.py")
    assert spec is not None and spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    return dev


@pytest.mark.parametrize(("command", "extras"), [("demo", ""), ("test", "[test,dev,bench]")])
def test_dev_installs_what_each_command_needs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, extras: str
) -> None:
    dev = load_dev()
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()  # an existing venv: only pip runs
    monkeypatch.setattr(dev, "VENV", venv)
    monkeypatch.setattr(dev, "PYTHON", venv / "bin" / "python")
    installs: list[list[str]] = []

    def pip(args: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        installs.append(args)
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(dev.subprocess, "run", pip)
    dev.ensure_venv(command)
    dev.ensure_venv(command)  # the stamp says it is done
    assert [args[-1] for args in installs] == [f"{dev.ROOT}{extras}"]
    assert (venv / f".installed-{command}").exists()
