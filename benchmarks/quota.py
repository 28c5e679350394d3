"""The quota benchmark: the engine's defaults against quotas of every shape and cap.

    python -m benchmarks.quota                                # the whole matrix, ~35 min
    python -m benchmarks.quota --cells sliding-1s@5,bucket --seconds 20

A matrix of window shapes (sliding 1 s, 10 s, 60 s and one hour, a fixed hour, a token
bucket; the hours run 120 times faster) by caps (1, 5 and 20 calls/s). Each cell starts the
fake Graph API in its own process with that quota on the ad account (`fake-graph
--throttle`), then `python -m engine upload` in its own process with the engine's defaults
and batches of ten rows, and stops the upload (SIGTERM) once the cell's seconds have passed
since its first request. The upload is told how long one of Meta's minutes lasts against the
faster hours (`AUDIENCE_ENGINE_MINUTE_S`); nothing else is tuned per cell. See
benchmarks/README.md for how the figures are taken from the fake's request log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.run import AD_ACCOUNT, AUDIENCE, HERE, ROOT, TOKEN, dataset, engine_cmd, fake_graph

BATCH = 10  # rows per request: a run makes a few hundred to a few thousand calls
HOUR_SCALE = 120.0  # a scaled hour lasts 30 s
CAPS = (1.0, 5.0, 20.0)
MINUTE_ENV = "AUDIENCE_ENGINE_MINUTE_S"
STOP_WAIT_S = 30.0  # for the upload to stop after its second SIGTERM before it is killed


@dataclass(frozen=True)
class Shape:
    label: str
    kind: str  # the fake's throttle shape: sliding, fixed or bucket
    window_s: float  # in Meta's seconds (a bucket holds one window's worth of calls)
    time_scale: float
    seconds: float  # default run length: the first window and at least three more

    @property
    def real_window_s(self) -> float:
        return self.window_s / self.time_scale


SHAPES = {
    "sliding-1s": Shape("sliding 1 s", "sliding", 1.0, 1.0, 60.0),
    "sliding-10s": Shape("sliding 10 s", "sliding", 10.0, 1.0, 60.0),
    "sliding-60s": Shape("sliding 60 s", "sliding", 60.0, 1.0, 240.0),
    "sliding-1h": Shape("sliding 1 h (x120)", "sliding", 3600.0, HOUR_SCALE, 120.0),
    "fixed-1h": Shape("fixed 1 h (x120)", "fixed", 3600.0, HOUR_SCALE, 120.0),
    "bucket": Shape("token bucket (1 s)", "bucket", 1.0, 1.0, 60.0),
}


@dataclass
class Cell:
    shape: str
    cap: float  # calls per second
    seconds: float
    throttle: str  # the fake's --throttle
    requests: int
    admitted: int
    throttled: int
    other_errors: int
    rows_acked: int
    run_s: float  # first request to the stop
    span_s: float  # the steady part measured: after the first window (fixed: whole windows)
    goodput: float | None  # rows acknowledged per second in the span / (cap x BATCH)
    goodput_run: float  # the same over the whole run, the first window's head start included
    throttled_share: float
    longest_silence_s: float  # the longest gap between two requests
    engine_exit: int | None

    @property
    def name(self) -> str:
        return f"{self.shape}@{self.cap:g}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cells: list[Cell] = []
    rows = max(
        _rows_needed(SHAPES[s], cap, args.seconds or SHAPES[s].seconds) for s, cap in args.cells
    )
    args.cache.mkdir(parents=True, exist_ok=True)
    path = dataset(args.cache, "email", rows)
    for shape, cap in args.cells:
        seconds = args.seconds or SHAPES[shape].seconds
        cell = run_cell(shape, cap, seconds, path, args.latency_ms)
        print(
            f"{cell.name}: goodput {_pct(cell.goodput)}, throttled {_pct(cell.throttled_share)}",
            file=sys.stderr,
            flush=True,
        )
        cells.append(cell)
    table = render(cells)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": os.getloadavg(),
        "batch_size": BATCH,
        "latency_ms": args.latency_ms,
        "cells": [asdict(c) for c in cells],
    }
    (args.out / "quota.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "quota.md").write_text(table + "\n")
    print(f"\nwrote {args.out / 'quota.json'} and quota.md", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quota", description=__doc__)
    p.add_argument(
        "--cells",
        type=_cells,
        default=[(s, cap) for s in SHAPES for cap in CAPS],
        metavar="SHAPE[@CAP],...",
        help=f"cells to run (default all); shapes: {', '.join(SHAPES)}; caps in calls/s "
        "(default 1, 5 and 20)",
    )
    p.add_argument(
        "--seconds", type=float, help="length of every run (default: per shape, 60 to 240)"
    )
    p.add_argument(
        "--latency-ms", type=int, default=50, help="the fake's answer time (default 50 ms)"
    )
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    return p


def _cells(text: str) -> list[tuple[str, float]]:
    cells: list[tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        shape, _, cap = part.partition("@")
        if shape not in SHAPES:
            raise argparse.ArgumentTypeError(f"unknown shape {shape!r}: {', '.join(SHAPES)}")
        try:
            caps = [float(cap)] if cap else list(CAPS)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cap must be calls/s, got {cap!r}") from None
        if not all(c > 0 for c in caps):
            raise argparse.ArgumentTypeError("a cap must be above 0 calls/s")
        cells += [(shape, c) for c in caps]
    return cells


def _rows_needed(shape: Shape, cap: float, seconds: float) -> int:
    """Rows enough that the upload is still sending when it is stopped: twice what the cap
    lets through in the run, plus the first window's worth."""
    calls = 2 * cap * seconds + cap * shape.real_window_s + 100
    return math.ceil(calls) * BATCH


def throttle_spec(shape: Shape, cap: float) -> str:
    return (
        f"shape={shape.kind},rate={cap:g},window_s={shape.window_s:g},"
        f"time_scale={shape.time_scale:g}"
    )


def run_cell(name: str, cap: float, seconds: float, path: Path, latency_ms: int) -> Cell:
    """One cell: a fresh fake with the quota, one upload stopped after `seconds`."""
    shape = SHAPES[name]
    spec = throttle_spec(shape, cap)
    fake = fake_graph("--throttle", spec, latency_ms=latency_ms)
    with fake as url, tempfile.TemporaryDirectory() as tmp:
        _post(f"{url}/_fake/audiences", {"audience_id": AUDIENCE, "ad_account": AD_ACCOUNT})
        env = {
            **os.environ,
            "META_ACCESS_TOKEN": TOKEN,
            MINUTE_ENV: f"{60 / shape.time_scale:g}",
            "XDG_STATE_HOME": tmp,  # a checkpoint of its own: no run resumes another
        }
        cmd = engine_cmd(path, url, Path(tmp) / "report.json", "--batch-size", str(BATCH))
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            first = _first_request(url, proc)
            time.sleep(max(0.0, first + seconds - time.monotonic()))
            stopped = time.monotonic()
            _stop(proc)
            _, stderr = proc.communicate(timeout=STOP_WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, 3):  # completed, interrupted
            print(f"{name}@{cap:g}: the upload exited {proc.returncode}: {stderr[-2000:]}")
        log = json.loads(urllib.request.urlopen(f"{url}/_fake/log").read())
    return measure(name, cap, seconds, spec, log, stopped, proc.returncode)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop the upload at once: a first SIGTERM lets requests in flight finish, which may
    wait out a throttle pause; the second cancels them (the figures come from the fake)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)


def _first_request(url: str, proc: subprocess.Popen[str]) -> float:
    """The fake's clock at the upload's first request (the fake's clock is time.monotonic,
    which the processes of one machine share)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = json.loads(urllib.request.urlopen(f"{url}/_fake/log").read())
        if log:
            return float(log[0]["t"])
        if proc.poll() is not None:
            raise RuntimeError(f"the upload exited {proc.returncode} before its first request")
        time.sleep(0.1)
    raise RuntimeError("the upload sent nothing for 120 s")


def measure(
    name: str,
    cap: float,
    seconds: float,
    spec: str,
    log: list[dict[str, Any]],
    stopped: float,
    exit_code: int | None,
) -> Cell:
    """The cell's figures from the fake's request log, up to the moment the upload was
    stopped."""
    shape = SHAPES[name]
    entries = sorted((e for e in log if e["t"] < stopped), key=lambda e: e["t"])
    first = entries[0]["t"]
    window = shape.real_window_s
    if shape.kind == "fixed":  # whole windows only: a part-window may hold a full one
        start, end = math.ceil(first / window) * window, math.floor(stopped / window) * window
    else:  # after the first window, which starts empty: any later window holds the cap
        start, end = first + window, stopped
    ok = [e for e in entries if e["outcome"] == "ok"]
    throttled = sum(e["outcome"] == "throttled" for e in entries)
    span = max(0.0, end - start)
    in_span = sum(e["rows"] for e in ok if start <= e["t"] < end)
    rows = sum(e["rows"] for e in ok)
    times = [e["t"] for e in entries] + [stopped]
    return Cell(
        shape=name,
        cap=cap,
        seconds=seconds,
        throttle=spec,
        requests=len(entries),
        admitted=len(ok),
        throttled=throttled,
        other_errors=len(entries) - len(ok) - throttled,
        rows_acked=rows,
        run_s=stopped - first,
        span_s=span,
        goodput=in_span / (span * cap * BATCH) if span > 0 else None,
        goodput_run=rows / ((stopped - first) * cap * BATCH),
        throttled_share=throttled / len(entries),
        longest_silence_s=max(b - a for a, b in zip(times, times[1:], strict=False)),
        engine_exit=exit_code,
    )


def render(cells: list[Cell]) -> str:
    """The matrix (goodput / share throttled), then every cell's figures."""
    caps = sorted({c.cap for c in cells})
    by_name = {(c.shape, c.cap): c for c in cells}
    lines = [
        "| window \\ cap | " + " | ".join(f"{cap:g} call/s" for cap in caps) + " |",
        "|---" * (len(caps) + 1) + "|",
    ]
    for name, shape in SHAPES.items():
        row = [by_name.get((name, cap)) for cap in caps]
        if any(row):
            shown = [f"{_pct(c.goodput)} / {_pct(c.throttled_share)}" if c else "-" for c in row]
            lines.append(f"| {shape.label} | " + " | ".join(shown) + " |")
    lines += [
        "",
        "| cell | run s | requests | throttled | other errors | rows acked | goodput "
        "(steady) | goodput (whole run) | longest silence s | upload exit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.name} | {c.run_s:.0f} | {c.requests} | {c.throttled} | {c.other_errors} "
            f"| {c.rows_acked:,} | {_pct(c.goodput)} | {_pct(c.goodput_run)} "
            f"| {c.longest_silence_s:.1f} | {c.engine_exit} |"
        )
    return "\n".join(lines)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _post(url: str, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request).read()


if __name__ == "__main__":
    sys.exit(main())
