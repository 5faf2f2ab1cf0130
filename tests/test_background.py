"""BackgroundWorker and Client from sync and asyncio code (real threads, real time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from durable_core import App, BackgroundWorker, Context, Event, on_event
from stores import MemoryStore


def make_app() -> App:
    app = App("bg")

    @app.function(id="greet", trigger=on_event("greet"))
    async def greet(ctx: Context) -> str:
        name = await ctx.step.run("upper", str.upper, ctx.event.data["name"])
        return f"hello {name}"

    @app.function(id="slow", trigger=on_event("slow"))
    async def slow(ctx: Context) -> str:
        await ctx.step.wait_for_event("never", event="nothing", timeout="1h")
        return "done"

    return app


def wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_sync_application_sends_and_reads_runs() -> None:
    store = MemoryStore()
    with BackgroundWorker(make_app(), store, poll_interval=5) as bg:
        [eid] = bg.client.send(Event("greet", {"name": "ada"}))
        wait_for(lambda: [r.status for r in bg.client.list_runs(event_id=eid)] == ["completed"])
        [run] = bg.client.list_runs(event_id=eid)
        assert run.output == "hello ADA"
        assert [s.id for s in run.steps] == ["upper"]


def test_cancel_from_another_thread() -> None:
    store = MemoryStore()
    with BackgroundWorker(make_app(), store, poll_interval=5) as bg:
        [eid] = bg.client.send(Event("slow", {}))
        wait_for(lambda: [r.status for r in bg.client.list_runs(event_id=eid)] == ["waiting"])
        [run] = bg.client.list_runs(event_id=eid)
        bg.client.cancel_run(run.id)
        wait_for(lambda: bg.client.get_run(run.id).status == "cancelled")
        cancelled = bg.client.get_run(run.id)
        assert cancelled.error is not None and cancelled.error.type == "Cancelled"
        assert store.find_waits("nothing", 0) == []


def test_asyncio_application() -> None:
    store = MemoryStore()

    async def main() -> str:
        with BackgroundWorker(make_app(), store, poll_interval=5) as bg:
            [eid] = await asyncio.to_thread(bg.client.send, Event("greet", {"name": "bo"}))
            while True:
                runs = await asyncio.to_thread(bg.client.list_runs, None, None, eid)
                if runs and runs[0].status == "completed":
                    return str(runs[0].output)
                await asyncio.sleep(0.005)

    assert asyncio.run(asyncio.wait_for(main(), 20)) == "hello BO"


def test_cancel_reaches_a_run_executing_steps_back_to_back() -> None:
    app = App("busy")
    done: list[int] = []

    def work(i: int) -> int:
        done.append(i)
        time.sleep(0.002)
        return i

    @app.function(id="busy", trigger=on_event("busy"), max_steps=10_000)
    async def busy(ctx: Context) -> int:
        for i in range(5000):
            await ctx.step.run("w", work, i)
        return 1

    store = MemoryStore()
    with BackgroundWorker(app, store, poll_interval=5) as bg:
        [eid] = bg.client.send(Event("busy", {}))
        wait_for(lambda: len(done) > 10)
        [run] = bg.client.list_runs(event_id=eid)
        bg.client.cancel_run(run.id)
        wait_for(lambda: bg.client.get_run(run.id).status == "cancelled")
    assert len(done) < 5000  # stopped well before the end: the cancel did not wait for it
