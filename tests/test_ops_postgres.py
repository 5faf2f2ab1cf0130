"""A worker rides out PostgreSQL restarts and outages, on a private cluster (see
``private_pg``): the shared test server is never restarted."""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import stores
from durable_core import App, Context, Event, Worker, on_event
from private_pg import PrivateCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RUNS = 200
STEPS = 10
WAVES = 6  # five restarts and one outage, each with a wave of runs in flight


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    c = PrivateCluster()
    try:
        c.start()
        yield c
    finally:
        c.remove()


def test_a_worker_rides_out_restarts_and_an_outage(
    cluster: PrivateCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable_core.worker")
    executions: collections.Counter[tuple[int, int]] = collections.Counter()
    running: set[tuple[int, int]] = set()
    windows: list[set[tuple[int, int]]] = []  # per fault: the bodies in flight during it
    open_window: list[set[tuple[int, int]]] = []

    async def body(n: int, i: int) -> int:
        key = (n, i)
        executions[key] += 1
        running.add(key)
        for w in open_window:
            w.add(key)
        try:
            await trio.sleep(0.1)  # a body that takes a while, so faults meet some in flight
        finally:
            running.discard(key)
        return n * 1000 + i

    app = App("ride", async_bodies="trio")  # the body awaits trio.sleep

    @app.function(id="ten", trigger=on_event("go"))
    async def ten(ctx: Context) -> int:
        total = 0
        for i in range(STEPS):
            total += await ctx.step.run(f"s{i}", body, ctx.event.data["n"], i)
        return total

    url = cluster.url + "?schema=ride"
    store = stores.open(url)
    observer = stores.open(url)
    worker = Worker(app, store, lease_ms=6_000, poll_interval=0.2)

    async def fault(action: Any) -> None:
        window = set(running)
        windows.append(window)
        open_window.append(window)
        await trio.to_thread.run_sync(action)
        # The fault lasts until the worker commits again (until then a finished body's
        # result may be lost and its step run again).
        commits = worker.commits
        while worker.commits == commits:
            await trio.sleep(0.05)
        open_window.remove(window)

    def outage() -> None:
        cluster.stop()
        trio.from_thread.run(trio.sleep, 20)
        cluster.start()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            per_wave = RUNS // WAVES + 1
            sent = 0
            for wave in range(WAVES):
                batch = [Event("go", {"n": n}) for n in range(sent, min(RUNS, sent + per_wave))]
                await worker.send(batch)
                sent += len(batch)
                target = sum(executions.values()) + len(batch) * 3
                while sum(executions.values()) < target:  # runs of this wave mid-way
                    await trio.sleep(0.02)
                await fault(outage if wave == 3 else cluster.restart)
            assert sent == RUNS
            with trio.fail_after(120):
                while True:
                    runs = await trio.to_thread.run_sync(
                        lambda: observer.list_runs(function_id="ten", limit=RUNS + 1))
                    if len(runs) == RUNS and all(r.status == "completed" for r in runs):
                        break
                    await trio.sleep(0.2)
            assert not worker._stopped.is_set(), "the worker exited"
            worker.stop()

    try:
        trio.run(main)
        runs = observer.list_runs(function_id="ten", limit=RUNS + 1)
        outputs = {json.loads(r.output or 'null') for r in runs}
        assert len(runs) == RUNS
        expected = {sum(n * 1000 + i for i in range(STEPS)) for n in range(RUNS)}
        assert outputs == expected
        assert len(executions) == RUNS * STEPS
        duplicates = sum(c - 1 for c in executions.values())
        allowed = sum(len(w) for w in windows)
        assert duplicates <= allowed, (duplicates, [len(w) for w in windows])
        # The outage was reported once per activity, and the recovery too.
        warnings = [r.getMessage() for r in caplog.records]
        assert any("works again" in m for m in warnings)
    finally:
        store.close()
        observer.close()
