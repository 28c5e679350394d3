"""Inspection speed and memory: `python -m benchmarks.inspect [--rows N] [--dir D]`.

Writes an EMAIL-only and an eight-key sample list of N rows (once; kept in D), inspects each
with `python -m engine inspect`, and prints the wall time, rows/s, the CPU time and the peak
memory of the inspecting processes (parent and hashing workers), and the load average after
(the machine's other work slows the wall time, not the CPU time much).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from engine.testing import write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", default="/tmp/inspect-bench")
    args = parser.parse_args()
    where = Path(args.dir)
    where.mkdir(parents=True, exist_ok=True)
    for name, columns in (("email", ("email",)), ("eight", None)):
        path = where / f"{name}-{args.rows}.csv"
        if not path.exists():
            write_sample(path, args.rows, **({"columns": columns} if columns else {}))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "engine", "inspect", str(path), "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = sum(after[:2]) - sum(before[:2])  # user + system
        print(
            f"{name:>6}: {args.rows:,} rows in {took:.1f} s ({args.rows / took:,.0f} rows/s), "
            f"CPU {cpu:.1f} s, peak RSS of the largest process so far "
            f"{after.ru_maxrss / 1024:.0f} MiB, load average {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
