"""The fake's settings: credentials it accepts, faults it injects, how fast Meta's time runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..throttle import ThrottleSpec


@dataclass
class FakeConfig:
    """Everything tunable; faults can also change at runtime (`FakeGraph.configure`)."""

    token: str | None = field(default=None, repr=False)  # None: any non-empty token passes
    app_secret: str | None = field(default=None, repr=False)  # set: appsecret_proof required
    latency: tuple[float, float] = (0.0, 0.0)  # uniform seconds per upload request
    error_rate: float = 0.0  # probability of an HTTP 500 (code 2), not applied
    drop_rate: float = 0.0  # probability of dropping the connection, half after applying
    # The quota of each ad account: a throttle model (`ThrottleSpec`: shape, rate, window,
    # its own time_scale, header kind), or `rate_limit` = (calls, window seconds) as a
    # shorthand for a sliding window. Setting one clears the other.
    throttle: ThrottleSpec | None = None
    rate_limit: tuple[int, float] | None = None
    time_scale: float = 1.0  # Meta durations (the 90-minute replace window) times this
    lean: bool = False  # count rows only: no cell checks, no membership (benchmarks)
    seed: int = 0
    replace_settle_s: float = 0.0  # replace_in_progress lasts this long after the last flag
    # Well-formed cells starting with this count their row as invalid: entries Meta cannot
    # use though the engine cannot tell (its num_invalid_entries). "" (default): none.
    unusable_prefix: str = ""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.throttle is not None and self.rate_limit is not None:
            raise ValueError("set throttle or rate_limit, not both")

    def update(self, **changes: Any) -> None:
        """Change fields by name (JSON lists become tuples, a JSON object a `ThrottleSpec`);
        unknown names are an error."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        if changes.get("throttle") is not None and changes.get("rate_limit") is not None:
            raise ValueError("set throttle or rate_limit, not both")
        for name, value in changes.items():
            if name == "latency" and value is not None:
                low, high = (float(v) for v in value)
                value = (low, high)
            elif name == "rate_limit" and value is not None:
                calls, window = value
                value = (int(calls), float(window))
                if value[0] < 1 or not value[1] > 0:
                    raise ValueError("rate_limit needs at least 1 call in a window above 0 s")
                self.throttle = None
            elif name == "throttle" and value is not None:
                value = value if isinstance(value, ThrottleSpec) else ThrottleSpec.of(value)
                self.rate_limit = None
            setattr(self, name, value)

    def throttle_spec(self) -> ThrottleSpec | None:
        """The quota in force: `throttle`, or the sliding window `rate_limit` stands for (its
        regain estimate in Meta's minutes, which last `time_scale` times longer here)."""
        if self.rate_limit is None:
            return self.throttle
        calls, window = self.rate_limit
        scale = 1 / self.time_scale
        return ThrottleSpec("sliding", calls / window, window * scale, scale)

    def shown(self) -> dict[str, Any]:
        """The settings an admin may read back: never the token or the app secret."""
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "drop_rate": self.drop_rate,
            "throttle": None if self.throttle is None else self.throttle.shown(),
            "rate_limit": self.rate_limit,
            "time_scale": self.time_scale,
            "lean": self.lean,
            "seed": self.seed,
            "replace_settle_s": self.replace_settle_s,
            "unusable_prefix": self.unusable_prefix,
        }
