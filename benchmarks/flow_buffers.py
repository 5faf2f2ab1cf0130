"""Debounce and batching (issue 13) on memory, SQLite and PostgreSQL.

Two measurements, through the engine loop every driver runs:

* **routing cost per event**: ``--events`` events (over 20 keys) appended, then routed by
  ``Engine.route`` alone (no hand-off, no runs): for a plain function (one run per event,
  the baseline), a debounced one and a batched one (``Batch(100, "60s")``, so nothing
  fills); microseconds of routing per event.
* **through a batch of 100**: ``--events`` events of one key sent, then the loop polled
  until every batch of 100 has run (route + hand-off + claim + the run): events per second
  end to end, and batches per second.

Usage::

    python benchmarks/flow_buffers.py --store memory
    python benchmarks/flow_buffers.py --store sqlite
    python benchmarks/flow_buffers.py --store postgres [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from durable_core import App, Batch, Context, Debounce, Event, on_event
from durable_core.engine._engine import Engine
from durable_core.store import Store
from routing import Clock, drain, open_store

KEYS = 20


def _app(kind: str) -> App:
    app = App(f"flow-{kind}")
    options: dict[str, Any] = {}
    if kind == "debounce":
        options["debounce"] = Debounce("10s", key="event.data.k")
    elif kind == "batch":
        options["batch_events"] = Batch(100, "60s", key="event.data.k")

    @app.function(id="f", trigger=on_event("bench/e"), **options)
    async def f(ctx: Context) -> int:
        return len(ctx.events)

    return app


def bench_routing(store: Store, kind: str, events: int) -> tuple[float, float]:
    """Microseconds of Engine.route per event: wall time, and this process's CPU time."""
    now = Clock()
    engine = Engine(_app(kind), store, owner="bench", entropy=os.urandom)
    for start in range(0, events, 5_000):
        engine.send([Event("bench/e", {"k": f"k{i % KEYS}"})
                     for i in range(start, min(events, start + 5_000))], now())
    t0, c0 = time.perf_counter(), time.process_time()
    routed = 0
    while True:
        n = engine.route(now())
        if not n:
            break
        routed += n
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert routed == events, routed
    return elapsed / events * 1e6, cpu / events * 1e6


def bench_batches(store: Store, events: int) -> tuple[float, float, float]:
    """Events per second (by wall time and by this process's CPU time) and batches per
    second through Batch(100) runs, end to end."""
    app = App("flow-through")

    @app.function(id="b", trigger=on_event("bench/b"), batch_events=Batch(100, "60s"))
    async def b(ctx: Context) -> int:
        return len(ctx.events)

    now = Clock()
    engine = Engine(app, store, owner="bench", entropy=os.urandom)
    for start in range(0, events, 5_000):
        engine.send([Event("bench/b", {"i": i}) for i in range(start, min(events,
                                                                           start + 5_000))],
                    now())
    t0, c0 = time.perf_counter(), time.process_time()
    drain(engine, now, limit=500, claim_limit=100)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    runs = store.list_runs(function_id="b", limit=1_000_000)
    assert sum(len(r.event_ids) for r in runs) == events and all(
        r.status == "completed" for r in runs), len(runs)
    return events / elapsed, events / cpu, len(runs) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", choices=["memory", "sqlite", "postgres"], default="memory")
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--synchronous", default="NORMAL")
    a = p.parse_args()
    print(f"store={a.store} events={a.events} keys={KEYS}")
    for kind in ("plain", "debounce", "batch"):
        with open_store(a.store, a.url, a.synchronous) as store:
            us, cpu = bench_routing(store, kind, a.events)
        print(f"routing {kind:<8}: {us:8.1f} us/event ({cpu:.1f} us CPU)")
    with open_store(a.store, a.url, a.synchronous) as store:
        eps, cps, bps = bench_batches(store, a.events)
    print(f"through Batch(100): {eps:,.0f} events/s ({bps:,.1f} runs of 100/s; "
          f"{cps:,.0f} events per CPU second)")


if __name__ == "__main__":
    main()
