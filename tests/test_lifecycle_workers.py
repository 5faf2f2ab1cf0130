"""Idempotency keys, system events and failure handlers under several worker processes on
one store, released at once: 4 on PostgreSQL, 2 on SQLite. Every process sends events with
the same idempotency key and failing events, and routes and runs whatever it finds (so
routing the same events and creating runs under the same key race between processes). Then:
one run per key, every other trigger recorded as folded into it, each system event stored
once, and one failure handler run per failed run."""

from __future__ import annotations

import json
import pathlib
import sqlite3
from collections import Counter
from typing import Any

import stores
from durable_core.testing import TestEngine
from stores.testing import run_gated

TESTS = pathlib.Path(__file__).resolve().parent
EVENTS = 25  # per process, of each kind
START = "2026-01-01T00:00:00Z"

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import stores
from durable_core import Event
from durable_core.testing import TestEngine
from lifecycle_app import app
url, k, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
store = stores.open(url)
engine = TestEngine(app, start=sys.argv[5], store=store)
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    engine.send([Event("cart/checkout", {"cart": "c1", "by": k}, id=f"cart-{k}-{i}"),
                 Event("pay", {"by": k}, id=f"pay-{k}-{i}")])
engine.advance("1m")
store.close()
print(json.dumps("done"), flush=True)
"""


def _race(url: str, processes: int) -> stores.Store:
    outs = run_gated([[_CHILD, str(TESTS), url, str(k), str(EVENTS), START]
                      for k in range(processes)], timeout=300)
    assert outs == ['"done"'] * processes
    store = stores.open(url)
    # Whatever a process routed but left for the others is run to the end here.
    from lifecycle_app import app

    TestEngine(app, start=START, store=store).advance("1h")
    return store


def _check(store: stores.Store, processes: int, system_ids: Counter[str], *,
           per_process: int = EVENTS) -> None:
    runs = store.list_runs(limit=100_000)
    by_fn: dict[str, list[Any]] = {}
    for r in runs:
        by_fn.setdefault(r.function_id, []).append(r)
    # One run per key; every other checkout event folded into it, recorded once.
    [holder] = by_fn["checkout"]
    assert holder.status == "completed" and holder.idempotency_key == "c1"
    skipped = store.skipped_triggers(limit=100_000)
    assert len(skipped) == processes * per_process - 1
    assert {s.run_id for s in skipped} == {holder.id}
    assert len({s.event_id for s in skipped}) == len(skipped)
    assert holder.event_ids[0] not in {s.event_id for s in skipped}
    # Every pay event failed once; each failure started exactly one handler run.
    failed = by_fn["pay"]
    assert len(failed) == processes * per_process
    assert all(r.status == "failed" for r in failed)
    handlers = by_fn["pay-failure"]
    assert sorted(json.loads(r.output) for r in handlers) == sorted(r.id for r in failed)
    assert all(r.status == "completed" for r in handlers)
    # Each ended run's system events were stored once (no duplicate id among originals),
    # and each finished event started one audit run; audit's own events start nothing.
    ended = [r for r in runs if r.status in ("completed", "failed")]
    assert all(n == 1 for n in system_ids.values()), system_ids.most_common(3)
    expected = {f"finished:{r.id}" for r in ended} | {f"failed:{r.id}" for r in failed}
    expected |= {f"failed:{r.id}" for r in ended if r.status == "failed"}
    assert set(system_ids) == expected
    audited = Counter(json.loads(r.output) for r in by_fn["audit"])
    not_audited = {r.id for r in by_fn["audit"]} | {r.id for r in handlers}
    assert audited == Counter(r.id for r in ended if r.id not in not_audited)


def test_four_workers_on_postgres(pg_url: str, pg_schema: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}schema={pg_schema}"
    import psycopg

    store = _race(url, 4)
    try:
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                f'SELECT id FROM "{pg_schema}".events WHERE NOT duplicate '
                "AND (id LIKE 'finished:%%' OR id LIKE 'failed:%%' OR id LIKE 'cancelled:%%')"
            ).fetchall()
        _check(store, 4, Counter(r[0] for r in rows))
    finally:
        store.close()


def test_two_processes_on_sqlite(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "shared.db"
    store = _race(f"sqlite:///{path}", 2)
    try:
        with sqlite3.connect(path) as conn:
            rows = conn.execute(
                "SELECT id FROM events WHERE duplicate = 0 AND (id LIKE 'finished:%' "
                "OR id LIKE 'failed:%' OR id LIKE 'cancelled:%')"
            ).fetchall()
        _check(store, 2, Counter(r[0] for r in rows))
    finally:
        store.close()


def test_four_worker_processes_on_postgres_route_the_same_events(
    pg_url: str, pg_schema: str, tmp_path: pathlib.Path,
) -> None:
    """``durable worker --processes 4``: the client only stores the events, the four worker
    processes route them (racing on the same unrouted events and on one key) and run them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psycopg

    from durable_core import Client, Event

    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}schema={pg_schema}"
    client = Client(stores.open(url))  # no app: the workers route
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "lifecycle_app:app", "--processes", "4", "--store", url],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    n = 40
    try:
        for i in range(n):
            client.send([Event("cart/checkout", {"cart": "c1"}, id=f"cart-{i}"),
                         Event("pay", {}, id=f"pay-{i}")])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = client.store.list_runs(limit=100_000)
            handlers = [r for r in runs if r.function_id == "pay-failure"]
            if (len(handlers) == n and not client.store.unrouted_events(1)
                    and all(r.status in ("completed", "failed") for r in runs)):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                f'SELECT id FROM "{pg_schema}".events WHERE NOT duplicate '
                "AND (id LIKE 'finished:%%' OR id LIKE 'failed:%%' OR id LIKE 'cancelled:%%')"
            ).fetchall()
        _check(client.store, n, Counter(r[0] for r in rows), per_process=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.store.close()
