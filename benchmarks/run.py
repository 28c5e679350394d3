"""The benchmark: the engine against the official SDK on the fake Graph API (issue #4), and
the engine against a fake that throttles per ad account (issue #3).

    python -m benchmarks.run                 # 1M rows, EMAIL and 8 keys, 0 and 200 ms
    python -m benchmarks.run --rows 1000000,10000000
    python -m benchmarks.run --smoke         # 10,000 rows, every scenario, for CI

Each upload runs as its own process, as a user runs it, against a fake in a process of its
own; see benchmarks/README.md for what each number means and how it is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from engine.testing import EIGHT_KEYS, STAGES, profile_stages, write_sample

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMAS = {"email": ("email",), "8key": EIGHT_KEYS}
# Part of the cached file names: bump it when engine/sample.py changes what it writes.
SAMPLE_VERSION = 2
AUDIENCE = "23850000000000001"
AD_ACCOUNT = "act_1000000001"
TOKEN = "bench-token"  # the fake takes any token
RSS_SAMPLE_S = 0.02
ENGINE_MAX_BURST = 10  # engine/limiter.py LimiterConfig.burst


@dataclass
class Measured:
    """One process run: wall time, CPU of it and of its children, peak RSS of the tree."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str


@dataclass
class Scenario:
    schema: str
    rows: int
    latency_ms: int
    engine_rows_per_s: float
    engine_peak_rss_mb: float
    engine_cpu_s: float
    engine_report: dict[str, Any]
    stage_cpu_s: dict[str, float]
    sdk_rows: int | None = None
    sdk_rows_per_s: float | None = None
    sdk_peak_rss_mb: float | None = None
    sdk_cpu_s: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.engine_rows_per_s / self.sdk_rows_per_s if self.sdk_rows_per_s else None


@dataclass
class Throttled:
    label: str
    cap_calls: int
    cap_window_s: float
    batch_size: int
    rows: int
    engine_args: list[str]
    rows_sent: int
    elapsed_s: float
    requests: int
    throttled: int
    goodput_share: float
    throttled_share: float
    report: dict[str, Any] = field(repr=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.rows, args.sdk_rows, args.profile_rows, args.repeat = [10_000], 10_000, 10_000, 1
        args.throttle_rows, args.throttle_batch = 10_000, 500
        args.throttle = (40, 1.0)
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    sdk = args.sdk_rows > 0 and _sdk_installed()
    scenarios: list[Scenario] = []
    profiles: dict[tuple[str, int], dict[str, float]] = {}
    for latency in args.latencies:
        with fake_graph(latency_ms=latency) as url:
            for rows in filter(None, args.rows):
                for schema in args.schemas:
                    path = dataset(args.cache, schema, rows)
                    if (schema, rows) not in profiles:
                        cpu = profile_stages(str(path), url, limit=min(rows, args.profile_rows))
                        profiles[schema, rows] = cpu.seconds_for(rows)
                    scenario = run_engine(
                        path, url, schema, rows, latency, profiles[schema, rows], args.repeat
                    )
                    if sdk:
                        run_sdk(scenario, path, url, min(rows, args.sdk_rows), args.repeat)
                    _progress(scenario)
                    scenarios.append(scenario)
    throttled = run_throttled(args) if args.throttle_rows else []
    results = {
        "machine": _machine(),
        "scenarios": [asdict(s) | {"ratio": s.ratio} for s in scenarios],
        "throttled": [asdict(t) for t in throttled],
    }
    table = render(scenarios, throttled)
    print(table)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(table + "\n")
    chart(scenarios, args.out / "rows_per_s.png")
    print(f"\nwrote {args.out / 'results.json'}, results.md and rows_per_s.png", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ints = _comma_list(int)
    p.add_argument(
        "--rows", type=ints, default=[1_000_000], help="comma list of row counts (0: none)"
    )
    p.add_argument("--schemas", type=_comma_list(str), default=["email", "8key"])
    p.add_argument("--latencies", type=ints, default=[0, 200], help="fake latency, ms")
    p.add_argument(
        "--sdk-rows",
        type=int,
        default=200_000,
        help="the SDK uploads at most this many rows of each file (its rate does not depend "
        "on the file size and 8 keys go at ~8k rows/s); 0 skips the SDK",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each upload, engine and SDK; the table has the median (peak RSS: the "
        "highest)",
    )
    p.add_argument("--profile-rows", type=int, default=200_000, help="rows for the stage split")
    p.add_argument(
        "--throttle",
        type=_rate_limit,
        default=(50, 10.0),
        metavar="CALLS/SECONDS",
        help="the throttled scenario's cap per ad account (default 50/10: 5 requests/s)",
    )
    p.add_argument(
        "--throttle-rows",
        type=int,
        default=1_000_000,
        help="EMAIL rows in the throttled scenario (100 requests: two cap windows' worth; "
        "0 skips it)",
    )
    p.add_argument("--throttle-batch", type=int, default=10_000)
    p.add_argument("--smoke", action="store_true", help="10,000 rows: a quick check, not speed")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    return p


def _comma_list(kind: type[Any]) -> Any:
    def parse(text: str) -> list[Any]:
        return [kind(part.replace("_", "")) for part in text.split(",") if part.strip()]

    return parse


def _rate_limit(text: str) -> tuple[int, float]:
    calls, _, seconds = text.partition("/")
    return int(calls), float(seconds or 1)


def _sdk_installed() -> bool:
    try:
        import facebook_business  # noqa: F401
    except ImportError:
        print("facebook-business is not installed: no SDK runs (pip install '.[bench]')")
        return False
    return True


def dataset(cache: Path, schema: str, rows: int) -> Path:
    """The sample file for a scenario, generated once and kept in the cache."""
    path = cache / f"{schema}_{rows}_v{SAMPLE_VERSION}.csv"
    if not path.exists():
        print(f"generating {path.name} ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial")
        write_sample(partial, rows, columns=SCHEMAS[schema])
        partial.rename(path)
    return path


@contextmanager
def fake_graph(*extra: str, latency_ms: int = 0) -> Iterator[str]:
    """The fake Graph API in its own process; yields its base URL."""
    cmd = [sys.executable, "-m", "engine", "fake-graph", "--port", "0", "--lean"]
    if latency_ms:
        cmd += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(
        [*cmd, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the fake Graph API did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a command to the end; sample the RSS of it and its children as it runs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = psutil.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Drain the pipes from threads so a chatty child never blocks on a full pipe.
        drains = [_drain(proc.stdout, out), _drain(proc.stderr, err)]
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc))
            time.sleep(RSS_SAMPLE_S)
        wall = time.perf_counter() - started
        for thread in drains:
            thread.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    # The child's own rusage includes its children it waited for (the pool's workers).
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {stderr[-2000:]}")
    return Measured(wall, cpu, peak / 2**20, stdout)


def measure_median(cmd: list[str], env: dict[str, str] | None, repeat: int) -> Measured:
    """`measure` `repeat` times: the run of median wall time, with the highest peak RSS of
    them all (a single run on a shared 2-core machine moves by a fifth)."""
    runs = sorted((measure(cmd, env) for _ in range(repeat)), key=lambda run: run.wall_s)
    median = runs[len(runs) // 2]
    return replace(median, peak_rss_mb=max(run.peak_rss_mb for run in runs))


def _drain(pipe: Any, sink: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: sink.write(pipe.read()), daemon=True)
    thread.start()
    return thread


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in family:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue  # it ended between the listing and the reading
    return total


def engine_cmd(path: Path, url: str, report: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine",
        "upload",
        str(path),
        "--audience",
        AUDIENCE,
        "--ad-account",
        AD_ACCOUNT,
        "--api-base",
        url,
        "--default-country-code",
        "1",
        "-q",
        "--report",
        str(report),
        *extra,
    ]


def run_engine(
    path: Path,
    url: str,
    schema: str,
    rows: int,
    latency: int,
    stages: dict[str, float],
    repeat: int,
) -> Scenario:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        # The default 10 requests/s per ad account is a guard for real accounts; the fake
        # has no quota, so it is raised out of the way here.
        cmd = engine_cmd(path, url, report_path, "--rate", "1000")
        run = measure_median(cmd, {"META_ACCESS_TOKEN": TOKEN}, repeat)
        report = json.loads(report_path.read_text())  # the last run's; every run is alike
    if report["status"] != "completed" or report["rows_read"] != rows:
        raise RuntimeError(f"engine run did not complete: {report}")
    return Scenario(
        schema=schema,
        rows=rows,
        latency_ms=latency,
        engine_rows_per_s=rows / run.wall_s,
        engine_peak_rss_mb=run.peak_rss_mb,
        engine_cpu_s=run.cpu_s,
        engine_report=report,
        stage_cpu_s=stages,
    )


def run_sdk(scenario: Scenario, path: Path, url: str, rows: int, repeat: int) -> None:
    cmd = [sys.executable, "-m", "benchmarks.sdk_upload", str(path), "--api-base", url]
    run = measure_median([*cmd, "--schema", scenario.schema, "--rows", str(rows)], None, repeat)
    sent = json.loads(run.stdout)["rows"]
    scenario.sdk_rows = sent
    scenario.sdk_rows_per_s = sent / run.wall_s
    scenario.sdk_peak_rss_mb = run.peak_rss_mb
    scenario.sdk_cpu_s = run.cpu_s


def run_throttled(args: argparse.Namespace) -> list[Throttled]:
    """EMAIL rows against a fake capped at CALLS per SECONDS per ad account: once with the
    engine's defaults, once with --rate set just under the cap."""
    calls, window = args.throttle
    cap_rate = calls / window
    path = dataset(args.cache, "email", args.throttle_rows)
    batch = ["--batch-size", str(args.throttle_batch)]
    tuned = rate_under_cap(calls, window)
    runs = [("engine defaults", batch), (f"--rate {tuned:g}", [*batch, "--rate", f"{tuned:g}"])]
    results = []
    with fake_graph("--rate-limit", f"{calls}/{window:g}") as url:
        for label, extra in runs:
            _post(f"{url}/_fake/reset")
            with tempfile.TemporaryDirectory() as tmp:
                report_path = Path(tmp) / "report.json"
                cmd = engine_cmd(path, url, report_path, *extra)
                measure(cmd, {"META_ACCESS_TOKEN": TOKEN})
                report = json.loads(report_path.read_text())
            entries = json.loads(urllib.request.urlopen(f"{url}/_fake/log").read())
            throttled = sum(1 for e in entries if e.get("outcome") == "throttled")
            elapsed = float(report["elapsed_s"])
            goodput = report["rows_sent"] / elapsed / (cap_rate * args.throttle_batch)
            results.append(
                Throttled(
                    label=label,
                    cap_calls=calls,
                    cap_window_s=window,
                    batch_size=args.throttle_batch,
                    rows=args.throttle_rows,
                    engine_args=extra,
                    rows_sent=report["rows_sent"],
                    elapsed_s=elapsed,
                    requests=len(entries),
                    throttled=throttled,
                    goodput_share=goodput,
                    throttled_share=throttled / max(1, len(entries)),
                    report=report,
                )
            )
            print(f"throttled, {label}: {results[-1].goodput_share:.0%}", file=sys.stderr)
    return results


def rate_under_cap(calls: int, window: float) -> float:
    """The highest --rate whose bucket fits a cap of `calls` per sliding `window` seconds.

    A token bucket lets a full burst through on top of the rate, so a window can see
    burst + rate x window calls; the CLI sets the burst to the rate, between 1 and 10.
    """
    for burst in range(1, min(ENGINE_MAX_BURST, calls - 1) + 1):
        rate = (calls - burst) / window
        if max(1, min(ENGINE_MAX_BURST, int(rate))) <= burst:
            return rate
    raise ValueError(f"a cap of {calls} calls leaves no room for a burst and a rate")


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST")).read()


def _progress(s: Scenario) -> None:
    sdk = f", SDK {s.sdk_rows_per_s:,.0f} rows/s" if s.sdk_rows_per_s else ""
    print(
        f"{s.schema} {s.rows:,} rows {s.latency_ms} ms: engine {s.engine_rows_per_s:,.0f} rows/s"
        f"{sdk}",
        file=sys.stderr,
        flush=True,
    )


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def render(scenarios: list[Scenario], throttled: list[Throttled]) -> str:
    """The results as Markdown tables."""
    head = (
        "| schema | rows | latency | engine rows/s | SDK rows/s (rows) | engine/SDK "
        "| engine peak RSS MB | SDK peak RSS MB | engine CPU s | "
        + " | ".join(f"{stage} CPU s" for stage in STAGES)
        + " |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in scenarios:
        sdk = f"{_num(s.sdk_rows_per_s)} ({_num(s.sdk_rows)})" if s.sdk_rows_per_s else "-"
        stages = " | ".join(_num(s.stage_cpu_s[stage], ".2f") for stage in STAGES)
        ratio = _num(s.ratio, ".1f") + "x" if s.ratio else "-"
        lines.append(
            f"| {s.schema} | {s.rows:,} | {s.latency_ms} ms | {_num(s.engine_rows_per_s)} "
            f"| {sdk} | {ratio} | {_num(s.engine_peak_rss_mb, '.0f')} "
            f"| {_num(s.sdk_peak_rss_mb, '.0f')} | {_num(s.engine_cpu_s, '.1f')} | {stages} |"
        )
    for latency in sorted({s.latency_ms for s in scenarios} - {0}):
        for s in scenarios:
            base = next(
                (b for b in scenarios if (b.schema, b.rows, b.latency_ms) == (s.schema, s.rows, 0)),
                None,
            )
            if s.latency_ms == latency and base is not None:
                share = s.engine_rows_per_s / base.engine_rows_per_s
                lines.append(
                    f"\n{s.schema} {s.rows:,} rows: {latency} ms gives {share:.0%} of 0 ms"
                )
    if throttled:
        lines += [
            "",
            "| throttled scenario | cap | rows | requests | 80003 | throttled share | goodput "
            "(share of cap) |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in throttled:
            cap = f"{t.cap_calls}/{t.cap_window_s:g}s x {t.batch_size:,}"
            lines.append(
                f"| {t.label} | {cap} | {t.rows_sent:,} | {t.requests} | {t.throttled} "
                f"| {t.throttled_share:.1%} | {t.goodput_share:.0%} |"
            )
    return "\n".join(lines)


def chart(scenarios: list[Scenario], path: Path) -> None:
    """Rows/s per scenario, engine beside SDK, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s.schema}\n{s.rows:,}\n{s.latency_ms} ms" for s in scenarios]
    xs = range(len(scenarios))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(scenarios)), 4.5))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [s.engine_rows_per_s for s in scenarios], width,
           label="engine")  # fmt: skip
    ax.bar([x + width / 2 for x in xs], [s.sdk_rows_per_s or 0 for s in scenarios], width,
           label="facebook-business SDK")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel("rows/s, end to end")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.legend()
    ax.set_title("Custom Audience upload throughput against the fake Graph API")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
