"""The benchmark harnesses end to end on small inputs: every scenario runs and reports sane
numbers (not speed: CI machines vary)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import ENGINE_MAX_BURST, rate_under_cap

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_benchmark_writes_a_sane_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)]
        + ["--cache", str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| schema | rows | latency | engine rows/s" in run.stdout

    results = json.loads((out / "results.json").read_text())
    scenarios = results["scenarios"]
    assert {(s["schema"], s["latency_ms"]) for s in scenarios} == {
        (schema, latency) for schema in ("email", "8key") for latency in (0, 200)
    }
    for s in scenarios:
        report = s["engine_report"]
        assert report["status"] == "completed"
        assert report["rows_read"] == s["rows"] == 10_000
        assert 0 < report["rows_rejected"] < 500  # the sample's ~1% of unusable rows
        assert report["rows_sent"] == report["rows_valid"]
        assert s["engine_rows_per_s"] > 0 and 10 < s["engine_peak_rss_mb"] < 2000
        assert s["engine_cpu_s"] > 0
        assert all(v >= 0 for v in s["stage_cpu_s"].values())
        assert s["sdk_rows"] == 10_000 and s["sdk_rows_per_s"] > 0
        assert s["ratio"] == s["engine_rows_per_s"] / s["sdk_rows_per_s"]

    throttled = results["throttled"]
    assert [t["label"] for t in throttled][0] == "engine defaults"
    for t in throttled:
        assert t["rows_sent"] == t["report"]["rows_valid"]
        assert t["requests"] >= t["report"]["batches_total"]
        assert 0 <= t["throttled_share"] <= 1 and t["goodput_share"] > 0

    assert (out / "rows_per_s.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "results.md").read_text().startswith("| schema |")


@pytest.mark.parametrize(
    ("calls", "window", "rate"),
    [(50, 10.0, 4.6), (600, 120.0, 596 / 120), (40, 1.0, 30.0), (5, 1.0, 2.0), (2, 1.0, 1.0)],
)
def test_the_tuned_rate_and_its_burst_fit_the_cap(calls: int, window: float, rate: float) -> None:
    assert rate_under_cap(calls, window) == pytest.approx(rate)
    burst = max(1, min(ENGINE_MAX_BURST, int(rate)))  # as the CLI sets it
    assert burst + rate * window <= calls + 1e-9


def test_a_cap_with_no_room_for_a_burst_and_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        rate_under_cap(1, 1.0)


def test_quota_benchmark_runs_one_tiny_cell(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.quota", "--cells", "sliding-1s@5", "--seconds", "2"]
        + ["--out", str(out), "--cache", str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| window \\ cap | 5 call/s |" in run.stdout
    assert "| sliding 1 s | " in run.stdout and "| sliding-1s@5 | " in run.stdout
    (cell,) = json.loads((out / "quota.json").read_text())["cells"]
    assert cell["throttle"] == "shape=sliding,rate=5,window_s=1,time_scale=1"
    assert cell["requests"] == cell["admitted"] + cell["throttled"] + cell["other_errors"] > 0
    assert (out / "quota.md").read_text().startswith("| window \\ cap |")
