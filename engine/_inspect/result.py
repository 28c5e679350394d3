"""The inspection's typed result, the match-quality grade (heuristic: docs/inspect.md) and its
renderings: a terminal table and a self-contained HTML page. Counts only, never a value."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .profile import SKETCH_SIZE, Profile

# Each row's worth by its strongest keys (docs/inspect.md), and the grade's lower bounds.
TIER_WEIGHTS = {"strong": 1.0, "name_place": 0.5, "weak": 0.1, "none": 0.0}
MULTI_KEY_BONUS = 0.1
GRADES = (("A", 0.85), ("B", 0.7), ("C", 0.5), ("D", 0.3), ("F", 0.0))


@dataclass(frozen=True, slots=True)
class KeyInspection:
    """One key's column: rates are shares of all rows read (changed: of the valid values)."""

    key: str
    filled: int
    fill_rate: float
    valid: int
    valid_rate: float
    invalid: int
    changed_rate: float | None  # None for LOOKALIKE_VALUE
    distinct: int | None  # an estimate once above the sketch size; None for LOOKALIKE_VALUE
    rejected_by_reason: Mapping[str, int]  # rows refused for this key


@dataclass(frozen=True, slots=True)
class Inspection:
    """What a list holds, before anything is sent (docs/inspect.md)."""

    rows: int
    rows_valid: int
    rows_rejected: int
    rejected_by_reason: Mapping[str, int]
    keys: tuple[KeyInspection, ...]
    rows_by_valid_keys: Mapping[str, int]  # "0", "1", "2", "3+"
    key_mix: Mapping[str, int]  # rows by their strongest keys: strong, name_place, weak, none
    duplicate_rows: int
    estimated: bool  # distinct and duplicate counts are estimates (above the sketch size)
    match_score: float
    grade: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def inspection_of(profile: Profile) -> Inspection:
    rows = profile.rows
    keys = []
    estimated = len(profile.distinct_rows.least) >= SKETCH_SIZE
    for key in profile.keys:
        c = profile.per_key[key]
        plain_value = key == "LOOKALIKE_VALUE"
        estimated = estimated or len(c.distinct.least) >= SKETCH_SIZE
        keys.append(
            KeyInspection(
                key,
                c.filled,
                _share(c.filled, rows),
                c.valid,
                _share(c.valid, rows),
                c.filled - c.valid,
                None if plain_value else _share(c.changed, c.valid),
                None if plain_value else min(c.valid, c.distinct.estimate()),
                dict(sorted(c.rejected.items())),
            )
        )
    by_keys = profile.by_valid_keys
    mix = {tier: profile.tiers.get(tier, 0) for tier in TIER_WEIGHTS}
    # Rows the reader could not read have no keys at all.
    mix["none"] += rows - sum(profile.tiers.values())
    score = match_score(mix, by_keys.get(2, 0) + by_keys.get(3, 0), rows)
    return Inspection(
        rows=rows,
        rows_valid=rows - sum(profile.rows_rejected.values()),
        rows_rejected=sum(profile.rows_rejected.values()),
        rejected_by_reason=dict(sorted(profile.rows_rejected.items())),
        keys=tuple(keys),
        rows_by_valid_keys={
            "0": by_keys.get(0, 0) + rows - sum(by_keys.values()),
            "1": by_keys.get(1, 0),
            "2": by_keys.get(2, 0),
            "3+": by_keys.get(3, 0),
        },
        key_mix=mix,
        duplicate_rows=max(0, profile.rows_sendable - profile.distinct_rows.estimate()),
        estimated=estimated,
        match_score=score,
        grade=grade_of(score),
    )


def match_score(mix: Mapping[str, int], multi_key_rows: int, rows: int) -> float:
    """Expected match quality, 0 to 1: each row's worth by its strongest keys, plus a bonus
    for rows with two or more valid keys (docs/inspect.md)."""
    if not rows:
        return 0.0
    worth = sum(TIER_WEIGHTS[tier] * n for tier, n in mix.items())
    return round(min(1.0, (worth + MULTI_KEY_BONUS * multi_key_rows) / rows), 3)


def grade_of(score: float) -> str:
    return next(grade for grade, low in GRADES if score >= low)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def table(result: Inspection) -> str:
    """The inspection as a plain-text table for a terminal."""
    lines = [
        f"rows {result.rows:,}  valid {result.rows_valid:,}  rejected {result.rows_rejected:,}"
        f"  duplicates {'~' if result.estimated else ''}{result.duplicate_rows:,}",
        f"expected match quality: {result.grade} (score {result.match_score:.2f})",
        "",
        f"{'key':<16}{'filled':>9}{'valid':>9}{'invalid':>10}{'changed':>9}{'distinct':>12}"
        "  rejected rows",
    ]
    for k in result.keys:
        rejected = ", ".join(f"{r} {n:,}" for r, n in k.rejected_by_reason.items()) or "-"
        distinct = "-" if k.distinct is None else f"{k.distinct:,}"
        lines.append(
            f"{k.key:<16}{_pct(k.fill_rate):>9}{_pct(k.valid_rate):>9}{k.invalid:>10,}"
            f"{_pct(k.changed_rate):>9}{distinct:>12}  {rejected}"
        )
    lines.append("")
    lines.append(
        "rows by valid keys: "
        + "  ".join(f"{n} keys {c:,}" for n, c in result.rows_by_valid_keys.items())
    )
    lines.append("key mix: " + "  ".join(f"{t} {c:,}" for t, c in result.key_mix.items()))
    if result.rejected_by_reason:
        lines.append(
            "rejected: " + "  ".join(f"{r} {c:,}" for r, c in result.rejected_by_reason.items())
        )
    return "\n".join(lines) + "\n"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:60em}
h1{font-size:1.4em}table{border-collapse:collapse;width:100%;margin:1em 0}
td,th{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
.bar{background:#eee;width:10em;height:.8em;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#3a7bd5}
.grade{font-size:2.4em;font-weight:700;padding:.1em .5em;border-radius:.2em;color:#fff}
.A{background:#2e7d32}.B{background:#689f38}.C{background:#f9a825}.D{background:#ef6c00}
.F{background:#c62828}.note{color:#666}
"""


def _bar(rate: float | None) -> str:
    if rate is None:
        return "-"
    width = max(0.0, min(100.0, rate * 100))
    return f'<span class="bar"><span style="width:{width:.1f}%"></span></span> {_pct(rate)}'


def page(result: Inspection, title: str = "List inspection") -> str:
    """One self-contained HTML page (inline CSS bars, nothing fetched)."""
    e = html.escape
    rows = []
    for k in result.keys:
        rejected = "<br>".join(f"{e(r)}: {n:,}" for r, n in k.rejected_by_reason.items())
        rows.append(
            f"<tr><td>{e(k.key)}</td><td>{_bar(k.fill_rate)}</td><td>{_bar(k.valid_rate)}</td>"
            f"<td>{k.invalid:,}</td><td>{_pct(k.changed_rate)}</td>"
            f"<td>{'-' if k.distinct is None else f'{k.distinct:,}'}</td>"
            f"<td>{rejected or '-'}</td></tr>"
        )
    total = result.rows or 1
    counts = "".join(
        f"<tr><td>{e(n)} valid keys</td><td>{_bar(c / total)}</td><td>{c:,}</td></tr>"
        for n, c in result.rows_by_valid_keys.items()
    )
    mix = "".join(
        f"<tr><td>{e(t)}</td><td>{_bar(c / total)}</td><td>{c:,}</td></tr>"
        for t, c in result.key_mix.items()
    )
    reasons = "".join(
        f"<tr><td>{e(r)}</td><td>{c:,}</td></tr>" for r, c in result.rejected_by_reason.items()
    )
    approx = "about " if result.estimated else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{e(title)}</h1>
<p><span class="grade {result.grade}">{result.grade}</span>
expected match quality (score {result.match_score:.2f}; a heuristic from the key mix)</p>
<p>{result.rows:,} rows read: {result.rows_valid:,} can be sent, {result.rows_rejected:,}
rejected; {approx}{result.duplicate_rows:,} duplicate rows.</p>
<h2>Keys</h2>
<table><tr><th>key</th><th>filled</th><th>valid</th><th>invalid</th>
<th>changed by normalization</th><th>distinct</th><th>rows rejected for it</th></tr>
{"".join(rows)}</table>
<h2>Rows by number of valid keys</h2><table>{counts}</table>
<h2>Key mix</h2><table>{mix}</table>
<h2>Rejected rows</h2><table>{reasons or "<tr><td>none</td></tr>"}</table>
<p class="note">Counts only: no value of the list appears on this page.</p>
</body></html>
"""
