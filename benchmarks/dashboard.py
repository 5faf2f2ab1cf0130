"""Response times of the dashboard's pages over a SQLite store with many runs.

    python benchmarks/dashboard.py --runs 2000

fills a temporary SQLite store through a TestEngine (``--runs`` runs of a three-step
function, a tenth of them failing after a retry), then requests each page ``--samples`` times
through the ASGI app in-process (httpx's ASGI transport on trio: no network) and prints the
median and the slowest time per page. Wall times on a shared machine drift; compare runs
made back to back.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
import trio

from durable_core import App, Context, Event, on_event, open_store
from durable_core.dashboard import create_app
from durable_core.testing import TestEngine

app = App("bench-dashboard")


def _work(i: int) -> int:
    if i % 10 == 0:
        raise ValueError(f"order {i} failed")
    return i


@app.function(id="order", trigger=on_event("bench/order"), retries=1)
async def order(ctx: Context) -> int:
    i = ctx.event.data["i"]
    a = await ctx.step.run("a", lambda: i)
    b = await ctx.step.run("b", _work, a)
    return await ctx.step.run("c", lambda: b + 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{pathlib.Path(tmp) / 'bench.db'}")
        te = TestEngine(app, store=store)
        te.send([Event("bench/order", {"i": i}) for i in range(args.runs)])
        te.advance("1h")
        run_id = store.list_runs(limit=1)[0].id
        failed_id = store.list_runs(status="failed", limit=1)[0].id
        pages = {
            "/runs": "/runs",
            "/runs?status=failed": "/runs?status=failed",
            "/runs?since=2000-01-01 (scans)": "/runs?since=2000-01-01",
            "/runs/<completed>": f"/runs/{run_id}",
            "/runs/<failed>": f"/runs/{failed_id}",
            "/functions (no app: scans)": "/functions",
            "/events (scans)": "/events",
        }
        asgi = create_app(store)

        async def measure() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {}
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
                for name, path in pages.items():
                    times = []
                    for _ in range(args.samples):
                        t0 = time.perf_counter()
                        r = await c.get(path)
                        times.append(time.perf_counter() - t0)
                        assert r.status_code == 200, (path, r.status_code)
                    out[name] = times
            return out

        results: Any = trio.run(measure)
        store.close()
    print(f"dashboard over SQLite, {args.runs} runs, {args.samples} samples per page")
    for name, times in results.items():
        print(f"  {name:<34} median {statistics.median(times) * 1000:7.1f} ms   "
              f"max {max(times) * 1000:7.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
