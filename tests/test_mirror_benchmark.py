"""The mirror benchmark end to end on a small list: only the diff goes on the wire and the
table is made (not speed: machines vary)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.mirror import render, scenario


def test_the_mirror_benchmark_sends_only_the_diff(tmp_path: Path) -> None:
    result = scenario(tmp_path, 20_000)
    assert 0 < result["added"] <= 100 and 0 < result["removed"] <= 100
    assert result["sent"] == {"add": result["added"], "remove": result["removed"], "replace": 0}
    assert result["mirror_s"] > 0 and result["dry_cpu_s"] > 0 and result["mirror_rss_mb"] > 10
    assert 0 < result["state_mb_per_m"] < 1000
    assert render([result]).splitlines()[2].startswith("| 20,000 |")
