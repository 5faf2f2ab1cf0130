"""Short runs per second through ``durable worker``: the fixed cost of a run.

Run with ``python benchmarks/short_runs.py [--quick] [--stores sqlite,postgres]
[--steps 1,3,10] [--concurrency 100,2000] [--processes 1,2] [--rounds N] [--json FILE]``.

Everything goes through the real CLI: ``durable worker benchmarks.short_runs:app
--processes N`` runs in a subprocess, and events come from a ``Client`` in another
subprocess (a long-lived sender, as a web app beside the worker), one ``send`` of
``concurrency`` events per round. A round's rate is ``concurrency / (last run's ended_at -
the wall time just before the send)``: from the events' arrival to the last run's end, so
event routing, run creation, claims, every step and the runs' ends are all counted. The
table gives the median over the measured rounds (after one warm-up round) and their spread
(min-max), with the load average (the machine may be shared).

SQLite runs on a file with ``synchronous=FULL`` (the default); PostgreSQL on 127.0.0.1 in a
private schema. The worker logs at ``--log-level`` (default ``info``, as ``durable worker``
does: two lines per run), to ``/dev/null``.

``--baseline DIR`` runs the worker and the sender with ``DIR`` first on ``PYTHONPATH``
(e.g. ``git archive main | tar -x -C /tmp/base`` then ``--baseline /tmp/base/src``), for an
A/B against another version of durable-core.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from durable_core import App, Context, on_event

ROOT = pathlib.Path(__file__).resolve().parent.parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEP_COUNTS = (1, 3, 10)

app = App("short-runs-bench", async_bodies="trio")  # bodies awaited in the run's task


async def _body(i: int) -> int:
    return i


def _define(steps: int) -> None:
    @app.function(id=f"steps-{steps}", trigger=on_event(f"bench/steps-{steps}"))
    async def run(ctx: Context) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step.run(f"s{i}", _body, i)
        return total


for _n in STEP_COUNTS:
    _define(_n)


# --------------------------------------------------------------------------- the sender

_SENDER = """
import sys, time
import stores
from durable_core import Client, Event

client = Client(stores.open(sys.argv[1]))
print("ready", flush=True)
for line in sys.stdin:
    name, n = line.split()
    events = [Event(name, {"i": i}) for i in range(int(n))]
    t = time.time()
    client.send(events)
    print(repr(t), flush=True)
"""


def _env(baseline: str | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)]  # benchmarks.short_runs:app
    if baseline:
        paths.insert(0, baseline)
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


class _Sender:
    """A ``Client`` in a process of its own: ``send(name, n)`` returns the wall time (s)
    just before its ``Client.send`` of ``n`` events."""

    def __init__(self, url: str, baseline: str | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SENDER, url], env=_env(baseline), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the sender process failed to start")

    def send(self, name: str, n: int) -> float:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{name} {n}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def _ended(store: Any, function_id: str, since_ms: int, count: int,
           timeout: float) -> list[int]:
    """Wait (polling every 0.2 s) until ``count`` runs of the function created at or after
    ``since_ms`` completed; their ``ended_at``."""
    deadline = time.monotonic() + timeout
    while True:
        runs = store.list_runs(function_id=function_id, status="completed", since=since_ms,
                               limit=count)
        if len(runs) >= count:
            return [r.ended_at for r in runs]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {len(runs)} of {count} {function_id} runs ended")
        time.sleep(0.2)


def measure(url: str, processes: int, steps: int, concurrency: int, rounds: int,
            log_level: str, baseline: str | None) -> list[float]:
    """Runs per second of each measured round (one warm-up round first)."""
    import stores

    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "benchmarks.short_runs:app", "--store", url, "--log-level", log_level,
         "--processes", str(processes), "--max-runs", str(max(concurrency, 1_000))],
        env=_env(baseline), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    store = stores.open(url)
    sender = _Sender(url, baseline)
    try:
        rates = []
        for i in range(rounds + 1):
            sent_at = sender.send(f"bench/steps-{steps}", concurrency)
            ended = _ended(store, f"steps-{steps}", int(sent_at * 1000) - 1, concurrency,
                           timeout=300.0)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode})")
            if i:  # the first round warms up (imports, first claims, the log's size)
                rates.append(concurrency / max(max(ended) / 1000 - sent_at, 1e-3))
            time.sleep(0.3)  # let the round's stragglers (the worker's last polls) settle
        return rates
    finally:
        sender.close()
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        store.close()


def _drop_schema(url: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("=", 1)[1]}" CASCADE')


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--steps", type=_ints, default=list(STEP_COUNTS),
                        help="steps per run (comma-separated; 1, 3 and/or 10)")
    parser.add_argument("--concurrency", type=_ints, default=[100, 2_000],
                        help="runs started at once per round (comma-separated)")
    parser.add_argument("--processes", type=_ints, default=[1, 2],
                        help="worker processes (comma-separated)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per row")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--quick", action="store_true",
                        help="SQLite, 3 steps, 50 runs, 1 process, 2 rounds (a smoke test)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--baseline", default=None,
                        help="a durable-core src directory to run instead of this one")
    args = parser.parse_args(argv)
    if args.quick:
        args.stores, args.steps, args.concurrency = "sqlite", [3], [50]
        args.processes, args.rounds = [1], 2
    for n in args.steps:
        if n not in STEP_COUNTS:
            parser.error(f"--steps: {n} is not one of {STEP_COUNTS}")
    load = os.getloadavg()
    print(f"# short runs through `durable worker` (log level {args.log_level}); "
          f"{os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (f"; baseline {args.baseline}" if args.baseline else ""))
    print(f"{'store':>8} {'procs':>5} {'steps':>5} {'runs':>6} {'runs/s':>8} "
          f"{'min-max':>15} {'steps/s':>8} {'load':>5}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stores.split(","):
            for procs in args.processes:
                for steps in args.steps:
                    for c in args.concurrency:
                        tag = uuid.uuid4().hex[:8]
                        if name == "sqlite":
                            url = f"sqlite:///{pathlib.Path(tmp) / f'short-{tag}.db'}"
                        else:
                            url = f"{PG_URL}?schema=bench_short_{tag}"
                        try:
                            rates = measure(url, procs, steps, c, args.rounds, args.log_level,
                                            args.baseline)
                        finally:
                            if name == "postgres":
                                _drop_schema(url)
                        med = statistics.median(rates)
                        row = {"store": name, "processes": procs, "steps": steps, "runs": c,
                               "runs_per_s": round(med), "min": round(min(rates)),
                               "max": round(max(rates)), "rounds": len(rates),
                               "load": round(os.getloadavg()[0], 2),
                               "log_level": args.log_level}
                        rows.append(row)
                        print(f"{name:>8} {procs:>5} {steps:>5} {c:>6,} {med:>8,.0f} "
                              f"{min(rates):>7,.0f}-{max(rates):<7,.0f} {med * steps:>8,.0f} "
                              f"{row['load']:>5.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
