"""The deploy check (``durable replay`` / ``check_deploy``): runs replayed per second, in one
process and in several.

Run with ``python benchmarks/deploy_check.py [--runs 2000] [--steps 10] [--store URL]
[--jobs 1 2 4]``. It writes an app module to a temporary directory, parks ``--runs`` runs
of ``--steps`` steps each on a sleep in the store (SQLite file by default), then times
``check_deploy("module:app", url, jobs=N)`` for each N: listing the runs, reading each
journal and replaying it against the code, start-up of the processes included.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import stores
from durable_core import Event
from durable_core.drivers._loading import load_app
from durable_core.testing import TestEngine, check_deploy

APP = '''
from durable_core import App, on_event

app = App("bench")

@app.function(id="work", trigger=on_event("work/asked"), max_steps=10_000)
async def work(ctx):
    for i in range(ctx.event.data["steps"]):
        await ctx.step.run("s", lambda: i)
    await ctx.step.sleep("park", "1d")
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--store", default=None, help="store URL (default: a SQLite file)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "bench_deploy_app.py"), "w") as f:
            f.write(APP)
        sys.path.insert(0, tmp)
        url = args.store or f"sqlite:///{os.path.join(tmp, 'runs.db')}"
        store = stores.open(url)
        t0 = time.perf_counter()
        engine = TestEngine(load_app("bench_deploy_app:app"), store=store)
        engine.send([Event("work/asked", {"steps": args.steps}) for _ in range(args.runs)])
        store.close()
        print(f"{args.runs} runs of {args.steps} steps parked in "
              f"{time.perf_counter() - t0:.1f}s ({url.split('?')[0].split(':')[0]})")
        for jobs in args.jobs:
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                report = check_deploy("bench_deploy_app:app", url, jobs=jobs)
                best = min(best, time.perf_counter() - t0)
                assert report.ok and report.checked == args.runs
            print(f"jobs={jobs}: {best:.2f}s, {args.runs / best:,.0f} runs/s "
                  f"({args.runs * (args.steps + 1) / best:,.0f} journal entries/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
