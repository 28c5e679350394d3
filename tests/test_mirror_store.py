"""The mirror store's contract: what any `MirrorStore` (the local SQLite one, a shared one
later) must do. Add an implementation to `STORES` and it is held to every test here."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from engine._errors import InputError
from engine._mirror.plan import PlanFile, row_digest
from engine._mirror.store import MirrorStore, Plan, SqliteStore
from engine._rows import EncodedChunk

ACCOUNT, AUDIENCE = "act_42", "777"

STORES: dict[str, Callable[[Path], MirrorStore]] = {
    "sqlite": lambda d: SqliteStore(d, ACCOUNT, AUDIENCE),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MirrorStore]:
    made = STORES[request.param](tmp_path)
    yield made
    made.close()


def row(n: int) -> bytes:
    return orjson.dumps([f"{n:064x}", ""])


def pairs(*ns: int) -> list[tuple[bytes, bytes]]:
    return [(row_digest(row(n)), row(n)) for n in ns]


def held(store: MirrorStore) -> set[bytes]:
    return {r for _, r in store.rows()}


def plan_file(tmp_path: Path, *ns: int) -> PlanFile:
    """A sealed plan file whose input holds rows `ns` (repeats too)."""
    rows = [row(n) for n in ns]
    data = b",".join(rows)
    stops = array("q")
    end = 0
    for r in rows:
        end += len(r) + 1
        stops.append(end)
    plan = PlanFile(tmp_path / "plan.sqlite", create=True)
    plan.add_rows(EncodedChunk(array("q", range(1, len(ns) + 1)), data, stops, [], len(ns)))
    plan.seal()
    return plan


PLAN = Plan(1, "diff", '["EMAIL","PHONE"]', 2, 1, 1, 1)


def test_no_state_until_a_replace_sets_it(store: MirrorStore) -> None:
    assert store.state() is None and held(store) == set()
    store.start_plan(PLAN)
    store.establish(1, '["EMAIL","PHONE"]', pairs(1, 2, 3))
    state = store.state()
    assert state is not None and (state.schema, state.rows) == ('["EMAIL","PHONE"]', 3)
    assert held(store) == {row(1), row(2), row(3)}
    assert store.plan() is None, "the replace's plan ends with it"
    # A later replace sets it anew: nothing of the old rows is left.
    store.establish(2, '["EMAIL"]', pairs(4))
    assert held(store) == {row(4)}


def test_rows_come_in_digest_order(store: MirrorStore) -> None:
    store.establish(1, "[]", pairs(*range(20)))
    digests = [d for d, _ in store.rows()]
    assert digests == sorted(digests) and len(digests) == 20


def test_a_plan_is_kept_until_ended(store: MirrorStore) -> None:
    assert store.plan() is None
    store.start_plan(PLAN)
    assert store.plan() == PLAN
    store.end_plan(PLAN.plan_id)
    assert store.plan() is None


def test_an_acknowledged_batch_is_applied_once(store: MirrorStore) -> None:
    store.establish(1, "[]", pairs(1, 2, 3))
    store.start_plan(PLAN)
    store.apply(1, "add", 1, pairs(4, 5))
    store.apply(1, "remove", 1, pairs(1))
    assert held(store) == {row(2), row(3), row(4), row(5)}
    # The same batch again (a resumed settle) changes nothing, even after the state moved.
    store.apply(1, "add", 2, pairs(1))
    store.apply(1, "remove", 1, pairs(2))
    assert held(store) == {row(1), row(2), row(3), row(4), row(5)}
    assert store.applied(1, "add") == {1, 2} and store.applied(1, "remove") == {1}
    store.end_plan(1)
    assert store.applied(1, "add") == set()


def test_forget_drops_the_state(store: MirrorStore) -> None:
    store.establish(1, "[]", pairs(1))
    store.forget()
    assert store.state() is None and held(store) == set()


def test_the_diff_counts_each_row_once(store: MirrorStore, tmp_path: Path) -> None:
    store.establish(1, "[]", pairs(1, 2, 3, 4))
    plan = plan_file(tmp_path, 3, 4, 5, 5, 6, 3)
    try:
        store.diff(plan)
        assert plan.distinct() == 4
        assert [r for _, r in plan.rows("add")] == [r for _, r in sorted(pairs(5, 6))]
        assert [r for _, r in plan.rows("remove")] == [r for _, r in sorted(pairs(1, 2))]
        assert plan.span("add", 2, 2) == sorted(pairs(5, 6))[1:]
        assert sorted(r for _, r in plan.rows("replace")) == sorted(row(n) for n in (3, 4, 5, 6))
    finally:
        plan.close()


def test_one_mirror_of_an_audience_at_a_time(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path, ACCOUNT, AUDIENCE)
    try:
        with pytest.raises(InputError, match="another mirror"):
            SqliteStore(tmp_path, ACCOUNT, AUDIENCE)
        SqliteStore(tmp_path, ACCOUNT, "778").close()  # another audience is free
    finally:
        first.close()
    SqliteStore(tmp_path, ACCOUNT, AUDIENCE).close()


def test_state_files_are_private(tmp_path: Path) -> None:
    SqliteStore(tmp_path, ACCOUNT, AUDIENCE).close()
    for path in (tmp_path / "mirror").rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path
