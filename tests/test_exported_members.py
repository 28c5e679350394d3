"""The public API is what `engine.__all__` and `engine.testing.__all__` name, and only that."""

from __future__ import annotations

import pkgutil

import engine
import engine.testing


def test_engine_exports_exactly_its_public_api() -> None:
    assert sorted(engine.__all__) == [
        "ApiError",
        "AudienceInfo",
        "Audiences",
        "ConfigError",
        "EngineError",
        "ErrorInfo",
        "InputError",
        "Inspection",
        "KeyInspection",
        "LimiterConfig",
        "Progress",
        "Reject",
        "Report",
        "Rows",
        "UploadOptions",
        "Uploader",
        "ainspect",
        "hash_rows",
        "inspect",
        "upload",
        "upload_sync",
    ]
    for name in engine.__all__:
        assert getattr(engine, name).__module__.startswith("engine."), name


def test_every_other_module_is_private() -> None:
    """Internals live in `_`-prefixed modules and packages; `testing` is the one exception,
    shipped on purpose as test support."""
    public = [
        m.name
        for m in pkgutil.iter_modules(engine.__path__)
        if not m.name.startswith("_") and m.name != "testing"
    ]
    assert public == []


def test_testing_exports_its_support_api() -> None:
    assert sorted(engine.testing.__all__) == [
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
    for name in engine.testing.__all__:
        assert hasattr(engine.testing, name), name
