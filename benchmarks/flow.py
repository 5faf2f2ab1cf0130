"""Flow control overhead: durable steps per second with ``concurrency`` set, against the same
workload without it (issue 13: within 80%).

Run with ``python benchmarks/flow.py [--stores sqlite postgres] [--rounds N] [--limit L]``.

The workload: rounds of 1,000 runs of a 10-step function (async bodies that do nothing) on
one trio ``Worker`` (``max_runs=1000``, ``tune_gc=True``), their events spread over 100 key
values; with ``concurrency=Concurrency(limit, key="event.data.k")`` (limit 10 by default:
the issue's workload) or without. Each measurement follows a warm-up round on the same
database and worker. The two modes alternate, round by round, on two databases, so a drift
of the shared machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import time
import uuid
from typing import Any

import trio

import stores
from durable_core import App, Concurrency, Context, Event, Worker, on_event

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from store_throughput import PG_URL, STEPS, _Watch, drop_schema

RUNS = 1_000
KEYS = 100


def make_app(limit: int | None) -> App:
    app = App("flow-bench", async_bodies="trio")

    async def body(i: int) -> int:
        return i

    options: dict[str, Any] = {}
    if limit is not None:
        options["concurrency"] = Concurrency(limit, key="event.data.k")

    @app.function(id="ten-steps", trigger=on_event("bench/go"), **options)
    async def ten_steps(ctx: Context) -> int:
        total = 0
        for i in range(STEPS):
            total += await ctx.step.run(f"s{i}", body, i)
        return total

    return app


class _Bench:
    """One worker on one database, driven round by round from the measuring task."""

    def __init__(self, url: str, limit: int | None) -> None:
        self.store = _Watch(stores.open(url), timing=False)
        self.worker = Worker(make_app(limit), self.store,  # type: ignore[arg-type]
                             max_runs=RUNS, tune_gc=True)
        self.expected = 0

    async def round(self) -> float:
        """Run one round of RUNS runs; returns its durable steps per second."""
        t0 = time.perf_counter()
        await self.worker.send([Event("bench/go", {"k": f"k{i % KEYS}"}) for i in range(RUNS)])
        self.expected += RUNS
        while self.store.completed < self.expected:
            await trio.sleep(0.002)
        return RUNS * STEPS / (time.perf_counter() - t0)


def measure(urls: dict[str, str], limit: int, rounds: int) -> dict[str, float]:
    """Steps per second (median of ``rounds``) per mode, modes alternating."""

    async def main() -> dict[str, float]:
        benches = {"plain": _Bench(urls["plain"], None),
                   "concurrency": _Bench(urls["concurrency"], limit)}
        rates: dict[str, list[float]] = {m: [] for m in benches}
        # One worker at a time: the other's is started only while it is measured.
        for bench in benches.values():
            async with trio.open_nursery() as nursery:
                await nursery.start(bench.worker.run)
                await bench.round()  # warm-up
                bench.worker.stop()
        for _ in range(rounds):
            for mode, bench in benches.items():
                bench.worker = Worker(make_app(None if mode == "plain" else limit),
                                      bench.store, max_runs=RUNS,  # type: ignore[arg-type]
                                      tune_gc=True)
                async with trio.open_nursery() as nursery:
                    await nursery.start(bench.worker.run)
                    rates[mode].append(await bench.round())
                    bench.worker.stop()
        for bench in benches.values():
            bench.store._store.close()
        return {m: sorted(r)[len(r) // 2] for m, r in rates.items()}

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", nargs="*", default=["sqlite", "postgres"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"# flow control overhead ({platform.python_version()}, {os.cpu_count()} cpus): "
          f"{RUNS} runs x {STEPS} steps over {KEYS} keys, concurrency limit {args.limit}, "
          f"median of {args.rounds} rounds")
    print(f"{'store':>8} {'plain steps/s':>14} {'concurrency steps/s':>20} {'ratio':>6}")
    for name in args.stores:
        tmp = tempfile.mkdtemp()
        urls = {}
        for mode in ("plain", "concurrency"):
            if name == "sqlite":
                urls[mode] = f"sqlite:///{pathlib.Path(tmp) / f'flow-{mode}.db'}"
            else:
                urls[mode] = f"{PG_URL}?schema=bench_flow_{uuid.uuid4().hex[:8]}"
        try:
            got = measure(urls, args.limit, args.rounds)
        finally:
            for url in urls.values():
                drop_schema(name, url)
        ratio = got["concurrency"] / got["plain"]
        print(f"{name:>8} {got['plain']:>14,.0f} {got['concurrency']:>20,.0f} {ratio:>6.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
