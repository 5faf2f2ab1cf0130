"""Step overhead: plain function calls against the same work done as durable steps.

Run with ``nox -s bench`` or ``python benchmarks/step_overhead.py [--quick] [--json FILE]``.

Measured, in one run, for 1, 10, 100 and 1,000 steps per run and 1 and 1,000 concurrent
runs:

(a) the pure core (``RunMachine``) on a virtual clock, its commands carried out by a
    minimal loop: the cost of orchestration itself;
(a+gc) the same inside ``durable_core.tuned_gc()``, the collector thresholds a driver that
    keeps many runs alive should use (the worker's ``tune_gc=True``);
(b) the trio ``Worker`` with the in-memory store and async step bodies of an
    ``App(async_bodies="trio")`` (awaited in the run's task): the whole engine (routing,
    claims, journal commits) minus disk;
(b+gc) the same with ``Worker(tune_gc=True)`` (as ``durable worker`` runs);
(b-sync) the same with sync step bodies, which pay a thread hop each;
(b-asyncio) the same with the async bodies of an ``App(async_bodies="asyncio")`` (the
    default), which run as tasks on the worker's asyncio loop thread: a hop there and back;
(c) ``durable_core.testing.TestEngine`` (the engine's loop on a virtual clock, the memory
    store, sync step bodies run inline): what a unit test of a durable function pays.

Each line reports the time per step of the durable version, of the plain version, and the
difference: the overhead a step adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import trio

from durable_core import App, Context, Event, on_event, tuned_gc
from durable_core.core._machine import RunMachine
from durable_core.core._model import ExecuteStep, RunStarted
from durable_core.drivers._worker import Worker
from stores import MemoryStore


def work(i: int) -> int:
    """The step body: trivial, so what is measured is the engine."""
    return i + 1


async def awork(i: int) -> int:
    """The async step body."""
    return i + 1


def make_app(n_steps: int, async_bodies: str = "trio") -> tuple[App, Any, Any]:
    app = App("bench", async_bodies=async_bodies)

    @app.function(id="sync-steps", trigger=on_event("bench/sync"), max_steps=10_000)
    async def sync_steps(ctx: Context) -> int:
        total = 0
        for i in range(n_steps):
            total += await ctx.step.run("s", work, i)
        return total

    @app.function(id="async-steps", trigger=on_event("bench/async"), max_steps=10_000)
    async def async_steps(ctx: Context) -> int:
        total = 0
        for i in range(n_steps):
            total += await ctx.step.run("s", awork, i)
        return total

    return app, sync_steps, async_steps


def best_of(repeat: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeat))


# --------------------------------------------------------------------------- baselines


def plain_sync(n: int, c: int) -> float:
    t = time.perf_counter()
    for _ in range(c):
        total = 0
        for i in range(n):
            total += work(i)
    return time.perf_counter() - t


def plain_async(n: int, c: int) -> float:
    async def one() -> None:
        total = 0
        for i in range(n):
            total += await awork(i)

    async def main() -> float:
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(c):
                nursery.start_soon(one)
        return time.perf_counter() - t

    return trio.run(main)


# --------------------------------------------------------------------------- (a) pure core


def core(n: int, c: int, *, tune_gc: bool = False) -> float:
    if tune_gc:
        with tuned_gc():
            return core(n, c)
    _app, fn, _ = make_app(n)
    events = [Event("bench/sync", {})]
    t = time.perf_counter()
    machines = [RunMachine(fn, f"r{k}", events, 0) for k in range(c)]
    pending: list[tuple[RunMachine, ExecuteStep]] = []
    for m in machines:
        for cmd in m.handle(RunStarted(0)):
            if type(cmd) is ExecuteStep:
                pending.append((m, cmd))
    now = 0
    while pending:
        nxt = []
        for m, s in pending:
            value = s.fn(*s.args)
            for cmd in m.step_completed(s.position, s.attempt, value, now):
                if type(cmd) is ExecuteStep:
                    nxt.append((m, cmd))
        pending = nxt
    elapsed = time.perf_counter() - t
    assert all(m.status == "completed" for m in machines)
    return elapsed


# --------------------------------------------------------------------------- (b) worker


class _CountingStore(MemoryStore):
    """A memory store that tells the benchmark when the last run ended (no polling)."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.ended = 0
        self.all_done = trio.Event()

    def commit(self, batch: Any) -> set[str]:
        fenced = super().commit(batch)
        for w in batch.writes:
            if w.status == "completed" and w.run_id not in fenced:
                self.ended += 1
        if self.ended >= self.expected:
            self.all_done.set()
        return fenced


def worker(n: int, c: int, *, sync_bodies: bool, tune_gc: bool = False,
           async_bodies: str = "trio") -> float:
    app, _, _ = make_app(n, async_bodies)
    store = _CountingStore(c)
    name = "bench/sync" if sync_bodies else "bench/async"

    async def main() -> float:
        w = Worker(app, store, max_runs=max(c, 1), batch_limit=1000, tune_gc=tune_gc)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            t = time.perf_counter()
            await w.send([Event(name, {}) for _ in range(c)])
            await store.all_done.wait()
            elapsed = time.perf_counter() - t
            w.stop()
        return elapsed

    return trio.run(main)


# --------------------------------------------------------------------------- (c) TestEngine


def testengine(n: int, c: int) -> float:
    from durable_core.testing import TestEngine

    app, _, _ = make_app(n)
    engine = TestEngine(app)
    t = time.perf_counter()
    engine.send([Event("bench/sync", {}) for _ in range(c)])
    elapsed = time.perf_counter() - t
    assert engine.steps_executed == n * c
    return elapsed


# --------------------------------------------------------------------------- main


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through ``points``: (intercept, slope)."""
    k = len(points)
    mx = sum(x for x, _ in points) / k
    my = sum(y for _, y in points) / k
    slope = (sum((x - mx) * (y - my) for x, y in points)
             / sum((x - mx) ** 2 for x, _ in points))
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    steps_list = [1, 10, 100] if args.quick else [1, 10, 100, 1000]
    concurrency = [1, 100] if args.quick else [1, 1000]
    repeat = 2 if args.quick else 3

    print(f"# step overhead ({platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cpus, trio {trio.__version__})")
    # The box's speed drifts (shared VM): an empty loop's cost tells which phase a run saw
    # (about 5 ns per iteration on the reference measurements of this machine class).
    calib = min(timeit.repeat("for i in range(1000): pass", number=2000, repeat=5)) / 2e6
    print(f"# calibration: empty loop {calib * 1e9:.1f} ns/iteration")
    print(f"{'path':<12} {'steps':>6} {'runs':>6} {'durable µs/step':>16} "
          f"{'plain µs/step':>14} {'overhead µs':>12} {'steps/s':>10}")
    rows = []
    for c in concurrency:
        for n in steps_list:
            total = n * c
            cases: list[tuple[str, Callable[[], float], Callable[[], float]]] = [
                ("core", lambda n=n, c=c: core(n, c), lambda n=n, c=c: plain_sync(n, c)),
                ("core+gc", lambda n=n, c=c: core(n, c, tune_gc=True),
                 lambda n=n, c=c: plain_sync(n, c)),
                ("worker", lambda n=n, c=c: worker(n, c, sync_bodies=False),
                 lambda n=n, c=c: plain_async(n, c)),
                ("worker+gc", lambda n=n, c=c: worker(n, c, sync_bodies=False, tune_gc=True),
                 lambda n=n, c=c: plain_async(n, c)),
            ]
            cases.append(("testengine", lambda n=n, c=c: testengine(n, c),
                          lambda n=n, c=c: plain_sync(n, c)))
            if total <= 100_000:
                cases.append(
                    ("worker-sync", lambda n=n, c=c: worker(n, c, sync_bodies=True),
                     lambda n=n, c=c: plain_sync(n, c))
                )
                cases.append(
                    ("worker-aio", lambda n=n, c=c: worker(n, c, sync_bodies=False,
                                                           async_bodies="asyncio"),
                     lambda n=n, c=c: plain_async(n, c))
                )
            for label, durable, plain in cases:
                d = best_of(repeat, durable) / total * 1e6
                p = best_of(repeat, plain) / total * 1e6
                row = {"path": label, "steps": n, "runs": c, "durable_us": round(d, 3),
                       "plain_us": round(p, 3), "overhead_us": round(d - p, 3),
                       "steps_per_s": round(1e6 / d)}
                rows.append(row)
                print(f"{label:<12} {n:>6} {c:>6} {d:>16.2f} {p:>14.3f} {d - p:>12.2f} "
                      f"{1e6 / d:>10.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version, "rows": rows}, f, indent=2)
    # Cost per step as the targets mean it: a run costs a fixed amount (starting it, its
    # context and coroutine, ending it) plus a cost per step. A least-squares line through
    # (steps, µs per run) separates the two; its slope is the per-step cost.
    print("# linear fit, µs per run = fixed + per-step x steps (overhead = durable - plain;")
    print("# a negative fixed part means the cost per step grows with the run's length):")
    for label in dict.fromkeys(r["path"] for r in rows):
        for c in concurrency:
            pts = [(r["steps"], r["durable_us"] * r["steps"], r["plain_us"] * r["steps"])
                   for r in rows if r["path"] == label and r["runs"] == c]
            if len(pts) < 3:
                continue
            d_fixed, d_slope = _fit([(n, d) for n, d, _ in pts])
            _, p_slope = _fit([(n, p) for n, _, p in pts])
            print(f"#   {label:<12} runs {c:>5}: fixed {d_fixed:8.2f} µs, per step "
                  f"{d_slope:6.2f} µs, overhead per step {d_slope - p_slope:6.2f} µs")
    # Linearity: per-step cost at 1,000 steps against 10 steps, one run.
    core_rows = {r["steps"]: r["durable_us"] for r in rows
                 if r["path"] == "core" and r["runs"] == 1}
    if 10 in core_rows and max(core_rows) >= 100:
        ratio = core_rows[max(core_rows)] / core_rows[10]
        print(f"# linearity (core, 1 run): µs/step at {max(core_rows)} steps / at 10 steps = "
              f"{ratio:.2f} (1.0 = perfectly linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
