"""Durable steps per second on real stores, next to each store's raw limits.

Run with ``nox -s bench`` or ``python benchmarks/store_throughput.py [--quick] [--stores ...]``.

For each store (SQLite with synchronous=FULL, PostgreSQL on 127.0.0.1), in one run:

- the raw limits of the same database: single-row commits per second, and rows per second
  when inserting 100 rows per transaction;
- durable throughput and latency: 1, 10, 100 and 1,000 concurrent runs of a 10-step
  function on the trio ``Worker`` (async step bodies that do nothing), reporting durable
  steps per second, mean time per step within a run, and, for a single run, the cost of one
  step in units of one raw commit.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from typing import Any

import trio

import stores
from durable_core import App, Context, Event, Worker, on_event

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEPS = 10


def make_app() -> App:
    app = App("throughput")

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


def durable(url: str, concurrency: int) -> tuple[float, float]:
    """(durable steps per second, mean seconds per step within one run)."""
    app = make_app()
    store = stores.open(url)

    rounds = 20 if concurrency == 1 else 1  # a single run is timed over 20 sequential runs

    async def main() -> tuple[float, float]:
        worker = Worker(app, store, max_runs=max(concurrency, 1), poll_interval=0.002)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            t0 = time.perf_counter()
            expected = 0
            runs: list[Any] = []
            for _ in range(rounds):
                await worker.send([Event("bench/go", {}) for _ in range(concurrency)])
                expected += concurrency
                while True:
                    runs = await trio.to_thread.run_sync(
                        lambda n=expected: store.list_runs(status="completed", limit=n))
                    if len(runs) >= expected:
                        break
                    await trio.sleep(0.001)
            durations = [(r.ended_at - r.created_at) / 1000 / STEPS for r in runs]
            elapsed = time.perf_counter() - t0
            worker.stop()
        return rounds * concurrency * STEPS / elapsed, sum(durations) / len(durations)

    try:
        return trio.run(main)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stores", nargs="*", default=["sqlite", "postgres"])
    args = parser.parse_args(argv)
    seconds = 0.5 if args.quick else 2.0
    levels = [1, 10, 100] if args.quick else [1, 10, 100, 1000]
    print(f"# store throughput ({platform.python_version()}, {os.cpu_count()} cpus)")
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
        print(f"{'runs':>6} {'durable steps/s':>16} {'µs/step in a run':>17} "
              f"{'x raw commit':>13}")
        for c in levels:
            if name == "sqlite":
                url = f"sqlite:///{pathlib.Path(tmp) / f'bench-{c}.db'}"
            else:
                url = f"{PG_URL}?schema=bench_{uuid.uuid4().hex[:8]}"
            rate, per_step = durable(url, c)
            print(f"{c:>6} {rate:>16,.0f} {per_step * 1e6:>17.0f} "
                  f"{per_step * single:>13.2f}", flush=True)
            if name == "postgres":
                import psycopg

                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("=", 1)[1]}" CASCADE')
    return 0


if __name__ == "__main__":
    sys.exit(main())
