"""Routing cost of the start limits (throttle, rate limit, singleton) on memory, SQLite and
PostgreSQL: ``--events`` events (2,000 by default) over ``--keys`` keys (100) are appended,
then routed by ``Engine.route`` (500 per commit, as a worker routes), each starting one run
of one function: without flow control, with ``Throttle(10, "1s", key=)``, with
``RateLimit(10, "1h", key=)`` (most triggers skipped and recorded) and with
``Singleton(key=, mode="skip")``. Prints the routing time per event (wall and this process's
CPU) for each.

Usage::

    python benchmarks/flow_starts.py --store memory
    python benchmarks/flow_starts.py --store sqlite
    python benchmarks/flow_starts.py --store postgres [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from durable_core import App, Context, Event, RateLimit, Singleton, Throttle, on_event
from durable_core.engine._engine import Engine
from routing import open_store

OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "throttle": {"throttle": Throttle(10, "1s", key="event.data.k")},
    "rate_limit": {"rate_limit": RateLimit(10, "1h", key="event.data.k")},
    "singleton": {"singleton": Singleton(key="event.data.k", mode="skip")},
}


def bench(kind: str, url: str, option: str, events: int, keys: int) -> tuple[float, float]:
    app = App("bench-flow")

    @app.function(id="f", trigger=on_event("bench/go"), **OPTIONS[option])
    async def f(ctx: Context) -> None:
        return None

    with open_store(kind, url, "NORMAL") as store:
        engine = Engine(app, store, owner="bench", entropy=os.urandom)
        now = 1_800_000_000_000
        for start in range(0, events, 1_000):
            engine.send([Event("bench/go", {"k": f"k{i % keys}"})
                         for i in range(start, min(events, start + 1_000))], now)
        wall, cpu = time.perf_counter(), time.process_time()
        while engine.route(now):
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert not store.unrouted_events(1)
    return wall / events, cpu / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("memory", "sqlite", "postgres"), default="memory")
    parser.add_argument("--url", default=os.environ.get(
        "DURABLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.store}: routing {args.events} events over {args.keys} keys, one run each")
    for option in OPTIONS:
        wall, cpu = bench(args.store, args.url, option, args.events, args.keys)
        print(f"  {option:<11} {wall * 1e6:8.1f} us/event wall  {cpu * 1e6:8.1f} us/event cpu")


if __name__ == "__main__":
    main()
