"""A run's lifecycle on TestEngine: idempotency keys (one run per key per 24 h, folded
triggers recorded), system events (durable/function.finished, .failed, .cancelled: their
shapes, ids, use as triggers and in waits, the loop rule) and failure handlers
(``on_failure=``: once per failed run, retries 1, never recursing)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from durable_core import (
    App,
    Client,
    Event,
    FunctionConfigError,
    InvalidEventError,
    InvalidExpressionError,
    NonRetriableError,
    SkippedTrigger,
    on_cron,
    on_event,
)
from durable_core.testing import TestEngine
from stores import MemoryStore

DAY = dt.timedelta(hours=24)
MS = dt.timedelta(milliseconds=1)


def _system(engine: TestEngine, kind: str, run_id: str) -> dict[str, Any] | None:
    ev = engine.store.get_event(f"{kind}:{run_id}")
    if ev is None:
        return None
    return Event.from_json(ev.data).to_dict()


# --------------------------------------------------------------------------- idempotency


def _keyed_app(expression: str = "event.data.cart") -> tuple[App, list[Any]]:
    app = App("shop")
    seen: list[Any] = []

    @app.function(id="checkout", trigger=on_event("cart/checkout"), idempotency=expression)
    async def checkout(ctx: Any) -> Any:
        seen.append(ctx.event.data)
        return ctx.event.data.get("n")

    return app, seen


def test_one_run_per_key_and_the_folded_trigger_is_recorded() -> None:
    app, seen = _keyed_app()
    engine = TestEngine(app)
    [first] = engine.send(Event("cart/checkout", {"cart": "c1", "n": 1})).runs
    again = engine.send(Event("cart/checkout", {"cart": "c1", "n": 2}, id="e-2"))
    assert again.runs == []
    other = engine.send(Event("cart/checkout", {"cart": "c2", "n": 3})).runs
    assert [r.output for r in (first, *other)] == [1, 3]
    assert seen == [{"cart": "c1", "n": 1}, {"cart": "c2", "n": 3}]
    assert engine.store.get_run(first.id).idempotency_key == "c1"
    [skip] = engine.skipped_triggers()
    assert isinstance(skip, SkippedTrigger)
    assert (skip.function_id, skip.key, skip.run_id, skip.event_id) == (
        "checkout", "c1", first.id, "e-2")
    assert engine.skipped_triggers(event_id="e-2") == [skip]
    assert engine.skipped_triggers(run_id=other[0].id) == []
    # The skipped event is stored and visible; it started nothing.
    stored = engine.store.get_event("e-2")
    assert stored is not None and not stored.duplicate
    assert engine.store.list_runs(event_id="e-2") == []


def test_the_window_is_24h_from_the_first_run_creation() -> None:
    app, _seen = _keyed_app()
    engine = TestEngine(app)
    [first] = engine.send(Event("cart/checkout", {"cart": "c1"})).runs
    engine.advance(DAY / 2)
    assert engine.send(Event("cart/checkout", {"cart": "c1"})).runs == []  # not extending
    engine.advance(DAY / 2 - MS)
    assert engine.send(Event("cart/checkout", {"cart": "c1"})).runs == []  # 24 h - 1 ms
    engine.advance(MS)
    [second] = engine.send(Event("cart/checkout", {"cart": "c1"})).runs  # exactly 24 h
    assert second.status == "completed"
    assert [s.run_id for s in engine.skipped_triggers()] == [first.id, first.id]
    engine.advance(DAY - MS)
    assert engine.send(Event("cart/checkout", {"cart": "c1"})).runs == []
    assert engine.skipped_triggers(limit=1)[0].run_id == second.id


def test_event_id_dedupe_still_holds_and_is_not_a_folded_trigger() -> None:
    app, seen = _keyed_app()
    engine = TestEngine(app)
    engine.send(Event("cart/checkout", {"cart": "c1"}, id="same"))
    sent = engine.send(Event("cart/checkout", {"cart": "c9"}, id="same"))
    assert sent.duplicates == {"same"} and sent.runs == []
    assert len(seen) == 1 and engine.skipped_triggers() == []


def test_without_idempotency_every_event_starts_a_run() -> None:
    app = App("a")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Any) -> None:
        return None

    engine = TestEngine(app)
    for _ in range(3):
        engine.send(Event("go", {"k": 1}))
    assert len(engine.runs) == 3
    assert all(engine.store.get_run(r.id).idempotency_key is None for r in engine.runs)


def test_keys_are_per_function_and_non_string_values_are_json() -> None:
    app = App("a")

    @app.function(id="f", trigger=on_event("go"), idempotency="event.data.k")
    async def f(ctx: Any) -> None:
        return None

    @app.function(id="g", trigger=on_event("go"), idempotency="event.data.k")
    async def g(ctx: Any) -> None:
        return None

    engine = TestEngine(app)
    assert len(engine.send(Event("go", {"k": {"b": 1, "a": [1, 2]}})).runs) == 2
    assert engine.send(Event("go", {"k": {"a": [1, 2], "b": 1}})).runs == []
    keys = {engine.store.get_run(r.id).idempotency_key for r in engine.runs}
    assert keys == {'{"a":[1,2],"b":1}'}
    assert sorted(s.function_id for s in engine.skipped_triggers()) == ["f", "g"]


def test_a_key_that_is_null_or_fails_starts_the_run_without_a_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, seen = _keyed_app("event.data.cart")
    engine = TestEngine(app)
    engine.send(Event("cart/checkout", {"cart": None}))
    engine.send(Event("cart/checkout", {"cart": None}))
    engine.send(Event("cart/checkout", {}))  # no such key: evaluation fails
    assert len(seen) == 3 and engine.skipped_triggers() == []
    assert "idempotency" in caplog.text


def test_cron_runs_take_their_key_too() -> None:
    app = App("a")

    @app.function(id="nightly", trigger=on_cron("0 * * * *"), idempotency="'one'")
    async def nightly(ctx: Any) -> None:
        return None

    engine = TestEngine(app)
    engine.advance("3h")
    assert len(engine.runs) == 1
    assert len(engine.skipped_triggers()) == 2


@pytest.mark.parametrize(("expression", "error"), [
    ("event.data.", InvalidExpressionError),
    ("async.data.x", InvalidExpressionError),
    ("nope(event)", InvalidExpressionError),
    ("", FunctionConfigError),
    ("   ", FunctionConfigError),
    (5, FunctionConfigError),
])
def test_idempotency_errors_at_definition_name_the_field(expression: Any,
                                                         error: type[Exception]) -> None:
    app = App("a")
    with pytest.raises(error) as info:
        app.function(id="f", trigger=on_event("go"), idempotency=expression)
    assert getattr(info.value, "field", None) == "idempotency"
    assert "'f'" in str(info.value) and "idempotency" in str(info.value)
    assert "f" not in app.functions


def test_client_shows_the_folded_trigger() -> None:
    app, _seen = _keyed_app()
    store = MemoryStore()
    client = Client(store, app=app, clock=lambda: 1_767_225_600_000)
    client.send(Event("cart/checkout", {"cart": "c1"}, id="one"))
    client.send(Event("cart/checkout", {"cart": "c1"}, id="two"))
    [run] = client.runs_of("one")
    assert client.runs_of("two") == []
    [skip] = client.skipped_triggers(event_id="two")
    assert skip.run_id == run.id and skip.key == "c1"
    assert client.skipped_triggers(function_id="other") == []


# --------------------------------------------------------------------------- system events


def _outcomes_app() -> App:
    app = App("a")

    @app.function(id="ok", trigger=on_event("go/ok"))
    async def ok(ctx: Any) -> Any:
        return {"total": ctx.event.data["n"] * 2}

    @app.function(id="bad", trigger=on_event("go/bad"), retries=0)
    async def bad(ctx: Any) -> Any:
        raise ValueError("no luck")

    @app.function(id="slow", trigger=on_event("go/slow"))
    async def slow(ctx: Any) -> Any:
        await ctx.step.sleep("nap", "1h")

    return app


def test_a_completed_run_emits_finished_with_its_result() -> None:
    engine = TestEngine(_outcomes_app())
    [run] = engine.send(Event("go/ok", {"n": 21}, id="t1")).runs
    finished = _system(engine, "finished", run.id)
    assert finished is not None
    assert finished["name"] == "durable/function.finished"
    assert finished["id"] == f"finished:{run.id}"
    data = finished["data"]
    assert (data["function_id"], data["run_id"], data["status"], data["result"]) == (
        "ok", run.id, "completed", {"total": 42})
    assert data["event"]["id"] == "t1" and data["event"]["data"] == {"n": 21}
    assert data["events"] == [data["event"]]
    assert "error" not in data
    assert _system(engine, "failed", run.id) is None
    assert _system(engine, "cancelled", run.id) is None


def test_a_failed_run_emits_finished_and_failed_with_its_error() -> None:
    engine = TestEngine(_outcomes_app())
    [run] = engine.send(Event("go/bad", {})).runs
    assert run.status == "failed"
    for kind in ("finished", "failed"):
        ev = _system(engine, kind, run.id)
        assert ev is not None and ev["name"] == f"durable/function.{kind}"
        assert ev["data"]["status"] == "failed" and "result" not in ev["data"]
        assert ev["data"]["error"]["type"] == "ValueError"
        assert ev["data"]["error"]["message"] == "no luck"
    assert _system(engine, "cancelled", run.id) is None


def test_a_cancelled_run_emits_finished_and_cancelled_with_the_reason() -> None:
    engine = TestEngine(_outcomes_app())
    [run] = engine.send(Event("go/slow", {})).runs
    engine.cancel_run(run.id, reason="customer left")
    assert run.status == "cancelled"
    cancelled = _system(engine, "cancelled", run.id)
    assert cancelled is not None
    assert cancelled["data"]["reason"] == "request"
    assert cancelled["data"]["error"]["message"] == "customer left"
    assert _system(engine, "finished", run.id)["data"]["status"] == "cancelled"  # type: ignore[index]
    assert _system(engine, "failed", run.id) is None


def test_system_events_trigger_functions_and_resume_waits() -> None:
    app = _outcomes_app()
    seen: list[Any] = []

    @app.function(id="audit", trigger=on_event("durable/function.failed"))
    async def audit(ctx: Any) -> None:
        seen.append((ctx.event.data["function_id"], ctx.event.data["error"]["type"]))

    @app.function(id="watch", trigger=on_event("watch"))
    async def watch(ctx: Any) -> Any:
        ev = await ctx.step.wait_for_event(
            "done", event="durable/function.finished", timeout="1h",
            if_="async.data.function_id == 'ok'")
        return ev.data["result"]

    engine = TestEngine(app)
    [watcher] = engine.send(Event("watch", {})).runs
    engine.send(Event("go/bad", {}))
    assert watcher.status == "waiting"
    engine.send(Event("go/ok", {"n": 5}))
    assert watcher.status == "completed" and watcher.output == {"total": 10}
    assert seen == [("bad", "ValueError")]


def test_a_function_triggered_by_system_events_does_not_retrigger_itself() -> None:
    app = App("a")

    @app.function(id="each", trigger=on_event("durable/function.finished"))
    async def each(ctx: Any) -> str:
        return str(ctx.event.data["function_id"])

    @app.function(id="go", trigger=on_event("go"))
    async def go(ctx: Any) -> None:
        return None

    engine = TestEngine(app)
    engine.send(Event("go", {}))
    engine.advance("1h")
    runs = engine.runs
    assert sorted(r.function_id for r in runs) == ["each", "go"]
    [each_run] = [r for r in runs if r.function_id == "each"]
    assert each_run.output == "go"
    # The listener's own finished event is stored (a wait may still see it).
    assert _system(engine, "finished", each_run.id) is not None


def test_sending_a_system_event_is_refused() -> None:
    engine = TestEngine(_outcomes_app())
    for name in ("durable/function.finished", "durable/function.failed",
                 "durable/function.cancelled"):
        with pytest.raises(InvalidEventError) as info:
            engine.send(Event(name, {"function_id": "ok", "run_id": "r"}))
        assert info.value.field == "event.name"


def test_send_event_of_a_system_event_is_refused_in_the_run() -> None:
    app = App("a")

    @app.function(id="f", trigger=on_event("go"), retries=0)
    async def f(ctx: Any) -> None:
        await ctx.step.send_event("fake", Event("durable/function.failed", {}))

    engine = TestEngine(app)
    [run] = engine.send(Event("go", {})).runs
    assert run.status == "failed" and run.error is not None
    assert run.error.type == "InvalidEventError"
    assert engine.store.get_event("failed:" + run.id) is not None  # its own, real one


def test_an_over_large_outcome_is_trimmed_from_the_system_event() -> None:
    app = App("a")

    @app.function(id="big", trigger=on_event("go"))
    async def big(ctx: Any) -> str:
        return "x" * 600_000

    engine = TestEngine(app)
    [run] = engine.send(Event("go", {"pad": "y" * 300_000})).runs
    assert run.status == "completed"
    data = _system(engine, "finished", run.id)["data"]  # type: ignore[index]
    assert data["trimmed"] == ["events", "result"]
    assert data["result"] is None and data["event"]["data"]["pad"] == "y" * 300_000


# --------------------------------------------------------------------------- on_failure


def _failing_app(handler_fails: bool = False) -> tuple[App, list[Any], list[int]]:
    app = App("a")
    handled: list[Any] = []
    attempts: list[int] = []

    async def on_fail(ctx: Any) -> str:
        handled.append(ctx.event.to_dict())

        def note() -> None:
            attempts.append(ctx.attempt)
            if handler_fails:
                raise RuntimeError("handler broke")

        await ctx.step.run("note", note)
        return "handled"

    @app.function(id="pay", trigger=on_event("pay"), retries=2, on_failure=on_fail)
    async def pay(ctx: Any) -> str:
        if ctx.event.data.get("fail"):
            raise NonRetriableError("card declined")
        return "paid"

    return app, handled, attempts


def test_the_failure_handler_is_a_function_of_the_app() -> None:
    app, _handled, _attempts = _failing_app()
    handler = app.get("pay-failure")
    assert handler.retries == 1
    assert app.get("pay").failure_handler == "pay-failure"
    [trigger] = handler.event_triggers
    assert trigger.event == "durable/function.failed"
    assert trigger.if_ == "event.data.function_id == 'pay'"


def test_the_failure_handler_runs_once_with_the_failure_event() -> None:
    app, handled, _attempts = _failing_app()
    engine = TestEngine(app)
    engine.send(Event("pay", {"n": 1}))
    assert handled == []  # a completed run starts no handler
    [failed] = engine.send(Event("pay", {"fail": True}, id="p2")).runs
    assert failed.status == "failed"
    engine.advance("1d")
    [event] = handled
    assert event["name"] == "durable/function.failed"
    assert event["id"] == f"failed:{failed.id}"
    data = event["data"]
    assert (data["function_id"], data["run_id"]) == ("pay", failed.id)
    error = data["error"]
    assert (error["type"], error["message"]) == ("NonRetriableError", "card declined")
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert "NonRetriableError: card declined" in error["traceback"]
    assert data["event"]["id"] == "p2" and data["event"]["data"] == {"fail": True}
    [handler_run] = [r for r in engine.runs if r.function_id == "pay-failure"]
    assert handler_run.output == "handled"


def test_a_cancelled_run_starts_no_failure_handler() -> None:
    app = App("a")
    handled: list[Any] = []

    async def on_fail(ctx: Any) -> None:
        handled.append(ctx.event)

    @app.function(id="nap", trigger=on_event("nap"), on_failure=on_fail)
    async def nap(ctx: Any) -> None:
        await ctx.step.sleep("zz", "1h")

    engine = TestEngine(app)
    [run] = engine.send(Event("nap", {})).runs
    engine.cancel_run(run.id)
    engine.advance("2h")
    assert handled == [] and len(engine.runs) == 1


def test_the_failure_handler_retries_once_by_default_and_never_recurses() -> None:
    app, handled, attempts = _failing_app(handler_fails=True)
    seen_failed: list[str] = []

    @app.function(id="all-failures", trigger=on_event("durable/function.failed"))
    async def all_failures(ctx: Any) -> None:
        seen_failed.append(ctx.event.data["function_id"])

    engine = TestEngine(app)
    [failed] = engine.send(Event("pay", {"fail": True})).runs
    engine.advance("7d")
    [handler_run] = [r for r in engine.runs if r.function_id == "pay-failure"]
    assert handler_run.status == "failed"
    assert attempts == [0, 1]  # one retry
    assert len(handled) >= 1
    # The handler's failure is stored and announced, but starts no other run: no second
    # handler, and the catch-all failure listener ran for ``pay`` only.
    assert _system(engine, "failed", handler_run.id) is not None
    assert sorted(r.function_id for r in engine.runs) == ["all-failures", "pay", "pay-failure"]
    assert seen_failed == ["pay"]
    assert failed.status == "failed"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"on_failure": lambda ctx: None}, "on_failure"),
])
def test_on_failure_errors_at_definition(kwargs: dict[str, Any], field: str) -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError) as info:
        app.function(id="f", trigger=on_event("go"), **kwargs)
    assert info.value.field == field


def test_on_failure_id_must_be_free_and_short_enough() -> None:
    async def handler(ctx: Any) -> None:
        return None

    async def body(ctx: Any) -> None:
        return None

    app = App("a")
    app.function(id="f-failure")(body)
    with pytest.raises(FunctionConfigError) as info:
        app.function(id="f", on_failure=handler)
    assert info.value.field == "on_failure" and "f-failure" in str(info.value)
    with pytest.raises(FunctionConfigError) as info:
        app.function(id="x" * 125, on_failure=handler)
    assert info.value.field == "on_failure"


# --------------------------------------------------------------------------- the emitter


def test_end_events_carry_the_cancel_reason_and_are_always_valid() -> None:
    """``Engine.end_events`` is the one emitter (cancel-on and timeouts call it with their
    reason); whatever the run held, its events are valid events."""
    from durable_core.core._model import ErrorInfo
    from durable_core.engine._engine import Engine

    engine = Engine(App("a"), MemoryStore(), owner="t", entropy=lambda n: b"\0" * n)
    trigger = Event("go", {"x": 1}, id="e1", ts=1_767_225_600_000).to_json()
    now = 1_767_225_600_000
    pairs = engine.end_events("r1", "f", [trigger], "cancelled", now,
                              error=ErrorInfo("Cancelled", "too slow"), reason="timeout")
    assert [run_id for run_id, _ in pairs] == ["r1", "r1"]
    finished, cancelled = (Event.from_json(text) for _, text in pairs)
    assert (finished.name, finished.id) == ("durable/function.finished", "finished:r1")
    assert (cancelled.name, cancelled.id) == ("durable/function.cancelled", "cancelled:r1")
    assert cancelled.data["reason"] == "timeout" and cancelled.ts == now
    assert cancelled.data["error"] == {"type": "Cancelled", "message": "too slow"}
    # A trigger that is not valid JSON any more, an error with a lone surrogate: still valid.
    [(_, text), _failed] = engine.end_events(
        "r2", "f", ["{not json"], "failed", now, error=ErrorInfo("E\ud800", "m" * 600_000))
    ev = Event.from_json(text)
    assert ev.data["event"] is None and ev.data["error"]["type"] == "E\ufffd"
    assert ev.data["trimmed"] == ["events", "event", "error"]


def test_the_async_client_shows_folded_triggers() -> None:
    import asyncio

    from durable_core import AsyncClient

    app, _seen = _keyed_app()

    async def main() -> list[SkippedTrigger]:
        client = AsyncClient(MemoryStore(), app=app)
        await client.send(Event("cart/checkout", {"cart": "c1"}, id="a"))
        await client.send(Event("cart/checkout", {"cart": "c1"}, id="b"))
        return await client.skipped_triggers(function_id="checkout")

    [skip] = asyncio.run(main())
    assert skip.event_id == "b"
