"""Apps, functions and triggers: definition-time validation, event triggers with CEL filters,
and cron triggers (one run per tick, in the schedule's time zone, never duplicated)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from durable_core import (
    App,
    Event,
    FunctionConfigError,
    InvalidCronError,
    InvalidExpressionError,
    UnknownFunctionError,
    on_cron,
    on_event,
)
from durable_core.testing import TestEngine

MS = dt.timedelta(milliseconds=1)


async def _noop(ctx):  # type: ignore[no-untyped-def]
    return None


# --------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("app_id", ["", "-leading", "has space", "x" * 129, None])
def test_invalid_app_id_is_rejected(app_id: object) -> None:
    with pytest.raises(FunctionConfigError) as excinfo:
        App(app_id)  # type: ignore[arg-type]
    assert excinfo.value.field == "app.id"


@pytest.mark.parametrize("fn_id", ["", "bad id", "_x", "x" * 129])
def test_invalid_function_id_is_rejected(fn_id: str) -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id=fn_id)
    assert excinfo.value.field == "id"


def test_duplicate_function_id_is_rejected() -> None:
    app = App("a")
    app.function(id="f")(_noop)
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="f")(_noop)
    assert excinfo.value.field == "id"
    assert "'f'" in str(excinfo.value)


def test_function_body_must_be_async() -> None:
    app = App("a")

    def sync_body(ctx):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="f")(sync_body)
    assert excinfo.value.field == "fn"
    assert "f" not in app.functions


def test_function_defaults_and_registry() -> None:
    app = App("a")
    func = app.function(id="f", trigger=on_event("x"))(_noop)
    assert func.retries == 4
    assert func.max_steps == 1_000
    assert app.get("f") is func
    assert app.resolve("f") is func
    assert app.resolve(func) is func
    assert app.functions == {"f": func}


def test_unknown_function_lookup() -> None:
    app = App("a")
    app.function(id="f")(_noop)
    with pytest.raises(UnknownFunctionError) as excinfo:
        app.get("nope")
    assert "nope" in str(excinfo.value)


def test_ten_triggers_are_allowed() -> None:
    app = App("a")
    func = app.function(id="f", trigger=[on_event(f"e{i}") for i in range(10)])(_noop)
    assert len(func.triggers) == 10


def test_more_than_ten_triggers_is_a_config_error() -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="many", trigger=[on_event(f"e{i}") for i in range(11)])
    assert excinfo.value.field == "trigger"
    assert "'many'" in str(excinfo.value)
    assert "11" in str(excinfo.value)


def test_trigger_of_wrong_type_is_rejected() -> None:
    app = App("a")
    with pytest.raises(FunctionConfigError) as excinfo:
        app.function(id="f", trigger=[on_event("x"), "y"])  # type: ignore[list-item]
    assert excinfo.value.field == "trigger[1]"


@pytest.mark.parametrize("expr", ["event.data.amount >", "event.data.x ==== 1", "nope.x == 1",
                                  "unknownfn(event)"])
def test_invalid_cel_filter_is_rejected_at_definition(expr: str) -> None:
    app = App("a")
    with pytest.raises(InvalidExpressionError) as excinfo:
        app.function(id="filtered", trigger=[on_event("ok"), on_event("x", if_=expr)])
    assert excinfo.value.field == "trigger[1].if_"
    assert "'filtered'" in str(excinfo.value)
    assert "trigger[1].if_" in str(excinfo.value)
    assert "filtered" not in app.functions


def test_filter_may_not_use_async_variable() -> None:
    app = App("a")
    with pytest.raises(InvalidExpressionError) as excinfo:
        app.function(id="f", trigger=on_event("x", if_="async.data.a == 1"))
    assert excinfo.value.field == "trigger[0].if_"


@pytest.mark.parametrize(
    "cron",
    ["61 * * * *", "* * * *", "0 12 * * 8", "TZ=Mars/Olympus 0 12 * * 5", "not a cron",
     "0 0 31 2 *"],
)
def test_invalid_cron_is_rejected_at_definition(cron: str) -> None:
    app = App("a")
    with pytest.raises(InvalidCronError) as excinfo:
        app.function(id="ticker", trigger=on_cron(cron))
    assert excinfo.value.field == "trigger[0].cron"
    assert "'ticker'" in str(excinfo.value)
    assert "ticker" not in app.functions


def test_on_event_requires_a_name() -> None:
    with pytest.raises(FunctionConfigError):
        on_event("")


# --------------------------------------------------------------------------- event triggers


def _filter_app() -> tuple[App, list[str]]:
    app = App("shop")
    started: list[str] = []

    @app.function(id="big-order",
                  trigger=on_event("order/created", if_="event.data.amount > 100"))
    async def big(ctx):  # type: ignore[no-untyped-def]
        started.append("big-order")
        return ctx.event.data["amount"]

    @app.function(id="any-order", trigger=on_event("order/created"))
    async def anyo(ctx):  # type: ignore[no-untyped-def]
        started.append("any-order")
        return ctx.event.name

    @app.function(
        id="two-triggers",
        trigger=[on_event("order/created", if_="event.data.amount > 1000"),
                 on_event("order/created", if_="event.data.vip == true")],
    )
    async def two(ctx):  # type: ignore[no-untyped-def]
        started.append("two-triggers")
        return "two"

    return app, started


def test_filter_true_starts_the_run() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    runs = eng.send(Event("order/created", {"amount": 150, "vip": False})).runs
    assert sorted(r.function_id for r in runs) == ["any-order", "big-order"]
    assert sorted(started) == ["any-order", "big-order"]
    big = next(r for r in runs if r.function_id == "big-order")
    assert big.status == "completed"
    assert big.output == 150


def test_filter_false_starts_nothing_for_that_function() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    runs = eng.send(Event("order/created", {"amount": 50, "vip": False})).runs
    assert [r.function_id for r in runs] == ["any-order"]
    assert started == ["any-order"]


def test_other_event_names_start_nothing() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    assert eng.send(Event("order/created.v2", {"amount": 5000})).runs == []
    assert eng.send(Event("order", {"amount": 5000})).runs == []
    assert started == []
    assert eng.runs == []


def test_function_matched_by_two_triggers_starts_once() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    runs = eng.send(Event("order/created", {"amount": 5000, "vip": True})).runs
    assert sorted(r.function_id for r in runs) == ["any-order", "big-order", "two-triggers"]
    assert started.count("two-triggers") == 1


def test_second_trigger_alone_starts_the_run() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    runs = eng.send(Event("order/created", {"amount": 1, "vip": True})).runs
    assert sorted(r.function_id for r in runs) == ["any-order", "two-triggers"]
    assert sorted(started) == ["any-order", "two-triggers"]


def test_filter_over_missing_field_starts_nothing_and_does_not_raise() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    runs = eng.send(Event("order/created", {"other": 1})).runs
    assert [r.function_id for r in runs] == ["any-order"]
    assert started == ["any-order"]


def test_each_event_starts_its_own_run() -> None:
    app, started = _filter_app()
    eng = TestEngine(app)
    runs = eng.send([Event("order/created", {"amount": 200}) for _ in range(3)]).runs
    assert sorted(r.function_id for r in runs) == ["any-order"] * 3 + ["big-order"] * 3
    assert len({r.id for r in runs}) == 6
    assert sorted(started) == ["any-order"] * 3 + ["big-order"] * 3


# --------------------------------------------------------------------------- cron


def _cron_app(cron: str = "TZ=Europe/Paris 0 12 * * 5") -> App:
    app = App("cron")

    @app.function(id="weekly", trigger=on_cron(cron))
    async def weekly(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["scheduledAt"]

    return app


def _cron_outputs(eng: TestEngine) -> list[str]:
    return [r.output for r in eng.runs if r.function_id == "weekly"]


def test_cron_fires_at_noon_paris_in_winter() -> None:
    # 2026-01-01 is a Thursday; noon in Paris (CET, UTC+1) on Friday is 11:00 UTC.
    eng = TestEngine(_cron_app(), start="2026-01-01T00:00:00Z")
    eng.advance_to("2026-01-02T11:00:00Z")
    eng.advance(0)  # a no-op advance must not add anything
    assert _cron_outputs(eng) == ["2026-01-02T11:00:00Z"]


def test_cron_does_not_fire_early() -> None:
    eng = TestEngine(_cron_app(), start="2026-01-01T00:00:00Z")
    eng.advance(dt.timedelta(days=1, hours=11) - MS)
    assert _cron_outputs(eng) == []
    eng.advance(MS)
    assert _cron_outputs(eng) == ["2026-01-02T11:00:00Z"]
    assert [r.status for r in eng.runs] == ["completed"]


def test_cron_fires_at_noon_paris_in_summer() -> None:
    # 2026-06-01 is a Monday; noon in Paris (CEST, UTC+2) on Friday 5 June is 10:00 UTC.
    eng = TestEngine(_cron_app(), start="2026-06-01T00:00:00Z")
    eng.advance_to("2026-06-05T09:59:59.999Z")
    assert _cron_outputs(eng) == []
    eng.advance_to("2026-06-05T10:00:00Z")
    assert _cron_outputs(eng) == ["2026-06-05T10:00:00Z"]


def test_cron_starts_one_run_per_tick_when_advancing_far() -> None:
    eng = TestEngine(_cron_app(), start="2026-01-01T00:00:00Z")
    eng.advance("30d")
    assert _cron_outputs(eng) == [
        "2026-01-02T11:00:00Z",
        "2026-01-09T11:00:00Z",
        "2026-01-16T11:00:00Z",
        "2026-01-23T11:00:00Z",
        "2026-01-30T11:00:00Z",
    ]


def test_cron_crossing_dst_keeps_local_noon() -> None:
    # Paris switches to CEST on Sunday 29 March 2026.
    eng = TestEngine(_cron_app(), start="2026-03-23T00:00:00Z")
    eng.advance("14d")
    assert _cron_outputs(eng) == ["2026-03-27T11:00:00Z", "2026-04-03T10:00:00Z"]


def test_cron_never_duplicates_ticks() -> None:
    eng = TestEngine(_cron_app(), start="2026-01-01T00:00:00Z")
    eng.advance_to("2026-01-02T11:00:00Z")
    for _ in range(3):
        eng.advance(0)
        eng.advance("1m")
    assert len(_cron_outputs(eng)) == 1
    # A new engine on the same store (a restart) resumes from the stored cursor.
    eng2 = TestEngine(eng.app, start=eng.now, store=eng.store)
    eng2.advance("1h")
    assert len(_cron_outputs(eng2)) == 1
    eng2.advance("7d")
    assert _cron_outputs(eng2) == ["2026-01-02T11:00:00Z", "2026-01-09T11:00:00Z"]


def test_cron_does_not_backfill_before_the_engine_started() -> None:
    eng = TestEngine(_cron_app(), start="2026-01-02T11:00:00.001Z")
    eng.advance("6d")
    assert _cron_outputs(eng) == []
    eng.advance("1d")
    assert _cron_outputs(eng) == ["2026-01-09T11:00:00Z"]


def test_utc_cron_without_tz_prefix() -> None:
    eng = TestEngine(_cron_app("*/15 * * * *"), start="2026-01-01T00:00:00Z")
    eng.advance("1h")
    assert _cron_outputs(eng) == [
        "2026-01-01T00:15:00Z",
        "2026-01-01T00:30:00Z",
        "2026-01-01T00:45:00Z",
        "2026-01-01T01:00:00Z",
    ]


def test_cron_and_event_triggers_on_one_function() -> None:
    app = App("mixed")

    @app.function(id="both", trigger=[on_cron("0 * * * *"), on_event("poke")])
    async def both(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.name

    eng = TestEngine(app, start="2026-01-01T00:30:00Z")
    [run] = eng.send(Event("poke")).runs
    assert run.output == "poke"
    eng.advance("30m")
    assert len(eng.runs) == 2


# --------------------------------------------------------------------------- cron catch-up


def _catch_up_app(catch_up: str | None, cron: str = "TZ=Europe/Paris 0 12 * * 5") -> App:
    app = App("cron")
    trigger = on_cron(cron) if catch_up is None else on_cron(cron, catch_up=catch_up)

    @app.function(id="weekly", trigger=trigger)
    async def weekly(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["scheduledAt"]

    return app


def _down_for_a_month(catch_up: str | None) -> tuple[TestEngine, TestEngine]:
    """A worker that saw the 2 January tick, then no worker until 31 January at 12:00."""
    eng = TestEngine(_catch_up_app(catch_up), start="2026-01-01T00:00:00Z")
    eng.advance_to("2026-01-02T11:00:00Z")
    assert _cron_outputs(eng) == ["2026-01-02T11:00:00Z"]
    later = TestEngine(eng.app, start="2026-01-31T12:00:00Z", store=eng.store)
    later.advance(0)
    return eng, later


def test_cron_catch_up_latest_is_the_default_one_run_for_the_last_missed_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="durable_core.cron"):
        _eng, later = _down_for_a_month(None)
    assert _cron_outputs(later) == ["2026-01-02T11:00:00Z", "2026-01-30T11:00:00Z"]
    assert "3 missed tick(s) skipped (catch_up='latest')" in caplog.text
    later.advance("7d")  # then on schedule again
    assert _cron_outputs(later)[-1] == "2026-02-06T11:00:00Z"
    assert len(_cron_outputs(later)) == 3


def test_cron_catch_up_all_runs_every_missed_tick_once_oldest_first() -> None:
    _eng, later = _down_for_a_month("all")
    assert sorted(_cron_outputs(later)) == [
        "2026-01-02T11:00:00Z", "2026-01-09T11:00:00Z", "2026-01-16T11:00:00Z",
        "2026-01-23T11:00:00Z", "2026-01-30T11:00:00Z",
    ]
    later.advance("1h")
    assert len(_cron_outputs(later)) == 5


def test_cron_catch_up_skip_runs_no_missed_tick(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="durable_core.cron"):
        _eng, later = _down_for_a_month("skip")
    assert _cron_outputs(later) == ["2026-01-02T11:00:00Z"]
    assert "4 missed tick(s) skipped (catch_up='skip')" in caplog.text
    later.advance("7d")
    assert _cron_outputs(later) == ["2026-01-02T11:00:00Z", "2026-02-06T11:00:00Z"]


@pytest.mark.parametrize(("late", "runs"), [(60, 1), (60.001, 0)])
def test_cron_catch_up_skip_still_runs_a_tick_at_most_a_minute_late(
    late: float, runs: int
) -> None:
    # 60 s late is on time (a busy or restarting worker), one more millisecond is missed.
    eng = TestEngine(_catch_up_app("skip"), start="2025-12-25T00:00:00Z")
    eng.advance_to("2026-01-02T10:00:00Z")  # saw (and stored) the 26 December tick
    tick = dt.datetime(2026, 1, 2, 11, tzinfo=dt.UTC)
    later = TestEngine(eng.app, start=tick + dt.timedelta(seconds=late), store=eng.store)
    later.advance(0)
    assert len(_cron_outputs(later)) == 1 + runs


def test_cron_catch_up_all_is_bounded_to_the_last_thousand_ticks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _catch_up_app("all", cron="* * * * *")
    eng = TestEngine(app, start="2026-01-01T00:00:00Z")
    eng.advance("1m")
    assert len(_cron_outputs(eng)) == 1
    with caplog.at_level(logging.INFO, logger="durable_core.cron"):
        later = TestEngine(app, start="2026-01-03T00:00:00Z", store=eng.store)  # 2 days down
        later.advance(0)
    outputs = sorted(_cron_outputs(later))
    assert len(outputs) == 1 + 1_000
    assert outputs[1] == "2026-01-02T07:21:00Z" and outputs[-1] == "2026-01-03T00:00:00Z"
    assert "1000+ missed tick(s) skipped (catch_up='all')" in caplog.text


@pytest.mark.parametrize("catch_up", ["latest", "all", "skip"])
def test_two_workers_catching_up_never_start_one_tick_twice(catch_up: str) -> None:
    eng = TestEngine(_catch_up_app(catch_up), start="2026-01-01T00:00:00Z")
    eng.advance_to("2026-01-02T11:00:00Z")
    # Two workers start after the outage, each with the cursor it read, on one store.
    a = TestEngine(eng.app, start="2026-01-31T11:00:30Z", store=eng.store)
    b = TestEngine(eng.app, start="2026-01-31T11:00:30Z", store=eng.store)
    a.advance(0)
    b.advance(0)
    a.advance("8d")
    b.advance("8d")
    outputs = _cron_outputs(a)
    assert len(outputs) == len(set(outputs))
    assert "2026-02-06T11:00:00Z" in outputs


def test_cron_catch_up_is_checked_at_definition() -> None:
    with pytest.raises(FunctionConfigError) as excinfo:
        on_cron("0 * * * *", catch_up="most")
    assert excinfo.value.field == "trigger.catch_up"
    assert "'latest', 'all', 'skip'" in str(excinfo.value)
    assert on_cron("0 * * * *").catch_up == "latest"


def test_describe_gives_triggers_and_options_as_json() -> None:
    import json

    from durable_core import CancelOn, Timeouts

    app = App("described")

    async def on_fail(ctx):  # type: ignore[no-untyped-def]
        return None

    @app.function(id="plain", trigger=on_event("a"))
    async def plain(ctx):  # type: ignore[no-untyped-def]
        return None

    @app.function(
        id="full", trigger=[on_event("b", if_="event.data.k == 1"),
                            on_cron("TZ=Europe/Paris 0 9 * * *", catch_up="skip")],
        retries=2, idempotency="event.data.k", on_failure=on_fail,
        cancel_on=[CancelOn("stop", if_="event.data.k == async.data.k", timeout="1d")],
        timeouts=Timeouts(start="5m", finish="1h"),
    )
    async def full(ctx):  # type: ignore[no-untyped-def]
        return None

    assert plain.describe() == {
        "id": "plain", "triggers": [{"event": "a", "if": None}],
        "options": {"retries": 4, "max_steps": 1000, "sandbox": True},
    }
    got = full.describe()
    assert got["triggers"] == [{"event": "b", "if": "event.data.k == 1"},
                               {"cron": "TZ=Europe/Paris 0 9 * * *", "catch_up": "skip"}]
    assert got["options"] == {
        "retries": 2, "max_steps": 1000, "sandbox": True, "idempotency": "event.data.k",
        "on_failure": "full-failure",
        "cancel_on": [{"event": "stop", "if": "event.data.k == async.data.k", "timeout": "1d"}],
        "timeouts": {"start": "5m", "finish": "1h"},
    }
    assert json.loads(json.dumps(got)) == got
