"""`FakeGraph`: the aiohttp app that ties the fake's parts together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from .admin import add_admin_routes
from .catalog import add_audience_routes
from .config import FakeConfig
from .faults import Faults
from .meta import REPLACE_ERROR_CODE, REPLACE_RETRY_NEW_SESSION, GraphError
from .record import LogEntry, Record
from .state import Audience, AudienceState, FakeSession
from .wire import Upload, check_auth, dumps, positive_int, read_upload


class FakeGraph:
    """The fake Graph API: audience state, faults, the request record and the aiohttp app
    serving them."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.state = AudienceState(self.config)
        self.faults = Faults(self.config)
        self.record = Record(self.state)
        # The fault controls are the Faults part's own methods.
        self.fail_next = self.faults.fail_next
        self.hold = self.faults.hold
        self.release = self.faults.release
        self.hang_next = self.faults.hang_next
        # Test hooks, called with the request's log entry on arrival (after any latency,
        # before anything is applied) and once applied; returning False drops the
        # connection there, so the client never gets a reply.
        self.on_arrival: Callable[[LogEntry], bool] | None = None
        self.on_applied: Callable[[LogEntry], bool] | None = None
        self._traces = 0

    # -- state and accessors -----------------------------------------------------------

    def reset(self) -> None:
        """Forget audiences, sessions, the log, queued faults and throttle windows."""
        self.state.reset()
        self.faults.reset()
        self.record.reset()
        self._traces = 0

    @property
    def log(self) -> list[LogEntry]:
        return self.record.log

    @property
    def violations(self) -> list[str]:
        return self.record.violations

    def register_audience(self, audience_id: str, ad_account: str, **shown: Any) -> Audience:
        """Create (or move) a customer-file audience under an ad account (the throttle key);
        `shown`: what reads of it show (subtype, is_value_based, flagged, readable, size...)."""
        return self.state.register(audience_id, ad_account, **shown)

    def members(self, audience_id: str) -> set[tuple[Any, ...]]:
        return self.state.members(audience_id)

    def operation_status(self, audience_id: str) -> str:
        """ "Normal" or "replace_in_progress"."""
        return self.state.operation_status(audience_id)

    def session(self, audience_id: str, session_id: int) -> FakeSession | None:
        return self.state.session(audience_id, session_id)

    def configure(self, **changes: Any) -> None:
        """Change settings at runtime: any FakeConfig field (JSON lists become tuples)."""
        self.config.update(**changes)
        if "seed" in changes:
            self.faults.reseed()

    # -- server lifecycle --------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024 * 1024)
        add_admin_routes(app, self)  # first: they must win over the Graph patterns
        base = r"/{version:v\d+(?:\.\d+)?}/{audience_id:[^/_][^/]*}"
        app.router.add_post(base + "/{edge:users|usersreplace}", self._on_upload)
        app.router.add_delete(base + "/{edge:users}", self._on_upload)
        app.router.add_get(base + "/sessions", self._on_sessions)
        add_audience_routes(app, self)  # reads of audiences, listing, creating
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # No access log: a GET's query string holds the access token.
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGraph:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- upload requests ---------------------------------------------------------------

    async def _on_upload(self, request: web.Request) -> web.StreamResponse:
        up = await read_upload(request, self.config.lean)
        entry = self.record.arrive(up)
        # Waits happen before any state changes; what follows runs without awaiting, so
        # concurrent requests see each other's effects atomically.
        await self.faults.delay()
        if self.on_arrival is not None and not self.on_arrival(entry):
            return _drop(request, entry, "dropped_before")
        await self.faults.held()
        return self._answer(request, up, entry)

    def _answer(self, request: web.Request, up: Upload, entry: LogEntry) -> web.StreamResponse:
        headers: dict[str, str] = {}
        try:
            check_auth(self.config, up.token, up.proof)
            aud = self.state.audience(up.audience_id)
            entry.ad_account = aud.ad_account
            self.faults.throttle.check(aud.ad_account, headers)
            fail_after = self.faults.take_scripted(up)
            drop = self.faults.roll()
            if drop == "dropped_before":
                return _drop(request, entry, drop)
            if up.error is not None:
                raise up.error
            body, sess = self.state.apply(up, aud)
            entry.applied = True
            if fail_after is not None:
                raise fail_after  # applied, then answered with an error
            if drop == "dropped_after" or (
                self.on_applied is not None and not self.on_applied(entry)
            ):
                return _drop(request, entry, "dropped_after")
            if request.transport is None or request.transport.is_closing():
                # The client gave up (a timeout during hang_next): applied, never acked.
                entry.outcome = "client_gone"
            else:
                entry.outcome = "ok"
                assert up.batch_seq is not None
                sess.acked.add(up.batch_seq)
            return web.json_response(body, headers=headers, dumps=dumps)
        except GraphError as fail:
            if fail.code == REPLACE_ERROR_CODE and fail.subcode == REPLACE_RETRY_NEW_SESSION:
                self.state.fail_replace(up)
            entry.outcome = fail.outcome
            return self._error_reply(fail, headers)

    def _error_reply(self, fail: GraphError, headers: dict[str, str]) -> web.Response:
        self._traces += 1
        body = fail.body(f"AFake{self._traces:08d}")
        return web.json_response(body, status=fail.http_status, headers=headers, dumps=dumps)

    # -- reads -------------------------------------------------------------------------

    def _read_denied(self, request: web.Request) -> web.Response | None:
        """Meta's error for a read without good credentials, else None."""
        try:
            check_auth(
                self.config,
                request.query.get("access_token"),
                request.query.get("appsecret_proof"),
            )
        except GraphError as fail:
            return self._error_reply(fail, {})
        return None

    async def _on_sessions(self, request: web.Request) -> web.Response:
        denied = self._read_denied(request)
        if denied is not None:
            return denied
        wanted = positive_int(request.query.get("session_id", ""))
        sessions = self.state.sessions_of(request.match_info["audience_id"], wanted)
        return web.json_response({"data": [s.view() for s in sessions]}, dumps=dumps)


def _drop(request: web.Request, entry: LogEntry, outcome: str) -> web.StreamResponse:
    """Close the TCP connection without a reply: the client sees a disconnect."""
    entry.outcome = outcome
    if request.transport is not None:
        request.transport.close()
    # aiohttp cannot write this to a closed transport and drops it quietly.
    return web.Response(status=500)
