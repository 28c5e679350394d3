"""Test support shipped on purpose: an offline fake of Meta's Graph API and sample data.

    from engine.testing import FakeGraph, FakeConfig, write_sample

`FakeGraph` is an aiohttp server that stands in for the three Custom Audience endpoints: it
validates what it is sent, keeps audience membership, answers with Meta-shaped errors and
injects latency, server errors, dropped connections and throttling on demand. It keeps
Meta's rules in its own tables, never the engine's, so a test against it grades the engine
against an independent reading of the API. `python -m engine fake-graph` serves it.
"""

from __future__ import annotations

from .clock import FakeClock
from .fakegraph import FakeConfig, FakeGraph, LogEntry
from .sample import EIGHT_KEYS, sample_rows, write_sample
from .stages import STAGES, StageCpu, profile_stages

__all__ = [
    "EIGHT_KEYS",
    "FakeClock",
    "FakeConfig",
    "FakeGraph",
    "LogEntry",
    "STAGES",
    "StageCpu",
    "profile_stages",
    "sample_rows",
    "write_sample",
]
