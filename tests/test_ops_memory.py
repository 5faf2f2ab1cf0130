"""Finished runs are released at once (by reference counting), not left in reference cycles
for a garbage collection that a worker with tuned thresholds rarely runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from durable_core import App, Context, Event, Worker, on_event
from durable_core.core._context import Context as ContextType
from durable_core.core._machine import RunMachine
from stores import MemoryStore

BASE_MS = 1_767_225_600_000
RUN_CODE = ("five", "cut_short")  # the app's durable functions


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """With the collector off, then asked to keep what it finds unreachable: the objects the
    code under test left in reference cycles."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[Any] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def _cyclic_garbage(found: list[Any]) -> dict[str, int]:
    gc.collect()
    found.extend(gc.garbage)
    gc.garbage.clear()
    kinds: dict[str, int] = {}
    for obj in found:
        # The runs' own objects: machines, contexts and the coroutines of the app's code
        # (not the driver's: trio's tasks are not what this is about).
        if isinstance(obj, (RunMachine, ContextType)) or (
            type(obj).__name__ == "coroutine" and obj.__qualname__.endswith(RUN_CODE)
        ):
            kinds[type(obj).__name__] = kinds.get(type(obj).__name__, 0) + 1
    return kinds


def _app() -> App:
    # Bodies on trio: no thread for the autojumping MockClock to run past (asyncio bodies
    # run on a loop in another thread, and virtual leases would expire while they ran).
    app = App("mem", async_bodies="trio")

    async def body(n: int, i: int) -> dict[str, int]:
        return {"n": n, "i": i}

    @app.function(id="five", trigger=on_event("go"))
    async def five(ctx: Context) -> int:
        total = 0
        for i in range(5):
            total += (await ctx.step.run(f"s{i}", body, ctx.event.data["n"], i))["i"]
        return total

    @app.function(id="cut-short", trigger=on_event("cut"), max_steps=2)
    async def cut_short(ctx: Context) -> None:
        try:
            for i in range(5):  # the third step fails the run while the code is suspended
                await ctx.step.run(f"s{i}", body, 0, i)
        finally:
            pass

    return app


def test_finished_runs_leave_no_machine_context_or_coroutine_in_cycles(
    saved_garbage: list[Any],
) -> None:
    store = MemoryStore()
    worker = Worker(_app(), store, clock=lambda: BASE_MS + int(trio.current_time() * 1000))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await worker.send([Event("go", {"n": n}) for n in range(200)])
            await worker.send([Event("cut", {}) for _ in range(5)])
            with trio.fail_after(600):
                while sum(r.status in ("completed", "failed") for r in
                          store.list_runs(limit=1000)) < 205:
                    await trio.sleep(0.5)
            worker.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    runs = store.list_runs(limit=1000)
    assert sorted(r.status for r in runs).count("completed") == 200
    assert worker.engine.live == {}
    assert _cyclic_garbage(saved_garbage) == {}


def test_the_check_sees_a_run_kept_in_a_cycle(saved_garbage: list[Any]) -> None:
    # The check above can fail: a machine in a cycle is found.
    app = _app()
    m = RunMachine(app.get("five"), "r1", [Event("go", {"n": 1})], BASE_MS, [])
    m.cycle = m  # type: ignore[attr-defined]
    del m
    assert _cyclic_garbage(saved_garbage) == {"RunMachine": 1}
