"""The worker's metrics registry: the process's own collectors, build info, rejected rows
by a bounded reason, request latency by outcome."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from engine import Progress, Report
from engine._worker.telemetry import Metrics

ACT = "act_1000000001"


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def progress(**by_reason: int) -> Progress:
    rejected = sum(by_reason.values())
    return Progress(10, rejected, 0, 1, 0, 0, 0, by_reason)


def test_process_python_and_build_info_are_exported() -> None:
    got = samples(Metrics(5))
    names = {name for name, _ in got}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert {"python_info", "python_gc_collections_total"} <= names
    version = importlib.metadata.version("audience-engine")
    assert got[("audience_engine_build_info", (("version", version),))] == 1


def test_rejected_rows_carry_a_bounded_reason() -> None:
    metrics = Metrics(5)
    metrics.progressed(ACT, None, progress(invalid_email=2, my_own_reason=1))
    metrics.progressed(
        ACT,
        progress(invalid_email=2, my_own_reason=1),
        progress(invalid_email=3, my_own_reason=1, another_one=4, ragged_row=1),
    )
    metrics.rejected_on_arrival(ACT, {"invalid_json": 2, "invalid_phone": 1})
    got = samples(metrics)
    rejected = {
        dict(labels)["reason"]: value
        for (name, labels), value in got.items()
        if name == "audience_engine_rows_rejected_total"
    }
    assert rejected == {
        "invalid_email": 3,
        "ragged_row": 1,
        "invalid_json": 2,
        "invalid_phone": 1,
        "other": 5,
    }
    assert got[("audience_engine_rows_read_total", (("ad_account", ACT),))] == 13


def test_request_latency_is_by_outcome() -> None:
    metrics = Metrics(5)
    for outcome, seconds in (("ok", 0.02), ("ok", 0.03), ("throttled", 0.5)):
        metrics.on_request(outcome, seconds)
    got = samples(metrics)
    count = "audience_engine_request_duration_seconds_count"
    assert got[(count, (("outcome", "ok"),))] == 2
    assert got[(count, (("outcome", "throttled"),))] == 1


def test_every_reason_the_docs_name_has_a_label_of_its_own() -> None:
    text = (Path(__file__).parent.parent / "docs" / "normalization.md").read_text()
    rows = text.split("\n## Rows\n")[1].split("\n## ")[0]
    # Snake-case names in backticks, but the report's own fields the section mentions.
    fields = {f.name for f in dataclasses.fields(Report)}
    codes = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", rows)) - fields
    assert {"invalid_email", "empty_row", "invalid_json", "no_identifying_key"} <= codes
    metrics = Metrics(5)
    metrics.progressed(ACT, None, progress(**dict.fromkeys(codes, 1)))
    labels = {
        dict(labels)["reason"]
        for name, labels in samples(metrics)
        if name == "audience_engine_rows_rejected_total"
    }
    assert labels == codes
