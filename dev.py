#!/usr/bin/env python3
"""The two commands a new user needs, with nothing but Python installed:

    python3 dev.py demo    upload a generated file to the built-in fake Graph API, print the report
    python3 dev.py test    run the test suite

Each creates .venv and installs into it, on first use, what it needs: the demo the package
alone, the tests the test, lint and benchmark extras too (a benchmark smoke test runs the SDK).
"""

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
# What each command installs: the package, with these extras.
EXTRAS = {"demo": "", "test": "[test,dev,bench]"}


def ensure_venv(command: str) -> None:
    """Install what `command` needs, once (again when pyproject.toml changes)."""
    stamp = VENV / f".installed-{command}"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    pip = [str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}{EXTRAS[command]}"], check=True)
    stamp.touch()


def main() -> int:
    commands = {
        "demo": ["-m", "engine", "demo"],
        "test": ["-m", "pytest"],
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv(sys.argv[1])
    return subprocess.run([str(PYTHON), *commands[sys.argv[1]], *sys.argv[2:]], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
