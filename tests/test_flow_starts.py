"""Throttle, rate limit and singleton (flow control of run starts) on ``TestEngine``, on the
virtual clock: what each option does, its keys, a key expression that fails, and how the
skips show (``skipped_triggers``, ``durable/function.cancelled``)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from durable_core import App, Event, RateLimit, Singleton, Throttle, on_event
from durable_core.core._lifecycle import CANCEL_REASONS, CANCELLED_EVENT
from durable_core.testing import TestEngine

START = "2026-01-01T00:00:00Z"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _app(**options: Any) -> App:
    app = App("flow-starts")

    @app.function(id="f", trigger=on_event("go"), **options)
    async def f(ctx: Any) -> Any:
        await ctx.step.run("first", lambda: None)  # its journal entry's ts: the start
        await ctx.step.sleep("work", "30s")
        return {"i": ctx.event.data.get("i")}

    return app


def _started(engine: TestEngine) -> list[tuple[Any, float]]:
    """(event i, seconds after T0 the run started), for completed runs, in start order."""
    out = []
    t0 = T0.timestamp() * 1000
    for r in engine.runs:
        if r.status == "completed":
            started = engine.store.load_journal(r.id)[0].ts
            out.append((r.output["i"], (started - t0) / 1000))
    return sorted(out, key=lambda x: x[1])


def test_throttle_delays_starts_first_in_first_out() -> None:
    engine = TestEngine(_app(throttle=Throttle(2, "1m")), start=START)
    engine.send([Event("go", {"i": i}) for i in range(5)])
    assert [r.status for r in engine.runs] == ["sleeping"] + ["queued"] * 4
    engine.advance("5m")
    # one every 30 s (limit 2 per minute, burst 1), in the order of the events
    assert _started(engine) == [(0, 0), (1, 30), (2, 60), (3, 90), (4, 120)]
    assert engine.skipped_triggers() == []


def test_throttle_burst_and_keys() -> None:
    engine = TestEngine(_app(throttle=Throttle(1, "1m", burst=2, key="event.data.k")),
                        start=START)
    engine.send([Event("go", {"i": i, "k": "a" if i < 3 else "b"}) for i in range(5)])
    engine.advance("5m")
    # key a: two at once (the burst), then one a minute; key b is throttled apart
    assert _started(engine) == [(0, 0), (1, 0), (3, 0), (4, 0), (2, 60)]


def test_rate_limit_drops_and_records_the_skips() -> None:
    engine = TestEngine(_app(rate_limit=RateLimit(2, "1m", key="event.data.k")), start=START)
    sent = engine.send([Event("go", {"i": i, "k": "a"}) for i in range(4)])
    assert len(sent.runs) == 2
    skips = engine.skipped_triggers()
    assert sorted(s.event_id for s in skips) == sorted(sent[2:])
    assert {(s.reason, s.key) for s in skips} == {("rate_limit", "a")}
    assert {s.run_id for s in skips} == {sent.runs[1].id}  # the last run the limit let start
    engine.advance("30s")  # one every 30 s after the burst
    assert len(engine.send(Event("go", {"i": 9, "k": "a"})).runs) == 1
    assert len(engine.send(Event("go", {"i": 10, "k": "a"})).runs) == 0
    assert len(engine.send(Event("go", {"i": 11, "k": "b"})).runs) == 1


def test_rate_limit_one_per_day_is_idempotency_per_key() -> None:
    engine = TestEngine(_app(rate_limit=RateLimit(1, "24h", key="event.data.k")),
                        start=START)
    assert len(engine.send(Event("go", {"i": 0, "k": "x"})).runs) == 1
    engine.advance("23h")
    assert len(engine.send(Event("go", {"i": 1, "k": "x"})).runs) == 0
    engine.advance("1h")
    assert len(engine.send(Event("go", {"i": 2, "k": "x"})).runs) == 1


def test_singleton_skip_drops_newcomers_while_a_run_is_active() -> None:
    engine = TestEngine(_app(singleton=Singleton(key="event.data.k", mode="skip")),
                        start=START)
    [first] = engine.send(Event("go", {"i": 0, "k": "a"})).runs
    assert engine.send(Event("go", {"i": 1, "k": "a"})).runs == []  # a is sleeping: active
    assert len(engine.send(Event("go", {"i": 2, "k": "b"})).runs) == 1
    [skip] = engine.skipped_triggers()
    assert (skip.reason, skip.key, skip.run_id) == ("singleton", "a", first.id)
    engine.advance("31s")
    assert first.status == "completed"
    assert len(engine.send(Event("go", {"i": 3, "k": "a"})).runs) == 1


def test_singleton_cancel_replaces_the_active_run() -> None:
    engine = TestEngine(_app(singleton=Singleton(key="event.data.k", mode="cancel")),
                        start=START)
    [first] = engine.send(Event("go", {"i": 0, "k": "a"})).runs
    engine.advance("10s")
    [second] = engine.send(Event("go", {"i": 1, "k": "a"})).runs
    assert first.status == "cancelled"
    assert first.error is not None and second.id in first.error.message
    assert second.status == "sleeping"
    [cancelled] = [e for e in engine.store.list_events(name=CANCELLED_EVENT)]
    assert "singleton" in CANCEL_REASONS
    assert '"reason":"singleton"' in cancelled.data.replace(" ", "")
    engine.advance("1m")
    assert second.status == "completed"


def test_singleton_cancel_burst_starts_the_first_newcomer() -> None:
    engine = TestEngine(_app(singleton=Singleton(mode="cancel")), start=START)
    [first] = engine.send(Event("go", {"i": 0})).runs
    sent = engine.send([Event("go", {"i": i}) for i in (1, 2, 3)])
    # i=1 replaces the active run; i=2 and i=3 arrive while it waits: skipped, as Inngest
    # documents for rapid bursts
    assert [r.output for r in sent.runs] == [None]
    assert sorted(s.event_id for s in engine.skipped_triggers()) == sorted(sent[1:])
    assert first.status == "cancelled"
    engine.advance("1m")
    assert [i for i, _ in _started(engine)] == [1]


def test_a_failing_key_uses_the_unkeyed_bucket(caplog: pytest.LogCaptureFixture) -> None:
    engine = TestEngine(_app(rate_limit=RateLimit(1, "1h", key="event.data.k")), start=START)
    with caplog.at_level(logging.WARNING, logger="durable_core.flow"):
        assert len(engine.send(Event("go", {"i": 0})).runs) == 1  # no k: unkeyed
        assert len(engine.send(Event("go", {"i": 1})).runs) == 0  # the unkeyed bucket again
        assert len(engine.send(Event("go", {"i": 2, "k": "x"})).runs) == 1
    assert "rate_limit.key failed" in caplog.text
    assert engine.skipped_triggers()[0].key == ""


def test_describe_and_no_limits_without_options() -> None:
    engine = TestEngine(_app(), start=START)
    assert len(engine.send([Event("go", {"i": i}) for i in range(3)]).runs) == 3


def test_events_show_and_send_name_the_skips(tmp_path: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from test_cli import run_cli

    url = f"sqlite:///{tmp_path / 'skips.db'}"
    send = ("send", "go", "--data", json.dumps({"k": "a"}), "--app",
            "flow_starts_app:app", "--store", url)
    run_cli(capsys, *send, "--id", "first")
    code, out, _ = run_cli(capsys, *send, "--id", "second")
    assert code == 0
    assert "event second started no run of one: run " in out
    assert "holds its singleton key 'a'" in out
    code, out, _ = run_cli(capsys, "events", "show", "second", "--store", url, "--json")
    doc = json.loads(out)
    # ``one`` skips the newcomer; ``swap`` (mode="cancel") created it, to replace the first
    assert {(k["function_id"], k["reason"]) for k in doc["skipped"]} == {("one", "singleton")}
