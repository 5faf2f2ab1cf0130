"""``concurrency`` and ``priority`` (issue 13) on TestEngine's virtual clock, on every store:
step bodies executing at once per key stay within the limit (counted by the store:
``held_slots``, sampled at every body start), sleeping runs hold no slot, keys are served in
turn, app scope shares a key value across functions, and priority orders starts within its
bound."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from durable_core import App, Concurrency, Event, Priority, on_event
from durable_core.store import Store, pick_limited
from durable_core.testing import TestEngine


class Probe:
    """What step bodies see: the order they ran in, and the most slots held per key (the
    store's count, read as each body starts)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine: TestEngine | None = None
        self.order: list[str] = []
        self.peak: dict[str, int] = {}

    def body(self, label: str) -> None:
        assert self.engine is not None
        self.order.append(label)
        for key, n in self.store.held_slots(engine_ms(self.engine)).items():
            self.peak[key] = max(self.peak.get(key, 0), n)


def engine_for(app: App, store: Store, probe: Probe) -> TestEngine:
    engine = TestEngine(app, store=store)
    probe.engine = engine
    return engine


def engine_ms(engine: TestEngine) -> int:
    """The engine's virtual now in ms, for the probe (the store counts leases live at a
    time). A function, not a property patched onto TestEngine for every other test."""
    now: int = engine._now
    return now


def test_limit_per_key_bounds_step_bodies_executing_at_once(any_store: Store) -> None:
    app = App("cc")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"),
                  concurrency=Concurrency(2, key="event.data.c"))
    async def f(ctx: Any) -> None:
        label = f"{ctx.event.data['c']}{ctx.event.data['n']}"
        for i in range(3):
            await ctx.step.run(f"s{i}", probe.body, f"{label}.{i}")

    engine = engine_for(app, any_store, probe)
    engine.send([Event("go", {"c": c, "n": n}) for n in range(4) for c in "ab"])
    assert [r.status for r in engine.runs] == ["completed"] * 8
    assert sorted(probe.peak.values()) == [2, 2]  # two keys, at most two slots each
    # The first two runs of each key started first; the others waited for a slot.
    assert set(probe.order[:4 * 3]) == {f"{c}{n}.{i}" for c in "ab" for n in (0, 1)
                                        for i in range(3)}
    assert any_store.held_slots(engine_ms(engine)) == {}


def test_without_key_the_function_has_one_queue(any_store: Store) -> None:
    app = App("cc1")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"), concurrency=1)
    async def f(ctx: Any) -> None:
        n = ctx.event.data["n"]
        await ctx.step.run("a", probe.body, f"{n}a")
        await ctx.step.run("b", probe.body, f"{n}b")

    engine = engine_for(app, any_store, probe)
    engine.send([Event("go", {"n": n}) for n in range(3)])
    # One run at a time, in order: each run's steps back to back.
    assert probe.order == ["0a", "0b", "1a", "1b", "2a", "2b"]
    assert list(probe.peak.values()) == [1]


def test_a_sleeping_run_holds_no_slot(any_store: Store) -> None:
    app = App("cc-sleep")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"), concurrency=1)
    async def f(ctx: Any) -> None:
        n = ctx.event.data["n"]
        await ctx.step.run("a", probe.body, f"{n}a")
        await ctx.step.sleep("nap", "1m")
        await ctx.step.run("b", probe.body, f"{n}b")

    engine = engine_for(app, any_store, probe)
    engine.send([Event("go", {"n": n}) for n in range(3)])
    # While run 0 sleeps, runs 1 and 2 take the slot in turn.
    assert probe.order == ["0a", "1a", "2a"]
    engine.advance("1m")
    assert probe.order == ["0a", "1a", "2a", "0b", "1b", "2b"]
    assert [r.status for r in engine.runs] == ["completed"] * 3
    assert list(probe.peak.values()) == [1]


def test_app_scope_shares_a_key_value_across_functions(any_store: Store) -> None:
    app = App("cc-app")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"),
                  concurrency=Concurrency(1, key="event.data.account", scope="app"))
    async def f(ctx: Any) -> None:
        await ctx.step.run("a", probe.body, f"f{ctx.event.data['n']}")
        await ctx.step.sleep("nap", "1m")

    @app.function(id="g", trigger=on_event("go"),
                  concurrency=Concurrency(1, key="event.data.account", scope="app"))
    async def g(ctx: Any) -> None:
        await ctx.step.run("a", probe.body, f"g{ctx.event.data['n']}")
        await ctx.step.sleep("nap", "1m")

    engine = engine_for(app, any_store, probe)
    engine.send([Event("go", {"account": "acme", "n": 0})])
    # Both functions' runs share one slot for "acme": they executed one after the other.
    assert sorted(probe.order) == ["f0", "g0"]
    assert list(probe.peak.values()) == [1]
    engine.advance("1m")
    assert [r.status for r in engine.runs] == ["completed"] * 2


def test_two_entries_both_need_room(any_store: Store) -> None:
    app = App("cc-two")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"),
                  concurrency=[Concurrency(3), Concurrency(1, key="event.data.c")])
    async def f(ctx: Any) -> None:
        await ctx.step.run("a", probe.body, ctx.event.data["c"])

    engine = engine_for(app, any_store, probe)
    engine.send([Event("go", {"c": c}) for c in "aabbccdd"])
    assert [r.status for r in engine.runs] == ["completed"] * 8
    assert max(probe.peak.values()) <= 3
    assert sorted(probe.peak.values()) == [1, 1, 1, 1, 3]


def test_a_key_that_fails_limits_the_run_under_the_empty_value(
    any_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("cc-bad")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"),
                  concurrency=Concurrency(1, key="event.data.missing.deeper"))
    async def f(ctx: Any) -> None:
        await ctx.step.run("a", probe.body, str(ctx.event.data["n"]))

    engine = engine_for(app, any_store, probe)
    with caplog.at_level(logging.WARNING, logger="durable_core.flow"):
        engine.send([Event("go", {"n": n}) for n in range(2)])
    assert [r.status for r in engine.runs] == ["completed"] * 2
    assert list(probe.peak.values()) == [1]
    assert "limited under the empty key value" in caplog.text


def test_busy_keys_do_not_starve_others() -> None:
    """The claim rule: keys are served in turn, whatever their queue lengths."""
    a = [(f"a{i}", (("A", 100),)) for i in range(50)]
    b = [("b0", (("B", 100),))]
    c = [("c0", (("C", 100),)), ("c1", (("C", 100),))]
    picked = pick_limited([*a, *b, *c], {}, 5)
    assert picked == ["a0", "b0", "c0", "a1", "c1"]
    # Room is counted with the claim's own picks, and held slots count.
    assert pick_limited(a[:5], {"A": 98}, 5) == ["a0", "a1"]
    # A run needs room in each of its keys.
    two = [("x", (("A", 1), ("B", 1))), ("y", (("B", 1),)), ("z", (("A", 2),))]
    assert pick_limited(two, {"B": 1}, 5) == ["z"]
    assert pick_limited(two, {}, 0) == []


# --------------------------------------------------------------------------- priority


def test_priority_orders_queued_runs_within_the_bound(any_store: Store) -> None:
    app = App("prio2")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"), concurrency=1,
                  priority=Priority(run="event.data.p"))
    async def f(ctx: Any) -> None:
        await ctx.step.run("a", probe.body, ctx.event.data["n"])

    engine = engine_for(app, any_store, probe)
    # Queue runs created at different times while nothing claims them (routed by the
    # engine directly, without settling), then let them run one at a time.
    sends = [("old", 0, 0), ("mid", 100, 0), ("vip", 200, 150), ("late", 300, 0),
             ("over", 1000, 600), ("neg", 1000, -30), ("bad", 1000, "x")]
    start = engine_ms(engine)
    for n, at, p in sends:
        engine.engine.send([Event("go", {"n": n, "p": p})], start + at * 1000, route=True)
    engine.advance("1000s")
    # Scores (created - priority): old 0, mid 100, vip 50, late 300, over 400, neg 1030,
    # bad 1000 (a non-int counts as 0).
    assert probe.order == ["old", "vip", "mid", "late", "over", "bad", "neg"]


def test_priority_never_overtakes_work_older_than_the_bound(any_store: Store) -> None:
    app = App("prio3")
    probe = Probe(any_store)

    @app.function(id="f", trigger=on_event("go"), priority=Priority(run="event.data.p"))
    async def f(ctx: Any) -> None:
        await ctx.step.run("a", probe.body, ctx.event.data["n"])

    engine = engine_for(app, any_store, probe)
    start = engine_ms(engine)
    engine.engine.send([Event("go", {"n": "old", "p": 0})], start, route=True)
    # 601 s later, the highest priority (clipped to 600) still comes after it.
    engine.engine.send([Event("go", {"n": "new", "p": 100_000})], start + 601_000, route=True)
    engine.engine.send([Event("go", {"n": "tie", "p": 600})], start + 600_000, route=True)
    engine.advance("601s")
    assert probe.order == ["old", "tie", "new"]


# --------------------------------------------------------------------------- query plans


def _many_runs(store: Store, n: int) -> None:
    from durable_core.store import CommitBatch, NewRun

    T0 = 1_700_000_000_000
    store.commit(CommitBatch(now=T0, runs=tuple(
        NewRun(f"r{i}", "fn", ('{"name":"e","data":{},"id":"e0","ts":0}',), ("e0",),
               T0 + i, priority_ms=(i % 7) * 1000,
               slots=((f"fn:fn:{i % 20}", 2),)) for i in range(n))))


def test_postgres_claims_read_queued_runs_in_priority_order_through_an_index(
    pg_url: str, pg_schema: str
) -> None:
    import psycopg
    from psycopg import sql

    from stores.postgres import PostgresStore

    store = PostgresStore(pg_url, schema=pg_schema, pool_max=2)
    try:
        _many_runs(store, 5000)
        params = {"now": 1_700_000_000_000, "limit": 100, "owner": "w", "expires": 1,
                  "functions": ["fn"]}
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(pg_schema, "runs")))
            conn.execute("SET plan_cache_mode = force_generic_plan")  # as prepared
            # (The statements filtered by function ids are planned from the statistics of
            # function_id: on this one-function table the planner rightly prefers to sort.)
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN " + store._q.claim_runs, params))
            assert "Index Scan using runs_due_order" in plan, plan
            assert "Seq Scan on runs" not in plan, plan
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN " + store._q.held_slots, params))
            assert "runs_slot1" in plan and "runs_slot2" in plan, plan
        # And the order is the rule's: created_at - priority_ms, then creation order.
        got = [c.run.id for c in store.claim_runs("w", 1_700_000_000_000 + 10_000, 1000, 5,
                                                  ["fn"])]
        assert got == ["r6", "r13", "r20", "r27", "r34"]
    finally:
        store.close()


def test_sqlite_limited_claims_count_slots_through_partial_indexes(tmp_path: Any) -> None:
    import json

    from stores import SQLiteStore
    from stores.sqlite import _store as sqlite_module

    store = SQLiteStore(tmp_path / "plan.db")
    try:
        _many_runs(store, 500)
        with store._read() as conn:
            plan = "\n".join(str(r[-1]) for r in conn.execute(
                "EXPLAIN QUERY PLAN " + sqlite_module._LIMITED_SQL,
                {"now": 0, "limit": 10, "functions": json.dumps(["fn"])}))
        assert "runs_slot1" in plan and "runs_slot2" in plan, plan
        assert "runs_queued" in plan, plan
    finally:
        store.close()


def test_a_store_without_limited_claims_is_refused_at_startup() -> None:
    from durable_core import ValidationError
    from stores import MemoryStore

    class Old:
        blocking = False

        def __init__(self) -> None:
            self._inner = MemoryStore()

        def __getattr__(self, name: str) -> Any:
            if name in ("claim_limited_runs", "held_slots"):
                raise AttributeError(name)
            return getattr(self._inner, name)

    app = App("cc-old")

    @app.function(id="f", trigger=on_event("go"), concurrency=1)
    async def f(ctx: Any) -> None:
        return None

    with pytest.raises(ValidationError) as info:
        TestEngine(app, store=Old())  # type: ignore[arg-type]
    assert info.value.field == "store" and "claim_limited_runs" in str(info.value)
