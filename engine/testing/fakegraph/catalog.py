"""The audience objects' routes: read one (`GET /{audience}`), list an ad account's
(`GET /act_{id}/customaudiences`, paged by cursor) and create one (`POST` there)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from aiohttp import web

from .meta import GraphError, bad_parameter, no_such_object, terms_not_accepted
from .state import AUDIENCE_FIELDS, audience_view
from .wire import check_auth, dumps

if TYPE_CHECKING:
    from .server import FakeGraph

CUSTOMER_FILE_SOURCES = (
    "USER_PROVIDED_ONLY",
    "PARTNER_PROVIDED_ONLY",
    "BOTH_USER_AND_PARTNER_PROVIDED",
)
MAX_LIMIT = 500
VERSION = r"/{version:v\d+(?:\.\d+)?}"


def add_audience_routes(app: web.Application, graph: FakeGraph) -> None:
    routes = _Catalog(graph)
    edge = VERSION + r"/{account:act_\d+}/customaudiences"
    app.router.add_get(edge, routes.list)
    app.router.add_post(edge, routes.create)
    app.router.add_get(VERSION + r"/{audience_id:[^/_][^/]*}", routes.read)


def _fields(request: web.Request) -> list[str]:
    asked = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
    unknown = [f for f in asked if f not in AUDIENCE_FIELDS]
    if unknown:
        raise bad_parameter(f"Tried accessing nonexisting field ({unknown[0]})")
    return asked


class _Catalog:
    def __init__(self, graph: FakeGraph) -> None:
        self.graph = graph

    async def read(self, request: web.Request) -> web.Response:
        try:
            check_auth(
                self.graph.config,
                request.query.get("access_token"),
                request.query.get("appsecret_proof"),
            )
            audience_id = request.match_info["audience_id"]
            fields = _fields(request)
            aud = self.graph.state.find(audience_id) or self.graph.state.audience(audience_id)
            if not aud.readable:
                raise no_such_object(audience_id)
            return web.json_response(audience_view(aud, fields), dumps=dumps)
        except GraphError as fail:
            return self.graph._error_reply(fail, {})

    async def list(self, request: web.Request) -> web.Response:
        try:
            check_auth(
                self.graph.config,
                request.query.get("access_token"),
                request.query.get("appsecret_proof"),
            )
            fields = _fields(request) or ["id"]
            limit = min(MAX_LIMIT, int(request.query.get("limit", "25") or 25))
            start = _cursor(request.query.get("after"))
            found = [
                a for a in self.graph.state.of_account(request.match_info["account"]) if a.readable
            ]
            page = found[start : start + limit]
            body: dict[str, object] = {"data": [audience_view(a, fields) for a in page]}
            if page:
                body["paging"] = {
                    "cursors": {"before": _token(start), "after": _token(start + len(page) - 1)}
                }
                if start + limit < len(found):
                    body["paging"]["next"] = "next"  # type: ignore[index]
            return web.json_response(body, dumps=dumps)
        except (GraphError, ValueError) as fail:
            bad = fail if isinstance(fail, GraphError) else bad_parameter("Invalid limit")
            return self.graph._error_reply(bad, {})

    async def create(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            token, proof = form.get("access_token"), form.get("appsecret_proof")
            check_auth(
                self.graph.config,
                token if isinstance(token, str) else None,
                proof if isinstance(proof, str) else None,
            )
            account = request.match_info["account"]
            if account in self.graph.state.terms_not_accepted:
                raise terms_not_accepted()
            name, subtype = form.get("name"), form.get("subtype")
            source = form.get("customer_file_source")
            if not isinstance(name, str) or not name.strip():
                raise GraphError(194, "(#194) Missing at least one required parameter: name")
            if subtype != "CUSTOM":
                raise bad_parameter("Invalid subtype: only CUSTOM audiences are made this way")
            if source not in CUSTOMER_FILE_SOURCES:
                raise bad_parameter(
                    "customer_file_source must be one of " + ", ".join(CUSTOMER_FILE_SOURCES)
                )
            description = form.get("description")
            aud = self.graph.state.create(
                account,
                name=name,
                description=description if isinstance(description, str) else "",
                subtype="CUSTOM",
                customer_file_source=source,
                is_value_based=form.get("is_value_based") == "true",
            )
            return web.json_response({"id": aud.audience_id}, dumps=dumps)
        except GraphError as fail:
            return self.graph._error_reply(fail, {})


def _token(index: int) -> str:
    return base64.urlsafe_b64encode(str(index).encode()).decode()


def _cursor(after: str | None) -> int:
    if not after:
        return 0
    return int(base64.urlsafe_b64decode(after.encode()).decode()) + 1
