"""audience-engine: fast, ordered, loss-free uploads of people lists to Meta Custom Audiences.

    import engine
    report = engine.upload_sync("people.csv", audience="2385...", ad_account="act_123")

`Uploader` runs many uploads over one connection pool with one rate limiter per ad account;
`upload` and `upload_sync` are one-off shortcuts; `UploadOptions` types their keywords.
Every call returns a `Report`. `hash_rows` hashes rows without uploading them (for work split
across machines). `inspect` looks at a list before it is sent; `Audiences` lists, shows and
creates Custom Audiences. Test support, with the offline fake of the Graph API, is `engine.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._errors import ApiError, ConfigError, EngineError, ErrorInfo, InputError
from ._report import Progress, Report
from ._rows import Reject

if TYPE_CHECKING:
    from ._api import Uploader, UploadOptions, upload, upload_sync
    from ._graph.audience import AudienceInfo, Audiences
    from ._hashing.rows import hash_rows
    from ._input.memory import Rows
    from ._inspect.result import Inspection, KeyInspection
    from ._inspect.run import ainspect, inspect
    from ._quota.limiter import LimiterConfig

# Loaded on first use: hashing worker processes import this package too, and aiohttp alone
# would double their start-up time and memory.
_LAZY = {
    "Uploader": "_api",
    "UploadOptions": "_api",
    "upload": "_api",
    "upload_sync": "_api",
    "LimiterConfig": "_quota.limiter",
    "Rows": "_input.memory",
    "hash_rows": "_hashing.rows",
    "AudienceInfo": "_graph.audience",
    "Audiences": "_graph.audience",
    "Inspection": "_inspect.result",
    "KeyInspection": "_inspect.result",
    "inspect": "_inspect.run",
    "ainspect": "_inspect.run",
}

__all__ = [
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


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
