"""Retries: per-step attempt counters, the backoff table with 0-30 s jitter, RetryAfterError,
NonRetriableError, StepError, and retries of orchestration code that raises outside a step."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import (
    App,
    Event,
    FunctionConfigError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    on_event,
)
from durable_core.testing import TestEngine

MS = dt.timedelta(milliseconds=1)
S = dt.timedelta(seconds=1)
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TABLE = [15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200]
JITTER = 30


class Clock:
    """Lets step bodies read the engine's virtual time when they run."""

    def __init__(self) -> None:
        self.eng: TestEngine | None = None
        self.times: list[dt.datetime] = []

    def tick(self) -> None:
        assert self.eng is not None
        self.times.append(self.eng.now)

    def deltas(self) -> list[float]:
        return [(b - a).total_seconds() for a, b in zip(self.times, self.times[1:], strict=False)]


def _failing_app(
    retries: int | None = None, body: Callable[..., Any] | None = None, catch: bool = False
) -> tuple[App, Clock]:
    app = App("retry")
    clock = Clock()

    def always_fails() -> None:
        clock.tick()
        raise RuntimeError(f"failure #{len(clock.times)}")

    kwargs: dict[str, Any] = {} if retries is None else {"retries": retries}

    @app.function(id="f", trigger=on_event("go"), **kwargs)
    async def f(ctx):  # type: ignore[no-untyped-def]
        if catch:
            try:
                return await ctx.step.run("flaky", body or always_fails)
            except StepError as e:
                return {"step_id": e.step_id, "type": e.error_type, "message": e.error_message}
        return await ctx.step.run("flaky", body or always_fails)

    return app, clock


def _engine(app: App, clock: Clock) -> TestEngine:
    eng = TestEngine(app, start=START)
    clock.eng = eng
    return eng


# --------------------------------------------------------------------------- attempts


def test_default_is_four_retries_five_attempts() -> None:
    app, clock = _failing_app()
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    assert run.steps[0].status == "retrying"
    eng.advance("1d")
    assert len(clock.times) == 5
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "StepError"
    assert "failure #5" in run.error.message
    [step] = run.steps
    assert (step.status, step.attempts) == ("failed", 5)
    assert step.error is not None and step.error.message == "failure #5"


def test_step_succeeding_on_last_allowed_attempt_completes() -> None:
    clock_ref: list[Clock] = []

    def fails_four_times() -> str:
        clock_ref[0].tick()
        if len(clock_ref[0].times) < 5:
            raise RuntimeError("not yet")
        return "done"

    app, clock = _failing_app(body=fails_four_times)
    clock_ref.append(clock)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance("1d")
    assert run.status == "completed"
    assert run.output == "done"
    assert run.steps[0].attempts == 5


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_setting_bounds_attempts(retries: int) -> None:
    app, clock = _failing_app(retries=retries, catch=True)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance("1d")
    assert len(clock.times) == retries + 1
    assert run.status == "completed"
    assert run.output == {"step_id": "flaky", "type": "RuntimeError",
                          "message": f"failure #{retries + 1}"}


def test_twenty_retries_is_the_maximum_and_later_delays_stay_at_two_hours() -> None:
    app, clock = _failing_app(retries=20)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance("3d")
    assert len(clock.times) == 21
    assert run.status == "failed"
    deltas = clock.deltas()
    for k, d in enumerate(deltas):
        base = TABLE[min(k, len(TABLE) - 1)]
        assert base <= d < base + JITTER, (k, d)


@pytest.mark.parametrize("retries", [21, -1, 100, True, 2.0, "4"])
def test_invalid_retries_are_rejected(retries: Any) -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="f", retries=retries)
    assert excinfo.value.field == "retries"


def test_backoff_table_with_jitter_never_early_always_by_plus_30s() -> None:
    app, clock = _failing_app(retries=11)
    eng = _engine(app, clock)
    eng.send(Event("go"))
    for k, base in enumerate([*TABLE, 7200]):
        assert len(clock.times) == k + 1
        failed_at = clock.times[-1]
        eng.advance_to(failed_at + base * S - MS)
        assert len(clock.times) == k + 1, f"retry {k + 1} came before {base}s"
        eng.advance_to(failed_at + (base + JITTER) * S)
        assert len(clock.times) == k + 2, f"retry {k + 1} did not come by {base + JITTER}s"
    assert eng.runs[0].status == "failed"


def test_first_retry_between_15_and_45_seconds() -> None:
    app, clock = _failing_app()
    eng = _engine(app, clock)
    eng.send(Event("go"))
    eng.advance(15 * S - MS)
    assert len(clock.times) == 1
    eng.advance(30 * S + MS)
    assert len(clock.times) == 2
    assert 15 <= clock.deltas()[0] < 45


def test_jitter_is_deterministic_per_run_and_step() -> None:
    delays = []
    for _ in range(2):
        app, clock = _failing_app()
        eng = _engine(app, clock)
        eng.send(Event("go"))
        eng.advance("1d")
        delays.append(clock.deltas())
    assert delays[0] == delays[1]


def test_each_step_has_its_own_attempt_counter() -> None:
    app = App("counters")
    calls = {"a": 0, "b": 0}

    def four_failures(name: str) -> str:
        calls[name] += 1
        if calls[name] <= 4:
            raise RuntimeError(f"{name} not yet")
        return name

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        a = await ctx.step.run("a", four_failures, "a")
        b = await ctx.step.run("b", four_failures, "b")
        return [a, b]

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1d")
    assert run.status == "completed"
    assert run.output == ["a", "b"]
    assert calls == {"a": 5, "b": 5}
    assert [s.attempts for s in run.steps] == [5, 5]


def test_ctx_attempt_inside_a_step_body_is_the_step_attempt() -> None:
    app = App("attempt")
    seen: list[int] = []

    def body(ctx) -> int:  # type: ignore[no-untyped-def]
        seen.append(ctx.attempt)
        if ctx.attempt < 2:
            raise RuntimeError("again")
        return ctx.attempt

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        return [await ctx.step.run("s", body, ctx), ctx.attempt]

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("10m")
    assert seen == [0, 1, 2]
    assert run.output == [2, 0]


# --------------------------------------------------------------------------- RetryAfterError


def _retry_after_app(after: Any, retries: int = 4) -> tuple[App, Clock]:
    clock_ref: list[Clock] = []

    def body() -> str:
        clock_ref[0].tick()
        if len(clock_ref[0].times) == 1:
            raise RetryAfterError("rate limited", after)
        return "ok"

    app, clock = _failing_app(retries=retries, body=body, catch=True)
    clock_ref.append(clock)
    return app, clock


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (100, 100 * S),
        (2.5, dt.timedelta(seconds=2.5)),
        (dt.timedelta(minutes=7), dt.timedelta(minutes=7)),
        ("1m40s", 100 * S),
        ("3h", dt.timedelta(hours=3)),
        (START + dt.timedelta(hours=5), dt.timedelta(hours=5)),
        # clamped to [1 s, 24 h]
        (0, S),
        (0.001, S),
        ("10ms", S),
        (START - dt.timedelta(hours=1), S),
        ("48h", dt.timedelta(hours=24)),
        (dt.timedelta(days=3), dt.timedelta(hours=24)),
        (START + dt.timedelta(days=2), dt.timedelta(hours=24)),
    ],
)
def test_retry_after_sets_the_next_delay(after: Any, expected: dt.timedelta) -> None:
    app, clock = _retry_after_app(after)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    assert run.steps[0].status == "retrying"
    eng.advance(expected - MS)
    assert len(clock.times) == 1
    eng.advance(MS)
    assert len(clock.times) == 2
    assert clock.times[1] - clock.times[0] == expected
    assert run.output == "ok"


def test_retry_after_counts_toward_retries() -> None:
    app = App("ra")
    calls: list[int] = []

    def body() -> None:
        calls.append(1)
        raise RetryAfterError("slow down", 5)

    @app.function(id="f", trigger=on_event("go"), retries=2)
    async def f(ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.step.run("s", body)
        except StepError as e:
            return [e.error_type, e.error_message]
        return None

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1m")
    assert len(calls) == 3
    assert run.output == ["RetryAfterError", "slow down"]


# --------------------------------------------------------------------------- NonRetriableError


def test_non_retriable_error_fails_the_step_at_once_and_can_be_caught() -> None:
    app = App("nr")
    calls = {"bad": 0, "fallback": 0}

    def bad() -> None:
        calls["bad"] += 1
        raise NonRetriableError("card declined")

    def fallback(msg: str) -> str:
        calls["fallback"] += 1
        return f"fallback after: {msg}"

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        try:
            return await ctx.step.run("charge", bad)
        except StepError as e:
            assert isinstance(e, StepError)
            return [e.step_id, e.error_type, await ctx.step.run("fb", fallback, e.error_message)]

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"
    assert run.output == ["charge", "NonRetriableError", "fallback after: card declined"]
    assert calls == {"bad": 1, "fallback": 1}
    assert (run.steps[0].status, run.steps[0].attempts) == ("failed", 1)
    eng.advance("1d")
    assert calls == {"bad": 1, "fallback": 1}


def test_non_retriable_subclass_is_not_retried() -> None:
    class Declined(NonRetriableError):
        pass

    def body() -> None:
        clock.tick()
        raise Declined("no")

    app, clock = _failing_app(body=body, catch=True)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    assert len(clock.times) == 1
    assert run.output == {"step_id": "flaky", "type": "Declined", "message": "no"}


def test_step_error_carries_type_message_and_counter_suffixed_id() -> None:
    app = App("se")
    errors: list[StepError] = []

    def bad(n: int) -> int:
        if n == 1:
            raise ValueError("bad value 1")
        return n

    @app.function(id="f", trigger=on_event("go"), retries=0)
    async def f(ctx):  # type: ignore[no-untyped-def]
        out = []
        for n in range(3):
            try:
                out.append(await ctx.step.run("fetch", bad, n))
            except StepError as e:
                errors.append(e)
                out.append("err")
        return out

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == [0, "err", 2]
    [e] = errors
    assert (e.step_id, e.error_type, e.error_message) == ("fetch:1", "ValueError", "bad value 1")
    assert "fetch:1" in str(e) and "ValueError" in str(e) and "bad value 1" in str(e)


# --------------------------------------------------------------------------- orchestration code


def _orchestration_app(
    retries: int = 4, fail_attempts: int = 1, exc: Callable[[], Exception] | None = None
) -> tuple[App, dict[str, Any], Clock]:
    app = App("orch")
    counts: dict[str, Any] = {"top": 0, "a": 0, "b": 0, "attempts": []}
    clock = Clock()

    def a() -> str:
        counts["a"] += 1
        return "A"

    def b() -> str:
        counts["b"] += 1
        return "B"

    @app.function(id="f", trigger=on_event("go"), retries=retries)
    async def f(ctx):  # type: ignore[no-untyped-def]
        counts["top"] += 1
        clock.tick()
        counts["attempts"].append(ctx.attempt)
        x = await ctx.step.run("a", a)
        if ctx.attempt < fail_attempts:
            raise (exc() if exc else RuntimeError(f"orchestration bug {ctx.attempt}"))
        y = await ctx.step.run("b", b)
        return [x, y]

    return app, counts, clock


def test_orchestration_exception_is_retried_without_rerunning_memoized_steps() -> None:
    app, counts, clock = _orchestration_app(fail_attempts=1)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    assert run.status == "sleeping"
    assert counts["top"] == 1
    eng.advance(15 * S - MS)
    assert counts["top"] == 1
    eng.advance(30 * S + MS)
    assert counts["top"] >= 2
    assert run.status == "completed"
    assert run.output == ["A", "B"]
    assert counts["a"] == 1  # memoized: not run again by the re-entry
    assert counts["attempts"][:2] == [0, 1]
    assert 15 <= clock.deltas()[0] < 45


def test_orchestration_retry_enters_code_once_and_runs_new_steps_once() -> None:
    app, counts, clock = _orchestration_app(fail_attempts=1)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance("1m")
    assert run.status == "completed"
    assert counts["attempts"] == [0, 1]
    assert (counts["top"], counts["a"], counts["b"]) == (2, 1, 1)
    assert eng.steps_executed == 2


def test_orchestration_retries_follow_the_backoff_table() -> None:
    app, counts, clock = _orchestration_app(fail_attempts=3)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    assert run.status == "completed"
    assert counts["attempts"][:4] == [0, 1, 2, 3]
    assert counts["a"] == 1
    for k, d in enumerate(clock.deltas()[:3]):
        assert TABLE[k] <= d < TABLE[k] + JITTER


def test_orchestration_exception_exhausting_retries_fails_the_run() -> None:
    app, counts, clock = _orchestration_app(retries=2, fail_attempts=99)
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance("1d")
    assert counts["attempts"] == [0, 1, 2]
    assert run.status == "failed"
    assert run.error is not None
    assert (run.error.type, run.error.message) == ("RuntimeError", "orchestration bug 2")
    assert counts["a"] == 1 and counts["b"] == 0


def test_retry_after_from_orchestration_code_sets_the_delay() -> None:
    app, counts, clock = _orchestration_app(
        fail_attempts=1, exc=lambda: RetryAfterError("later", "10m"))
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    eng.advance(dt.timedelta(minutes=10) - MS)
    assert counts["top"] == 1
    eng.advance(MS)
    assert counts["top"] >= 2
    assert clock.times[1] - clock.times[0] == dt.timedelta(minutes=10)
    assert run.output == ["A", "B"]


def test_non_retriable_error_from_orchestration_code_fails_the_run_at_once() -> None:
    app, counts, clock = _orchestration_app(
        fail_attempts=99, exc=lambda: NonRetriableError("give up"))
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None
    assert (run.error.type, run.error.message) == ("NonRetriableError", "give up")
    eng.advance("1d")
    assert counts["top"] == 1


def test_uncaught_step_error_fails_the_run_without_run_retries() -> None:
    top: list[int] = []
    app2 = App("uncaught")

    def bad() -> None:
        raise ValueError("kaput")

    @app2.function(id="f", trigger=on_event("go"), retries=1)
    async def f(ctx):  # type: ignore[no-untyped-def]
        top.append(ctx.attempt)
        await ctx.step.run("explode", bad)

    eng = TestEngine(app2)
    [run] = eng.send(Event("go")).runs
    eng.advance("2m")
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "StepError"
    assert "explode" in run.error.message
    assert "ValueError" in run.error.message and "kaput" in run.error.message
    eng.advance("1d")
    # The code is entered once per attempt of the step (its retry re-drives the code up to
    # it, ctx.attempt following the step), and never again once the StepError failed the run.
    assert top == [0, 1]
    assert run.steps[0].attempts == 2


def test_attempt_counter_survives_restarts() -> None:
    app, clock = _failing_app()
    eng = _engine(app, clock)
    [run] = eng.send(Event("go")).runs
    for _ in range(6):
        eng = TestEngine(app, start=eng.now, store=eng.store)  # rebuilds from the journal
        clock.eng = eng
        eng.advance("3m")
    assert len(clock.times) == 5
    handle = eng.run(run.id)
    assert handle.status == "failed"
    assert handle.steps[0].attempts == 5
    for k, d in enumerate(clock.deltas()):
        assert TABLE[k] <= d < TABLE[k] + JITTER
