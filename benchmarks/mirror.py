"""Mirror mode at scale: a list with 1% churn (0.5% new rows, 0.5% gone) mirrored against a
state of the day before, against a dry run of the same file.

    python -m benchmarks.mirror --rows 1000000
    python -m benchmarks.mirror --rows 1000000,10000000

Per size: the first mirror (a replace, which sets the state), a dry run of the churned file,
the churned mirror (wall time, CPU time and peak RSS of the engine and its workers, each
beside the dry run's), the rows the fake acknowledged per mode during the churned mirror
(from its log), the state file's size, and the load average before each of the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .run import HERE, TOKEN, dataset, engine_cmd, fake_graph, measure

SCHEMA = "8key"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated sizes")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    results = [scenario(args.cache, int(n)) for n in args.rows.split(",")]
    print(render(results))
    return 0


def churned(cache: Path, rows: int) -> tuple[Path, Path]:
    """Day 0 (the first `rows` rows of a sample) and day 1 (the first 0.5% gone, as many new
    rows at the end), cut from one sample of rows + 0.5% lines."""
    step = rows // 200
    source = dataset(cache, SCHEMA, rows + step)
    day0, day1 = cache / f"mirror_{rows}_day0.csv", cache / f"mirror_{rows}_day1.csv"
    if not day1.exists():
        with open(source, "rb") as f, open(day0, "wb") as d0, open(day1, "wb") as d1:
            header = f.readline()
            d0.write(header)
            d1.write(header)
            for n, line in enumerate(f):
                if n < rows:
                    d0.write(line)
                if n >= step:
                    d1.write(line)
    return day0, day1


def fake_log(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/_fake/log") as reply:
        entries: list[dict[str, Any]] = json.loads(reply.read())
    return entries


def scenario(cache: Path, rows: int) -> dict[str, Any]:
    day0, day1 = churned(cache, rows)
    with tempfile.TemporaryDirectory() as tmp, fake_graph() as url:
        env = {"META_ACCESS_TOKEN": TOKEN, "XDG_STATE_HOME": tmp}
        report = Path(tmp) / "report.json"
        mirror = ("--mode", "mirror", "--rate", "1000")
        print(f"{rows:,} rows: first mirror ...", file=sys.stderr, flush=True)
        first = measure(engine_cmd(day0, url, report, *mirror), env)
        print(f"{rows:,} rows: dry run ...", file=sys.stderr, flush=True)
        loads = [os.getloadavg()[0]]
        dry = measure(engine_cmd(day1, url, report, "--dry-run"), env)
        mark = len(fake_log(url))
        print(f"{rows:,} rows: churned mirror ...", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
        churn = measure(engine_cmd(day1, url, report, *mirror), env)
        result = json.loads(report.read_text())
        entries = fake_log(url)[mark:]
        sent = {
            mode: sum(e["rows"] for e in entries if e["mode"] == mode and e["outcome"] == "ok")
            for mode in ("add", "remove", "replace")
        }
        state = sum(p.stat().st_size for p in Path(tmp, "audience-engine", "mirror").rglob("*"))
    return {
        "rows": rows,
        "first_s": first.wall_s,
        "first_rss_mb": first.peak_rss_mb,
        "dry_s": dry.wall_s,
        "dry_cpu_s": dry.cpu_s,
        "dry_rss_mb": dry.peak_rss_mb,
        "mirror_s": churn.wall_s,
        "mirror_cpu_s": churn.cpu_s,
        "mirror_rss_mb": churn.peak_rss_mb,
        "added": result["added"],
        "removed": result["removed"],
        "sent": sent,
        "state_mb_per_m": state / 2**20 / (rows / 1e6),
        "loads": loads,
    }


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| rows | first mirror (replace) | dry run | churned mirror | x dry run "
        "| CPU: dry run / mirror | peak RSS: dry run / mirror | added / removed "
        "| sent: add / remove / replace | state per 1M rows | load average |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["sent"]
        lines.append(
            f"| {r['rows']:,} | {r['first_s']:.1f} s ({r['first_rss_mb']:.0f} MB) "
            f"| {r['dry_s']:.1f} s | {r['mirror_s']:.1f} s | {r['mirror_s'] / r['dry_s']:.2f} "
            f"| {r['dry_cpu_s']:.1f} s / {r['mirror_cpu_s']:.1f} s "
            f"| {r['dry_rss_mb']:.0f} MB / {r['mirror_rss_mb']:.0f} MB "
            f"| {r['added']:,} / {r['removed']:,} "
            f"| {s['add']:,} / {s['remove']:,} / {s['replace']:,} "
            f"| {r['state_mb_per_m']:.0f} MB | {' / '.join(f'{x:.1f}' for x in r['loads'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
