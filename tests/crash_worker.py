"""Run a worker on the crash app: ``python tests/crash_worker.py STORE_URL STATS_FILE``.

Used by the crash and multi-worker tests as a separate process. On a graceful stop
(SIGTERM/SIGINT) it writes its counters to STATS_FILE as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stores
from crash_app import app
from durable_core import Worker


def main() -> None:
    url, stats = sys.argv[1], sys.argv[2]
    lease_ms = int(os.environ.get("DURABLE_LEASE_MS", "600"))
    store = stores.open(url)
    worker = Worker(app, store, lease_ms=lease_ms, poll_interval=0.02, max_runs=200,
                    tune_gc=True)
    trio.run(lambda: worker.run(handle_signals=True))
    with open(stats, "w", encoding="utf-8") as f:
        json.dump({"stale_writes": worker.engine.stale_writes,
                   "discarded_results": worker.engine.discarded_results,
                   "bodies_skipped": worker.bodies_skipped,
                   "leases_lost": worker.leases_lost,
                   "steps_executed": worker.steps_executed, "pid": os.getpid()}, f)
    store.close()


if __name__ == "__main__":
    main()
