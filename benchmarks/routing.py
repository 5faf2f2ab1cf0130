"""Event routing at scale, through the match-key index (issue 14), on memory, SQLite and
PostgreSQL.

Three measurements, each through the engine loop every driver runs (``Engine.poll`` routes
events, claims and feeds runs, commits; ``Engine.finish_step`` commits a step's result):

* **waits**: ``--runs`` runs (100,000 by default) each parked in
  ``wait_for_event("w", event="bench/go", if_="async.data.k == event.data.k")`` with its own
  ``k``. They are created in bulk through the engine (events sent 10,000 per commit, then
  polled with large route and claim limits). Then, one at a time: a **matching** event is
  sent and the loop polled until the resumed run's next step has run and its memo is
  committed (send + route + claim + replay + the step + commit: end to end); a
  **non-matching** event is sent and routed (send + one poll that routes it and finds
  nothing to resume).
* **functions**: 1,000 functions on one event name, each with
  ``if_="event.data.kind == 'kN'"``; ``--events`` events (each starting one run) are sent,
  then routed by ``Engine.route``; events routed per second (routing only, not the send).
* **memory** (memory store only): the index's cost per wait, with tracemalloc: 100,000
  waits with a key, minus what the same waits cost the store without the index.

Usage::

    python benchmarks/routing.py --store memory
    python benchmarks/routing.py --store sqlite [--synchronous NORMAL]
    python benchmarks/routing.py --store postgres --runs 20000 [--url postgresql://...]

``--profile`` prints the wall time of each store call the two events cost (how many
round trips a routing poll makes, and which); ``--vacuum`` (PostgreSQL) runs ``VACUUM
ANALYZE`` once the waiting runs are created, as autovacuum would on a server that runs it
(a test box may run with ``autovacuum = off``: then the bulk creation's dead index entries
stay, and every claim and unrouted read of the samples walks them). On PostgreSQL the
script listens for notifications in a thread, as a worker does (claims rely on it).

SQLite defaults to ``synchronous=NORMAL`` (WAL: no fsync per commit), so the numbers are the
engine's and the index's, not the disk's; ``--synchronous FULL`` adds a sync per commit.
On a shared machine wall times include waiting for a CPU, so the CPU time this process
spent is printed beside them.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from durable_core import App, Context, Event, on_event
from durable_core.engine._engine import Engine
from durable_core.store import CommitBatch, Store, WaitRecord

CONDITION = "async.data.k == event.data.k"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@contextmanager
def open_store(kind: str, url: str, synchronous: str) -> Iterator[Store]:
    if kind == "memory":
        from stores import MemoryStore

        yield MemoryStore()
    elif kind == "sqlite":
        from stores.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(os.path.join(tmp, "routing.db"), synchronous=synchronous)
            try:
                yield store
            finally:
                store.close()
    else:
        import psycopg
        from psycopg import sql

        from stores.postgres import PostgresStore

        schema = f"bench_{uuid.uuid4().hex[:12]}"
        store = PostgresStore(url, schema=schema)
        try:
            yield store
        finally:
            store.close()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                             .format(sql.Identifier(schema)))


class Clock:
    """Milliseconds that move forward by one per call (the engine's ``now``)."""

    def __init__(self) -> None:
        self.t = 1_800_000_000_000

    def __call__(self) -> int:
        self.t += 1
        return self.t


def listen(store: Store) -> threading.Event:
    """On PostgreSQL, what a worker does beside its loop: a thread blocked in
    ``wait_for_notify`` (the store then knows which claims would find nothing). Set the
    event returned to stop it (within a second)."""
    stop = threading.Event()
    wait = getattr(store, "wait_for_notify", None)
    if type(store).__name__ != "PostgresStore" or wait is None:
        return stop

    def loop() -> None:
        while not stop.is_set():
            wait(1.0)

    threading.Thread(target=loop, daemon=True).start()
    return stop


def drain(engine: Engine, now: Callable[[], int], *, limit: int, claim_limit: int) -> int:
    """Poll until there is nothing left to do, running every step; returns steps run."""
    steps = 0
    while True:
        work = engine.poll(now(), limit=limit, claim_limit=claim_limit)
        pending = list(work.steps)
        while pending:
            step = pending.pop()
            steps += 1
            pending += engine.finish_step(step, step.fn(*step.args, **step.kwargs), None, now())
        if not work.more and work.idle:
            return steps


class CallTimes:
    """Wall time of each store call made while ``active`` (``--profile``): the store's
    methods are wrapped on the instance, so every store can be profiled the same way."""

    METHODS = ("unrouted_events", "wait_key_paths", "find_waits", "commit", "claim_runs",
               "append_events", "next_wake_at")

    def __init__(self, store: Store) -> None:
        self.active = ""
        self.times: dict[str, dict[str, list[float]]] = {}
        for name in self.METHODS:
            setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                by = self.times.setdefault(self.active, {})
                by.setdefault(name, []).append(time.perf_counter() - t)
        return timed

    def report(self, samples: int) -> str:
        return "\n".join(
            f"    {phase}: " + "; ".join(
                f"{name} x{len(ts) / samples:.1f} {_ms(statistics.median(ts))}"
                for name, ts in by.items())
            for phase, by in self.times.items())


def bench_waits(store: Store, runs: int, samples: int, batch: int = 10_000,
                condition: str = CONDITION, profile: bool = False,
                prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    app = App("routing")

    def after(k: int) -> int:
        return k

    @app.function(id="waiter", trigger=on_event("bench/start"))
    async def waiter(ctx: Context) -> int:
        got = await ctx.step.wait_for_event("w", event="bench/go", timeout="7d", if_=condition)
        assert got is not None
        value: int = await ctx.step.run("after", after, got.data["k"])
        return value

    now = Clock()
    engine = Engine(app, store, owner="bench", entropy=os.urandom, cache_size=1_000)
    listening = listen(store)
    t0 = time.perf_counter()
    for start in range(0, runs, 10_000):
        chunk = range(start, min(runs, start + 10_000))
        engine.send([Event("bench/start", {"k": k}) for k in chunk], now())
    sent = time.perf_counter()
    drain(engine, now, limit=batch, claim_limit=min(batch, 2_000))
    created = time.perf_counter()
    waiting = len(store.find_waits("bench/go", now()))
    assert waiting == runs, (waiting, runs)
    if prepare is not None:
        prepare()
    calls = CallTimes(store) if profile else None

    matching: list[float] = []
    missing: list[float] = []
    matching_cpu: list[float] = []
    missing_cpu: list[float] = []
    missing_poll_cpu: list[float] = []
    missing_poll: list[float] = []
    step = max(1, runs // samples)
    for i in range(samples):
        k = (i * step + 7) % runs
        # Route what the last sample left (the finished run's system events), untimed.
        drain(engine, now, limit=batch, claim_limit=min(batch, 2_000))
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        engine.send([Event("bench/go", {"k": -1 - i})], now())  # no run waits for it
        c2, t2 = time.process_time(), time.perf_counter()
        if calls is not None:
            calls.active = "non-matching poll"
        work = engine.poll(now())
        if calls is not None:
            calls.active = ""
        missing.append(time.perf_counter() - t)
        missing_poll.append(time.perf_counter() - t2)
        missing_cpu.append(time.process_time() - c)
        missing_poll_cpu.append(time.process_time() - c2)
        assert work.routed == 1 and not work.steps and not work.claimed, work
        if calls is not None:
            calls.active = "matching, end to end"
        t, c = time.perf_counter(), time.process_time()
        engine.send([Event("bench/go", {"k": k})], now())
        ran = 0
        while not ran:
            work = engine.poll(now())
            for s in work.steps:
                assert s.step_id == "after", s
                ran += 1
                assert engine.finish_step(s, s.fn(*s.args, **s.kwargs), None, now()) == []
        matching.append(time.perf_counter() - t)
        matching_cpu.append(time.process_time() - c)
        if calls is not None:
            calls.active = ""
    listening.set()
    return {
        "runs": runs,
        "create_s": created - t0,
        "send_s": sent - t0,
        "matching_median": statistics.median(matching),
        "matching_p90": sorted(matching)[int(0.9 * (len(matching) - 1))],
        "missing_median": statistics.median(missing),
        "missing_p90": sorted(missing)[int(0.9 * (len(missing) - 1))],
        "matching_cpu": statistics.median(matching_cpu),
        "missing_cpu": statistics.median(missing_cpu),
        "missing_poll_cpu": statistics.median(missing_poll_cpu),
        "missing_poll": statistics.median(missing_poll),
        "missing_poll_spread": (min(missing_poll), max(missing_poll)),
        "profile": calls.report(samples) if calls is not None else "",
    }


def bench_functions(store: Store, functions: int, events: int) -> dict[str, Any]:
    app = App("fanout")

    async def body(ctx: Context) -> None:
        return None

    for i in range(functions):
        app.function(id=f"f{i}", trigger=on_event("bench/fan", if_=f"event.data.kind == 'k{i}'"))(
            body)
    now = Clock()
    engine = Engine(app, store, owner="bench", entropy=os.urandom)
    for start in range(0, events, 5_000):
        engine.send([Event("bench/fan", {"kind": f"k{(i * 7919) % functions}", "n": i})
                     for i in range(start, min(events, start + 5_000))], now())
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    routed = 0
    while True:
        n = engine.route(now(), 500)
        if not n:
            break
        routed += n
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - c
    assert routed == events
    started = len(store.list_runs(limit=events + 10))
    assert started == events, started
    return {"functions": functions, "events": events, "per_second": events / elapsed,
            "seconds": elapsed, "per_cpu_second": events / cpu}


def bench_memory(n: int) -> dict[str, Any]:
    """Index cost per wait in the memory store: ``n`` waits with a per-run key committed to
    a MemoryStore, minus the same records (without keys) in a plain dict, which is how the
    store kept waits before the index (allocations made inside the measured window)."""
    from stores import MemoryStore

    trigger = '{"name":"bench/start","data":{"k":1}}'

    def records(keyed: bool) -> list[WaitRecord]:
        return [WaitRecord(f"r_{i:028x}", 0, "bench/go", CONDITION, trigger, 2**62, 0,
                           (f"data.k={i}",) if keyed else ()) for i in range(n)]

    def measure(build: Callable[[], Any]) -> tuple[int, Any]:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return after - before, kept

    def plain() -> Any:
        return {"bench/go": {(w.run_id, w.position): w for w in records(False)}}

    def indexed() -> Any:
        store = MemoryStore()
        store.commit(CommitBatch(now=0, waits_add=tuple(records(True))))
        return store

    base, kept = measure(plain)
    del kept
    full, kept = measure(indexed)
    del kept
    return {"waits": n, "per_wait_total": full / n, "per_wait_plain": base / n,
            "index_per_wait": (full - base) / n}


def _vacuum(url: str, store: Store) -> Callable[[], None]:
    def run() -> None:
        import psycopg
        from psycopg import sql

        from stores.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        schema = store.schema
        with psycopg.connect(url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
            for (table,) in tables:
                conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, table)))
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("memory", "sqlite", "postgres"), default="memory")
    parser.add_argument("--url", default=os.environ.get(
        "DURABLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--synchronous", default="NORMAL", choices=("NORMAL", "FULL"))
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--functions", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--only", choices=("waits", "functions", "memory"))
    parser.add_argument("--scan", action="store_true",
                        help="waits on an equivalent condition that cannot be indexed "
                        "(the full scan every event paid before the index), for an A/B")
    parser.add_argument("--profile", action="store_true",
                        help="print the wall time of each store call of the non-matching "
                        "event's routing poll")
    parser.add_argument("--vacuum", action="store_true",
                        help="PostgreSQL: VACUUM ANALYZE the tables once the waiting runs "
                        "are created (what autovacuum does on a server that runs it)")
    args = parser.parse_args(argv)
    print(f"store={args.store} python={sys.version.split()[0]}"
          + (f" synchronous={args.synchronous}" if args.store == "sqlite" else ""))
    if args.only in (None, "waits"):
        with open_store(args.store, args.url, args.synchronous) as store:
            # PostgreSQL takes an advisory lock per run created: 10,000 in one transaction
            # exceed the server's lock table (max_locks_per_transaction).
            batch = 1_000 if args.store == "postgres" else 10_000
            condition = f"({CONDITION}) || false" if args.scan else CONDITION
            prepare = None
            if args.vacuum and args.store == "postgres":
                prepare = _vacuum(args.url, store)
            r = bench_waits(store, args.runs, args.samples, batch, condition, args.profile,
                            prepare)
        print(f"waits: {r['runs']:,} waiting runs created in {r['create_s']:.1f} s "
              f"({r['runs'] / r['create_s']:,.0f} runs/s, send {r['send_s']:.1f} s)")
        print(f"  matching event, send to the resumed run's next step committed: median "
              f"{_ms(r['matching_median'])}, p90 {_ms(r['matching_p90'])} "
              f"(CPU of this process: median {_ms(r['matching_cpu'])})")
        print(f"  non-matching event, send + route: median {_ms(r['missing_median'])}, "
              f"p90 {_ms(r['missing_p90'])} (CPU: median {_ms(r['missing_cpu'])}, of which "
              f"the poll that routes it {_ms(r['missing_poll_cpu'])}); the poll alone (route, "
              f"wall): median {_ms(r['missing_poll'])} (min {_ms(r['missing_poll_spread'][0])}, "
              f"max {_ms(r['missing_poll_spread'][1])})")
        if r["profile"]:
            print("  store calls (per event, median wall time):\n" + r["profile"])
    if args.only in (None, "functions"):
        with open_store(args.store, args.url, args.synchronous) as store:
            r = bench_functions(store, args.functions, args.events)
        print(f"functions: {r['functions']:,} equality filters on one event name: "
              f"{r['per_second']:,.0f} events/s routed ({r['events']:,} events, "
              f"{r['seconds']:.2f} s, one run started per event; "
              f"{r['per_cpu_second']:,.0f} per CPU second of this process)")
    if args.only in (None, "memory") and args.store == "memory":
        r = bench_memory(100_000)
        print(f"memory: index {r['index_per_wait']:.0f} bytes per wait "
              f"({r['per_wait_total']:.0f} with the index, {r['per_wait_plain']:.0f} without; "
              f"{r['waits']:,} waits, tracemalloc)")


if __name__ == "__main__":
    main()
