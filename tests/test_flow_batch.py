"""batch_events=Batch(max_size, timeout, key=, if_=): one run per batch, with ctx.events;
scenario tests on TestEngine's virtual clock, on every store."""

from __future__ import annotations

from typing import Any

from durable_core import App, Batch, Event, on_event
from durable_core.store import Store
from durable_core.testing import TestEngine


def make_app(**batch: Any) -> tuple[App, list[tuple[list[int], int]]]:
    app = App("bat")
    seen: list[tuple[list[int], int]] = []

    @app.function(id="bat", trigger=on_event("item"),
                  batch_events=Batch(**{"max_size": 3, "timeout": "5s", **batch}))
    async def bat(ctx: Any) -> list[int]:
        seen.append(([e.data["n"] for e in ctx.events], ctx.event.data["n"]))
        return [e.data["n"] for e in ctx.events]

    return app, seen


def item(n: int, k: str = "a", **data: Any) -> Event:
    return Event("item", {"n": n, "k": k, **data})


def test_full_batches_run_at_once_and_the_rest_after_the_timeout(any_store: Store) -> None:
    app, seen = make_app()
    t = TestEngine(app, store=any_store)
    t.send([item(n) for n in range(7)])
    assert seen == [([0, 1, 2], 0), ([3, 4, 5], 3)]
    t.advance("4.999s")
    assert len(seen) == 2
    t.advance("0.001s")
    assert seen[2] == ([6], 6)
    assert sorted(r.output for r in t.runs) == [[0, 1, 2], [3, 4, 5], [6]]
    assert any_store.buffer_states() == []
    # each run holds its events, in arrival order
    assert [len(any_store.get_run(r.id).event_ids) for r in t.runs] == [3, 3, 1]


def test_the_timeout_runs_from_the_batch_first_event() -> None:
    app, seen = make_app(max_size=10)
    t = TestEngine(app)
    t.send(item(1))
    t.advance("3s")
    t.send(item(2))
    t.advance("1.999s")
    assert seen == []
    t.advance("0.001s")
    assert seen == [([1, 2], 1)]
    t.send(item(3))  # a new batch, with its own timeout
    t.advance("4s")
    assert len(seen) == 1
    t.advance("1s")
    assert seen[-1] == ([3], 3)


def test_each_key_batches_apart() -> None:
    app, seen = make_app(key="event.data.k")
    t = TestEngine(app)
    t.send([item(1, "a"), item(2, "b"), item(3, "a"), item(4, "a"), item(5, "b")])
    assert seen == [([1, 3, 4], 1)]
    t.advance("5s")
    assert seen == [([1, 3, 4], 1), ([2, 5], 2)]


def test_an_event_whose_if_is_not_true_runs_alone_at_once() -> None:
    app, seen = make_app(if_="event.data.bulk")
    t = TestEngine(app)
    t.send([item(1, bulk=True), item(2, bulk=False), item(3, bulk="yes"), item(4),
            item(5, bulk=True)])
    # false, not a bool, or failing (no field): each runs alone, at once (Inngest)
    assert sorted(seen) == [([2], 2), ([3], 3), ([4], 4)]
    t.advance("5s")
    assert seen[-1] == ([1, 5], 1)


def test_a_batch_reaching_10_mib_starts_early() -> None:
    app, seen = make_app(max_size=100)
    t = TestEngine(app)
    pad = "x" * (500 * 1024)  # 21 of these reach 10 MiB
    t.send([item(n, pad=pad) for n in range(25)])
    assert [len(ns) for ns, _first in seen] == [21]
    t.advance("5s")
    assert [len(ns) for ns, _first in seen] == [21, 4]


def test_ctx_events_holds_the_one_event_of_an_unbatched_run() -> None:
    app = App("plain")
    got: list[Any] = []

    @app.function(id="plain", trigger=on_event("item"))
    async def plain(ctx: Any) -> None:
        got.append((ctx.events, ctx.event))

    t = TestEngine(app)
    t.send(item(1))
    [(events, first)] = got
    assert isinstance(events, tuple) and len(events) == 1 and events[0] is first
    assert first.data["n"] == 1


def test_replay_sees_the_same_events() -> None:
    """Each re-entry of the run (one per step) sees the batch again, unchanged."""
    app = App("replay")
    views: list[list[int]] = []

    @app.function(id="r", trigger=on_event("item"), batch_events=Batch(2, "5s"))
    async def r(ctx: Any) -> int:
        views.append([e.data["n"] for e in ctx.events])
        a = await ctx.step.run("a", lambda: len(ctx.events))
        await ctx.step.sleep("nap", "1m")
        b = await ctx.step.run("b", lambda: sum(e.data["n"] for e in ctx.events))
        return int(a + b)

    t = TestEngine(app)
    t.send([item(4), item(5)])
    [run] = t.runs
    assert run.status == "sleeping" and views == [[4, 5]]
    t.engine.forget([run.id])  # the machine is rebuilt from the store: a replay
    t.advance("1m")
    assert run.output == 2 + 9
    assert views == [[4, 5], [4, 5]]
