"""Send-to-first-step latency across processes, idle worker CPU, and a 300-run burst.

Run with ``python benchmarks/pickup.py [--quick] [--stores sqlite,postgres]``.

Everything goes through the real CLI: ``durable worker benchmarks.pickup:app`` runs in a
subprocess, and events come from a ``Client`` in another subprocess, as from a web app
beside the worker. For each store (SQLite file with ``synchronous=FULL``, the default, and
with ``NORMAL``, which skips the fsync of each commit; PostgreSQL on 127.0.0.1):

- **pickup**: the sender sends one event at a time (a pause of 20-40 ms between sends, so
  each finds the worker idle), stamping the wall time just before ``Client.send`` in the
  event's data; the function's first step returns the wall time it ran. Reported: p50, p90
  and p99 of (first step - before send), and of the send call alone;
- **idle CPU**: user+sys time of the worker process over ``--idle`` seconds with nothing to
  do (from ``/proc/<pid>/stat``), as a percentage of one core;
- **burst**: one ``Client.send`` of 300 events (one step each); runs per second from the
  send to the last run's end (``ended_at``).

``--baseline DIR`` runs the worker and the sender with ``DIR`` first on ``PYTHONPATH``
(e.g. ``git archive main | tar -x -C /tmp/base`` then ``--baseline /tmp/base/src``), for
an A/B against another version of durable-core.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from durable_core import App, Context, on_event

ROOT = pathlib.Path(__file__).resolve().parent.parent

app = App("pickup-bench")


async def _now() -> float:
    return time.time()


@app.function(id="pickup", trigger=on_event("bench/pickup"))
async def pickup(ctx: Context) -> dict[str, Any]:
    """Returns when the event was sent and when its first step ran (wall time, s)."""
    seen = await ctx.step.run("seen", _now)
    return {"sent": ctx.event.data["sent_at"], "seen": seen}


@app.function(id="burst", trigger=on_event("bench/burst"))
async def burst(ctx: Context) -> float:
    """One step: a burst of these measures runs per second."""
    return await ctx.step.run("seen", _now)


# --------------------------------------------------------------------------- the sender


_SENDER = """
import json, random, sys, time
import stores
from durable_core import Client, Event

url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = Client(stores.open(url))
if mode == "pickup":
    sends = []
    for i in range(n):
        time.sleep(random.uniform(0.02, 0.04))
        t = time.time()
        client.send(Event("bench/pickup", {"sent_at": t, "i": i}))
        sends.append(time.time() - t)
    print(json.dumps(sends))
else:
    events = [Event("bench/burst", {"i": i}) for i in range(n)]
    t = time.time()
    client.send(events)
    print(json.dumps([t]))
"""


def _env(baseline: str | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)]  # benchmarks.pickup:app
    if baseline:
        paths.insert(0, baseline)
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def _send(url: str, mode: str, n: int, baseline: str | None) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", _SENDER, url, mode, str(n)],
        env=_env(baseline), check=True, capture_output=True, text=True,
    ).stdout
    result: list[float] = json.loads(out)
    return result


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for(url: str, function_id: str, count: int, timeout: float = 120.0) -> list[Any]:
    """Poll (every 50 ms, from this process) until ``count`` runs of the function ended."""
    import stores

    store = stores.open(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            runs = store.list_runs(function_id=function_id, status="completed", limit=count)
            if len(runs) >= count:
                return runs
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {len(runs)} of {count} {function_id} runs ended")
            time.sleep(0.05)
    finally:
        store.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(url: str, events: int, idle_s: float, burst_n: int,
            baseline: str | None) -> dict[str, Any]:
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "benchmarks.pickup:app", "--store", url],
        env=_env(baseline), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Warm up (imports, first claims), then let the worker settle into idle.
        _send(url, "pickup", 3, baseline)
        _wait_for(url, "pickup", 3)
        time.sleep(2.0)
        cpu0, t0 = _cpu_seconds(worker.pid), time.monotonic()
        time.sleep(idle_s)
        idle = (_cpu_seconds(worker.pid) - cpu0) / (time.monotonic() - t0) * 100
        sends = _send(url, "pickup", events, baseline)
        runs = _wait_for(url, "pickup", events + 3)
        latencies = []
        for r in runs:
            out = json.loads(r.output)
            latencies.append((out["seen"] - out["sent"]) * 1000)
        latencies = latencies[: events]  # newest first: the measured ones, not the warm-up
        [sent_at] = _send(url, "burst", burst_n, baseline)
        ended = _wait_for(url, "burst", burst_n)
        span = max(r.ended_at for r in ended) / 1000 - sent_at
        return {
            "p50": _pct(latencies, 0.5), "p90": _pct(latencies, 0.9),
            "p99": _pct(latencies, 0.99), "send_p50": _pct(sends, 0.5) * 1000,
            "idle_pct": idle, "burst_rate": burst_n / span, "n": len(latencies),
        }
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main() -> int:
    # Imported here: the worker imports this module as ``benchmarks.pickup`` (for ``app``),
    # where the sibling script is not importable by its bare name.
    from store_throughput import PG_URL, drop_schema

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,sqlite-normal,postgres")
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="50 events, 5 s idle")
    parser.add_argument("--baseline", default=None,
                        help="a durable-core src directory to run instead of this one")
    args = parser.parse_args()
    if args.quick:
        args.events, args.idle = 50, 5.0
    random.seed(1)
    print(f"# {args.events} events one at a time, {args.idle:.0f} s idle, burst of "
          f"{args.burst}; {os.cpu_count()} CPUs"
          + (f"; baseline {args.baseline}" if args.baseline else ""))
    print(f"{'store':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'send p50':>9} "
          f"{'idle %core':>11} {'burst runs/s':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stores.split(","):
            for i in range(args.rounds):
                if name == "sqlite":
                    url = f"sqlite:///{pathlib.Path(tmp) / f'pickup-{i}.db'}"
                elif name == "sqlite-normal":
                    url = f"sqlite:///{pathlib.Path(tmp) / f'pickup-n{i}.db'}?synchronous=NORMAL"
                else:
                    url = f"{PG_URL}?schema=bench_pickup_{uuid.uuid4().hex[:8]}"
                try:
                    r = measure(url, args.events, args.idle, args.burst, args.baseline)
                finally:
                    drop_schema(name, url)
                print(f"{name:>9} {r['p50']:>8.1f} {r['p90']:>8.1f} {r['p99']:>8.1f} "
                      f"{r['send_p50']:>9.1f} {r['idle_pct']:>11.2f} "
                      f"{r['burst_rate']:>13,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
