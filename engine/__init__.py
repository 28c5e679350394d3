"""audience-engine: fast, ordered, loss-free uploads of people lists to Meta Custom Audiences.

    import engine
    report = engine.upload_sync("people.csv", audience="2385...", ad_account="act_123")

`Uploader` runs many uploads over one connection pool with one rate limiter per ad account;
`upload` and `upload_sync` are one-off shortcuts. Every call returns a `Report`. The offline
fake of the Graph API lives in `engine.fakegraph`.
"""

from .api import Uploader, upload, upload_sync
from .errors import ApiError, ConfigError, EngineError, ErrorInfo, InputError
from .limiter import LimiterConfig
from .report import Progress, Report
from .sources import Rows

__all__ = [
    "ApiError",
    "ConfigError",
    "EngineError",
    "ErrorInfo",
    "InputError",
    "LimiterConfig",
    "Progress",
    "Report",
    "Rows",
    "Uploader",
    "upload",
    "upload_sync",
]
