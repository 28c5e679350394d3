"""Custom Audiences as objects: read one, list an ad account's, create a customer-file one.
Meta's field names throughout (docs/audiences.md)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp

from .._errors import ConfigError, InputError
from .client import DEFAULT_API_BASE, DEFAULT_API_VERSION, GraphClient

# The fields read for every audience: what the checks before an upload look at.
FIELDS = (
    "id",
    "name",
    "description",
    "subtype",
    "customer_file_source",
    "operation_status",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "is_value_based",
    "account_id",
)
CUSTOMER_FILE_SOURCES = (
    "USER_PROVIDED_ONLY",
    "PARTNER_PROVIDED_ONLY",
    "BOTH_USER_AND_PARTNER_PROVIDED",
)
CustomerFileSource = Literal[
    "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"
]
PAGE_SIZE = 100
MAX_PAGES = 100  # an account holds at most 500 customer-file audiences; pages stop here


@dataclass(frozen=True, slots=True)
class AudienceInfo:
    """One Custom Audience as Meta describes it. A field Meta left out is None."""

    id: str
    name: str | None
    description: str | None
    subtype: str | None
    customer_file_source: str | None
    operation_status: str | None  # the status's description, e.g. "Normal"
    operation_status_code: int | None
    approximate_count_lower_bound: int | None
    approximate_count_upper_bound: int | None
    is_value_based: bool | None
    account_id: str | None  # the ad account's number, without "act_"

    @classmethod
    def from_graph(cls, body: dict[str, Any]) -> AudienceInfo:
        status = body.get("operation_status")
        status = status if isinstance(status, dict) else {}
        code = status.get("code")
        value_based = body.get("is_value_based")
        return cls(
            id=str(body.get("id", "")),
            name=_text(body.get("name")),
            description=_text(body.get("description")),
            subtype=_text(body.get("subtype")),
            customer_file_source=_text(body.get("customer_file_source")),
            operation_status=_text(status.get("description")),
            operation_status_code=code if isinstance(code, int) else None,
            approximate_count_lower_bound=_count(body.get("approximate_count_lower_bound")),
            approximate_count_upper_bound=_count(body.get("approximate_count_upper_bound")),
            is_value_based=value_based if isinstance(value_based, bool) else None,
            account_id=_text(body.get("account_id")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def check_account(ad_account: str) -> str:
    if not re.fullmatch(r"act_[0-9]{1,20}", ad_account):
        raise ConfigError("ad account must look like act_123: act_ and 1 to 20 digits")
    return ad_account


def check_audience_id(audience_id: str) -> str:
    if not re.fullmatch(r"[0-9]{1,30}", audience_id):
        raise ConfigError("audience id must be numeric")
    return audience_id


async def read_audience(client: GraphClient, audience_id: str) -> AudienceInfo:
    """`GET /{audience}` with FIELDS. Raises ApiError (no such audience, no permission...)."""
    reply = await client.read(check_audience_id(audience_id), {"fields": ",".join(FIELDS)})
    return AudienceInfo.from_graph(reply.body)


async def list_audiences(client: GraphClient, ad_account: str) -> list[AudienceInfo]:
    """The ad account's Custom Audiences (`GET /act_{id}/customaudiences`), every page."""
    out: list[AudienceInfo] = []
    params = {"fields": ",".join(FIELDS), "limit": str(PAGE_SIZE)}
    for _ in range(MAX_PAGES):
        reply = await client.read(f"{check_account(ad_account)}/customaudiences", params)
        data = reply.body.get("data")
        out.extend(AudienceInfo.from_graph(d) for d in data or [] if isinstance(d, dict))
        paging = reply.body.get("paging")
        cursors = paging.get("cursors") if isinstance(paging, dict) else None
        after = cursors.get("after") if isinstance(cursors, dict) else None
        if not isinstance(after, str) or not isinstance(paging, dict) or "next" not in paging:
            break
        params = {**params, "after": after}
    return out


async def create_audience(
    client: GraphClient,
    ad_account: str,
    *,
    name: str,
    customer_file_source: CustomerFileSource,
    description: str | None = None,
    value_based: bool = False,
) -> AudienceInfo:
    """Create a customer-file Custom Audience (`POST /act_{id}/customaudiences`, subtype
    CUSTOM) and read it back."""
    if not name.strip():
        raise ConfigError("an audience needs a name")
    if customer_file_source not in CUSTOMER_FILE_SOURCES:
        raise ConfigError(f"customer file source must be one of {', '.join(CUSTOMER_FILE_SOURCES)}")
    fields = {
        "name": name,
        "subtype": "CUSTOM",
        "customer_file_source": customer_file_source,
        "is_value_based": "true" if value_based else "false",
    }
    if description:
        fields["description"] = description
    reply = await client.create(f"{check_account(ad_account)}/customaudiences", fields)
    return await read_audience(client, str(reply.body.get("id", "")))


class Audiences:
    """Custom Audiences of the library: `async with Audiences() as a: await a.list("act_1")`.
    The token and app secret default to META_ACCESS_TOKEN and META_APP_SECRET."""

    def __init__(
        self,
        *,
        access_token: str | None = None,
        app_secret: str | None = None,
        api_base: str = DEFAULT_API_BASE,
        api_version: str = DEFAULT_API_VERSION,
    ) -> None:
        token = access_token or os.environ.get("META_ACCESS_TOKEN")
        if not token:
            raise InputError("no access token: pass access_token or set META_ACCESS_TOKEN")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self._client = GraphClient(
            self._http,
            access_token=token,
            app_secret=app_secret or os.environ.get("META_APP_SECRET"),
            api_base=api_base,
            api_version=api_version,
        )

    def __repr__(self) -> str:
        return f"Audiences({self._client!r})"

    async def __aenter__(self) -> Audiences:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()

    async def list(self, ad_account: str) -> list[AudienceInfo]:
        return await list_audiences(self._client, ad_account)

    async def show(self, audience_id: str | int) -> AudienceInfo:
        return await read_audience(self._client, str(audience_id))

    async def create(
        self,
        ad_account: str,
        *,
        name: str,
        customer_file_source: CustomerFileSource,
        description: str | None = None,
        value_based: bool = False,
    ) -> AudienceInfo:
        return await create_audience(
            self._client,
            ad_account,
            name=name,
            customer_file_source=customer_file_source,
            description=description,
            value_based=value_based,
        )
