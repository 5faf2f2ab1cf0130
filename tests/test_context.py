"""The run context: ctx.now()/random()/uuid4() are deterministic (the same on replay),
ctx.logger emits each record once, and the run's identity (event, run_id, attempt)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import pytest

from durable_core import App, Event, RunMachine, on_event
from durable_core.core._model import (
    AppendJournal,
    CompleteRun,
    EmitEvents,
    ExecuteStep,
    RunStarted,
    StartRun,
    StepCompleted,
)
from durable_core.testing import RunHandle, TestEngine

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LOGGER = "durable_core.run"


def now_ms(eng: TestEngine) -> int:
    return int(eng.now.timestamp() * 1000)


def replay(eng: TestEngine, run: RunHandle) -> list[Any]:
    rec = eng.store.get_run(run.id)
    m = RunMachine(
        eng.app.get(rec.function_id), rec.id, [Event.from_json(t) for t in rec.events],
        rec.created_at, eng.store.load_journal(rec.id), parent_run_id=rec.parent_run_id,
    )
    cmds = m.handle(RunStarted(now_ms(eng)))
    bad = [c for c in cmds if isinstance(c, ExecuteStep | EmitEvents | StartRun | AppendJournal)]
    assert bad == []
    return cmds


# --------------------------------------------------------------------------- now()


def _clock_app() -> tuple[App, list[list[dt.datetime]]]:
    app = App("clock")
    seen: list[list[dt.datetime]] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        times = [ctx.now()]
        await ctx.step.run("a", lambda: 1)
        times.append(ctx.now())
        await ctx.step.sleep("nap", "1h")
        times.append(ctx.now())
        await ctx.step.wait_for_event("w", event="ping", timeout="1d")
        times.append(ctx.now())
        times.append(ctx.now())  # no step in between: the clock does not move
        seen.append(times)
        return [t.isoformat() for t in times]

    return app, seen


def test_now_is_the_time_of_the_latest_result_seen() -> None:
    app, seen = _clock_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    eng.advance("30m")
    eng.send(Event("ping"))
    assert run.status == "completed"
    [times] = seen
    assert times == [
        START,
        START,
        START + dt.timedelta(hours=1),
        START + dt.timedelta(hours=1, minutes=30),
        START + dt.timedelta(hours=1, minutes=30),
    ]
    assert all(t.tzinfo is not None and t.utcoffset() == dt.timedelta(0) for t in times)


def test_now_is_the_same_on_replay() -> None:
    app, seen = _clock_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h45m")
    eng.send(Event("ping"))
    eng.advance("3d")  # replay much later
    replay(eng, run)
    live, replayed = seen
    assert live == replayed


def test_now_is_the_same_after_a_restart() -> None:
    app, seen = _clock_app()
    eng = TestEngine(app, start=START)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h10m")
    eng2 = TestEngine(app, start=eng.now, store=eng.store)  # no cached machine
    eng2.advance("5m")
    eng2.send(Event("ping"))
    assert eng2.run(run.id).status == "completed"
    [times] = seen
    assert times[2] == START + dt.timedelta(hours=1)
    assert times[3] == START + dt.timedelta(hours=1, minutes=15)


# --------------------------------------------------------------------------- random / uuid4


def _entropy_app() -> tuple[App, list[dict[str, Any]]]:
    app = App("entropy")
    seen: list[dict[str, Any]] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        r1, r2 = ctx.random(), ctx.random()
        u1 = ctx.uuid4()
        await ctx.step.sleep("nap", "1m")
        u2, r3 = ctx.uuid4(), ctx.random()
        seen.append({"run": ctx.run_id, "r": [r1, r2, r3], "u": [u1, u2]})
        return {"r": [r1, r2, r3], "u": [str(u1), str(u2)]}

    return app, seen


def test_random_and_uuid4_are_well_formed_and_vary_within_a_run() -> None:
    app, seen = _entropy_app()
    eng = TestEngine(app)
    eng.send(Event("go"))
    eng.advance("1m")
    [s] = seen
    assert all(isinstance(r, float) and 0.0 <= r < 1.0 for r in s["r"])
    assert len(set(s["r"])) == 3
    assert all(isinstance(u, uuid.UUID) and u.version == 4 for u in s["u"])
    assert s["u"][0] != s["u"][1]


def test_random_and_uuid4_are_the_same_on_replay() -> None:
    app, seen = _entropy_app()
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1m")
    replay(eng, run)
    live, replayed = seen
    assert live == replayed
    assert run.output == {"r": live["r"], "u": [str(u) for u in live["u"]]}


def test_random_and_uuid4_differ_between_runs() -> None:
    app, seen = _entropy_app()
    eng = TestEngine(app)
    eng.send([Event("go"), Event("go")])
    eng.advance("1m")
    a, b = seen
    assert a["run"] != b["run"]
    assert a["r"] != b["r"]
    assert set(a["u"]).isdisjoint(b["u"])


# --------------------------------------------------------------------------- logger


def _logging_app() -> App:
    app = App("logs")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx):  # type: ignore[no-untyped-def]
        ctx.logger.info("start %s", ctx.event.data["n"])
        await ctx.step.run("a", lambda: 1)
        ctx.logger.warning("after a")
        await ctx.step.sleep("nap", "1h")
        ctx.logger.info("after sleep")
        return "done"

    return app


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_logger_emits_each_record_once_live(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    eng = TestEngine(_logging_app())
    [run] = eng.send(Event("go", {"n": 7})).runs
    assert _messages(caplog) == ["start 7", "after a"]
    eng.advance("1h")
    assert run.status == "completed"
    assert _messages(caplog) == ["start 7", "after a", "after sleep"]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert all(getattr(r, "run_id", None) == run.id for r in records)
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, logging.INFO]


def test_logger_is_silent_while_replaying_after_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    app = _logging_app()
    eng = TestEngine(app)
    [run] = eng.send(Event("go", {"n": 1})).runs
    eng2 = TestEngine(app, start=eng.now, store=eng.store)  # rebuilds from the journal
    eng2.advance("1h")
    assert eng2.run(run.id).status == "completed"
    assert _messages(caplog) == ["start 1", "after a", "after sleep"]


def test_logger_is_silent_while_replaying_a_journal_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    app = _logging_app()
    m = RunMachine(app.get("f"), "r1", [Event("go", {"n": 2})], 0)
    m.handle(RunStarted(0))
    m.handle(StepCompleted(0, 0, 1, 5))  # logs "after a" and starts the sleep
    assert _messages(caplog) == ["start 2", "after a"]
    m2 = RunMachine(app.get("f"), "r1", [Event("go", {"n": 2})], 0, m.entries)
    cmds = m2.handle(RunStarted(10))
    assert not any(isinstance(c, ExecuteStep) for c in cmds)
    assert _messages(caplog) == ["start 2", "after a"]


def test_logger_is_silent_when_replaying_a_finished_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    eng = TestEngine(_logging_app())
    [run] = eng.send(Event("go", {"n": 3})).runs
    eng.advance("1h")
    assert _messages(caplog) == ["start 3", "after a", "after sleep"]
    cmds = replay(eng, run)
    assert any(isinstance(c, CompleteRun) for c in cmds)
    assert _messages(caplog) == ["start 3", "after a", "after sleep"]


# --------------------------------------------------------------------------- identity


def test_context_exposes_event_run_and_function() -> None:
    app = App("ident")
    seen: list[dict[str, Any]] = []

    @app.function(id="who", trigger=on_event("go"))
    async def who(ctx):  # type: ignore[no-untyped-def]
        seen.append({
            "run_id": ctx.run_id, "function_id": ctx.function_id, "event": ctx.event,
            "events": ctx.events, "attempt": ctx.attempt,
        })
        return ctx.event.data

    eng = TestEngine(app)
    [run] = eng.send(Event("go", {"k": "v"}, id="evt-1")).runs
    [s] = seen
    assert s["run_id"] == run.id
    assert s["function_id"] == "who"
    assert isinstance(s["event"], Event)
    assert (s["event"].name, s["event"].data, s["event"].id) == ("go", {"k": "v"}, "evt-1")
    assert s["events"] == (s["event"],)
    assert s["attempt"] == 0
    assert run.output == {"k": "v"}
