"""Documented limits and input validation: steps per run, step/run output size, event size,
trigger count, invalid CEL/cron/duration strings, and non-serializable outputs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from durable_core import (
    App,
    Event,
    FunctionConfigError,
    InvalidCronError,
    InvalidDurationError,
    InvalidEventError,
    InvalidExpressionError,
    RetryAfterError,
    StepError,
    on_cron,
    on_event,
)
from durable_core.testing import TestEngine

MIB4 = 4 * 1024 * 1024
KIB512 = 512 * 1024


# --------------------------------------------------------------------------- steps per run


def _n_steps_app(max_steps: int | None = None, kind: str = "run") -> App:
    app = App("steps")
    kwargs: dict[str, Any] = {} if max_steps is None else {"max_steps": max_steps}

    @app.function(id="f", trigger=on_event("go"), **kwargs)
    async def f(ctx):  # type: ignore[no-untyped-def]
        n = ctx.event.data["n"]
        if kind == "gather":
            return len(await ctx.gather(*(ctx.step.run("g", int, i) for i in range(n))))
        for i in range(n):
            if kind == "run":
                await ctx.step.run("s", int, i)
            else:
                await ctx.step.send_event("e", Event("noise", {"i": i}))
        return n

    return app


@pytest.mark.parametrize("kind", ["run", "send_event"])
def test_default_limit_allows_1000_steps(kind: str) -> None:
    eng = TestEngine(_n_steps_app(kind=kind))
    [run] = eng.send(Event("go", {"n": 1000})).runs
    assert run.status == "completed"
    assert run.output == 1000
    assert len(run.steps) == 1000


def test_default_limit_fails_the_1001st_step() -> None:
    eng = TestEngine(_n_steps_app())
    [run] = eng.send(Event("go", {"n": 1001})).runs
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.type == "LimitExceededError"
    assert "1000" in run.error.message and "s:1000" in run.error.message
    assert len(run.steps) == 1000


@pytest.mark.parametrize(("max_steps", "n", "ok"), [(5, 5, True), (5, 6, False),
                                                    (1, 1, True), (1, 2, False)])
def test_max_steps_is_configurable(max_steps: int, n: int, ok: bool) -> None:
    eng = TestEngine(_n_steps_app(max_steps))
    [run] = eng.send(Event("go", {"n": n})).runs
    assert run.status == ("completed" if ok else "failed")
    if not ok:
        assert run.error is not None and run.error.type == "LimitExceededError"
        assert len(run.steps) == max_steps


def test_gathered_steps_count_toward_the_limit() -> None:
    eng = TestEngine(_n_steps_app(5, kind="gather"))
    [ok] = eng.send(Event("go", {"n": 5})).runs
    [bad] = eng.send(Event("go", {"n": 6})).runs
    assert ok.status == "completed"
    assert bad.status == "failed"
    assert bad.error is not None and bad.error.type == "LimitExceededError"


def test_max_steps_up_to_10000_is_allowed() -> None:
    app = App("a")
    func = app.function(id="f", max_steps=10_000)(_async_noop)
    assert func.max_steps == 10_000


@pytest.mark.parametrize("max_steps", [10_001, 0, -1, True, 5.0])
def test_max_steps_above_10000_or_invalid_is_a_config_error(max_steps: Any) -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="f", max_steps=max_steps)
    assert excinfo.value.field == "max_steps"
    assert "'f'" in str(excinfo.value)


async def _async_noop(ctx):  # type: ignore[no-untyped-def]
    return None


# --------------------------------------------------------------------------- output size


def _output_app(value_factory: Any, retries: int = 4) -> tuple[App, list[int]]:
    app = App("out")
    calls: list[int] = []

    def body() -> Any:
        calls.append(1)
        return value_factory()

    @app.function(id="f", trigger=on_event("go"), retries=retries)
    async def f(ctx):  # type: ignore[no-untyped-def]
        try:
            v = await ctx.step.run("big", body)
        except StepError as e:
            return {"step_id": e.step_id, "type": e.error_type, "message": e.error_message}
        return {"len": len(v)}

    return app, calls


def _blob_of_json_size(size: int) -> dict[str, str]:
    overhead = len('{"b":""}')
    return {"b": "x" * (size - overhead)}


def test_step_output_of_exactly_4_mib_is_accepted() -> None:
    app, calls = _output_app(lambda: _blob_of_json_size(MIB4))
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == {"len": 1}
    assert calls == [1]


def test_string_output_of_exactly_4_mib_is_accepted() -> None:
    app, calls = _output_app(lambda: "x" * (MIB4 - 2))  # plus two quotes = 4 MiB of JSON
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == {"len": MIB4 - 2}
    assert calls == [1]


def _assert_step_failed_with_limit(eng: TestEngine, calls: list[int]) -> None:
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"
    assert run.output.get("type") == "LimitExceededError"
    assert run.output["step_id"] == "big"
    assert "big" in run.output["message"]
    eng.advance("1d")
    assert calls == [1]
    assert (run.steps[0].status, run.steps[0].attempts) == ("failed", 1)


@pytest.mark.parametrize(
    "factory",
    [lambda: _blob_of_json_size(MIB4 + 1), lambda: ["x" * MIB4],
     lambda: _blob_of_json_size(8 * 1024 * 1024)],
)
def test_step_output_over_4_mib_fails_the_step_without_retry(factory: Any) -> None:
    app, calls = _output_app(factory)
    _assert_step_failed_with_limit(TestEngine(app), calls)


def test_string_step_output_over_4_mib_fails_the_step_without_retry() -> None:
    app, calls = _output_app(lambda: "x" * (MIB4 - 1))  # 4 MiB + 1 byte of JSON
    _assert_step_failed_with_limit(TestEngine(app), calls)


def test_step_output_limit_counts_utf8_bytes() -> None:
    # About 2 Mi characters but 4 MiB + 20 bytes of UTF-8.
    app, calls = _output_app(lambda: {"b": "é" * (MIB4 // 2 + 10)})
    _assert_step_failed_with_limit(TestEngine(app), calls)


def test_run_output_over_4_mib_fails_the_run() -> None:
    app = App("runout")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        return "y" * MIB4

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "LimitExceededError"


# --------------------------------------------------------------------------- serialization


class Opaque:
    pass


@pytest.mark.parametrize(
    "factory",
    [Opaque, lambda: {"k": Opaque()}, lambda: [1, Opaque()], lambda: float("nan"),
     lambda: {"f": float("inf")}, lambda: (lambda: 1)],
)
def test_non_serializable_step_output_fails_the_step_naming_it(factory: Any) -> None:
    app, calls = _output_app(factory)
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"
    assert run.output["type"] == "SerializationError"
    assert run.output["step_id"] == "big"
    assert "'big'" in run.output["message"]
    eng.advance("1d")
    assert calls == [1]
    assert run.steps[0].status == "failed"


def test_non_serializable_run_output_fails_the_run() -> None:
    app = App("runser")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        return Opaque()

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "SerializationError"


# --------------------------------------------------------------------------- events


def test_event_over_512_kib_is_rejected() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event("big", {"blob": "x" * KIB512})
    assert excinfo.value.field == "event"


def test_building_an_oversized_event_in_orchestration_code_fails_the_run() -> None:
    app = App("bigsend")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.send_event("s", Event("big", {"blob": "x" * KIB512}))

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "InvalidEventError"


def test_send_event_with_a_non_event_fails_the_run() -> None:
    app = App("badsend")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.send_event("s", [Event("ok"), {"name": "not-an-event"}])

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "InvalidEventError"
    assert eng.store.get_event("ok") is None
    assert [r.function_id for r in eng.runs] == ["f"]


# --------------------------------------------------------------------------- definitions


def test_more_than_ten_triggers_is_a_config_error() -> None:
    app = App("a")
    app.function(id="ten", trigger=[on_event(f"e{i}") for i in range(10)])(_async_noop)
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="eleven", trigger=[on_event(f"e{i}") for i in range(11)])
    assert excinfo.value.field == "trigger"
    assert "'eleven'" in str(excinfo.value)


def test_invalid_cel_names_function_and_field() -> None:
    app = App("a")
    with pytest.raises(InvalidExpressionError) as excinfo:
        app.function(id="fn-cel", trigger=on_event("x", if_="event.data.a ="))
    assert excinfo.value.field == "trigger[0].if_"
    assert "'fn-cel'" in str(excinfo.value)


def test_invalid_cron_names_function_and_field() -> None:
    app = App("a")
    with pytest.raises(InvalidCronError) as excinfo:
        app.function(id="fn-cron", trigger=[on_event("x"), on_cron("0 25 * * *")])
    assert excinfo.value.field == "trigger[1].cron"
    assert "'fn-cron'" in str(excinfo.value)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("sleep", "step.sleep('s').duration"),
        ("wait", "step.wait_for_event('s').timeout"),
        ("invoke", "step.invoke('s').timeout"),
    ],
)
def test_invalid_duration_strings_name_the_field(call: str, field: str) -> None:
    app = App("dur")
    errors: list[InvalidDurationError] = []

    @app.function(id="child")
    async def child(ctx):  # type: ignore[no-untyped-def]
        return 1

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        try:
            if call == "sleep":
                await ctx.step.sleep("s", "5 parsecs")
            elif call == "wait":
                await ctx.step.wait_for_event("s", event="x", timeout="5 parsecs")
            else:
                await ctx.step.invoke("s", function="child", timeout="5 parsecs")
        except InvalidDurationError as e:
            errors.append(e)
            raise

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "InvalidDurationError"
    assert field in run.error.message
    [err] = errors
    assert err.field == field
    eng.advance("1d")
    assert len(errors) == 1  # a validation error is not retried


def test_wait_timeout_over_366_days_is_rejected() -> None:
    app = App("dur2")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.wait_for_event("w", event="x", timeout=dt.timedelta(days=367))

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "InvalidDurationError"


@pytest.mark.parametrize("after", ["bogus", dt.datetime(2026, 1, 1, 1)])
def test_invalid_retry_after_does_not_crash_the_engine(after: Any) -> None:
    app = App("badra")

    def body() -> None:
        raise RetryAfterError("later", after)

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.step.run("s", body)
        except StepError as e:
            return e.step_id
        return None

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1d")
    assert run.status == "completed"
    assert run.output == "s"
