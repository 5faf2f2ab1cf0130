"""The step primitives: memoized run steps, id counters, sleeps, waits, invokes, sent events,
ctx.gather, and typed step outputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

import attrs
import pytest

from durable_core import (
    App,
    Event,
    InvalidDurationError,
    NonRetriableError,
    RunMachine,
    StepError,
    on_event,
)
from durable_core.core._model import (
    AppendJournal,
    CompleteRun,
    EmitEvents,
    ExecuteStep,
    RunStarted,
    StartRun,
    StepCompleted,
    StepFailed,
)
from durable_core.testing import RunHandle, TestEngine

MS = dt.timedelta(milliseconds=1)
START = "2026-01-01T00:00:00Z"


def now_ms(eng: TestEngine) -> int:
    return int(eng.now.timestamp() * 1000)


def rebuild(eng: TestEngine, run: RunHandle) -> RunMachine:
    """A fresh machine for ``run`` built from its stored journal."""
    rec = eng.store.get_run(run.id)
    return RunMachine(
        eng.app.get(rec.function_id), rec.id, [Event.from_json(t) for t in rec.events],
        rec.created_at, eng.store.load_journal(rec.id), parent_run_id=rec.parent_run_id,
    )


def replay(eng: TestEngine, run: RunHandle) -> tuple[RunMachine, list[Any]]:
    m = rebuild(eng, run)
    return m, m.handle(RunStarted(now_ms(eng)))


def assert_no_side_effects(cmds: list[Any]) -> None:
    bad = [c for c in cmds if isinstance(c, ExecuteStep | EmitEvents | StartRun | AppendJournal)]
    assert bad == []


# --------------------------------------------------------------------------- memoization


def _memo_app() -> tuple[App, dict[str, int]]:
    app = App("memo")
    counts: dict[str, int] = {"top": 0, "a": 0, "b": 0, "fails": 0, "fallback": 0}

    def body(name: str, value: Any) -> Any:
        counts[name] += 1
        return value

    def broken() -> None:
        counts["fails"] += 1
        raise NonRetriableError("permanently broken")

    @app.function(id="memo", trigger=on_event("go"))
    async def memo(ctx):  # type: ignore[no-untyped-def]
        counts["top"] += 1
        a = await ctx.step.run("a", body, "a", {"v": 1})
        try:
            await ctx.step.run("broken", broken)
            fell_back = None
        except StepError as e:
            fell_back = await ctx.step.run("fallback", body, "fallback", e.error_message)
        await ctx.step.sleep("nap", "1h")
        b = await ctx.step.run("b", body, "b", [2, 3])
        return {"a": a, "fallback": fell_back, "b": b}

    return app, counts


def test_steps_run_once_live() -> None:
    app, counts = _memo_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    assert counts == {"top": 1, "a": 1, "b": 0, "fails": 1, "fallback": 1}
    eng.advance("1h")
    assert run.status == "completed"
    assert run.output == {"a": {"v": 1}, "fallback": "permanently broken", "b": [2, 3]}
    assert counts == {"top": 1, "a": 1, "b": 1, "fails": 1, "fallback": 1}


def test_resume_after_restart_replays_from_the_top_without_rerunning_steps() -> None:
    app, counts = _memo_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    # A new engine on the same store has no cached machine: it must rebuild from the journal.
    eng2 = TestEngine(app, start=eng.now, store=eng.store)
    eng2.advance("1h")
    run2 = eng2.run(run.id)
    assert run2.status == "completed"
    assert run2.output == {"a": {"v": 1}, "fallback": "permanently broken", "b": [2, 3]}
    assert counts["top"] == 2  # the code was re-entered from the top...
    assert counts == {"top": 2, "a": 1, "b": 1, "fails": 1, "fallback": 1}  # ...steps were not


def test_replay_of_finished_run_calls_no_bodies_and_reraises_recorded_step_error() -> None:
    app, counts = _memo_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    before = dict(counts)
    m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    # The recorded StepError was raised again (the fallback branch ran from its memo).
    [done] = [c for c in cmds if isinstance(c, CompleteRun)]
    assert done.output == eng.store.get_run(run.id).output
    assert counts == {**before, "top": before["top"] + 1}
    assert m.status == "completed"


def test_step_views_show_the_run() -> None:
    app, _ = _memo_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    steps = run.steps
    assert [(s.id, s.kind, s.status) for s in steps] == [
        ("a", "run", "completed"),
        ("broken", "run", "failed"),
        ("fallback", "run", "completed"),
        ("nap", "sleep", "completed"),
        ("b", "run", "completed"),
    ]
    assert [s.attempts for s in steps if s.kind == "run"] == [1, 1, 1, 1]
    assert steps[0].output == {"v": 1}
    assert steps[1].error is not None and steps[1].error.type == "NonRetriableError"


def test_step_body_args_kwargs_and_async_bodies() -> None:
    app = App("bodies")

    def add(a: int, b: int, *, c: int = 0) -> int:
        return a + b + c

    async def async_mul(a: int, b: int) -> int:
        return a * b

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        x = await ctx.step.run("add", add, 1, 2, c=3)
        y = await ctx.step.run("mul", async_mul, x, 7)
        return [x, y]

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == [6, 42]


def test_step_id_must_be_a_non_empty_string() -> None:
    app = App("ids")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.run("", lambda: 1)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ValidationError"


def test_awaiting_a_step_twice_is_a_clear_error() -> None:
    app = App("twice")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        step = ctx.step.run("a", lambda: 1)
        await step
        await step

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ValidationError"
    assert "awaited twice" in run.error.message


def test_first_sighting_fast_path_matches_the_key_rules() -> None:
    # Ids without ":" take a fast path on first sight; explicit "x:1" ids still never collide.
    app = App("keys")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        for sid in ("x", "y", "x", "x:2", "x", "y"):
            await ctx.step.run(sid, lambda: 1)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"
    assert [s.id for s in run.steps] == ["x", "y", "x:1", "x:2", "x:3", "y:1"]


# --------------------------------------------------------------------------- id counters


def test_repeated_step_ids_get_counters() -> None:
    app = App("counters")
    calls: list[int] = []

    def fetch(i: int) -> int:
        calls.append(i)
        return i * 10

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        out = [await ctx.step.run("fetch", fetch, i) for i in range(3)]
        out.append(await ctx.step.run("other", fetch, 9))
        return out

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == [0, 10, 20, 90]
    assert [s.id for s in run.steps] == ["fetch", "fetch:1", "fetch:2", "other"]
    assert [s.output for s in run.steps] == [0, 10, 20, 90]
    assert calls == [0, 1, 2, 9]
    _m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    assert calls == [0, 1, 2, 9]


def test_counter_ids_never_collide_with_explicit_ids() -> None:
    app = App("collide")
    started: list[int] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        a = await ctx.step.send_event("n", Event("hello", {"i": 0}))
        b = await ctx.step.send_event("n", Event("hello", {"i": 1}))
        c = await ctx.step.send_event("n:1", Event("hello", {"i": 2}))
        return [a, b, c]

    @app.function(id="h", trigger=on_event("hello"))
    async def h(ctx):  # type: ignore[no-untyped-def]
        started.append(ctx.event.data["i"])

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    ids = [s.id for s in run.steps]
    assert len(set(ids)) == 3, ids
    assert len({i for batch in run.output for i in batch}) == 3
    assert sorted(started) == [0, 1, 2]


# --------------------------------------------------------------------------- sleep


def _sleeper(arg: Any, *, until: bool = False) -> App:
    app = App("sleep")

    @app.function(id="s", trigger=on_event("go"))
    async def s(ctx):  # type: ignore[no-untyped-def]
        if until:
            r = await ctx.step.sleep_until("nap", arg)
        else:
            r = await ctx.step.sleep("nap", arg)
        return {"r": r, "now": ctx.now().isoformat()}

    return app


@pytest.mark.parametrize("duration", ["1h30m", 5400, 5400.0,
                                      dt.timedelta(hours=1, minutes=30), "90m", "1.5h"])
def test_sleep_never_fires_early(duration: Any) -> None:
    eng = TestEngine(_sleeper(duration), start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    assert run.steps[0].status == "sleeping"
    eng.advance(dt.timedelta(hours=1, minutes=30) - MS)
    assert run.status == "sleeping"
    eng.advance(MS)
    assert run.status == "completed"
    assert run.output == {"r": None, "now": "2026-01-01T01:30:00+00:00"}
    assert run.steps[0].status == "completed"


def test_zero_sleep_returns_at_once() -> None:
    eng = TestEngine(_sleeper(0), start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"


@pytest.mark.parametrize(
    "until",
    [dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC), "2026-01-01T02:00:00Z",
     "2026-01-01T03:00:00+01:00", dt.datetime(2026, 1, 1, 3,
                                              tzinfo=dt.timezone(dt.timedelta(hours=1)))],
)
def test_sleep_until_never_fires_early(until: Any) -> None:
    eng = TestEngine(_sleeper(until, until=True), start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    eng.advance_to("2026-01-01T01:59:59.999Z")
    assert run.status == "sleeping"
    eng.advance(MS)
    assert run.status == "completed"
    assert run.output["now"] == "2026-01-01T02:00:00+00:00"


def test_sleep_until_in_the_past_returns_at_once() -> None:
    eng = TestEngine(_sleeper("2025-12-31T00:00:00Z", until=True), start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"


@pytest.mark.parametrize(
    ("method", "arg", "field"),
    [
        ("sleep", "1x", "step.sleep('nap').duration"),
        ("sleep", -5, "step.sleep('nap').duration"),
        ("sleep", "367d", "step.sleep('nap').duration"),
        ("sleep", "", "step.sleep('nap').duration"),
        ("sleep_until", dt.datetime(2026, 1, 2), "step.sleep_until('nap').until"),
        ("sleep_until", "2026-01-02T00:00:00", "step.sleep_until('nap').until"),
        ("sleep_until", "tomorrow", "step.sleep_until('nap').until"),
    ],
)
def test_invalid_sleep_arguments_are_rejected_naming_the_field(
    method: str, arg: Any, field: str
) -> None:
    app = App("badsleep")
    seen: list[InvalidDurationError] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        try:
            getattr(ctx.step, method)("nap", arg)
        except InvalidDurationError as e:
            seen.append(e)
            raise

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"  # a validation error is not retried
    assert run.error is not None and run.error.type == "InvalidDurationError"
    [err] = seen
    assert err.field == field
    assert field in str(err)


# --------------------------------------------------------------------------- wait_for_event


def _waiter(timeout: Any = "1h", if_: str | None = "async.data.orderId == event.data.orderId",
            sleep_first: bool = False) -> tuple[App, list[Any]]:
    app = App("wait")
    got: list[Any] = []

    @app.function(id="w", trigger=on_event("order/created"))
    async def w(ctx):  # type: ignore[no-untyped-def]
        if sleep_first:
            await ctx.step.sleep("pause", "10m")
        ev = await ctx.step.wait_for_event("pay", event="pay/ok", timeout=timeout, if_=if_)
        got.append(ev)
        return None if ev is None else {"name": ev.name, "data": ev.data, "id": ev.id}

    return app, got


def test_wait_returns_the_matching_event() -> None:
    app, got = _waiter()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("order/created", {"orderId": 7})).runs
    assert run.status == "waiting"
    assert run.steps[0].status == "waiting"
    eng.send(Event("pay/ok", {"orderId": 6}))  # does not match: ignored
    eng.send(Event("pay/other", {"orderId": 7}))  # other name: ignored
    assert run.status == "waiting"
    eng.send(Event("pay/ok", {"orderId": 7, "amount": 3}, id="pay-7"))
    assert run.status == "completed"
    assert run.output == {"name": "pay/ok", "data": {"orderId": 7, "amount": 3}, "id": "pay-7"}
    [ev] = got
    assert isinstance(ev, Event)
    # On replay the code receives an Event again.
    _m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    assert isinstance(got[1], Event)
    assert got[1] == ev


def test_wait_without_condition_takes_the_first_event_with_the_name() -> None:
    app, _got = _waiter(if_=None)
    eng = TestEngine(app)
    [run] = eng.send(Event("order/created", {"orderId": 7})).runs
    eng.send(Event("pay/ok", {"orderId": 1}))
    assert run.output == {"name": "pay/ok", "data": {"orderId": 1}, "id": run.output["id"]}


def test_wait_times_out_with_none_never_early() -> None:
    app, got = _waiter(timeout="2h")
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("order/created", {"orderId": 7})).runs
    eng.advance(dt.timedelta(hours=2) - MS)
    assert run.status == "waiting"
    eng.advance(MS)
    assert run.status == "completed"
    assert run.output is None
    assert got == [None]
    # A late matching event changes nothing.
    eng.send(Event("pay/ok", {"orderId": 7}))
    assert run.output is None
    assert got == [None]


def test_wait_timeout_as_datetime() -> None:
    app, _got = _waiter(timeout=dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC))
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("order/created", {"orderId": 7})).runs
    eng.advance(dt.timedelta(minutes=30) - MS)
    assert run.status == "waiting"
    eng.advance(MS)
    assert run.status == "completed"
    assert run.output is None


def test_events_sent_before_the_wait_began_do_not_match() -> None:
    app, _got = _waiter(sleep_first=True)
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("order/created", {"orderId": 7})).runs
    assert run.status == "sleeping"
    eng.send(Event("pay/ok", {"orderId": 7}, id="early"))
    eng.advance("10m")
    assert run.status == "waiting"
    eng.advance("30m")
    assert run.status == "waiting"
    eng.send(Event("pay/ok", {"orderId": 7}, id="late"))
    assert run.status == "completed"
    assert run.output["id"] == "late"


def test_own_event_sent_before_the_wait_does_not_match() -> None:
    app = App("selfwait")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.send_event("announce", Event("pay/ok", {"orderId": 1}))
        ev = await ctx.step.wait_for_event("pay", event="pay/ok", timeout="1h")
        return None if ev is None else ev.data

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "waiting"
    eng.advance("1h")
    assert run.output is None


def test_concurrent_waits_each_get_their_own_event() -> None:
    app, _got = _waiter()
    eng = TestEngine(app)
    runs = eng.send([Event("order/created", {"orderId": i}) for i in (1, 2, 3)]).runs
    eng.send(Event("pay/ok", {"orderId": 2}))
    assert [r.status for r in runs] == ["waiting", "completed", "waiting"]
    eng.send(Event("pay/ok", {"orderId": 3}))
    eng.send(Event("pay/ok", {"orderId": 1}))
    assert [r.output["data"]["orderId"] for r in runs] == [1, 2, 3]


def test_invalid_wait_condition_fails_the_run() -> None:
    app, _got = _waiter(if_="async.data.x ==")
    eng = TestEngine(app)
    [run] = eng.send(Event("order/created", {"orderId": 7})).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "InvalidExpressionError"
    assert "step.wait_for_event('pay').if_" in run.error.message


# --------------------------------------------------------------------------- invoke


def _invoke_app(timeout: Any = "1h") -> App:
    app = App("inv")

    @app.function(id="child")
    async def child(ctx):  # type: ignore[no-untyped-def]
        if ctx.event.data.get("fail"):
            raise NonRetriableError("child broke")
        if ctx.event.data.get("sleep"):
            await ctx.step.sleep("z", ctx.event.data["sleep"])
        return {"doubled": ctx.event.data["n"] * 2}

    @app.function(id="parent", trigger=on_event("go"))
    async def parent(ctx):  # type: ignore[no-untyped-def]
        target = child if ctx.event.data.get("by_object") else "child"
        try:
            return await ctx.step.invoke("call", function=target, data=ctx.event.data,
                                         timeout=timeout)
        except StepError as e:
            return {"step_id": e.step_id, "type": e.error_type, "message": e.error_message}

    return app


@pytest.mark.parametrize("by_object", [False, True])
def test_invoke_returns_the_childs_output(by_object: bool) -> None:
    eng = TestEngine(_invoke_app())
    [run] = eng.send(Event("go", {"n": 21, "by_object": by_object})).runs
    assert run.status == "completed"
    assert run.output == {"doubled": 42}
    children = [r for r in eng.runs if r.function_id == "child"]
    assert len(children) == 1
    assert children[0].view().parent_run_id == run.id
    assert run.steps[0].kind == "invoke"


def test_invoke_waits_for_a_sleeping_child() -> None:
    eng = TestEngine(_invoke_app())
    [run] = eng.send(Event("go", {"n": 1, "sleep": "30m"})).runs
    assert run.status == "waiting"
    eng.advance(dt.timedelta(minutes=30) - MS)
    assert run.status == "waiting"
    eng.advance(MS)
    assert run.output == {"doubled": 2}


def test_invoke_raises_step_error_when_the_child_fails() -> None:
    eng = TestEngine(_invoke_app())
    [run] = eng.send(Event("go", {"n": 1, "fail": True})).runs
    assert run.status == "completed"
    assert run.output == {"step_id": "call", "type": "NonRetriableError",
                          "message": "child broke"}


def test_invoke_raises_step_error_on_timeout_never_early() -> None:
    eng = TestEngine(_invoke_app(timeout="1h"))
    [run] = eng.send(Event("go", {"n": 1, "sleep": "2h"})).runs
    eng.advance(dt.timedelta(hours=1) - MS)
    assert run.status == "waiting"
    eng.advance(MS)
    assert run.status == "completed"
    assert run.output["step_id"] == "call"
    assert run.output["type"] == "InvokeTimeoutError"


def test_invoke_of_unknown_function_fails_the_run() -> None:
    app = App("inv2")

    @app.function(id="p", trigger=on_event("go"))
    async def p(ctx):  # type: ignore[no-untyped-def]
        return await ctx.step.invoke("call", function="missing")

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "UnknownFunctionError"


# --------------------------------------------------------------------------- send_event


def _sender_app() -> tuple[App, list[Any], list[Any]]:
    app = App("send")
    returned: list[Any] = []
    received: list[Any] = []

    @app.function(id="sender", trigger=on_event("go"))
    async def sender(ctx):  # type: ignore[no-untyped-def]
        one = await ctx.step.send_event("one", Event("notify", {"k": 1}))
        many = await ctx.step.send_event(
            "many", [Event("notify", {"k": 2}), Event("notify", {"k": 3}, id="explicit")]
        )
        returned.append((one, many))
        if ctx.event.data.get("raise_once") and ctx.attempt == 0:
            raise RuntimeError("orchestration hiccup")
        return {"one": one, "many": many}

    @app.function(id="receiver", trigger=on_event("notify"))
    async def receiver(ctx):  # type: ignore[no-untyped-def]
        received.append((ctx.event.id, ctx.event.data["k"]))
        return ctx.event.data["k"]

    return app, returned, received


def test_send_event_returns_ids_and_triggers_functions() -> None:
    app, _returned, received = _sender_app()
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    out = run.output
    assert len(out["one"]) == 1 and len(out["many"]) == 2
    assert out["many"][1] == "explicit"
    assert sorted(received, key=lambda x: x[1]) == [
        (out["one"][0], 1), (out["many"][0], 2), ("explicit", 3)]
    assert len(set(out["one"] + out["many"])) == 3
    assert [s.kind for s in run.steps] == ["send_event", "send_event"]


def test_send_event_is_memoized_across_orchestration_retries() -> None:
    app, returned, received = _sender_app()
    eng = TestEngine(app)
    [run] = eng.send(Event("go", {"raise_once": True})).runs
    assert run.status == "sleeping"  # waiting for the run-level retry
    eng.advance("1m")
    assert run.status == "completed"
    assert len(returned) == 2
    assert returned[0] == returned[1]  # same ids on both attempts
    assert len(received) == 3  # each event was sent (and started a run) once
    assert len([r for r in eng.runs if r.function_id == "receiver"]) == 3


def test_send_event_ids_are_stable_on_replay() -> None:
    app, returned, received = _sender_app()
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    _m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    assert returned[0] == returned[1]
    assert len(received) == 3


def test_send_event_ids_differ_between_runs() -> None:
    app, returned, _received = _sender_app()
    eng = TestEngine(app)
    eng.send([Event("go"), Event("go")])
    assert returned[0][0] != returned[1][0]


# --------------------------------------------------------------------------- gather


def test_gather_returns_a_tuple_in_argument_order() -> None:
    app = App("gather")

    @app.function(id="g", trigger=on_event("go"))
    async def g(ctx):  # type: ignore[no-untyped-def]
        res = await ctx.gather(
            ctx.step.run("a", lambda: "A"),
            ctx.step.sleep("s", "2h"),
            ctx.step.run("b", lambda: "B"),
            ctx.step.sleep("t", "1h"),
        )
        lst = await ctx.gather([ctx.step.run("c", lambda: 1), ctx.step.run("d", lambda: 2)])
        return {"type": type(res).__name__, "res": list(res), "lst": list(lst)}

    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    eng.advance("1h")
    assert run.status == "sleeping"
    eng.advance(dt.timedelta(hours=1) - MS)
    assert run.status == "sleeping"
    eng.advance(MS)
    assert run.status == "completed"
    assert run.output == {"type": "tuple", "res": ["A", None, "B", None], "lst": [1, 2]}
    assert [s.id for s in run.steps] == ["a", "s", "b", "t", "c", "d"]


def test_gather_of_one_step_returns_a_one_tuple() -> None:
    app = App("gather1")
    seen: list[Any] = []

    @app.function(id="g", trigger=on_event("go"))
    async def g(ctx):  # type: ignore[no-untyped-def]
        res = await ctx.gather(ctx.step.run("only", lambda: [7]))
        seen.append(res)
        return repr(res)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    _m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    assert seen[0] == seen[1]
    assert seen == [([7],), ([7],)]


def test_gather_starts_all_steps_at_once() -> None:
    app = App("gather")

    @app.function(id="g")
    async def g(ctx):  # type: ignore[no-untyped-def]
        return list(await ctx.gather(*(ctx.step.run(f"s{i}", int, i) for i in range(3))))

    m = RunMachine(app.get("g"), "r1", [Event("go")], 0)
    cmds = m.handle(RunStarted(0))
    assert [(c.position, c.step_id) for c in cmds if isinstance(c, ExecuteStep)] == [
        (0, "s0"), (1, "s1"), (2, "s2")]
    # Answer out of order: the code only resumes once all settled.
    assert not any(isinstance(c, CompleteRun) for c in m.handle(StepCompleted(2, 0, 2, 10)))
    assert not any(isinstance(c, CompleteRun) for c in m.handle(StepCompleted(0, 0, 0, 11)))
    [done] = [c for c in m.handle(StepCompleted(1, 0, 1, 12)) if isinstance(c, CompleteRun)]
    assert done.output == "[0,1,2]"


def _gather_fail_app() -> tuple[App, dict[str, int], list[Any]]:
    app = App("gfail")
    calls: dict[str, int] = {"ok": 0, "first": 0, "second": 0, "flaky": 0}
    seen: list[Any] = []

    def ok() -> str:
        calls["ok"] += 1
        return "ok"

    def nope(name: str) -> None:
        calls[name] += 1
        raise NonRetriableError(f"{name} failed")

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError("transient")
        return "eventually"

    @app.function(id="g", trigger=on_event("go"))
    async def g(ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.gather(
                ctx.step.run("flaky", flaky),
                ctx.step.run("ok", ok),
                ctx.step.run("first", nope, "first"),
                ctx.step.run("second", nope, "second"),
            )
        except StepError as e:
            seen.append((dict(calls), ctx.now()))
            return {"step_id": e.step_id, "type": e.error_type, "message": e.error_message}
        return "no error"

    return app, calls, seen


def test_gather_raises_first_failure_in_argument_order_after_all_settle() -> None:
    app, calls, seen = _gather_fail_app()
    eng = TestEngine(app, start=START)
    assert calls == {"ok": 0, "first": 0, "second": 0, "flaky": 0}
    [run] = eng.send(Event("go")).runs
    # "first" and "second" failed for good at once, but "flaky" is still retrying.
    assert run.status == "sleeping"
    assert seen == []
    eng.advance("3m")
    assert run.status == "completed"
    assert run.output == {"step_id": "first", "type": "NonRetriableError",
                          "message": "first failed"}
    [(calls_at_catch, _when)] = seen
    assert calls_at_catch == {"ok": 1, "first": 1, "second": 1, "flaky": 3}
    statuses = {s.id: s.status for s in run.steps}
    assert statuses == {"flaky": "completed", "ok": "completed", "first": "failed",
                        "second": "failed"}


def test_gather_failure_order_is_argument_order_not_settle_order() -> None:
    app = App("gorder")

    @app.function(id="g", retries=0)
    async def g(ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.gather(ctx.step.run("a", int), ctx.step.run("b", int),
                             ctx.step.run("c", int))
        except StepError as e:
            return e.step_id
        return None

    m = RunMachine(app.get("g"), "r1", [Event("go")], 0)
    m.handle(RunStarted(0))
    cmds = m.handle(StepFailed(2, 0, RuntimeError("c"), 1))
    cmds += m.handle(StepFailed(1, 0, RuntimeError("b"), 2))
    assert not any(isinstance(c, CompleteRun) for c in cmds)
    cmds = m.handle(StepCompleted(0, 0, 0, 3))
    [done] = [c for c in cmds if isinstance(c, CompleteRun)]
    assert done.output == '"b"'


# --------------------------------------------------------------------------- typed outputs


@attrs.define
class Point:
    x: int
    when: dt.datetime
    tags: list[str]


@dataclasses.dataclass
class Box:
    label: str
    inner: dict[str, int]


def make_point() -> Point:
    return Point(3, dt.datetime(2020, 5, 1, 12, 30, tzinfo=dt.UTC), ["a"])


def make_box() -> Box:
    return Box("b", {"n": 1})


def make_time() -> dt.datetime:
    return dt.datetime(2021, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC)


def make_points() -> list[Point]:
    return [make_point(), make_point()]


def untyped() -> Any:
    # Plain JSON: a Box here is refused (tests/test_typed_outputs.py), not converted.
    return {"label": "plain", "inner": {"n": 2}}


def test_typed_step_outputs_round_trip_live_and_on_replay() -> None:
    app = App("typed")
    seen: list[tuple[Any, ...]] = []

    @app.function(id="t", trigger=on_event("go"))
    async def t(ctx):  # type: ignore[no-untyped-def]
        p = await ctx.step.run("p", make_point)
        b = await ctx.step.run("b", make_box)
        w = await ctx.step.run("w", make_time)
        ps = await ctx.step.run("ps", make_points)
        u = await ctx.step.run("u", untyped)
        await ctx.step.sleep("nap", "1m")
        seen.append((p, b, w, ps, u))
        return {"x": p.x, "label": b.label, "year": w.year}

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1m")
    assert run.output == {"x": 3, "label": "b", "year": 2021}
    _m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    live, replayed = seen
    for value in (live, replayed):
        p, b, w, ps, u = value
        assert type(p) is Point and p == make_point()
        assert type(b) is Box and b == make_box()
        assert type(w) is dt.datetime and w == make_time() and w.tzinfo is not None
        assert all(type(x) is Point for x in ps) and ps == make_points()
        # Without an annotation the JSON form is what the code sees, live and on replay.
        assert u == {"label": "plain", "inner": {"n": 2}}
    assert live == replayed


class Color(enum.StrEnum):
    RED = "red"


def as_float() -> float:
    return 3


def as_color() -> Color:
    return Color.RED


def as_tuple() -> tuple[int, str]:
    return (1, "a")


def as_set() -> frozenset[int]:
    return frozenset({1, 2})


def as_optional() -> Box | None:
    return Box("opt", {})


def test_annotated_outputs_have_the_same_type_live_and_on_replay() -> None:
    app = App("typed2")
    seen: list[list[tuple[type, Any]]] = []

    @app.function(id="t", trigger=on_event("go"))
    async def t(ctx):  # type: ignore[no-untyped-def]
        vals = [await ctx.step.run(f.__name__, f)
                for f in (as_float, as_color, as_tuple, as_set, as_optional)]
        seen.append([(type(v), v) for v in vals])
        return len(vals)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == 5
    _m, cmds = replay(eng, run)
    assert_no_side_effects(cmds)
    live, replayed = seen
    assert live == replayed
    assert [tp for tp, _v in live[1:4]] == [Color, tuple, frozenset]
