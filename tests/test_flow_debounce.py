"""debounce=Debounce(period, key=, timeout=): one run `period` after the last matching
event, with that event; scenario tests on TestEngine's virtual clock, on every store."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from durable_core import App, Debounce, Event, on_event
from durable_core.store import Store
from durable_core.testing import TestEngine


def make_app(**debounce: Any) -> tuple[App, list[tuple[str, list[int], int]]]:
    app = App("deb")
    seen: list[tuple[str, list[int], int]] = []

    @app.function(id="deb", trigger=on_event("ping"),
                  debounce=Debounce(**{"period": "10s", **debounce}))
    async def deb(ctx: Any) -> int:
        seen.append((ctx.event.data.get("k", ""), [e.data["n"] for e in ctx.events],
                     ctx.event.data["n"]))
        return int(ctx.event.data["n"])

    return app, seen


def ping(n: int, k: str = "a") -> Event:
    return Event("ping", {"n": n, "k": k})


def test_one_run_after_the_last_event_of_a_quiet_period(any_store: Store) -> None:
    app, seen = make_app()
    t = TestEngine(app, store=any_store)
    for n in range(3):
        if n:
            t.advance("5s")
        assert t.send(ping(n)).runs == []
    t.advance("9.999s")  # the last event came at 10s: 10s + 10s is not yet reached
    assert seen == [] and t.runs == []
    t.advance("0.001s")
    assert seen == [("a", [2], 2)]
    [run] = t.runs
    assert run.status == "completed" and run.output == 2
    t.advance("1h")
    assert len(t.runs) == 1 and any_store.buffer_states() == []


def test_each_key_is_debounced_apart() -> None:
    app, seen = make_app(key="event.data.k")
    t = TestEngine(app)
    t.send([ping(1, "a"), ping(2, "b"), ping(3, "a")])
    t.advance("3s")
    t.send(ping(4, "b"))
    t.advance("9s")
    assert seen == [("a", [3], 3)]
    t.advance("1s")
    assert seen == [("a", [3], 3), ("b", [4], 4)]


def test_timeout_caps_the_delay_from_the_first_event() -> None:
    app, seen = make_app(timeout="30s")
    t = TestEngine(app)
    for n in range(12):  # an event every 4 s: the period never passes quietly
        t.send(ping(n))
        t.advance("4s")
    # the first period began at 0 s: cut at 30 s with the last event before it (28 s);
    # the next began at 32 s (event 8); its last event (11) came at 44 s: run at 54 s
    assert seen == [("a", [7], 7)]
    t.advance("5.999s")
    assert len(seen) == 1
    t.advance("0.001s")
    assert seen == [("a", [7], 7), ("a", [11], 11)]


def test_after_the_run_a_new_event_starts_a_new_quiet_period() -> None:
    app, seen = make_app()
    t = TestEngine(app)
    t.send(ping(1))
    t.advance("10s")
    t.send(ping(2))
    t.advance("10s")
    assert seen == [("a", [1], 1), ("a", [2], 2)]
    assert [r.output for r in t.runs] == [1, 2]


def test_an_idle_engine_wakes_at_the_due_time() -> None:
    """next_deadline names the buffer's ready time: an idle worker sleeps until then."""
    app, _seen = make_app(timeout="15s")
    t = TestEngine(app)
    t.send(ping(1))
    start = t.engine.next_deadline(0)
    t.advance("8s")
    t.send(ping(2))
    # first event at t0: due at t0 + 10 s; the second (t0 + 8 s) pushes it to t0 + 18 s,
    # capped by the timeout at t0 + 15 s
    assert start is not None and t.engine.next_deadline(0) == start + 5_000


def test_a_key_that_fails_debounces_under_the_empty_key(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    app, seen = make_app(key="event.data.missing.deep")
    t = TestEngine(app)
    with caplog.at_level(logging.WARNING, logger="durable_core.flow"):
        t.send([ping(1), ping(2)])
    t.advance("10s")
    assert seen == [("a", [2], 2)]
    assert "goes under the empty key" in caplog.text


def test_an_event_that_does_not_match_starts_nothing() -> None:
    app, seen = make_app()
    t = TestEngine(app)
    t.send(Event("other", {"n": 1}))
    t.advance("1m")
    assert seen == [] and t.store.buffer_states() == []


def test_describe_and_the_run_id_are_stable() -> None:
    """The run a buffer becomes has an id derived from its event, so a repeated hand-off
    names the same run."""
    from durable_core.core._flow_buffers import buffered_run_id

    a = buffered_run_id("f", "k", 3, "e_1", 1_000)
    assert a == buffered_run_id("f", "k", 3, "e_1", 1_000)
    assert a != buffered_run_id("f", "k2", 3, "e_1", 1_000)
    assert a.startswith("r_0000000003e8")


def test_a_trio_worker_wakes_at_the_due_time_not_at_its_poll_interval() -> None:
    """The real driver, on trio's MockClock: an idle worker with an hour's poll interval
    starts the debounced run 10 s after the last event (and a batch at its timeout)."""
    import trio
    import trio.testing

    from durable_core import Batch, Worker
    from stores import MemoryStore

    app, seen = make_app(key="event.data.k")
    got: list[list[int]] = []

    @app.function(id="bat", trigger=on_event("item"), batch_events=Batch(10, "20s"))
    async def bat(ctx: Any) -> None:
        got.append([e.data["n"] for e in ctx.events])

    store = MemoryStore()
    base = 1_767_225_600_000
    times: list[float] = []

    async def main() -> None:
        w = Worker(app, store, poll_interval=3600,
                   clock=lambda: base + int(trio.current_time() * 1000))
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send([ping(1), Event("item", {"n": 1})])
            await trio.sleep(4)
            await w.send([ping(2), Event("item", {"n": 2})])
            with trio.fail_after(3600):
                while not (seen and got):
                    await trio.sleep(0.5)
                    if seen and not times:
                        times.append(trio.current_time())
            times.append(trio.current_time())
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen == [("a", [2], 2)] and got == [[1, 2]]
    assert 14 <= times[0] <= 15 and 20 <= times[1] <= 21
