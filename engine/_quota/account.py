"""The one interface a sender needs of an ad account's limiter. `AccountLimiter` is the
in-process implementation; one shared by every process of a fleet implements it next. Any
implementation must pass tests/contracts/test_account_quota.py.
"""

from __future__ import annotations

from typing import Protocol

from .._graph.usage import Usage


class AccountQuota(Protocol):
    """One ad account's budget, shared by every job and audience of that account.

    A sender calls `acquire()` before every attempt, then reports its outcome: `on_success`
    with the usage figures the reply carried, or `on_throttle`, which pauses the whole
    account and returns the pause in seconds.
    """

    @property
    def rate(self) -> float:
        """Requests per second the account is getting now."""
        ...

    @property
    def throttles(self) -> int:
        """Throttling replies seen so far."""
        ...

    async def acquire(self) -> None: ...

    def on_success(self, usage: Usage | None) -> None: ...

    def on_throttle(self, usage: Usage | None) -> float: ...


class QuotaRegistry(Protocol):
    """Hands out the one `AccountQuota` of each ad account."""

    def get(self, ad_account: str) -> AccountQuota: ...
