"""A cancel reaches a run that another worker holds: four trio workers on one PostgreSQL
schema, and two ``durable worker`` processes on one SQLite file (docs/lifecycle.md)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

import stores
from durable_core import App, CancelOn, Client, Context, Event, Worker, on_event
from durable_core.core._lifecycle import cancel_cause
from stores.postgres import PostgresStore

TESTS = pathlib.Path(__file__).resolve().parent


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.postgres
def test_cancels_reach_runs_that_four_postgres_workers_hold(pg_url: str,
                                                             pg_schema: str) -> None:
    gate = threading.Event()
    in_flight: list[int] = []
    after: list[int] = []
    lock = threading.Lock()

    def block(n: int) -> int:
        with lock:
            in_flight.append(n)
        gate.wait(60)
        return n

    def note_after(n: int) -> None:
        with lock:
            after.append(n)

    app = App("cancel4")

    @app.function(id="hold", trigger=on_event("hold/go"),
                  cancel_on=[CancelOn("hold/stop", if_="event.data.n == async.data.n")])
    async def hold(ctx: Context) -> int:
        n = int(ctx.event.data["n"])
        await ctx.step.run("block", block, n)
        await ctx.step.run("after", note_after, n)
        return n

    runs = 8
    client_store = PostgresStore(pg_url, schema=pg_schema)
    client = Client(client_store)
    worker_stores = [PostgresStore(pg_url, schema=pg_schema) for _ in range(4)]
    workers = [Worker(app, s, owner=f"w{i}", max_runs=2, lease_ms=3_000, poll_interval=0.05)
               for i, s in enumerate(worker_stores)]
    outcome: dict[str, Any] = {}

    def drive() -> None:
        client.send([Event("hold/go", {"n": n}) for n in range(runs)])
        _until(lambda: len(in_flight) == runs, "every body in flight")
        by_n = {}
        for rec in client_store.list_runs(limit=100):
            by_n[json_n(rec.events[0])] = rec
        owners = {rec.lease_owner for rec in by_n.values()}
        outcome["owners"] = owners
        # Cancel-on events for the even runs; a request for run 1: all while bodies run.
        client.send([Event("hold/stop", {"n": n}) for n in (0, 2, 4, 6)])
        client.cancel_run(by_n[1].id, reason="stop 1")
        ids = [by_n[n].id for n in (0, 2, 4, 6)]
        _until(lambda: client_store.cancel_requested(ids) == set(ids), "the stop events routed")
        # A request ends the run at once, in whichever worker holds it.
        _until(lambda: client_store.get_run(by_n[1].id).status == "cancelled", "run 1 cancelled")
        gate.set()
        _until(lambda: all(client_store.get_run(r.id).status in ("completed", "cancelled")
                           for r in by_n.values()), "every run ended")
        outcome["by_n"] = by_n

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for w in workers:
                await nursery.start(w.run)
            await trio.to_thread.run_sync(drive)
            for w in workers:
                w.stop()

    try:
        trio.run(main)
        by_n = outcome["by_n"]
        assert len(outcome["owners"]) >= 2  # (max_runs=2: the 8 runs are spread out)
        for n, rec in by_n.items():
            view = client.get_run(rec.id)
            if n in (0, 2, 4, 6):
                assert view.status == "cancelled", n
                assert view.error is not None
                assert cancel_cause(view.error.message)["by"] == "event"
                # The body that ran finished and was recorded; nothing after it started.
                assert [(s.id, s.status, s.output) for s in view.steps] == [
                    ("block", "completed", n)]
            elif n == 1:
                assert view.status == "cancelled" and view.error is not None
                assert view.error.message == "stop 1"
            else:
                assert view.status == "completed" and view.output == n
        assert sorted(after) == [3, 5, 7]
    finally:
        gate.set()
        for s in (*worker_stores, client_store):
            s.close()


def json_n(event_json: str) -> int:
    import json

    return int(json.loads(event_json)["data"]["n"])


def test_a_cancel_reaches_a_run_another_sqlite_process_holds(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "cancel.db"
    pids_file = tmp_path / "pids"
    pids_file.write_text("")
    gate = tmp_path / "gate"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), DURABLE_PIDS_FILE=str(pids_file), DURABLE_GATE_FILE=str(gate))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "cancel_app:app", "--processes", "2", "--max-runs", "2",
         "--store", f"sqlite:///{db}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    store = stores.open(f"sqlite:///{db}")
    client = Client(store)
    try:
        client.send([Event("hold/go", {"n": n}) for n in range(4)])

        def held() -> list[str]:
            return pids_file.read_text().split()

        _until(lambda: len(held()) == 4, "four bodies in flight")
        assert len(set(held())) == 2  # each process holds two runs
        by_n = {json_n(r.events[0]): r for r in store.list_runs(limit=10)}
        owners = {by_n[n].lease_owner for n in range(4)}
        assert len(owners) == 2
        client.cancel_run(by_n[0].id, reason="from outside")
        client.send(Event("hold/stop", {"n": 3}))
        _until(lambda: store.get_run(by_n[0].id).status == "cancelled", "run 0 cancelled")
        _until(lambda: store.cancel_requested([by_n[3].id]) == {by_n[3].id}, "stop 3 routed")
        gate.write_text("open")
        _until(lambda: all(store.get_run(r.id).status in ("completed", "cancelled")
                           for r in by_n.values()), "every run ended")
        views = {n: client.get_run(r.id) for n, r in by_n.items()}
        assert views[0].status == "cancelled" and views[0].error is not None
        assert views[0].error.message == "from outside"
        assert views[3].status == "cancelled" and views[3].error is not None
        assert cancel_cause(views[3].error.message)["by"] == "event"
        assert [(s.id, s.status) for s in views[3].steps] == [("block", "completed")]
        assert [views[n].status for n in (1, 2)] == ["completed", "completed"]
    finally:
        gate.write_text("open")
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        store.close()
