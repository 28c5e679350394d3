"""Assertions shared by the end-to-end tests: what the fake saw, against the session rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine._hashing.schema import Schema
from engine._input.files import open_input
from engine.testing.fakegraph import FakeGraph

from . import refnorm


def expected_rows(path: Path, schema: str | None = None) -> set[tuple[Any, ...]]:
    """What the audience should hold: the file's cells (as the engine reads them) through
    the reference normalizer, so the engine is graded by the docs' rules, not its own."""
    with open_input(str(path)) as source:
        keys = source.bind(Schema.parse(schema).keys if schema else None, {})
        rows: set[tuple[Any, ...]] = set()
        for chunk in source.chunks(1000):
            for cells in chunk.values:
                row = refnorm.expected_row(keys, cells, default_country_code="1")
                if row is not None:
                    rows.add(tuple(row))
    return rows


def check_session(fake: FakeGraph, report: dict[str, Any], *, replace: bool = False) -> None:
    """The session rules (docs/protocol.md), from what the fake saw."""
    sid = report["session_id"]
    entries = [e for e in fake.log if e.session_id == sid]
    acked = [e for e in entries if e.outcome == "ok"]
    seqs = sorted(e.batch_seq for e in acked)
    n = report["batches_total"]
    assert seqs == list(range(1, n + 1)), "each batch_seq acknowledged exactly once"
    flagged = [e for e in entries if e.last_batch_flag]
    assert {e.batch_seq for e in flagged} == {n}, "last flag on batch N alone"
    assert all(e.acked_after == n - 1 for e in flagged), "last batch after all others acked"
    assert sum(e.rows for e in acked) == report["rows_sent"] == report["rows_valid"]
    if replace:
        first = min(entries, key=lambda e: e.seq)
        assert first.batch_seq == 1
        assert all(e.acked_after >= 1 for e in entries if e.batch_seq != 1)
    assert fake.violations == []


def check_counts(report: dict[str, Any]) -> None:
    assert report["rows_read"] == report["rows_valid"] + report["rows_rejected"]
    assert sum(report["rejected_by_reason"].values()) == report["rows_rejected"]
    assert report["rows_sent"] == report["rows_valid"]
    assert report["batches_sent"] == report["batches_total"]
