"""The poison matrix: nothing a user sends, stores or returns stops a worker.

Each class of poison (deep data, lone surrogates in every string field, NUL characters, huge
and expensive CEL, oversized payloads) goes through a real trio :class:`Worker` on the memory,
SQLite and PostgreSQL stores, next to 100 healthy runs. Bad data is refused where it enters
(``Event``, ``send``, ``ctx.step.*``, the app definition) with a typed error naming the field;
whatever still gets in fails *that* run within one attempt with a typed error; the worker stays
up and every healthy run completes with its output.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings

import stores
from durable_core import (
    App,
    BackgroundWorker,
    Context,
    Event,
    NonRetriableError,
    Worker,
    on_event,
)
from durable_core.base._cel import MAX_EVALUATION_COST, compile_expression
from durable_core.base._errors import (
    FunctionConfigError,
    InvalidEventError,
    InvalidExpressionError,
    ValidationError,
)
from durable_core.base._serde import MAX_JSON_DEPTH, dumps
from durable_core.core._context import RunRequest
from durable_core.core._machine import MAX_STEP_OUTPUT_BYTES
from durable_core.drivers._clock import wall_clock_ms
from durable_core.engine._engine import MAX_COMMIT_FAILURES
from durable_core.store import Store

HEALTHY = 100
EXPENSIVE = "event.data.xs.all(x, event.data.xs.all(y, x + y >= 0))"
EXPENSIVE_WAIT = "async.data.xs.all(x, async.data.xs.all(y, x + y >= 0))"


def nest(depth: int) -> Any:
    """A value nested ``depth`` lists deep (``nest(2) == [[0]]``)."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def nest_json(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


# ------------------------------------------------------------------------------ the stores


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    if kind == "memory":
        s: Store = stores.MemoryStore()
    elif kind == "sqlite":
        s = stores.open(f"sqlite:///{tmp_path / 'poison.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        schema = request.getfixturevalue("pg_schema")
        s = stores.open(f"{url}?schema={schema}")
    yield s
    s.close()


def sql_only(store: Store) -> None:
    if isinstance(store, stores.MemoryStore):
        pytest.skip("the memory store accepts any Python string; nothing to refuse")


async def wait_until(pred: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``pred`` until it holds (the timeout only stops a broken test from hanging)."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


def run_worker(
    app: App, store: Store, body: Callable[[Worker], Awaitable[None]], **options: Any
) -> Worker:
    """Run ``body`` against a real worker (real time), then stop it gracefully. The worker
    must still be running when ``body`` ends: any exception from it fails the test."""
    worker = Worker(app, store, poll_interval=0.05, **options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await body(worker)
            assert not worker._stopping  # still up, nobody stopped it
            worker.stop()

    trio.run(main)
    return worker


# ------------------------------------------------------------------------------ the app


def poison_app(calls: dict[str, int]) -> App:
    """A healthy function and one function per kind of poison (each on its own event)."""
    app = App("poison")

    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    def value_step(name: str, value: Any) -> Callable[[], Any]:
        def body() -> Any:
            count(name)
            return value

        return body

    @app.function(id="healthy", trigger=on_event("h"))
    async def healthy(ctx: Context) -> dict[str, int]:
        i = ctx.event.data["i"]
        a = await ctx.step.run("a", lambda: i + 1)
        b = await ctx.step.run("b", lambda: a * 2)
        return {"i": i, "b": b}

    step_outputs = {
        "deep-step-output": nest(400),
        "surrogate-step-output": "text \udc80 from json.loads",
        "surrogate-in-list-output": {"k": ["ok", "\udc80"]},
        "surrogate-key-output": {"\ud800": 1},
        "oversized-step-output": "x" * (MAX_STEP_OUTPUT_BYTES + 1),
    }
    for name, value in step_outputs.items():

        async def flow(ctx: Context, _name: str = name, _value: Any = value) -> str:
            await ctx.step.run("produce", value_step(_name, _value))
            return "unreachable"

        app.function(id=name, trigger=on_event(f"p/{name}"), retries=3)(flow)

    run_outputs = {"deep-run-output": nest(400), "surrogate-run-output": {"s": "\udfff"}}
    for name, value in run_outputs.items():

        async def flow_out(ctx: Context, _value: Any = value) -> Any:
            return _value

        app.function(id=name, trigger=on_event(f"p/{name}"), retries=3)(flow_out)

    @app.function(id="step-id-surrogate", trigger=on_event("p/step-id-surrogate"))
    async def step_id_surrogate(ctx: Context) -> None:
        await ctx.step.run("fetch-\ud800", value_step("step-id-surrogate", 1))

    @app.function(id="step-id-nul", trigger=on_event("p/step-id-nul"))
    async def step_id_nul(ctx: Context) -> None:
        await ctx.step.run("fetch-\x00", value_step("step-id-nul", 1))

    @app.function(id="sent-name-nul", trigger=on_event("p/sent-name-nul"))
    async def sent_name_nul(ctx: Context) -> None:
        await ctx.step.send_event("send", Event("order/\x00created", {}))

    @app.function(id="wait-name-nul", trigger=on_event("p/wait-name-nul"))
    async def wait_name_nul(ctx: Context) -> None:
        await ctx.step.wait_for_event("w", event="x\x00", timeout="1h")

    @app.function(id="invoke-deep-data", trigger=on_event("p/invoke-deep-data"))
    async def invoke_deep(ctx: Context) -> None:
        await ctx.step.invoke("i", function="healthy", data={"i": nest(MAX_JSON_DEPTH + 1)})

    @app.function(id="error-message", trigger=on_event("p/error-message"))
    async def error_message(ctx: Context) -> None:
        def fail() -> None:
            count("error-message")
            raise NonRetriableError("bad \x00 and \udc80 in a message")

        await ctx.step.run("fail", fail)

    @app.function(id="expensive-wait", trigger=on_event("p/expensive-wait"))
    async def expensive_wait(ctx: Context) -> dict[str, Any]:
        got = await ctx.step.wait_for_event("w", event="cel/go", timeout="1h",
                                            if_=EXPENSIVE_WAIT)
        return {"got": None if got is None else got.data["n"]}

    @app.function(id="expensive-trigger", trigger=on_event("cel/t", if_=EXPENSIVE))
    async def expensive_trigger(ctx: Context) -> str:
        return "matched"

    @app.function(id="raw", trigger=on_event("p/raw"))
    async def raw(ctx: Context) -> str:
        count("raw")
        return "loaded"

    return app


#: Poison function id -> (run status, error type of the run, error type of its first step).
EXPECTED: dict[str, tuple[str, str, str | None]] = {
    "deep-step-output": ("failed", "StepError", "SerializationError"),
    "surrogate-step-output": ("failed", "StepError", "SerializationError"),
    "surrogate-in-list-output": ("failed", "StepError", "SerializationError"),
    "surrogate-key-output": ("failed", "StepError", "SerializationError"),
    "oversized-step-output": ("failed", "StepError", "LimitExceededError"),
    "deep-run-output": ("failed", "SerializationError", None),
    "surrogate-run-output": ("failed", "SerializationError", None),
    "step-id-surrogate": ("failed", "ValidationError", None),
    "step-id-nul": ("failed", "ValidationError", None),
    "sent-name-nul": ("failed", "InvalidEventError", None),
    "wait-name-nul": ("failed", "InvalidEventError", None),
    "invoke-deep-data": ("failed", "InvalidEventError", None),
    "error-message": ("failed", "StepError", "NonRetriableError"),
}


def test_poison_matrix(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    calls: dict[str, int] = {}
    app = poison_app(calls)
    client_events = [Event(f"p/{name}", {}) for name in EXPECTED]
    healthy = [Event("h", {"i": i}) for i in range(HEALTHY)]
    xs = {"xs": list(range(1000))}

    # Events stored by something that skipped validation (an older version, another
    # writer): a lone surrogate, depth over the limit.
    raw_texts = [
        '{"name":"p/raw","data":{"s":"\\ud800"},"id":"raw-surrogate","ts":1}',
        '{"name":"p/raw","data":{"d":' + nest_json(MAX_JSON_DEPTH + 5) + '},"id":"raw-deep",'
        '"ts":1}',
    ]

    async def body(worker: Worker) -> None:
        # Half the healthy runs before the poison, half after, all in flight together.
        await worker.send(healthy[: HEALTHY // 2])
        await worker.send([*client_events, Event("p/expensive-wait", {})])
        store.append_events(raw_texts, 1)
        worker.wake()
        await worker.send(Event("cel/t", xs))  # the trigger's filter runs out of budget
        await worker.send(healthy[HEALTHY // 2 :])
        await wait_until(lambda: len(store.list_runs(function_id="raw", limit=10)) == 2)
        await wait_until(lambda: store.find_waits("cel/go", wall_clock_ms()) != [])
        await worker.send(Event("cel/go", {**xs, "n": 1}))  # the wait's match runs out
        await worker.send(Event("cel/go", {"xs": [1], "n": 2}))  # this one matches
        await wait_until(lambda: all(
            r.status in ("completed", "failed") for r in store.list_runs(limit=1000)
        ) and len(store.list_runs(limit=1000)) == HEALTHY + len(EXPECTED) + 3)

    worker = run_worker(app, store, body)

    runs = {r.id: r for r in store.list_runs(limit=1000)}
    by_function: dict[str, list[Any]] = {}
    for r in runs.values():
        by_function.setdefault(r.function_id, []).append(r)
    outputs = sorted(json.loads(r.output)["i"] for r in by_function["healthy"]
                     if r.status == "completed" and json.loads(r.output)["b"] ==
                     2 * (json.loads(r.output)["i"] + 1))
    assert outputs == list(range(HEALTHY))
    from durable_core.engine._views import run_view

    for name, (status, error_type, step_error) in EXPECTED.items():
        [run] = by_function[name]
        view = run_view(run, store.load_journal(run.id))
        assert (view.status, view.error and view.error.type) == (status, error_type), name
        if step_error is not None:
            assert view.steps[0].error is not None
            assert view.steps[0].error.type == step_error, name
            assert view.steps[0].attempts == 1, name
    # Each poisoned step body ran once: the failure is not retried.
    for name in ("deep-step-output", "surrogate-step-output", "surrogate-in-list-output",
                 "surrogate-key-output", "error-message"):
        assert calls[name] == 1, name
    # Refused ids never ran their body.
    assert "step-id-surrogate" not in calls and "step-id-nul" not in calls
    # The stored error message was made storable, not dropped.
    [err_run] = by_function["error-message"]
    assert err_run.error.message.count("\ufffd") >= 2 and "\x00" not in err_run.error.message
    # The step error names the step and the cause.
    deep = run_view(by_function["deep-step-output"][0],
                    store.load_journal(by_function["deep-step-output"][0].id))
    assert "'produce'" in deep.steps[0].error.message
    assert "nested" in deep.steps[0].error.message
    # CEL over budget: the trigger did not match, the wait did not resume on that event.
    assert "expensive-trigger" not in by_function
    [waiter] = by_function["expensive-wait"]
    assert (waiter.status, json.loads(waiter.output)) == ("completed", {"got": 2})
    assert sum("cost budget" in r.getMessage() for r in caplog.records) >= 2
    # Raw poison: the runs the stored events started failed at load with a typed error,
    # without running the body.
    assert worker.engine.unroutable_events == 0
    assert sorted((r.status, r.error.type) for r in by_function["raw"]) == [
        ("failed", "InvalidEventError"), ("failed", "InvalidEventError")]
    assert "raw" not in calls


# ------------------------------------------------------------------------------ at the door


def deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("make", "field", "fragment"),
    [
        (lambda: Event("e", deep_dict(980)), "event.data", "nested more than 64"),
        (lambda: Event("e", {"a": nest(MAX_JSON_DEPTH)}), "event.data", "nested more than 64"),
        (lambda: Event("e\ud800"), "event.name", "lone surrogate"),
        (lambda: Event("e", id="id-\udc00"), "event.id", "lone surrogate"),
        (lambda: Event("e", {"k\udc00": 1}), "event.data", "lone surrogate"),
        (lambda: Event("e", {"k": ["v", {"w": "\udbff"}]}), "event.data", "lone surrogate"),
        (lambda: Event("e\x00"), "event.name", "NUL"),
        (lambda: Event("e", id="a\x00b"), "event.id", "NUL"),
        (lambda: Event("e", id="i" * 513), "event.id", "512 bytes"),
        (lambda: Event("e" * 513), "event.name", "512 bytes"),
        (lambda: Event("e", {"s": "x" * 600_000}), "event", "524288 bytes"),
        (lambda: Event.from_json('{"name":"e","data":' + nest_json(5000) + "}"), "event.data",
         "nested"),
    ],
)
def test_poison_events_are_refused_at_construction(
    make: Callable[[], Event], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidEventError) as info:
        make()
    assert info.value.field == field
    assert fragment in str(info.value)


def test_nul_in_event_data_is_stored_and_read_back(store: Store) -> None:
    app = App("nul")

    @app.function(id="echo", trigger=on_event("e"))
    async def echo(ctx: Context) -> Any:
        return await ctx.step.run("s", lambda: ctx.event.data["s"] + "\x00!")

    async def body(worker: Worker) -> None:
        await worker.send(Event("e", {"s": "a\x00b\u00e9"}))
        await wait_until(lambda: [r.status for r in store.list_runs()] == ["completed"])

    run_worker(app, store, body)
    [run] = store.list_runs()
    assert json.loads(run.output or "") == "a\x00b\u00e9\x00!"


def test_send_refuses_what_is_not_an_event(store: Store) -> None:
    client = stores_client(store)
    with pytest.raises(InvalidEventError, match="expected Event objects"):
        client.send([{"name": "e"}])  # type: ignore[list-item]


def stores_client(store: Store) -> Any:
    from durable_core import Client

    return Client(store)


def test_a_cancel_reason_a_store_cannot_hold_is_refused(store: Store) -> None:
    client = stores_client(store)
    for reason in ("why \ud800", "why \x00"):
        with pytest.raises(ValidationError) as info:
            client.cancel_run("r_any", reason=reason)  # checked before the run is looked up
        assert info.value.field == "cancel_run(reason)"


def test_definition_time_limits() -> None:
    literal = "[" + ",".join(str(i) for i in range(100_000)) + "].size() > 0"
    with pytest.raises(InvalidExpressionError, match="over the limit of 4096") as info:
        App("a").function(id="f", trigger=on_event("e", if_=literal))(_noop)
    assert info.value.field == "trigger[0].if_"
    with pytest.raises(FunctionConfigError, match="over the limit of 512 bytes"):
        on_event("e" * 513)
    with pytest.raises(FunctionConfigError, match="NUL"):
        on_event("e\x00")
    with pytest.raises(FunctionConfigError, match="lone surrogate"):
        on_event("e\udc00")


async def _noop(ctx: Context) -> None:
    return None


def test_cel_budget_is_a_typed_error_on_that_evaluation() -> None:
    expression = compile_expression(EXPENSIVE, field="trigger[0].if_", variables=("event",))
    activation = {"event": {"data": {"xs": list(range(1000))}}}
    with pytest.raises(InvalidExpressionError, match="cost budget") as info:
        expression.evaluate(activation)
    assert info.value.field == "trigger[0].if_"
    assert str(MAX_EVALUATION_COST) in str(info.value)
    assert expression.matches(activation) is False
    # Cheap evaluations over the same data still work, and a small nested loop fits.
    assert expression.evaluate({"event": {"data": {"xs": list(range(20))}}}) is True
    exists = compile_expression("event.data.xs.exists(x, x == 999)", field="f",
                                variables=("event",))
    assert exists.evaluate(activation) is True
    # Growing data doubles per step: the data produced is charged too.
    doubling = compile_expression('event.data.xs.reduce(r, i, "ab", r + r).size()', field="f",
                                  variables=("event",))
    with pytest.raises(InvalidExpressionError, match="cost budget"):
        doubling.evaluate({"event": {"data": {"xs": list(range(64))}}})


def test_cel_on_deep_data_is_a_typed_error() -> None:
    expression = compile_expression("size(event.data) > 0", field="f", variables=("event",))
    with pytest.raises(InvalidExpressionError, match="nested too deeply"):
        expression.evaluate({"event": {"data": deep_dict(5000)}})


def test_sleep_until_is_bounded_like_sleep() -> None:
    from durable_core.testing import TestEngine

    app = App("s")

    @app.function(id="far", trigger=on_event("go"))
    async def far(ctx: Context) -> None:
        await ctx.step.sleep_until("nap", "9999-12-31T00:00:00Z")

    engine = TestEngine(app, start="2026-01-01T00:00:00Z")
    [run] = engine.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "InvalidDurationError"
    assert "366 days" in run.error.message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runs", "list", "--limit", str(10**20), "--store", "memory://"],
         "--limit must be between 1 and 100000"),
        (["runs", "list", "--limit", "0", "--store", "memory://"], "--limit must be between"),
        (["worker", "x:app", "--poll-interval", "-1"], "--poll-interval must be more than 0"),
        (["worker", "x:app", "--poll-interval", "nan"], "--poll-interval must be more than 0"),
        (["worker", "x:app", "--poll-interval", "inf"], "--poll-interval must be more than 0"),
        (["worker", "x:app", "--max-runs", "0"], "--max-runs must be between 1"),
        (["worker", "x:app", "--processes", "0"], "--processes must be between 1"),
        (["worker", "x:app", "--max-runs", "many"], "--max-runs must be a whole number"),
    ],
)
def test_cli_options_are_checked_at_parse(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from durable_core.cli._main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "e\udc80", "--store", "memory://"], "event.name"),
        (["send", "e", "--id", "a\x00", "--store", "memory://"], "event.id"),
        (["send", "e", "--data", '{"k": "\\ud800"}', "--store", "memory://"], "event.data"),
        (["send", "e", "--data", '{"k":' + nest_json(980) + "}", "--store", "memory://"],
         "nested more than 64"),
    ],
)
def test_durable_send_refuses_poison_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from durable_core.cli._main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("durable: error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:S3cretPW@[::1:5432/x", "not a valid PostgreSQL URL"),
        ("postgresql://u:S3cretPW@host:99999/x", "not a valid PostgreSQL URL"),
        ("postgresql://", "names no host and no database"),
    ],
)
def test_bad_postgres_urls_are_a_validation_error_without_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        stores.open(url)
    assert info.value.field == "store"
    assert "S3cretPW" not in str(info.value)


# ------------------------------------------------------------------------------ defence in depth


def test_an_event_that_cannot_be_parsed_is_left_unrouted(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """An event whose stored text was damaged (by hand, another writer, a disk) is logged
    and marked routed without starting anything; the events routed with it start their
    runs and the worker goes on."""
    sql_only(store)
    caplog.set_level(logging.WARNING)
    app = App("route")

    @app.function(id="f", trigger=on_event("h"))
    async def f(ctx: Context) -> int:
        return int(await ctx.step.run("a", lambda: ctx.event.data["i"] * 2))

    client = stores_client(store)
    ids = client.send([Event("h", {"i": i}) for i in range(10)])
    damage(store, ids[3], '{"name":"h","data":{"i":')  # truncated JSON

    async def body(worker: Worker) -> None:
        await wait_until(lambda: len(store.list_runs(function_id="f", limit=100)) == 9 and all(
            r.status == "completed" for r in store.list_runs(function_id="f", limit=100)))
        # A fresh event after the damaged one is routed as usual.
        await worker.send(Event("h", {"i": 100}))
        await wait_until(lambda: len(store.list_runs(function_id="f", limit=100)) == 10 and all(
            r.status == "completed" for r in store.list_runs(function_id="f", limit=100)))
        assert worker.engine.unroutable_events == 1

    run_worker(app, store, body)
    outputs = sorted(int(r.output or "0") for r in store.list_runs(function_id="f", limit=100))
    assert outputs == sorted([2 * i for i in range(10) if i != 3] + [200])
    assert store.unrouted_events(10) == []
    assert any("cannot be routed" in r.getMessage() and ids[3] in r.getMessage()
               for r in caplog.records)


def test_a_child_run_that_cannot_be_loaded_fails_its_parents_invoke() -> None:
    """A run whose stored event is poison fails at load; if it is an invoked child, its
    parent is told, as when a child fails any other way."""
    import os

    from durable_core.engine._engine import Engine
    from durable_core.store import CommitBatch, NewRun

    app = App("kids")

    @app.function(id="child", trigger=on_event("c"))
    async def child(ctx: Context) -> None:
        return None

    store = stores.MemoryStore()
    bad = '{"name":"c","data":{"s":"\\udc80"},"id":"e1","ts":1}'
    store.commit(CommitBatch(now=1, runs=(
        NewRun(id="r_child", function_id="child", events=(bad,), event_ids=("e1",),
               created_at=1, parent_run_id="r_parent"),
    )))
    engine = Engine(app, store, owner="w", entropy=os.urandom)
    plan = engine.claim(2)
    assert plan is not None and plan.steps == []
    [write] = plan.batch.writes
    assert (write.run_id, write.status) == ("r_child", "failed")
    assert write.error is not None and write.error.type == "InvalidEventError"
    [(parent, signal)] = plan.batch.signals
    assert (parent, signal.kind, signal.key) == ("r_parent", "invoke", "r_child")
    assert json.loads(signal.payload)["error"]["type"] == "InvalidEventError"
    assert engine.commit([plan]) == []
    assert store.get_run("r_child").status == "failed"
    assert engine.poisoned_runs == 1


def damage(store: Store, event_id: str, text: str) -> None:
    """Overwrite a stored event's text behind the store's back."""
    if "Postgres" in type(store).__name__:
        import psycopg
        from psycopg import sql

        schema = store.schema  # type: ignore[attr-defined]
        with psycopg.connect(store._url, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(sql.SQL("UPDATE {}.events SET data = %s WHERE id = %s").format(
                sql.Identifier(schema)), (text, event_id))
    else:
        import sqlite3

        conn = sqlite3.connect(store._path)  # type: ignore[attr-defined]
        with conn:
            conn.execute("UPDATE events SET data = ? WHERE id = ?", (text, event_id))
        conn.close()


def test_a_commit_refused_for_its_data_fails_the_run_after_a_few_attempts(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A step id that bypassed validation and that the store cannot hold: the run is failed
    after MAX_COMMIT_FAILURES refused commits instead of re-running the step for ever, and
    the runs committed next to it are not held up."""
    sql_only(store)
    caplog.set_level(logging.WARNING)
    calls: dict[str, int] = {}
    app = App("refused")
    bad_id = "fetch-\x00" if "Postgres" in type(store).__name__ else "fetch-\ud800"

    def side_effect() -> int:
        calls["bad"] = calls.get("bad", 0) + 1
        return 1

    @app.function(id="bad", trigger=on_event("bad"))
    async def bad(ctx: Context) -> None:
        await RunRequest(bad_id, side_effect, (), {})  # skips ctx.step.run's checks

    @app.function(id="ok", trigger=on_event("ok"))
    async def ok(ctx: Context) -> int:
        a = await ctx.step.run("a", lambda: ctx.event.data["i"])
        return int(await ctx.step.run("b", lambda: a + 1))

    async def body(worker: Worker) -> None:
        await worker.send([Event("bad"), *(Event("ok", {"i": i}) for i in range(20))])
        await wait_until(lambda: [r.status for r in store.list_runs(function_id="bad")]
                         == ["failed"])
        await wait_until(lambda: all(
            r.status == "completed" for r in store.list_runs(function_id="ok", limit=100)
        ))

    run_worker(app, store, body, lease_ms=1_000)
    [run] = store.list_runs(function_id="bad")
    assert run.error is not None and run.error.type == "StoreError"
    assert f"{MAX_COMMIT_FAILURES} times in a row" in run.error.message
    assert calls["bad"] == MAX_COMMIT_FAILURES
    oks = sorted(int(r.output or "0") for r in store.list_runs(function_id="ok", limit=100))
    assert oks == [i + 1 for i in range(20)]
    assert any("refused its writes" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ generated data

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    # Lone surrogates and NUL characters, which json.loads of external data can produce.
    st.text(alphabet=st.sampled_from(["a", "\x00", "\ud800", "\udfff", "\u00e9", "\U0001f600"]),
            max_size=4),
)
json_values = st.recursive(
    _json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children,
                                                        max_size=3)
    ),
    max_leaves=12,
)


def _storable(value: Any) -> bool:
    try:
        dumps(value, what="value")
    except ValidationError:
        return False
    return True


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def echo_worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundWorker]:
    """One real worker (in a background thread) per store for every generated example."""
    app = App("echo")

    @app.function(id="echo", trigger=on_event("echo"))
    async def echo(ctx: Context) -> Any:
        value = await ctx.step.run("s", lambda: ctx.event.data["v"])
        return {"v": value}

    @app.function(id="emit", trigger=on_event("emit"))
    async def emit(ctx: Context) -> Any:
        return await ctx.step.run("s", lambda: _DECODED[ctx.event.data["k"]])

    schema = None
    if request.param == "sqlite":
        store = stores.open(f"sqlite:///{tmp_path_factory.mktemp('hyp') / 'h.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        schema = f"test_{uuid.uuid4().hex[:16]}"
        store = stores.open(f"{url}?schema={schema}")
    try:
        with BackgroundWorker(app, store, poll_interval=0.02) as bg:
            yield bg
    finally:
        store.close()
        if schema is not None:
            drop_schema(request.getfixturevalue("pg_url"), schema)


_DECODED: dict[str, Any] = {}


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _wait_for_run(bg: BackgroundWorker, event_id: str) -> Any:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = bg.client.list_runs(event_id=event_id)
        if runs and runs[0].status in ("completed", "failed"):
            return runs[0]
        time.sleep(0.01)
    raise AssertionError(f"the run of event {event_id} did not end")


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values, name=st.text(min_size=1, max_size=6))
def test_generated_event_data_through_a_real_worker(
    echo_worker: BackgroundWorker, value: Any, name: str
) -> None:
    """Arbitrary JSON-ish data is either refused at send with InvalidEventError, or runs
    and comes back unchanged; arbitrary text as an event name is refused or accepted, never
    a crash."""
    try:
        Event(name, {})
    except InvalidEventError as exc:
        assert exc.field == "event.name"
    try:
        [event_id] = echo_worker.client.send(Event("echo", {"v": value}))
    except InvalidEventError as exc:
        assert exc.field == "event.data"
        assert not _storable({"v": value})
        event("refused at send")
        return
    event("ran")
    run = _wait_for_run(echo_worker, event_id)
    assert run.status == "completed"
    assert run.output == {"v": json.loads(json.dumps(value))}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values, depth=st.integers(min_value=0, max_value=3 * MAX_JSON_DEPTH))
def test_generated_step_outputs_through_a_real_worker(
    echo_worker: BackgroundWorker, value: Any, depth: int
) -> None:
    """Whatever a step returns (lone surrogates, deep nesting), the run ends: completed with
    the value, or failed with a SerializationError naming the step; the worker goes on."""
    output = nest(depth) if depth > MAX_JSON_DEPTH else [value]
    key = f"k{len(_DECODED)}"
    _DECODED[key] = output
    [event_id] = echo_worker.client.send(Event("emit", {"k": key}))
    run = _wait_for_run(echo_worker, event_id)
    if _storable(output):
        event("completed")
        assert run.status == "completed"
        assert run.output == json.loads(json.dumps(output))
    else:
        event("failed")
        assert run.status == "failed"
        assert run.steps[0].error is not None
        assert run.steps[0].error.type == "SerializationError"
        assert "'s'" in run.steps[0].error.message
