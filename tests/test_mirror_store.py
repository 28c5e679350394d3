"""The mirror store's contract: what any `MirrorStore` (the local SQLite one, a shared one
later) must do. Add an implementation to `STORES` and it is held to every test here."""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from engine._errors import InputError
from engine._hashing.packed import Packer
from engine._mirror.plan import PlanFile
from engine._mirror.store import MirrorStore, Plan, SqliteStore, State
from engine._rows import EncodedChunk, Packed

ACCOUNT, AUDIENCE = "act_42", "777"

STORES: dict[str, Callable[[Path], MirrorStore]] = {
    "sqlite": lambda d: SqliteStore(d, ACCOUNT, AUDIENCE),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MirrorStore]:
    made = STORES[request.param](tmp_path)
    yield made
    made.close()


PACKER = Packer(("EMAIL", "PHONE"))


def packed(*ns: int) -> Packed:
    """Rows `ns` as the hashing workers pack them: an EMAIL digest each, no PHONE."""
    return PACKER.pack([[f"{n:064x}" for n in ns], [""] * len(ns)])


def pairs(*ns: int) -> list[tuple[bytes, bytes]]:
    return list(zip(*packed(*ns), strict=True))


def row(n: int) -> bytes:
    return packed(n).rows[0]


def held(store: MirrorStore) -> set[bytes]:
    return {r for _, r in store.rows()}


def plan_file(tmp_path: Path, *ns: int) -> PlanFile:
    """A sealed plan file whose input holds rows `ns` (repeats too)."""
    plan = PlanFile(tmp_path / "plan.sqlite", create=True)
    numbers = array("q", range(1, len(ns) + 1))
    plan.add_rows(EncodedChunk(numbers, b"", array("q"), [], len(ns), (), packed(*ns)))
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
    assert store.state() == State("[]", 4), "the count follows the rows"
    # The same batch again (a resumed settle) changes nothing, even after the state moved.
    store.apply(1, "add", 2, pairs(1))
    store.apply(1, "remove", 1, pairs(2))
    assert held(store) == {row(1), row(2), row(3), row(4), row(5)}
    assert store.state() == State("[]", 5)
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


def test_a_state_of_an_older_format_is_no_state(tmp_path: Path) -> None:
    path = tmp_path / "mirror" / ACCOUNT / f"{AUDIENCE}.sqlite"
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path)) as old, old:  # the first format: rows as JSON text
        old.executescript(
            "CREATE TABLE meta(id INTEGER PRIMARY KEY, schema TEXT NOT NULL);"
            "CREATE TABLE rows(digest BLOB PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID;"
        )
        old.execute("INSERT INTO meta VALUES (1, '[\"EMAIL\"]')")
        old.execute("INSERT INTO rows VALUES (x'00', '[\"ab\"]')")
    store = SqliteStore(tmp_path, ACCOUNT, AUDIENCE)
    try:
        assert store.state() is None and held(store) == set()
        store.establish(1, "[]", pairs(1))
        assert store.state() == State("[]", 1)
    finally:
        store.close()
    reopened = SqliteStore(tmp_path, ACCOUNT, AUDIENCE)
    try:
        assert held(reopened) == {row(1)}, "a state of this format is kept"
    finally:
        reopened.close()
