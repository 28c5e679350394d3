"""Realistic, messy sample people lists for demos, tests and benchmarks (no real person in it)."""

from __future__ import annotations

import csv
import random
import unicodedata
from collections.abc import Iterator
from pathlib import Path

EIGHT_KEYS = ("email", "phone", "first_name", "last_name", "zip", "city", "state", "country")
_FIRST = ["John", "  mary", "ZOË", "José", "Anne-Marie", "li", "O'Neil", "Søren", "Chloé", "Kenji"]
_LAST = ["Smith", "García", "o'brien", "Müller", "NGUYEN", "van der Berg", "Kowalski", "Dubois"]
_CITY = ["New York", "Los Angeles", "san francisco", "Austin", "São Paulo", "Paris", "Zürich"]
_STATE = ["CA", "california", "NY", "New York", "tx", "Texas", "Île-de-France", "ZH"]
_COUNTRY = ["US", "us", "United States", "USA", "FR", "France", "CH", "Germany", "gb"]
_DOMAINS = ["example.com", "Example.org", "mail.example.net", "EXAMPLE.co.uk"]
_PHONES = ["+1 (555) {:03d}-{:04d}", "555.{:03d}.{:04d}", "00 1 555 {:03d} {:04d}"]
_ZIPS = ["{:05d}", "{:05d}-1234", " {:05d} "]
# Addresses are ASCII in real lists, bar the odd internationalized one: names keep their
# accents in the name columns, and one address in this many keeps them too.
_UNICODE_EMAIL_EVERY = 50_000


def _ascii(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name.strip()).encode("ascii", "ignore").decode()
    return folded.replace("'", "")


_FIRST_ASCII = [_ascii(n) for n in _FIRST]


def _row(rng: random.Random, i: int) -> list[str]:
    if rng.random() < 0.01:  # a few rows no key can use, so rejects show up
        return ["not-an-email", "n/a", "", "", "", "", "", ""]
    first = rng.randrange(len(_FIRST))
    local = _FIRST[first].strip() if i % _UNICODE_EMAIL_EVERY == 0 else _FIRST_ASCII[first]
    email = f"  {local}.{i}@{rng.choice(_DOMAINS)} "
    zip_code = rng.choice(_ZIPS).format(rng.randrange(100000))
    return [
        email,
        rng.choice(_PHONES).format(rng.randrange(1000), i % 10000),
        rng.choice(_FIRST),
        rng.choice(_LAST),
        zip_code,
        rng.choice(_CITY),
        rng.choice(_STATE),
        rng.choice(_COUNTRY),
    ]


def sample_rows(n: int, seed: int = 7) -> Iterator[list[str]]:
    rng = random.Random(seed)
    for i in range(n):
        yield _row(rng, i)


def write_sample(
    path: Path, n: int, *, columns: tuple[str, ...] = EIGHT_KEYS, seed: int = 7
) -> Path:
    """Write `n` rows with the given columns (a subset of EIGHT_KEYS) as CSV."""
    picks = [EIGHT_KEYS.index(c) for c in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(columns)
        out.writerows([row[i] for i in picks] for row in sample_rows(n, seed))
    return path
