"""Durable steps per second on real stores, next to each store's raw limits.

Run with ``nox -s bench`` or ``python benchmarks/store_throughput.py [--quick] [--stores ...]``.

For each store (SQLite with synchronous=FULL, PostgreSQL on 127.0.0.1), in one run:

- the raw limits of the same database: single-row commits per second, and rows per second
  when inserting 100 rows per transaction;
- durable throughput and latency: 1, 10, 100 and 1,000 concurrent runs of a 10-step
  function on the trio ``Worker`` (async step bodies that do nothing; ``tune_gc=True`` as
  ``durable worker`` runs), reporting durable
  steps per second, mean time per step within a run, and, for a single run, the cost of one
  step in units of one raw commit.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import platform
import sqlite3
import sys
import tempfile
import threading
import time
import timeit
import uuid
from typing import Any

import trio

import stores
from durable_core import App, Client, Context, Event, Worker, on_event

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEPS = 10
WARM_UP_STEPS = 3_000
"""Steps run before each measurement (enough to bring a fresh SQLite log to its full size)."""
MEASURED_STEPS = 30_000  # per level with concurrent runs: a round of 1,000 runs is ~0.3 s


def make_app() -> App:
    app = App("throughput", async_bodies="trio")  # bodies awaited in the run's task

    async def body(i: int) -> int:
        return i

    @app.function(id="ten-steps", trigger=on_event("bench/go"))
    async def ten_steps(ctx: Context) -> int:
        total = 0
        for i in range(STEPS):
            total += await ctx.step.run(f"s{i}", body, i)
        return total

    return app


# --------------------------------------------------------------------------- raw limits


def raw_sqlite(path: str, seconds: float) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (run_id TEXT, seq INTEGER, data TEXT, "
                 "PRIMARY KEY (run_id, seq))")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO raw VALUES (?, ?, ?)", ("r", n, '{"output":1}'))
        conn.execute("COMMIT")
        n += 1
    single = n / (time.perf_counter() - t0)
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO raw VALUES (?, ?, ?)",
                         [("b", rows + i, '{"output":1}') for i in range(100)])
        conn.execute("COMMIT")
        rows += 100
    batched = rows / (time.perf_counter() - t0)
    conn.close()
    return single, batched


def raw_postgres(seconds: float) -> tuple[float, float]:
    import psycopg

    table = f"raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (run_id TEXT, seq INTEGER, data TEXT, "
                     "PRIMARY KEY (run_id, seq))")
        try:
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", ("r", n, "{}"),
                             prepare=True)
                n += 1
            single = n / (time.perf_counter() - t0)
            rows, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                seqs = list(range(rows, rows + 100))
                conn.execute(
                    f"INSERT INTO {table} SELECT 'b', s, '{{}}' FROM unnest(%s::int[]) AS s",
                    (seqs,), prepare=True,
                )
                rows += 100
            batched = rows / (time.perf_counter() - t0)
        finally:
            conn.execute(f"DROP TABLE {table}")
    return single, batched


# --------------------------------------------------------------------------- durable


class _Watch:
    """A store proxy that counts completed runs as they commit (no polling of the store).

    With ``timing``, it also notes when each run's first and last step memos were committed
    (``perf_counter``: journal timestamps are whole milliseconds, too coarse for a single
    run's step of ~100 µs). With many runs a step within a run takes milliseconds, so their
    journal timestamps are read afterwards instead and the watch stays out of the way of the
    worker it measures (it shares the worker's GIL)."""

    def __init__(self, store: Any, *, timing: bool = True) -> None:
        self._store = store
        self.timing = timing
        self.completed = 0
        self.lock = threading.Lock()
        self.memo_times: dict[str, list[float]] = {}  # run id -> [first, last, memos]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit(self, batch: Any) -> set[str]:
        fenced: set[str] = self._store.commit(batch)
        if not self.timing:
            n = sum(1 for w in batch.writes if w.status == "completed" and w.run_id not in fenced)
            with self.lock:
                self.completed += n
            return fenced
        t = time.perf_counter()
        n = 0
        with self.lock:
            for w in batch.writes:
                if w.run_id in fenced:
                    continue
                memos = sum(1 for e in w.entries if e.op == "completed")
                if memos:
                    mt = self.memo_times.get(w.run_id)
                    if mt is None:
                        self.memo_times[w.run_id] = [t, t, memos]
                    else:
                        mt[1] = t
                        mt[2] += memos
                if w.status == "completed":
                    n += 1
            self.completed += n
        return fenced


def _journal_step_ms(store: Any, run_ids: list[str]) -> float:
    """Mean time (ms) between consecutive step memos within the runs, from their journals."""
    per_step = []
    for run_id in run_ids:
        ts = [e.ts for e in store.load_journal(run_id) if e.op == "completed"]
        per_step.append((ts[-1] - ts[0]) / (len(ts) - 1))
    return sum(per_step) / len(per_step)


def _measured_rounds(concurrency: int) -> int:
    """Rounds of ``concurrency`` runs measured at one level: 20 sequential runs for a single
    run (its per-step time is the point), else enough rounds for MEASURED_STEPS steps."""
    return 20 if concurrency == 1 else -(-MEASURED_STEPS // (concurrency * STEPS))


def _warm_up_rounds(concurrency: int) -> int:
    """Rounds of ``concurrency`` runs that make at least WARM_UP_STEPS steps."""
    return -(-WARM_UP_STEPS // (concurrency * STEPS))


def durable(url: str, concurrency: int) -> tuple[float, float]:
    """(durable steps per second, mean µs per step inside a run).

    Each measurement starts with a warm-up round of the same workload on the same database
    and worker, so it sees the steady state: a fresh SQLite file's write-ahead log grows for
    its first few thousand pages, and an append that grows a file costs more to sync than
    one that overwrites (about 125 against 80 µs per commit here). The per-step time is
    measured between the commits of a run's first and last step memos, so it excludes
    starting the run; with one run at a time it is averaged over 20 sequential runs.
    """
    app = make_app()
    store = _Watch(stores.open(url), timing=concurrency == 1)
    rounds = _measured_rounds(concurrency)

    async def main() -> tuple[float, float]:
        worker = Worker(app, store, max_runs=max(concurrency, 1),  # type: ignore[arg-type]
                        tune_gc=True)
        expected = 0

        async def round_of_runs() -> None:
            nonlocal expected
            await worker.send([Event("bench/go", {}) for _ in range(concurrency)])
            expected += concurrency
            while store.completed < expected:
                await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            for _ in range(max(rounds, _warm_up_rounds(concurrency))):
                await round_of_runs()  # warm-up
            warm = {r.id for r in store._store.list_runs(limit=expected)}
            t0 = time.perf_counter()
            for _ in range(rounds):
                await round_of_runs()
            elapsed = time.perf_counter() - t0
            worker.stop()
        rate = rounds * concurrency * STEPS / elapsed
        if not store.timing:
            measured = [r.id for r in store._store.list_runs(limit=expected) if r.id not in warm]
            return rate, _journal_step_ms(store._store, measured) * 1000
        per_step = [
            (last - first) / (memos - 1)
            for run_id, (first, last, memos) in store.memo_times.items()
            if run_id not in warm and memos > 1
        ]
        return rate, sum(per_step) / len(per_step) * 1e6

    try:
        return trio.run(main)
    finally:
        store._store.close()


def _worker_process(url: str, max_runs: int, completed: Any, stop: Any) -> None:
    """One worker process (as ``durable worker`` runs) that counts completed runs."""

    class _Shared(_Watch):
        def commit(self, batch: Any) -> set[str]:
            before = self.completed
            fenced = super().commit(batch)
            if self.completed != before:
                with completed.get_lock():
                    completed.value += self.completed - before
            return fenced

    store = _Shared(stores.open(url), timing=False)

    async def main() -> None:
        worker = Worker(make_app(), store, max_runs=max_runs,  # type: ignore[arg-type]
                        batch_limit=max_runs, poll_interval=0.01, tune_gc=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            while not stop.is_set():
                await trio.sleep(0.01)
            worker.stop()

    try:
        trio.run(main)
    finally:
        store._store.close()


def durable_processes(url: str, concurrency: int, processes: int) -> tuple[float, float]:
    """Like :func:`durable`, with ``processes`` worker processes on one database (each may
    hold ``concurrency / processes`` runs) and events sent by a :class:`Client`.

    CPython runs Python code on one core per process (the GIL), and a worker's trio thread
    and commit thread work in turn, so on this 2-core box a second process is how the
    engine uses the second core; SQLite serializes the writers' transactions.
    """
    ctx = multiprocessing.get_context("spawn")
    completed = ctx.Value("q", 0)
    stop = ctx.Event()
    store = stores.open(url)
    client = Client(store)
    procs = [
        ctx.Process(target=_worker_process,
                    args=(url, -(-concurrency // processes), completed, stop))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    expected = 0

    def round_of_runs() -> None:
        nonlocal expected
        client.send([Event("bench/go", {}) for _ in range(concurrency)])
        expected += concurrency
        while completed.value < expected:
            time.sleep(0.002)

    try:
        for _ in range(_warm_up_rounds(concurrency)):
            round_of_runs()  # warm-up (also waits for the processes to start)
        warm = {r.id for r in store.list_runs(limit=expected)}
        rounds = _measured_rounds(concurrency)
        t0 = time.perf_counter()
        for _ in range(rounds):
            round_of_runs()
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
    runs = [r.id for r in store.list_runs(status="completed", limit=expected) if r.id not in warm]
    per_step_ms = _journal_step_ms(store, runs)
    store.close()
    return rounds * concurrency * STEPS / elapsed, per_step_ms * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stores", nargs="*", default=["sqlite", "postgres"])
    parser.add_argument("--runs", nargs="*", type=int, default=None,
                        help="concurrency levels to measure (default 1 10 100 1000)")
    parser.add_argument("--processes", type=int, default=2,
                        help="also measure the largest level with this many worker "
                        "processes on one database (default 2; 1 turns it off)")
    args = parser.parse_args(argv)
    seconds = 0.5 if args.quick else 2.0
    levels = args.runs or ([1, 10, 100] if args.quick else [1, 10, 100, 1000])
    print(f"# store throughput ({platform.python_version()}, {os.cpu_count()} cpus)")
    # The box's speed drifts (shared VM): an empty loop's cost tells which phase a run saw
    # (about 5 ns per iteration on the reference measurements of this machine class).
    calib = min(timeit.repeat("for i in range(1000): pass", number=2000, repeat=5)) / 2e6
    print(f"# calibration: empty loop {calib * 1e9:.1f} ns/iteration")
    for name in args.stores:
        tmp = tempfile.mkdtemp()
        if name == "sqlite":
            single, batched = raw_sqlite(str(pathlib.Path(tmp) / "raw.db"), seconds)
        else:
            try:
                single, batched = raw_postgres(seconds)
            except Exception as exc:  # pragma: no cover - server down
                print(f"# postgres skipped: {exc}")
                continue
        print(f"\n## {name}: raw single-row commits {single:,.0f}/s "
              f"({1e6 / single:.0f} µs each); batched inserts {batched:,.0f} rows/s")
        print(f"{'runs':>6} {'procs':>6} {'durable steps/s':>16} {'µs/step in a run':>17} "
              f"{'x raw commit':>13}")
        for c in levels:
            if name == "sqlite":
                url = f"sqlite:///{pathlib.Path(tmp) / f'bench-{c}.db'}"
            else:
                url = f"{PG_URL}?schema=bench_{uuid.uuid4().hex[:8]}"
            rate, per_step_us = durable(url, c)
            print(f"{c:>6} {1:>6} {rate:>16,.0f} {per_step_us:>17.0f} "
                  f"{per_step_us * single / 1e6:>13.2f}", flush=True)
            drop_schema(name, url)
        if args.processes > 1:
            c = max(levels)
            if name == "sqlite":
                url = f"sqlite:///{pathlib.Path(tmp) / f'bench-{c}-mp.db'}"
            else:
                url = f"{PG_URL}?schema=bench_{uuid.uuid4().hex[:8]}"
            rate, per_step_us = durable_processes(url, c, args.processes)
            print(f"{c:>6} {args.processes:>6} {rate:>16,.0f} {per_step_us:>17.0f} "
                  f"{per_step_us * single / 1e6:>13.2f}", flush=True)
            drop_schema(name, url)
    return 0


def drop_schema(store_name: str, url: str) -> None:
    """Drop the PostgreSQL schema a benchmark store URL names (nothing for other stores)."""
    if store_name == "postgres":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("=", 1)[1]}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
