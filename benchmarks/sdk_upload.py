"""The official SDK (facebook-business) uploading a CSV the way its docs show a user doing it.

Run as its own process by the harness, so its wall time, CPU and memory are measured like
the engine's: `python -m benchmarks.sdk_upload FILE --api-base URL --schema email|8key`.
Prints one JSON line: {"rows": N, "requests": N}.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from facebook_business.adobjects.customaudience import CustomAudience
from facebook_business.api import FacebookAdsApi

from engine.testing import EIGHT_KEYS

BATCH = 10_000
API_VERSION = "v25.0"
_MULTI = CustomAudience.Schema.MultiKeySchema
EIGHT_KEY_SCHEMA = [
    _MULTI.email,
    _MULTI.phone,
    _MULTI.fn,
    _MULTI.ln,
    _MULTI.zip,
    _MULTI.ct,
    _MULTI.st,
    _MULTI.country,
]


def _batches(path: str, schema: str, limit: int | None) -> Iterator[list[Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows: Iterator[dict[str, str]] = csv.DictReader(f)
        if limit is not None:
            rows = itertools.islice(rows, limit)
        while batch := list(itertools.islice(rows, BATCH)):
            if schema == "email":
                yield [row["email"] for row in batch]
            else:
                yield [[row[column] for column in EIGHT_KEYS] for row in batch]


def upload(path: str, api_base: str, schema: str, limit: int | None) -> dict[str, int]:
    api = FacebookAdsApi.init(access_token="bench-token", api_version=API_VERSION, crash_log=False)
    # The SDK builds every URL from its session's GRAPH attribute (facebook_business/api.py).
    api._session.GRAPH = api_base.rstrip("/")
    audience = CustomAudience("23850000000000001")
    payload_schema: str | list[str] = (
        CustomAudience.Schema.email_hash if schema == "email" else EIGHT_KEY_SCHEMA
    )
    session_id = random.randrange(1, 2**62)
    rows = requests = 0
    batches = _batches(path, schema, limit)
    current = next(batches, None)
    while current is not None:
        following = next(batches, None)  # read ahead: the last batch carries the flag
        requests += 1
        session = {
            "session_id": session_id,
            "batch_seq": requests,
            "last_batch_flag": following is None,
        }
        audience.add_users(payload_schema, current, is_raw=True, session=session)
        rows += len(current)
        current = following
    return {"rows": rows, "requests": requests}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdk_upload")
    parser.add_argument("path")
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--schema", choices=("email", "8key"), required=True)
    parser.add_argument("--rows", type=int, help="upload only the first N rows")
    args = parser.parse_args(argv)
    print(json.dumps(upload(args.path, args.api_base, args.schema, args.rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
