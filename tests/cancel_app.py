"""The app of the cancel test with two ``durable worker`` processes
(tests/test_lifecycle_cancel_workers.py).

Its first step appends the process's pid to ``DURABLE_PIDS_FILE``, then waits (at most 60 s)
until the file ``DURABLE_GATE_FILE`` exists: while it does not, every run is held, mid-body,
by the process that claimed it."""

from __future__ import annotations

import os
import time

from durable_core import App, CancelOn, Context, on_event

app = App("cancel-procs")


def block() -> int:
    """Record this process, then wait for the gate."""
    with open(os.environ["DURABLE_PIDS_FILE"], "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["DURABLE_GATE_FILE"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@app.function(id="hold", trigger=on_event("hold/go"),
              cancel_on=[CancelOn("hold/stop", if_="event.data.n == async.data.n")])
async def hold(ctx: Context) -> int:
    await ctx.step.run("block", block)
    await ctx.step.run("after", lambda: None)
    return int(ctx.event.data["n"])
