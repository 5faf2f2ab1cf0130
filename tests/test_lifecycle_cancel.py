"""Cancel-on events and timeouts (docs/lifecycle.md): scenario tests on TestEngine
for every rule and bound."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from durable_core import (
    App,
    CancelOn,
    Event,
    FunctionConfigError,
    InvalidExpressionError,
    Timeouts,
    on_event,
)
from durable_core.base._durations import parse_instant, to_ms
from durable_core.core._lifecycle import cancel_cause, cancel_position
from durable_core.engine._engine import Engine
from durable_core.testing import TestEngine
from stores import MemoryStore

T0 = "2026-01-01T00:00:00Z"


def _order_app(**options: Any) -> tuple[App, list[str]]:
    app = App("shop")
    done: list[str] = []
    options.setdefault("cancel_on", [CancelOn("order/cancelled",
                                              if_="event.data.id == async.data.id")])

    @app.function(id="process", trigger=on_event("order/created"), **options)
    async def process(ctx: Any) -> str:
        await ctx.step.sleep("pay-window", "1h")
        await ctx.step.run("charge", lambda: done.append("charged"))
        return "charged"

    return app, done


# --------------------------------------------------------------------------- definition


def test_at_most_five_cancel_ons_at_definition() -> None:
    app = App("a")
    five = [CancelOn(f"e{i}") for i in range(5)]

    @app.function(id="ok", cancel_on=five)
    async def ok(ctx: Any) -> None:
        return None

    assert len(ok.cancel_on) == 5
    with pytest.raises(FunctionConfigError) as info:
        app.function(id="six", cancel_on=[*five, CancelOn("e5")])
    assert info.value.field == "cancel_on" and "limit of 5" in str(info.value)


@pytest.mark.parametrize(("entry", "field"), [
    (CancelOn("x", if_="event.data.id =="), "cancel_on[0].if_"),
    (CancelOn("x", if_="nope.data.id == 1"), "cancel_on[0].if_"),
    (CancelOn("x", if_=3), "cancel_on[0].if_"),  # type: ignore[arg-type]
    (CancelOn(""), "cancel_on[0].event"),
    (CancelOn("x", timeout="soon"), "cancel_on[0].timeout"),
    (CancelOn("x", timeout="400d"), "cancel_on[0].timeout"),
    (CancelOn("x", timeout=0), "cancel_on[0].timeout"),
    ("x", "cancel_on[0]"),
])
def test_bad_cancel_on_is_a_typed_error_naming_the_field(entry: Any, field: str) -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError if field != "cancel_on[0].if_" or
                       isinstance(entry.if_, int) else InvalidExpressionError) as info:
        app.function(id="f", cancel_on=[entry])
    assert info.value.field == field
    assert "'f'" in str(info.value)
    assert app.functions == {}


@pytest.mark.parametrize(("timeouts", "field"), [
    (Timeouts(start="later"), "timeouts.start"),
    (Timeouts(finish=-1), "timeouts.finish"),
    (Timeouts(finish=0), "timeouts.finish"),
    (Timeouts(start="367d"), "timeouts.start"),
    ({"start": "5m"}, "timeouts"),
])
def test_bad_timeouts_are_typed_errors(timeouts: Any, field: str) -> None:
    with pytest.raises(FunctionConfigError) as info:
        App("a").function(id="f", timeouts=timeouts)
    assert info.value.field == field


def test_cancel_on_a_non_cancel_on_argument_is_rejected() -> None:
    with pytest.raises(FunctionConfigError) as info:
        App("a").function(id="f", cancel_on="order/cancelled")  # type: ignore[arg-type]
    assert info.value.field == "cancel_on"


# --------------------------------------------------------------------------- cancel-on


def test_a_matching_event_cancels_a_sleeping_run() -> None:
    app, done = _order_app()
    te = TestEngine(app, T0)
    [run] = te.send(Event("order/created", {"id": 7})).runs
    [other] = te.send(Event("order/created", {"id": 8})).runs
    assert run.status == "sleeping"
    te.send(Event("order/cancelled", {"id": 9}))  # no run of order 9
    assert run.status == "sleeping" and other.status == "sleeping"
    sent = te.send(Event("order/cancelled", {"id": 7}, id="cx-1"))
    assert sent.runs == []
    assert run.status == "cancelled" and other.status == "sleeping"
    assert run.error is not None and run.error.type == "Cancelled"
    assert cancel_cause(run.error.message) == {
        "by": "event", "cancel_on": 0, "event_name": "order/cancelled", "event_id": "cx-1"}
    te.advance("2h")
    assert run.status == "cancelled" and done == ["charged"]  # only the other one charged
    assert other.status == "completed"
    # The listeners went with the runs.
    assert te.store.find_waits("order/cancelled", to_ms(te.now)) == []


def test_an_event_sent_with_the_trigger_after_it_cancels_and_one_before_does_not() -> None:
    app, done = _order_app()
    te = TestEngine(app, T0)
    before = te.send([Event("order/cancelled", {"id": 1}),
                      Event("order/created", {"id": 1})]).runs
    [run] = before
    assert run.status == "sleeping"
    [run2] = te.send([Event("order/created", {"id": 2}),
                      Event("order/cancelled", {"id": 2})]).runs
    assert run2.status == "cancelled"
    te.advance("1h")
    assert run.status == "completed" and done == ["charged"]


def test_the_cancel_on_timeout_bounds_how_long_it_listens() -> None:
    app, _ = _order_app(cancel_on=[CancelOn("order/cancelled", timeout="30m")])
    te = TestEngine(app, T0)
    [a] = te.send(Event("order/created", {"id": 1})).runs
    te.advance("30m")  # the listener expires at exactly 30 minutes: from then on, no cancel
    te.send(Event("order/cancelled", {"id": 1}))
    assert a.status == "sleeping"
    [b] = te.send(Event("order/created", {"id": 2})).runs
    te.advance(dt.timedelta(minutes=30) - dt.timedelta(milliseconds=1))
    te.send(Event("order/cancelled", {"id": 2}))  # b's listener: 1 ms left
    assert b.status == "cancelled"


def test_cancel_of_a_waiting_run_clears_its_wait() -> None:
    app = App("a")

    @app.function(id="w", trigger=on_event("start"), cancel_on=[CancelOn("stop")])
    async def w(ctx: Any) -> Any:
        return await ctx.step.wait_for_event("approval", event="approve", timeout="1d")

    te = TestEngine(app, T0)
    [run] = te.send(Event("start")).runs
    assert run.status == "waiting"
    te.send(Event("stop"))
    assert run.status == "cancelled"
    te.send(Event("approve"))
    assert run.status == "cancelled"
    assert te.store.find_waits("approve", to_ms(te.now)) == []
    assert te.store.find_waits("stop", to_ms(te.now)) == []


def test_cancel_of_a_retrying_run_stops_its_retries() -> None:
    app = App("a")
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        raise RuntimeError("down")

    @app.function(id="r", trigger=on_event("start"), retries=5, cancel_on=[CancelOn("stop")])
    async def r(ctx: Any) -> None:
        await ctx.step.run("call", flaky)

    te = TestEngine(app, T0)
    [run] = te.send(Event("start")).runs
    assert run.status == "sleeping" and len(attempts) == 1
    te.send(Event("stop"))
    assert run.status == "cancelled"
    te.advance("1d")
    assert len(attempts) == 1


def test_cancel_while_a_step_body_runs_records_it_and_starts_nothing_after() -> None:
    app = App("a")
    ran: list[str] = []
    te: TestEngine

    def first() -> str:
        ran.append("first")
        te.send(Event("stop"))  # the cancel arrives while this body runs
        return "done"

    @app.function(id="f", trigger=on_event("start"), cancel_on=[CancelOn("stop")])
    async def f(ctx: Any) -> None:
        await ctx.step.run("first", first)
        ran.append("code after first")
        await ctx.step.run("second", lambda: ran.append("second"))

    te = TestEngine(app, T0)
    [run] = te.send(Event("start")).runs
    assert run.status == "cancelled"
    assert ran == ["first"]
    [step] = run.steps
    assert (step.id, step.status, step.output) == ("first", "completed", "done")
    assert cancel_cause(run.error.message)["by"] == "event"  # type: ignore[union-attr]


def test_an_invoked_child_is_cancelled_with_its_parent() -> None:
    app = App("a")

    @app.function(id="child")
    async def child(ctx: Any) -> str:
        await ctx.step.sleep("long", "1d")
        return "child done"

    @app.function(id="parent", trigger=on_event("start"), cancel_on=[CancelOn("stop")])
    async def parent(ctx: Any) -> Any:
        return await ctx.step.invoke("call", function=child, timeout="2d")

    te = TestEngine(app, T0)
    [p] = te.send(Event("start")).runs
    [kid] = [r for r in te.runs if r.function_id == "child"]
    assert p.status == "waiting" and kid.status == "sleeping"
    te.send(Event("stop"))
    assert p.status == "cancelled" and kid.status == "cancelled"
    assert cancel_cause(kid.error.message) == {"by": "parent", "run_id": p.id}  # type: ignore[union-attr]
    te.advance("3d")
    assert kid.status == "cancelled" and kid.output is None


def test_a_run_that_ended_keeps_its_end_when_its_cancel_event_comes() -> None:
    app, _done = _order_app()
    te = TestEngine(app, T0)
    [run] = te.send(Event("order/created", {"id": 3})).runs
    te.advance("1h")
    assert run.status == "completed"
    te.send(Event("order/cancelled", {"id": 3}))
    assert run.status == "completed" and run.output == "charged"


def test_cancel_on_listens_on_the_match_key_index() -> None:
    app, _ = _order_app()
    te = TestEngine(app, T0)
    [run] = te.send(Event("order/created", {"id": 5})).runs
    [w] = te.store.find_waits("order/cancelled", to_ms(te.now), ["data.id=5"])
    assert (w.run_id, w.position, w.keys) == (run.id, cancel_position(0), ("data.id=5",))
    assert te.store.find_waits("order/cancelled", to_ms(te.now), ["data.id=6"]) == []


# --------------------------------------------------------------------------- timeouts


def _queued_then_started(app: App, delay: dt.timedelta) -> Any:
    """A run created at T0 (routed by an engine that does not run it), first claimed
    ``delay`` later."""
    store = MemoryStore()
    t0 = to_ms(parse_instant(T0, field="t0"))
    Engine(app, store, owner="router", entropy=lambda n: b"\x01" * n).send(
        [Event("go")], t0, route=True)
    [rec] = store.list_runs()
    assert rec.status == "queued" and rec.created_at == t0
    te = TestEngine(app, parse_instant(T0, field="t0") + delay, store=store)
    te.advance(0)
    return te.run(rec.id)


def _timed_app(**timeouts: Any) -> App:
    app = App("a")

    @app.function(id="t", trigger=on_event("go"), timeouts=Timeouts(**timeouts))
    async def t(ctx: Any) -> str:
        await ctx.step.sleep("nap", "10m")
        return "ok"

    return app


def test_start_timeout_is_inclusive_at_the_boundary() -> None:
    run = _queued_then_started(_timed_app(start="5m"), dt.timedelta(minutes=5))
    assert run.status == "sleeping"  # started exactly 5 minutes after its trigger: on time


def test_start_timeout_cancels_a_run_that_starts_1ms_late() -> None:
    run = _queued_then_started(_timed_app(start="5m"),
                               dt.timedelta(minutes=5, milliseconds=1))
    assert run.status == "cancelled" and run.steps == ()
    assert cancel_cause(run.error.message) == {"by": "timeout", "timeout": "start"}
    assert "5m" in run.error.message


def test_finish_timeout_is_inclusive_at_the_boundary() -> None:
    te = TestEngine(_timed_app(finish="10m"), T0)
    [run] = te.send(Event("go")).runs
    te.advance("10m")  # the nap ends exactly 10 minutes after the first attempt
    assert run.status == "completed"


def test_finish_timeout_cancels_a_run_1ms_over() -> None:
    te = TestEngine(_timed_app(finish=dt.timedelta(minutes=10) - dt.timedelta(milliseconds=1)),
                    T0)
    [run] = te.send(Event("go")).runs
    te.advance("10m")
    assert run.status == "cancelled"
    assert cancel_cause(run.error.message) == {  # type: ignore[union-attr]
        "by": "timeout", "timeout": "finish"}


def test_finish_counts_from_the_first_attempt_not_the_trigger() -> None:
    run = _queued_then_started(_timed_app(start="1h", finish="10m"),
                               dt.timedelta(minutes=30))
    assert run.status == "sleeping"
    te = run._engine
    te.advance("10m")
    assert run.status == "completed"


def test_finish_timeout_survives_a_rebuilt_machine() -> None:
    te = TestEngine(_timed_app(finish="5m"), T0)
    [run] = te.send(Event("go")).runs
    te.engine.live.clear()  # as after a restart: the machine is rebuilt from the journal
    te.advance("5m")
    assert run.status == "sleeping"
    te.engine.live.clear()
    te.advance("1ms")
    assert run.status == "cancelled"


# --------------------------------------------------------------------------- from outside


def _nap_app() -> App:
    app = App("a")

    @app.function(id="nap", trigger=on_event("nap"))
    async def nap(ctx: Any) -> str:
        await ctx.step.sleep("zz", "1h")
        return f"slept {ctx.event.data.get('n')}"

    @app.function(id="other", trigger=on_event("other"))
    async def other(ctx: Any) -> None:
        await ctx.step.sleep("zz", "1h")

    return app


def test_cancelling_an_ended_or_unknown_run_is_a_clear_error_that_changes_nothing() -> None:
    from durable_core import RunNotFoundError, ValidationError

    te = TestEngine(_nap_app(), T0)
    [run] = te.send(Event("nap")).runs
    te.advance("1h")
    assert run.status == "completed"
    before = te.store.get_run(run.id)
    with pytest.raises(ValidationError) as info:
        te.cancel_run(run.id)
    assert info.value.field == "run_id" and "already ended (completed)" in str(info.value)
    assert te.store.get_run(run.id) == before
    with pytest.raises(RunNotFoundError):
        te.cancel_run("r_nope")


def test_bulk_cancel_by_function_and_time_range() -> None:
    te = TestEngine(_nap_app(), T0)
    [a] = te.send(Event("nap", {"n": 1})).runs
    te.advance("10m")
    [b] = te.send(Event("nap", {"n": 2})).runs
    [o] = te.send(Event("other")).runs
    te.advance("10m")
    [c] = te.send(Event("nap", {"n": 3})).runs
    # [since, until): b only (created at +10m); c (at +20m) is at the excluded bound.
    got = te.cancel_runs("nap", since="2026-01-01T00:10:00Z", until="2026-01-01T00:20:00Z")
    assert got == [b]
    assert (a.status, b.status, c.status, o.status) == (
        "sleeping", "cancelled", "sleeping", "sleeping")
    got = te.cancel_runs("nap")
    assert got == [a, c]  # oldest first; b has ended: not cancelled twice
    assert o.status == "sleeping"
    assert te.cancel_runs("nap") == []


def test_bulk_cancel_by_cel_over_the_triggering_event() -> None:
    from durable_core import ValidationError

    te = TestEngine(_nap_app(), T0)
    runs = [te.send(Event("nap", {"n": n})).runs[0] for n in range(4)]
    got = te.cancel_runs(if_="event.data.n % 2 == 1", reason="odd ones out")
    assert got == [runs[1], runs[3]]
    assert [r.status for r in runs] == ["sleeping", "cancelled", "sleeping", "cancelled"]
    assert runs[1].error.message == "odd ones out"  # type: ignore[union-attr]
    with pytest.raises(InvalidExpressionError):
        te.cancel_runs(if_="event.data.n ==")
    with pytest.raises(ValidationError) as info:
        te.cancel_runs()
    assert info.value.field == "function_id"
    with pytest.raises(ValidationError):
        te.cancel_runs("nap", since="2026-02-01T00:00:00Z", until="2026-01-01T00:00:00Z")
    assert [r.status for r in runs] == ["sleeping", "cancelled", "sleeping", "cancelled"]


def test_rerun_starts_a_linked_run_with_the_same_event() -> None:
    from durable_core import ValidationError

    te = TestEngine(_nap_app(), T0)
    [run] = te.send(Event("nap", {"n": 5}, id="ev-5")).runs
    with pytest.raises(ValidationError) as info:
        te.rerun(run.id)  # still sleeping
    assert "has not ended" in str(info.value)
    te.cancel_run(run.id)
    again = te.rerun(run.id)
    assert again != run and again.view().rerun_of == run.id
    assert again.view().event_ids == ("ev-5",)
    assert run.view().rerun_of is None
    te.advance("1h")
    assert again.status == "completed" and again.output == "slept 5"
    third = te.rerun(again.id)  # a rerun of a rerun links to its own original
    assert third.view().rerun_of == again.id
    assert third.view().to_dict()["rerun_of"] == again.id


def test_the_cli_cancels_in_bulk_and_reruns(tmp_path: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import stores
    from durable_core.cli import main

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = stores.open(url)
    te = TestEngine(_nap_app(), T0, store=store)
    [a] = te.send(Event("nap", {"n": 1})).runs
    [b] = te.send(Event("nap", {"n": 2})).runs
    assert main(["runs", "cancel", "--function", "nap", "--if", "event.data.n == 2",
                 "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cancel_requested": [b.id]}
    te.advance("1s")
    assert (a.status, b.status) == ("sleeping", "cancelled")
    assert main(["runs", "cancel", b.id, "--store", url]) == 2  # ended: a clear error
    assert "already ended" in capsys.readouterr().err
    assert main(["runs", "cancel", "--store", url]) == 2  # nothing to cancel by
    capsys.readouterr()
    assert main(["runs", "rerun", b.id, "--store", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rerun_of"] == b.id
    assert main(["runs", "show", out["run_id"], "--store", url]) == 0
    assert f"rerun of {b.id}" in capsys.readouterr().out
    assert main(["runs", "show", out["run_id"], "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rerun_of"] == b.id
    assert main(["runs", "rerun", "r_missing", "--store", url]) == 2
    store.close()


def test_finish_timeout_is_seen_at_the_boundary_of_a_busy_run() -> None:
    """A run running steps back to back is never fed its timer: the result of a body that
    ends past the deadline is recorded, and the run is cancelled there."""
    from durable_core.core._machine import RunMachine
    from durable_core.core._model import CancelRun, ExecuteStep, RunStarted

    app = App("a")

    @app.function(id="busy", timeouts=Timeouts(finish="1m"))
    async def busy(ctx: Any) -> None:
        await ctx.step.run("one", lambda: 1)
        await ctx.step.run("two", lambda: 2)

    t0 = 1_767_225_600_000
    m = RunMachine(busy, "r1", [Event("x", {}, id="e1", ts=t0)], t0)
    [step] = [c for c in m.handle(RunStarted(t0)) if isinstance(c, ExecuteStep)]
    # On time, at exactly one minute: the next step starts.
    cmds = m.step_completed(step.position, 0, 1, t0 + 60_000)
    [nxt] = [c for c in cmds if isinstance(c, ExecuteStep)]
    cmds = m.step_completed(nxt.position, 0, 2, t0 + 60_001)
    assert any(isinstance(c, CancelRun) for c in cmds)
    assert m.status == "cancelled" and m.error is not None
    assert cancel_cause(m.error.message) == {"by": "timeout", "timeout": "finish"}
    assert [e.step_id for e in m.entries if e.op == "completed"] == ["one", "two"]


def test_a_run_rebuilt_past_its_finish_deadline_runs_no_more_code() -> None:
    from durable_core.core._machine import RunMachine
    from durable_core.core._model import ExecuteStep, RunStarted

    app = App("a")
    calls: list[str] = []

    @app.function(id="f", timeouts=Timeouts(finish="1m"))
    async def f(ctx: Any) -> None:
        calls.append("code")
        await ctx.step.run("one", lambda: 1)

    t0 = 1_767_225_600_000
    m = RunMachine(f, "r1", [Event("x", {}, id="e1", ts=t0)], t0)
    m.handle(RunStarted(t0))
    rebuilt = RunMachine(f, "r1", [Event("x", {}, id="e1", ts=t0)], t0, m.entries)
    calls.clear()
    cmds = rebuilt.handle(RunStarted(t0 + 60_001))
    assert calls == [] and not any(isinstance(c, ExecuteStep) for c in cmds)
    assert rebuilt.status == "cancelled"


def test_the_async_client_cancels_in_bulk_and_reruns() -> None:
    import asyncio

    from durable_core import AsyncClient

    store = MemoryStore()
    te = TestEngine(_nap_app(), T0, store=store)
    runs = [te.send(Event("nap", {"n": n})).runs[0] for n in range(3)]
    client = AsyncClient(store, clock=lambda: to_ms(te.now))

    async def main() -> tuple[list[str], str]:
        ids = await client.cancel_runs("nap", if_="event.data.n > 0")
        te.advance("1s")
        again = await client.rerun(runs[1].id)
        return ids, again.id

    ids, again = asyncio.run(main())
    assert ids == [runs[1].id, runs[2].id]
    assert [r.status for r in runs] == ["sleeping", "cancelled", "cancelled"]
    assert te.run(again).view().rerun_of == runs[1].id


# --------------------------------------------------------------------------- the rerun link


def test_a_version_7_sqlite_database_gains_rerun_of(tmp_path: Any) -> None:
    """Migration 8 adds ``runs.rerun_of``: runs stored before have none; new ones keep it."""
    import json
    import sqlite3

    import sqlite_utils

    from durable_core.store import CommitBatch, NewRun
    from stores.sqlite._store import _MIGRATIONS, SCHEMA_VERSION, SQLiteStore

    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    db = sqlite_utils.Database(conn, execute_plugins=False)
    for step in _MIGRATIONS[:7]:
        step(db)
    conn.execute("PRAGMA user_version = 7")
    conn.execute(
        "INSERT INTO runs (id, function_id, status, events, event_ids, created_at, updated_at,"
        " epoch) VALUES ('old', 'fn', 'completed', ?, '[\"e0\"]', 5, 5, 0)",
        (json.dumps(['{"name":"x","data":{},"id":"e0","ts":5}']),))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 11
        assert store.get_run("old").rerun_of is None
        store.commit(CommitBatch(now=10, runs=(NewRun(
            "new", "fn", ('{"name":"x","data":{},"id":"e0","ts":5}',), ("e0",), 10,
            rerun_of="old"),)))
        assert store.get_run("new").rerun_of == "old"
        assert [(r.id, r.rerun_of) for r in store.list_runs()] == [("new", "old"), ("old", None)]
    finally:
        store.close()


# --------------------------------------------------------------------------- every store




def test_cancel_on_timeouts_and_rerun_on_every_store(any_store: Any) -> None:
    app, done = _order_app(timeouts=Timeouts(finish="2h"))

    @app.function(id="stuck", trigger=on_event("stuck/go"), timeouts=Timeouts(finish="30m"))
    async def stuck(ctx: Any) -> None:
        await ctx.step.sleep("long", "1h")

    @app.function(id="child")
    async def child(ctx: Any) -> str:
        await ctx.step.sleep("long", "1d")
        return "child done"

    @app.function(id="parent", trigger=on_event("parent/go"),
                  cancel_on=[CancelOn("parent/stop")])
    async def parent(ctx: Any) -> Any:
        return await ctx.step.invoke("call", function=child, timeout="2d")

    te = TestEngine(app, T0, store=any_store)
    # A cancel sent in the same batch as the trigger, after it: registered at routing.
    [same] = te.send([Event("order/created", {"id": 1}),
                      Event("order/cancelled", {"id": 1})]).runs
    assert same.status == "cancelled"
    [run] = te.send(Event("order/created", {"id": 2})).runs
    [kept] = te.send(Event("order/created", {"id": 3})).runs
    te.send(Event("order/cancelled", {"id": 2}, id="stop-2"))
    assert run.status == "cancelled" and kept.status == "sleeping"
    assert cancel_cause(run.error.message)["event_id"] == "stop-2"  # type: ignore[union-attr]
    [p] = te.send(Event("parent/go")).runs
    te.send(Event("parent/stop"))
    [kid] = [r for r in te.runs if r.function_id == "child"]
    assert (p.status, kid.status) == ("cancelled", "cancelled")
    te.advance("1h")
    assert kept.status == "completed" and done == ["charged"]
    again = te.rerun(run.id)
    assert again.view().rerun_of == run.id
    te.advance("1h")
    assert again.status == "completed"
    assert te.store.find_waits("order/cancelled", to_ms(te.now)) == []
    # timeouts.finish (2 h from the first attempt), across rebuilt machines.
    [slow] = te.send(Event("order/created", {"id": 4})).runs
    te.engine.live.clear()
    te.advance("1h")
    assert slow.status == "completed"
    assert te.store.load_journal(slow.id)[0].op == "started"
    [late] = te.send(Event("stuck/go")).runs
    te.advance("30m")
    assert late.status == "sleeping"
    te.engine.live.clear()
    te.advance("1ms")
    assert late.status == "cancelled"
    assert cancel_cause(late.error.message)["timeout"] == "finish"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- system events


def _cancelled_event(te: TestEngine, run_id: str) -> dict[str, Any]:
    import json

    stored = te.store.get_event(f"cancelled:{run_id}")
    assert stored is not None, "no durable/function.cancelled event"
    data: dict[str, Any] = json.loads(stored.data)["data"]
    return data


@pytest.mark.parametrize("how", ["cancel_on", "timeout", "request"])
def test_the_cancelled_system_event_says_what_cancelled_the_run(how: str) -> None:
    options: dict[str, Any] = {}
    if how == "timeout":
        options["timeouts"] = Timeouts(finish="30m")
    app, done = _order_app(**options)
    te = TestEngine(app, T0)
    [run] = te.send(Event("order/created", {"id": 7})).runs
    if how == "cancel_on":
        te.send(Event("order/cancelled", {"id": 7}))
    elif how == "request":
        te.cancel_run(run.id, reason="customer called")
    te.advance("2h")
    assert run.status == "cancelled" and done == []
    data = _cancelled_event(te, run.id)
    assert (data["run_id"], data["function_id"], data["status"]) == (
        run.id, "process", "cancelled")
    assert data["reason"] == how
    assert data["error"]["message"] == run.error.message  # type: ignore[union-attr]
    assert data["event"]["data"] == {"id": 7}


def test_an_invoked_child_cancelled_with_its_parent_says_so() -> None:
    app = App("family")

    @app.function(id="child")
    async def child(ctx: Any) -> str:
        await ctx.step.sleep("long", "1d")
        return "done"

    @app.function(id="parent", trigger=on_event("go"))
    async def parent(ctx: Any) -> str:
        return await ctx.step.invoke("call", function=child)  # type: ignore[no-any-return]

    te = TestEngine(app, T0)
    [run] = te.send(Event("go")).runs
    te.advance("1m")
    [kid] = [r for r in te.runs if r.function_id == "child"]
    te.cancel_run(run.id)
    te.advance("1m")
    assert (run.status, kid.status) == ("cancelled", "cancelled")
    assert _cancelled_event(te, run.id)["reason"] == "request"
    assert _cancelled_event(te, kid.id)["reason"] == "parent"
