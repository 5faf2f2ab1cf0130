"""Match keys: conditions analysed into index keys (base._match), the stores' (event name,
match key) index, and routing through it: indexed routing must start and resume exactly the
runs a full scan would, on every store."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from conftest import drop_schema
from durable_core import App, on_event
from durable_core.base._cel import compile_expression
from durable_core.base._match import (
    MAX_IN_VALUES,
    canonical_value,
    condition_keys,
    event_keys,
    match_plan,
)
from durable_core.core._model import RegisterWait
from durable_core.engine._engine import Engine, wait_matches, wait_record
from durable_core.store import CommitBatch, NewRun, Store, WaitRecord
from stores import MemoryStore
from stores.postgres import _store as pg_module
from stores.postgres._store import PostgresStore
from stores.sqlite._store import _MIGRATIONS, SCHEMA_VERSION, SQLiteStore
from stores.testing import DAY, T0, event_json

WAIT = {"incoming": "async", "known": "event"}
TRIGGER = {"incoming": "event"}

# --------------------------------------------------------------------------- analysis


@pytest.mark.parametrize(("condition", "keys"), [
    ("async.data.k == event.data.k", ('data.k="u1"',)),
    ("event.data.k == async.data.k", ('data.k="u1"',)),
    ("async.data.k == 'x' && async.data.j == event.data.k", ('data.k="x"',)),
    ("(async.data.n == event.data.n) && size(async.data) > 1", ("data.n=1",)),
    ("async.data.k in ['a', \"b\", 'a']", ('data.k="a"', 'data.k="b"')),
    ("async.data.k in event.data.l", ("data.k=1", "data.k=2")),
    ("async.data.k in event.data.l && async.data.j == 1", ("data.j=1",)),  # == first
    ("async.data.k == event.data.missing && async.data.z == 3", ("data.z=3",)),
    ("async.data.k == -1", ("data.k=-1",)),
    ("async.data.k == 1.5e3", ("data.k=1500",)),
    ("async.data.k == true", ("data.k=1",)),  # cel-python: true == 1
    ("async.data.k == null", ("data.k=null",)),
    ("async.id == 'e1'", ('id="e1"',)),
    ("1 == async.data.k", ("data.k=1",)),
    # Not indexable: the condition is tested against every event.
    ("async.data.k == event.data.l", ()),  # a list is not a key
    ("async.data.k == event.data.m", ()),
    ("async.data.k in ['a', [1]]", ()),
    ("async.data.k == 'x' || async.data.k == 'y'", ()),
    ("!(async.data.k == 'x')", ()),
    ("async.data.k != 'x'", ()),
    ("async.data.k > 1", ()),
    ("async.data.k == 1 + 1", ()),
    ("async.data['k'] == 1", ()),
    ("async.data.k == b'x'", ()),
    ("async.data.k == async.data.j", ()),
    ("event.data.k == 'u1'", ()),  # only the run's own event
    ("async.data.k in " + str(list(range(MAX_IN_VALUES + 1))), ()),
    ("true", ()),
    ("async.data.k ==", ()),  # does not parse: no plan (rejected elsewhere)
])
def test_wait_condition_keys(condition: str, keys: tuple[str, ...]) -> None:
    trigger = {"data": {"k": "u1", "n": 1.0, "l": [1, 2], "m": {"a": 1}}}
    assert condition_keys(condition, known_value=trigger, **WAIT) == keys
    assert condition_keys(condition, known_value=json.dumps(trigger), **WAIT) == keys


def test_trigger_filter_keys() -> None:
    assert condition_keys("event.data.kind == 'k1'", **TRIGGER) == ('data.kind="k1"',)
    assert condition_keys("event.data.kind in ['k1', 'k2'] && event.data.x == 2",
                          **TRIGGER) == ("data.x=2",)
    assert condition_keys("async.data.kind == 'k1'", **TRIGGER) == ()
    assert condition_keys(None, **TRIGGER) == ()


def test_event_keys_for_the_indexed_paths() -> None:
    event = {"name": "x", "data": {"k": "u1", "n": 2.0, "b": False, "m": {}, "l": [1]}}
    paths = ["data.k", "data.n", "data.b", "data.m", "data.l", "data.zz", "name", "data.k.x"]
    assert event_keys(event, paths) == ['data.k="u1"', "data.n=2", "data.b=0", 'name="x"']


def test_an_unindexable_condition_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    source = "async.data.unindexable_marker != 1"
    with caplog.at_level(logging.DEBUG, logger="durable_core.match"):
        assert condition_keys(source, **WAIT) == ()
        assert condition_keys(source, **WAIT) == ()
    lines = [r for r in caplog.records if "unindexable_marker" in r.getMessage()]
    assert len(lines) == 1 and "no indexable part" in lines[0].getMessage()
    assert not match_plan(source, "async", "event").indexable


# Scalars whose CEL equality matters: ints, doubles, bools, strings of them, null, and
# integers beyond 2**53 and beyond int64 (CEL gets doubles for those).
SCALARS = st.one_of(
    st.sampled_from([0, 1, -1, 1.0, -0.0, 0.0, 1.5, 2, True, False, None, "1", "1.0", "true",
                     "", "a", 2**53, 2**53 + 1, float(2**53), 2**63 - 1, 2**63, 2**64,
                     float(2**64), 2**64 + 1, math.inf, -math.inf, math.nan]),
    st.integers(), st.floats(), st.text(max_size=3), st.booleans(),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2),
                   st.dictionaries(st.sampled_from("ab"), SCALARS, max_size=1))


@settings(max_examples=400, deadline=None)
@given(a=VALUES, b=VALUES)
def test_keys_never_separate_values_cel_holds_equal(a: Any, b: Any) -> None:
    """Soundness of the index: when ``x == y`` (or ``x in [y]``) is true in our CEL, the
    keys agree, so a matching wait or trigger is always a candidate."""
    activation = {"event": {"a": a, "b": b, "l": [b]}}
    for source, other in (("event.a == event.b", b), ("event.a in event.l", b)):
        try:
            equal = compile_expression(source, field="t").matches(activation)
        except Exception:
            continue  # values CEL cannot take (they never match either)
        # Only a known value with a key is indexed; the event's value must then have the
        # same key (an event without a key at that path is no candidate).
        if equal and canonical_value(other) is not None:
            assert canonical_value(a) == canonical_value(other), (source, a, b)


# --------------------------------------------------------------------------- stores


@pytest.fixture
def pg_store(pg_url: str, pg_schema: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_url, schema=pg_schema, pool_max=2)
    yield store
    store.close()


def _many_waits(store: Store, n: int) -> None:
    store.commit(CommitBatch(now=T0, runs=tuple(
        NewRun(f"r{i}", "fn", (event_json("e0"),), ("e0",), T0) for i in range(n))))
    store.commit(CommitBatch(now=T0, waits_add=tuple(
        WaitRecord(f"r{i}", 0, "paid", "async.data.k == event.data.k", "{}", T0 + DAY,
                   keys=(f"data.k={i}",) if i % 10 else ())
        for i in range(n))))


def test_sqlite_lookup_is_one_indexed_query(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        _many_waits(store, 2000)
        from stores.sqlite._store import _FIND_WAITS, _WAIT_KEY_PATHS

        conn = store._db.conn
        conn.execute("ANALYZE")
        plan = " | ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + _FIND_WAITS, ("paid", json.dumps(["", "data.k=5"]), T0)))
        assert "SEARCH waits USING INDEX sqlite_autoindex_waits_1 (event=? AND match_key=?)" \
            in plan, plan
        assert "SCAN waits" not in plan, plan
        paths = " | ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + _WAIT_KEY_PATHS, ("paid",)))
        assert "SCAN waits" not in paths, paths
        assert "SEARCH waits USING COVERING INDEX sqlite_autoindex_waits_1" in paths, paths
        got = store.find_waits("paid", T0, ["data.k=5", "data.k=7"])
        assert sorted(w.run_id for w in got) == sorted(
            ["r5", "r7", *(f"r{i}" for i in range(0, 2000, 10))])
        assert store.wait_key_paths("paid") == ["data.k"]
    finally:
        store.close()


def test_postgres_lookup_is_one_indexed_query(pg_store: PostgresStore, pg_url: str) -> None:
    _many_waits(pg_store, 5000)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(pg_store.schema, "waits")))
        conn.execute("SET plan_cache_mode = force_generic_plan")  # as prepared statements
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN " + pg_store._q.find_waits, ("paid", ["", "data.k=5"], T0)))
        assert "waits_pkey" in plan and "Seq Scan" not in plan, plan
        paths = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN " + pg_store._q.wait_key_paths, {"e": "paid"}))
        assert "waits_pkey" in paths and "Seq Scan" not in paths, paths
    got = pg_store.find_waits("paid", T0, ["data.k=5", "data.k=7"])
    assert sorted(w.run_id for w in got) == sorted(
        ["r5", "r7", *(f"r{i}" for i in range(0, 5000, 10))])
    assert pg_store.wait_key_paths("paid") == ["data.k"]


def test_a_version_5_sqlite_database_keeps_its_waits(tmp_path: Path) -> None:
    """Version 6 moves waits to the (event, match_key) index; waits registered before get
    no keys (found for every event, as before) and still route."""
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    db = sqlite_utils.Database(conn, execute_plugins=False)
    for step in _MIGRATIONS[:5]:
        step(db)
    conn.execute("PRAGMA user_version = 5")
    conn.execute(
        "INSERT INTO runs (id, function_id, status, events, event_ids, created_at, updated_at,"
        " epoch) VALUES ('old', 'fn', 'waiting', ?, '[\"e0\"]', 5, 5, 0)",
        (json.dumps([event_json("e0", data={"k": 1})]),))
    conn.execute(
        "INSERT INTO waits (event, run_id, position, if_, trigger_event, expires_at, after_seq)"
        " VALUES ('paid', 'old', 0, 'async.data.k == event.data.k', ?, ?, 0)",
        (event_json("e0", data={"k": 1}), T0 + DAY))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 11
        [old] = store.find_waits("paid", T0)
        assert (old.run_id, old.keys, old.after_seq) == ("old", (), 0)
        assert store.find_waits("paid", T0, ["data.k=2"]) == [old]
        # Registered again (a claim rebuilds the run), it gains its key; it is found once.
        again = wait_record(RegisterWait("old", 0, "paid", old.if_, old.trigger_event,
                                         old.expires_at))
        assert again.keys == ("data.k=1",)
        store.commit(CommitBatch(now=T0, waits_add=(again,)))
        assert [w.run_id for w in store.find_waits("paid", T0, ["data.k=1"])] == ["old"]
        assert [w.run_id for w in store.find_waits("paid", T0)] == ["old"]
        store.commit(CommitBatch(now=T0, waits_remove=(("old", 0),)))
        assert store.find_waits("paid", T0) == []
    finally:
        store.close()


def test_a_version_3_postgres_schema_keeps_its_waits(pg_url: str, pg_schema: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pg_module._migrate(conn, pg_schema, target=3) == 0
        conn.execute(sql.SQL(
            "INSERT INTO {} (event, run_id, position, if_, trigger_event, expires_at, "
            "after_seq) VALUES ('paid', 'old', 0, 'async.data.k == 1', '{{}}', %s, 0)"
        ).format(sql.Identifier(pg_schema, "waits")), (T0 + DAY,))
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        [old] = store.find_waits("paid", T0)
        assert (old.run_id, old.keys) == ("old", ())
        assert store.find_waits("paid", T0, ["data.k=2"]) == [old]
        keyed = WaitRecord("new", 0, "paid", "async.data.k == 1", "{}", T0 + DAY,
                           keys=("data.k=1",))
        store.commit(CommitBatch(now=T0, waits_add=(keyed,)))
        assert [w.run_id for w in store.find_waits("paid", T0, ["data.k=2"])] == ["old"]
        assert store.wait_key_paths("paid") == ["data.k"]
    finally:
        store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        [(version,)] = conn.execute(sql.SQL("SELECT value FROM {} WHERE key = 'version'")
                                    .format(sql.Identifier(pg_schema, "meta"))).fetchall()
    assert int(version) == pg_module.SCHEMA_VERSION == 10


# --------------------------------------------------------------------------- routing

_LITERALS = ["1", "1.0", "2", "0", "-0.0", "1.5", '"1"', '"a"', '"b"', "true", "false", "null"]
_VALUES: list[Any] = [1, 1.0, 2, 0, -0.0, 1.5, "1", "a", "b", True, False, None,
                      [1], {"x": 1}]
_FIELDS = ["a", "b"]


@st.composite
def conditions(draw: st.DrawFn, incoming: str, known: str | None) -> str:
    """A condition mixing indexable parts with parts that are not."""
    def lit() -> str:
        return draw(st.sampled_from(_LITERALS))

    def fld() -> str:
        return draw(st.sampled_from(_FIELDS))

    def part() -> str:
        kinds = ["eq", "eq_rev", "in", "ne", "or", "not", "has", "gt", "true"]
        if known is not None:
            kinds += ["known", "known_in"]
        kind = draw(st.sampled_from(kinds))
        i = f"{incoming}.data.{fld()}"
        if kind == "eq":
            return f"{i} == {lit()}"
        if kind == "eq_rev":
            return f"({lit()} == {i})"
        if kind == "in":
            items = draw(st.lists(st.sampled_from(_LITERALS), min_size=1, max_size=3))
            return f"{i} in [{', '.join(items)}]"
        if kind == "known":
            return f"{i} == {known}.data.{fld()}"
        if kind == "known_in":
            return f"{i} in {known}.data.l"
        if kind == "ne":
            return f"{i} != {lit()}"
        if kind == "or":
            return f"({i} == {lit()} || {incoming}.data.{fld()} == {lit()})"
        if kind == "not":
            return f"!({i} == {lit()})"
        if kind == "has":
            return f"has({i})"
        if kind == "gt":
            return f"{i} > 0"
        return "true"

    return " && ".join(part() for _ in range(draw(st.integers(1, 3))))


DATA = st.dictionaries(st.sampled_from(_FIELDS), st.sampled_from(_VALUES), max_size=2)
TRIGGER_DATA = st.fixed_dictionaries(
    {"l": st.lists(st.sampled_from(_VALUES[:12]), max_size=3)},
    optional={f: st.sampled_from(_VALUES) for f in _FIELDS},
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "filters": draw(st.lists(st.one_of(st.none(), conditions("event", None)),
                                 min_size=1, max_size=4)),
        "waits": draw(st.lists(st.tuples(conditions("async", "event"), TRIGGER_DATA,
                                         st.sampled_from(["paid", "shipped"])),
                               max_size=6)),
        "events": draw(st.lists(st.tuples(st.sampled_from(["paid", "shipped"]), DATA),
                                min_size=1, max_size=5)),
    }


_examples = itertools.count()


def _check_routing(store: Store, scenario: dict[str, Any]) -> None:
    """Route the scenario's events through the index and compare with a full scan."""
    x = f"x{next(_examples)}"
    app = App("match")

    async def body(ctx: Any) -> None:
        return None

    for i, filt in enumerate(scenario["filters"]):
        app.function(id=f"{x}-f{i}", trigger=on_event(f"{x}/paid", if_=filt))(body)
    runs, waits = [], []
    for i, (cond, data, name) in enumerate(scenario["waits"]):
        trigger = event_json(f"{x}-t{i}", f"{x}/start", data=data)
        runs.append(NewRun(f"{x}-r{i}", f"{x}-waiting", (trigger,), (f"{x}-t{i}",), T0))
        waits.append(wait_record(RegisterWait(f"{x}-r{i}", 0, f"{x}/{name}", cond, trigger,
                                              T0 + DAY)))
    store.commit(CommitBatch(now=T0, runs=tuple(runs), waits_add=tuple(waits)))
    texts = [event_json(f"{x}-e{i}", f"{x}/{name}", data=data)
             for i, (name, data) in enumerate(scenario["events"])]
    stored = store.append_events(texts, T0)
    engine = Engine(app, store, owner="t", entropy=os.urandom)
    assert engine.route(T0 + 1) == len(stored)

    expected_runs: set[tuple[str, str]] = set()
    expected_signals: set[tuple[str, int, str]] = set()
    registered = {n: store.find_waits(f"{x}/{n}", T0 + 1) for n in ("paid", "shipped")}
    for ev in stored:
        raw = json.loads(ev.data)
        for func in app.functions.values():
            if any(t.matches(raw) for t in func.event_triggers):  # every trigger: a scan
                expected_runs.add((func.id, ev.id))
        for w in registered[ev.name.split("/")[1]]:
            if ev.seq > w.after_seq and wait_matches(w, raw):
                expected_signals.add((w.run_id, w.position, ev.id))
    got_runs = {(r.function_id, r.event_ids[0]) for r in store.list_runs(limit=1000)
                if r.function_id.startswith(f"{x}-f")}
    assert got_runs == expected_runs
    claims = store.claim_runs("t", T0 + 2, 30_000, 1000, function_ids=[f"{x}-waiting"])
    got_signals = {(c.run.id, s.position, s.key) for c in claims for _, s in c.signals}
    assert got_signals == expected_signals


_ROUTING = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@_ROUTING
@given(scenario=scenarios())
def test_indexed_routing_equals_a_scan_memory(scenario: dict[str, Any]) -> None:
    _check_routing(MemoryStore(), scenario)


@_ROUTING
@given(scenario=scenarios())
def test_indexed_routing_equals_a_scan_sqlite(scenario: dict[str, Any]) -> None:
    store = SQLiteStore(":memory:")
    try:
        _check_routing(store, scenario)
    finally:
        store.close()


@pytest.fixture(scope="module")
def shared_pg(pg_url: str) -> Iterator[PostgresStore]:
    """One schema for every example (each example uses its own names and ids)."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    store = PostgresStore(pg_url, schema=schema, pool_max=2)
    yield store
    store.close()
    drop_schema(pg_url, schema)


@settings(_ROUTING, max_examples=30)
@given(scenario=scenarios())
def test_indexed_routing_equals_a_scan_postgres(shared_pg: PostgresStore,
                                                scenario: dict[str, Any]) -> None:
    _check_routing(shared_pg, scenario)


def test_functions_are_looked_up_by_key() -> None:
    """1,000 equality filters on one event name: an event evaluates only its own."""
    app = App("many")
    async def body(ctx: Any) -> None:
        return None

    for i in range(1000):
        app.function(id=f"f{i}", trigger=on_event("e", if_=f"event.data.kind == 'k{i}'"))(body)
    app.function(id="all", trigger=on_event("e"))(body)
    app.function(id="scan", trigger=on_event("e", if_="event.data.kind != 'k1'"))(body)
    index = app._trigger_index["e"]
    picks = index.candidates({"name": "e", "data": {"kind": "k7"}})
    entries = app._by_event["e"]
    calls = [entries[i][0].id for i in picks]
    assert calls == ["f7", "all", "scan"]
    assert [f.id for f in app.triggered_by({"name": "e", "data": {"kind": "k7"}})] == [
        "f7", "all", "scan"]
    assert [f.id for f in app.triggered_by({"name": "e", "data": {"kind": "k1"}})] == [
        "f1", "all"]
    # A missing field is an error, so no match (as without the index).
    assert [f.id for f in app.triggered_by({"name": "e", "data": {}})] == ["all"]




def test_keyed_waits_resume_time_out_and_are_cancelled_through_the_engine(
    any_store: Store,
) -> None:
    """Waits registered through the engine carry their keys, resume only on their own key,
    and leave the index once resumed, timed out or cancelled."""
    from durable_core import Context, Event
    from durable_core.testing import TestEngine

    app = App("keyed")

    @app.function(id="waiter", trigger=on_event("start"))
    async def waiter(ctx: Context) -> Any:
        got = await ctx.step.wait_for_event("w", event="go", timeout="1h",
                                            if_="async.data.k == event.data.k")
        return None if got is None else got.data["k"]

    te = TestEngine(app, store=any_store)
    [a] = te.send(Event("start", {"k": "a"})).runs
    [b] = te.send(Event("start", {"k": "b"})).runs
    [c] = te.send(Event("start", {"k": "c"})).runs
    waits = any_store.find_waits("go", int(te.now.timestamp() * 1000))
    assert sorted(w.keys for w in waits) == [('data.k="a"',), ('data.k="b"',), ('data.k="c"',)]
    assert any_store.wait_key_paths("go") == ["data.k"]
    te.send(Event("go", {"k": "z"}))  # nobody's key
    assert (a.status, b.status, c.status) == ("waiting", "waiting", "waiting")
    te.send(Event("go", {"k": "a"}))
    assert (a.status, a.output, b.status) == ("completed", "a", "waiting")
    te.cancel_run(c.id)
    assert c.status == "cancelled"
    now = int(te.now.timestamp() * 1000)
    assert [w.run_id for w in any_store.find_waits("go", now, ['data.k="b"'])] == [b.id]
    assert any_store.find_waits("go", now, ['data.k="a"', 'data.k="c"']) == []
    te.advance("2h")
    assert (b.status, b.output) == ("completed", None)
    assert any_store.find_waits("go", 0) == []
    assert any_store.wait_key_paths("go") == []
