"""Exponential backoff with full jitter, for retries of transient failures and throttles
without a regain estimate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: `delay(n)` is uniform in [0, min(cap, base * 2**n)]."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        # min() first: 2**attempt may be huge, but a float overflow needs attempt > 1000.
        bound = min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), 1000))
        return rng.uniform(0.0, bound)
