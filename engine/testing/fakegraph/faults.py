"""Fault injection: scripted errors, held and hung requests, latency, random 5xx, dropped
connections and the per-ad-account quota."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from ..throttle import ThrottleModel, ThrottleSpec
from .config import FakeConfig
from .meta import GraphError
from .wire import Upload

# The fake's own header: the exact seconds until a throttled account may call again.
RETRY_HEADER = "X-Fake-Retry-After-S"


@dataclass
class _Scripted:
    """A queued `fail_next` answer; `match` limits it to one audience id or one mode.
    `fail` None lets the request through: it counts down `fail_next(after=...)`.
    `applied`: the request is applied first, and only then answered with `fail`."""

    fail: GraphError | None
    match: str | None
    applied: bool = False


class Throttle:
    """The quota of each ad account: a throttle model (engine/testing/throttle.py) built from
    `config.throttle_spec()` on the account's first call. A changed setting starts every
    account afresh. Throttled calls count too (like Meta)."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._spec: ThrottleSpec | None = None
        self._models: dict[str, ThrottleModel] = {}

    def check(self, account: str, headers: dict[str, str]) -> None:
        """Count a call: set the usage header, raise the quota's error when it is over."""
        spec = self.config.throttle_spec()
        if spec is None:
            return
        if spec != self._spec:
            self._spec, self._models = spec, {}
        now = self.config.clock()
        model = self._models.get(account)
        if model is None:
            model = self._models[account] = spec.build(now, account.removeprefix("act_"))
        verdict = model.admit(now)
        headers.update(verdict.headers)
        if verdict.error is not None:
            headers[RETRY_HEADER] = f"{verdict.wait_s:.3f}"
            error = verdict.error
            raise GraphError(
                error.code,
                error.message,
                subcode=error.subcode,
                is_transient=True,
                outcome="throttled",
            )


class Faults:
    """The faults due for each upload request, scripted by a test or drawn at random
    (seeded by `config.seed`)."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.throttle = Throttle(config)
        self._rng = random.Random(config.seed)
        self._open = asyncio.Event()  # cleared by hold(): requests wait before an answer
        self._open.set()
        self.reset()

    def reset(self) -> None:
        """Forget queued faults and throttle windows; a hold stays until `release()`."""
        self._scripted: list[_Scripted] = []
        self._hangs: list[float] = []
        self.throttle.reset()
        self.reseed()

    def reseed(self) -> None:
        self._rng.seed(self.config.seed)

    # -- what a test asks for ----------------------------------------------------------

    def fail_next(
        self,
        n: int,
        code: int,
        subcode: int | None = None,
        http_status: int = 400,
        message: str | None = None,
        user_title: str | None = None,
        user_msg: str | None = None,
        match: str | None = None,
        is_transient: bool | None = None,
        after: int = 0,
        applied: bool = False,
    ) -> None:
        """The next `n` upload requests (for audience id or mode `match`, when given)
        answer this error without being applied, once `after` more of them have passed
        (so a test can fail a job midway without watching it). `is_transient` defaults
        by code. With `applied`, each is applied first and answered with the error after
        (a 5xx that Meta sends once the work is done: the client cannot tell). A replace
        subcode of 2650 comes with Meta's title and text unless given; 1870148 also ends
        the replace it answers, leaving the audience as it was."""
        fail = GraphError(
            code,
            message,
            subcode=subcode,
            http_status=http_status,
            user_title=user_title,
            user_msg=user_msg,
            is_transient=is_transient,
        )
        self._scripted += [_Scripted(None, match) for _ in range(after)]
        self._scripted += [_Scripted(fail, match, applied) for _ in range(n)]

    def hold(self) -> None:
        """Upload requests wait, once arrived (after `on_arrival`), until `release()`."""
        self._open.clear()

    def release(self) -> None:
        """Let held requests (and new ones) be answered."""
        self._open.set()

    def hang_next(self, n: int, seconds: float) -> None:
        """The next `n` upload requests wait `seconds` before being handled."""
        self._hangs += [seconds] * n

    # -- what a request meets ----------------------------------------------------------

    async def delay(self) -> None:
        """Latency and any queued hang, before the request is looked at."""
        latency = self.config.latency
        delay = self._rng.uniform(*latency) if max(latency) > 0 else 0.0
        if self._hangs:
            delay += self._hangs.pop(0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def held(self) -> None:
        """Wait while a test holds the answers."""
        await self._open.wait()

    def take_scripted(self, up: Upload) -> GraphError | None:
        """Raise the scripted error due for this request, or return the one to answer once
        the request is applied."""
        for i, scripted in enumerate(self._scripted):
            if scripted.match in (None, up.audience_id, up.mode):
                del self._scripted[i]
                if scripted.fail is not None and not scripted.applied:
                    raise scripted.fail
                return scripted.fail
        return None

    def roll(self) -> str | None:
        """The random faults: raise a 500 (code 2, not applied), or name where to drop the
        connection ("dropped_before" or "dropped_after" applying), or None."""
        cfg = self.config
        if cfg.error_rate > 0 and self._rng.random() < cfg.error_rate:
            raise GraphError(2, http_status=500, is_transient=True)
        if cfg.drop_rate > 0 and self._rng.random() < cfg.drop_rate:
            return "dropped_before" if self._rng.random() < 0.5 else "dropped_after"
        return None
