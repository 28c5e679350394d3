"""A fleet of 1, 2 and 3 worker replicas on one machine against the fake, capped per account.

    python -m benchmarks.fleet                     # 6 ad accounts, 12 jobs, 20 calls / 10 s
    python -m benchmarks.fleet --rows 20000 --cap 20/10 --replicas 1,2,3

Each run: a fresh redis-server and replicas (`engine.testing.fleet.LocalFleet`), the fake in
this process with every audience registered to its account and a sliding-window cap per
account; 12 jobs (two audiences per account) submitted round-robin to the replicas. Prints
aggregate rows/s, the share of each account's cap used over the run (calls the fake counted
/ what the cap allows in that time; mean and lowest account) and the share of requests
throttled.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from engine.testing.fakegraph import FakeConfig, FakeGraph
from engine.testing.fleet import LocalFleet
from engine.testing.sample import write_sample

ACCOUNTS = [f"act_{2000000001 + n}" for n in range(6)]
AUDIENCES = [(f"2385000000000{100 + n}", ACCOUNTS[n // 2]) for n in range(12)]


async def one_run(replicas: int, rows: int, cap: tuple[int, float], tmp: Path) -> dict[str, float]:
    fake = FakeGraph(FakeConfig(rate_limit=cap, lean=True, latency=(0.02, 0.05)))
    await fake.start()
    for audience, account in AUDIENCES:
        fake.register_audience(audience, account)
    people = write_sample(tmp / "people.csv", rows, seed=1)
    fleet = LocalFleet(tmp / f"fleet{replicas}", fake.base_url, replicas, max_jobs=4)
    fleet.directory.mkdir()
    people = people.rename(fleet.directory / "people.csv")
    await asyncio.to_thread(fleet.start, {"META_ACCESS_TOKEN": "bench-token"})
    try:
        async with aiohttp.ClientSession() as http:
            began = time.monotonic()
            ids = []
            for n, (audience, account) in enumerate(AUDIENCES):
                job = {
                    "audience": audience,
                    "ad_account": account,
                    "input": str(people),
                    "batch_size": 1000,
                }
                async with http.post(f"{fleet.urls[n % replicas]}/jobs", json=job) as resp:
                    ids.append((await resp.json())["id"])
            while True:
                states = []
                for job_id in ids:
                    async with http.get(f"{fleet.urls[0]}/jobs/{job_id}") as resp:
                        states.append((await resp.json())["state"])
                if all(s in ("completed", "failed", "cancelled") for s in states):
                    break
                await asyncio.sleep(0.25)
            elapsed = time.monotonic() - began
    finally:
        await asyncio.to_thread(fleet.stop)
        await fake.close()
    assert states == ["completed"] * len(ids), states
    calls, window = cap
    used = []
    for account in ACCOUNTS:
        entries = [e for e in fake.log if e.ad_account == account]
        used.append(len(entries) / (calls * elapsed / window))
    throttled = sum(e.outcome == "throttled" for e in fake.log) / len(fake.log)
    return {
        "replicas": replicas,
        "rows_per_s": rows * len(AUDIENCES) / elapsed,
        "cap_used_mean": sum(used) / len(used),
        "cap_used_min": min(used),
        "throttled": throttled,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per job")
    parser.add_argument("--cap", default="20/10", help="the fake's cap per account, CALLS/SECONDS")
    parser.add_argument("--replicas", default="1,2,3")
    args = parser.parse_args()
    calls, seconds = args.cap.split("/")
    cap = (int(calls), float(seconds))
    print("| replicas | rows/s | cap used (mean / lowest account) | throttled | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(r) for r in args.replicas.split(",")):
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            r = asyncio.run(one_run(n, args.rows, cap, Path(tmp)))
        print(
            f"| {n} | {r['rows_per_s']:,.0f} | {r['cap_used_mean']:.0%} / "
            f"{r['cap_used_min']:.0%} | {r['throttled']:.1%} | {r['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
