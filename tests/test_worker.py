"""The trio Worker on trio's MockClock: virtual time, real concurrency, the memory store."""

from __future__ import annotations

import gc
import itertools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from durable_core import App, Context, Event, Worker, on_cron, on_event, tuned_gc
from durable_core.drivers._gc import TUNED_THRESHOLDS
from stores import MemoryStore

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def mock_ms() -> int:
    return BASE_MS + int(trio.current_time() * 1000)


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


async def wait_until(pred: Callable[[], bool], timeout: float = 3 * 86_400.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.5)


def statuses(store: MemoryStore) -> list[str]:
    return sorted(r.status for r in store.list_runs())


def test_worker_runs_sleeps_waits_and_threads_in_virtual_time() -> None:
    app = App("w", async_bodies="trio")
    threads: list[str] = []

    def sync_body(x: int) -> int:
        threads.append(threading.current_thread().name)
        return x + 1

    async def async_body(x: int) -> int:
        await trio.sleep(5)  # trio awaits are fine in step bodies of a 'trio' app
        return x * 10

    @app.function(id="flow", trigger=on_event("go"))
    async def flow(ctx: Context) -> dict[str, Any]:
        a = await ctx.step.run("sync", sync_body, 1)
        b = await ctx.step.run("async", async_body, a)
        await ctx.step.sleep("nap", "2h")
        ev = await ctx.step.wait_for_event("wait", event="ok", timeout="1d",
                                            if_="async.data.k == event.data.k")
        return {"a": a, "b": b, "k": None if ev is None else ev.data["k"]}

    store = MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send([Event("go", {"k": 1}), Event("go", {"k": 2})])
            await wait_until(lambda: statuses(store) == ["waiting", "waiting"])
            assert trio.current_time() >= 2 * 3600  # the sleep took virtual time
            await w.send(Event("ok", {"k": 2}))
            await wait_until(lambda: "completed" in statuses(store))
            await trio.sleep(86_400)
            await wait_until(lambda: statuses(store) == ["completed", "completed"])
            w.stop()

    run_virtual(main)
    outputs = sorted(r.output or "" for r in store.list_runs())
    assert outputs == ['{"a":2,"b":20,"k":2}', '{"a":2,"b":20,"k":null}']
    assert threads and all(name != threading.main_thread().name for name in threads)


def test_cron_ticks_once_each_in_the_worker() -> None:
    app = App("c")

    @app.function(id="tick", trigger=on_cron("*/10 * * * *"))
    async def tick(ctx: Context) -> str:
        return str(ctx.event.data["scheduledAt"])

    store = MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await trio.sleep(3600 + 1)
            await wait_until(lambda: len(store.list_runs(status="completed")) == 6)
            w.stop()

    run_virtual(main)
    ticks = sorted(r.output or "" for r in store.list_runs())
    assert len(ticks) == len(set(ticks)) == 6
    assert ticks[0] == '"2026-01-01T00:10:00Z"' and ticks[-1] == '"2026-01-01T01:00:00Z"'


def test_crashed_worker_is_replaced_without_rerunning_committed_steps() -> None:
    app = App("r", async_bodies="trio")
    calls: list[str] = []
    gate = trio.Event()

    async def step(name: str) -> str:
        calls.append(name)
        if name == "b" and not gate.is_set():
            await trio.sleep_forever()  # the first worker "crashes" while b is in flight
        return name

    @app.function(id="abc", trigger=on_event("go"))
    async def abc(ctx: Context) -> list[str]:
        return [await ctx.step.run(n, step, n) for n in ("a", "b", "c")]

    store = MemoryStore()

    async def main() -> None:
        first = Worker(app, store, poll_interval=30, clock=mock_ms, lease_ms=10_000)
        async with trio.open_nursery() as n:
            await n.start(first.run)
            await first.send(Event("go", {}))
            await wait_until(lambda: calls == ["a", "b"])
            n.cancel_scope.cancel()  # crash: no graceful release, the lease stays behind
        gate.set()
        second = Worker(app, store, poll_interval=30, clock=mock_ms, lease_ms=10_000)
        async with trio.open_nursery() as n:
            await n.start(second.run)
            await wait_until(lambda: statuses(store) == ["completed"])
            second.stop()

    run_virtual(main)
    assert calls == ["a", "b", "b", "c"]  # only the step in flight ran again
    assert store.list_runs()[0].output == '["a","b","c"]'


def test_graceful_stop_releases_runs_for_another_worker() -> None:
    app = App("g", async_bodies="trio")
    calls: list[int] = []

    async def body(i: int) -> int:
        calls.append(i)
        await trio.sleep(1)
        return i

    @app.function(id="many", trigger=on_event("go"))
    async def many(ctx: Context) -> int:
        return sum([await ctx.step.run("s", body, i) for i in range(5)])

    store = MemoryStore()

    async def main() -> None:
        first = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as n:
            await n.start(first.run)
            await first.send(Event("go", {}))
            await wait_until(lambda: len(calls) == 2)
            first.stop()  # the step in flight finishes and is committed; then release
        run = store.list_runs()[0]
        assert run.lease_owner is None and run.status != "completed"
        second = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as n:
            await n.start(second.run)
            await wait_until(lambda: statuses(store) == ["completed"], timeout=60)
            second.stop()

    run_virtual(main)
    assert calls == [0, 1, 2, 3, 4]
    assert store.list_runs()[0].output == "10"


@pytest.mark.parametrize("bodies", ["async", "sync"])
def test_parallel_steps_in_the_worker(bodies: str) -> None:
    app = App("p", async_bodies="trio")

    def sync_body(i: int) -> int:
        return i * i

    async def async_body(i: int) -> int:
        await trio.sleep(i)
        return i * i

    body = sync_body if bodies == "sync" else async_body

    @app.function(id="fan", trigger=on_event("go"))
    async def fan(ctx: Context) -> list[int]:
        results = await ctx.gather(*[ctx.step.run(f"sq{i}", body, i) for i in range(5)])
        return list(results)

    store = MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(Event("go", {}))
            await wait_until(lambda: statuses(store) == ["completed"])
            if bodies == "async":
                assert trio.current_time() < 6  # ran concurrently: ~4 s, not 0+1+2+3+4
            w.stop()

    run_virtual(main)
    assert store.list_runs()[0].output == "[0,1,4,9,16]"


@pytest.mark.parametrize("sync_bodies", [False, True])
def test_a_body_held_up_past_its_lease_does_not_run(sync_bodies: bool) -> None:
    # A worker that cannot be sure it still holds a run's lease (it was held up for longer
    # than the lease, e.g. overloaded or paused) must not start the run's next body: another
    # worker may have taken the run over and committed that step already. It lets the run
    # go; once the lease runs out the run is claimed again and finishes, each body once.
    app = App("lease")
    calls: list[str] = []

    def body_sync(name: str) -> str:
        calls.append(name)
        return name

    async def body_async(name: str) -> str:
        calls.append(name)
        return name

    body = body_sync if sync_bodies else body_async

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> list[str]:
        return [await ctx.step.run(n, body, n) for n in ("a", "b", "c")]

    store = MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=0.5, clock=mock_ms, lease_ms=10_000)
        held = w.engine.lease_held
        refused: list[str] = []

        def lease_held(run_id: str, now: int) -> bool:
            if len(calls) == 1 and not refused:  # right before "b", pretend we were held up
                refused.append(run_id)
                return False
            return held(run_id, now)

        w.engine.lease_held = lease_held  # type: ignore[method-assign]
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(Event("go"))
            await wait_until(lambda: statuses(store) == ["completed"])
            assert trio.current_time() >= 10  # taken again only once the lease ran out
            w.stop()
        assert refused

    run_virtual(main)
    assert calls == ["a", "b", "c"]
    [run] = store.list_runs()
    assert run.output == '["a","b","c"]'


def test_engine_lease_bookkeeping() -> None:
    app = App("lb")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        return await ctx.step.run("a", lambda: 1)

    store = MemoryStore()
    from durable_core.engine._engine import Engine

    eng = Engine(app, store, owner="me", entropy=lambda n: b"\x01" * n, lease_ms=10_000)
    t0 = BASE_MS
    eng.send([Event("go")], t0)
    eng.route(t0)
    plan = eng.claim(t0 + 1_000)
    assert plan is not None
    [run_id] = [w.run_id for w in plan.batch.writes]
    margin = 1_000  # a tenth of the lease
    expires = t0 + 1_000 + 10_000
    assert eng.lease_held(run_id, expires - margin - 1)
    assert not eng.lease_held(run_id, expires - margin)
    eng.renewed([run_id], t0 + 5_000)
    assert eng.lease_held(run_id, t0 + 15_000 - margin - 1)
    assert not eng.lease_held("r_unknown", t0)


def test_leases_are_renewed_every_third_of_a_lease_while_bodies_run() -> None:
    # Five 4-second bodies outlast a 9-second lease: renewals (every 3 s) keep it, so no
    # body is held back and the run finishes in one go; cancels are still looked for
    # every second, but the per-run renewal writes happen only every third of a lease.
    app = App("renew", async_bodies="trio")
    calls: list[int] = []

    async def slow(i: int) -> int:
        await trio.sleep(4)
        calls.append(i)
        return i

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        return sum([await ctx.step.run(f"s{i}", slow, i) for i in range(5)])

    store = MemoryStore()
    renewals: list[float] = []
    renew = store.renew

    def counting_renew(*args: Any) -> set[str]:
        renewals.append(trio.current_time())
        return renew(*args)

    store.renew = counting_renew  # type: ignore[method-assign]

    async def main() -> None:
        w = Worker(app, store, poll_interval=0.5, clock=mock_ms, lease_ms=9_000)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(Event("go"))
            await wait_until(lambda: statuses(store) == ["completed"])
            w.stop()
        assert w.bodies_skipped == 0 and w.leases_lost == 0

    run_virtual(main)
    assert calls == [0, 1, 2, 3, 4]
    assert 5 <= len(renewals) <= 8  # ~20 s of bodies / 3 s, not one a second
    assert all(b - a >= 2.9 for a, b in itertools.pairwise(renewals))


def test_tuned_gc_raises_thresholds_for_the_block_and_restores_them() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with tuned_gc():
            assert gc.get_threshold() == TUNED_THRESHOLDS
            with tuned_gc():
                assert gc.get_threshold() == TUNED_THRESHOLDS
            assert gc.get_threshold() == TUNED_THRESHOLDS
        assert gc.get_threshold() == (700, 10, 10)
        with pytest.raises(RuntimeError), tuned_gc():
            raise RuntimeError("boom")
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_worker_tune_gc_holds_only_while_it_runs() -> None:
    app = App("gc")
    seen: list[tuple[int, int, int]] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        await ctx.step.run("look", lambda: seen.append(gc.get_threshold()))

    before = gc.get_threshold()
    store = MemoryStore()

    async def main() -> None:
        worker = Worker(app, store, clock=mock_ms, tune_gc=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await worker.send(Event("go"))
            while not seen:
                await trio.sleep(0.01)
            worker.stop()

    run_virtual(main)
    assert seen == [TUNED_THRESHOLDS]
    assert gc.get_threshold() == before
