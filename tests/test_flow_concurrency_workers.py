"""``concurrency`` across worker processes on one store (issue 13): 4 on PostgreSQL, 2 on
SQLite, 500 runs over 20 keys, limit 2 per key. Every step body notes its start and end;
replaying those notes in time order (every state change) never finds more than the limit
of bodies executing at once for one key, and every run completes."""

from __future__ import annotations

import os
import pathlib
import time
from collections import Counter

import stores
from durable_core import Event
from durable_core.engine._engine import Engine
from stores.testing import run_gated

TESTS = pathlib.Path(__file__).resolve().parent
RUNS = 500
KEYS = 20

_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import trio
import stores
from durable_core import Worker
from flow_concurrency_app import app
url, total = sys.argv[2], int(sys.argv[3])
store = stores.open(url)
print("ready", flush=True)
sys.stdin.readline()

async def main():
    worker = Worker(app, store, max_runs=50, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = await trio.to_thread.run_sync(
                lambda: len(store.list_runs(status="completed", limit=total)))
            if done >= total:
                break
            await trio.sleep(0.1)
        worker.stop()

trio.run(main)
store.close()
print(json.dumps("done"), flush=True)
"""


def _race(url: str, processes: int, log: pathlib.Path) -> None:
    from flow_concurrency_app import app

    store = stores.open(url)
    try:
        engine = Engine(app, store, owner="sender", entropy=os.urandom)
        engine.send([Event("work", {"k": f"k{i % KEYS}"}) for i in range(RUNS)],
                    int(time.time() * 1000))
    finally:
        store.close()
    os.environ["FLOW_LOG"] = str(log)
    try:
        outs = run_gated([[_CHILD, str(TESTS), url, str(RUNS)] for _ in range(processes)],
                         timeout=300)
    finally:
        del os.environ["FLOW_LOG"]
    assert outs == ['"done"'] * processes


def _check(url: str, log: pathlib.Path) -> None:
    from flow_concurrency_app import LIMIT

    store = stores.open(url)
    try:
        runs = store.list_runs(limit=10_000)
        assert len(runs) == RUNS and all(r.status == "completed" for r in runs)
    finally:
        store.close()
    notes = []
    for line in log.read_text().splitlines():
        key, run_id, what, t = line.split()
        notes.append((int(t), 0 if what == "end" else 1, key, run_id))
    notes.sort()  # at one instant, ends first
    assert Counter(n[1] for n in notes) == {0: RUNS * 3, 1: RUNS * 3}
    at_once: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    for _t, start, key, _run in notes:
        at_once[key] += 1 if start else -1
        peak[key] = max(peak[key], at_once[key])
    assert len(peak) == KEYS
    assert max(peak.values()) <= LIMIT, peak
    assert max(peak.values()) == LIMIT  # the limit was reached: the check is not vacuous


def test_four_workers_on_postgres(pg_url: str, pg_schema: str,
                                  tmp_path: pathlib.Path) -> None:
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}schema={pg_schema}"
    log = tmp_path / "bodies.log"
    _race(url, 4, log)
    _check(url, log)


def test_two_processes_on_sqlite(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    log = tmp_path / "bodies.log"
    _race(url, 2, log)
    _check(url, log)
