"""Audience checks before batch 1, and the `audiences` commands, against the fake Graph API."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import engine
from engine._graph.audience import read_audience
from engine._graph.audience_check import AudienceRefused, check_audience
from engine._graph.client import GraphClient
from engine._hashing.schema import Schema
from engine._options import UploadJob
from engine.testing.fakegraph import FakeGraph

from .conftest import AD_ACCOUNT, AUDIENCE, TOKEN, run_cli, upload_args


def _people(tmp_path: Path, value: bool = False) -> Path:
    path = tmp_path / "people.csv"
    head = "email,lookalike_value" if value else "email"
    rows = [f"p{i}@example.com" + (f",{i + 1}" if value else "") for i in range(20)]
    path.write_text("\n".join([head, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("shown", "value", "says"),
    [
        ({"subtype": "LOOKALIKE"}, False, "not a customer-file Custom Audience"),
        ({}, True, "not value-based"),
        ({"is_value_based": True}, False, "is value-based"),
        ({"flagged": True}, False, "flagged"),
        ({"readable": False}, False, "lacks permission"),
    ],
)
async def test_a_wrong_audience_is_refused_before_anything_is_sent(
    fake: FakeGraph, tmp_path: Path, shown: dict[str, object], value: bool, says: str
) -> None:
    fake.register_audience(AUDIENCE, AD_ACCOUNT, **shown)
    run = await run_cli(*upload_args(_people(tmp_path, value), fake.base_url, "--no-checkpoint"))
    assert run.code == 2, run.stderr
    assert says in run.stderr
    assert fake.log == []  # no upload request arrived
    assert TOKEN not in run.stderr


async def test_another_accounts_audience_is_refused(fake: FakeGraph, tmp_path: Path) -> None:
    fake.register_audience(AUDIENCE, "act_999")
    run = await run_cli(*upload_args(_people(tmp_path), fake.base_url, "--no-checkpoint"))
    assert run.code == 2
    assert "belongs to ad account act_999" in run.stderr
    assert fake.log == []


async def test_no_audience_check_skips_the_read(fake: FakeGraph, tmp_path: Path) -> None:
    fake.register_audience(AUDIENCE, AD_ACCOUNT, subtype="LOOKALIKE")
    args = upload_args(_people(tmp_path), fake.base_url, "--no-checkpoint", "--no-audience-check")
    run = await run_cli(*args)
    assert run.code == 0, run.stderr
    assert len(fake.members(AUDIENCE)) == 20


async def test_a_good_audience_is_uploaded_to(fake: FakeGraph, tmp_path: Path) -> None:
    fake.register_audience(AUDIENCE, AD_ACCOUNT, is_value_based=True)
    run = await run_cli(*upload_args(_people(tmp_path, True), fake.base_url, "--no-checkpoint"))
    assert run.code == 0, run.stderr
    assert len(fake.members(AUDIENCE)) == 20


def _job(mode: str = "add") -> UploadJob:
    return UploadJob(source="x.csv", audience_id=AUDIENCE, ad_account=AD_ACCOUNT, mode=mode)  # type: ignore[arg-type]


async def _client(fake: FakeGraph, http: object) -> GraphClient:
    from .conftest import APP_SECRET

    return GraphClient(
        http,  # type: ignore[arg-type]
        access_token=TOKEN,
        app_secret=APP_SECRET,
        api_base=fake.base_url,
    )


async def test_waits_while_a_replace_runs_then_goes_on(fake: FakeGraph) -> None:
    import aiohttp

    aud = fake.register_audience(AUDIENCE, AD_ACCOUNT)
    aud.busy_until = float("inf")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            aud.busy_until = None  # the replace finishes during the third wait

    async with aiohttp.ClientSession() as http:
        client = await _client(fake, http)
        warnings = await check_audience(
            client, _job(), Schema(("EMAIL",)), sleep=sleep, clock=lambda: 0.0
        )
    assert waits == [2.0, 4.0, 8.0]
    assert warnings == []


async def test_gives_up_waiting_after_the_bound(fake: FakeGraph) -> None:
    import aiohttp

    aud = fake.register_audience(AUDIENCE, AD_ACCOUNT)
    aud.busy_until = float("inf")
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async with aiohttp.ClientSession() as http:
        client = await _client(fake, http)
        with pytest.raises(AudienceRefused, match="still in progress after 60 s"):
            await check_audience(
                client,
                _job(),
                Schema(("EMAIL",)),
                sleep=sleep,
                clock=lambda: now[0],
                max_wait_s=60,
            )
    assert now[0] == 60


async def test_warns_when_a_remove_or_replace_leaves_it_too_small(fake: FakeGraph) -> None:
    import aiohttp

    fake.register_audience(AUDIENCE, AD_ACCOUNT, size=150)
    async with aiohttp.ClientSession() as http:
        client = await _client(fake, http)
        remove = await check_audience(client, _job("remove"), Schema(("EMAIL",)), 80)
        replace = await check_audience(client, _job("replace"), Schema(("EMAIL",)), 50)
        add = await check_audience(client, _job("add"), Schema(("EMAIL",)), 50)
        big = await check_audience(client, _job("replace"), Schema(("EMAIL",)), 5000)
    assert len(remove) == 1 and "below the 100" in remove[0]
    assert len(replace) == 1 and "below the 100" in replace[0]
    assert add == [] and big == []


async def test_the_old_operation_status_read_still_works(fake: FakeGraph) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        client = await _client(fake, http)
        assert await client.operation_status(AUDIENCE) == "Normal"
        info = await read_audience(client, AUDIENCE)
    # Never registered: owner and kind unknown, so left out (and not checked).
    assert info.account_id is None and info.subtype is None
    assert info.operation_status == "Normal"


async def test_audiences_create_show_and_list(fake: FakeGraph) -> None:
    base = ("--api-base", fake.base_url, "--json")
    made = await run_cli(
        "audiences", "create", "--ad-account", AD_ACCOUNT, "--name", "Buyers",
        "--customer-file-source", "USER_PROVIDED_ONLY", "--value-based", *base,
    )  # fmt: skip
    assert made.code == 0, made.stderr
    created = orjson.loads(made.stdout)
    assert created["subtype"] == "CUSTOM" and created["is_value_based"] is True
    assert created["account_id"] == AD_ACCOUNT.removeprefix("act_")
    shown = await run_cli("audiences", "show", created["id"], *base)
    assert orjson.loads(shown.stdout)["name"] == "Buyers"
    for i in range(3):
        fake.register_audience(str(100 + i), AD_ACCOUNT, name=f"n{i}")
    fake.register_audience("200", "act_5")
    listed = await run_cli("audiences", "list", "--ad-account", AD_ACCOUNT, *base)
    ids = [a["id"] for a in orjson.loads(listed.stdout)]
    assert sorted(ids) == sorted([created["id"], "100", "101", "102"])
    table = await run_cli(
        "audiences", "list", "--ad-account", AD_ACCOUNT, "--api-base", fake.base_url
    )
    assert "Buyers" in table.stdout and "CUSTOM" in table.stdout


async def test_list_follows_pages(fake: FakeGraph) -> None:
    for i in range(250):
        fake.register_audience(str(1000 + i), AD_ACCOUNT)
    from .conftest import APP_SECRET

    async with engine.Audiences(
        access_token=TOKEN, app_secret=APP_SECRET, api_base=fake.base_url
    ) as audiences:
        found = await audiences.list(AD_ACCOUNT)
    assert len(found) == 250 and len({a.id for a in found}) == 250


async def test_create_refused_without_the_terms(fake: FakeGraph) -> None:
    fake.state.terms_not_accepted.add(AD_ACCOUNT)
    run = await run_cli(
        "audiences", "create", "--ad-account", AD_ACCOUNT, "--name", "x",
        "--customer-file-source", "USER_PROVIDED_ONLY", "--api-base", fake.base_url,
    )  # fmt: skip
    assert run.code == 1
    assert "Terms Not Accepted" in run.stderr and TOKEN not in run.stderr


async def test_show_of_an_unreadable_audience_fails(fake: FakeGraph) -> None:
    fake.register_audience(AUDIENCE, AD_ACCOUNT, readable=False)
    run = await run_cli("audiences", "show", AUDIENCE, "--api-base", fake.base_url)
    assert run.code == 1 and "does not exist" in run.stderr
