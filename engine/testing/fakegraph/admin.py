"""The `/_fake/` admin endpoints: what a test reads and scripts on a fake in another process."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .state import status_view
from .wire import dumps

if TYPE_CHECKING:
    from .server import FakeGraph


def add_admin_routes(app: web.Application, graph: FakeGraph) -> None:
    """Route `/_fake/...` to `graph`'s own methods."""
    admin = _Admin(graph)
    app.router.add_get("/_fake/log", admin.log)
    app.router.add_get("/_fake/violations", admin.violations)
    app.router.add_get("/_fake/audiences/{audience_id}", admin.audience)
    app.router.add_post("/_fake/audiences", admin.register)
    app.router.add_post("/_fake/config", admin.config)
    app.router.add_post("/_fake/fail_next", admin.fail_next)
    app.router.add_post("/_fake/hang_next", admin.hang_next)
    app.router.add_post("/_fake/reset", admin.reset)


class _Admin:
    def __init__(self, graph: FakeGraph) -> None:
        self.graph = graph

    async def log(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(e) for e in self.graph.log], dumps=dumps)

    async def violations(self, request: web.Request) -> web.Response:
        return web.json_response(self.graph.violations, dumps=dumps)

    async def audience(self, request: web.Request) -> web.Response:
        audience_id = request.match_info["audience_id"]
        members = self.graph.members(audience_id)
        aud = self.graph.state.audiences.get(audience_id)
        body = {
            "id": audience_id,
            "ad_account": aud.ad_account if aud else None,
            "count": len(members),
            # Mixed cell types (numbers, "") cannot be compared, their JSON text can.
            "members": [list(m) for m in sorted(members, key=dumps)],
            "operation_status": status_view(self.graph.operation_status(audience_id)),
        }
        return web.json_response(body, dumps=dumps)

    async def register(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.graph.register_audience(str(body["audience_id"]), str(body["ad_account"]))
        return web.json_response({"ok": True})

    async def config(self, request: web.Request) -> web.Response:
        try:
            self.graph.configure(**await _json_body(request))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.graph.config.shown(), dumps=dumps)

    async def fail_next(self, request: web.Request) -> web.Response:
        try:
            self.graph.fail_next(**await _json_body(request))
        except TypeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def hang_next(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.graph.hang_next(int(body["n"]), float(body["seconds"]))
        return web.json_response({"ok": True})

    async def reset(self, request: web.Request) -> web.Response:
        self.graph.reset()
        return web.json_response({"ok": True})


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body = orjson.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body
