"""Meta's usage headers (X-Business-Use-Case-Usage, X-Ad-Account-Usage, X-App-Usage) read into
the highest percentage any quota reports and the estimated time to regain access.
Malformed headers are logged at debug level and ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger("engine.limiter")

BUC_HEADER = "x-business-use-case-usage"


AD_ACCOUNT_HEADER = "x-ad-account-usage"


APP_HEADER = "x-app-usage"


_PCT_FIELDS = ("call_count", "total_cputime", "total_time")


@dataclass(frozen=True, slots=True)
class Usage:
    """The highest usage figures a reply reported.

    `pct` is the highest percentage of any quota (0-100, may exceed 100); `regain_s` is
    Meta's estimated time until access comes back, in seconds, or None when not given or 0.
    """

    pct: float
    regain_s: float | None = None


def _number(value: Any) -> float | None:
    """A finite JSON number (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _numbers(obj: Mapping[str, Any], names: Iterable[str]) -> list[float]:
    return [n for name in names if (n := _number(obj.get(name))) is not None]


def _buc(value: Any, pcts: list[float], regains: list[float]) -> bool:
    """X-Business-Use-Case-Usage: {"<business id>": [{"type", "call_count", ...}]}."""
    if not isinstance(value, dict):
        return False
    entries = [
        e
        for group in value.values()
        if isinstance(group, list)
        for e in group
        if isinstance(e, dict)
    ]
    # The custom_audience bucket is the one this engine spends; others only if it is absent.
    ours = [e for e in entries if e.get("type") == "custom_audience"] or entries
    for entry in ours:
        pcts.extend(_numbers(entry, _PCT_FIELDS))
    waits = _regains(ours)
    # No wait named for our bucket: the throttle may be another bucket's (80004 is
    # ads_management's), and its wait is the one to honour.
    regains.extend(waits or _regains(entries))
    return bool(entries)


def _regains(entries: list[dict[str, Any]]) -> list[float]:
    """The entries' `estimated_time_to_regain_access` (minutes) in seconds, where above 0."""
    minutes = (_number(e.get("estimated_time_to_regain_access")) for e in entries)
    return [m * 60.0 for m in minutes if m is not None and m > 0]


def _ad_account(value: Any, pcts: list[float], regains: list[float]) -> bool:
    """X-Ad-Account-Usage: {"acc_id_util_pct": 9.67, "reset_time_duration": 100, ...}."""
    if not isinstance(value, dict):
        return False
    pcts.extend(_numbers(value, ("acc_id_util_pct",)))
    return True


def _app(value: Any, pcts: list[float], regains: list[float]) -> bool:
    """X-App-Usage: {"call_count": 28, "total_time": 25, "total_cputime": 25}."""
    if not isinstance(value, dict):
        return False
    pcts.extend(_numbers(value, _PCT_FIELDS))
    return True


_PARSERS = {BUC_HEADER: _buc, AD_ACCOUNT_HEADER: _ad_account, APP_HEADER: _app}


def parse_usage(headers: Mapping[str, str]) -> Usage | None:
    """The usage figures of a reply's headers; None when it carries none.

    Header names match case-insensitively. A malformed header or field is skipped with a
    debug message naming the header (never its value); this function never raises.
    """
    pcts: list[float] = []
    regains: list[float] = []
    try:
        items = list(headers.items())
    except Exception:  # an odd mapping must not break a send
        log.debug("usage headers unreadable", exc_info=True)
        return None
    for name, raw in items:
        parser = _PARSERS.get(name.lower()) if isinstance(name, str) else None
        if parser is None:
            continue
        try:
            value = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            log.debug("ignoring %s header: not JSON", name)
            continue
        if not parser(value, pcts, regains):
            log.debug("ignoring %s header: unexpected shape", name)
    if not pcts and not regains:
        return None
    return Usage(pct=max(pcts, default=0.0), regain_s=max(regains, default=None))
