"""Memory of a long-running worker: does it stay flat, and at what throughput?

Run with ``python benchmarks/memory.py [--rounds 20] [--runs 5000] [--stores sqlite postgres]``.

For each store, in a fresh process: one trio ``Worker`` (``tune_gc=True``, as ``durable
worker`` runs) works through ``--rounds`` rounds of ``--runs`` runs of a five-step function
(async bodies returning a small dict), all sent at the start of the round. After each round
(every run completed, the worker idle) it prints the process's resident set size (RSS) and
the round's throughput in steps per second. The check: RSS after the last round is within
1.25x of RSS after the second (the first round warms caches and the allocator up).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time
import uuid

import trio

import stores
from durable_core import App, Context, Event, Worker, on_event

PG_URL = os.environ.get("DURABLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
STEPS = 5
LIMIT = 1.25


def rss_mib() -> float:
    """The resident set size of this process, in MiB (from /proc)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_app(done: list[int]) -> App:
    app = App("memory", async_bodies="trio")  # bodies awaited in the run's task

    async def body(n: int, i: int) -> dict[str, int]:
        return {"n": n, "i": i}

    @app.function(id="five-steps", trigger=on_event("bench/go"))
    async def five(ctx: Context) -> int:
        total = 0
        for i in range(STEPS):
            total += (await ctx.step.run(f"s{i}", body, ctx.event.data["n"], i))["i"]
        done[0] += 1
        return total

    return app


def bench(url: str, rounds: int, runs: int, out: multiprocessing.Queue[str]) -> None:
    done = [0]
    store = stores.open(url)
    worker = Worker(make_app(done), store, tune_gc=True, poll_interval=0.05)
    rows: list[tuple[int, float, float]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            for r in range(rounds):
                t0 = time.perf_counter()
                target = done[0] + runs
                for start in range(0, runs, 1000):
                    await worker.send([Event("bench/go", {"n": n})
                                       for n in range(start, min(runs, start + 1000))])
                while done[0] < target or worker._active:
                    await trio.sleep(0.005)
                elapsed = time.perf_counter() - t0
                await trio.sleep(0.3)  # let an idle worker do what it does when idle
                rows.append((r + 1, rss_mib(), runs * STEPS / elapsed))
                out.put(f"  round {r + 1:2d}: RSS {rows[-1][1]:6.1f} MiB, "
                        f"{rows[-1][2]:8.0f} steps/s")
            worker.stop()

    try:
        trio.run(main)
    finally:
        store.close()
    second, last = rows[min(1, len(rows) - 1)][1], rows[-1][1]
    rates = sorted(rate for _, _, rate in rows[1:] or rows)
    ratio = last / second
    out.put(f"  RSS last/second = {last:.1f}/{second:.1f} = {ratio:.2f} "
            f"({'ok' if ratio <= LIMIT else 'FAIL'}: limit {LIMIT}); steps/s median "
            f"{rates[len(rates) // 2]:.0f}, best {rates[-1]:.0f}")
    out.put("")


def run_in_process(name: str, url: str, rounds: int, runs: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[str] = ctx.Queue()
    proc = ctx.Process(target=bench, args=(url, rounds, runs, out))
    print(f"{name}: {rounds} rounds of {runs} five-step runs on one worker", flush=True)
    proc.start()
    while True:
        try:
            line = out.get(timeout=1)
        except Exception:
            if not proc.is_alive():
                break
            continue
        print(line, flush=True)
        if line == "":
            break
    proc.join()
    if proc.exitcode:
        sys.exit(f"{name}: the benchmark process failed (exit code {proc.exitcode})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--runs", type=int, default=5_000)
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgres"],
                   choices=["sqlite", "postgres"])
    args = p.parse_args()
    for name in args.stores:
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{pathlib.Path(tmp) / 'memory.db'}"
                run_in_process(name, url, args.rounds, args.runs)
        else:
            schema = f"bench_memory_{uuid.uuid4().hex[:8]}"
            try:
                run_in_process(name, f"{PG_URL}?schema={schema}", args.rounds, args.runs)
            finally:
                import psycopg
                from psycopg import sql

                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                                 .format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
