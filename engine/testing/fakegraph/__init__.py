"""An offline fake of the Graph API's Custom Audience upload edges (an aiohttp server).

It stands in for Meta in the tests, the demo, dry runs and benchmarks, and lets users test
their own integration offline (`python -m engine fake-graph`). It keeps Meta's rules in its
own tables, not the engine's (see docs/protocol.md for what the engine does). What it models:

* `POST /{v}/{audience}/users` (add), the same with `method=DELETE` or a real `DELETE`
  (remove), `POST /{v}/{audience}/usersreplace` (replace); `payload` and `session` are
  JSON strings in a multipart or url-encoded body (a JSON body is accepted too).
* `GET /{v}/{audience}/sessions?session_id=N` and `GET /{v}/{audience}?fields=operation_status`.
  `operation_status` is `{"code": 200, "description": "Normal"}` or, while a replace runs
  (or settles), `{"code": 300, "description": "replace_in_progress"}`; 300 is this fake's
  choice, Meta documents only the descriptions.
* Meta-shaped errors: 190 token, 100 appsecret_proof / bad parameter / row shape /
  more than 10,000 rows, 194 missing parameter, 2650 replace subcodes, 80003 (4, 17)
  throttling.
* Membership: the audience holds `tuple(row)` for every valid row (single-key rows become
  1-tuples), so tests can compare it with what the engine meant to send.
* Faults: latency, random 5xx, dropped connections, scripted errors, slow answers and a
  quota per ad account (`FakeConfig.throttle`: a sliding or fixed window or a token bucket
  from engine/testing/throttle.py, with the usage header and error of Meta's business
  use case, app or ad-account quota; `rate_limit` is a sliding window's shorthand).
* A request log and a list of session-invariant violations (docs/protocol.md) for tests.

Admin endpoints for a fake run as a subprocess live under `/_fake/`. Tokens are never
logged: the access log is off (GET URLs carry the token) and the log keeps no token.

`FakeGraph` (server.py) composes the parts: the audience and session state (state.py),
fault injection (faults.py) and the request log with its invariant checks (record.py). It
reads requests with wire.py and Meta's rules from meta.py; its settings are config.py, the
admin endpoints admin.py and the command line cli.py.
"""

from __future__ import annotations

from .cli import serve
from .config import FakeConfig
from .meta import (
    MAX_ROWS,
    MULTI_KEYS,
    REPLACE_ERROR_CODE,
    REPLACE_FINISHED,
    REPLACE_IN_PROGRESS,
    REPLACE_NO_FIRST_BATCH,
    REPLACE_RETRY_NEW_SESSION,
    REPLACE_TIMED_OUT,
    REPLACE_TOO_LARGE,
    REPLACE_WINDOW_S,
    SINGLE_KEY_SCHEMAS,
)
from .record import LogEntry
from .server import FakeGraph
from .state import FakeSession

__all__ = [
    "MAX_ROWS",
    "MULTI_KEYS",
    "REPLACE_ERROR_CODE",
    "REPLACE_FINISHED",
    "REPLACE_IN_PROGRESS",
    "REPLACE_NO_FIRST_BATCH",
    "REPLACE_RETRY_NEW_SESSION",
    "REPLACE_TIMED_OUT",
    "REPLACE_TOO_LARGE",
    "REPLACE_WINDOW_S",
    "SINGLE_KEY_SCHEMAS",
    "FakeConfig",
    "FakeGraph",
    "FakeSession",
    "LogEntry",
    "serve",
]
